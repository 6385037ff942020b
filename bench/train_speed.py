"""Training throughput: ``sentex fit`` machinery vs a plain Hugging Face ``Trainer``, side by side.

    python bench/train_speed.py --rows 2048 --steps 60 --threads 2

Both train the same SpanExtractor (packaged MiniLM-L6, full fine-tuning) on the same real rows with
the same batch size, optimizer family, thread count and number of steps, with no validation or
checkpointing; each is timed over the whole ``fit``/``train`` call. Two pairings are reported:
shuffled batches in both, and length-grouped batches in both (sentex ``bucket_by_length``,
Trainer ``train_sampling_strategy=group_by_length``). Ratios > 1 mean sentex is faster.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from datasets import Dataset
from torch import nn
from transformers import Trainer, TrainingArguments

from sentex.data import TweetDataModule
from sentex.models import SpanExtractor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


class LossOnly(nn.Module):
    """Adapter so the HF Trainer can call a sentex module: ``forward(**batch) -> {"loss"}``."""

    def __init__(self, module: SpanExtractor) -> None:
        super().__init__()
        self.module = module

    def forward(self, **batch):
        return {"loss": self.module.compute_loss(batch)}


def make_module(seed: int) -> SpanExtractor:
    torch.manual_seed(seed)
    return SpanExtractor(max_length=128, learning_rate=1e-4, head_learning_rate=None, warmup_steps=10)


def run_sentex(rows: Path, n_rows: int, batch: int, steps: int, bucket: bool) -> float:
    pl.seed_everything(0, verbose=False)
    module = make_module(0)
    dm = TweetDataModule(train_path=str(rows), val_path=str(rows), batch_size=batch, bucket_by_length=bucket)
    trainer = pl.Trainer(
        max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, dm)
    return time.perf_counter() - start


def run_hf(rows: Path, batch: int, steps: int, group: bool, out: str) -> float:
    module = make_module(0)
    with open(rows, newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    ds = Dataset.from_list(records).map(lambda r: {"length": len(r["text"])})
    args = TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
        warmup_steps=10, weight_decay=0.01, lr_scheduler_type="cosine", logging_strategy="no",
        save_strategy="no", report_to=[], remove_unused_columns=False,
        train_sampling_strategy="group_by_length" if group else "random",
        length_column_name="length", dataloader_num_workers=0, use_cpu=True, seed=0,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=LossOnly(module), args=args, train_dataset=ds, data_collator=module.collate)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory() as tmp:
        with open(args.data, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            keep = [r for r in reader if r["text"].strip() and r["selected_text"] and r["selected_text"] in r["text"]]
        rows = Path(tmp) / "rows.csv"
        with open(rows, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["textID", "text", "selected_text", "sentiment"])
            writer.writeheader()
            writer.writerows(keep[: args.rows])
        samples = args.steps * args.batch
        print(f"\n## training throughput: {args.steps} steps x batch {args.batch}, {args.threads} thread(s)\n")
        print("| batches | sentex samples/s | HF Trainer samples/s | sentex / Trainer |\n|---|---:|---:|---:|")
        for label, grouped in (("shuffled", False), ("length-grouped", True)):
            hf = run_hf(rows, args.batch, args.steps, grouped, str(Path(tmp) / "hf"))
            ours = run_sentex(rows, args.rows, args.batch, args.steps, grouped)
            print(f"| {label} | {samples / ours:.1f} | {samples / hf:.1f} | {hf / ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

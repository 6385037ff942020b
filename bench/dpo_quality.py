"""DPO-align an SFT checkpoint on the real Kaggle data; print validation metrics before and after.

    python bench/dpo_quality.py --sft /tmp/realrun/.../best.ckpt --root /tmp/dpo_runs/a
    python bench/dpo_quality.py --sft best.ckpt -- --model.beta 0.3 --model.num_pairs 4000

"Before" is the DPO module right after loading the SFT checkpoint (policy == reference == SFT);
"after" is the same module after ``sentex align``'s training. Both are scored on the seeded
validation split (``data.split_seed``, 10% by default) with the same code, so the difference is
what alignment changed: Jaccard overall and per sentiment, exact match, and how often the answer
is longer (over-extraction) or shorter (under-extraction) than the gold phrase.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from sentex.alignment.command import AlignCLI
from sentex.data import TweetDataModule
from sentex.data.tweets import SENTIMENTS
from sentex.models.base import ExtractorModule

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"
KEYS = ["jaccard", *(f"jaccard_{s}" for s in SENTIMENTS), "exact_match", "over_extraction", "under_extraction"]


class LastValidation(Callback):
    """Remembers the metrics and global step of the latest validation run inside ``fit``."""

    def __init__(self) -> None:
        self.step, self.metrics = -1, {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.step = trainer.global_step
            self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def final_validation(trainer: pl.Trainer, last: LastValidation, model, dm) -> dict[str, float]:
    """Validation metrics of the trained model: the fit's own validation if it ran after the last
    step (saves a pass over the validation rows), else a fresh one."""
    if last.step == trainer.global_step and "val/jaccard" in last.metrics:
        return last.metrics
    return {k: float(v) for k, v in trainer.validate(model, dm, verbose=False)[0].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", required=True, help="sentex span (or seq2seq) SFT checkpoint")
    parser.add_argument("--config", default=str(ROOT / "configs" / "dpo_span.yaml"))
    parser.add_argument("--data", default=str(SHARED), help="Kaggle train.csv")
    parser.add_argument("--root", default="dpo_runs", help="folder for logs and checkpoints")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-before", action="store_true", help="skip the SFT validation (same for every run)")
    parser.add_argument("extra", nargs="*", help="further sentex align options, after --")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # our own argv, on purpose
    os.makedirs(args.root, exist_ok=True)

    cli = AlignCLI(
        ExtractorModule, TweetDataModule, subclass_mode_model=True, run=False, save_config_callback=None,
        args=["--config", args.config, "--data.train_path", args.data, "--model.sft_checkpoint", args.sft,
              "--trainer.default_root_dir", args.root, "--trainer.logger.init_args.save_dir", args.root, *args.extra],
    )  # fmt: skip
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    last = LastValidation()
    trainer.callbacks.append(last)
    before = {} if args.no_before else trainer.validate(model, dm, verbose=False)[0]
    start = time.perf_counter()
    trainer.fit(model, dm)
    train_s = time.perf_counter() - start
    after = final_validation(trainer, last, model, dm)

    n_val = len(dm.datasets["val"])
    print(f"\n## sentex align: {Path(args.config).name} from {args.sft} ({n_val} validation rows)\n")
    print("| metric | before (SFT) | after (DPO) | change |\n|---|---:|---:|---:|")
    for key in KEYS:
        b, a = before.get(f"val/{key}"), after.get(f"val/{key}")
        if a is not None:
            print(f"| {key} | {b:.4f} | {a:.4f} | {a - b:+.4f} |" if b is not None else f"| {key} | - | {a:.4f} | |")
    pairs = model.pairs or []
    print(f"\n{len(pairs)} pairs, {trainer.global_step} steps, training {train_s / 60:.1f} min wall "
          f"({args.threads} thread(s)); options: {' '.join(args.extra) or '(config defaults)'}")  # fmt: skip


if __name__ == "__main__":
    main()

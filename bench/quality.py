"""Train and evaluate a sentex recipe on the real Kaggle data; print a Markdown table.

    python bench/quality.py                                   # configs/span.yaml on the shared data
    python bench/quality.py --config configs/span.yaml -- --trainer.max_epochs 1
    python bench/quality.py --root runs/span                  # logs and checkpoints in runs/span/lightning_logs

Reports overall and per-sentiment Jaccard and exact match on the seeded 10% validation split,
the full-tweet baseline on the same rows, training wall time and training samples/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sentex.cli import SentexCLI
from sentex.data import TweetDataModule
from sentex.data.tweets import SENTIMENTS
from sentex.metrics import exact_match, jaccard
from sentex.models.base import ExtractorModule

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


def full_tweet_baseline(dm: TweetDataModule) -> dict[str, float]:
    """Jaccard of answering every row with its whole tweet: the score to beat."""
    val = dm.datasets["val"]
    scores: dict[str, list[float]] = {s: [] for s in SENTIMENTS}
    for text, gold, sentiment in zip(val["text"], val["selected_text"], val["sentiment"]):
        scores[sentiment].append(jaccard(text, gold))
    out = {f"jaccard_{s}": sum(v) / len(v) for s, v in scores.items() if v}
    out["jaccard"] = sum(sum(v) for v in scores.values()) / len(val)
    out["exact_match"] = sum(exact_match(t, g) for t, g in zip(val["text"], val["selected_text"])) / len(val)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "span.yaml"))
    parser.add_argument("--data", default=str(SHARED), help="Kaggle train.csv")
    parser.add_argument("--root", default=".", help="folder for lightning_logs/ (logs and checkpoints)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("extra", nargs="*", help="further sentex options, after --")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cli = SentexCLI(
        ExtractorModule, TweetDataModule, subclass_mode_model=True, run=False, save_config_callback=None,
        args=["--config", args.config, "--data.train_path", args.data, "--trainer.default_root_dir", args.root,
              *args.extra],
    )  # fmt: skip
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    start = time.perf_counter()
    trainer.fit(model, dm)
    train_s = time.perf_counter() - start
    seen = len(dm.datasets["train"]) * trainer.current_epoch
    result = trainer.validate(model, dm, ckpt_path="best", verbose=False)[0]
    base = full_tweet_baseline(dm)

    print(f"\n## sentex quality: {Path(args.config).name} on {args.data} ({len(dm.datasets['val'])} validation rows)\n")
    print("| metric | sentex | full-tweet baseline |\n|---|---:|---:|")
    for key in ["jaccard", *(f"jaccard_{s}" for s in SENTIMENTS), "exact_match"]:
        print(f"| {key} | {result[f'val/{key}']:.4f} | {base[key]:.4f} |")
    best = trainer.checkpoint_callback.best_model_path
    print(f"\ntraining: {train_s / 60:.1f} min wall, {seen / train_s:.1f} samples/s, {trainer.current_epoch} epoch(s)")
    print(f"threads: {args.threads}; best checkpoint: {best}")


if __name__ == "__main__":
    main()

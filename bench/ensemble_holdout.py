"""A K-fold ensemble measured on rows no member saw: single models vs their ensemble, paired.

    OMP_WAIT_POLICY=PASSIVE python bench/ensemble_holdout.py --root runs/ens --num_folds 5
    OMP_WAIT_POLICY=PASSIVE python bench/ensemble_holdout.py --root runs/ens -- --trainer.precision bf16-mixed

1. A seeded, sentiment-stratified 10% of the Kaggle ``train.csv`` is held out (``<root>/holdout.csv``);
   the rest (``<root>/rest.csv``) is what the members may see. Both files stay under ``--root``.
2. ``bench/folds.py`` trains the recipe on each of the K folds of the rest (``<root>/folds/fold<k>``;
   a fold already trained is kept, so a stopped run continues).
3. ``sentex export`` writes the members' best checkpoints as one ensemble folder (``<root>/ensemble``).
4. Every member and the ensemble answer the held-out rows through ``sentex.load``; the table gives
   each one's Jaccard and the ensemble's paired gain over the members' per-row mean (bootstrap CI).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import sentex
from sentex.data.folds import stratified_folds
from sentex.metrics import jaccard, paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


def split_holdout(data: Path, root: Path, fraction: float, seed: int) -> tuple[Path, Path]:
    """Write ``rest.csv`` and ``holdout.csv`` (fold 0 of ``round(1 / fraction)`` stratified folds)."""
    rest, holdout = root / "rest.csv", root / "holdout.csv"
    if rest.exists() and holdout.exists():
        return rest, holdout
    with open(data, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    folds = stratified_folds([r["sentiment"] for r in rows], round(1 / fraction), seed)
    for path, keep in ((rest, lambda k: k != 0), (holdout, lambda k: k == 0)):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(r for r, k in zip(rows, folds) if keep(k))
        tmp.replace(path)
    return rest, holdout


def answers(model_path: Path, rows: list[dict]) -> list[float]:
    """Per-row Jaccard of ``model_path`` (a checkpoint or an exported folder) on ``rows``."""
    model = sentex.load(model_path)
    preds = model.extract([r["text"] for r in rows], [r["sentiment"] for r in rows], batch_size=64)
    return [jaccard(p, r["selected_text"]) for p, r in zip(preds, rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED), help="Kaggle train.csv")
    parser.add_argument("--root", required=True, help="folder for the split, the folds and the ensemble")
    parser.add_argument("--config", default=str(ROOT / "configs" / "span.yaml"))
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--holdout", type=float, default=0.1, help="held-out share of the data")
    parser.add_argument("--seed", type=int, default=7, help="seed of the held-out split (not the folds')")
    parser.add_argument("--dtype", default="fp32", help="dtype of the exported members")
    parser.add_argument("extra", nargs="*", help="further sentex fit options, after --")
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rest, holdout = split_holdout(Path(args.data), root, args.holdout, args.seed)

    folds = [str(k) for k in range(args.num_folds)]
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "folds.py"), "--config", args.config, "--data", str(rest),
         "--root", str(root / "folds"), "--num_folds", str(args.num_folds), "--folds", *folds, "--", *args.extra],
        check=True,
    )  # fmt: skip
    results = [json.loads((root / "folds" / f"fold{k}" / "result.json").read_text()) for k in folds]
    best = [r["best_checkpoint"] for r in results]
    ensemble = root / f"ensemble-{args.dtype}"
    if not (ensemble / "sentex.json").exists():
        cmd = [sys.executable, "-m", "sentex", "export", "--out", str(ensemble), "--dtype", args.dtype]
        subprocess.run([*cmd, *(arg for path in best for arg in ("--ckpt_path", path))], check=True)

    with open(holdout, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    members = [answers(Path(path), rows) for path in best]
    together = answers(ensemble, rows)
    member_mean = [statistics.fmean(scores) for scores in zip(*members)]
    print(f"\n## {args.num_folds}-fold ensemble of {args.config} on {len(rows)} held-out rows ({holdout})\n")
    print("| model | out-of-fold Jaccard | held-out Jaccard |\n|---|---:|---:|")
    for k, (result, scores) in enumerate(zip(results, members)):
        print(f"| member {k} | {result['jaccard']:.4f} | {statistics.fmean(scores):.4f} |")
    oof = statistics.fmean(r["jaccard"] for r in results)
    print(f"| members' mean | {oof:.4f} | {statistics.fmean(member_mean):.4f} |")
    print(f"| **ensemble ({args.dtype})** | | **{statistics.fmean(together):.4f}** |")
    d, lo, hi = paired_bootstrap([e - m for e, m in zip(together, member_mean)])
    print(f"\nensemble - members' mean, paired on the held-out rows: {d:+.4f} (95% CI {lo:+.4f} .. {hi:+.4f})")


if __name__ == "__main__":
    main()

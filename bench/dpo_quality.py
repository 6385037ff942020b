"""Align an SFT checkpoint on the real Kaggle data with several seeds; report paired before/after differences.

    python bench/dpo_quality.py --sft best.ckpt --name dpo --seeds 0 1
    python bench/dpo_quality.py --sft best.ckpt --name ej --seeds 0 1 -- --model.loss_type expected_jaccard
    python bench/dpo_quality.py --summary dpo_runs/results.jsonl        # the table of every run so far

"Before" is the SFT model (the align module right after loading the checkpoint: policy == reference);
"after" is the same module after ``sentex align``'s training, its final weights (no checkpoint is
picked on the validation split). Both answer every row of the seeded validation split (10% by
default) with the same code, so each row gives a paired difference ``Jaccard(after) - Jaccard(before)``;
the table shows its mean with a 95% paired-bootstrap interval, per sentiment, the over- and
under-extraction rates and mean answer length, and the training time. With several seeds the last
row averages the per-row differences over seeds before bootstrapping. Each run appends one JSON line
to ``<root>/results.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from sentex.align_command import AlignCLI
from sentex.data import TweetDataModule
from sentex.data.tweets import SENTIMENTS
from sentex.metrics import answer_words, jaccard, over_extracted, paired_bootstrap, under_extracted
from sentex.models.base import ExtractorModule

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


def build(args: argparse.Namespace, seed: int, run_dir: Path) -> AlignCLI:
    """The align CLI of one run, not started: validation off during training (scored after)."""
    return AlignCLI(
        ExtractorModule, TweetDataModule, subclass_mode_model=True, run=False, save_config_callback=None,
        args=["--config", args.config, "--data.train_path", args.data, "--model.sft_checkpoint", args.sft,
              "--seed_everything", str(seed), "--model.pair_seed", str(seed),
              "--trainer.default_root_dir", str(run_dir), "--trainer.limit_val_batches", "0",
              "--trainer.num_sanity_val_steps", "0", "--best_checkpoint.monitor", "null", *args.extra],
    )  # fmt: skip


def answers(model: Any, rows: list[dict[str, Any]], batch_size: int) -> list[str]:
    """The model's answer for each row (dropout off), in order."""
    return [a[0] for a in model.mine(rows, batch_size, torch.device("cpu"))]


def describe(preds: list[str], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Jaccard (overall and per sentiment), length rates and mean answer words of predictions."""
    gold = [r["selected_text"] for r in rows]
    out = {"jaccard": sum(map(jaccard, preds, gold)) / len(rows)}
    for s in SENTIMENTS:
        idx = [i for i, r in enumerate(rows) if r["sentiment"] == s]
        out[f"jaccard_{s}"] = sum(jaccard(preds[i], gold[i]) for i in idx) / max(len(idx), 1)
    scored = [i for i, r in enumerate(rows) if r["sentiment"] != "neutral"]  # neutral rows are answered by rule
    for name, fn in (("over", over_extracted), ("under", under_extracted), ("words", answer_words)):
        out[f"{name}_posneg"] = sum(fn(preds[i], gold[i]) for i in scored) / max(len(scored), 1)
    return out


def run_one(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Align once with ``seed``; returns the JSON record (per-row differences included)."""
    run_dir = Path(args.root) / args.name / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cli = build(args, seed, run_dir)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    dm.setup("validate")
    rows = dm.datasets["val"].to_list()
    bs = dm.hparams.get("eval_batch_size") or 128
    # Keyed by the checkpoint's full path: every run folder names its best checkpoint alike.
    key = hashlib.sha1(str(Path(args.sft).resolve()).encode()).hexdigest()[:12]
    cache = Path(args.root) / f"before-{Path(args.sft).stem}-{key}-{len(rows)}.json"
    if cache.is_file():
        before = json.loads(cache.read_text())
    else:
        before = answers(model, rows, bs)
        cache.write_text(json.dumps(before))
    start = time.perf_counter()
    trainer.fit(model, dm)
    train_min = (time.perf_counter() - start) / 60
    after = answers(model, rows, bs)
    gold = [r["selected_text"] for r in rows]
    diffs = [jaccard(a, g) - jaccard(b, g) for a, b, g in zip(after, before, gold)]
    record = {
        "name": args.name,
        "seed": seed,
        "sft": args.sft,
        "sft_label": args.sft_label,
        "options": " ".join(args.extra),
        "rows": len(rows),
        "pairs": len(model.pairs or []),
        "steps": trainer.global_step,
        "train_min": round(train_min, 2),
        "before": describe(before, rows),
        "after": describe(after, rows),
        "diff": paired_bootstrap(diffs, seed=seed),
        "diff_by_sentiment": {
            s: sum(d for d, r in zip(diffs, rows) if r["sentiment"] == s)
            / max(sum(r["sentiment"] == s for r in rows), 1)
            for s in SENTIMENTS
        },
        "diffs": diffs,
    }
    with open(Path(args.root) / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    if not args.keep_checkpoints:
        shutil.rmtree(run_dir / "lightning_logs", ignore_errors=True)
    return record


def summary_rows(records: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one per run, and one per setting averaging the per-row differences over its seeds."""
    lines = [
        "| setting | seed | Jaccard before → after | paired diff [95% CI] | neg / pos diff | over → under (pos/neg) "
        "| words | pairs | min |",
        "|---|---|---|---|---|---|---|---:|---:|",
    ]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_name.setdefault(f"{r['name']} ({r.get('sft_label') or Path(r['sft']).stem})", []).append(r)
    for name, runs in by_name.items():
        for r in runs:
            b, a, (m, lo, hi) = r["before"], r["after"], r["diff"]
            ds = r["diff_by_sentiment"]
            lines.append(
                f"| {name} | {r['seed']} | {b['jaccard']:.4f} → {a['jaccard']:.4f} | {m:+.4f} [{lo:+.4f}, {hi:+.4f}] "
                f"| {ds['negative']:+.4f} / {ds['positive']:+.4f} "
                f"| {b['over_posneg']:.3f}→{a['over_posneg']:.3f} / {b['under_posneg']:.3f}→{a['under_posneg']:.3f} "
                f"| {b['words_posneg']:.2f}→{a['words_posneg']:.2f} | {r['pairs']} | {r['train_min']:.1f} |"
            )
        if len(runs) > 1 and len({len(r["diffs"]) for r in runs}) == 1:
            mean_diffs = [sum(col) / len(runs) for col in zip(*(r["diffs"] for r in runs))]
            m, lo, hi = paired_bootstrap(mean_diffs)
            seeds = ",".join(str(r["seed"]) for r in runs)
            lines.append(f"| **{name}** | mean of {seeds} | | **{m:+.4f} [{lo:+.4f}, {hi:+.4f}]** | | | | | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", help="sentex span (or seq2seq) SFT checkpoint")
    parser.add_argument("--name", default="dpo", help="name of this setting in the results")
    parser.add_argument("--sft-label", default=None, help="name of the SFT start in the table (default: file stem)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seed_everything and pair_seed per run")
    parser.add_argument("--config", default=str(ROOT / "configs" / "dpo_span.yaml"))
    parser.add_argument("--data", default=str(SHARED), help="Kaggle train.csv")
    parser.add_argument("--root", default="dpo_runs", help="folder for runs and results.jsonl")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's lightning_logs")
    parser.add_argument("--summary", help="only print the table of a results.jsonl")
    parser.add_argument("extra", nargs="*", help="further sentex align options, after --")
    args = parser.parse_args()
    if args.summary:
        records = [json.loads(line) for line in Path(args.summary).read_text().splitlines() if line.strip()]
        print("\n".join(summary_rows(records)))
        return
    if not args.sft:
        parser.error("--sft is required (or --summary)")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # our own argv, on purpose
    os.makedirs(args.root, exist_ok=True)
    records = [run_one(args, seed) for seed in args.seeds]
    print(f"\n## sentex align: {args.name} from {args.sft} ({records[0]['rows']} validation rows)\n")
    print("\n".join(summary_rows(records)))


if __name__ == "__main__":
    main()

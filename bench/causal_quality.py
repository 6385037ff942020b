"""Train the causal (SmolLM2) recipe on a seeded subset of the real data and score it; print Markdown tables.

    python bench/causal_quality.py --root runs/causal                     # SFT (configs/causal.yaml), then
                                                                          # greedy and 4-beam on the split
    python bench/causal_quality.py --root runs/causal --eval-only runs/causal/sft.ckpt --beams 4
    python bench/causal_quality.py --root runs/qlora --steps 20 --beams -- --model.init_args.quantize_base nf4
    python bench/causal_quality.py --summary runs/causal/results.jsonl runs/qlora/results.jsonl

One run: fit the recipe (its seeded ``max_train_rows`` subset of the positive/negative training rows;
no validation during training), save ``<root>/sft.ckpt``, then answer every row of the seeded
validation split (neutral rows by rule) with each ``--beams`` setting and report Jaccard overall and
per sentiment, the share of generated answers that were not in the tweet (``non_substring``), the
full-tweet baseline, training and decoding samples/s and the peak resident memory of training
(sampled every 0.2 s). ``--steps N`` trains N steps only (a speed and memory measurement, e.g. LoRA
against QLoRA); ``--beams`` with no value skips scoring. Each run appends one JSON line to
``<root>/results.jsonl`` (per-row answers in ``<root>/answers-<beams>.jsonl``, which
``bench/dpo_quality.py`` can be compared with).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import psutil
import torch

from sentex.cli import SentexCLI
from sentex.data import TweetDataModule
from sentex.data.tweets import SENTIMENTS
from sentex.metrics import jaccard
from sentex.models.base import ExtractorModule
from sentex.models.components.causal_codec import CausalCodec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


class PeakMemory:
    """Highest resident memory (bytes) of this process while the ``with`` block runs, sampled every 0.2 s."""

    def __enter__(self) -> PeakMemory:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        process = psutil.Process()
        while True:
            self.peak = max(self.peak, process.memory_info().rss)
            if self._stop.wait(0.2):
                return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def score(model: Any, rows: list[dict[str, Any]], beams: int, batch_size: int, bf16: bool) -> dict[str, Any]:
    """Answer ``rows`` with ``beams``-beam decoding; Jaccard per sentiment, non-substring rate, speed."""
    codec: CausalCodec = model.codec
    codec.generation["num_beams"] = beams
    answers, start = [], time.perf_counter()
    model.eval()
    # tweets of similar length together: less left padding per generate call
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["text"]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(order), batch_size):
            chunk = [rows[j] for j in order[i : i + batch_size]]
            answers.extend(codec.answers(model.net, codec.collate(chunk)))
    seconds = time.perf_counter() - start
    by_row = [None] * len(rows)
    for j, answer in zip(order, answers):
        by_row[j] = answer
    generated = [a for a in by_row if a.generated is not None]
    out: dict[str, Any] = {"beams": beams, "rows": len(rows), "generated_rows": len(generated)}
    gold = [r["selected_text"] for r in rows]
    out["jaccard"] = sum(jaccard(a.phrase, g) for a, g in zip(by_row, gold)) / len(rows)
    for s in SENTIMENTS:
        idx = [i for i, r in enumerate(rows) if r["sentiment"] == s]
        out[f"jaccard_{s}"] = sum(jaccard(by_row[i].phrase, gold[i]) for i in idx) / max(len(idx), 1)
    posneg = [i for i, r in enumerate(rows) if r["sentiment"] != "neutral"]
    out["jaccard_posneg"] = sum(jaccard(by_row[i].phrase, gold[i]) for i in posneg) / max(len(posneg), 1)
    out["full_tweet_posneg"] = sum(jaccard(rows[i]["text"], gold[i]) for i in posneg) / max(len(posneg), 1)
    out["non_substring"] = sum(not a.exact for a in generated) / max(len(generated), 1)
    out["decode_s"] = round(seconds, 1)
    out["generated_per_s"] = round(len(generated) / seconds, 2)
    out["answers"] = [
        {"textID": r["textID"], "answer": a.phrase, "generated": a.generated} for r, a in zip(rows, by_row)
    ]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    extra = list(args.extra)
    if args.steps:
        extra += ["--trainer.max_steps", str(args.steps)]
    cli = SentexCLI(
        ExtractorModule, TweetDataModule, subclass_mode_model=True, run=False, save_config_callback=None,
        args=["--config", args.config, "--data.train_path", args.data, "--trainer.default_root_dir", str(root),
              "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
              "--best_checkpoint.monitor", "null", *extra],
    )  # fmt: skip
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    bf16 = str(trainer.precision).startswith("bf16")
    record: dict[str, Any] = {"config": args.config, "options": " ".join(extra), "threads": torch.get_num_threads()}
    record["quantize_base"] = model.hparams.get("quantize_base")
    if args.eval_only:
        ckpt = torch.load(args.eval_only, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"], strict=False)
        record["checkpoint"] = args.eval_only
    else:
        start_rss = psutil.Process().memory_info().rss
        with PeakMemory() as memory:
            start = time.perf_counter()
            trainer.fit(model, dm)
            train_s = time.perf_counter() - start
        seen = trainer.global_step * dm.hparams.batch_size
        record.update(
            train_rows=len(dm.datasets["train"]), steps=trainer.global_step, train_min=round(train_s / 60, 2),
            train_samples_per_s=round(seen / train_s, 3), peak_rss_gb=round(memory.peak / 2**30, 3),
            start_rss_gb=round(start_rss / 2**30, 3), weights_gb=round(model.net.get_memory_footprint() / 2**30, 3),
            final_train_loss=round(float(trainer.callback_metrics.get("train/loss", float("nan"))), 4),
        )  # fmt: skip
        record["checkpoint"] = str(root / "sft.ckpt")
        trainer.save_checkpoint(record["checkpoint"])
    dm.setup("validate")
    rows = dm.datasets["val"].to_list()
    if args.val_rows:
        rows = rows[: args.val_rows]
    record["scores"] = []
    for beams in args.beams:
        result = score(model, rows, beams, args.batch_size, bf16)
        answers = result.pop("answers")
        with open(root / f"answers-{beams}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        record["scores"].append(result)
        print(json.dumps(result), flush=True)
    with open(root / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return record


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per (run, decoding)."""
    lines = [
        "| run | base | decoding | Jaccard | pos+neg | positive | negative | neutral (rule) | non-substring "
        "| train samples/s | peak RSS GB | decode rows/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        base = r.get("quantize_base") or "fp32"
        speed = f"{r['train_samples_per_s']:.2f}" if "train_samples_per_s" in r else ""
        memory = f"{r['peak_rss_gb']:.2f}" if "peak_rss_gb" in r else ""
        for s in r.get("scores") or [{}]:
            if not s:
                lines.append(f"| {r.get('options', '')} | {base} | | | | | | | | {speed} | {memory} | |")
                continue
            lines.append(
                f"| {r.get('options', '') or r['config']} | {base} | {s['beams']}-beam | {s['jaccard']:.4f} "
                f"| {s['jaccard_posneg']:.4f} | {s['jaccard_positive']:.4f} | {s['jaccard_negative']:.4f} "
                f"| {s['jaccard_neutral']:.4f} | {s['non_substring']:.3f} | {speed} | {memory} "
                f"| {s['generated_per_s']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "causal.yaml"))
    parser.add_argument("--data", default=str(SHARED), help="Kaggle train.csv")
    parser.add_argument("--root", default="runs/causal", help="folder for lightning_logs/, sft.ckpt and results")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps only (speed/memory)")
    parser.add_argument("--beams", type=int, nargs="*", default=[1, 4], help="decodings to score (none: skip)")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per generate call")
    parser.add_argument("--val-rows", type=int, default=None, help="score only the first N validation rows")
    parser.add_argument("--eval-only", default=None, help="score this checkpoint instead of training")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--summary", nargs="+", help="only print the table of results.jsonl files")
    parser.add_argument("extra", nargs="*", help="further sentex fit options, after --")
    args = parser.parse_args()
    if args.summary:
        records = [json.loads(line) for p in args.summary for line in Path(p).read_text().splitlines() if line]
        print(table(records))
        return
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # our own argv, on purpose
    print(table([run(args)]))


if __name__ == "__main__":
    main()

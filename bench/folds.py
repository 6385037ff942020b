"""Train a recipe on K-fold splits of the Kaggle data and report fold means (and paired comparisons).

    python bench/folds.py --root runs/folds/span --folds 0 1 2                    # configs/span.yaml
    python bench/folds.py --root runs/folds/plain --folds 0 1 2 -- --model.init_args.reapply_label_shift false
    python bench/folds.py --root runs/folds/span --compare runs/folds/plain       # paired, same rows

Each fold ``k`` trains in ``<root>/fold<k>/`` with ``--data.num_folds K --data.fold k`` (seeded,
stratified) and is validated with its best checkpoint; the per-row answers go to
``<root>/fold<k>/val_rows.csv`` and the numbers to ``<root>/fold<k>/result.json``. A fold that has
a result is not trained again, so a stopped run continues. Span models are also decoded without
the label-shift re-application, so that option's effect is measured on the same weights.

A fold is scored on the validation rows of the split it was trained with, rebuilt from the data
options its checkpoint saved (``num_folds``, ``fold``, ``split_seed``, the training file: whatever
``--`` overrides it trained with), never from this script's defaults: another split would score the
model on rows it trained on. With ``--eval-only`` the newest run of a fold is scored
(``version_10`` is newer than ``version_2``).

One 10% split has a standard error of about ±0.006 Jaccard: decide on fold means and on the paired
difference over every out-of-fold row.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import LightningDataModule

from sentex.cli import SentexCLI
from sentex.data import TweetDataModule
from sentex.data.tweets import SENTIMENTS
from sentex.deploy.load import module_from_checkpoint
from sentex.metrics import jaccard, paired_bootstrap
from sentex.models.base import ExtractorModule

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "tweet-sentiment-extraction" / "train.csv"


@torch.no_grad()
def answer_rows(model: ExtractorModule, dm: TweetDataModule, batch_size: int = 128) -> list[dict]:
    """Every validation row with the model's answer (and, for span models, the answer without the shift)."""
    model.eval()
    val = dm.datasets["val"]
    rows = val.to_list()
    codec = getattr(model, "codec", None)
    shift = bool(getattr(codec, "reapply_label_shift", False))
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        batch = model.collate(chunk)
        if codec is not None and hasattr(codec, "span_scores"):
            scores = codec.span_scores(model.net, batch)
            preds = codec.decode(batch, scores)
            codec.reapply_label_shift = False
            plain = codec.decode(batch, scores)
            codec.reapply_label_shift = shift
        else:
            preds = plain = model.extract(batch)
        for row, pred, unshifted in zip(chunk, preds, plain):
            gold = row["selected_text"]
            out.append(
                {
                    "textID": row["textID"],
                    "sentiment": row["sentiment"],
                    "prediction": pred,
                    "jaccard": jaccard(pred, gold),
                    "jaccard_unshifted": jaccard(unshifted, gold),
                }
            )
    return out


def summarize(rows: list[dict], key: str = "jaccard") -> dict[str, float]:
    out = {"jaccard": statistics.fmean(r[key] for r in rows)}
    for s in SENTIMENTS:
        values = [r[key] for r in rows if r["sentiment"] == s]
        out[f"jaccard_{s}"] = statistics.fmean(values) if values else float("nan")
    return out


def natural_key(path: Path | str) -> list[int | str]:
    """A sort key that compares the numbers in a path as numbers, so ``version_10`` sorts after ``version_2``.

    ``re.split`` with a capturing group alternates text and digits, text first, so the odd places are
    always numbers and two keys compare text with text and number with number.

    >>> sorted(["version_10/best-epoch10.ckpt", "version_2/best-epoch9.ckpt"], key=natural_key)
    ['version_2/best-epoch9.ckpt', 'version_10/best-epoch10.ckpt']
    """
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", str(path)))]


def newest_best_checkpoint(folder: Path) -> Path | None:
    """The ``best-*.ckpt`` of the newest ``lightning_logs/version_N`` run in ``folder`` (``None`` if there is none).

    Args:
        folder: a fold's folder (``<root>/fold<k>``).
    """
    found = sorted(folder.glob("lightning_logs/version_*/checkpoints/best-*.ckpt"), key=natural_key)
    return found[-1] if found else None


def run_data_options(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``TweetDataModule`` arguments a run trained with, as its checkpoint (or its ``config.yaml``) saved them.

    Lightning saves the data module's hyper-parameters (its init arguments after every ``--data``
    override) in each checkpoint; a checkpoint without them falls back to the ``config.yaml`` that
    ``sentex fit`` writes to the run's log folder (``version_N/``, the checkpoint folder's parent).

    Args:
        ckpt: the checkpoint's contents.
        path: the checkpoint file (for the fallback and the messages).

    Returns:
        The arguments, ready for ``TweetDataModule(**options)``.

    Raises:
        SystemExit: neither source has them, or they are not ``TweetDataModule``'s.
    """
    saved = ckpt.get(LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY)
    config = path.parent.parent / "config.yaml"
    if saved is None and config.is_file():
        data = yaml.safe_load(config.read_text(encoding="utf-8")).get("data") or {}
        # `sentex fit` picks the data module by class (subclass mode): class_path plus init_args.
        if data.get("class_path", "TweetDataModule").rpartition(".")[2] != "TweetDataModule":
            raise SystemExit(f"{config}: trained with {data['class_path']}; this script scores tweet runs")
        saved = data.get("init_args", data)
    if not saved:
        raise SystemExit(f"{path}: no data options saved in it or in {config}; cannot rebuild its validation rows")
    # LightningCLI adds private entries (``_instantiator``) that are no constructor arguments.
    options = {k: v for k, v in dict(saved).items() if not k.startswith("_")}
    unknown = sorted(set(options) - set(inspect.signature(TweetDataModule).parameters))
    if unknown:
        raise SystemExit(f"{path}: trained with data options TweetDataModule lacks ({', '.join(unknown)})")
    return options


def validation_data(ckpt: dict[str, Any], path: Path, fold: int, num_folds: int) -> TweetDataModule:
    """The data module of the split a fold's checkpoint trained on, set up for validation.

    Args:
        ckpt: the checkpoint's contents.
        path: the checkpoint file.
        fold: the fold it must have been validated on.
        num_folds: the number of folds it must have been split into.

    Raises:
        SystemExit: the checkpoint was trained on another fold or split (its rows would be mislabelled).
    """
    options = run_data_options(ckpt, path)
    trained = (options.get("num_folds"), options.get("fold", 0))
    if trained != (num_folds, fold):
        raise SystemExit(
            f"{path}: trained with num_folds={trained[0]}, fold={trained[1]}, not fold {fold} of {num_folds}"
        )
    dm = TweetDataModule(**options)
    dm.setup("validate")
    return dm


def run_fold(args: argparse.Namespace, fold: int) -> dict:
    folder = Path(args.root) / f"fold{fold}"
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    if args.eval_only:
        newest = newest_best_checkpoint(folder)
        if newest is None:
            raise SystemExit(f"{folder}: no best-*.ckpt to evaluate")
        return evaluate_fold(args, fold, str(newest), None)
    cli = SentexCLI(
        ExtractorModule, TweetDataModule, subclass_mode_model=True, run=False, save_config_callback=None,
        args=["--config", args.config, "--data.train_path", args.data, "--trainer.default_root_dir", str(folder),
              "--data.num_folds", str(args.num_folds), "--data.fold", str(fold), *args.extra],
    )  # fmt: skip
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    start = time.perf_counter()
    trainer.fit(model, dm)
    minutes = (time.perf_counter() - start) / 60
    return evaluate_fold(args, fold, trainer.checkpoint_callback.best_model_path, minutes)


def evaluate_fold(args: argparse.Namespace, fold: int, best: str, minutes: float | None) -> dict:
    folder = Path(args.root) / f"fold{fold}"
    model, ckpt = module_from_checkpoint(best)
    rows = answer_rows(model, validation_data(ckpt, Path(best), fold, args.num_folds))
    with open(folder / "val_rows.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = {
        "fold": fold,
        "train_minutes": round(minutes, 2) if minutes is not None else None,
        "best_checkpoint": best,
        **summarize(rows),
        "jaccard_unshifted": summarize(rows, "jaccard_unshifted")["jaccard"],
        "rows": len(rows),
    }
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return result


def read_rows(root: str, folds: list[int]) -> dict[str, dict]:
    rows = {}
    for fold in folds:
        with open(Path(root) / f"fold{fold}" / "val_rows.csv", encoding="utf-8") as f:
            rows.update({r["textID"]: r for r in csv.DictReader(f)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "span.yaml"))
    parser.add_argument("--data", default=str(SHARED), help="Kaggle train.csv to train on")
    parser.add_argument("--root", required=True, help="folder of this recipe's folds")
    parser.add_argument("--num_folds", type=int, default=5)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--eval-only", action="store_true", help="evaluate each fold's existing best checkpoint")
    parser.add_argument("--compare", help="another --root run on the same folds: paired difference (this - that)")
    parser.add_argument("extra", nargs="*", help="further sentex options, after --")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = [run_fold(args, k) for k in args.folds]
    print(f"\n## {args.root}: {args.num_folds}-fold validation, folds {args.folds}\n")
    print("| fold | jaccard | no shift re-applied | positive | negative | neutral | train min |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cells = [
            r["jaccard"],
            r["jaccard_unshifted"],
            *(r[f"jaccard_{s}"] for s in ("positive", "negative", "neutral")),
        ]
        print(f"| {r['fold']} | " + " | ".join(f"{c:.4f}" for c in cells) + f" | {r['train_minutes'] or '-'} |")
    mean = statistics.fmean(r["jaccard"] for r in results)
    sd = statistics.stdev(r["jaccard"] for r in results) if len(results) > 1 else 0.0
    unshifted = statistics.fmean(r["jaccard_unshifted"] for r in results)
    print(f"| **mean** | **{mean:.4f}** (sd {sd:.4f}) | {unshifted:.4f} | | | | |")
    if args.compare:
        mine, theirs = read_rows(args.root, args.folds), read_rows(args.compare, args.folds)
        common = sorted(set(mine) & set(theirs))
        diffs = [float(mine[t]["jaccard"]) - float(theirs[t]["jaccard"]) for t in common]
        d, lo, hi = paired_bootstrap(diffs)
        print(f"\npaired vs {args.compare} on {len(common)} out-of-fold rows: {d:+.4f} (95% CI {lo:+.4f} .. {hi:+.4f})")
    shift = [float(r["jaccard"]) - float(r["jaccard_unshifted"]) for r in read_rows(args.root, args.folds).values()]
    d, lo, hi = paired_bootstrap(shift)
    print(f"label-shift re-application on the same weights: {d:+.4f} (95% CI {lo:+.4f} .. {hi:+.4f})")


if __name__ == "__main__":
    main()

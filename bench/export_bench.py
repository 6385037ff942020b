"""Reproduce the export acceptance table: export a span checkpoint as fp32/int8/int4/bf16 and bench them.

    python bench/export_bench.py --ckpt_path lightning_logs/version_0/checkpoints/best-....ckpt \\
        --train_path /path/to/train.csv --work /tmp/exports

The validation rows are the seeded 10% split that training held out (``TweetDataModule`` with
``split_seed=42, val_fraction=0.1``), written to ``<work>/val.csv``; the exports go to
``<work>/sentex-<dtype>`` and the bench files to ``<work>/bench``. Nothing is written into the repo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sentex.data import TweetDataModule
from sentex.deploy.bench import main as bench_main
from sentex.deploy.export import export
from sentex.training.writers import write_csv

COLUMNS = ["textID", "text", "selected_text", "sentiment"]


def write_validation_rows(train_path: str, target: Path) -> int:
    """The held-out validation split of ``train_path`` as a CSV; returns its row count."""
    dm = TweetDataModule(train_path=train_path, split_seed=42, val_fraction=0.1)
    dm.setup("validate")
    rows = dm.datasets["val"]
    write_csv(target, COLUMNS, ({c: r[c] for c in COLUMNS} for r in rows))
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--train_path", required=True)
    parser.add_argument("--work", default="/tmp/exports")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "int8", "int4", "bf16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    n = write_validation_rows(args.train_path, work / "val.csv")
    print(f"{n} validation rows in {work / 'val.csv'}")
    folders = []
    for dtype in args.dtypes:
        folder = work / f"sentex-{dtype}"
        export(args.ckpt_path, folder, dtype, overwrite=True)
        folders.append(str(folder))
    threads = ["--threads", str(args.threads)] if args.threads else []
    extra = [*threads, "--rounds", str(args.rounds), "--repeats", "5"]
    bench_main([*folders, "--data.val_path", str(work / "val.csv"), "--out", str(work / "bench"), *extra])


if __name__ == "__main__":
    main()

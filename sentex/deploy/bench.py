"""``sentex bench``: size, memory, latency, throughput and Jaccard of exported models (or checkpoints).

Each model is measured in a fresh child process (``spawn``), so its peak memory is its own:
*peak RSS* is the child's resident-set high-water mark (``VmHWM``, reset after the imports) minus
its RSS after the imports, i.e. what loading the model and running every measurement added. Latency is wall time
per sample of ``Extractor.extract`` over the same ``--latency_rows`` validation rows at each batch
size, after one warm-up batch; batch size 1 *is* the naive per-row loop (tokenize, forward, decode
one tweet at a time), so ``batched_speedup`` = latency@1 / latency@largest-batch. Jaccard is the
competition metric over every validation row at the largest batch size. An ensemble folder is
measured like any model (its size is the whole folder, every member included); its row is named
``<folder> (<n> members)``. ONNX exports are measured the same way, through the same ``sentex.load``
(ONNX Runtime gets the threads torch has, ``--threads``); the *runtime* column tells them apart.

The parent never waits on a child blindly: a child killed by a signal (the kernel's OOM killer,
``kill -9``), one that exits without sending its row, and one still running after ``--timeout``
seconds each end the run with a one-line :class:`~sentex.errors.SentexError` naming the model.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_module
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from sentex.errors import SentexError
from sentex.io.atomic import atomic_path
from sentex.training.writers import write_csv

BATCH_SIZES = (1, 4, 8, 16)
DEFAULT_TIMEOUT_S = 1800.0  # per model and round: loading plus every measurement
POLL_S = 1.0  # how often the parent checks that a silent child is still alive


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


def ms_per_sample(extractor: Any, texts: list[str], sentiments: list[str], batch_size: int, repeats: int = 1) -> float:
    """Milliseconds per sample of ``extractor.extract`` at ``batch_size``: best of ``repeats`` runs after a warm-up.

    The minimum, as ``timeit`` recommends: other load on the machine only ever adds time.
    """
    extractor.extract(texts[:batch_size], sentiments[:batch_size], batch_size=batch_size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        extractor.extract(texts, sentiments, batch_size=batch_size)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(texts)


def measure(
    path: str, val_path: str, batch_sizes: Sequence[int], latency_rows: int, repeats: int = 1, report: Any = None
) -> dict:
    """Every number of one model; ``report(step)`` is called after each step (for a progress bar)."""
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
    extractor = load(path)
    members = (extractor.info.get("ensemble") or {}).get("members")
    row: dict[str, Any] = {
        "model": Path(path).name + (f" ({len(members)} members)" if members else ""),
        "family": extractor.family,
        "dtype": extractor.info.get("dtype", "?"),
        "runtime": runtime_of(extractor.info),
        "size_mb": round(folder_size(Path(path)) / 2**20, 2),
        "load_s": round(time.perf_counter() - start, 2),
    }
    report("load")
    n = min(latency_rows, len(texts))
    for bs in batch_sizes:
        row[f"ms_per_sample_b{bs}"] = round(ms_per_sample(extractor, texts[:n], sentiments[:n], bs, repeats), 3)
        report(f"batch {bs}")
    largest = max(batch_sizes)
    add_speed_columns(row, batch_sizes)
    preds = extractor.extract(texts, sentiments, batch_size=largest)
    row["jaccard"] = round(mean_jaccard(preds, golds), 4)
    row["val_rows"] = len(texts)
    row["peak_rss_mb"] = round(max(0, peak_rss_bytes() - base_rss) / 2**20, 1)
    report("jaccard")
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


def _child(queue: Any, path: str, args: argparse.Namespace) -> None:
    """Measuring process: sends ``("step", name)``, then ``("done", row)`` or ``("error", msg)``."""
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        step = lambda name: queue.put(("step", name))  # noqa: E731
        row = measure(path, args.val_path, args.batch_sizes, args.latency_rows, args.repeats, step)
        queue.put(("done", row))
    except SentexError as err:
        queue.put(("error", str(err)))
    except Exception as err:  # report, rather than hang the parent waiting for "done"
        queue.put(("error", f"{path}: {type(err).__name__}: {err}"))


def run_isolated(
    path: str,
    args: argparse.Namespace,
    advance: Callable[[str], None],
    target: Callable[..., None] = _child,
) -> dict:
    """Measure one model in a fresh process; ``advance(step)`` per finished step.

    Args:
        path: exported folder or checkpoint.
        args: parsed ``sentex bench`` options (``timeout`` is the limit for this model).
        advance: called with each step name the child reports.
        target: the child's function, ``target(queue, path, args)``; :func:`_child` unless a test
            needs a child that misbehaves.

    Returns:
        The child's row of numbers.

    Raises:
        SentexError: the child reported an error, died (signal or exit) without a row, or ran
            past ``args.timeout`` seconds (it is then killed).
    """
    timeout = float(getattr(args, "timeout", DEFAULT_TIMEOUT_S))
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    proc = ctx.Process(target=target, args=(messages, path, args))
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            message = _next_message(messages, proc, deadline)
            if message is None:
                if proc.exitcode is not None:
                    raise SentexError(f"{path}: {child_death(proc.exitcode)} before sending its result")
                raise SentexError(
                    f"{path}: no result after {timeout:g} s (--timeout); the measuring process was stopped"
                )
            kind, value = message
            if kind == "step":
                advance(value)
            elif kind == "error":
                raise SentexError(value)
            else:
                return value
    finally:
        if proc.is_alive():  # timed out, or the parent was interrupted: no orphan keeps measuring
            proc.kill()
        proc.join(timeout=10)
        messages.close()


def _next_message(messages: Any, proc: Any, deadline: float) -> tuple[str, Any] | None:
    """The child's next message; ``None`` once the child has died or the deadline has passed.

    A blocking ``get()`` would wait forever for a child the OOM killer took, so the wait is cut
    into short polls with a liveness check in between.
    """
    while True:
        wait = min(POLL_S, deadline - time.monotonic())
        if wait <= 0:
            return None
        try:
            return messages.get(timeout=wait)
        except queue_module.Empty:
            pass
        if proc.exitcode is not None:
            # A child flushes its queue before exiting, so a last message may still be in the pipe.
            try:
                return messages.get(timeout=POLL_S)
            except queue_module.Empty:
                return None


def child_death(exitcode: int) -> str:
    """How a measuring process ended, in words.

    >>> child_death(-9)
    'the measuring process was killed by signal SIGKILL (out of memory?)'
    >>> child_death(3)
    'the measuring process exited with status 3'
    """
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"{-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the measuring process was killed by signal {name}{hint}"
    return f"the measuring process exited with status {exitcode}"


def add_relative_columns(rows: list[dict]) -> None:
    """Size, throughput and Jaccard of each model relative to the first one (the reference)."""
    ref = rows[0]
    thr = next(k for k in ref if k.startswith("throughput_b"))
    for row in rows:
        row["size_vs_first"] = round(row["size_mb"] / ref["size_mb"], 3)
        row["speed_vs_first"] = round(row[thr] / ref[thr], 2)
        row["jaccard_delta"] = round(row["jaccard"] - ref["jaccard"], 4)


def markdown_table(rows: list[dict]) -> str:
    """A GitHub Markdown table of the rows (columns of the first row).

    >>> print(markdown_table([{"model": "a", "jaccard": 0.7}]))
    | model | jaccard |
    |---|---|
    | a | 0.7 |
    """
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], batch_sizes: Sequence[int], path: Path) -> bool:
    """Latency vs batch size and throughput vs Jaccard per model, as a PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    largest = max(batch_sizes)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in rows:
        label = f"{row['model']} ({row['dtype']}{', ONNX' if row.get('runtime') == 'onnx' else ''})"
        left.plot(batch_sizes, [row[f"ms_per_sample_b{b}"] for b in batch_sizes], marker="o", label=label)
        right.scatter(row[f"throughput_b{largest}"], row["jaccard"], s=60)
        right.annotate(label, (row[f"throughput_b{largest}"], row["jaccard"]), fontsize=8, xytext=(4, 4),
                       textcoords="offset points")  # fmt: skip
    left.set(xscale="log", xlabel="batch size", ylabel="ms per sample", title="Latency")
    left.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    left.legend(fontsize=8)
    right.set(xlabel=f"samples/s at batch {largest}", ylabel="validation Jaccard", title="Throughput vs Jaccard")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Options of ``sentex bench``; exits with argparse's usage error on a bad value."""
    parser = argparse.ArgumentParser(
        prog="sentex bench", description="Measure exported models: size, memory, latency, throughput, Jaccard."
    )
    parser.add_argument("models", nargs="+", help="exported folders and/or .ckpt files; the first is the reference")
    parser.add_argument("--data.val_path", dest="val_path", required=True, help="labelled validation CSV")
    parser.add_argument("--out", default="bench_results", help="folder for bench.csv, bench.md, bench.png")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--latency_rows", type=int, default=128, help="rows timed at each batch size (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per batch size; the best counts")
    parser.add_argument("--rounds", type=int, default=1, help="measure all models this often, interleaved")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per model (default: torch's)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds one model may take to load and measure before it is stopped (default {DEFAULT_TIMEOUT_S:g})",
    )
    args = parser.parse_args(list(argv))
    if min(*args.batch_sizes, args.latency_rows, args.repeats, args.rounds) < 1:
        parser.error("batch sizes, --latency_rows, --repeats and --rounds must be at least 1")
    if not args.timeout > 0:
        parser.error("--timeout must be more than 0 seconds")
    return args


def run_all(args: argparse.Namespace) -> list[dict]:
    """Measure every model ``--rounds`` times, models interleaved, under one progress bar.

    Interleaving (A B A B, not A A B B) spreads load from other processes over all models alike.
    """
    steps = 2 + len(args.batch_sizes)
    rows: list[dict] = []
    with Progress(console=Console(stderr=True), transient=True) as progress:  # stdout: the table only
        task = progress.add_task("bench", total=steps * len(args.models) * args.rounds)
        for round_index in range(args.rounds):
            for i, path in enumerate(args.models):
                name = Path(path).name
                progress.update(task, description=f"{name}: load")

                def advance(step: str, name: str = name) -> None:
                    progress.update(task, advance=1, description=f"{name}: {step}")

                row = run_isolated(path, args, advance)
                if round_index == 0:
                    rows.append(row)
                else:
                    rows[i] = merge_rounds(rows[i], row, args.batch_sizes)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sentex bench``."""
    from sentex.data.tweets import read_tweets

    args = parse_args(argv or [])
    read_tweets(args.val_path, require_labels=True)  # fail on a bad CSV before starting any model
    for path in args.models:
        if not Path(path).exists():
            raise SentexError(f"{path}: no such exported model folder or checkpoint")
    rows = run_all(args)
    add_relative_columns(rows)
    out = Path(args.out)
    table = markdown_table(rows)
    print(table)
    write_csv(out / "bench.csv", list(rows[0]), rows)
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    drawn = plot(rows, args.batch_sizes, out / "bench.png")
    written = "bench.csv, bench.md" + (", bench.png" if drawn else " (no plot: pip install matplotlib)")
    print(f"sentex: wrote {written} to {out}")

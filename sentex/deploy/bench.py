"""``sentex bench``: size, memory, latency, throughput and quality of exported models (or checkpoints).

Each model is measured in a fresh child process (``spawn``), so its peak memory is its own; what is
measured there is :mod:`sentex.deploy.bench_measure` (latency per sample of ``Extractor.extract`` or
``Classifier.classify`` at each batch size, ``batched_speedup`` = latency@1 / latency@largest-batch,
Jaccard or accuracy over every validation row). An ensemble folder is measured like any model (its
size is the whole folder, every member included); its row is named ``<folder> (<n> members)``. ONNX
exports are measured the same way, through the same ``sentex.load`` (ONNX Runtime gets the threads
torch has, ``--threads``); the *runtime* column tells them apart. With ``--sentiment_model`` every
extractor is measured twice: with the gold sentiments, and given none, the classifier choosing them
(its row says ``+ auto sentiment``; its latency includes the classifier's).

The parent never waits on a child blindly: a child killed by a signal (the kernel's OOM killer,
``kill -9``), one that exits without sending its row, and one still running after ``--timeout``
seconds each end the run with a one-line :class:`~sentex.errors.SentexError` naming the model.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_module
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from sentex.deploy.bench_measure import measure, merge_rounds
from sentex.errors import SentexError
from sentex.io.atomic import atomic_path
from sentex.training.writers import write_csv

BATCH_SIZES = (1, 4, 8, 16)
DEFAULT_TIMEOUT_S = 1800.0  # per model and round: loading plus every measurement
POLL_S = 1.0  # how often the parent checks that a silent child is still alive


def _child(queue: Any, path: str, args: argparse.Namespace) -> None:
    """Measuring process: sends ``("step", name)``, then ``("done", row)`` or ``("error", msg)``."""
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        step = lambda name: queue.put(("step", name))  # noqa: E731
        sentiment_model = getattr(args, "auto_sentiment", None)
        row = measure(path, args.val_path, args.batch_sizes, args.latency_rows, args.repeats, step, sentiment_model)
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
        for metric in ("jaccard", "accuracy"):  # against the first model scored the same way
            same = next((r for r in rows if metric in r), None)
            if metric in row:
                row[f"{metric}_delta"] = round(row[metric] - same[metric], 4)


def markdown_table(rows: list[dict]) -> str:
    """A GitHub Markdown table of the rows (columns of the first row).

    >>> print(markdown_table([{"model": "a", "jaccard": 0.7}]))
    | model | jaccard |
    |---|---|
    | a | 0.7 |
    """
    cols = list(dict.fromkeys(c for r in rows for c in r))  # a classifier's row has accuracy, not jaccard
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
        if "jaccard" not in row:  # a classifier: no Jaccard to place it by
            continue
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
    parser.add_argument(
        "--sentiment_model",
        default=None,
        help="sentiment classifier (folder or .ckpt): each extractor is also measured given no sentiment",
    )
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
    jobs = measurements(args.models, args.sentiment_model)
    rows: list[dict] = []
    with Progress(console=Console(stderr=True), transient=True) as progress:  # stdout: the table only
        task = progress.add_task("bench", total=steps * len(jobs) * args.rounds)
        for round_index in range(args.rounds):
            for i, (path, auto) in enumerate(jobs):
                name = Path(path).name + (" + auto sentiment" if auto else "")
                progress.update(task, description=f"{name}: load")

                def advance(step: str, name: str = name) -> None:
                    progress.update(task, advance=1, description=f"{name}: {step}")

                row = run_isolated(path, argparse.Namespace(**{**vars(args), "auto_sentiment": auto}), advance)
                if round_index == 0:
                    rows.append(row)
                else:
                    rows[i] = merge_rounds(rows[i], row, args.batch_sizes)
    return rows


def measurements(models: Sequence[str], sentiment_model: str | None) -> list[tuple[str, str | None]]:
    """``(model, sentiment model or None)`` pairs to measure: each model, and each extractor again with
    ``sentiment_model`` choosing its sentiments (right after it, so the two rows sit together)."""
    jobs: list[tuple[str, str | None]] = []
    for path in models:
        jobs.append((path, None))
        if sentiment_model and model_family(path) != "classifier":
            jobs.append((path, sentiment_model))
    return jobs


def model_family(path: str) -> str:
    """The family an exported folder's manifest or a checkpoint names, read without building the model."""
    from sentex.deploy.assembly import family_of, read_sentex_checkpoint
    from sentex.deploy.format import read_manifest

    if Path(path).is_dir():
        return read_manifest(Path(path))["family"]
    return family_of(read_sentex_checkpoint(Path(path)), Path(path))[0]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sentex bench``."""
    from sentex.data.tweets import read_tweets

    args = parse_args(argv or [])
    read_tweets(args.val_path, require_labels=True)  # fail on a bad CSV before starting any model
    for path in [*args.models, *([args.sentiment_model] if args.sentiment_model else [])]:
        if not Path(path).exists():
            raise SentexError(f"{path}: no such exported model folder or checkpoint")
    if args.sentiment_model and model_family(args.sentiment_model) != "classifier":
        raise SentexError(f"--sentiment_model {args.sentiment_model}: not a sentiment classifier export or checkpoint")
    rows = run_all(args)
    add_relative_columns(rows)
    out = Path(args.out)
    table = markdown_table(rows)
    print(table)
    write_csv(out / "bench.csv", list(dict.fromkeys(c for r in rows for c in r)), rows)
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(table + "\n", encoding="utf-8")
    drawn = plot(rows, args.batch_sizes, out / "bench.png")
    written = "bench.csv, bench.md" + (", bench.png" if drawn else " (no plot: pip install matplotlib)")
    print(f"sentex: wrote {written} to {out}")

"""``sentex app``: serve a model in the Streamlit demo page (``sentex/app/streamlit_app.py``, shipped in the package).

This is a launcher only: it checks the arguments, then runs
``streamlit run <sentex>/app/streamlit_app.py -- --model PATH [--sentiment_model CLF]`` so that the page is
the same whether it is started through sentex or through Streamlit directly. A sentiment model is loaded
here once, to check that it classifies tweets into the three sentiments: a wrong one stops ``sentex app``
with one line instead of serving a page that could only show the error.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from sentex.app.logic import MODEL_ENV, QUICKSTART_COMMAND, SENTIMENT_MODEL_ENV, resolve_sentiment_model
from sentex.errors import SentexError

# The page lives beside the package in a source checkout (``pip install -e .``).
APP_FILE = Path(__file__).resolve().parent / "streamlit_app.py"  # package data: works from a wheel too


def build_parser() -> argparse.ArgumentParser:
    """Options of ``sentex app``."""
    parser = argparse.ArgumentParser(
        prog="sentex app",
        description="Serve a model in the Streamlit demo app (single tweets and CSV batches).",
    )
    parser.add_argument(
        "--model",
        help=f"exported model folder or sentex .ckpt (default: ${MODEL_ENV}, else the newest "
        f"lightning_logs/*/checkpoints/best*.ckpt from `{QUICKSTART_COMMAND}`)",
    )
    parser.add_argument(
        "--sentiment_model",
        help="sentiment classifier (exported folder or .ckpt, labels negative/neutral/positive) that predicts the "
        f"sentiment of tweets given without one: the page offers 'auto' (default: ${SENTIMENT_MODEL_ENV})",
    )
    parser.add_argument("--port", type=int, default=8501, help="port to serve on (default: 8501)")
    parser.add_argument("--address", default="localhost", help="address to bind (default: localhost)")
    parser.add_argument("--headless", action="store_true", help="do not open a browser window")
    return parser


def streamlit_command(args: argparse.Namespace, app_file: Path = APP_FILE) -> list[str]:
    """The ``streamlit run`` command line for the parsed options.

    >>> cmd = streamlit_command(build_parser().parse_args(["--model", "m", "--port", "9000"]), Path("a.py"))
    >>> " ".join(cmd[1:])  # doctest: +NORMALIZE_WHITESPACE
    '-m streamlit run a.py --server.port 9000 --server.address localhost
     --browser.gatherUsageStats false -- --model m'
    >>> streamlit_command(build_parser().parse_args(["--sentiment_model", "c"]), Path("a.py"))[-3:]
    ['--', '--sentiment_model', 'c']
    """
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file)]
    cmd += ["--server.port", str(args.port), "--server.address", args.address, "--browser.gatherUsageStats", "false"]
    if args.headless:
        cmd += ["--server.headless", "true"]
    page_args = []
    if args.model:
        page_args += ["--model", args.model]
    if args.sentiment_model:
        page_args += ["--sentiment_model", args.sentiment_model]
    return [*cmd, "--", *page_args] if page_args else cmd


def check_launch(args: argparse.Namespace, app_file: Path = APP_FILE) -> None:
    """Fail before starting a server that could only show an error.

    Raises:
        SentexError: Streamlit not installed, the page missing, ``--model`` not found, or a sentiment model
            (``--sentiment_model``, else ``$SENTEX_SENTIMENT_MODEL``) that is missing or not a tweet-sentiment
            classifier.
    """
    if importlib.util.find_spec("streamlit") is None:
        raise SentexError("the app needs Streamlit: pip install 'sentex[app]' (or pip install streamlit)")
    if not app_file.is_file():
        raise SentexError(
            f"{app_file}: app page not found; `sentex app` runs from a source checkout (pip install -e .)"
        )
    if args.model and not Path(args.model).expanduser().exists():
        raise SentexError(f"--model {args.model}: no such file or folder")
    check_sentiment_model(args.sentiment_model)


def check_sentiment_model(cli_value: str | None, env: dict[str, str] | None = None) -> None:
    """Load the sentiment model the page would load and check it is a negative/neutral/positive classifier.

    Raises:
        SentexError: one line naming the option (or environment variable) and the path.
    """
    path = resolve_sentiment_model(cli_value, env)
    if path is None:
        return
    name = f"--sentiment_model {cli_value}" if cli_value else f"${SENTIMENT_MODEL_ENV} {path}"
    if not path.exists():
        raise SentexError(f"{name}: no such file or folder")
    from sentex.deploy.load import load_model  # torch and transformers: only when there is a model to check
    from sentex.deploy.sentiment import check_sentiment_classifier

    check_sentiment_classifier(load_model(path), name)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``sentex app``: replaces this process with the Streamlit server.

    ``exec`` rather than a child process, so that a signal to ``sentex app`` (Ctrl-C, a service
    manager's stop) reaches the server itself instead of orphaning it.
    """
    args = build_parser().parse_args(argv)
    check_launch(args)
    cmd = streamlit_command(args)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)

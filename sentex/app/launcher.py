"""``sentex app``: serve a model in the Streamlit demo page (``sentex/app/streamlit_app.py``, shipped in the package).

This is a launcher only: it checks the arguments, then runs
``streamlit run <sentex>/app/streamlit_app.py -- --model PATH`` so that the page is the same whether it is
started through sentex or through Streamlit directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from sentex.app.logic import MODEL_ENV, QUICKSTART_COMMAND
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
    """
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_file)]
    cmd += ["--server.port", str(args.port), "--server.address", args.address, "--browser.gatherUsageStats", "false"]
    if args.headless:
        cmd += ["--server.headless", "true"]
    if args.model:
        cmd += ["--", "--model", args.model]
    return cmd


def check_launch(args: argparse.Namespace, app_file: Path = APP_FILE) -> None:
    """Fail before starting a server that could only show an error.

    Raises:
        SentexError: Streamlit not installed, the page missing, or ``--model`` not found.
    """
    if importlib.util.find_spec("streamlit") is None:
        raise SentexError("the app needs Streamlit: pip install 'sentex[app]' (or pip install streamlit)")
    if not app_file.is_file():
        raise SentexError(
            f"{app_file}: app page not found; `sentex app` runs from a source checkout (pip install -e .)"
        )
    if args.model and not Path(args.model).expanduser().exists():
        raise SentexError(f"--model {args.model}: no such file or folder")


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

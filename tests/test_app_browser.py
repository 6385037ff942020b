"""The demo app served for real: ``sentex app`` answers over HTTP, and ``streamlit run`` on localhost
is driven by Debian's headless Chromium.

Playwright's own browser download does not work offline, so this uses the system Chromium
(``apt-get install chromium``) and skips, saying why, where it or Playwright is missing.
A screenshot of the finished page is saved to ``test-artifacts/app.png``.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentex.metrics import jaccard
from tests.conftest import TWEETS, write_rows
from tests.test_app import APP_FILE, ROOT, build_span_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
UI_TIMEOUT_MS = 120_000  # the first Extract loads the model in the server (MiniLM, a few seconds on 2 cores)

pytest.importorskip("streamlit", reason="serving the app needs streamlit (pip install streamlit)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, url: str, log: Path, seconds: float = 120) -> None:
    """Poll Streamlit's health endpoint; fail with the server log if it exits or never answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer at {url} within {seconds}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server and reap it (kill if it ignores SIGTERM)."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def span_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_span_checkpoint(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(span_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``streamlit run`` on 127.0.0.1 and a free port; stopped (and reaped) in teardown."""
    port, log = free_port(), tmp_path_factory.mktemp("streamlit") / "server.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.address", "127.0.0.1"]
    cmd += ["--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    cmd += ["--", "--model", str(span_ckpt)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("SENTEX_MODEL", None)  # the --model argument must be what picks the model
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, log)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def playwright_api():
    """Playwright's sync API, where it and the system Chromium are installed; else skip (before any server starts)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return pytest.importorskip(
        "playwright.sync_api", reason="Playwright's Python package is missing (pip install playwright)"
    )


@pytest.fixture(scope="module")
def page(playwright_api, server: str) -> Iterator[object]:
    """Debian's Chromium, headless, on the served page."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1700}, accept_downloads=True)
        tab = context.new_page()
        tab.set_default_timeout(UI_TIMEOUT_MS)
        tab.goto(server)
        tab.get_by_role("textbox", name="Tweet", exact=True).wait_for()
        yield tab
        context.close()
        browser.close()


@pytest.fixture(scope="module")
def extractor(span_ckpt: Path):
    from sentex.deploy.load import load

    return load(str(span_ckpt))


def test_sentex_app_serves_the_page(span_ckpt: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "server.log"
    cmd = [sys.executable, "-m", "sentex", "app", "--model", str(span_ckpt), "--headless"]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port), "--address", "127.0.0.1"], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
    try:
        wait_until_healthy(proc, f"http://127.0.0.1:{port}", log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
    finally:
        stop(proc)
    # `sentex app` execs Streamlit: stopping that process must stop the server, not orphan it.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)


def download_text(page, label: str) -> str:
    with page.expect_download() as info:
        page.get_by_role("button", name=label, exact=True).click()
    return Path(info.value.path()).read_text(encoding="utf-8")


def test_browser_single_then_batch(page, extractor, tmp_path: Path) -> None:
    text = "Stuck in traffic for an hour and now I missed the start of the show, great"
    page.get_by_role("textbox", name="Tweet", exact=True).fill(text)
    page.locator('[data-testid="stRadio"]').get_by_text("negative", exact=True).click()
    page.get_by_role("button", name="Extract", exact=True).click()

    mark = page.locator("mark.sentex-phrase")
    mark.wait_for()
    expected = extractor.extract([text], ["negative"])[0]
    assert mark.inner_text() == expected.strip()
    tweet = page.locator("div.sentex-tweet")
    assert tweet.inner_text().strip() == text.strip()  # the whole tweet is shown around the highlight
    assert page.get_by_text("Latency: ").is_visible()

    upload = write_rows(tmp_path / "batch.csv", TWEETS)
    page.locator('input[type="file"]').set_input_files(str(upload))
    page.get_by_role("button", name="Download results CSV", exact=True).wait_for()
    preds = extractor.extract([t[1] for t in TWEETS], [t[3] for t in TWEETS])
    results = list(csv.DictReader(io.StringIO(download_text(page, "Download results CSV"))))
    assert [r["textID"] for r in results] == [t[0] for t in TWEETS]
    assert [r["prediction"] for r in results] == preds
    assert [r["selected_text"] for r in results] == [t[2] for t in TWEETS]
    scores = [jaccard(p, t[2]) for p, t in zip(preds, TWEETS)]
    assert [float(r["jaccard"]) for r in results] == pytest.approx(scores)
    assert page.get_by_test_id("stMetricValue").filter(has_text=f"{sum(scores) / len(scores):.4f}").count() == 1
    submission = list(csv.DictReader(io.StringIO(download_text(page, "Download submission CSV"))))
    assert submission == [{"textID": t[0], "selected_text": p} for t, p in zip(TWEETS, preds)]
    assert page.get_by_test_id("stDataFrame").is_visible()
    # The single prediction survives the batch reruns, so the screenshot shows both.
    assert mark.inner_text() == expected.strip()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000


def test_browser_bad_csv_shows_error_and_page_keeps_working(page, playwright_api, extractor, tmp_path: Path) -> None:
    bad = tmp_path / "wrong.csv"
    bad.write_text("id,tweet\n1,hello\n", encoding="utf-8")
    page.locator('input[type="file"]').set_input_files(str(bad))
    alert = page.get_by_text("wrong.csv: missing column(s) textID, text, sentiment")
    alert.wait_for()
    # The previous test's results table stays on screen until the rerun that shows the error has
    # finished, so wait for it to go (expect retries) instead of counting once.
    playwright_api.expect(page.get_by_test_id("stDataFrame")).to_have_count(0)

    text = "so proud of my little sister today"
    page.get_by_role("textbox", name="Tweet", exact=True).fill(text)
    page.locator('[data-testid="stRadio"]').get_by_text("positive", exact=True).click()
    page.get_by_role("button", name="Extract", exact=True).click()
    expected = extractor.extract([text], ["positive"])[0]
    page.locator("div.sentex-tweet").filter(has_text=text).wait_for()
    assert page.locator("mark.sentex-phrase").inner_text() == expected.strip()

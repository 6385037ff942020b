"""The demo app served for real: ``sentex app`` answers over HTTP, and ``streamlit run`` on localhost
is driven by Debian's headless Chromium.

Playwright's own browser download does not work offline, so this uses the system Chromium
(``apt-get install chromium``), found as ``.ci/run`` finds it (``tests.conftest.chromium``). Where it,
Playwright or Streamlit is missing these tests skip, saying why; under ``CI=true`` they fail instead.
A screenshot of the finished page is saved to ``test-artifacts/app.png``.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sentex.metrics import jaccard
from tests.conftest import APP_FILE, ROOT, TWEETS, chromium, missing, require_module, write_rows
from tests.helpers import free_port

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


@pytest.fixture(scope="module", autouse=True)
def streamlit_installed() -> None:
    """Every test here serves the app; skip (fail under CI=true) before any server starts without Streamlit."""
    require_module("streamlit", "serving the app needs streamlit (pip install -e '.[app]')")


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
def server(untrained_span_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``streamlit run`` on 127.0.0.1 and a free port; stopped (and reaped) in teardown."""
    port, log = free_port(), tmp_path_factory.mktemp("streamlit") / "server.log"
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.address", "127.0.0.1"]
    cmd += ["--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    cmd += ["--", "--model", str(untrained_span_ckpt)]
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
def chromium_path() -> str:
    """Debian's Chromium; skips (fails under CI=true) before any server starts where it is missing."""
    path = chromium()
    if path is None:
        missing("no chromium on PATH (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def playwright_api(chromium_path: str):
    """Playwright's sync API, where it and the system Chromium are installed; else skip (before any server starts)."""
    return require_module("playwright.sync_api", "Playwright's Python package is missing (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def page(playwright_api, chromium_path: str, server: str) -> Iterator[object]:
    """Debian's Chromium, headless, on the served page."""
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1700}, accept_downloads=True)
        tab = context.new_page()
        tab.set_default_timeout(UI_TIMEOUT_MS)
        tab.goto(server)
        tab.get_by_role("textbox", name="Tweet", exact=True).wait_for()
        yield tab
        context.close()
        browser.close()


def test_sentex_app_serves_the_page(untrained_span_ckpt: Path, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "server.log"
    cmd = [sys.executable, "-m", "sentex", "app", "--model", str(untrained_span_ckpt), "--headless"]
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


def test_browser_single_then_batch(page, untrained_extractor, tmp_path: Path) -> None:
    text = "Stuck in traffic for an hour and now I missed the start of the show, great"
    page.get_by_role("textbox", name="Tweet", exact=True).fill(text)
    page.locator('[data-testid="stRadio"]').get_by_text("negative", exact=True).click()
    page.get_by_role("button", name="Extract", exact=True).click()

    mark = page.locator("mark.sentex-phrase")
    mark.wait_for()
    expected = untrained_extractor.extract([text], ["negative"])[0]
    assert mark.inner_text() == expected.strip()
    tweet = page.locator("div.sentex-tweet")
    assert tweet.inner_text().strip() == text.strip()  # the whole tweet is shown around the highlight
    assert page.get_by_text("Latency: ").is_visible()

    upload = write_rows(tmp_path / "batch.csv", TWEETS)
    page.locator('input[type="file"]').set_input_files(str(upload))
    page.get_by_role("button", name="Download results CSV", exact=True).wait_for()
    preds = untrained_extractor.extract([t[1] for t in TWEETS], [t[3] for t in TWEETS])
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


def test_browser_bad_csv_shows_error_and_page_keeps_working(
    page, playwright_api, untrained_extractor, tmp_path: Path
) -> None:
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
    expected = untrained_extractor.extract([text], ["positive"])[0]
    page.locator("div.sentex-tweet").filter(has_text=text).wait_for()
    assert page.locator("mark.sentex-phrase").inner_text() == expected.strip()

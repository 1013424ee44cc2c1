"""End to end in a real browser: start the app, upload a photo on the upload page, read the count.

Debian's chromium (`apt-get install -y chromium`) is driven by Playwright, headless, on
127.0.0.1; Playwright cannot download its own browser offline, so it is pointed at that one.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT, SHARED_SAMPLE
from core.predict import load_counter
from core.store import Store
from tests.builders import awkward_batch

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM}: install it with "
                       "`sudo apt-get install -y chromium` (`make test` does so when run as root)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the dashboard did not answer at {url} within {timeout:.0f} s")


@pytest.fixture
def dashboard_url(trained_store):
    port = free_port()
    env = {**os.environ, "BINSIGHT_STORE": str(trained_store)}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def test_upload_a_batch_of_awkward_files_and_read_every_count(dashboard_url, trained_store, tmp_path):
    """About a dozen files at once (real sample bins where present, GIF, 16-bit PNG, CMYK, EXIF-rotated,
    empty, HTML renamed .jpg, oversized, ...): every good photo gets its count, every bad one its
    own error, and the app never ends with "This app has encountered an error"."""
    from playwright.sync_api import expect, sync_playwright

    files, good, bad = awkward_batch()
    manifest = SHARED_SAMPLE / "manifest.csv"
    if manifest.is_file():  # two real ABID bins first, as a manager would upload them
        real = [SHARED_SAMPLE / line.split(",")[0] for line in manifest.read_text().splitlines()[1:3]]
        files = [(path.name, path.read_bytes(), "image/jpeg") for path in real] + files
        good |= {path.name for path in real}
    for name, data, _ in files:
        (tmp_path / name).write_bytes(data)
    counter = load_counter("best", Store(trained_store))
    expected = sorted(counter.count(data).count for name, data, _ in files if name in good)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{dashboard_url}/upload")
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                [str(tmp_path / name) for name, _, _ in files])
            metrics = page.locator('[data-testid="stMetric"]').filter(has_text="Items counted")
            expect(metrics).to_have_count(len(good), timeout=120_000)
            shown = sorted(int(m.locator('[data-testid="stMetricValue"]').inner_text()) for m in metrics.all())
            # issue #18: each photo's count and confidence are the highest of the bars drawn beside it
            confidences = page.locator('[data-testid="stMetric"]').filter(has_text="Confidence")
            charts = page.locator(".js-plotly-plot")
            expect(charts).to_have_count(len(good), timeout=60_000)
            for k, (metric, sure) in enumerate(zip(metrics.all(), confidences.all(), strict=True)):
                charts.nth(k).scroll_into_view_if_needed()
                bars = charts.nth(k).locator("text.bartext")
                expect(bars).not_to_have_count(0)
                heights = [int(text.rstrip("%")) for text in bars.all_text_contents()]
                counted = int(metric.locator('[data-testid="stMetricValue"]').inner_text())
                assert sure.locator('[data-testid="stMetricValue"]').inner_text() == f"{max(heights)}%"
                assert heights[counted] == max(heights), (counted, heights)
            errors = page.locator('[data-testid="stAlertContentError"]')
            expect(errors).to_have_count(len(bad))
            texts = errors.all_inner_texts()
            assert all(any(text.startswith(name) for text in texts) for name in bad), texts
            expect(page.get_by_text("This app has encountered an error")).to_have_count(0)
            # served through the app's navigation (its page titles), even when opened by URL
            expect(page.get_by_test_id("stSidebarNav").get_by_text("Reconcile a batch")).to_be_visible()
        finally:
            browser.close()
    assert shown == expected

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

from core.config import PROJECT_ROOT
from core.predict import load_counter
from core.store import Store
from tests.builders import bin_photo

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


def test_upload_a_photo_and_read_the_count(dashboard_url, trained_store, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo = tmp_path / "bin.jpg"
    bin_photo(3, seed=4242).save(photo, quality=90)
    expected = load_counter("best", Store(trained_store)).count(photo.read_bytes()).count

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{dashboard_url}/upload")
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
            metric = page.locator('[data-testid="stMetric"]').filter(has_text="Items counted")
            expect(metric).to_be_visible(timeout=60_000)
            shown = metric.locator('[data-testid="stMetricValue"]').inner_text()
            expect(page.get_by_text("bin.jpg").first).to_be_visible()
            # served through the app's navigation (its page titles), even when opened by URL
            expect(page.get_by_test_id("stSidebarNav").get_by_text("Reconcile a batch")).to_be_visible()
        finally:
            browser.close()
    assert int(shown) == expected

"""End to end in a real browser: start the app, upload a photo on the upload page, read the count.

Debian's chromium (`apt-get install -y chromium`) is driven by Playwright, headless, on
127.0.0.1; Playwright cannot download its own browser offline, so it is pointed at that one.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT, SHARED_SAMPLE
from core.counting.service import load_counter
from core.reconcile.review import history
from core.store.database import Store
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
    with dashboard_over(trained_store) as url:
        yield url


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


@contextmanager
def dashboard_over(store: Path) -> Iterator[str]:
    """The dashboard on a free loopback port over `store` (its url), stopped afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"],
        cwd=PROJECT_ROOT, env={**os.environ, "BINSIGHT_STORE": str(store)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
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


@pytest.fixture
def queue_url(tmp_path):
    from tests.builders import build_recount_store

    store, batch, true = build_recount_store(tmp_path)
    with dashboard_over(store) as url:
        yield url, store, batch, true


def settled(page) -> None:
    """Wait until the app has finished its run (its "running" status is gone)."""
    from playwright.sync_api import expect

    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=180_000)  # a loaded CI machine is slow


def record_from_the_keyboard(page, outcome_index: int, count: int | None, note: str) -> str:
    """On the queue page: choose the outcome with the arrow keys, type the count and the note, press
    Enter; returns the bin it was recorded for."""
    from playwright.sync_api import expect

    settled(page)
    heading = page.get_by_role("heading").filter(has_text=re.compile(r"^Bin \d+ of \d+: "))
    image = heading.inner_text().split(": ", 1)[1].strip()
    radio = page.get_by_test_id("stRadio").filter(has_text="Outcome").locator("input").first
    radio.focus()
    for _ in range(outcome_index):
        page.keyboard.press("ArrowRight")
    count_box = page.get_by_label('Items counted (for "recounted")')
    if count is not None:
        count_box.fill(str(count))
    note_box = page.get_by_label("Note (optional)")
    note_box.fill(note)
    note_box.press("Enter")
    expect(heading).not_to_have_text(re.compile(re.escape(image) + r"\s*$"), timeout=30_000)
    settled(page)
    return image


def name_yourself(page, name: str) -> None:
    """Without a login, a local user names themselves before recording."""
    settled(page)
    box = page.get_by_label("Your name (recorded with each outcome)")
    box.fill(name)
    box.press("Enter")
    settled(page)


def open_bin(page, image: str) -> None:
    """Pick a bin of the queue from the keyboard: type its name in the "Bin" box, Enter."""
    settled(page)
    page.get_by_test_id("stSelectbox").filter(has_text=re.compile(r"^Bin")).locator("input").click()
    page.keyboard.type(image)
    page.keyboard.press("Enter")
    settled(page)


def test_the_queue_in_a_browser_keyboard_only_two_users(queue_url):
    """Three outcomes recorded from the keyboard survive a reload; a second browser, as another user,
    recording the same bin keeps both entries, and the page shows the later one."""
    from playwright.sync_api import expect, sync_playwright

    url, store, batch, true = queue_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            ann = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            ann.goto(f"{url}/queue")
            expect(ann.get_by_text("0 of 12 done")).to_be_visible(timeout=120_000)
            name_yourself(ann, "ann")
            done = [record_from_the_keyboard(ann, 0, 3, "top shelf"), record_from_the_keyboard(ann, 1, None, ""),
                    record_from_the_keyboard(ann, 2, None, "taped shut")]
            ann.reload()
            expect(ann.get_by_text("3 of 12 done")).to_be_visible(timeout=60_000)
            entries = history(Store(store), "recount", batch)
            assert entries["image"].tolist() == done
            assert entries["outcome"].tolist() == ["recounted", "confirmed", "unusable"]
            assert entries["who"].str.startswith("ann").all()

            bob = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            bob.goto(f"{url}/queue")
            expect(bob.get_by_text("3 of 12 done")).to_be_visible(timeout=120_000)
            name_yourself(bob, "bob")
            open_bin(bob, done[0])
            expect(bob.get_by_text("Now: recounted: 3 items")).to_be_visible(timeout=30_000)
            settled(bob)
            record_from_the_keyboard(bob, 0, 4, "bob's count")
            open_bin(bob, done[0])
            expect(bob.get_by_text("Now: recounted: 4 items")).to_be_visible(timeout=30_000)
            expect(bob.get_by_text("bob (local, not signed in)").first).to_be_visible()
            expect(bob.get_by_text("This app has encountered an error")).to_have_count(0)
        finally:
            browser.close()
    both = history(Store(store), "recount", batch, done[0])
    assert both["count"].tolist() == [3, 4] and both["who"].str[:3].tolist() == ["ann", "bob"]


# Elements of a metric whose text does not fit: Streamlit cuts such text off with an ellipsis.
CUT_OFF = """() => [...document.querySelectorAll('[data-testid="stMetricValue"], [data-testid="stMetricValue"] *')]
    .filter(el => el.scrollWidth > el.clientWidth + 1).map(el => el.textContent)"""
CONTENT = ", ".join(f'[data-testid="{kind}"]' for kind in (
    "stMetric", "stPlotlyChart", "stDataFrame", "stTable", "stImage", "stFileUploader"))


def test_every_page_shows_content_and_no_figure_is_cut_off(tmp_path):
    """Every page of the menu opens without an error and shows more than a hint; no figure is cut off
    at the default width, the queue's count of a bin counted as "more than 5" included."""
    from playwright.sync_api import expect, sync_playwright

    from core.reconcile.batches import batch_bins, get_batch
    from dashboard.pages import PAGES
    from tests.builders import build_every_page_store

    store, batch = build_every_page_store(tmp_path)
    top = get_batch(Store(store), batch).settings["num_classes"] - 1
    over_five = batch_bins(Store(store), batch).query("predicted == @top")["image"].tolist()
    assert over_five, "the fixture's model should count a bin as more than 5"
    with dashboard_over(store) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            for each in PAGES:
                page.goto(url if each == PAGES[0] else f"{url}/{each.name}")
                expect(page.get_by_test_id("stMain").locator("h1").first).to_be_visible(timeout=60_000)
                settled(page)
                expect(page.get_by_test_id("stException")).to_have_count(0)
                expect(page.get_by_text("This app has encountered an error")).to_have_count(0)
                expect(page.get_by_text("Train a model from the project folder")).to_have_count(0)
                expect(page.locator(CONTENT).first, f"{each.title} shows nothing but hints").to_be_attached(
                    timeout=30_000)
                settled(page)
                assert page.evaluate(CUT_OFF) == [], each.title
            page.goto(f"{url}/queue")
            open_bin(page, over_five[0])
            counted = page.get_by_test_id("stMetric").filter(has_text="Counted").get_by_test_id("stMetricValue")
            expect(counted).to_have_text(f"{top}+")
            assert page.evaluate(CUT_OFF) == []
        finally:
            browser.close()

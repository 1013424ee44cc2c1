"""The README's screenshots of the recount loop, taken in headless Chromium on real sample photos:

    .venv/bin/python docs/screenshots.py        # writes docs/recount-queue.png, docs/recount-results.png

A small HOG+SVM is trained on 600 photos of the shared ABID sample (100 of each count 0..5, the
224 px natural-mix ones), 80 other photos are reconciled with a fifth of their records moved by 1
or 2 items (`core.reconcile.inventory.simulate_errors`), and the true counts of 12 of the 16 riskiest bins are
recorded, as a person working the queue would.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.classical import ClassicalConfig, train_classical  # noqa: E402
from core.config import PROJECT_ROOT, SHARED_SAMPLE  # noqa: E402
from core.reconcile.recounts import queue, with_outcomes  # noqa: E402
from core.reconcile.review import Review, record_reviews  # noqa: E402
from core.store.database import Store  # noqa: E402
from tests.builders import run_cli  # noqa: E402
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, dashboard_over, open_bin, settled  # noqa: E402


def copy_collection(part: pd.DataFrame, folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    for file in part["file"]:
        shutil.copyfile(SHARED_SAMPLE / file, folder / file)
    part[["file", "count"]].assign(metadata="").to_csv(folder / "manifest.csv", index=False)
    return folder


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    from core.reconcile.inventory import simulate_errors

    work = Path(tempfile.mkdtemp(prefix="binsight-shots-"))
    manifest = pd.read_csv(SHARED_SAMPLE / "manifest.csv")
    natural = manifest[(manifest["count"] <= 5) & (manifest["source_repo"] == "NubZoro/bin_validator")]
    shuffled = natural.sample(frac=1.0, random_state=0)
    train = shuffled.groupby("count").head(100)
    batch_part = shuffled.drop(train.index).head(80)
    data, bins = copy_collection(train, work / "train"), copy_collection(batch_part, work / "bins")
    store = Store(work / "store")
    train_classical(data, ClassicalConfig("hog", "svc", grid={"C": [1, 10]}, image_size=64, folds=3), store, n_jobs=2)
    true = dict(zip(batch_part["file"], batch_part["count"], strict=True))
    recorded, _ = simulate_errors(list(true.values()), 6, 0.2, seed=4)
    pd.DataFrame({"image": list(true), "recorded_quantity": recorded}).to_csv(work / "records.csv", index=False)
    run = run_cli("reconcile", "--data", str(bins), "--records", str(work / "records.csv"), "--budget", "20%",
                  "--out", str(work / "report.csv"), store=store.root)
    if run.returncode:
        sys.exit(run.stderr)
    batch = next(line.split(": ", 1)[1] for line in run.stdout.splitlines() if line.startswith("batch: "))
    todo = queue(with_outcomes(store, batch), "riskiest first")
    record_reviews(store, [Review("recount", batch, image, "recounted", "ann@warehouse.example", int(true[image]),
                                  source="screenshots") for image in todo["image"][:12]])
    with dashboard_over(store.root) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_context(viewport={"width": 1400, "height": 1900}).new_page()
            page.goto(f"{url}/queue")
            expect(page.get_by_text("12 of 16 done")).to_be_visible(timeout=60_000)
            open_bin(page, todo["image"][12].split("/")[-1])
            page.screenshot(path=str(PROJECT_ROOT / "docs" / "recount-queue.png"), full_page=True)
            page.goto(f"{url}/recount_results")
            expect(page.get_by_text("12 bins recounted")).to_be_visible(timeout=60_000)
            settled(page)
            page.wait_for_timeout(2000)  # the table is drawn on a canvas after the run
            page.screenshot(path=str(PROJECT_ROOT / "docs" / "recount-results.png"), full_page=True)
            browser.close()
    print(f"screenshots in {PROJECT_ROOT / 'docs'}; demo store in {store.root}")


if __name__ == "__main__":
    main()

"""Dashboard page renders: every page through Streamlit's AppTest against a store, first and warm.

The warm render (caches filled by an earlier run in the same process) is what a manager waits
for when moving between pages; the target is under a second per page. The first render is the
baseline. Counting pages are measured doing their work: the upload page counting one photo,
the reconcile page reconciling a batch.

    .venv/bin/python -m bench.dashboard --store models --batch 20
"""
from __future__ import annotations

import argparse
import io
import os
import time
import zipfile
from pathlib import Path

from core.config import PROJECT_ROOT, store_dir
from dashboard.pages import PAGES

APP = PROJECT_ROOT / "dashboard" / "app.py"


def _photos(store: Path, n: int) -> list[tuple[str, bytes]]:
    """Up to `n` test photos of the store's best experiment, as (name, bytes)."""
    from core.store.database import Store

    store_obj = Store(store)
    best = store_obj.best()
    paths = store_obj.predictions(best)["path"].head(n) if best else []
    return [(Path(p).name, Path(p).read_bytes()) for p in paths if Path(p).is_file()]


def _prepare(at, page: str, photos: list[tuple[str, bytes]]) -> bool:
    """Put a page in its working state (a photo to count, a batch to reconcile); False if none."""
    if page == "upload" and photos:
        at.file_uploader(key="up-files").set_value([(photos[0][0], photos[0][1], "image/jpeg")])
        return True
    if page == "reconcile" and photos:
        csv = "image,recorded_quantity\n" + "".join(f"{name},1\n" for name, _ in photos)
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in photos:
                zf.writestr(name, data)
        at.file_uploader(key="rec-csv").set_value(("records.csv", csv.encode(), "text/csv"))
        at.file_uploader(key="rec-photos").set_value([("bins.zip", archive.getvalue(), "application/zip")])
        return True
    return False


def _timed(at) -> float:
    start = time.perf_counter()
    at.run()
    if at.exception:
        raise RuntimeError(f"the page failed: {at.exception[0].value}")
    return time.perf_counter() - start


def render_times(store: Path, batch: int = 20, repeat: int = 3) -> list[tuple[str, float, float]]:
    """(page, first render s, best warm render s) for every page, in one process."""
    from streamlit.testing.v1 import AppTest

    os.environ["BINSIGHT_STORE"] = str(store)
    photos = _photos(store, batch)
    out = []
    for page in PAGES:
        at = AppTest.from_file(str(APP), default_timeout=600)
        first = _timed(at)  # the first run shows the default page, the overview
        if page != PAGES[0]:
            first = _timed(at.switch_page(page.script))
        if _prepare(at, page.name, photos):
            first += _timed(at)  # the page's own first render (loading the model) plus its first count
        warm = min(_timed(at) for _ in range(repeat))
        out.append((page.name, first, warm))
    return out


def run(store: Path | None = None, batch: int = 20, repeat: int = 3) -> list[tuple[str, str, str, str]]:
    """Rows for bench.common.print_table: (page, warm render, first render, speed-up)."""
    rows = []
    for page, first, warm in render_times(store or store_dir(), batch, repeat):
        rows.append((f"dashboard page {page}", f"{warm:.3f} s warm", f"{first:.3f} s first render",
                     f"{first / warm:.0f}x"))
    return rows


def main() -> None:
    from bench.common import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=store_dir(), help="experiment store (default: BINSIGHT_STORE)")
    parser.add_argument("--batch", type=int, default=20, help="photos in the reconcile batch")
    parser.add_argument("--repeat", type=int, default=3, help="warm renders per page (the best is kept)")
    args = parser.parse_args()
    print_table(run(args.store, args.batch, args.repeat))


if __name__ == "__main__":
    main()

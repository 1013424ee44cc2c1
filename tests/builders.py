"""Plain helpers the tests build their inputs with (generated photos and collections are
`core.data.synthetic`'s): a batch of awkward uploads, a tiny trained store, the command line and
dashboard pages run as a user would, the marker for tests on the shared ABID sample. Fixtures live
in conftest.py."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.classical import ClassicalConfig, train_classical
from core.cnn import find_lr, train_cnn
from core.config import PROJECT_ROOT, SHARED_SAMPLE
from core.data.synthetic import bin_jpeg, bin_photo, write_abid_collection
from core.store.database import Store
from dashboard.pages import PAGES, find_page

requires_sample = pytest.mark.skipif(
    not (SHARED_SAMPLE / "manifest.csv").is_file(),
    reason=f"the shared ABID sample is not at {SHARED_SAMPLE} (a clone outside the project's home)",
)


def weak_sample_classifier(keep: Callable[[pd.DataFrame], np.ndarray] | None, train: int,
                           val: int) -> dict[str, tuple[np.ndarray, ...]]:
    """A weak classifier of the shared sample's photos, cheaply: ImageNet EfficientNet-Lite0's pooled
    features at 96 px and a balanced logistic regression fitted on `train` photos of the training
    split. The photos are those of the sample's collection `keep` selects (all when None), split as
    training splits them; `val` photos of the validation split and the whole test split are scored.
    Returns, per part ("val", "test"): (its probabilities, its counts, its paths)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from core.classical.features import extract, make_extractor
    from core.data.collection import load_collection
    from core.data.dataset import assign_splits
    from core.data.images import load_rgb

    table = load_collection(SHARED_SAMPLE, items=False, open_top=True).table
    table = table if keep is None else table[keep(table)]
    split = assign_splits(table["group"])
    rng = np.random.default_rng(0)
    rows = {"train": rng.choice(np.flatnonzero(split == "train"), train, replace=False),
            "val": rng.choice(np.flatnonzero(split == "val"), val, replace=False),
            "test": np.flatnonzero(split == "test")}
    paths, counts = table["path"].to_numpy(), table["count"].to_numpy()
    features = {part: extract(make_extractor("cnn"), np.stack([load_rgb(p, 96) for p in paths[r]]))
                for part, r in rows.items()}
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, class_weight="balanced", max_iter=3000))
    classifier.fit(features["train"], counts[rows["train"]])
    return {part: (classifier.predict_proba(features[part]), counts[rows[part]], paths[rows[part]])
            for part in ("val", "test")}


def awkward_batch() -> tuple[list[tuple[str, bytes, str]], set[str], set[str]]:
    """About a dozen uploads at once: (name, bytes, mime), the good names and the bad names."""
    photo = bin_photo(2, seed=3)

    def save(img, fmt, **kwargs) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **kwargs)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 8
    gif = io.BytesIO()
    photo.save(gif, "GIF", save_all=True, append_images=[bin_photo(4, seed=4)])
    good = {
        "one.jpg": bin_jpeg(1, seed=11), "four.jpg": bin_jpeg(4, seed=12), "animated.gif": gif.getvalue(),
        "sixteen-bit.png": save(Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257), "PNG"),
        "cmyk.jpg": save(photo.convert("CMYK"), "JPEG"), "rotated.jpg": save(photo.rotate(-90, expand=True), "JPEG",
                                                                             exif=exif),
        "alpha.png": save(photo.convert("RGBA"), "PNG"), "grey.jpg": save(photo.convert("L"), "JPEG"),
    }
    bad = {"empty.jpg": b"", "page.jpg": b"<html><body>not a photo</body></html>",
           "truncated.jpg": bin_jpeg(3, seed=13)[:200], "huge.png": save(Image.new("L", (8000, 7000)), "PNG")}
    mime = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif"}
    files = [(name, data, mime[name.rsplit(".", 1)[1]]) for name, data in {**good, **bad}.items()]
    return files, set(good), set(bad)


def run_cli(*args: str, store: Path, **env: str) -> subprocess.CompletedProcess:
    """`python train.py ARGS` in a clean environment, with BINSIGHT_STORE set (plus `env`)."""
    return subprocess.run([sys.executable, "train.py", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={"BINSIGHT_STORE": str(store), "PATH": "/usr/bin:/bin", **env}, timeout=300)


def open_page(name: str) -> AppTest:
    """The app with page `name` open (a fresh session), failing on any exception it shows."""
    at = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=120).run()
    if name != PAGES[0].name:  # the first run shows the default page
        at.switch_page(find_page(name).script).run()
    assert not at.exception, f"{name}: {at.exception[0].value}"
    return at


def settle_folders(*folders: Path) -> None:
    """Date folders back a minute, past the collection index's racy-timestamp margin, as if their files
    were written long before the next load: only then does the index trust them (see core.data.index)."""
    past = time.time_ns() - 60 * 10**9
    for folder in folders:
        os.utime(folder, ns=(past, past))


CNN_TINY = {"batch_size": 8, "lr_finder_steps": 8, "patience": 5}
CLASSICAL_TINY = {"image_size": 32, "feature_params": {"size": 32}, "folds": 3}


def build_trained_store(root: Path) -> Path:
    """Train tiny experiments into `root/store` (data in `root/data`); returns the store folder.

    Generated photos in ABID's own layout (36, six per count, item names in their metadata),
    trained for seconds: CNN runs at 32 px whose phases start with the LR finder (so pages have
    curves and LR sweeps), a standalone LR sweep (a finished experiment without test metrics,
    which model pickers must leave out) and classical models.
    """
    data = write_abid_collection(root / "data", [count for count in range(6) for _ in range(6)])
    store = Store(root / "store")
    train_cnn(data, "quick", store, progress=False, overrides={
        **CNN_TINY, "phases": [{"epochs": 1, "image_size": 32, "train_body": False},
                               {"epochs": 1, "image_size": 32, "differential": True}]})
    train_cnn(data, "quick", store, progress=False, overrides={
        **CNN_TINY, "phases": [{"epochs": 2, "image_size": 32, "train_body": False, "lr": 3e-3}]})
    find_lr(data, "quick", store, progress=False, overrides={**CNN_TINY, "phases": [{"epochs": 1, "image_size": 32}]})
    train_classical(data, ClassicalConfig("hog", "svc", grid={"C": [1, 10]}, **CLASSICAL_TINY), store, n_jobs=1,
                    progress=False)
    train_classical(data, ClassicalConfig("raw", "logreg", grid={"C": [1]}, **CLASSICAL_TINY), store, n_jobs=1,
                    progress=False)
    return store.root


def build_recount_store(root: Path, bins: int = 12, seed: int = 0,
                        counts: tuple[int, ...] = tuple(range(6))) -> tuple[Path, str, dict[str, int]]:
    """A store with one tiny classical model (seconds to train) and one reconciliation batch of
    `bins` generated photos, a third of their records moved by 1 or 2 items, every bin flagged
    (a budget of all of them). The model learns six photos of each of `counts` (counts above 5 make
    its open class, "more than 5"); the bins hold them in turn. Returns (store folder, batch id,
    true count of each bin)."""
    from core.counting.service import load_counter
    from core.reconcile.batches import batch_settings, save_uploaded_batch
    from core.reconcile.inventory import reconcile, simulate_errors

    data = write_abid_collection(root / "data", [count for count in counts for _ in range(6)])
    store = Store(root / "store")
    train_classical(data, ClassicalConfig("raw", "logreg", grid={"C": [1]}, **CLASSICAL_TINY), store, n_jobs=1,
                    progress=False)
    counter = load_counter("best", store)
    true = [counts[k % len(counts)] for k in range(bins)]
    recorded, _ = simulate_errors(true, 6, 1 / 3, seed)
    photos = {f"bin-{k:02d}.jpg": bin_jpeg(true[k], seed=500 + k) for k in range(bins)}
    records = pd.DataFrame({"image": list(photos), "recorded_quantity": pd.array(recorded, dtype="Int64"),
                            "error": [""] * bins})
    report = reconcile(counter, records, photos, budget=bins)
    batch = save_uploaded_batch(store, report, photos, counter, batch_settings(counter, 0.2, 0.5, bins))
    return store.root, batch, dict(zip(photos, true, strict=True))


def build_every_page_store(root: Path) -> tuple[Path, str]:
    """A store in which every dashboard page has something to show: `build_recount_store`'s batch,
    over a model with an open class (so some bins are counted as "more than 5"), plus tiny CNN runs
    with learning-rate curves. Returns (store folder, batch id)."""
    store_root, batch, _ = build_recount_store(root, counts=(0, 1, 2, 3, 4, 5, 9, 10))
    store = Store(store_root)
    train_cnn(root / "data", "quick", store, progress=False, overrides={
        **CNN_TINY, "phases": [{"epochs": 1, "image_size": 32, "train_body": False},
                               {"epochs": 1, "image_size": 32, "differential": True}]})
    return store_root, batch

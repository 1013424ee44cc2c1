"""Plain helpers the tests build their inputs with: generated bin photos and collections, a tiny
trained store, the marker for tests on the shared ABID sample. Fixtures live in conftest.py."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.classical import train_classical
from core.cnn import find_lr, train_cnn
from core.config import SHARED_SAMPLE
from core.store import Store

requires_sample = pytest.mark.skipif(
    not (SHARED_SAMPLE / "manifest.csv").is_file(),
    reason=f"the shared ABID sample is not at {SHARED_SAMPLE} (a clone outside the project's home)",
)


def bin_photo(count: int, seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A synthetic bin: `count` bright boxes on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 70, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        w, h = rng.integers(8, 18, size=2)
        x, y = rng.integers(0, size[0] - w), rng.integers(0, size[1] - h)
        colour = tuple(int(c) for c in rng.integers(150, 255, size=3))
        draw.rectangle([x, y, x + w, y + h], fill=colour)
    return img


def write_manifest_collection(root: Path, per_class: int = 6, max_count: int = 5) -> Path:
    """A manifest.csv collection of generated photos (counts 0..max_count), like the shared sample."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for count in range(max_count + 1):
        for k in range(per_class):
            name = f"images/c{count}_{k}.jpg"
            bin_photo(count, seed=count * 1000 + k).save(root / name, quality=90)
            rows.append({"file": name, "count": count, "metadata": ""})
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "count", "metadata"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_abid_collection(root: Path, counts: list[int]) -> Path:
    """ABID's own layout: bin-images/<id>.jpg and metadata/<id>.json."""
    (root / "bin-images").mkdir(parents=True, exist_ok=True)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for i, count in enumerate(counts, start=1):
        bin_photo(count, seed=i).save(root / "bin-images" / f"{i}.jpg")
        skus = {f"B00{i}{j}": {"asin": f"B00{i}{j}", "name": f"item {j}", "quantity": 1} for j in range(count)}
        meta = {"BIN_FCSKU_DATA": skus, "EXPECTED_QUANTITY": count, "image_fname": f"{i}.jpg"}
        (root / "metadata" / f"{i}.json").write_text(json.dumps(meta))
    return root


CNN_TINY = {"batch_size": 8, "lr_finder_steps": 8, "patience": 5}
CLASSICAL_TINY = {"image_size": 32, "feature_params": {"size": 32}, "folds": 3, "n_jobs": 1, "progress": False}


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
    train_classical(data, "hog", "svc", store=store, grid={"C": [1, 10]}, **CLASSICAL_TINY)
    train_classical(data, "raw", "logreg", store=store, grid={"C": [1]}, **CLASSICAL_TINY)
    return store.root

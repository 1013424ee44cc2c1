"""Shared fixtures: small generated bin photos, a temporary store, the shared ABID sample."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.config import SHARED_SAMPLE

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


@pytest.fixture
def store_root(tmp_path, monkeypatch) -> Path:
    """A fresh experiment store for the test, also seen by code that reads BINSIGHT_STORE."""
    root = tmp_path / "store"
    monkeypatch.setenv("BINSIGHT_STORE", str(root))
    return root


@pytest.fixture
def tiny_collection(tmp_path) -> Path:
    return write_manifest_collection(tmp_path / "tiny", per_class=6)

"""Generated bin photos and collections: `count` bright boxes on a dark, noisy background, written in
the layouts binsight reads. For smoke runs where no real photos can go (`bench/gpu.py`), benchmarks
and tests; never for figures about real bins."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


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


def bin_jpeg(count: int, seed: int) -> bytes:
    """`bin_photo` as the bytes of a JPEG upload."""
    buf = io.BytesIO()
    bin_photo(count, seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


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

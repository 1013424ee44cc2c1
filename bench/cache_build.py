"""Image-cache build: draft JPEG decoding on all cores vs a full PIL decode and resize per image."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import seconds
from core.data.cache import build_cache
from core.data.collection import load_collection


def naive_decode(paths: list[str], size: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths])


ALL_COUNTS = 10**6  # the cache rows cover every photo, not only the 0..5 task


def run(data: Path, n: int, size: int) -> list[tuple[str, str, str, str]]:
    load_s = seconds(lambda: load_collection(data, max_count=ALL_COUNTS))
    paths = load_collection(data, max_count=ALL_COUNTS).table["path"].tolist()[:n]
    with tempfile.TemporaryDirectory() as tmp:
        ours = seconds(lambda: build_cache(paths, size, Path(tmp), progress=False))
    naive = seconds(lambda: naive_decode(paths, size))
    return [
        (f"load collection ({len(paths)} photos)", f"{load_s:.2f} s", "-", "-"),
        (f"cache build {len(paths)} photos @{size}px", f"{len(paths) / ours:.0f} img/s ({ours:.1f} s)",
         f"{len(paths) / naive:.0f} img/s ({naive:.1f} s)", f"{naive / ours:.1f}x"),
    ]

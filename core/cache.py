"""Decode and resize every image once per resolution into a uint8 array on disk.

CPU training reads the same photos for many epochs and several models; decoding JPEGs each
time would dominate. The cache is an `.npy` file (memory-mapped on read) per image size,
filled by all cores with JPEG draft decoding, and written atomically.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.files import atomic_path
from core.images import ImageError, load_rgb

CHUNK = 64


def _fill(target: str, size: int, paths: list[str], start: int) -> dict[int, str]:
    """Worker: decode `paths` into rows `start...` of the memory-mapped cache file."""
    array = np.load(target, mmap_mode="r+")
    errors = {}
    for offset, path in enumerate(paths):
        try:
            array[start + offset] = load_rgb(path, size)
        except (ImageError, OSError) as err:
            errors[start + offset] = str(err)
    array.flush()
    return errors


def build_cache(paths: list[str], size: int, target: Path, workers: int | None = None,
                progress: bool = True) -> dict[int, str]:
    """Write `target` (N x size x size x 3 uint8); returns {row: reason} for images that failed."""
    workers = workers or os.cpu_count() or 1
    errors: dict[int, str] = {}
    with atomic_path(target) as tmp:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)).flush()
        chunks = [(i, paths[i:i + CHUNK]) for i in range(0, len(paths), CHUNK)]
        bar = tqdm(total=len(paths), desc=f"caching images at {size}px", unit="img", disable=not progress)
        with bar:
            if workers == 1:
                for start, part in chunks:
                    errors.update(_fill(str(tmp), size, part, start))
                    bar.update(len(part))
            else:
                with ProcessPoolExecutor(workers) as pool:
                    futures = {pool.submit(_fill, str(tmp), size, part, start): len(part) for start, part in chunks}
                    for future in as_completed(futures):
                        errors.update(future.result())
                        bar.update(futures[future])
        with atomic_path(target.with_suffix(".errors.json")) as err_tmp:
            err_tmp.write_text(json.dumps({str(k): v for k, v in sorted(errors.items())}))
    return errors


def cached_images(paths: list[str], size: int, folder: Path, progress: bool = True) -> tuple[np.ndarray, dict[int, str]]:
    """The cached array for `paths` at `size` (built on first use) and the rows that failed to decode."""
    target = folder / f"images_{size}.npy"
    errors_file = target.with_suffix(".errors.json")
    if target.exists() and errors_file.exists():
        errors = {int(k): v for k, v in json.loads(errors_file.read_text()).items()}
    else:
        errors = build_cache(paths, size, target, progress=progress)
    return np.load(target, mmap_mode="r"), errors

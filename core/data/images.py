"""The one place that turns bytes or files into RGB pixels.

Training, the image cache, the counting service and the dashboard all decode through
`open_image`, so a photo is pre-processed the same way wherever it comes from;
`decoded_batches` decodes a stream of photos in batches, a pool of threads working on the next
batch while the caller uses the current one.
"""
from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # larger images are refused before decoding (decompression bombs)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

ImageSource = str | Path | bytes | BinaryIO


class ImageError(ValueError):
    """A file that is not a usable photo; the message says why, for the user."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit or float grey: rescale, don't clip
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max()
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def _open_checked(source: str | Path | BinaryIO) -> Image.Image:
    """Open (header only) and refuse anything that is not a photo of a sane size."""
    try:
        img = Image.open(source)
    except UnidentifiedImageError as err:
        raise ImageError("not an image (unrecognised format)") from err
    except Image.DecompressionBombError as err:  # not an OSError: caught on its own
        raise ImageError(f"image too large (over {MAX_PIXELS // 1_000_000} megapixels)") from err
    except FileNotFoundError as err:
        raise ImageError("file not found") from err
    except Exception as err:  # noqa: BLE001 - a malformed header can raise nearly anything inside Pillow
        raise ImageError(f"not a readable image ({err.__class__.__name__}: {err})") from err
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise ImageError(f"image too large: {width}x{height} is over {MAX_PIXELS // 1_000_000} megapixels")
    if width == 0 or height == 0:
        img.close()
        raise ImageError("image has no pixels")
    return img


def pixel_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the photo at `path`, from its header alone; raises `ImageError` like the decoder."""
    with _open_checked(str(path)) as img:
        return img.size


def check_header(path: str | Path) -> str | None:
    """Why the file at `path` is not a usable photo, judged from its header alone; None if it looks fine.

    Cheap enough for a whole collection; full decoding (and its errors) happens in the image cache.
    """
    try:
        if Path(path).stat().st_size == 0:
            return "empty file"
        _open_checked(str(path)).close()
    except FileNotFoundError:
        return "file not found"
    except (ImageError, OSError) as err:
        return str(err)
    return None


def open_image(source: ImageSource, draft_size: int | None = None) -> Image.Image:
    """Decode a photo to an upright RGB image, or raise `ImageError` with a clear reason.

    Handles EXIF orientation, grayscale, CMYK, palette, alpha (composited on white), 16-bit PNG
    and animated images (first frame). `draft_size` lets JPEG decode at a reduced scale that is
    still at least that many pixels on each side, which is much faster for cache building.
    """
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty file")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and Path(source).stat().st_size == 0:
        raise ImageError(f"empty file: {source}")
    img = _open_checked(source)
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.seek(0)
        img.load()
        return _to_rgb(ImageOps.exif_transpose(img))
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on corrupt data; all mean "bad photo"
        raise ImageError(f"truncated or corrupt image ({err.__class__.__name__}: {err})") from err


def load_rgb(source: ImageSource, size: int) -> np.ndarray:
    """Decode and resize to a `size` x `size` uint8 RGB array (the whole bin, squashed, not cropped)."""
    img = open_image(source, draft_size=size)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_rgb_sizes(source: ImageSource, sizes: Sequence[int]) -> dict[int, np.ndarray]:
    """`load_rgb` at each of `sizes` (decoded once a size, so each array is the one `load_rgb` gives:
    an ensemble's members read their own sizes, as they trained)."""
    data = source if isinstance(source, (str, Path, bytes, bytearray)) else source.read()  # a stream reads once
    return {size: load_rgb(data, size) for size in sizes}


BESIDE_CPU_NETWORK = 4  # decoding threads at most where the network counts on the same cores


def decode_workers(network_on_cpu: bool = True) -> int:
    """Threads `decoded_batches` decodes with by default: one per usable core, at most
    `BESIDE_CPU_NETWORK` where the network that uses the photos runs on the same cores; every usable
    core where it runs elsewhere (a GPU), since decoding is then what limits the rate."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(BESIDE_CPU_NETWORK, usable) if network_on_cpu else usable)


Decoded = np.ndarray | dict[int, np.ndarray]  # a photo at one size, or at each of several (`load_rgb_sizes`)


def _decoded(source: ImageSource, size: int | tuple[int, ...]) -> Decoded | ImageError:
    try:
        return load_rgb(source, size) if isinstance(size, int) else load_rgb_sizes(source, size)
    except (ImageError, OSError) as err:
        return err if isinstance(err, ImageError) else ImageError(str(err))


def decoded_batches(sources: Iterable[ImageSource], size: int | tuple[int, ...], batch_size: int,
                    workers: int | None = None) -> Iterator[list[Decoded | ImageError]]:
    """`sources` in batches of `batch_size`, each photo decoded by `load_rgb` (a `size` px uint8
    array; for a tuple of sizes, `load_rgb_sizes`' dict) or the `ImageError` saying why it could not
    be, in the order given.

    With `workers` > 0 (default `decode_workers()`) a thread pool decodes the next batch while the
    caller works on the one yielded (Pillow decodes and resizes without holding the GIL), so the
    network and decoding overlap; 0 decodes in the caller's thread. `sources` is read lazily, one
    batch ahead, so a stream of any length is decoded in constant memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    it = iter(sources)
    chunks = iter(lambda: list(islice(it, batch_size)), [])
    workers = decode_workers() if workers is None else workers
    if workers <= 0:
        for chunk in chunks:
            yield [_decoded(source, size) for source in chunk]
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    ahead: deque[list[Future]] = deque()
    try:
        for chunk in chunks:
            ahead.append([pool.submit(_decoded, source, size) for source in chunk])
            if len(ahead) > 1:  # the batch just submitted decodes while this one is used
                yield [future.result() for future in ahead.popleft()]
        while ahead:
            yield [future.result() for future in ahead.popleft()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

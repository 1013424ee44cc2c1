"""What the counting pages do with uploads, apart from drawing: count, judge, unpack zips.

Kept free of Streamlit so that a bad upload's handling is tested directly.
"""
from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import PurePosixPath

from PIL import Image

from core.counting.service import BinCounter, CountResult
from core.data.images import ImageError, open_image
from core.reconcile.inventory import MISMATCH_THRESHOLD, PRIOR_WRONG, is_mismatch, judge

MAX_UPLOAD_BYTES = 500_000_000  # all uploads together, once unpacked: refuses zip bombs
MAX_UPLOAD_PHOTOS = 10_000  # all uploads together, zip members included
PREVIEW_PX = 800  # longest side of the photo shown beside its count
IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"]


@dataclass
class PhotoCount:
    name: str
    result: CountResult | None  # None when the file is not a usable photo
    error: str = ""


@dataclass
class Verdict:
    mismatch: bool
    p_mismatch: float | None  # None where the model cannot check the record
    text: str


def count_photos(counter: BinCounter, photos: Sequence[tuple[str, bytes]]) -> list[PhotoCount]:
    """Count each (name, bytes); a file that is not a photo gets a message instead of a count."""
    results = counter.count_batch([data for _, data in photos])
    return [PhotoCount(name, None, f"{name}: {res} — upload a JPEG or PNG photo of a bin.")
            if isinstance(res, ImageError) else PhotoCount(name, res)
            for (name, _), res in zip(photos, results, strict=True)]


def verdict(counter: BinCounter, result: CountResult, recorded: int, threshold: float = MISMATCH_THRESHOLD,
            prior_wrong: float = PRIOR_WRONG) -> Verdict:
    """Does the photo agree with the recorded quantity? With the probability that it does not
    (`core.reconcile.inventory.judge`: the photo weighed against how often records are wrong)."""
    _, p_mismatch, note = judge(counter, result, recorded, prior_wrong)
    shows = counter.exp.count_label(result.count)
    if p_mismatch is None:
        return Verdict(False, None, f"Recorded {recorded}, the photo looks like {shows}: {note}.")
    settings = f"probability of a mismatch {p_mismatch:.0%}, with {prior_wrong:.0%} of records assumed wrong"
    if is_mismatch(p_mismatch, threshold):
        return Verdict(True, p_mismatch, f"Probably a mismatch: recorded {recorded}, the photo shows {shows} "
                                         f"({settings}). Recount this bin.")
    return Verdict(False, p_mismatch, f"Matches the record of {recorded} ({settings}).")


def preview(data: bytes, max_px: int = PREVIEW_PX) -> Image.Image:
    """The pixels the counter decoded (8-bit RGB, upright), scaled down for the page; raises
    `ImageError` like the counter does."""
    img = open_image(data, draft_size=max_px)
    img.thumbnail((max_px, max_px))
    return img


def upload_key(files: Sequence[tuple[str, bytes]]) -> tuple[tuple[str, str], ...]:
    """What identifies a set of uploads: names and content hashes (cache key for the unpacked photos)."""
    return tuple((name, hashlib.sha256(data).hexdigest()) for name, data in files)


def _zip_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [m for m in archive.infolist() if not m.is_dir()
            and not PurePosixPath(m.filename).name.startswith(".")
            and "__MACOSX" not in m.filename
            and PurePosixPath(m.filename).suffix.lower().lstrip(".") in IMAGE_TYPES]


def photos_from_uploads(files: Sequence[tuple[str, bytes]], max_bytes: int = MAX_UPLOAD_BYTES,
                        max_photos: int = MAX_UPLOAD_PHOTOS) -> tuple[dict[str, bytes], list[str]]:
    """Uploaded photos and zips of photos -> {file name: bytes}, plus messages about what was skipped.

    Caps hold across ALL uploaded files together: at most `max_photos` photos and `max_bytes`
    once unpacked (zip bombs, or many zips that are small each); a file that would pass a cap is
    skipped whole, with a message. Zip members are keyed by their path inside the zip and, where
    unique, by their bare file name, so a records CSV can name either.
    """
    photos: dict[str, bytes] = {}
    problems: list[str] = []
    total_bytes = total_photos = 0
    caps = f"at most {max_photos:,} photos and {max_bytes // 1_000_000:,} MB once unpacked, over all uploads together"

    def over(n: int, size: int) -> bool:
        return total_photos + n > max_photos or total_bytes + size > max_bytes

    for name, data in files:
        if not name.lower().endswith(".zip"):
            if over(1, len(data)):
                problems.append(f"{name}: skipped, the uploads would pass the cap ({caps}); "
                                "upload fewer bins at a time.")
                continue
            photos[name] = data
            total_photos, total_bytes = total_photos + 1, total_bytes + len(data)
            continue
        try:
            with zipfile.ZipFile(BytesIO(data)) as archive:
                members = _zip_members(archive)
                size = sum(m.file_size for m in members)  # reading enforces these sizes (CRC check)
                if over(len(members), size):
                    problems.append(f"{name}: skipped, {len(members):,} photos and {size / 1e6:,.0f} MB once unpacked "
                                    f"would pass the cap ({caps}); split it and upload fewer bins at a time.")
                    continue
                if not members:
                    problems.append(f"{name}: no photos inside.")
                unpacked = {m.filename: archive.read(m) for m in members}
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError, NotImplementedError) as err:
            problems.append(f"{name}: not a readable zip file ({err}).")
            continue
        total_photos += len(unpacked)
        total_bytes += sum(map(len, unpacked.values()))
        photos.update(unpacked)
        bare: dict[str, list[str]] = {}
        for path in unpacked:
            bare.setdefault(PurePosixPath(path).name, []).append(path)
        for base, paths in bare.items():
            if len(paths) == 1:
                photos.setdefault(base, photos[paths[0]])
            else:
                problems.append(f"{name}: {len(paths)} photos are named {base}; use their paths in the CSV.")
    return photos, problems

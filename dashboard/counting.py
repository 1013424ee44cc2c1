"""What the counting pages do with uploads, apart from drawing: count, judge, unpack zips.

Kept free of Streamlit so that a bad upload's handling is tested directly.
"""
from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import PurePosixPath

from core.images import ImageError
from core.predict import BinCounter, CountResult
from core.reconcile import MISMATCH_THRESHOLD, is_mismatch

MAX_ZIP_BYTES = 1_000_000_000  # uncompressed; refuses zip bombs
IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"]


@dataclass
class PhotoCount:
    name: str
    result: CountResult | None  # None when the file is not a usable photo
    error: str = ""


@dataclass
class Verdict:
    mismatch: bool
    p_mismatch: float
    text: str


def count_photos(counter: BinCounter, photos: Sequence[tuple[str, bytes]]) -> list[PhotoCount]:
    """Count each (name, bytes); a file that is not a photo gets a message instead of a count."""
    results = counter.count_batch([data for _, data in photos])
    return [PhotoCount(name, None, f"{name}: {res} — upload a JPEG or PNG photo of a bin.")
            if isinstance(res, ImageError) else PhotoCount(name, res)
            for (name, _), res in zip(photos, results)]


def verdict(counter: BinCounter, result: CountResult, recorded: int, threshold: float = MISMATCH_THRESHOLD) -> Verdict:
    """Does the photo agree with the recorded quantity? With the probability that it does not."""
    p_mismatch = 1.0 - counter.p_count(result, recorded)
    if is_mismatch(p_mismatch, threshold):
        text = (f"Probably a mismatch: recorded {recorded}, the photo shows {result.count} — "
                f"probability of a mismatch {p_mismatch:.0%}. Recount this bin.")
        return Verdict(True, p_mismatch, text)
    return Verdict(False, p_mismatch, f"Matches the record of {recorded} — probability of a mismatch {p_mismatch:.0%}.")


def photos_from_uploads(files: Sequence[tuple[str, bytes]]) -> tuple[dict[str, bytes], list[str]]:
    """Uploaded photos and zips of photos -> {file name: bytes}, plus messages about what was skipped.

    Zip members are keyed by their path inside the zip and, where unique, by their bare file
    name, so a records CSV can name either.
    """
    photos: dict[str, bytes] = {}
    problems: list[str] = []
    for name, data in files:
        if not name.lower().endswith(".zip"):
            photos[name] = data
            continue
        try:
            with zipfile.ZipFile(BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()
                           and not PurePosixPath(m.filename).name.startswith(".")
                           and "__MACOSX" not in m.filename
                           and PurePosixPath(m.filename).suffix.lower().lstrip(".") in IMAGE_TYPES]
                if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                    problems.append(f"{name}: more than {MAX_ZIP_BYTES // 1_000_000} MB of photos once unpacked; "
                                    "split it into smaller zips.")
                    continue
                if not members:
                    problems.append(f"{name}: no photos inside.")
                bare: dict[str, list[str]] = {}
                for member in members:
                    photos[member.filename] = archive.read(member)
                    bare.setdefault(PurePosixPath(member.filename).name, []).append(member.filename)
                for base, paths in bare.items():
                    if len(paths) == 1:
                        photos.setdefault(base, photos[paths[0]])
                    else:
                        problems.append(f"{name}: {len(paths)} photos are named {base}; use their paths in the CSV.")
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError) as err:
            problems.append(f"{name}: not a readable zip file ({err}).")
    return photos, problems

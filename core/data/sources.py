"""Which source a photo comes from, for figures per source: the 224 px photos or the originals.

The shared sample (../shared/abid-sample/README.md) holds 6,499 photos of ABID's natural count mix
that their source resized to 224 x 224 px, and originals of 300 to 900 px from other sources. A
model can score very differently on the two, so figures are also given per source. The source is
told from the photo's pixel size (its header), which works for every collection layout: on the
shared sample, the 224 x 224 px photos are exactly the natural-mix source.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.data.images import ImageError, pixel_size

NATURAL_224 = "224 px natural mix"
ORIGINALS = "originals"
UNKNOWN = "unreadable header"
RESIZED_PX = 224
TRAIN_SOURCES = {"all": None, "natural": NATURAL_224, "originals": ORIGINALS}  # what a run may train on


def photo_source(width: int, height: int) -> str:
    return NATURAL_224 if (width, height) == (RESIZED_PX, RESIZED_PX) else ORIGINALS


def photo_sources(paths: Sequence[str | Path]) -> list[str]:
    """The source of each photo (`NATURAL_224` or `ORIGINALS`)."""
    out = []
    for path in paths:
        try:
            out.append(photo_source(*pixel_size(path)))
        except (ImageError, OSError):
            out.append(UNKNOWN)
    return out

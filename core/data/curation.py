"""The curation file: what people decided about suspect labels, as training reads it.

People's decisions are recorded as reviews and written here by
`core.reconcile.suspects.write_curation`; `core.data.dataset.prepare_dataset` reads the file, so
preparing a data set needs nothing of reconciliation.
"""
from __future__ import annotations

import csv
from pathlib import Path

CURATION_COLUMNS = ["image_id", "action", "count", "who", "when"]


def read_curation(path: str | Path) -> dict[str, int | None]:
    """image_id -> the count to train with (relabel), or None (exclude); kept photos are left out."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {row["image_id"]: (int(row["count"]) if row["action"] == "relabel" else None)
                for row in csv.DictReader(fh) if row["action"] in ("relabel", "exclude")}

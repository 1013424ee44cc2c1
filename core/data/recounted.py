"""Recounted photos laid over a collection: a photo a person counted takes the person's count.

The recounts collection itself is written from the store's batches by
`core.reconcile.recount_labels.write_recounts_collection`; this module only reads it (manifest
layout, group = content hash), so preparing a data set needs nothing of reconciliation.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.data.collection import CONTENT_GROUP, load_collection
from core.store.files import file_hash


def overlay_recounts(table: pd.DataFrame, recounts: str | Path, max_count: int,
                     open_top: bool = False) -> tuple[pd.DataFrame, int]:
    """The collection `table` (`core.data.collection.load_collection`'s) with the recounts collection at
    `recounts` laid over it: a photo in both (same bytes) takes the recounted count; a recounted
    photo the data lacks is added. Returns the table and how many of its photos carry a recount.
    A recount above `max_count` makes the photo "more than max_count" with `open_top`, else takes
    it out of the task (as the collection leaves such photos out)."""
    extra = load_collection(recounts, max_count=10**6, items=False).table
    if extra.empty:
        return table, 0
    table = table.copy()
    digests = extra["group"].str.removeprefix(CONTENT_GROUP)
    by_size: dict[int, list[int]] = {}
    for i, size in enumerate(table["bytes"].to_numpy()):
        by_size.setdefault(int(size), []).append(i)
    drop, added, recounted = [], [], 0
    for rec, digest in zip(extra.to_dict("records"), digests, strict=True):
        count = int(rec["count"])
        in_task = count <= max_count or open_top
        count = min(count, max_count + 1)
        same_size = by_size.get(int(rec["bytes"]), [])
        match = next((i for i in same_size if file_hash(str(table.at[i, "path"])) == digest), None)
        if match is not None:
            if in_task:
                table.at[match, "count"] = count
                recounted += 1
            else:
                drop.append(match)
        elif in_task:
            added.append({**{k: rec[k] for k in table.columns if k in rec}, "count": count})
            recounted += 1
    table = table.drop(index=drop)
    if added:
        table = pd.concat([table, pd.DataFrame(added, columns=table.columns)], ignore_index=True)
    table["count"] = table["count"].to_numpy(dtype=np.int64)
    return table.reset_index(drop=True), recounted

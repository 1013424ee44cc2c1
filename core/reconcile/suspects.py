"""Labels you can trust: photos whose label is likely wrong, found by confident learning
(`cleanlab.filter.find_label_issues`) on a cross-validated model's out-of-fold probabilities, and
what people decide about them ("label right", "relabel to N", "exclude"), recorded as reviews of
kind "label" (`core.reconcile.review`) and written to the store's curation file that training can read.

Curation changes only what is trained on: `core.data.dataset.Dataset.split("train")` applies it;
validation, test and out-of-fold figures stay over every photo with its original label.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.curation import CURATION_COLUMNS
from core.reconcile.review import latest
from core.store import layout
from core.store.database import Store
from core.store.files import atomic_path

ACTIONS = {"label_right": "keep", "relabel": "relabel", "exclude": "exclude"}


def suspect_labels(predictions: pd.DataFrame) -> pd.DataFrame:
    """The photos whose label is likely wrong, most suspect first: image_id, path, label,
    suspected (the most probable count), p_label, p_suspected, probs. `predictions` are out-of-fold
    (`Store.predictions(exp, "oof")`); raises ValueError when there are none."""
    from cleanlab.filter import find_label_issues

    if predictions.empty:
        raise ValueError("no out-of-fold predictions: train a cross-validated model (train.py cnn --cv 5)")
    probs = np.array(predictions["probs"].tolist(), dtype=float)
    labels = predictions["true_count"].to_numpy(dtype=int)
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    rows = predictions.iloc[ranked]
    picked = probs[ranked]
    return pd.DataFrame({
        "image_id": rows["image_id"].to_numpy(), "path": rows["path"].to_numpy(), "label": labels[ranked],
        "suspected": picked.argmax(axis=1), "p_label": picked[np.arange(len(ranked)), labels[ranked]],
        "p_suspected": picked.max(axis=1), "probs": list(picked.round(4).tolist()),
    })


def subject(data_root: str | Path) -> str:
    """A collection's name in the review log: its resolved folder."""
    return str(Path(data_root).resolve())


def write_curation(store: Store, data_root: str | Path) -> Path | None:
    """The collection's curation file (image_id, action, count, who, when), from the latest label
    review of each photo; None when nobody reviewed a label of it."""
    decided = latest(store, "label", subject(data_root))
    if decided.empty:
        return None
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CURATION_COLUMNS)
    writer.writeheader()
    for image, outcome, count, who, at in decided[["image", "outcome", "count", "who", "at"]].itertuples(index=False):
        writer.writerow({"image_id": str(image), "action": ACTIONS[str(outcome)],
                         "count": "" if pd.isna(count) else int(str(count)), "who": str(who),
                         "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(str(at))))})
    target = layout.curation_file(store.root, data_root)
    with atomic_path(target) as tmp:
        tmp.write_text(out.getvalue())
    return target

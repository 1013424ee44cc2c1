"""Labels you can trust: photos whose label is likely wrong, found by confident learning
(`cleanlab.filter.find_label_issues`) on probabilities of photos the model never trained on, and
what people decide about them ("label right", "relabel to N", "exclude"), recorded as reviews of
kind "label" (`core.reconcile.review`) and written to the store's curation file that training can read.

Which probabilities (`held_out_predictions`): a cross-validated model's out-of-fold photos (train
and validation) and its test photos; any other model's validation and test photos. Either way no
photo was trained on by the model that scored it, so `make run`'s model already finds suspects.

Curation changes only what is trained on: `core.data.dataset.Dataset.split("train")` applies it;
validation, test and out-of-fold figures stay over every photo with its original label.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.curation import CURATION_COLUMNS
from core.reconcile.review import latest
from core.store import layout
from core.store.database import Store
from core.store.files import atomic_path
from core.store.records import Experiment

ACTIONS = {"label_right": "keep", "relabel": "relabel", "exclude": "exclude"}


@dataclass(frozen=True)
class HeldOut:
    """A model's probabilities for the photos it never trained on, and which splits they are."""

    predictions: pd.DataFrame  # `Store.predictions`' columns
    splits: tuple[str, ...]  # ("oof", "test") for a cross-validated model, else ("val", "test")

    @property
    def described(self) -> str:
        """Where the probabilities come from, in words."""
        if "oof" in self.splits:
            return (f"{len(self.predictions):,} photos the model never trained on: out-of-fold (train and "
                    "validation, each scored by the fold model that did not see it) and test")
        return (f"{len(self.predictions):,} photos the model never trained on: validation and test (the "
                "calibration was fitted on the validation photos; a cross-validated model, "
                "`train.py cnn --cv 5`, scores every photo out of fold)")


def held_out_predictions(store: Store, exp: Experiment) -> HeldOut:
    """The model's stored probabilities of the photos it did not train on (see the module docstring)."""
    splits = ("oof", "test") if exp.folds else ("val", "test")
    frames = [frame for split in splits if not (frame := store.predictions(exp.id, split)).empty]
    predictions = pd.concat(frames, ignore_index=True) if frames else store.predictions(exp.id, splits[0])
    return HeldOut(predictions, splits)


def suspect_labels(predictions: pd.DataFrame) -> pd.DataFrame:
    """The photos whose label is likely wrong, most suspect first: image_id, path, label,
    suspected (the most probable count), p_label, p_suspected, probs. `predictions` are of photos
    the model never trained on (`held_out_predictions`); raises ValueError when there are none."""
    from cleanlab.filter import find_label_issues

    if predictions.empty:
        raise ValueError("no stored predictions of held-out photos: train a model (train.py suite)")
    probs = np.array(predictions["probs"].tolist(), dtype=float)
    labels = predictions["true_count"].to_numpy(dtype=int)
    # n_jobs=1: cleanlab's default forks a process pool, which can hang inside the dashboard's server
    # (threads and torch loaded); a few thousand photos take well under a second in one process
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
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

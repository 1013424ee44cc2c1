"""The counting service: load any finished experiment and count the items in bin photos.

Every model family exposes `load_predictor(folder, artifact, num_classes)`: uint8 RGB arrays
at the experiment's `image_size` in, class probabilities out. A cross-validated experiment is
K such models, served as the mean of their calibrated probabilities. Photos reach them through
`core.images.load_rgb`, the same decoder that filled the training cache, so training and serving
see identical pixels. Loading only loads: calibration happened when the experiment was trained.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.calibration import apply_calibration, decide
from core.classical.predictor import load_predictor as load_classical
from core.cnn.predictor import load_predictor as load_cnn
from core.collection import load_collection
from core.images import ImageError, ImageSource, load_rgb
from core.layout import fold_dir
from core.metrics import SplitFigures, expected_count, split_figures
from core.records import Experiment
from core.store import Store, best_of, same_root

Predictor = Callable[[np.ndarray], np.ndarray]
LOADERS: dict[str, Callable[[Path, str, int], Predictor]] = {"classical": load_classical, "cnn": load_cnn}


class ModelNotFound(LookupError):
    """No finished experiment matches what was asked for."""


@dataclass
class CountResult:
    count: int  # the number of items shown: the model's own choice (`core.calibration.decide`)
    probs: list[float]  # probability of each count 0..num_classes-1
    expected: float  # probability-weighted mean count
    confidence: float  # calibrated probability of `count`


def model_folders(store: Store, exp: Experiment) -> list[Path]:
    """Where the experiment's model files are: its folder, or one folder per cross-validation fold."""
    root = store.artifact_dir(exp.id)
    return [fold_dir(root, f) for f in range(exp.folds)] if exp.folds else [root]


def resolve_experiment(store: Store, model: str = "best", data_root: str | Path | None = None) -> Experiment:
    """`best` (see `core.store.best_rule`: chosen on validation, among models on `data_root`),
    an experiment id, or the newest finished model of that name."""
    models = [e for e in store.experiments("finished") if e.is_model and e.family in LOADERS]
    if model == "best":
        exp_id = best_of(models, data_root)
        if exp_id is None:
            hint = "train one with `python train.py suite`"
            if models and data_root is not None:
                roots = sorted({e.data_root for e in models})
                hint = f"models exist for other data ({', '.join(roots)}): pass --data or --model"
            raise ModelNotFound(f"no finished model{f' on {data_root}' if data_root else ''} in {store.path} ({hint})")
        return next(e for e in models if e.id == exp_id)
    match = [e for e in models if e.id == model] or [e for e in models if e.name == model]
    if not match:
        hint = "no finished model yet: train one with `python train.py suite`" if not models else \
            f"choose one of: {', '.join(sorted({e.name for e in models}))}"
        raise ModelNotFound(f"model {model!r} not found in {store.path} ({hint})")
    return match[0]


def class_prior(exp: Experiment) -> np.ndarray:
    """The class prior reconciliation reads a photo against (`core.reconcile.mismatch_probability`):
    every count alike.

    Chosen on the validation photos of the default models on the shared sample (496 photos, a fifth
    of the records moved by 1 or 2 items, 10 seeds): ranking bins with a uniform prior gave ROC AUC
    0.85-0.86 and, at the default settings, flagged 12-15% of the bins, 74-77% of them wrong records;
    with the calibration's implied prior (`calibration["class_prior"]`, near the photos' own count
    shares) AUC fell to 0.60-0.75 and almost nothing was flagged. A wrong record is usually a
    neighbour of the true count, not a draw from the count shares, so weighing records of common
    counts as more likely wrong hurts.
    """
    return np.full(exp.num_classes or 1, 1 / (exp.num_classes or 1))


class BinCounter:
    """A loaded model (or ensemble) with calibrated probabilities; `count` takes any photo the decoder accepts."""

    def __init__(self, exp: Experiment, predictors: Sequence[Predictor]):
        if exp.num_classes is None or exp.image_size is None:
            raise ValueError(f"experiment {exp.id} has no image size or class count: not a counting model")
        self.exp = exp
        self.exp_id, self.name = exp.id, exp.name
        self.num_classes: int = exp.num_classes
        self.image_size: int = exp.image_size
        self.calibration = exp.calibration
        self.class_prior = class_prior(exp)
        self._predictors = list(predictors)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for a batch of uint8 (N, S, S, 3) arrays."""
        return np.mean([apply_calibration(p(images), self.calibration) for p in self._predictors], axis=0)

    def _result(self, probs: np.ndarray) -> CountResult:
        count = int(decide(probs[None], self.calibration)[0])
        rounded = probs.round(6)
        return CountResult(count, rounded.tolist(), float(expected_count(probs)), float(rounded[count]))

    def count(self, source: ImageSource) -> CountResult:
        """Count one photo; raises `ImageError` for anything that is not a usable image."""
        return self._result(self.probabilities(load_rgb(source, self.image_size)[None])[0])

    def count_batch(self, sources: Sequence[ImageSource], batch_size: int = 64,
                    progress: bool = False) -> list[CountResult | ImageError]:
        """Count many photos; a bad one yields its `ImageError` in place, the rest are counted."""
        results: list[CountResult | ImageError | None] = [None] * len(sources)
        for start in tqdm(range(0, len(sources), batch_size), desc="counting", unit="batch", disable=not progress):
            arrays, where = [], []
            for i in range(start, min(start + batch_size, len(sources))):
                try:
                    arrays.append(load_rgb(sources[i], self.image_size))
                    where.append(i)
                except (ImageError, OSError) as err:
                    results[i] = err if isinstance(err, ImageError) else ImageError(str(err))
            if arrays:
                for i, probs in zip(where, self.probabilities(np.stack(arrays)), strict=True):
                    results[i] = self._result(probs)
        return [r if r is not None else ImageError("not counted") for r in results]


def load_counter(model: str = "best", store: Store | None = None, data_root: str | Path | None = None) -> BinCounter:
    """Load a finished experiment (or the best on `data_root`) for counting."""
    store = store or Store()
    exp = resolve_experiment(store, model, data_root)
    loader = LOADERS[exp.family]
    return BinCounter(exp, [loader(folder, exp.artifact, exp.num_classes or 0) for folder in model_folders(store, exp)])


@dataclass(frozen=True)
class FolderScore:
    """A counter scored on a labelled folder (`evaluate_folder`)."""

    model: str  # experiment id
    scope: str  # "test split" (the model's own collection) or "all photos" (see `scope_of`)
    figures: SplitFigures
    left_out_counts: int  # photos whose count the model cannot predict
    unreadable: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON `train.py evaluate` prints: model, scope, the figures' keys, then what was left out."""
        return {"model": self.model, "scope": self.scope, **self.figures.to_dict(),
                "left_out_counts": self.left_out_counts, "unreadable": self.unreadable}


def scope_of(exp: Experiment, table: pd.DataFrame, root: str | Path, store: Store) -> tuple[pd.DataFrame, str]:
    """The photos of `table` (a collection of `root`) that may score `exp`, and that scope in words.

    On the experiment's own collection only its test split (`"test split"`, from the split stored
    with the experiment), since the rest trained, calibrated or selected it; elsewhere every photo
    (`"all photos"`). Evaluation and the folder audit both score by this rule.
    """
    if not (exp.data_root and same_root(exp.data_root, root)):
        return table, "all photos"
    split = store.split(exp.id)
    if split.empty:
        raise ValueError(f"{root} is the collection {exp.name} was trained on, but its split was not stored "
                         "with it (trained by an older binsight): retrain it, or use other photos")
    return table[table["image_id"].isin(split.loc[split["split"] == "test", "image_id"])], "test split"


def evaluate_folder(counter: BinCounter, root: str | Path, store: Store | None = None,
                    progress: bool = True) -> FolderScore:
    """Score a counter on a labelled collection, with 95% bootstrap intervals, on the photos
    `scope_of` allows. Counts the model cannot predict are left out and counted.
    """
    store = store or Store()
    open_top = counter.exp.open_top
    collection = load_collection(root, max_count=counter.num_classes - 1 - int(open_top), open_top=open_top)
    table, scope = scope_of(counter.exp, collection.table, root, store)
    results = counter.count_batch(table["path"].tolist(), progress=progress)
    ok = [i for i, r in enumerate(results) if isinstance(r, CountResult)]
    truth = table["count"].to_numpy()[ok]
    if not ok:
        raise ValueError(f"no photo in {root} could be counted")
    counted = [r for r in results if isinstance(r, CountResult)]
    probs, shown = np.array([r.probs for r in counted]), np.array([r.count for r in counted])
    return FolderScore(counter.exp_id, scope, split_figures(truth, probs, counter.num_classes, open_top, shown),
                       collection.out_of_range, len(collection.skipped) + len(results) - len(ok))

"""The counting service: load any finished experiment and count the items in bin photos.

Every model family exposes `load_predictor(store, exp)`: uint8 RGB arrays at the experiment's
`image_size` in, class probabilities out. Photos reach it through `core.images.load_rgb`, the
same decoder that filled the training cache, so training and serving see identical pixels.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.calibration import apply_temperature, calibration_summary
from core.data import load_collection
from core.dataset import prepare_dataset
from core.images import ImageError, ImageSource, load_rgb
from core.metrics import classification_report
from core.store import Store

FAMILY_MODULES = {"classical": "core.classical", "cnn": "core.cnn"}
Predictor = Callable[[np.ndarray], np.ndarray]


class ModelNotFound(LookupError):
    """No finished experiment matches what was asked for."""


@dataclass
class CountResult:
    count: int  # most probable number of items
    probs: list[float]  # probability of each count 0..num_classes-1
    expected: float  # probability-weighted mean count
    confidence: float  # probability of `count`


def _predictor(store: Store, exp: dict) -> Predictor:
    module = importlib.import_module(FAMILY_MODULES[exp["family"]])
    return module.load_predictor(store, exp)


def resolve_experiment(store: Store, model: str = "best") -> dict:
    """`best` (highest test balanced accuracy), an experiment id, or the newest finished run of that name."""
    exp_id = store.best() if model == "best" else model
    finished = [e for e in store.experiments("finished") if e["family"] in FAMILY_MODULES]
    match = [e for e in finished if e["id"] == exp_id] or [e for e in finished if e["name"] == model]
    if not match:
        hint = "no finished experiment yet: train one with `python train.py suite`" if not finished else \
            f"choose one of: {', '.join(sorted({e['name'] for e in finished}))}"
        raise ModelNotFound(f"model {model!r} not found in {store.path} ({hint})")
    return match[0]


def calibrate(store: Store, exp: dict, predict: Predictor | None = None) -> dict:
    """Fit the temperature on the experiment's validation split and store it in its details."""
    predict = predict or _predictor(store, exp)
    details = exp["details"]
    dataset = prepare_dataset(details["root"], image_size=details["image_size"],
                              max_count=details["num_classes"] - 1, store=store.root, progress=False)
    val_x, val_y = dataset.arrays("val", details["image_size"])
    test_x, test_y = dataset.arrays("test", details["image_size"])
    summary = calibration_summary(predict(val_x), val_y, predict(test_x), test_y)
    store.update(exp["id"], details={**details, "calibration": summary})
    exp["details"] = {**details, "calibration": summary}
    return summary


def class_prior(exp: dict) -> np.ndarray:
    """The class shares an experiment's probabilities are posteriors under (`core.reconcile` divides by them).

    Uniform: the default models are trained with balanced class weights, so their probabilities
    answer as if every count were equally common (on the shared sample's validation split, the
    split's own shares as the prior ranked wrong records worse than chance, ROC AUC 0.25 for
    HOG+SVM, against 0.86 with the uniform prior).
    """
    num_classes = exp["details"]["num_classes"]
    return np.full(num_classes, 1 / num_classes)


class Counter:
    """A loaded model with calibrated probabilities; `count` takes any photo the decoder accepts."""

    def __init__(self, exp: dict, predict: Predictor, temperature: float = 1.0):
        self.exp = exp
        self.exp_id: str = exp["id"]
        self.name: str = exp["name"]
        self.num_classes: int = exp["details"]["num_classes"]
        self.image_size: int = exp["details"]["image_size"]
        self.temperature = temperature
        self._predict = predict
        self.class_prior: np.ndarray = class_prior(exp)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities for a batch of uint8 (N, S, S, 3) arrays."""
        return apply_temperature(self._predict(images), self.temperature)

    @staticmethod
    def _result(probs: np.ndarray) -> CountResult:
        count = int(np.argmax(probs))
        rounded = probs.round(6)
        return CountResult(count, rounded.tolist(), float(np.dot(probs, np.arange(len(probs)))), float(rounded[count]))

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
                for i, probs in zip(where, self.probabilities(np.stack(arrays))):
                    results[i] = self._result(probs)
        return results


def load_counter(model: str = "best", store: Store | None = None) -> Counter:
    """Load a finished experiment for counting, calibrating it first if it never was."""
    store = store or Store()
    exp = resolve_experiment(store, model)
    predict = _predictor(store, exp)
    calibration = exp["details"].get("calibration") or calibrate(store, exp, predict)
    return Counter(exp, predict, calibration["temperature"])


def evaluate_folder(counter: Counter, root: str | Path, progress: bool = True) -> dict:
    """Score a counter on any labelled collection; counts it cannot predict are left out and counted."""
    collection = load_collection(root, max_count=counter.num_classes - 1)
    results = counter.count_batch(collection.table["path"].tolist(), progress=progress)
    ok = [i for i, r in enumerate(results) if isinstance(r, CountResult)]
    truth = collection.table["count"].to_numpy()[ok]
    report = classification_report(truth, [results[i].count for i in ok], counter.num_classes)
    return {"model": counter.exp_id, **report, "left_out_counts": collection.out_of_range,
            "unreadable": len(collection.skipped) + len(results) - len(ok)}

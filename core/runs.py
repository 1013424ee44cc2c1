"""What every training run does around its model, whatever the family: its lifecycle in the
store (`run_once`), the folds of a cross-validated run, and the figures, calibration, predictions
and split it records at the end.

A single run is fitted on the train split, calibrated and selected on the validation split, and
tested once. A cross-validated run fits K models on K folds of train+val (grouped, so
near-duplicates stay in one fold; stratified by count), calibrates on their pooled out-of-fold
predictions, reports out-of-fold figures (each fold calibrated by the map fitted on the others,
so no figure is judged on what it was fitted on) and tests the K models once, as the ensemble
the counting service serves: the mean of their calibrated probabilities.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from core.calibration import apply_calibration, decide, fit_calibration, summary_on_test
from core.dataset import Dataset
from core.metrics import split_figures
from core.store import Store

CV_POOL = ("train", "val")  # what cross-validation folds; the test split stays untouched


def _same(value: Any) -> Any:
    return value


def run_once(store: Store, key: str, start: Callable[[], str | None], train: Callable[[str], None], *,
             is_main: bool = True, share: Callable[[Any], Any] = _same,
             on_reuse: Callable[[str], None] | None = None) -> str:
    """One training run of the configuration `key`: claim it, return the finished experiment if
    there is one, else `start()` one and keep it running (lock and heartbeat; failed if `train`
    raises) while `train(exp_id)` runs. Two processes asking for one configuration train it once.

    Under `torchrun` every rank calls it: the main rank (`is_main`) alone talks to the store, and
    `share` (a broadcast from it) hands its answers to the others. `start` and `train` run on every
    rank; `start`'s result counts on the main rank only. `on_reuse(exp_id)` is called (main rank)
    when the store already had the run.
    """
    with store.claim(key) if is_main else nullcontext():
        found = share(store.find_finished(key) if is_main else None)
        if found:
            if on_reuse is not None and is_main:
                on_reuse(found)
            return found
        exp_id = share(start())
        with store.running(exp_id) if is_main else nullcontext():
            train(exp_id)
    return exp_id


def cv_pool(dataset: Dataset):
    """The train+val rows of the data set's table, in table order."""
    return dataset.table[dataset.table["split"].isin(CV_POOL)].reset_index(drop=True)


def cv_folds(dataset: Dataset, k: int, seed: int = 0) -> np.ndarray:
    """Fold number (0..k-1) of every row of `cv_pool(dataset)`; photos of one group share a fold."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    pool = cv_pool(dataset)
    fold = np.empty(len(pool), dtype=int)
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    for i, (_, held) in enumerate(splitter.split(pool, pool["count"], pool["group"])):
        fold[held] = i
    return fold


def _log_split(store: Store, exp_id: str, dataset: Dataset, cv: bool) -> None:
    table = dataset.table
    splits = np.where(table["split"] == "test", "test", "oof") if cv else table["split"].to_numpy()
    store.log_split(exp_id, table["image_id"].tolist(), splits.tolist())


def _log(store: Store, exp_id: str, part, probs: np.ndarray, split: str, shown: np.ndarray) -> None:
    store.log_predictions(exp_id, part["image_id"].tolist(), part["path"].tolist(), part["count"].tolist(),
                          probs, split=split, pred_counts=shown)


def finish_single(store: Store, exp_id: str, dataset: Dataset, val_probs: np.ndarray, test_probs: np.ndarray,
                  **fields: Any) -> None:
    """Calibrate on validation, record validation and test figures of the served counts and
    calibrated probabilities, both splits' predictions and the run's split; mark it finished."""
    val, test = dataset.split("val"), dataset.split("test")
    calibration = fit_calibration(val_probs, val["count"])
    val_cal, test_cal = apply_calibration(val_probs, calibration), apply_calibration(test_probs, calibration)
    calibration.update(summary_on_test(test_probs, test_cal, test["count"], calibration))
    val_shown, test_shown = decide(val_cal, calibration), decide(test_cal, calibration)
    k, open_top = dataset.num_classes, dataset.open_top
    _log(store, exp_id, val, val_cal, "val", val_shown)
    _log(store, exp_id, test, test_cal, "test", test_shown)
    _log_split(store, exp_id, dataset, cv=False)
    store.finish(exp_id, split_figures(test["count"], test_cal, k, open_top, test_shown),
                 val_metrics=split_figures(val["count"], val_cal, k, open_top, val_shown), calibration=calibration,
                 folds=0, **fields)


def finish_cv(store: Store, exp_id: str, dataset: Dataset, fold: np.ndarray, oof_probs: np.ndarray,
              test_probs: list[np.ndarray], **fields: Any) -> None:
    """The cross-validated counterpart of `finish_single` (see the module docstring)."""
    pool, test = cv_pool(dataset), dataset.split("test")
    y_pool, y_test, k = pool["count"].to_numpy(), test["count"].to_numpy(), dataset.num_classes
    oof_cal, oof_shown = np.empty_like(oof_probs), np.empty(len(y_pool), dtype=int)
    for f in np.unique(fold):
        held, others = fold == f, fold != f
        fitted = fit_calibration(oof_probs[others], y_pool[others])  # never fitted on the fold it scores
        oof_cal[held] = apply_calibration(oof_probs[held], fitted)
        oof_shown[held] = decide(oof_cal[held], fitted)
    calibration = fit_calibration(oof_probs, y_pool)
    ensemble = np.mean([apply_calibration(p, calibration) for p in test_probs], axis=0)
    test_shown = decide(ensemble, calibration)
    calibration.update(summary_on_test(np.mean(test_probs, axis=0), ensemble, y_test, calibration))
    _log(store, exp_id, pool, oof_cal, "oof", oof_shown)
    _log(store, exp_id, test, ensemble, "test", test_shown)
    _log_split(store, exp_id, dataset, cv=True)
    store.finish(exp_id, split_figures(y_test, ensemble, k, dataset.open_top, test_shown),
                 cv_metrics=split_figures(y_pool, oof_cal, k, dataset.open_top, oof_shown), calibration=calibration,
                 folds=len(test_probs), **fields)

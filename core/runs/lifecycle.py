"""What every training run does around its model, whatever the family: its lifecycle in the
store (`run_once`), and the figures, calibration, predictions and split it records at the end
(`finish_single`, `finish_cv`; the folds are `core.runs.folds`).

A single run is fitted on the train split, calibrated and selected on the validation split, and
tested once. A cross-validated run fits K models on K folds of train+val (grouped, so
near-duplicates stay in one fold; stratified by count), calibrates on their pooled out-of-fold
predictions, reports out-of-fold figures (each fold calibrated by the map fitted on the others,
so no figure is judged on what it was fitted on) and tests the K models once, as the ensemble
the counting service serves: the mean of their calibrated likelihoods.

The figures and predictions recorded are those of what is shown: the posteriors under the
default prior (`core.evaluation.priors.DEFAULT_PRIOR`), and their most probable count (`decide`).
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np

from core.data.dataset import Dataset
from core.evaluation.calibration import decide, fit_calibration, summary_on_test
from core.evaluation.metrics import split_figures
from core.evaluation.priors import DEFAULT_PRIOR, stated_prior, with_prior
from core.runs.folds import cv_pool
from core.store.database import Store


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


def _log_split(store: Store, exp_id: str, dataset: Dataset, cv: bool) -> None:
    table = dataset.table
    splits = np.where(table["split"] == "test", "test", "oof") if cv else table["split"].to_numpy()
    store.log_split(exp_id, table["image_id"].tolist(), splits.tolist())


def _log(store: Store, exp_id: str, part, probs: np.ndarray, split: str, shown: np.ndarray) -> None:
    store.log_predictions(exp_id, part["image_id"].tolist(), part["path"].tolist(), part["count"].tolist(),
                          probs, split=split, pred_counts=shown)


def _shown(likelihood: np.ndarray, dataset: Dataset) -> np.ndarray:
    """The probabilities shown: the posteriors under the default prior."""
    return with_prior(likelihood, stated_prior(DEFAULT_PRIOR, dataset.num_classes, dataset.open_top))


def finish_single(store: Store, exp_id: str, dataset: Dataset, val_probs: np.ndarray, test_probs: np.ndarray,
                  **fields: Any) -> None:
    """Calibrate on validation, record validation and test figures of the shown probabilities
    and counts, both splits' predictions and the run's split; mark it finished."""
    val, test = dataset.split("val"), dataset.split("test")
    calibration = fit_calibration(val_probs, val["count"])
    val_cal = _shown(calibration.likelihood(val_probs), dataset)
    test_cal = _shown(calibration.likelihood(test_probs), dataset)
    calibration = summary_on_test(test_probs, test_cal, test["count"], calibration)
    val_shown, test_shown = decide(val_cal), decide(test_cal)
    k, open_top = dataset.num_classes, dataset.open_top
    _log(store, exp_id, val, val_cal, "val", val_shown)
    _log(store, exp_id, test, test_cal, "test", test_shown)
    _log_split(store, exp_id, dataset, cv=False)
    store.finish(exp_id, split_figures(test["count"], test_cal, k, open_top, test_shown),
                 val_metrics=split_figures(val["count"], val_cal, k, open_top, val_shown),
                 calibration=calibration.to_dict(), folds=0, **fields)


def finish_cv(store: Store, exp_id: str, dataset: Dataset, fold: np.ndarray, oof_probs: np.ndarray,
              test_probs: list[np.ndarray], **fields: Any) -> None:
    """The cross-validated counterpart of `finish_single` (see the module docstring)."""
    pool, test = cv_pool(dataset), dataset.split("test")
    y_pool, y_test, k = pool["count"].to_numpy(), test["count"].to_numpy(), dataset.num_classes
    oof_cal = np.empty_like(oof_probs)
    for f in np.unique(fold):
        held, others = fold == f, fold != f
        fitted = fit_calibration(oof_probs[others], y_pool[others])  # never fitted on the fold it scores
        oof_cal[held] = _shown(fitted.likelihood(oof_probs[held]), dataset)
    oof_shown = decide(oof_cal)
    calibration = fit_calibration(oof_probs, y_pool)
    ensemble = _shown(np.mean([calibration.likelihood(p) for p in test_probs], axis=0), dataset)
    test_shown = decide(ensemble)
    calibration = summary_on_test(np.mean(test_probs, axis=0), ensemble, y_test, calibration)
    _log(store, exp_id, pool, oof_cal, "oof", oof_shown)
    _log(store, exp_id, test, ensemble, "test", test_shown)
    _log_split(store, exp_id, dataset, cv=True)
    store.finish(exp_id, split_figures(y_test, ensemble, k, dataset.open_top, test_shown),
                 cv_metrics=split_figures(y_pool, oof_cal, k, dataset.open_top, oof_shown),
                 calibration=calibration.to_dict(), folds=len(test_probs), **fields)

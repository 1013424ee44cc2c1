"""The main job's default experiments: an LR-finder sweep, the paper's PCA+SVM and HOG+SVM, and
the CNN `quick-frozen` preset (`quick` trained from cached frozen-stage features: `quick` itself no
longer fits `make run`'s 20 minutes on the grown sample).

Each is trained only if the store lacks it (same configuration, same data); training calibrates
every model, so the counting service and the dashboard are ready when this returns. The sweep
(about a minute) gives the dashboard's learning-rate-finder page a curve. Last, the models of the
store on that data are mixed where a mix holds on validation (`core.training.ensemble`, seconds),
so `best` serves the best mix the store allows.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from core.classical import ClassicalConfig, suite_experiments, train_classical
from core.cnn import find_lr, train_cnn
from core.evaluation.metrics import SplitFigures
from core.store.database import Store
from core.store.records import Experiment
from core.training.ensemble import build_ensemble

CNN_PRESET = "quick-frozen"
LR_SWEEP = {"lr_finder_steps": 60}  # enough for a readable curve in about a minute on two cores


def default_suite() -> list[tuple[str, ClassicalConfig | str]]:
    """(kind, configuration) of every default experiment, cheapest first: a CNN preset's name for
    the sweep and the CNN, a `ClassicalConfig` for the classical models."""
    classical: list[tuple[str, ClassicalConfig | str]] = [("classical", c) for c in suite_experiments("default")]
    return [("lr-find", CNN_PRESET), *classical, ("cnn", CNN_PRESET)]


def result_line(exp: Experiment, seconds: float, reused: bool) -> str:
    how = "already in the store" if reused else f"trained in {seconds:.0f} s"
    if not exp.is_model:
        return f"{exp.name:<14} suggested learning rate {exp.suggested_lr or float('nan'):.1e}  ({how})"
    val, test = exp.val_metrics or SplitFigures(), exp.metrics or SplitFigures()
    return (f"{exp.name:<14} validation balanced accuracy {_percent(val.balanced_accuracy)} | test: "
            f"accuracy {_percent(test.accuracy)}  balanced {_percent(test.balanced_accuracy)}  "
            f"RMSE {test.rmse if test.rmse is not None else float('nan'):.2f}  ({how})")


def _percent(value: float | None) -> str:
    return f"{value if value is not None else float('nan'):.1%}"


def run_default_suite(data_root: str | Path, store: Store | None = None, cnn_overrides: dict | None = None,
                      classical_overrides: dict | None = None, progress: bool = True,
                      echo: Callable[[str], None] = print) -> list[str]:
    """Train what is missing of the default suite; print one line per experiment; return their ids.

    `classical_overrides` are `ClassicalConfig` fields, plus `n_jobs` (processes, not configuration)."""
    store = store or Store()
    overrides = dict(classical_overrides or {})
    n_jobs = int(overrides.pop("n_jobs", 2))
    ids = []
    for kind, config in default_suite():
        start = time.time()
        if isinstance(config, ClassicalConfig):
            exp_id = train_classical(data_root, config.with_overrides(overrides), store=store, n_jobs=n_jobs,
                                     progress=progress)
        elif kind == "cnn":
            exp_id = train_cnn(data_root, config, store, overrides=cnn_overrides, progress=progress)
        else:
            exp_id = find_lr(data_root, config, store, progress=progress,
                             overrides={**(cnn_overrides or {}), **LR_SWEEP})
        exp = store.experiment(exp_id)
        echo(result_line(exp, time.time() - start, reused=exp.started_at < start))
        ids.append(exp_id)
    start = time.time()
    try:
        exp_id = build_ensemble(store, data_root)
    except ValueError as err:
        echo(f"{'ensemble':<14} none: {err}")
        return ids
    exp = store.experiment(exp_id)
    echo(result_line(exp, time.time() - start, reused=exp.started_at < start))
    return [*ids, exp_id]

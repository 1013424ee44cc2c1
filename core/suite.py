"""The main job's default experiments: the paper's PCA+SVM and HOG+SVM, and the CNN `quick` preset.

Each is trained only if the store lacks it (same configuration, same data), then calibrated so
the counting service and the dashboard's accuracy-coverage view are ready.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from core.classical import suite_experiments, train_classical
from core.cnn import train_cnn
from core.predict import calibrate
from core.store import Store


def default_suite() -> list[tuple[str, dict]]:
    """(family, keyword arguments) of every default experiment, cheapest first."""
    return [("classical", config) for config in suite_experiments("default")] + [("cnn", {"preset": "quick"})]


def result_line(exp: dict, seconds: float, reused: bool) -> str:
    m = exp["metrics"]
    how = "already in the store" if reused else f"trained in {seconds:.0f} s"
    return (f"{exp['name']:<12} accuracy {m['accuracy']:.1%}  balanced {m['balanced_accuracy']:.1%}  "
            f"RMSE {m['rmse']:.2f}  ({how})")


def run_default_suite(data_root: str | Path, store: Store | None = None, cnn_overrides: dict | None = None,
                      classical_overrides: dict | None = None, progress: bool = True,
                      echo: Callable[[str], None] = print) -> list[str]:
    """Train what is missing of the default suite; print one line per experiment; return their ids."""
    store = store or Store()
    ids = []
    for family, config in default_suite():
        start = time.time()
        if family == "classical":
            exp_id = train_classical(data_root, store=store, progress=progress,
                                     **{**config, **(classical_overrides or {})})
        else:
            exp_id = train_cnn(data_root, config["preset"], store, overrides=cnn_overrides, progress=progress)
        exp = store.experiment(exp_id)
        if "calibration" not in exp["details"]:
            calibrate(store, exp)
        echo(result_line(exp, time.time() - start, reused=exp["started_at"] < start))
        ids.append(exp_id)
    return ids

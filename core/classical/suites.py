"""Named sets of classical experiments: the paper's Tables I and II, and what `make run` trains."""
from __future__ import annotations

import json

import pandas as pd

from core.classical.config import ClassicalConfig
from core.evaluation.metrics import SplitFigures
from core.store.database import Store

# On HOG and PCA features C = 10 and C = 100 fit the same (hard-margin) SVM, and each setting
# costs minutes on two cores, so suites search C in {1, 10} there. Blobs are cheap: a gamma grid.
WIDE_SVM = {"C": [1, 10], "gamma": ["scale"], "class_weight": [None, "balanced"]}
BLOB_SVM = {"C": [1, 10, 100], "gamma": ["scale", 0.01, 0.2], "class_weight": [None, "balanced"]}
PCA_RAW = {"features": "raw", "feature_params": {"size": 64}, "pca": 1000}
# `make run`'s search: 2 settings on 3 folds (7 fits with the refit) instead of 4 on 10 (41), fitted on
# 2,500 photos of the train split, since on the 9,734-photo sample the wide search on all of them took
# 8 minutes a model; balanced class weights are what the balanced-accuracy rule picks on this data
QUICK_SVM = {"model": "svc", "grid": {"C": [1, 10], "gamma": ["scale"], "class_weight": ["balanced"]}, "folds": 3,
             "train_limit": 2500}
SUITES: dict[str, list[dict]] = {
    # Table I: raw pixels with logistic regression, a decision tree and an SVM;
    # Table II: SVMs on LoG blobs, HOG and PCA (of raw pixels). The paper's selection rule throughout.
    "paper-classical": [
        {"name": "raw-logreg", "features": "raw", "model": "logreg", "selection": "paper"},
        {"name": "raw-tree", "features": "raw", "model": "tree", "selection": "paper"},
        {"name": "raw-svm", "features": "raw", "model": "svc", "selection": "paper"},
        {"name": "blobs-svm", "features": "blobs", "model": "svc", "grid": BLOB_SVM, "selection": "paper"},
        {"name": "hog-svm", "features": "hog", "model": "svc", "grid": WIDE_SVM, "selection": "paper"},
        {"name": "pca-svm", **PCA_RAW, "model": "svc", "grid": WIDE_SVM, "selection": "paper"},
    ],
    # the paper's SVM on features a frozen ImageNet network learnt, instead of hand-made ones
    "cnn-features": [
        {"name": "cnn-svm", "features": "cnn", "model": "svc", "grid": WIDE_SVM, "image_size": 224},
    ],
    # what the main job (`make run`) trains: the two strongest classical baselines
    "default": [
        {"name": "pca-svm", **PCA_RAW, **QUICK_SVM},
        {"name": "hog-svm", "features": "hog", **QUICK_SVM},
    ],
}
PAPER_TABLES = {"raw-logreg": "I", "raw-tree": "I", "raw-svm": "I", "blobs-svm": "II", "hog-svm": "II", "pca-svm": "II"}


def suite_experiments(name: str) -> list[ClassicalConfig]:
    """The experiments of a suite, each the configuration `train_classical` takes."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    return [ClassicalConfig.from_dict(config) for config in SUITES[name]]


def results_table(store: Store, exp_ids: list[str]) -> pd.DataFrame:
    """Figures of experiments side by side (out-of-fold where cross-validated, else test), laid out
    like the paper's Tables I and II."""
    rows = []
    for exp_id in exp_ids:
        exp = store.experiment(exp_id)
        metrics = exp.cv_metrics or exp.metrics or SplitFigures()
        row: dict[str, object] = {"experiment": exp.name, "paper_table": PAPER_TABLES.get(exp.name, ""),
               "figures": "out-of-fold" if exp.cv_metrics else "test"}
        for cls, acc in enumerate(metrics.per_class_accuracy):
            row[f"acc_{cls}"] = acc
        row.update({
            "accuracy": metrics.accuracy, "balanced_accuracy": metrics.balanced_accuracy,
            "rmse": metrics.rmse, "chosen": json.dumps(exp.chosen_params),
            "train_s": exp.train_seconds, "id": exp_id,
        })
        rows.append(row)
    return pd.DataFrame(rows)

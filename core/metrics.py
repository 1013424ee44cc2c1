"""Every figure binsight reports is computed here, so all pages and tables agree.

Counts are unbalanced (half the sample holds one item), so balanced accuracy always stands
beside accuracy; RMSE treats the count as a number, as the paper does.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix


def classification_report(y_true, y_pred, num_classes: int) -> dict:
    """n, accuracy, balanced accuracy, RMSE, per-class accuracy and RMSE, confusion matrix.

    Per-class values are None for classes absent from `y_true`.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    errors = (y_pred - y_true).astype(float)
    per_class_acc, per_class_rmse = [], []
    for cls in range(num_classes):
        mask = y_true == cls
        per_class_acc.append(float(np.mean(y_pred[mask] == cls)) if mask.any() else None)
        per_class_rmse.append(float(np.sqrt(np.mean(errors[mask] ** 2))) if mask.any() else None)
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "per_class_accuracy": per_class_acc,
        "per_class_rmse": per_class_rmse,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist(),
    }


def expected_calibration_error(probs: np.ndarray, y_true, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins."""
    probs = np.asarray(probs, dtype=float)
    y_true = np.asarray(y_true, dtype=int)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def accuracy_coverage(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on the most-confident share of bins, for each coverage from 1/N to 1.

    Read it as: "if the model decides the `coverage` most certain bins and people recount the
    rest, it is right on `accuracy` of the ones it decides".
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(order) + 1)
    return n / len(order), hits / n

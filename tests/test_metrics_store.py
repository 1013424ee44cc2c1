"""Metrics and the experiment store."""
from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3

import numpy as np
import pytest

from core.metrics import accuracy_coverage, classification_report, expected_calibration_error
from core.store import Store


def test_classification_report_figures():
    y_true = [0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 2, 2, 2, 0]
    r = classification_report(y_true, y_pred, num_classes=4)
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(4 / 6)
    assert r["balanced_accuracy"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert r["rmse"] == pytest.approx(np.sqrt((1 + 4) / 6))
    assert r["per_class_accuracy"] == [1.0, 0.5, pytest.approx(2 / 3), None]
    assert r["per_class_rmse"][2] == pytest.approx(np.sqrt(4 / 3))
    assert r["confusion_matrix"][2] == [1, 0, 2, 0]
    with pytest.raises(ValueError):
        classification_report([], [], 3)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    probs = np.array([[0.5, 0.5]] * 4)
    assert expected_calibration_error(probs, [0, 0, 1, 1]) == pytest.approx(0.0)
    sure = np.array([[0.99, 0.01]] * 4)
    assert expected_calibration_error(sure, [1, 1, 1, 1]) == pytest.approx(0.99)


def test_accuracy_coverage_orders_by_confidence():
    coverage, acc = accuracy_coverage([0.9, 0.2, 0.8, 0.4], [1, 0, 1, 0])
    assert list(coverage) == [0.25, 0.5, 0.75, 1.0]
    assert list(acc) == [1.0, 1.0, pytest.approx(2 / 3), 0.5]


def test_store_round_trip(store_root):
    store = Store()
    assert store.root == store_root
    exp = store.start("svc-hog", "classical", "svc", {"C": 10}, dataset="abc", device="cpu")
    store.log_epoch(exp, 1, train_loss=1.2, val_accuracy=0.4)
    store.log_epoch(exp, 2, train_loss=0.9, val_accuracy=0.5)
    store.log_lr_curve(exp, [1e-4, 1e-3], [2.0, 1.5], suggested=1e-3)
    store.log_predictions(exp, ["a", "b"], ["/a.jpg", "/b.jpg"], [1, 2], np.array([[0.1, 0.9, 0], [0.2, 0.3, 0.5]]))
    assert store.experiment(exp)["status"] == "running"
    assert store.find_finished("classical", "svc", {"C": 10}, "abc") is None
    store.finish(exp, {"accuracy": 0.5, "balanced_accuracy": 0.4}, details={"image_size": 64})
    got = store.experiment(exp)
    assert got["status"] == "finished" and got["details"] == {"image_size": 64} and got["params"] == {"C": 10}
    assert list(store.epochs(exp)["train_loss"]) == [1.2, 0.9]
    assert store.lr_curves(exp)[0]["suggested"] == 1e-3
    preds = store.predictions(exp)
    assert list(preds["pred_count"]) == [1, 2] and preds["confidence"].tolist() == [0.9, 0.5]
    assert store.find_finished("classical", "svc", {"C": 10}, "abc") == exp
    assert store.find_finished("classical", "svc", {"C": 11}, "abc") is None
    assert store.best() == exp
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failure_is_recorded_and_never_finished(store_root):
    store = Store()
    exp = store.start("x", "cnn", "resnet18", {}, dataset="d")
    with pytest.raises(RuntimeError):
        with store.failing_on_error(exp):
            raise RuntimeError("out of memory")
    got = store.experiment(exp)
    assert got["status"] == "failed" and "out of memory" in got["error"]
    assert store.best() is None


def _start_and_die(root: str) -> None:
    Store(root).start("killed", "cnn", "resnet18", {}, dataset="d")
    os._exit(1)  # killed: no finish, no fail


def test_killed_run_is_shown_as_interrupted(store_root):
    proc = mp.get_context("fork").Process(target=_start_and_die, args=(str(store_root),))
    proc.start()
    proc.join()
    (exp,) = Store().experiments()
    assert exp["status"] == "interrupted"
    assert Store().experiments("finished") == []


def test_empty_store_variable_means_the_default_store(monkeypatch):
    from core.config import PROJECT_ROOT, store_dir

    monkeypatch.setenv("BINSIGHT_STORE", "")
    assert store_dir() == PROJECT_ROOT / "models"

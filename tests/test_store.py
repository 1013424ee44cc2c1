"""The experiment store: typed records, updates, liveness by lock and heartbeat, migrations, selection."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sqlite3
import time

import numpy as np
import pytest

from core.evaluation.metrics import SplitFigures
from core.store.database import SCHEMA_VERSION, NoStoreError, Store, best_of, config_key, data_in_use
from core.store.records import Experiment


def test_store_round_trip(store_root):
    store = Store()
    assert store.root == store_root
    key = config_key("classical", "svc", {"C": 10}, "abc", code_version=1)
    exp = store.start("svc-hog", "classical", "svc", {"C": 10}, dataset="abc", code_version=1, device="cpu",
                      image_size=64)
    store.log_epoch(exp, 1, train_loss=1.2, val_accuracy=0.4)
    store.log_epoch(exp, 2, train_loss=0.9, val_accuracy=0.5)
    store.log_lr_curve(exp, [1e-4, 1e-3], [2.0, 1.5], suggested=1e-3)
    store.log_predictions(exp, ["a", "b"], ["/a.jpg", "/b.jpg"], [1, 2], np.array([[0.1, 0.9, 0], [0.2, 0.3, 0.5]]))
    store.log_predictions(exp, ["c"], ["/c.jpg"], [0], np.array([[0.6, 0.3, 0.1]]), split="val")
    store.log_split(exp, ["a", "b", "c", "d"], ["test", "test", "val", "train"])
    assert store.find_finished(key) is None
    store.finish(exp, SplitFigures(accuracy=0.5, balanced_accuracy=0.4),
                 val_metrics=SplitFigures(balanced_accuracy=0.3), num_classes=3)
    got = store.experiment(exp)
    assert isinstance(got, Experiment) and got.status == "finished" and got.params == {"C": 10}
    assert (got.image_size, got.num_classes, got.val_metrics) == (64, 3, SplitFigures(balanced_accuracy=0.3))
    assert list(store.epochs(exp)["train_loss"]) == [1.2, 0.9]
    assert store.lr_curves(exp)[0]["suggested"] == 1e-3
    preds = store.predictions(exp)
    assert list(preds["pred_count"]) == [1, 2] and preds["confidence"].tolist() == [0.9, 0.5]
    assert store.predictions(exp, "val")["image_id"].tolist() == ["c"]
    assert store.split(exp).set_index("image_id")["split"].to_dict() == {"a": "test", "b": "test", "c": "val",
                                                                        "d": "train"}
    assert store.find_finished(key) == exp
    assert store.find_finished(config_key("classical", "svc", {"C": 11}, "abc", code_version=1)) is None
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_record_refuses_fields_the_record_does_not_have(store_root):
    store = Store()
    exp = store.start("x", "cnn", "m", {}, dataset="d", code_version=1)
    with pytest.raises(TypeError, match="not fields"):
        store.record(exp, root="/somewhere")
    store.record(exp, train_seconds=3.5)
    store.record(exp, best_epoch=2)  # a second update keeps the first
    store.add_resume(exp, 4)
    got = store.experiment(exp)
    assert (got.train_seconds, got.best_epoch, got.resumed_from_epochs) == (3.5, 2, [4])


def test_config_key_changes_with_code_version_and_world_size():
    base = config_key("cnn", "resnet18", {"lr": 0.1}, "data", code_version=1)
    assert config_key("cnn", "resnet18", {"lr": 0.1}, "data", code_version=2) != base
    assert config_key("cnn", "resnet18", {"lr": 0.1}, "data", code_version=1, world_size=8) != base
    assert config_key("cnn", "resnet18", {"lr": 0.1}, "data", code_version=1, world_size=1) == base


def _finished(store: Store, name: str, root: str, val: float, test: float, cv: float | None = None) -> str:
    exp = store.start(name, "classical", "svc", {"name": name}, dataset="d", code_version=1, data_root=root)
    store.finish(exp, SplitFigures(balanced_accuracy=test), val_metrics=SplitFigures(balanced_accuracy=val),
                 cv_metrics=SplitFigures(balanced_accuracy=cv) if cv is not None else None)
    return exp


def test_best_is_chosen_on_validation_and_on_the_data_in_use(store_root, tmp_path):
    store = Store()
    here, elsewhere = str(tmp_path / "here"), str(tmp_path / "elsewhere")
    lucky = _finished(store, "lucky-on-test", here, val=0.30, test=0.90)
    steady = _finished(store, "steady", here, val=0.50, test=0.40)
    _finished(store, "other-data", elsewhere, val=0.95, test=0.95)
    assert store.best(here) == steady != lucky
    assert store.best(tmp_path / "here" / ".." / "here") == steady  # the same folder, spelt differently
    assert store.best(elsewhere) != steady
    crossed = _finished(store, "cross-validated", here, val=0.0, test=0.1, cv=0.6)  # out-of-fold counts instead
    assert best_of(store.experiments(), here) == crossed
    assert store.best(tmp_path / "nothing") is None


def test_the_data_in_use_is_the_asked_folder_then_the_default_one_then_the_newest_models(
        store_root, tmp_path, monkeypatch):
    store = Store()
    here, elsewhere, default = (str(tmp_path / name) for name in ("here", "elsewhere", "default"))
    monkeypatch.setenv("ABID_DATA", default)
    assert data_in_use(store.experiments(), here) is None  # no model at all
    _finished(store, "older", here, val=0.5, test=0.5)
    time.sleep(0.01)
    _finished(store, "newer", elsewhere, val=0.4, test=0.4)
    models = store.experiments("finished")
    assert data_in_use(models, here) == here  # asked, and models were trained on it
    assert data_in_use(models, tmp_path / "nothing") == elsewhere  # neither asked nor default: the newest model's
    assert data_in_use(models) == elsewhere
    _finished(store, "on-default", default, val=0.1, test=0.1)
    models = store.experiments("finished")
    assert data_in_use(models) == default and data_in_use(models, tmp_path / "nothing") == default
    assert data_in_use(models, here) == here


def test_failure_is_recorded_and_never_finished(store_root):
    store = Store()
    exp = store.start("x", "cnn", "resnet18", {}, dataset="d", code_version=1)
    with pytest.raises(RuntimeError):
        with store.running(exp):
            raise RuntimeError("out of memory")
    got = store.experiment(exp)
    assert got.status == "failed" and "out of memory" in got.error
    assert store.best() is None


def _run_until_killed(root: str, started) -> None:
    store = Store(root)
    exp = store.start("killed", "cnn", "resnet18", {}, dataset="d", code_version=1)
    with store.running(exp):
        started.set()
        time.sleep(60)


def test_a_live_run_is_running_and_a_killed_one_interrupted_whatever_its_heartbeat(store_root):
    ctx = mp.get_context("fork")
    started = ctx.Event()
    proc = ctx.Process(target=_run_until_killed, args=(str(store_root), started))
    proc.start()
    assert started.wait(30)
    store = Store()
    (exp,) = store.experiments()
    with sqlite3.connect(store.path) as db:  # a long epoch: no heartbeat for an hour, from another host
        db.execute("UPDATE experiments SET heartbeat = ?, host = 'elsewhere', pid = 1", (time.time() - 3600,))
    assert store.experiment(exp.id).status == "running"  # its lock is held
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert store.experiment(exp.id).status == "interrupted"
    assert store.experiments("finished") == []


def test_a_run_without_a_lock_file_falls_back_to_its_heartbeat(store_root):
    store = Store()
    exp = store.start("remote", "cnn", "resnet18", {}, dataset="d", code_version=1)
    assert store.experiment(exp).status == "running"  # just started: fresh heartbeat
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE experiments SET heartbeat = ?", (time.time() - 3600,))
    assert store.experiment(exp).status == "interrupted"


def _claim_and_train(root: str, key: str, out) -> None:
    store = Store(root)
    with store.claim(key):
        found = store.find_finished(key)
        if found is None:
            exp = store.start("same", "classical", "svc", {}, dataset="d", code_version=1)
            time.sleep(1.0)  # training
            store.finish(exp, {"balanced_accuracy": 0.5})
            found = exp
    out.put(found)


def test_two_processes_asking_for_one_configuration_train_it_once(store_root):
    key = config_key("classical", "svc", {}, "d", code_version=1)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_and_train, args=(str(store_root), key, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    ids = {out.get(timeout=5), out.get(timeout=5)}
    assert len(ids) == 1 and len(Store().experiments()) == 1


def _open_and_record(root: str, go, out) -> None:
    go.wait()
    try:
        store = Store(root)
        store.start("run", "classical", "svc", {}, dataset="d", code_version=1)
        out.put("ok")
    except Exception as error:  # noqa: BLE001 - the test reports what each process met
        out.put(repr(error))


def test_processes_opening_a_new_store_at_once_all_get_in(tmp_path):
    """Creating a store switches it to write-ahead logging, which SQLite does not wait for: two
    training jobs started together on a fresh store used to die with "database is locked"."""
    ctx = mp.get_context("fork")
    for attempt in range(5):
        root = tmp_path / f"store{attempt}"
        go, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_and_record, args=(str(root), go, out)) for _ in range(6)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(60)
        assert [out.get(timeout=5) for _ in procs] == ["ok"] * 6
        assert len(Store(root).experiments()) == 6


OLD_SCHEMA = """
CREATE TABLE experiments (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, family TEXT NOT NULL, model TEXT NOT NULL,
    params TEXT NOT NULL, config_key TEXT NOT NULL, dataset TEXT NOT NULL, data_root TEXT,
    split TEXT, status TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, heartbeat REAL,
    host TEXT, pid INTEGER, device TEXT, weights TEXT, metrics TEXT, details TEXT, error TEXT
);
CREATE TABLE epochs (experiment TEXT NOT NULL, epoch INTEGER NOT NULL, values_json TEXT NOT NULL, logged_at REAL,
    PRIMARY KEY (experiment, epoch));
CREATE TABLE lr_curves (experiment TEXT NOT NULL, name TEXT NOT NULL, lrs TEXT NOT NULL, losses TEXT NOT NULL,
    suggested REAL, PRIMARY KEY (experiment, name));
CREATE TABLE predictions (experiment TEXT NOT NULL, image_id TEXT NOT NULL, path TEXT, true_count INTEGER,
    pred_count INTEGER, probs TEXT, PRIMARY KEY (experiment, image_id));
"""


def test_a_store_written_by_the_first_schema_opens_and_migrates(tmp_path):
    """The first release's layout, as it wrote a CNN run: details with root, val and images."""
    root = tmp_path / "old"
    root.mkdir()
    details = {"root": "/data/abid", "image_size": 160, "num_classes": 6, "preset": "quick", "recipe": "notes",
               "val": {"val_accuracy": 0.6, "val_balanced_accuracy": 0.4, "val_loss": 1.1, "image_size": 160},
               "images": {"train": 7, "val": 2, "test": 1}, "calibration": {"temperature": 0.7},
               "an_old_key": 1}
    with sqlite3.connect(root / "experiments.sqlite") as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO experiments (id, name, family, model, params, config_key, dataset, data_root, status,"
                   " started_at, metrics, details) VALUES ('old', 'quick', 'cnn', 'efficientnet_lite0', '{}', 'k',"
                   " 'd', '', 'finished', 1.0, ?, ?)", (json.dumps({"balanced_accuracy": 0.3}), json.dumps(details)))
        db.execute("INSERT INTO predictions VALUES ('old', 'a', '/a.jpg', 1, 1, '[0.1, 0.9]')")
    store = Store(root)
    exp = store.experiment("old")
    assert (exp.data_root, exp.image_size, exp.preset, exp.recipe_notes) == ("/data/abid", 160, "quick", "notes")
    assert exp.val_metrics == SplitFigures(accuracy=0.6, balanced_accuracy=0.4)  # the loss is no figure of a split
    assert exp.metrics == SplitFigures(balanced_accuracy=0.3)
    assert exp.split_counts == {"train": 7, "val": 2, "test": 1} and exp.temperature == 0.7
    assert store.predictions("old")["image_id"].tolist() == ["a"]  # old predictions are the test split's
    assert store.split("old").empty  # never recorded: evaluate says so instead of re-splitting
    with sqlite3.connect(root / "experiments.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    Store(root)  # opening again migrates nothing twice


def test_a_store_from_a_newer_binsight_is_refused(tmp_path):
    Store(tmp_path / "s")
    with sqlite3.connect(tmp_path / "s" / "experiments.sqlite") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer binsight"):
        Store(tmp_path / "s")


def test_empty_store_variable_means_the_default_store(monkeypatch):
    from core.config import PROJECT_ROOT, store_dir

    monkeypatch.setenv("BINSIGHT_STORE", "")
    assert store_dir() == PROJECT_ROOT / "models"


def test_opening_a_store_to_read_never_creates_one(tmp_path):
    missing = tmp_path / "nowhere" / "store"
    with pytest.raises(NoStoreError):
        Store(missing, create=False)
    assert not (tmp_path / "nowhere").exists()
    root = tmp_path / "old"
    root.mkdir()
    with sqlite3.connect(root / "experiments.sqlite") as db:  # the first release's store, never opened since
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO experiments (id, name, family, model, params, config_key, dataset, status,"
                   " started_at) VALUES ('old', 'quick', 'cnn', 'm', '{}', 'k', 'd', 'finished', 1.0)")
    store = Store(root, create=False)
    assert [e.id for e in store.experiments()] == ["old"]  # migrated, since only the current schema is read
    with sqlite3.connect(root / "experiments.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # a reader switches nothing
    assert sorted(p.name for p in root.iterdir()) == ["experiments.sqlite"]
    (root / "experiments.sqlite").unlink()
    with pytest.raises(sqlite3.OperationalError):
        store.experiments()  # a later read does not make an empty store either
    assert not (root / "experiments.sqlite").exists()


def test_a_calibration_stored_by_the_previous_release_opens_with_the_same_figures(tmp_path):
    """The previous release stored the calibration as a dict with `class_prior`; it opens as a typed
    `Calibration` whose figures (ECE, the coverage curve, the fit) are those it stored, and the
    prior its stored probabilities are under is said ("fit")."""
    stored = {"method": "temperature+bias", "temperature": 1.3, "bias": [0.2, -0.1, 0.0, 0.1, -0.3, 0.1],
              "class_prior": [0.05, 0.4, 0.2, 0.1, 0.1, 0.15], "n_fit": 500,
              "nll_by_method": {"none": 1.4, "temperature": 1.3, "temperature+bias": 1.2},
              "ece_by_method": {"none": 0.2, "temperature": 0.1, "temperature+bias": 0.06},
              "ece_fit_before": 0.2, "ece_fit_after": 0.06, "ece_test_before": 0.21, "ece_test_after": 0.07,
              "coverage": [0.25, 0.5, 1.0], "coverage_accuracy": [0.9, 0.8, 0.55]}
    store = Store(tmp_path / "s")
    exp_id = store.start("quick", "cnn", "m", {}, dataset="d", code_version=1)
    with sqlite3.connect(store.path) as db:  # as the previous release wrote it: a plain JSON object
        db.execute("UPDATE experiments SET details = ? WHERE id = ?", (json.dumps({"calibration": stored}), exp_id))
    calibration = store.experiment(exp_id).calibration
    assert (calibration.method, calibration.temperature, calibration.n_fit) == ("temperature+bias", 1.3, 500)
    assert (calibration.ece_test_before, calibration.ece_test_after) == (0.21, 0.07)
    assert calibration.coverage == (0.25, 0.5, 1.0) and calibration.coverage_accuracy == (0.9, 0.8, 0.55)
    assert dict(calibration.nll_by_method) == stored["nll_by_method"]
    assert calibration.fit_prior == tuple(stored["class_prior"]) and calibration.shown_prior == "fit"

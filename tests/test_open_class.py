"""The open top class: bins of more than 5 items are learnt as "more than 5" instead of left out,
the paper's 0..5 figures stay comparable, and a record above 5 is judged by P(more than 5)."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.classical import ClassicalConfig, train_classical
from core.config import PROJECT_ROOT
from core.counting.service import BinCounter, Member
from core.data.collection import load_collection
from core.data.dataset import prepare_dataset
from core.data.synthetic import write_abid_collection
from core.evaluation.calibration import Calibration
from core.evaluation.metrics import count_report, split_figures
from core.reconcile.inventory import read_records, reconcile, report_totals
from core.store.database import Store
from core.store.records import Experiment

COUNTS = [c for c in range(9) for _ in range(4)]  # 0..8 items, four bins each


def test_counts_above_five_become_the_open_class_or_are_left_out(tmp_path):
    root = write_abid_collection(tmp_path / "data", COUNTS)
    closed = load_collection(root)
    assert closed.out_of_range == 12 and closed.table["count"].max() == 5
    opened = load_collection(root, open_top=True)
    assert opened.out_of_range == 0 and sorted(opened.table["count"].unique()) == list(range(7))
    assert (opened.table["count"] == 6).sum() == 12  # 6, 7 and 8 items alike: "more than 5"


def test_a_data_set_has_an_open_class_only_when_it_has_photos_for_it(tmp_path, store_root):
    wide = prepare_dataset(write_abid_collection(tmp_path / "wide", COUNTS), 16, progress=False, open_top=True)
    assert wide.open_top and wide.num_classes == 7
    narrow = prepare_dataset(write_abid_collection(tmp_path / "narrow", [0, 1, 2, 3, 4, 5]), 16, progress=False,
                             open_top=True)
    assert not narrow.open_top and narrow.num_classes == 6


def test_the_papers_figures_are_on_zero_to_five_and_the_open_recall_beside_them():
    y = np.array([0, 1, 2, 5, 6, 6, 6, 6])
    pred = np.array([0, 1, 6, 5, 6, 6, 5, 6])  # a bin of 2 called "more than 5"; three of four open bins found
    probs = np.eye(7)[pred] * 0.9 + 0.1 / 7
    figures = split_figures(y, probs, 7, open_top=True)
    paper = count_report(y[:4], pred[:4], 7)
    assert figures.n == 4 and figures.accuracy == pytest.approx(paper.accuracy) == 0.75
    assert figures.rmse == pytest.approx(paper.rmse)  # "more than 5" counts as 6 items
    assert figures.open_class.n == 4 and figures.open_class.recall == pytest.approx(0.75)
    assert figures.per_class_accuracy[6] == pytest.approx(0.75)
    assert np.asarray(figures.confusion_matrix).sum() == 8 and figures.confusion_matrix[6][5] == 1


def test_a_classical_model_learns_the_open_class(tmp_path, store_root):
    root = write_abid_collection(tmp_path / "data", COUNTS * 2)
    store = Store(store_root)
    tiny = {"image_size": 32, "grid": {"C": [1]}, "feature_params": {"size": 32}, "folds": 2}
    exp = store.experiment(train_classical(root, ClassicalConfig("hog", "logreg", **tiny), store=store, n_jobs=1,
                                           progress=False))
    assert exp.open_top and exp.num_classes == 7 and exp.params["open_top"] is True
    assert exp.count_label(6) == "more than 5" and exp.count_label(3) == "3"
    assert exp.metrics.open_class is not None and len(exp.metrics.per_class_accuracy) == 7
    closed = store.experiment(train_classical(root, ClassicalConfig("hog", "logreg", image_size=32, grid={"C": [1]},
                                              feature_params={"size": 32}, folds=2, open_top=False), store=store,
                                              n_jobs=1, progress=False))
    assert not closed.open_top and closed.num_classes == 6


def _shade(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def _open_counter() -> BinCounter:
    """A counter whose photos say what they hold by their brightness: bright looks full ("more than
    5"), dark looks like 2 items. It tests the reconciliation rule, not a network."""
    exp = Experiment(id="open", name="open", family="cnn", model="m", params={}, config_key="k", dataset="d",
                     data_root="", status="finished", started_at=0.0, num_classes=7, image_size=16, open_top=True,
                     metrics={"n": 1}, calibration=Calibration())

    def predict(images: np.ndarray) -> np.ndarray:
        full = images.reshape(len(images), -1).mean(axis=1) > 128
        probs = np.full((len(images), 7), 0.01)
        probs[full, 6], probs[~full, 2] = 0.94, 0.94
        return probs

    return BinCounter(exp, [Member([predict], 16, exp.calibration)])


def test_a_bin_recorded_above_five_is_flagged_only_when_its_photo_does_not_look_full():
    counter = _open_counter()
    images = {"full.png": _shade(230), "sparse.png": _shade(20), "two.png": _shade(20), "broken.png": b"nope"}
    records = read_records(b"image,recorded_quantity\nfull.png,8\nsparse.png,8\ntwo.png,2\nbroken.png,1\n"
                           b"two.png,2.5\nmissing.png,3\n")
    report = reconcile(counter, records, images).set_index("image")
    assert not report.loc["full.png", "mismatch"] and "more than 5" in report.loc["full.png", "note"]
    assert report.loc["sparse.png", "mismatch"] and report.loc["sparse.png", "p_mismatch"] > 0.75
    totals = report_totals(report.reset_index())
    assert totals.given == 6 == totals.checked + totals.not_checkable + totals.errors
    assert totals.errors == 3 and totals.flagged == 1  # broken photo, 2.5 items, missing photo


def test_reconcile_cli_lists_every_record_above_five_included(tmp_path):
    root = write_abid_collection(tmp_path / "data", COUNTS * 2)
    store = tmp_path / "store"
    train_classical(root, ClassicalConfig("hog", "logreg", image_size=32, grid={"C": [1]}, feature_params={"size": 32},
                                          folds=2), store=Store(store), n_jobs=1, progress=False)
    (root / "bin-images" / "bad.jpg").write_bytes(b"<html>not a photo</html>")
    records = tmp_path / "recorded.csv"
    records.write_text("image,recorded_quantity\nbin-images/1.jpg,0\nbin-images/40.jpg,8\nbin-images/bad.jpg,2\n"
                       "bin-images/2.jpg,2.5\nbin-images/3.jpg,12\n")
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "train.py", "reconcile", "--data", str(root), "--records", str(records),
                          "--out", str(out), "--store", str(store)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    written = json.loads(out.read_text())
    report = pd.DataFrame(written["bins"])
    assert len(report) == 5 and written["totals"]["given"] == 5
    assert written["totals"]["checked"] + written["totals"]["not_checkable"] + written["totals"]["errors"] == 5
    above = report.set_index("image").loc[["bin-images/40.jpg", "bin-images/3.jpg"]]
    assert above["p_mismatch"].notna().all()  # judged by P(more than 5), not left unchecked

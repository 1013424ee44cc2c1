"""The dashboard's pure table functions: experiments and predictions in, the right table out."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core.analysis.screening import paired_comparison
from core.evaluation.metrics import Interval, Intervals, SplitFigures
from core.store.records import Experiment
from dashboard import tables


def experiment(exp_id, name, status="finished", bal=0.5, started=0.0, family="classical", val=None) -> Experiment:
    metrics = SplitFigures(
        accuracy=bal + 0.1, balanced_accuracy=bal, rmse=1.0 - bal, n=10,
        per_class_accuracy=[bal, None, 1.0], per_class_rmse=[0.5, None, 0.0],
        intervals=Intervals(Interval(bal, bal + 0.2), Interval(bal - 0.1, bal + 0.1), Interval(0.4, 0.6)),
        per_class_intervals=[Interval(bal - 0.2, bal + 0.2), None, Interval(1.0, 1.0)],
        confusion_matrix=[[2, 1, 0], [0, 0, 0], [0, 0, 3]]) if status == "finished" else None
    return Experiment(id=exp_id, name=name, family=family, model="svm", params={}, config_key="k", dataset="d",
                      data_root="/data", status=status, started_at=started, metrics=metrics, train_seconds=2.5,
                      device="cpu",
                      val_metrics=SplitFigures(balanced_accuracy=bal if val is None else val) if metrics else None)


def test_labels_stay_unique_when_names_repeat():
    exps = [experiment("a", "svm", started=0), experiment("b", "svm", started=3600), experiment("c", "cnn")]
    names = tables.labels(exps)
    assert names["c"] == "cnn"
    assert names["a"] != names["b"] and names["a"].startswith("svm (")


def test_leaderboard_ranks_by_the_validation_figure_and_shows_test_intervals():
    exps = [experiment("a", "tree", bal=0.3, val=0.5), experiment("b", "resnet", bal=0.6, val=0.4),
            experiment("c", "running", status="running")]
    board = tables.leaderboard(exps)
    assert list(board["experiment"]) == ["tree", "resnet"]  # chosen on validation, not on the better test figure
    assert board.loc[0, "chosen on"] == "validation"
    assert board.loc[1, "balanced accuracy (95% CI)"] == "0.600 (0.500–0.700)"
    assert board.loc[1, "acc 0"] == 0.6 and math.isnan(board.loc[1, "acc 1"])
    assert board.loc[0, "train time (s)"] == 2.5
    assert tables.leaderboard([experiment("c", "x", status="failed")]).empty
    sweep = experiment("d", "lr-find quick")
    sweep.metrics = None  # finished, but scores nothing
    assert not tables.is_scored(sweep) and tables.leaderboard([sweep]).empty
    crossed = experiment("e", "cv", val=0.0)
    crossed.cv_metrics = SplitFigures(balanced_accuracy=0.9)
    assert tables.leaderboard([*exps, crossed]).loc[0, "chosen on"] == "out-of-fold"


def test_paired_comparison_runs_on_the_photos_both_models_scored():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, 400)
    good = np.where(rng.random(400) < 0.8, truth, rng.integers(0, 6, 400))
    bad = np.where(rng.random(400) < 0.3, truth, rng.integers(0, 6, 400))
    ids = [f"p{i}" for i in range(400)]
    a = pd.DataFrame({"image_id": ids, "true_count": truth, "pred_count": good})
    b = pd.DataFrame({"image_id": ids[50:] + ["elsewhere"], "true_count": [*truth[50:], 1],
                      "pred_count": [*bad[50:], 1]})
    comparison, said, n = paired_comparison(a, b, "A", "B")
    assert n == 350 and said.startswith("A beats B") and comparison["balanced_accuracy"].low > 0
    assert list(tables.comparison_table(comparison)["metric"]) == ["accuracy", "balanced accuracy", "rmse"]
    assert paired_comparison(a, b.iloc[-1:], "A", "B")[1].endswith("cannot be compared head to head.")
    open_photos = int((truth[50:] == 5).sum())
    assert paired_comparison(a, b, "A", "B", open_class=5)[2] == 350 - open_photos  # the paper's photos only


def test_per_class_table_is_the_papers_tables_one_and_two():
    metrics = experiment("a", "svm", bal=0.5).metrics
    assert metrics is not None
    frame = tables.per_class_table(metrics)
    assert list(frame["items in the bin"]) == [0, 1, 2]
    assert list(frame["accuracy 95% CI"]) == ["30%–70%", "", "100%–100%"]
    assert list(frame["test photos"]) == [3, 0, 3]
    assert frame.loc[0, "accuracy"] == 0.5 and math.isnan(frame.loc[1, "RMSE"])


def test_others_lists_unfinished_runs_with_the_first_line_of_their_error():
    failed = experiment("f", "cnn", status="failed")
    failed.error = "RuntimeError: out of memory\ntraceback..."
    frame = tables.others([experiment("a", "svm"), failed])
    assert list(frame["id"]) == ["f"] and frame.loc[0, "error"] == "RuntimeError: out of memory"


@pytest.fixture
def preds():
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e"], "path": ["pa", "pb", "pc", "pd", "pe"],
        "true_count": [1, 1, 2, 3, 3], "pred_count": [1, 2, 1, 1, 3],
        "confidence": [0.9, 0.8, 0.4, 0.6, 0.7],
    })


def test_misclassified_filters_and_sorts_by_confidence(preds):
    assert list(tables.misclassified(preds)["image_id"]) == ["b", "d", "c"]
    assert list(tables.misclassified(preds, most_confident_first=False)["image_id"]) == ["c", "d", "b"]
    assert list(tables.misclassified(preds, true_counts=[3])["image_id"]) == ["d"]
    assert list(tables.misclassified(preds, predicted_counts=[1])["image_id"]) == ["d", "c"]
    assert tables.misclassified(preds, true_counts=[1], predicted_counts=[1]).empty


def test_cell_holds_exactly_that_true_and_predicted_count(preds):
    assert list(tables.cell(preds, 3, 1)["image_id"]) == ["d"]
    assert list(tables.cell(preds, 1, 1)["image_id"]) == ["a"]
    assert tables.cell(preds, 0, 0).empty


def test_item_names_from_abid_metadata():
    items = json.dumps([{"asin": "B001", "name": "Phone case", "quantity": 2},
                        {"asin": "B002", "name": "", "quantity": 1}])
    assert tables.item_names(items) == ["2 × Phone case", "B002"]
    assert tables.item_names("") == [] and tables.item_names("not json") == []


def test_the_most_frequent_mistake_is_said_in_words():
    from core.evaluation.metrics import SplitFigures, largest_confusion
    from core.store.records import Experiment
    from dashboard.tables import confusion_line

    matrix = [[5, 1, 0], [38, 60, 3], [0, 9, 40]]  # rows: true count
    cell = largest_confusion(matrix)
    assert (cell.true, cell.predicted, cell.photos, cell.of) == (1, 0, 38, 101)
    exp = Experiment(id="e", name="m", family="cnn", model="lite0", params={}, config_key="k", dataset="d",
                     data_root="r", status="finished", started_at=0.0, num_classes=3, open_top=True)
    assert confusion_line(exp, SplitFigures(confusion_matrix=matrix)) == \
        "most frequent mistake: bins of 1 item counted as 0, 38 of 101 (38%)"
    assert largest_confusion([[3, 0], [0, 4]]) is None and confusion_line(exp, None) is None

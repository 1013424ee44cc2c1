"""The dashboard's pure figure functions: plain data in, the right chart out."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dashboard import figures


def test_count_histogram_counts_each_class_and_ignores_out_of_range():
    fig = figures.count_histogram([0, 1, 1, 5, 5, 5, 7, -1], num_classes=6)
    bar = fig.data[0]
    assert list(bar.x) == [0, 1, 2, 3, 4, 5]
    assert list(bar.y) == [1, 2, 0, 0, 0, 3]
    assert bar.text[5] == "3<br>50%"


def test_curve_columns_split_into_phase_and_metric():
    assert figures.split_curve_column("val_loss") == ("val", "loss")
    assert figures.split_curve_column("train_balanced_accuracy") == ("train", "balanced_accuracy")
    assert figures.split_curve_column("lr") == ("", "lr")
    assert figures.split_curve_column("seconds_per_epoch") == ("", "seconds_per_epoch")


def test_curve_metrics_puts_loss_first_and_skips_bookkeeping():
    frames = {"a": pd.DataFrame({"epoch": [1], "val_accuracy": [0.5], "lr": [0.1], "train_loss": [1.0],
                                 "val_loss": [1.1], "image_size": [64], "seconds": [3.0], "val_note": ["x"]}),
              "b": pd.DataFrame({"epoch": [1], "val_rmse": [0.9]})}
    assert figures.curve_metrics(frames) == ["loss", "accuracy", "rmse", "lr"]


def test_curves_figure_draws_train_solid_and_val_dashed_per_experiment():
    frame = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.6], "val_loss": [1.1, 0.9, 0.95],
                          "val_accuracy": [0.3, 0.4, 0.45]})
    fig = figures.curves_figure({"resnet18": frame, "resnet34": frame * 0.9}, "loss")
    assert len(fig.data) == 4  # two experiments x (train, val); accuracy is not drawn
    dashes = {t.name: t.line.dash for t in fig.data}
    assert dashes["resnet18 · train"] == "solid" and dashes["resnet18 · val"] == "dash"
    assert fig.data[0].line.color != fig.data[2].line.color
    assert list(fig.data[1].y) == [1.1, 0.9, 0.95]
    accuracy = figures.curves_figure({"resnet18": frame}, "accuracy")
    assert accuracy.layout.yaxis.tickformat == ".0%"


def test_per_class_bars_groups_experiments_and_leaves_absent_classes_blank():
    fig = figures.per_class_bars({"svm": [0.5, None, 1.0], "cnn": [0.25, 0.75, 0.0]}, "accuracy")
    assert fig.layout.barmode == "group" and len(fig.data) == 2
    assert math.isnan(fig.data[0].y[1]) and fig.data[0].text[1] == ""
    assert fig.data[1].text[1] == "75%"
    assert fig.layout.yaxis.tickformat == ".0%"
    rmse = figures.per_class_bars({"svm": [0.5, 1.25]}, "RMSE")
    assert rmse.data[0].text == ("0.50", "1.25") and rmse.layout.yaxis.tickformat is None


def test_confusion_heatmap_counts_and_row_shares():
    matrix = [[3, 1, 0], [0, 0, 0], [2, 2, 4]]
    counts = figures.confusion_heatmap(matrix)
    heat, cells = counts.data
    assert np.array_equal(np.asarray(heat.z), matrix)
    assert heat.text[2][2] == "4"
    shares = figures.confusion_heatmap(matrix, normalise=True).data[0]
    z = np.asarray(shares.z)
    assert z[0].sum() == pytest.approx(1) and z[2].sum() == pytest.approx(1)
    assert z[1].sum() == 0  # a count absent from the test set: no division by zero
    assert shares.text[0][0] == "3<br>75%"
    # clickable markers: x = predicted, y = true, customdata = [true, predicted, photos]
    k = list(zip(cells.y, cells.x, strict=True)).index((2, 0))
    assert list(cells.customdata[k]) == [2, 0, 2]


def test_lr_finder_stars_the_suggested_rate_on_its_curve():
    lrs = np.logspace(-5, 0, 11)
    losses = np.linspace(2.0, 1.0, 11)
    fig = figures.lr_finder_figure([
        {"label": "resnet18", "lrs": lrs, "losses": losses, "suggested": 1e-3},
        {"label": "resnet34", "lrs": lrs, "losses": losses, "suggested": None},
        {"label": "odd", "lrs": lrs, "losses": losses, "suggested": 1e-8},  # below the swept range
    ])
    assert fig.layout.xaxis.type == "log"
    stars = [t for t in fig.data if t.mode == "markers+text"]
    assert [s.x[0] for s in stars] == [1e-3, 1e-8]
    assert stars[0].y[0] == pytest.approx(1.6)  # 1e-3 is 2/5 of the way along the log axis: 2 - 0.4
    assert stars[1].y[0] == pytest.approx(2.0)  # shown at the loss of the sweep's first step
    assert len(fig.data) == 5


def test_lr_finder_y_axis_leaves_out_the_divergent_tail():
    """fastai-style view: the descent before the minimum fills the plot, the blow-up does not."""
    lrs = np.logspace(-6, 1, 60)
    descent = np.linspace(2.0, 1.0, 45)
    tail = 1.0 * np.exp(np.linspace(0.1, 4.0, 15))  # diverges to about 55
    fig = figures.lr_finder_figure([
        {"label": "a", "lrs": lrs, "losses": np.concatenate([descent, tail]), "suggested": 1e-4},
        {"label": "b", "lrs": lrs[:30], "losses": np.linspace(1.8, 1.2, 30), "suggested": None},
    ])
    low, high = fig.layout.yaxis.range
    assert low < 1.0 and 2.0 < high < 2.5  # the lowest loss and both starts, a little room
    assert max(fig.data[0].y) > 10 * high  # the tail is still in the data, just out of view
    assert figures.lr_finder_figure([]).layout.yaxis.range is None


def test_probability_bars_colour_the_count_and_mark_the_record():
    fig = figures.probability_bars([0.1, 0.6, 0.3], recorded=2)
    bar = fig.data[0]
    assert bar.marker.color[1] == figures.colour(0) and bar.marker.color[0] == figures.NEUTRAL
    assert list(bar.marker.line.width) == [0, 0, 3]
    assert fig.layout.annotations[0].text == "recorded" and fig.layout.annotations[0].x == 2
    assert not figures.probability_bars([0.1, 0.6, 0.3]).layout.annotations


def test_mismatch_bars_red_above_threshold_and_skip_unchecked_bins():
    report = pd.DataFrame({"image": ["a.jpg", "b.jpg", "c.jpg"], "recorded_quantity": [1, 2, 3],
                           "predicted_count": [1, 0, None], "p_mismatch": [0.2, 0.9, None]})
    fig = figures.mismatch_bars(report, threshold=0.5)
    bar = fig.data[0]
    assert list(bar.x) == ["b.jpg", "a.jpg"]
    assert list(bar.marker.color) == [figures.MISMATCH, figures.MATCH]
    at_threshold = figures.mismatch_bars(report.iloc[:1], threshold=0.2)  # flagged by the report: red too
    assert list(at_threshold.data[0].marker.color) == [figures.MISMATCH]
    empty = figures.mismatch_bars(report.iloc[2:], threshold=0.5)
    assert len(empty.data[0].x) == 0


def test_coverage_curve_in_percent_from_most_certain_to_all_bins():
    fig = figures.coverage_curve([0.25, 0.5, 1.0], [1.0, 0.8, 0.55])
    assert list(fig.data[0].x) == [0.25, 0.5, 1.0] and list(fig.data[0].y) == [1.0, 0.8, 0.55]
    assert fig.layout.xaxis.tickformat == ".0%" and fig.layout.yaxis.tickformat == ".0%"


def test_per_class_bars_draw_interval_error_bars_where_given():
    fig = figures.per_class_bars({"a": [0.5, None, 0.8]}, "accuracy", intervals={"a": [[0.3, 0.7], None, [0.6, 0.9]]})
    error = fig.data[0].error_y
    assert list(error.array)[0] == pytest.approx(0.2) and list(error.arrayminus)[2] == pytest.approx(0.2)
    assert math.isnan(list(error.array)[1])
    assert figures.per_class_bars({"a": [0.5]}, "accuracy").data[0].error_y.array is None

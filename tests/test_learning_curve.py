"""What more photos buy: nested training shares, the curve's points scored on the same photos, its fit."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.analysis.learning_curve import (
    EXTRAPOLATE_TO,
    _line,
    curve_overrides,
    fits_table,
    learning_curve,
    train_learning_curve,
)
from core.cnn.recipes import get_recipe
from core.data.dataset import nested_share
from core.data.synthetic import write_abid_collection
from core.store.database import Store
from tests.builders import CNN_TINY

TINY = {**CNN_TINY, "phases": [{"epochs": 1, "image_size": 32, "train_body": False, "lr": 3e-3}]}


def test_shares_are_nested_stratified_and_keep_groups_whole():
    rng = np.random.default_rng(0)
    groups = [f"g{i // 2}" for i in range(400)]  # pairs of photos of one bin
    part = pd.DataFrame({"image_id": [f"p{i}" for i in range(400)], "group": groups,
                         "count": [int(g[1:]) % 4 for g in groups], "noise": rng.random(400)})
    kept = {share: set(nested_share(part, share, seed=1)["image_id"]) for share in (0.125, 0.25, 0.5, 1.0)}
    assert kept[0.125] < kept[0.25] < kept[0.5] < kept[1.0] == set(part["image_id"])
    for share, ids in kept.items():
        chosen = part[part["image_id"].isin(ids)]
        assert chosen.groupby("group").size().eq(2).all()  # a bin's photos are kept together
        per_count = chosen["count"].value_counts() / part["count"].value_counts()
        assert np.allclose(per_count, share, atol=0.03), (share, per_count.to_dict())
    assert kept[0.25] != set(nested_share(part, 0.25, seed=2)["image_id"])  # another seed, other photos
    with pytest.raises(ValueError, match="train_share"):
        nested_share(part, 0.0)


def test_a_point_is_the_preset_with_only_its_share_source_and_seed_set():
    assert curve_overrides(1.0, "all", 0) == {}  # make run's own model is the curve's last point
    assert get_recipe("quick-frozen", curve_overrides(1.0, "all", 0)).params() == get_recipe("quick-frozen").params()
    assert curve_overrides(0.25, "natural", 2) == {"train_share": 0.25, "train_source": "natural", "seed": 2}
    with pytest.raises(ValueError, match="train_source"):
        get_recipe("quick", {"train_source": "photos"})


def test_the_fit_recovers_a_known_line_and_its_projection():
    x = np.log([1000, 2000, 4000, 8000])
    intercept, slope = _line(x, (0.1 + 0.02 * x)[None])
    assert intercept[0] == pytest.approx(0.1) and slope[0] == pytest.approx(0.02)


def test_a_learning_curve_trains_nested_points_and_scores_them_on_the_same_photos(tmp_path):
    data = write_abid_collection(tmp_path / "data", [count for count in range(6) for _ in range(16)])
    store = Store(tmp_path / "store")
    ids = train_learning_curve(data, "quick", store, shares=(0.25, 0.5, 1.0), overrides=TINY, progress=False)
    assert len(set(ids)) == 3
    assert train_learning_curve(data, "quick", store, shares=(1.0,), overrides=TINY, progress=False) == ids[-1:]
    curve = learning_curve(store, store.experiment(ids[-1]), rounds=200)
    photos = [p.photos for p in curve.points]
    assert [p.share for p in curve.points] == [0.25, 0.5, 1.0] and photos == sorted(photos) and photos[0] < photos[-1]
    scored = {tuple(sorted(p.screened.shown["image_id"])) for p in curve.points}
    assert len(scored) == 1  # every point on the same validation photos
    assert [(s.smaller, s.larger) for s in curve.steps] == [(0.25, 0.5), (0.5, 1.0)]
    fit = curve.fit("all", "all")
    assert fit is not None and fit.points == 3 and fit.slope_low <= fit.slope <= fit.slope_high
    assert [p.photos for p in fit.projections] == list(EXTRAPOLATE_TO)
    assert all(p.low <= p.high for p in fit.projections)
    table = curve.table()
    assert list(table["training photos"]) == photos and "all: accuracy, paper's task" in table
    assert len(fits_table(curve)) == len(curve.fits)


def test_the_what_more_photos_buy_page_draws_the_curve_and_says_what_five_points_cost(tmp_path, monkeypatch):
    from tests.builders import open_page

    data = write_abid_collection(tmp_path / "data", [count for count in range(6) for _ in range(16)])
    store = Store(tmp_path / "store")
    monkeypatch.setenv("BINSIGHT_STORE", str(store.root))
    train_learning_curve(data, "quick", store, shares=(1.0,), overrides=TINY, progress=False)
    at = open_page("more_photos")  # one point: no line yet, and the command that adds the others
    assert "learning-curve --preset quick" in at.code[0].value and not at.metric
    train_learning_curve(data, "quick", store, shares=(0.25, 0.5), overrides=TINY, progress=False)
    at = open_page("more_photos")
    labels = [m.label for m in at.metric]
    assert "+5 points of accuracy need" in labels and "At 324,000 photos" in labels
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe) == 2
    assert any("People have recounted 0 photos" in c.value for c in at.caption)

"""`best` as an ensemble of finished runs: chosen greedily on validation, recalibrated, recorded as one
model, served, exported member by member and shown with its members."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.cnn.onnx_export import read_manifest
from core.cnn.predictor import onnx_runtime_predictor
from core.counting.service import BinCounter, Member, load_counter
from core.data.synthetic import bin_jpeg
from core.evaluation.calibration import Calibration, fit_calibration
from core.evaluation.metrics import split_figures
from core.store.database import Store, selection_score
from core.store.records import Experiment
from core.training.ensemble import Mix, build_ensemble, held_out, record_ensemble, select
from tests.builders import open_page, run_cli

K = 7  # counts 0..5 and "more than 5"


def _probs(truth: np.ndarray, knows: set[int], rng: np.random.Generator) -> np.ndarray:
    """A run's probabilities: sure of the true count where it `knows` that count, a guess elsewhere."""
    p = rng.dirichlet(np.ones(K), len(truth))
    sure = np.isin(truth, list(knows))
    p[sure, truth[sure]] += 2.0
    p /= p.sum(axis=1, keepdims=True)
    return np.round(p, 5)


def _store_with_runs(tmp_path: Path, runs: dict[str, set[int]]) -> tuple[Store, dict[str, str], Path]:
    """A store with one finished run per entry of `runs` (its name -> the counts it knows), each with
    validation and test predictions of the same photos, as training records them."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    root.mkdir()
    truth = {"val": np.tile(np.arange(K), 60), "test": np.tile(np.arange(K), 20)}
    image_ids = {split: [f"{split}{i:04d}" for i in range(len(t))] for split, t in truth.items()}
    store, ids = Store(tmp_path / "store"), {}
    for name, knows in runs.items():
        exp_id = store.start(name, "cnn", "m", {"run": name}, "data", code_version=1, data_root=str(root.resolve()),
                             num_classes=K, open_top=True, image_size=32)
        figures = {}
        for split, t in truth.items():
            p = _probs(t, knows, rng)
            store.log_predictions(exp_id, image_ids[split], [f"{i}.jpg" for i in image_ids[split]], t.tolist(), p,
                                  split=split)
            figures[split] = split_figures(t, p, K, open_top=True)
        store.log_split(exp_id, image_ids["val"] + image_ids["test"],
                        ["val"] * len(image_ids["val"]) + ["test"] * len(image_ids["test"]))
        store.finish(exp_id, figures["test"], val_metrics=figures["val"])
        ids[name] = exp_id
    return store, ids, root


def test_selection_takes_the_runs_that_complement_each_other_and_leaves_noise_out():
    rng = np.random.default_rng(1)
    truth = np.tile(np.arange(K), 50)
    stack = np.stack([_probs(truth, {0, 1, 2, 3}, rng), _probs(truth, {4, 5, 6}, rng), _probs(truth, set(), rng)])
    chosen = select(stack, truth, K, open_top=True)
    assert set(chosen) == {0, 1}
    alone = select(stack[[0, 2]], truth, K, open_top=True)
    assert alone == Counter({0: 1})  # noise adds nothing to a run that knows some counts


def test_the_ensemble_is_chosen_on_validation_and_recorded_as_one_model_best_serves(tmp_path):
    store, ids, root = _store_with_runs(tmp_path, {"low": {0, 1, 2, 3}, "high": {4, 5, 6}, "noise": set()})
    exp = store.experiment(build_ensemble(store, root))
    assert exp.family == "ensemble" and exp.is_model and set(exp.members) == {ids["low"], ids["high"]}
    assert "low" in exp.recipe_notes and "high" in exp.recipe_notes
    singles = [selection_score(store.experiment(i)) for i in ids.values()]
    assert exp.val_metrics is not None and exp.val_metrics.balanced_accuracy > max(singles)
    assert store.best(root) == exp.id

    # the test predictions recorded are the recalibrated, weighted mean of the members' own
    members = [store.experiment(i) for i in exp.members]
    test = held_out(store, members, "test")
    expected = exp.calibration.likelihood(test.mean(list(exp.members.values())))
    stored = store.predictions(exp.id, "test").set_index("image_id").loc[test.image_ids]
    assert np.abs(np.stack(stored["probs"].to_list()) - expected).max() < 1e-4
    assert exp.metrics == split_figures(test.counts, expected, K, open_top=True)
    assert len(store.predictions(exp.id, "val")) == 7 * 60
    assert build_ensemble(store, root) == exp.id  # the same library chooses the same members, recorded once


def test_no_ensemble_is_recorded_when_one_run_is_as_good_alone(tmp_path):
    store, ids, root = _store_with_runs(tmp_path, {"sure": set(range(K)), "noise": set()})
    with pytest.raises(ValueError, match="stays `best`"):
        build_ensemble(store, root)
    assert store.best(root) == ids["sure"]
    run = run_cli("ensemble", "--data", str(root), store=store.root)
    assert run.returncode != 0 and "alone on validation" in run.stderr


def test_the_ensemble_command_says_what_it_chose(tmp_path):
    store, ids, root = _store_with_runs(tmp_path, {"low": {0, 1, 2, 3}, "high": {4, 5, 6}})
    run = run_cli("ensemble", "--data", str(root), store=store.root)
    assert run.returncode == 0, run.stderr
    assert "best is now this ensemble" in run.stdout and ids["low"] in run.stdout and ids["high"] in run.stdout


def _two_sizes_counter() -> tuple[BinCounter, list[tuple[int, ...]]]:
    exp = Experiment(id="mix", name="ensemble", family="ensemble", model="ensemble", params={}, config_key="k",
                     dataset="d", data_root="", status="finished", started_at=0.0, num_classes=3, image_size=48)
    seen: list[tuple[int, ...]] = []

    def network(answer: int):
        def predict(images: np.ndarray) -> np.ndarray:
            seen.append(images.shape)
            probs = np.full((len(images), 3), 0.1)
            probs[:, answer] = 0.8
            return probs
        return predict

    members = [Member([network(0)], 32, Calibration()), Member([network(2)], 48, Calibration(), weight=3)]
    return BinCounter(exp, members), seen


def test_each_member_reads_the_photo_at_its_own_size_and_weighs_as_chosen():
    counter, seen = _two_sizes_counter()
    assert counter.sizes == (32, 48) and counter.image_size == 48
    result = counter.count(bin_jpeg(2, seed=1))
    assert sorted(seen) == [(1, 32, 32, 3), (1, 48, 48, 3)]
    assert result.count == 2 and result.probs[2] > result.probs[0]  # the member chosen three times outweighs
    batch = counter.count_batch([bin_jpeg(1, seed=2), b"not a photo", bin_jpeg(3, seed=3)], batch_size=2)
    assert [type(r).__name__ for r in batch] == ["CountResult", "ImageError", "CountResult"]


@pytest.fixture
def ensemble_store(trained_store, tmp_path) -> tuple[Store, str]:
    """A copy of the tiny trained store with an ensemble of its two CNN runs (the second weighing twice)."""
    store = Store(shutil.copytree(trained_store, tmp_path / "store"))
    runs = [e for e in store.experiments("finished") if e.family == "cnn" and e.is_model][:2]
    val = held_out(store, runs, "val")
    calibration = fit_calibration(np.average(val.likelihoods, axis=0, weights=[1, 2]), val.counts)
    return store, record_ensemble(store, runs, val, Mix(Counter({0: 1, 1: 2}), calibration))


def test_the_served_ensemble_counts_as_recorded_and_exports_every_member(ensemble_store, tmp_path):
    store, exp_id = ensemble_store
    exp = store.experiment(exp_id)
    recorded = store.predictions(exp_id, "test")
    counter = load_counter(exp_id, store, precision="fp32", engine="torch")
    served = np.array([r.probs for r in counter.count_batch(recorded["path"].tolist())])
    assert np.abs(served - np.stack(recorded["probs"].to_list())).max() < 1e-3

    run = run_cli("export", "--model", exp_id, "--out", str(tmp_path / "bundle"), store=store.root)
    assert run.returncode == 0, run.stderr
    manifest = read_manifest(tmp_path / "bundle")
    assert {m["experiment"]: m["weight"] for m in manifest["members"]} == exp.members
    members = []
    for listed in manifest["members"]:
        folder = tmp_path / "bundle" / listed["folder"]
        own = read_manifest(folder)
        calibration = Calibration.from_dict(json.loads((folder / own["calibration"]).read_text()))
        members.append(Member([onnx_runtime_predictor(folder / g) for g in own["graphs"]], own["image_size"],
                              calibration, listed["weight"]))
    top = Calibration.from_dict(json.loads((tmp_path / "bundle" / manifest["calibration"]).read_text()))
    theirs = BinCounter(exp, members, calibration=top, engine="onnxruntime")
    photos = [bin_jpeg(k % 6, seed=30_000 + k) for k in range(40)]
    ours_probs = np.array([r.probs for r in counter.count_batch(photos)])
    their_probs = np.array([r.probs for r in theirs.count_batch(photos)])
    assert np.abs(ours_probs - their_probs).max() < 1e-3


def test_pages_show_the_ensemble_as_one_model_with_its_members(ensemble_store, monkeypatch):
    store, exp_id = ensemble_store
    monkeypatch.setenv("BINSIGHT_STORE", str(store.root))
    exp = store.experiment(exp_id)
    overview = open_page("overview")
    board = overview.dataframe[0].value
    row = board[board["id"] == exp_id].iloc[0]
    assert row["family"] == "ensemble" and row["model"] == f"ensemble of {exp.recipe_notes}"
    for page in ("confusion", "upload"):
        at = open_page(page)
        picker = at.selectbox[0]
        picker.set_value(exp_id).run()
        assert not at.exception, at.exception
        assert any("serves 2 models as one" in c.value for c in at.caption)

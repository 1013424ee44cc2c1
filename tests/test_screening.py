"""Screening levers: figures recomputed from stored predictions, overall and per source, ensembles as means."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.analysis.screening import markdown, parse_run, screen, screening_table
from core.data.sources import NATURAL_224, ORIGINALS
from core.evaluation.metrics import split_figures
from core.store.database import Store
from tests.builders import run_cli

K = 7  # counts 0..5 and "more than 5"


def _store_with_two_runs(tmp_path) -> tuple[Store, list[str], np.ndarray, list[np.ndarray]]:
    """Two finished runs that stored validation predictions of the same 40 photos, half of them 224 x 224 px."""
    rng = np.random.default_rng(0)
    paths, truth = [], rng.integers(0, K, 40)
    for i in range(40):
        path = tmp_path / f"p{i}.jpg"
        Image.new("RGB", (224, 224) if i % 2 else (400, 300)).save(path)
        paths.append(str(path))
    store, ids, probs = Store(tmp_path / "store"), [], []
    for run in range(2):
        p = rng.dirichlet(np.ones(K), 40)
        p[np.arange(40), truth] += run * 0.5  # the second run is better
        p /= p.sum(axis=1, keepdims=True)
        p = np.vectorize(lambda x: round(float(x), 5))(p)  # what the store keeps
        exp_id = store.start(f"run{run}", "cnn", "m", {"run": run}, "data", code_version=1, num_classes=K,
                             open_top=True, train_seconds=60.0 * (run + 1))
        store.log_predictions(exp_id, [f"id{i}" for i in range(40)], paths, truth.tolist(), p, split="val")
        store.finish(exp_id, None)
        ids.append(exp_id)
        probs.append(p)
    order = np.argsort([f"id{i}" for i in range(40)])  # screening orders photos by image id
    return store, ids, truth[order], [p[order] for p in probs]


def test_a_screened_run_is_scored_like_its_split_overall_and_per_source(tmp_path):
    store, ids, truth, probs = _store_with_two_runs(tmp_path)
    run = screen(store, [store.experiment(ids[1])])
    assert run.overall == split_figures(truth, probs[1], K, open_top=True)
    natural = np.array([int(name[2:]) % 2 == 1 for name in np.sort([f"id{i}" for i in range(40)])])
    assert set(run.by_source) == {NATURAL_224, ORIGINALS}
    assert run.by_source[NATURAL_224] == split_figures(truth[natural], probs[1][natural], K, open_top=True)
    assert run.minutes == 2.0


def test_an_ensemble_is_the_mean_of_its_runs_probabilities(tmp_path):
    store, ids, truth, probs = _store_with_two_runs(tmp_path)
    both = screen(store, [store.experiment(i) for i in ids], label="mix")
    assert both.label == "mix" and both.minutes == 3.0
    assert both.overall == split_figures(truth, (probs[0] + probs[1]) / 2, K, open_top=True)
    table = screening_table([screen(store, [store.experiment(ids[0])]), both])
    assert list(table["lever"]) == ["run0", "mix"]
    assert f"{NATURAL_224}: balanced accuracy, product" in table.columns
    text = markdown(table)
    assert text.splitlines()[0].startswith("| lever | split |") and text.count("\n") == 3


def test_a_lever_is_compared_with_another_paired_on_the_same_photos(tmp_path):
    store, ids, truth, probs = _store_with_two_runs(tmp_path)
    worse, better = (screen(store, [store.experiment(i)]) for i in ids)
    comparison, said, n = better.versus(worse)
    assert n == int((truth < K - 1).sum())  # bins of 0..5 items
    assert comparison["accuracy"].difference > 0 and "beats" in said


def test_screening_refuses_a_split_the_run_did_not_store(tmp_path):
    store, ids, _, _ = _store_with_two_runs(tmp_path)
    with pytest.raises(ValueError, match="stored no 'test' predictions"):
        screen(store, [store.experiment(ids[0])], split="test")
    with pytest.raises(ValueError, match="split must be one of"):
        screen(store, [store.experiment(ids[0])], split="train")


def test_the_screen_command_prints_labelled_runs_and_ensembles(trained_store):
    store = Store(trained_store)
    label, runs = parse_run("head start=hog-svc+raw-logreg", store)
    assert label == "head start" and [r.name for r in runs] == ["hog-svc", "raw-logreg"]
    out = run_cli("screen", "hog=hog-svc", "hog-svc+raw-logreg", "--overall-only", "--paired", store=trained_store)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[2].startswith("| hog | val |") and lines[3].startswith("| hog-svc + raw-logreg | val |")
    assert "hog-svc + raw-logreg against hog, paired on" in out.stdout and out.stdout.count("\n- ") == 3
    missing = run_cli("screen", "no-such-model", store=trained_store)
    assert missing.returncode != 0 and "not found" in missing.stderr

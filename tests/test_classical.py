"""The classical package: grids, fold fallback, selection rules, every model family, scale limits,
the experiment record, the saved pipeline as the counting service loads it (and a tampered one
refused), cross-validated runs, and the store cache."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import train
from core.classical import ClassicalConfig, experiment, suite_experiments, train_classical
from core.classical.models import MODELS, check_scale, model_grid
from core.classical.predictor import (
    ARTIFACT,
    UntrustedModel,
    load_pipeline,
    load_predictor,
    pipeline_probabilities,
    save_pipeline,
)
from core.classical.search import choose_folds, failed_rows, grid_search, select_balanced, select_paper
from core.data.dataset import prepare_dataset
from core.evaluation.metrics import Intervals
from core.store.database import Store, config_key

FAST = {"image_size": 32, "feature_params": {"size": 32}, "grid": {"C": [1, 10]}}
QUIET = {"n_jobs": 1, "progress": False}


def six_classes(n: int = 120, seed: int = 0):
    return make_classification(n_samples=n, n_features=12, n_informative=8, n_classes=6, n_clusters_per_class=1,
                               class_sep=2.0, random_state=seed)


def test_model_grid_prefixes_model_parameters_and_keeps_step_parameters():
    assert model_grid("svc", {"C": [1, 10], "pca__n_components": [50], "gamma": "scale"}) == [
        {"model__C": [1, 10], "pca__n_components": [50], "model__gamma": ["scale"]}]
    assert model_grid("tree") == [{"model__max_depth": [4, 8, 16, None], "model__min_samples_leaf": [1, 10]}]
    assert len(model_grid("linearsvc", [{"C": [1]}, {"penalty": ["l1"], "dual": [False]}])) == 2
    with pytest.raises(ValueError, match="unknown model"):
        model_grid("forest")
    with pytest.raises(ValueError, match="non-empty"):
        model_grid("svc", [{}])


def test_folds_fall_back_with_a_warning_when_a_class_is_small():
    y = np.array([0] * 3 + [1] * 20 + [2] * 20)
    with pytest.warns(UserWarning, match="count 0 has only 3"):
        assert choose_folds(y, 10) == (3, "count 0 has only 3 training images, so cross-validation uses 3 folds "
                                          "instead of 10")
    assert choose_folds(np.repeat([0, 1], 10), 10) == (10, None)


def results(accuracy, balanced, recalls) -> dict:
    recalls = np.asarray(recalls, dtype=float)
    out = {"mean_test_accuracy": np.array(accuracy, dtype=float),
           "mean_test_balanced_accuracy": np.array(balanced, dtype=float)}
    for cls in range(recalls.shape[1]):
        out[f"mean_test_recall_{cls}"] = recalls[:, cls]
    return out


def test_paper_rule_takes_best_accuracy_where_no_class_is_at_zero():
    cv = results([0.60, 0.50, 0.40], [0.30, 0.35, 0.45], [[0.0, 0.9, 0.5], [0.1, 0.7, 0.4], [0.3, 0.5, 0.5]])
    assert select_paper(cv) == 1  # 0 has the best accuracy but never finds class 0
    assert select_balanced(cv) == 2
    none_qualify = results([0.6, 0.5], [0.3, 0.4], [[0.0, 1.0], [0.5, 0.0]])
    assert select_paper(none_qualify) == 1  # falls back to balanced accuracy
    failed = results([np.nan, 0.5], [np.nan, 0.4], [[np.nan, np.nan], [0.5, 0.2]])
    assert select_paper(failed) == 1 and select_balanced(failed) == 1
    with pytest.raises(RuntimeError, match="every setting"):
        select_balanced(results([np.nan], [np.nan], [[np.nan]]))


FAMILY_GRIDS = {
    "logreg": {"C": [0.1, 1]},
    "tree": {"max_depth": [2, None]},
    "linearsvc": [{"penalty": ["l2"], "loss": ["hinge", "squared_hinge"], "C": [1, 1e4]},
                  {"penalty": ["l1"], "loss": ["squared_hinge"], "dual": [False], "C": [1]},
                  {"multi_class": ["crammer_singer"], "C": [1]}],
    "nusvc": {"nu": [0.05, 0.1]},
    "svc": {"C": [1, 10], "gamma": ["scale", 0.01]},
    "svc-poly": {"C": [1], "degree": [2, 3]},
    "svc-linear": {"C": [1, 10]},
    "sgd-rbf": {"model__sgdclassifier__alpha": [1e-4, 1e-3]},
}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_family_searches_and_gives_probabilities(model):
    X, y = six_classes()
    search = grid_search(X[:90], y[:90], model, model_grid(model, FAMILY_GRIDS[model]), pca=None, folds=3,
                         selection="paper", n_jobs=1, progress=False)
    n_settings = len(search.cv_results_["params"])
    assert n_settings == sum(len(list(ParameterGrid(g))) for g in model_grid(model, FAMILY_GRIDS[model]))
    probs = pipeline_probabilities(search.best_estimator_, X[90:], 6)
    assert probs.shape == (30, 6)
    np.testing.assert_allclose(probs.sum(axis=1), 1)
    assert np.mean(probs.argmax(axis=1) == y[90:]) > 0.4  # well above chance (1/6) on separable classes


def test_infeasible_settings_are_recorded_as_failed_not_fatal():
    X = np.random.default_rng(0).normal(size=(120, 5))
    y = np.array([0] * 18 + [1] * 102)  # NuSVC needs nu <= 2 * 12 / 80 on the training folds
    search = grid_search(X, y, "nusvc", model_grid("nusvc", {"nu": [0.1, 0.6]}), None, 3, "balanced",
                         n_jobs=1, progress=False)
    assert search.cv_results_["params"] == [{"model__nu": 0.1}]
    (failed,) = failed_rows(search.failed_)
    assert failed["params"] == {"nu": 0.6} and "nu is infeasible" in failed["error"]
    with pytest.raises(RuntimeError, match="every setting of the grid failed"):
        grid_search(X, y, "nusvc", model_grid("nusvc", {"nu": [0.6]}), None, 3, "balanced", n_jobs=1,
                    progress=False)


def test_pca_step_is_searched_in_parallel_with_a_shared_cache():
    X, y = six_classes(150)
    search = grid_search(X, y, "svc", model_grid("svc", {"C": [1, 10], "pca__n_components": [4, 1000]}), pca=1000,
                         folds=3, selection="balanced", n_jobs=2, progress=False)
    assert [name for name, _ in search.best_estimator_.steps] == ["scale", "pca", "model"]
    assert search.best_estimator_.memory is None
    assert search.best_estimator_["pca"].n_components_ in (4, 12)


def test_probabilities_cover_classes_missing_from_training():
    X, y = six_classes()
    keep = y != 3
    pipe = Pipeline([("scale", StandardScaler()), ("model", SVC())]).fit(X[keep], y[keep])
    probs = pipeline_probabilities(pipe, X[:10], 6)
    assert probs.shape == (10, 6) and not probs[:, 3].any()
    np.testing.assert_allclose(probs.sum(axis=1), 1)
    binary = Pipeline([("model", SVC())]).fit(X[y < 2], y[y < 2])
    assert pipeline_probabilities(binary, X[:5], 6)[:, 2:].sum() == 0


def test_kernel_svms_refuse_training_sets_they_cannot_fit_and_name_the_alternatives():
    check_scale("svc", 20_000)
    check_scale("linearsvc", 500_000)
    with pytest.raises(ValueError, match="linearsvc.*sgd-rbf"):
        check_scale("svc", 375_000)


def test_train_classical_records_everything_and_second_run_is_a_cache_hit(tiny_collection, store_root, monkeypatch):
    store = Store(store_root)
    exp_id = train_classical(tiny_collection, ClassicalConfig("hog", "svc", **FAST), store=store, **QUIET)
    exp = store.experiment(exp_id)
    assert exp.status == "finished" and exp.family == "classical" and exp.model == "svc" and exp.folds == 0
    assert exp.image_size == 32 and exp.num_classes == 6 and exp.artifact == ARTIFACT
    assert exp.data_root == str(tiny_collection.resolve())
    assert len(exp.cv_results) == 2 and sum(row["chosen"] for row in exp.cv_results) == 1
    assert exp.probabilities.startswith("softmax") and exp.train_seconds is not None
    dataset = prepare_dataset(tiny_collection, image_size=32, store_root=store_root, progress=False)
    assert exp.metrics.n == len(dataset.split("test")) and exp.val_metrics.n == len(dataset.split("val"))
    assert isinstance(exp.metrics.intervals, Intervals)
    assert exp.calibration.method in ("none", "temperature", "temperature+bias")
    assert store.split(exp_id).set_index("image_id")["split"].to_dict() == \
        dataset.table.set_index("image_id")["split"].to_dict()

    # the saved pipeline, as the counting service loads it, reproduces the logged (calibrated) test predictions
    predictions = store.predictions(exp_id).sort_values("image_id")
    test = dataset.split("test").sort_values("image_id")
    predict = load_predictor(store.artifact_dir(exp_id), exp.artifact, 6)
    probs = exp.calibration.likelihood(predict(dataset.images(32)[test["row"].to_numpy()]))  # uniform prior shown
    np.testing.assert_allclose(probs, np.stack(predictions["probs"]), atol=1e-4)
    assert list(predictions["true_count"]) == list(test["count"])

    def refit(*args, **kwargs):
        raise AssertionError("refitted a configuration the store already has")

    monkeypatch.setattr(experiment, "grid_search", refit)
    assert train_classical(tiny_collection, ClassicalConfig("hog", "svc", **FAST), store=store, **QUIET) == exp_id
    monkeypatch.undo()
    assert len(store.experiments()) == 1
    other = train_classical(tiny_collection, ClassicalConfig("hog", "svc", **{**FAST, "grid": {"C": [1]}}),
                            store=store, **QUIET)
    assert other != exp_id and len(store.experiments()) == 2


def test_cross_validated_run_is_one_experiment_of_k_models_with_out_of_fold_figures(tiny_collection, store_root):
    store = Store(store_root)
    exp_id = train_classical(tiny_collection, ClassicalConfig("hog", "svc", cv=3, folds=2, **FAST), store=store,
                             **QUIET)
    exp = store.experiment(exp_id)
    assert exp.folds == 3 and exp.name.endswith("-cv3") and not exp.val_metrics
    oof = store.predictions(exp_id, "oof")
    dataset = prepare_dataset(tiny_collection, image_size=32, store_root=store_root, progress=False)
    pool = dataset.table[dataset.table["split"] != "test"]
    assert sorted(oof["image_id"]) == sorted(pool["image_id"]) and exp.cv_metrics.n == len(pool)
    assert set(store.split(exp_id)["split"]) == {"oof", "test"}
    assert all((store.artifact_dir(exp_id) / f"fold-{f}" / ARTIFACT).is_file() for f in range(3))
    assert exp.calibration.n_fit == len(pool)  # calibrated on the pooled out-of-fold predictions


def test_a_tampered_pipeline_file_is_refused(tmp_path):
    X, y = six_classes()
    path = tmp_path / ARTIFACT
    save_pipeline(path, Pipeline([("scale", StandardScaler()), ("model", SVC())]).fit(X, y))
    assert load_pipeline(path).predict(X[:3]).shape == (3,)

    class Payload:  # anything a reader would have to import and build: refused, never constructed
        def __reduce__(self):
            return (print, ("pwned",))

    save_pipeline(tmp_path / "evil.skops", Pipeline([("scale", StandardScaler()), ("model", SVC())]).fit(X, y))
    import skops.io
    skops.io.dump({"model": Payload()}, tmp_path / "evil.skops")
    with pytest.raises(UntrustedModel, match="does not trust"):
        load_pipeline(tmp_path / "evil.skops")
    (tmp_path / "garbage.skops").write_bytes(b"not a zip file")
    with pytest.raises(UntrustedModel, match="not a readable skops"):
        load_pipeline(tmp_path / "garbage.skops")


def test_raw_pixels_pca_and_blobs_train_end_to_end(tiny_collection, store_root):
    store = Store(store_root)
    for features, pca in (("raw", 10), ("blobs", None)):
        config = ClassicalConfig(features, "logreg", pca=pca, selection="paper", folds=3,
                                 **{**FAST, "grid": {"C": [1]}})
        exp_id = train_classical(tiny_collection, config, store=store, **QUIET)
        exp = store.experiment(exp_id)
        assert exp.status == "finished" and exp.probabilities == "predict_proba"
        pipeline = load_pipeline(store.artifact_dir(exp_id) / exp.artifact)
        assert [name for name, _ in pipeline.steps] == ["features", "scale", *(["pca"] if pca else []), "model"]


def test_a_crash_leaves_the_experiment_failed_with_its_error(tiny_collection, store_root, monkeypatch):
    store = Store(store_root)

    def broken(*args, **kwargs):
        raise MemoryError("out of memory in the search")

    monkeypatch.setattr(experiment, "grid_search", broken)
    with pytest.raises(MemoryError):
        train_classical(tiny_collection, ClassicalConfig("hog", "svc", **FAST), store=store, **QUIET)
    (exp,) = store.experiments()
    assert exp.status == "failed" and "out of memory in the search" in exp.error


def test_suites_are_train_classical_arguments():
    paper = suite_experiments("paper-classical")
    assert [(c.features, c.model, c.pca) for c in paper] == [
        ("raw", "logreg", None), ("raw", "tree", None), ("raw", "svc", None),
        ("blobs", "svc", None), ("hog", "svc", None), ("raw", "svc", 1000)]
    assert all(c.selection == "paper" for c in paper)
    names = {c.name for c in suite_experiments("default")}
    assert names == {"pca-svm", "hog-svm"}
    signature = inspect.signature(train_classical)
    for config in paper + suite_experiments("default"):
        signature.bind("data", config)
    paper[3].grid["C"].append(1000)
    assert suite_experiments("paper-classical")[3].grid["C"] == [1, 10, 100]  # callers get copies
    with pytest.raises(ValueError, match="unknown suite"):
        suite_experiments("nope")


# keys of these settings as the previous release computed them (its experiment_params), on data "fingerprint"
PREVIOUS_KEYS = {"pca-svm": "64fdde36da7f88dd", "hog-svm": "1ce6450d7090b7f0", "tiny-hog": "8ac0ecbb504a73ea"}


def test_a_configuration_keeps_the_experiment_key_it_had_before_it_was_typed():
    # the default suite before make run's search was cut: the paper's settings, balanced selection
    configs = {c.name: c.with_overrides({"selection": "balanced"}) for c in suite_experiments("paper-classical")
               if c.name in PREVIOUS_KEYS}
    configs["tiny-hog"] = ClassicalConfig("hog", "svc", folds=3, **FAST)
    for name, config in configs.items():
        assert config_key("classical", config.model, config.params(), "fingerprint", 4) == PREVIOUS_KEYS[name]
    assert experiment.VERSION == 5  # 4 -> 5: maps fitted with every count alike (issue #27); params as before
    assert ClassicalConfig("hog", name="a") == ClassicalConfig("hog", name="b")  # a name is not configuration
    assert ClassicalConfig("hog", "svc", pca=5).run_name == "hog-pca-svc"
    assert ClassicalConfig("raw", cv=3).with_overrides({"folds": 4, "image_size": None}).run_name == "raw-svc-cv3"


@pytest.mark.parametrize("settings, message", [
    ({"selection": "best"}, "selection must be one of"),
    ({"features": "sift"}, "unknown features"),
    ({"model": "forest"}, "unknown model"),
    ({"feature_params": {"bins": 3}}, "invalid feature settings"),
    ({"grid": {}}, "a grid is a non-empty dict"),
    ({"cv": 1}, "cv is 0"),
    ({"folds": 1}, "at least 2 folds"),
])
def test_a_classical_configuration_is_validated_when_it_is_made(settings, message):
    with pytest.raises(ValueError, match=message):
        ClassicalConfig(**settings)
    with pytest.raises(ValueError, match="unknown classical settings"):
        ClassicalConfig.from_dict({"features": "hog", "colour": "red"})


def test_cli_trains_one_model_and_prints_its_figures(tiny_collection, store_root, capsys):
    train.main(["classical", "--data", str(tiny_collection), "--features", "raw", "--model", "tree",
                "--feature-params", json.dumps({"size": 16}), "--grid", json.dumps({"max_depth": [2, 4]}),
                "--image-size", "32", "--folds", "2", "--jobs", "1", "--quiet"])
    out = capsys.readouterr().out
    assert "raw-tree" in out and "balanced_accuracy" in out and "wall time" in out and "validation" in out
    (exp,) = Store(store_root).experiments()
    assert exp.params["folds"] == 2 and exp.params["grid"] == [{"model__max_depth": [2, 4]}]
    with pytest.raises(SystemExit, match="--grid must be JSON"):
        train.main(["classical", "--data", str(tiny_collection), "--grid", "{C: 1}"])


def test_a_train_limit_fits_on_a_stratified_sample_and_scores_every_photo(tiny_collection, store_root):
    config = ClassicalConfig("hog", "svc", folds=2, train_limit=12, **FAST)
    assert config.params()["train_limit"] == 12 and "train_limit" not in ClassicalConfig("hog").params()
    part = pd.DataFrame({"count": [c for c in range(6) for _ in range(10)]})
    kept = config.fitted_on(part)
    assert len(kept) == 12 and (kept["count"].value_counts() == 2).all()  # every count kept, in proportion
    assert len(config.fitted_on(part.head(8))) == 8  # fewer photos than the limit: all of them
    with pytest.raises(ValueError, match="train_limit needs at least"):
        ClassicalConfig("hog", folds=3, train_limit=5)
    store = Store(store_root)
    exp = store.experiment(train_classical(tiny_collection, config, store=store, **QUIET))
    assert exp.val_metrics is not None and store.predictions(exp.id, "val")["image_id"].nunique() == \
        (store.split(exp.id)["split"] == "val").sum()  # the limit changes what is fitted, never what is scored

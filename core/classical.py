"""The paper's classical models: features + (PCA) + logistic regression, a tree or an SVM.

One experiment = one feature extractor, an optional PCA, one model family and its grid. The
grid is searched by stratified K-fold cross-validation on the train and validation images
(the test images are used once, for the reported figures). The chosen setting is refitted on
all of them and saved as a single scikit-learn Pipeline, features first, so the counting
service runs it on uint8 photo arrays exactly as training did.

Selection rules:
- "balanced": the best mean balanced accuracy across folds;
- "paper": the paper's rule, the best mean accuracy among settings where every class has
  non-zero (mean) accuracy; when no setting qualifies, the best balanced accuracy, flagged
  as `selection_fallback` in the experiment details.
"""
from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import make_scorer, recall_score
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC, NuSVC
from sklearn.tree import DecisionTreeClassifier
from tqdm import tqdm

from core.config import MAX_COUNT
from core.dataset import DEFAULT_SPLIT, prepare_dataset
from core.features import CappedPCA, extractor_key, feature_matrix, make_extractor
from core.files import atomic_path
from core.metrics import classification_report
from core.store import Store

FAMILY = "classical"
ARTIFACT = "pipeline.joblib"
IMAGE_SIZE = 128  # cache resolution; each extractor shrinks further (raw 32 px, HOG 64 px, ...)
VERSION = 2  # part of every experiment's key: bump when a change alters what a setting trains
SELECTION_RULES = ("balanced", "paper")
LINEAR_C = [1, 10, 100, 1e3, 1e4]

MODELS: dict[str, Callable[[], BaseEstimator]] = {
    "logreg": lambda: LogisticRegression(max_iter=300),
    "tree": lambda: DecisionTreeClassifier(criterion="gini", random_state=0),
    "linearsvc": lambda: LinearSVC(max_iter=1000, random_state=0),
    "nusvc": lambda: NuSVC(),
    "svc": lambda: SVC(kernel="rbf"),
    "svc-poly": lambda: SVC(kernel="poly"),
    "svc-linear": lambda: SVC(kernel="linear"),
}

# Modest defaults (CPU minutes, not hours). LinearSVC's other settings (l1 penalty, hinge loss,
# Crammer-Singer) are there for --grid; Crammer-Singer alone takes minutes a fit on raw pixels.
DEFAULT_GRIDS: dict[str, list[dict]] = {
    "logreg": [{"C": [1e-3, 1e-2, 1e-1]}],
    "tree": [{"max_depth": [4, 8, 16, None], "min_samples_leaf": [1, 10]}],
    "linearsvc": [{"penalty": ["l2"], "loss": ["squared_hinge"], "multi_class": ["ovr"], "C": LINEAR_C}],
    "nusvc": [{"nu": [0.01, 0.05, 0.1, 0.3], "gamma": ["scale"]}],
    "svc": [{"C": [1, 10, 100], "gamma": ["scale"], "class_weight": [None, "balanced"]}],
    "svc-poly": [{"C": [1, 10, 100], "degree": [2, 3], "gamma": ["scale"]}],
    "svc-linear": [{"C": [1, 10, 100]}],
}


def model_grid(model: str, grid: dict | list[dict] | None = None) -> list[dict]:
    """The search grid as pipeline parameters: plain keys ("C") go to the model step; keys
    naming a step ("pca__n_components") are kept as they are."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    grid = DEFAULT_GRIDS[model] if grid is None else grid
    grids = [grid] if isinstance(grid, dict) else list(grid)
    out = []
    for part in grids:
        if not isinstance(part, dict) or not part:
            raise ValueError(f"a grid is a non-empty dict (or list of dicts) of value lists, got {part!r}")
        out.append({(k if "__" in k else f"model__{k}"): (list(v) if isinstance(v, (list, tuple)) else [v])
                    for k, v in part.items()})
    return out


def search_pipeline(model: str, pca: int | None = None, memory: str | None = None) -> Pipeline:
    """What is fitted on feature rows: standardisation, optional PCA, the model."""
    steps = [("scale", StandardScaler())]
    if pca:
        steps.append(("pca", CappedPCA(n_components=pca)))
    steps.append(("model", MODELS[model]()))
    return Pipeline(steps, memory=memory)


def choose_folds(y: np.ndarray, folds: int) -> tuple[int, str | None]:
    """`folds`, or fewer when a class has fewer members than that (with a warning message)."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    classes, counts = np.unique(y, return_counts=True)
    smallest = int(counts.min())
    if smallest >= folds:
        return folds, None
    used = max(2, smallest)
    note = (f"count {classes[counts.argmin()]} has only {smallest} training images, "
            f"so cross-validation uses {used} folds instead of {folds}")
    warnings.warn(note, stacklevel=2)
    return used, note


def _recall_keys(results: dict) -> list[str]:
    return sorted((k for k in results if k.startswith("mean_test_recall_")), key=lambda k: int(k.rsplit("_", 1)[1]))


def qualifying(results: dict) -> np.ndarray:
    """Settings where every class has non-zero mean CV accuracy (the paper's condition)."""
    recalls = np.column_stack([np.asarray(results[k], dtype=float) for k in _recall_keys(results)])
    return np.all(np.nan_to_num(recalls, nan=0.0) > 0, axis=1)


def select_balanced(results: dict) -> int:
    scores = np.asarray(results["mean_test_balanced_accuracy"], dtype=float)
    if np.all(np.isnan(scores)):
        raise RuntimeError("every setting of the grid failed to fit; see the warnings above")
    return int(np.nanargmax(scores))


def select_paper(results: dict) -> int:
    ok = qualifying(results)
    if not ok.any():
        return select_balanced(results)
    accuracy = np.nan_to_num(np.asarray(results["mean_test_accuracy"], dtype=float), nan=-1.0)
    return int(np.argmax(np.where(ok, accuracy, -np.inf)))


SELECTORS = {"balanced": select_balanced, "paper": select_paper}


def scorers(classes) -> dict:
    """Accuracy, balanced accuracy and each class's accuracy (recall), per fold."""
    out = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy"}
    for cls in classes:
        out[f"recall_{int(cls)}"] = make_scorer(recall_score, labels=[int(cls)], average="macro", zero_division=0.0)
    return out


class ProgressGridSearchCV(GridSearchCV):
    """GridSearchCV that shows a tqdm bar, one step per setting (its folds run in parallel).

    A setting whose every fold fails (e.g. an infeasible NuSVC nu) is listed in `failed_`
    instead of ending the search; one that fails on some folds only scores NaN.
    """

    progress = True

    def _run_search(self, evaluate_candidates):
        candidates = list(ParameterGrid(self.param_grid))
        self.failed_ = []
        with tqdm(total=len(candidates), desc="grid search", unit="setting", disable=not self.progress) as bar:
            for params in candidates:
                try:
                    evaluate_candidates([params])
                except ValueError as err:
                    if "fits failed" not in str(err):
                        raise
                    reason = [line for line in str(err).splitlines() if line.strip()][-1]
                    self.failed_.append({"params": params, "error": reason})
                bar.update()
        if len(self.failed_) == len(candidates):
            raise RuntimeError(f"every setting of the grid failed to fit, e.g. {self.failed_[0]['error']}")


def grid_search(X: np.ndarray, y: np.ndarray, model: str, grid: list[dict], pca: int | None, folds: int,
                selection: str, seed: int = 0, n_jobs: int = 2, progress: bool = True) -> GridSearchCV:
    """Stratified K-fold search over `grid`; the chosen setting is refitted on all of X."""
    if selection not in SELECTORS:
        raise ValueError(f"selection must be one of {SELECTION_RULES}, got {selection!r}")
    with tempfile.TemporaryDirectory(prefix="binsight-cv-") as cache, warnings.catch_warnings():
        # ConvergenceWarning: iterative solvers stop at max_iter by design here; FitFailedWarning:
        # infeasible settings (e.g. NuSVC's nu on unbalanced classes) score NaN and are reported.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FitFailedWarning)
        warnings.filterwarnings("ignore", message="One or more of the test scores are non-finite")
        search = ProgressGridSearchCV(
            search_pipeline(model, pca, memory=cache if pca else None), grid,
            scoring=scorers(np.unique(y)), refit=SELECTORS[selection],
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=n_jobs, error_score=np.nan,
        )
        search.progress = progress
        search.fit(X, y)
        search.best_estimator_.memory = None  # the cache folder goes away with this block
    return search


def _number(value):
    value = float(value)
    return None if np.isnan(value) else round(value, 5)


def cv_table(results: dict, chosen: int) -> list[dict]:
    """One row per setting: parameters, mean/std accuracy and balanced accuracy, per-class accuracy."""
    ok = qualifying(results)
    rows = []
    for i, params in enumerate(results["params"]):
        rows.append({
            "params": {k.removeprefix("model__"): v for k, v in params.items()},
            "mean_accuracy": _number(results["mean_test_accuracy"][i]),
            "std_accuracy": _number(results["std_test_accuracy"][i]),
            "mean_balanced_accuracy": _number(results["mean_test_balanced_accuracy"][i]),
            "std_balanced_accuracy": _number(results["std_test_balanced_accuracy"][i]),
            "per_class_accuracy": [_number(results[k][i]) for k in _recall_keys(results)],
            "all_classes_nonzero": bool(ok[i]),
            "mean_fit_seconds": _number(results["mean_fit_time"][i]),
            "chosen": i == chosen,
        })
    return rows


def failed_rows(failed: list[dict]) -> list[dict]:
    """cv_table rows for settings that failed on every fold."""
    return [{"params": {k.removeprefix("model__"): v for k, v in f["params"].items()}, "error": f["error"],
             "chosen": False} for f in failed]


def class_probabilities(pipeline: Pipeline, X, num_classes: int) -> np.ndarray:
    """(N, num_classes) probabilities: predict_proba where the model has it, else a softmax of
    the decision function (uncalibrated: the counting service fits a temperature later).
    Classes absent from training get probability 0."""
    model = pipeline[-1]
    if hasattr(model, "predict_proba"):
        probs = pipeline.predict_proba(X)
    else:
        scores = pipeline.decision_function(X)
        if scores.ndim == 1:  # two classes: one score for the second
            scores = np.column_stack([-scores, scores])
        probs = softmax(scores, axis=1)
    out = np.zeros((len(probs), num_classes))
    out[:, np.asarray(model.classes_, dtype=int)] = probs
    return out


def probability_method(pipeline: Pipeline) -> str:
    if hasattr(pipeline[-1], "predict_proba"):
        return "predict_proba"
    return "softmax of decision_function (uncalibrated)"


def experiment_params(features: str, extractor, pca: int | None, model: str, grid: list[dict], folds: int,
                      selection: str, image_size: int, seed: int, max_count: int) -> dict:
    """Everything that decides what a run trains: equal params on equal data -> served from the store."""
    return {
        "version": VERSION, "features": features, "feature_params": extractor.get_params(), "pca": pca,
        "model": model, "grid": grid, "folds": folds, "selection": selection, "image_size": image_size,
        "seed": seed, "max_count": max_count, "split": list(DEFAULT_SPLIT), "search_on": "train",
    }


def train_classical(
    dataset_root: str | Path,
    features: str = "hog",
    model: str = "svc",
    *,
    feature_params: dict | None = None,
    pca: int | None = None,
    grid: dict | list[dict] | None = None,
    folds: int = 10,
    selection: str = "balanced",
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    name: str | None = None,
    store: Store | None = None,
    n_jobs: int = 2,
    progress: bool = True,
    max_count: int = MAX_COUNT,
) -> str:
    """Search, fit, save and test one classical model; returns its experiment id.

    A configuration already finished on the same data is served from the store (its id is
    returned without refitting).
    """
    store = store or Store()
    if selection not in SELECTORS:
        raise ValueError(f"selection must be one of {SELECTION_RULES}, got {selection!r}")
    extractor = make_extractor(features, **(feature_params or {}))
    grid = model_grid(model, grid)
    dataset = prepare_dataset(dataset_root, image_size=image_size, max_count=max_count, seed=seed,
                              store=store.root, progress=progress)
    params = experiment_params(features, extractor, pca, model, grid, folds, selection, image_size, seed, max_count)
    name = name or f"{features}{'-pca' if pca else ''}-{model}"
    found = store.find_finished(FAMILY, model, params, dataset.fingerprint)
    if found:
        if progress:
            tqdm.write(f"{name}: served from the store ({found})")
        return found
    exp_id = store.start(name, FAMILY, model, params, dataset.fingerprint,
                         data_root=str(Path(dataset_root).resolve()), split="cv on train, test once")
    with store.failing_on_error(exp_id):
        _train(store, exp_id, dataset, extractor, model, grid, pca, folds, selection, image_size, seed, n_jobs,
               progress)
    return exp_id


def _train(store: Store, exp_id: str, dataset, extractor, model: str, grid: list[dict], pca: int | None,
           folds: int, selection: str, image_size: int, seed: int, n_jobs: int, progress: bool) -> None:
    started = time.perf_counter()
    images = dataset.images(image_size)
    folder = dataset.folder / "features" / f"{image_size}px"
    matrix = feature_matrix(extractor, images, folder, n_jobs=n_jobs, progress=progress)
    feature_seconds = time.perf_counter() - started

    # Validation photos stay unseen, as for the CNNs: the counting service fits its temperature
    # on them, and a model fitted on them looks falsely sure there (test ECE 0.20 -> 0.53).
    fit_part = dataset.table[dataset.table["split"] == "train"]
    test_part = dataset.table[dataset.table["split"] == "test"]
    X, y = matrix[fit_part["row"].to_numpy()], fit_part["count"].to_numpy()
    used_folds, fold_note = choose_folds(y, folds)
    details = {
        "image_size": image_size, "num_classes": dataset.num_classes, "root": str(Path(dataset.collection.root).resolve()),
        "artifact": ARTIFACT, "feature_shape": list(matrix.shape), "feature_key": extractor_key(extractor),
        "feature_seconds": round(feature_seconds, 2), "cv_folds": used_folds, "cv_folds_requested": folds,
        "n_fit": int(len(y)), "n_test": int(len(test_part)),
    }
    if fold_note:
        details["warnings"] = [fold_note]
    store.update(exp_id, details=details)

    search = grid_search(X, y, model, grid, pca, used_folds, selection, seed, n_jobs, progress)
    train_seconds = time.perf_counter() - started
    pipeline = Pipeline([("features", extractor), *search.best_estimator_.steps])
    with atomic_path(store.artifact_dir(exp_id) / ARTIFACT) as tmp:
        joblib.dump(pipeline, tmp)

    tested = time.perf_counter()
    test_images = np.asarray(images[test_part["row"].to_numpy()])
    probs = class_probabilities(pipeline, test_images, dataset.num_classes)
    y_test = test_part["count"].to_numpy()
    metrics = classification_report(y_test, probs.argmax(axis=1), dataset.num_classes)
    store.log_predictions(exp_id, test_part["image_id"], test_part["path"], y_test, probs)
    results = search.cv_results_
    chosen = int(search.best_index_)
    table = cv_table(results, chosen)
    details.update({
        "train_seconds": round(train_seconds, 2),
        "search_seconds": round(train_seconds - feature_seconds, 2),
        "refit_seconds": round(float(search.refit_time_), 2),
        "test_seconds": round(time.perf_counter() - tested, 2),
        "selection": selection,
        "selection_fallback": selection == "paper" and not qualifying(results).any(),
        "chosen_params": table[chosen]["params"],
        "cv_best": {k: table[chosen][k] for k in ("mean_accuracy", "mean_balanced_accuracy", "per_class_accuracy")},
        "cv_results": table + failed_rows(search.failed_),
        "failed_settings": int(np.isnan(np.asarray(results["mean_test_accuracy"], dtype=float)).sum())
        + len(search.failed_),
        "probabilities": probability_method(pipeline),
        "pipeline": [name for name, _ in pipeline.steps],
    })
    store.finish(exp_id, metrics, details=details)


def load_pipeline(store: Store, exp: dict) -> Pipeline:
    return joblib.load(store.artifact_dir(exp["id"]) / exp["details"]["artifact"])


def load_predictor(store: Store, exp: dict) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 RGB (N, image_size, image_size, 3) -> (N, num_classes) class probabilities."""
    pipeline = load_pipeline(store, exp)
    num_classes = int(exp["details"]["num_classes"])

    def predict(images: np.ndarray) -> np.ndarray:
        return class_probabilities(pipeline, np.asarray(images, dtype=np.uint8), num_classes)

    return predict


# ---- suites ---------------------------------------------------------------------------------
# On HOG and PCA features C = 10 and C = 100 fit the same (hard-margin) SVM, and each setting
# costs minutes on two cores, so suites search C in {1, 10} there. Blobs are cheap: a gamma grid.
WIDE_SVM = {"C": [1, 10], "gamma": ["scale"], "class_weight": [None, "balanced"]}
BLOB_SVM = {"C": [1, 10, 100], "gamma": ["scale", 0.01, 0.2], "class_weight": [None, "balanced"]}
PCA_RAW = {"features": "raw", "feature_params": {"size": 64}, "pca": 1000}
SUITES: dict[str, list[dict]] = {
    # Table I: raw pixels with logistic regression, a decision tree and an SVM;
    # Table II: SVMs on LoG blobs, HOG and PCA (of raw pixels). The paper's selection rule throughout.
    "paper-classical": [
        {"name": "raw-logreg", "features": "raw", "model": "logreg", "selection": "paper"},
        {"name": "raw-tree", "features": "raw", "model": "tree", "selection": "paper"},
        {"name": "raw-svm", "features": "raw", "model": "svc", "selection": "paper"},
        {"name": "blobs-svm", "features": "blobs", "model": "svc", "grid": BLOB_SVM, "selection": "paper"},
        {"name": "hog-svm", "features": "hog", "model": "svc", "grid": WIDE_SVM, "selection": "paper"},
        {"name": "pca-svm", **PCA_RAW, "model": "svc", "grid": WIDE_SVM, "selection": "paper"},
    ],
    # what the main job (`make run`) trains: the two strongest classical baselines
    "default": [
        {"name": "pca-svm", **PCA_RAW, "model": "svc", "grid": WIDE_SVM},
        {"name": "hog-svm", "features": "hog", "model": "svc", "grid": WIDE_SVM},
    ],
}
PAPER_TABLES = {"raw-logreg": "I", "raw-tree": "I", "raw-svm": "I", "blobs-svm": "II", "hog-svm": "II", "pca-svm": "II"}


def suite_experiments(name: str) -> list[dict]:
    """The experiments of a suite, each a dict of keyword arguments for `train_classical`."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    return [json.loads(json.dumps(config)) for config in SUITES[name]]


def run_suite(name: str, dataset_root: str | Path, store: Store | None = None, **overrides) -> list[str]:
    """Train (or serve from the store) every experiment of a suite; returns their ids."""
    return [train_classical(dataset_root, store=store, **{**config, **overrides}) for config in suite_experiments(name)]


def results_table(store: Store, exp_ids: list[str]) -> pd.DataFrame:
    """Test figures of experiments side by side, laid out like the paper's Tables I and II."""
    rows = []
    for exp_id in exp_ids:
        exp = store.experiment(exp_id)
        metrics, details = exp["metrics"], exp["details"]
        row = {"experiment": exp["name"], "paper_table": PAPER_TABLES.get(exp["name"], "")}
        for cls, acc in enumerate(metrics.get("per_class_accuracy", [])):
            row[f"acc_{cls}"] = acc
        row.update({
            "accuracy": metrics.get("accuracy"), "balanced_accuracy": metrics.get("balanced_accuracy"),
            "rmse": metrics.get("rmse"), "chosen": json.dumps(details.get("chosen_params")),
            "train_s": details.get("train_seconds"), "id": exp_id,
        })
        rows.append(row)
    return pd.DataFrame(rows)

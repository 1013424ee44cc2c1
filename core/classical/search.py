"""Cross-validated grid search over a classical pipeline, and the rules that pick a setting.

Selection rules:
- "balanced": the best mean balanced accuracy across folds;
- "paper": the paper's rule, the best mean accuracy among settings where every class has
  non-zero (mean) accuracy; when no setting qualifies, the best balanced accuracy.
"""
from __future__ import annotations

import tempfile
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.metrics import make_scorer, recall_score
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedKFold
from tqdm import tqdm

from core.classical.models import search_pipeline

SELECTION_RULES = ("balanced", "paper")
CACHE_MAX_PHOTOS = 20_000  # PCA results are cached per fold (in a temporary folder) only below this


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
            search_pipeline(model, pca, memory=cache if pca and len(y) <= CACHE_MAX_PHOTOS else None), grid,
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

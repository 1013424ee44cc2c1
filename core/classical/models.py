"""The classical model family: estimators, their default search grids, and the pipeline fitted
on feature rows (standardisation, optional PCA, the model).

Kernel SVMs cost O(n^2) memory and O(n^2..n^3) time in the number of training photos: they are
refused beyond `KERNEL_MAX_PHOTOS`, with the scalable alternatives named (a linear SVM, or
SGD on a Nystroem approximation of the RBF kernel).
"""
from __future__ import annotations

from collections.abc import Callable

from sklearn.base import BaseEstimator
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC, NuSVC
from sklearn.tree import DecisionTreeClassifier

from core.classical.features import CappedPCA

LINEAR_C = [1, 10, 100, 1e3, 1e4]
KERNEL_MODELS = ("nusvc", "svc", "svc-poly", "svc-linear")
KERNEL_MAX_PHOTOS = 20_000  # about 3 GB of kernel cache and hours of fitting per setting beyond this
SCALABLE = ("linearsvc", "sgd-rbf")

MODELS: dict[str, Callable[[], BaseEstimator]] = {
    "logreg": lambda: LogisticRegression(max_iter=300),
    "tree": lambda: DecisionTreeClassifier(criterion="gini", random_state=0),
    "linearsvc": lambda: LinearSVC(max_iter=1000, random_state=0),
    "nusvc": lambda: NuSVC(),
    "svc": lambda: SVC(kernel="rbf"),
    "svc-poly": lambda: SVC(kernel="poly"),
    "svc-linear": lambda: SVC(kernel="linear"),
    # an RBF-kernel SVM that scales: explicit Nystroem features, then a linear SVM trained by SGD
    "sgd-rbf": lambda: make_pipeline(Nystroem(n_components=1000, random_state=0),
                                     SGDClassifier(loss="hinge", random_state=0)),
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
    "sgd-rbf": [{"model__sgdclassifier__alpha": [1e-5, 1e-4, 1e-3],
                 "model__sgdclassifier__class_weight": [None, "balanced"]}],
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


def check_scale(model: str, photos: int, limit: int = KERNEL_MAX_PHOTOS) -> None:
    """Refuse a kernel SVM on more training photos than it can fit in memory and time."""
    if model in KERNEL_MODELS and photos > limit:
        raise ValueError(
            f"{model} is a kernel SVM: on {photos:,} training photos it needs O(n^2) memory and hours per "
            f"setting (limit {limit:,}). Use --model linearsvc (a linear SVM) or --model sgd-rbf (an RBF "
            f"kernel approximated by Nystroem features, trained by SGD), or train on fewer photos.")


def search_pipeline(model: str, pca: int | None = None, memory: str | None = None) -> Pipeline:
    """What is fitted on feature rows: standardisation, optional PCA, the model."""
    steps: list[tuple[str, BaseEstimator]] = [("scale", StandardScaler())]
    if pca:
        steps.append(("pca", CappedPCA(n_components=pca)))
    steps.append(("model", MODELS[model]()))
    return Pipeline(steps, memory=memory)

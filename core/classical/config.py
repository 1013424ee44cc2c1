"""A classical experiment's configuration: plain, frozen, validated data, as `core.cnn.recipes.Recipe`
is for the CNNs.

Its `params()` dict is the experiment's configuration, so two runs with equal params on the
same data are the same experiment (served from the store, not redone). The run's name is a
label, not configuration.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from core.classical.features import ImageFeatures, make_extractor
from core.classical.models import model_grid
from core.classical.search import SELECTION_RULES, SELECTORS
from core.config import MAX_COUNT
from core.data.dataset import DEFAULT_SPLIT

IMAGE_SIZE = 128  # cache resolution; each extractor shrinks further (raw 32 px, HOG 64 px, ...)


@dataclass(frozen=True)
class ClassicalConfig:
    """Features (with their settings), an optional PCA, one model family with its search grid, how
    the grid is searched and selected, and the data it trains on.

    `grid` None is the model's default grid; `cv=K` trains K models on the folds of train+val
    instead of one; with `open_top`, bins of more than `max_count` items are a class of their own.
    """

    features: str = "hog"
    model: str = "svc"
    feature_params: dict[str, Any] = field(default_factory=dict)
    pca: int | None = None
    grid: dict | list[dict] | None = None
    folds: int = 10
    selection: str = "balanced"
    image_size: int = IMAGE_SIZE
    seed: int = 0
    cv: int = 0
    max_count: int = MAX_COUNT
    open_top: bool = True
    # at most this many photos fit the model (of the train split, or of each fold's training part), a
    # sample stratified by count: a kernel SVM's fit grows with about the square of its photos
    train_limit: int | None = None
    name: str | None = field(default=None, compare=False)  # default: <features>[-pca]-<model>

    def __post_init__(self) -> None:
        if self.selection not in SELECTORS:
            raise ValueError(f"selection must be one of {SELECTION_RULES}, got {self.selection!r}")
        if self.folds < 2:
            raise ValueError(f"cross-validation needs at least 2 folds, got {self.folds}")
        if self.cv == 1 or self.cv < 0:
            raise ValueError(f"cv is 0 (one model) or a number of folds >= 2, got {self.cv}")
        if self.pca is not None and self.pca < 1:
            raise ValueError(f"pca is a number of components >= 1, got {self.pca}")
        if self.train_limit is not None and self.train_limit < 2 * self.folds:
            raise ValueError(f"train_limit needs at least 2 photos a fold ({2 * self.folds}), got {self.train_limit}")
        self.extractor()  # unknown features or feature settings
        self.search_grid()  # unknown model or a malformed grid

    def extractor(self) -> ImageFeatures:
        """A fresh feature extractor with these settings."""
        try:
            return make_extractor(self.features, **self.feature_params)
        except TypeError as err:
            raise ValueError(f"invalid feature settings for {self.features!r}: {err}") from None

    def search_grid(self) -> list[dict]:
        """The grid as pipeline parameters (see `core.classical.models.model_grid`)."""
        return model_grid(self.model, self.grid)

    @property
    def run_name(self) -> str:
        """The experiment's name: `name`, else <features>[-pca]-<model>; "-cvK" for cross-validated runs."""
        return (self.name or f"{self.features}{'-pca' if self.pca else ''}-{self.model}") + \
            (f"-cv{self.cv}" if self.cv else "")

    def params(self) -> dict:
        """Everything that decides what a run trains, as stored with the experiment (its key);
        `train_limit` only when set, so configurations from before it keep their keys."""
        params = {
            "features": self.features, "feature_params": self.extractor().get_params(), "pca": self.pca,
            "model": self.model, "grid": self.search_grid(), "folds": self.folds, "selection": self.selection,
            "image_size": self.image_size, "seed": self.seed, "max_count": self.max_count,
            "split": list(DEFAULT_SPLIT), "cv": self.cv, "open_top": self.open_top,
        }
        return params if self.train_limit is None else {**params, "train_limit": self.train_limit}

    def fitted_on(self, part: pd.DataFrame) -> pd.DataFrame:
        """The photos of `part` the model fits: all of them, or `train_limit` of them stratified by count."""
        if self.train_limit is None or len(part) <= self.train_limit:
            return part
        kept, _ = train_test_split(part, train_size=self.train_limit, stratify=part["count"], random_state=self.seed)
        return kept.sort_index()

    def with_overrides(self, overrides: dict[str, Any] | None) -> ClassicalConfig:
        """A copy with fields replaced (validated again); None values leave a field as it is."""
        return dataclasses.replace(self, **_fields(overrides))

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> ClassicalConfig:
        """From keyword options (a suite's entry, the command line); None values take the default."""
        values = _fields(options)
        return cls(**json.loads(json.dumps(values)))  # a copy: later changes to `options` do not leak in


def _fields(options: dict[str, Any] | None) -> dict[str, Any]:
    values = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = set(values) - {f.name for f in dataclasses.fields(ClassicalConfig)}
    if unknown:
        raise ValueError(f"unknown classical settings: {sorted(unknown)}")
    return values

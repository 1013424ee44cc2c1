"""The folds of a cross-validated run: train+val split into K folds, grouped (near-duplicates stay
in one fold) and stratified by count; the test split stays untouched."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from core.data.dataset import Dataset

CV_POOL = ("train", "val")  # what cross-validation folds; the test split stays untouched


def cv_pool(dataset: Dataset) -> pd.DataFrame:
    """The train+val rows of the data set's table, in table order."""
    return dataset.table[dataset.table["split"].isin(CV_POOL)].reset_index(drop=True)


def cv_folds(dataset: Dataset, k: int, seed: int = 0) -> np.ndarray:
    """Fold number (0..k-1) of every row of `cv_pool(dataset)`; photos of one group share a fold."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    pool = cv_pool(dataset)
    fold = np.empty(len(pool), dtype=int)
    splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
    for i, (_, held) in enumerate(splitter.split(pool, pool["count"], pool["group"])):
        fold[held] = i
    return fold

"""One classical experiment: features, an optional PCA and one model family with its grid.

The grid is searched by stratified K-fold cross-validation on the training photos only (the
validation photos calibrate the probabilities and select between experiments; the test photos
are used once, for the reported figures). The chosen setting is saved as a single Pipeline,
features first, so the counting service runs it on uint8 photo arrays exactly as training did.
With `cv=K`, the whole of that is done on K folds of train+val instead (see `core.runs`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from tqdm import tqdm

from core.classical.features import ImageFeatures, feature_matrix, make_extractor
from core.classical.models import check_scale, model_grid
from core.classical.predictor import ARTIFACT, pipeline_probabilities, probability_method, save_pipeline
from core.classical.search import SELECTION_RULES, SELECTORS, choose_folds, cv_table, failed_rows, grid_search
from core.config import MAX_COUNT
from core.dataset import DEFAULT_SPLIT, Dataset, prepare_dataset
from core.layout import fold_dir
from core.runs import cv_folds, cv_pool, finish_cv, finish_single
from core.store import Store, config_key

FAMILY = "classical"
IMAGE_SIZE = 128  # cache resolution; each extractor shrinks further (raw 32 px, HOG 64 px, ...)
VERSION = 4  # part of every experiment's key: bump when a change alters what a setting trains


def experiment_params(features: str, extractor: ImageFeatures, pca: int | None, model: str, grid: list[dict],
                      folds: int, selection: str, image_size: int, seed: int, max_count: int, cv: int,
                      open_top: bool) -> dict:
    """Everything that decides what a run trains: equal params on equal data -> served from the store."""
    return {
        "features": features, "feature_params": extractor.get_params(), "pca": pca, "model": model, "grid": grid,
        "folds": folds, "selection": selection, "image_size": image_size, "seed": seed, "max_count": max_count,
        "split": list(DEFAULT_SPLIT), "cv": cv, "open_top": open_top,
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
    cv: int = 0,
    name: str | None = None,
    store: Store | None = None,
    n_jobs: int = 2,
    progress: bool = True,
    max_count: int = MAX_COUNT,
    open_top: bool = True,
    recounts: Path | None = None,
    curation: Path | None = None,
) -> str:
    """Search, fit, calibrate, save and test one classical model (or, with `cv=K`, K of them on
    the folds of train+val); returns its experiment id. With `open_top` (the default), bins of
    more than `max_count` items are a class of their own instead of being left out. A configuration
    already finished on the same data is served from the store; two processes asking for it at once
    train it once. `recounts` (a recounts collection, `core.recount_labels`) adds people's recounts
    to the data; `curation` (a curation file, `core.suspects`) changes what the train split trains on."""
    store = store or Store()
    if selection not in SELECTORS:
        raise ValueError(f"selection must be one of {SELECTION_RULES}, got {selection!r}")
    extractor = make_extractor(features, **(feature_params or {}))
    grid = model_grid(model, grid)
    dataset = prepare_dataset(dataset_root, image_size=image_size, max_count=max_count, seed=seed,
                              store_root=store.root, progress=progress, open_top=open_top, recounts=recounts,
                              curation=curation)
    check_scale(model, int((dataset.table["split"] == "train").sum()))
    params = experiment_params(features, extractor, pca, model, grid, folds, selection, image_size, seed, max_count,
                               cv, open_top)
    name = (name or f"{features}{'-pca' if pca else ''}-{model}") + (f"-cv{cv}" if cv else "")
    key = config_key(FAMILY, model, params, dataset.fingerprint, VERSION)
    with store.claim(key):
        found = store.find_finished(key)
        if found:
            if progress:
                tqdm.write(f"{name}: served from the store ({found})")
            return found
        exp_id = store.start(name, FAMILY, model, params, dataset.fingerprint, code_version=VERSION,
                             data_root=str(Path(dataset_root).resolve()), image_size=image_size,
                             num_classes=dataset.num_classes, open_top=dataset.open_top, selection=selection,
                             recounted_photos=dataset.recounted)
        with store.running(exp_id):
            _train(store, exp_id, dataset, extractor, model, grid, pca, folds, selection, image_size, seed, cv,
                   n_jobs, progress)
    return exp_id


def _train(store: Store, exp_id: str, dataset: Dataset, extractor: ImageFeatures, model: str, grid: list[dict],
           pca: int | None, folds: int, selection: str, image_size: int, seed: int, cv: int, n_jobs: int,
           progress: bool) -> None:
    started = time.perf_counter()
    matrix = feature_matrix(extractor, dataset.images(image_size), dataset.features_folder(image_size),
                            n_jobs=n_jobs, progress=progress)
    feature_seconds = round(time.perf_counter() - started, 2)
    k = dataset.num_classes
    folder = store.artifact_dir(exp_id)
    warnings: list[str] = []

    def fit(part: pd.DataFrame, where: Path):
        """Grid-search on `part`'s photos; save the chosen pipeline in `where`."""
        y = part["count"].to_numpy()
        used, note = choose_folds(y, folds)
        if note:
            warnings.append(note)
        search = grid_search(matrix[part["row"].to_numpy()], y, model, grid, pca, used, selection, seed, n_jobs,
                             progress)
        pipeline = Pipeline([("features", extractor), *search.best_estimator_.steps])
        save_pipeline(where / ARTIFACT, pipeline)
        return search, pipeline

    def probs(search, part: pd.DataFrame) -> np.ndarray:
        return pipeline_probabilities(search.best_estimator_, matrix[part["row"].to_numpy()], k)

    test = dataset.split("test")
    common = {"artifact": ARTIFACT, "feature_seconds": feature_seconds,
              "split_counts": dataset.table["split"].value_counts().to_dict()}
    if cv:
        pool, fold = cv_pool(dataset), cv_folds(dataset, cv, seed)
        oof, tests = np.zeros((len(pool), k)), []
        for f in tqdm(range(cv), desc="cross-validation", unit="fold", disable=not progress):
            search, pipeline = fit(pool[fold != f], fold_dir(folder, f))
            oof[fold == f] = probs(search, pool[fold == f])
            tests.append(probs(search, test))
        finish_cv(store, exp_id, dataset, fold, oof, tests, train_seconds=round(time.perf_counter() - started, 2),
                  probabilities=probability_method(pipeline), warnings=sorted(set(warnings)), **common)
        return
    search, pipeline = fit(dataset.split("train"), folder)
    chosen = int(search.best_index_)
    table = cv_table(search.cv_results_, chosen)
    finish_single(store, exp_id, dataset, probs(search, dataset.split("val")), probs(search, test),
                  train_seconds=round(time.perf_counter() - started, 2), probabilities=probability_method(pipeline),
                  chosen_params=table[chosen]["params"], cv_results=table + failed_rows(search.failed_),
                  warnings=warnings, **common)



"""One classical experiment: features, an optional PCA and one model family with its grid.

The grid is searched by stratified K-fold cross-validation on the training photos only (the
validation photos calibrate the probabilities and select between experiments; the test photos
are used once, for the reported figures). The chosen setting is saved as a single Pipeline,
features first, so the counting service runs it on uint8 photo arrays exactly as training did.
With `cv=K`, the whole of that is done on K folds of train+val instead (see `core.runs.lifecycle`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from tqdm import tqdm

from core.classical.config import ClassicalConfig
from core.classical.features import ImageFeatures, feature_matrix
from core.classical.models import check_scale
from core.classical.predictor import ARTIFACT, pipeline_probabilities, probability_method, save_pipeline
from core.classical.search import choose_folds, cv_table, failed_rows, grid_search
from core.data.dataset import Dataset, prepare_dataset
from core.runs.folds import cv_folds, cv_pool
from core.runs.lifecycle import finish_cv, finish_single, run_once
from core.store.database import Store, config_key
from core.store.layout import fold_dir

FAMILY = "classical"
VERSION = 5  # part of every experiment's key: bump when a change alters what a setting trains (5: calibration, #27)


def train_classical(dataset_root: str | Path, config: ClassicalConfig, store: Store | None = None,
                    n_jobs: int = 2, progress: bool = True, recounts: Path | None = None,
                    curation: Path | None = None) -> str:
    """Search, fit, calibrate, save and test one classical model (or, with `config.cv=K`, K of them
    on the folds of train+val); returns its experiment id. A configuration already finished on the
    same data is served from the store; two processes asking for it at once train it once
    (`core.runs.lifecycle.run_once`). `recounts` (a recounts collection, `core.reconcile.recount_labels`) adds people's
    recounts to the data; `curation` (a curation file, `core.reconcile.suspects`) changes what the train split
    trains on."""
    store = store or Store()
    dataset = prepare_dataset(dataset_root, image_size=config.image_size, max_count=config.max_count,
                              seed=config.seed, store_root=store.root, progress=progress, open_top=config.open_top,
                              recounts=recounts, curation=curation)
    check_scale(config.model, int((dataset.table["split"] == "train").sum()))
    params, name = config.params(), config.run_name

    def start() -> str:
        return store.start(name, FAMILY, config.model, params, dataset.fingerprint, code_version=VERSION,
                           data_root=str(Path(dataset_root).resolve()), image_size=config.image_size,
                           num_classes=dataset.num_classes, open_top=dataset.open_top, selection=config.selection,
                           recounted_photos=dataset.recounted)

    def reused(exp_id: str) -> None:
        if progress:
            tqdm.write(f"{name}: served from the store ({exp_id})")

    return run_once(store, config_key(FAMILY, config.model, params, dataset.fingerprint, VERSION), start,
                    lambda exp_id: _train(store, exp_id, dataset, config, n_jobs, progress), on_reuse=reused)


def _train(store: Store, exp_id: str, dataset: Dataset, config: ClassicalConfig, n_jobs: int,
           progress: bool) -> None:
    extractor: ImageFeatures = config.extractor()
    model, grid, pca, seed, image_size = config.model, config.search_grid(), config.pca, config.seed, config.image_size
    started = time.perf_counter()
    matrix = feature_matrix(extractor, dataset.images(image_size), dataset.features_folder(image_size),
                            n_jobs=n_jobs, progress=progress)
    feature_seconds = round(time.perf_counter() - started, 2)
    k = dataset.num_classes
    folder = store.artifact_dir(exp_id)
    warnings: list[str] = []

    def fit(part: pd.DataFrame, where: Path):
        """Grid-search on `part`'s photos (`ClassicalConfig.fitted_on`); save the chosen pipeline in `where`."""
        part = config.fitted_on(part)
        y = part["count"].to_numpy()
        used, note = choose_folds(y, config.folds)
        if note:
            warnings.append(note)
        search = grid_search(matrix[part["row"].to_numpy()], y, model, grid, pca, used, config.selection, seed,
                             n_jobs, progress)
        pipeline = Pipeline([("features", extractor), *search.best_estimator_.steps])
        save_pipeline(where / ARTIFACT, pipeline)
        return search, pipeline

    def probs(search, part: pd.DataFrame) -> np.ndarray:
        return pipeline_probabilities(search.best_estimator_, matrix[part["row"].to_numpy()], k)

    test = dataset.split("test")
    common = {"artifact": ARTIFACT, "feature_seconds": feature_seconds,
              "split_counts": dataset.split_counts()}
    if config.cv:
        pool, fold = cv_pool(dataset), cv_folds(dataset, config.cv, seed)
        oof, tests = np.zeros((len(pool), k)), []
        for f in tqdm(range(config.cv), desc="cross-validation", unit="fold", disable=not progress):
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



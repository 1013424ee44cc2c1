"""CNN experiments in the store: train a preset (or reuse / resume it), and standalone LR sweeps.

A configuration already finished on the same data is returned as is; one that was interrupted
or failed after at least one epoch continues from its checkpoint in the same experiment. With
`cv=K` the preset is trained on K folds of train+val and served as their ensemble (`core.runs.lifecycle`);
each fold keeps the weights of its last epoch, since its held-out photos are what it is scored on.
Under `torchrun`, rank 0 talks to the store and every rank trains.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.cnn.backbones import build_model, input_normalization
from core.cnn.checkpoint import BEST, CHECKPOINT, load_checkpoint
from core.cnn.loop import Split, Trainer, TrainingData
from core.cnn.predictor import save_model
from core.cnn.recipes import Recipe, get_recipe
from core.cnn.runtime import Runtime, first_alone, launch_rank, setup_runtime, shutdown
from core.data.dataset import Dataset, prepare_dataset
from core.runs.folds import cv_folds, cv_pool
from core.runs.lifecycle import finish_cv, finish_single, run_once
from core.store.database import Store, config_key
from core.store.files import atomic_path
from core.store.layout import datasets_lock, fold_dir, frozen_features_dir

FAMILY = "cnn"
LR_FAMILY = "lr_finder"
VERSION = 5  # part of every experiment's key: bump when a change alters what a recipe trains (5: calibration, #27)
FOLD_PROBS = "probs.npz"  # a finished fold's held-out and test probabilities


def _split(part) -> Split:
    return Split(part["row"].to_numpy(), part["count"].to_numpy())


def load_data(root: str | Path, recipe: Recipe, store: Store, progress: bool, recounts: Path | None = None,
              curation: Path | None = None) -> Dataset:
    """The prepared data set with its cache at every size the recipe uses.

    Called before joining the process group, whose collectives would time out while a large
    collection is decoded: the first process to arrive builds the caches, the others (every
    rank on every node, under `torchrun`) wait on a lock in the store, then load them.
    """
    sizes = sorted({p.image_size for p in recipe.phases})
    lock = datasets_lock(store.root)
    waiting = f"waiting for another process to build the image caches (lock: {lock})" if launch_rank() == 0 else None
    with first_alone(lock, waiting) as first:
        dataset = prepare_dataset(root, image_size=sizes[0], store_root=store.root, progress=progress and first,
                                  open_top=recipe.open_top, recounts=recounts, curation=curation)
        for size in sizes[1:]:
            dataset.images(size)
    return dataset.training_subset(recipe.train_source, recipe.train_share, recipe.seed)


def _features_folder(dataset: Dataset) -> Path:
    """Where frozen-stage features of the collection's photos are cached (by image-cache row, like the photos)."""
    return frozen_features_dir(dataset.cache_folder)


def _params(recipe: Recipe, cv: int) -> dict:
    return {**recipe.params(), "cv": cv}


def _key(family: str, recipe: Recipe, cv: int, dataset: Dataset, runtime: Runtime) -> str:
    return config_key(family, recipe.backbone, _params(recipe, cv), dataset.fingerprint, VERSION, runtime.world_size)


def _fresh_model(recipe: Recipe, num_classes: int, runtime: Runtime, seed_offset: int = 0) -> tuple[nn.Module, str]:
    """A freshly built model on the device (the same head on every rank and every run) and its weights' origin."""
    torch.manual_seed(recipe.seed + seed_offset)
    model, weights = build_model(recipe.backbone, num_classes, pretrained=recipe.pretrained)
    return runtime.prepare(model), weights


def _resumable(store: Store, key: str) -> str | None:
    """The newest interrupted or failed run of this configuration (it resumes from its checkpoints)."""
    for exp in store.experiments():
        if exp.config_key == key and exp.status in ("interrupted", "failed"):
            return exp.id
    return None


def _open_experiment(store: Store, preset: str, recipe: Recipe, cv: int, dataset: Dataset, runtime: Runtime,
                     key: str, weights: str) -> str:
    """Rank 0: reopen the resumable run of this configuration, else start a new one."""
    exp_id = _resumable(store, key)
    if exp_id:
        store.record(exp_id, device=runtime.describe(), weights=weights)
        return exp_id
    return store.start(f"{preset}-cv{cv}" if cv else preset, FAMILY, recipe.backbone, _params(recipe, cv),
                       dataset.fingerprint, code_version=VERSION, world_size=runtime.world_size,
                       data_root=str(Path(dataset.collection.root).resolve()), device=runtime.describe(),
                       weights=weights, preset=preset, recipe_notes=recipe.notes, num_classes=dataset.num_classes,
                       open_top=dataset.open_top,
                       image_size=recipe.phases[-1].image_size,
                       split_counts=dataset.split_counts(),
                       recounted_photos=dataset.recounted)


def _trainer(store: Store, exp_id: str, recipe: Recipe, model: nn.Module, data: TrainingData, runtime: Runtime,
             folder: Path, progress: bool, fold: int | None = None) -> Trainer:
    """A trainer that logs to the experiment; fold k of a cross-validated run logs its epochs after
    the k folds before it (epoch k * recipe.epochs + e), each with its `fold`."""
    offset, tag = (fold * recipe.epochs, {"fold": fold}) if fold is not None else (0, {})
    return Trainer(model, recipe, data, runtime, folder,
                   log_epoch=lambda epoch, values: store.log_epoch(exp_id, epoch + offset, **values, **tag),
                   log_curve=lambda name, c: store.log_lr_curve(exp_id, c.lrs, c.losses, c.suggested, name=name),
                   log_resume=lambda epoch: store.add_resume(exp_id, epoch), progress=progress)


def _probs(trainer: Trainer, part, size: int, progress: bool, desc: str) -> np.ndarray:
    """Probabilities of `part`'s photos; every rank calls it, each predicting its share."""
    return trainer.predict(_split(part), size, progress, desc)


def _serving_config(recipe: Recipe, num_classes: int, size: int) -> dict:
    normalization = input_normalization(recipe.backbone)
    return {"backbone": recipe.backbone, "num_classes": num_classes, "image_size": size,
            "mean": list(normalization[0]), "std": list(normalization[1]), "tta": recipe.tta}


def _drop_checkpoints(folder: Path) -> None:
    for name in (CHECKPOINT, BEST):
        (folder / name).unlink(missing_ok=True)


def _train_single(store: Store, exp_id: str, recipe: Recipe, dataset: Dataset, model: nn.Module,
                  runtime: Runtime, progress: bool, on_epoch: Callable[[int, dict], None] | None) -> None:
    """Fit on train, keep the best validation epoch; rank 0 calibrates, tests and records."""
    data = TrainingData(dataset.images, _split(dataset.split("train")), _split(dataset.split("val")),
                        dataset.num_classes, _features_folder(dataset))
    folder = store.artifact_dir(exp_id)
    trainer = _trainer(store, exp_id, recipe, model, data, runtime, folder, progress)
    state = trainer.fit(on_epoch)
    size = state.best_size
    val_probs = _probs(trainer, dataset.split("val"), size, progress, "validating")
    test_probs = _probs(trainer, dataset.split("test"), size, progress, "testing")
    if not runtime.is_main:
        return
    config = _serving_config(recipe, dataset.num_classes, size)
    artifact = save_model(folder, trainer.model, config)
    finish_single(store, exp_id, dataset, val_probs, test_probs, image_size=size, train_seconds=round(state.seconds, 1),
                  artifact=artifact, best_epoch=state.best_epoch, epochs_run=state.epoch, phase_lrs=state.phase_lrs,
                  model_config=config)
    _drop_checkpoints(folder)


def _train_folds(store: Store, exp_id: str, recipe: Recipe, cv: int, dataset: Dataset, runtime: Runtime,
                 progress: bool, on_epoch: Callable[[int, dict], None] | None) -> None:
    """K folds of train+val, each resumable on its own; rank 0 pools them and records the ensemble."""
    pool, test = cv_pool(dataset), dataset.split("test")
    fold = cv_folds(dataset, cv, recipe.seed)
    size = recipe.phases[-1].image_size
    config = _serving_config(recipe, dataset.num_classes, size)
    oof, tests, seconds = np.zeros((len(pool), dataset.num_classes)), [], 0.0
    for f in tqdm(range(cv), desc="cross-validation", unit="fold", disable=not (progress and runtime.is_main)):
        folder = fold_dir(store.artifact_dir(exp_id), f)
        done = folder / FOLD_PROBS
        if not runtime.on_main(done.is_file):
            model, _ = _fresh_model(recipe, dataset.num_classes, runtime, seed_offset=f)
            data = TrainingData(dataset.images, _split(pool[fold != f]), _split(pool[fold == f]), dataset.num_classes,
                                _features_folder(dataset))
            trainer = _trainer(store, exp_id, recipe, model, data, runtime, folder, progress, fold=f)
            state = trainer.fit(on_epoch)
            last = runtime.on_main(partial(load_checkpoint, folder))
            if last is not None:  # the last epoch's weights, not the epoch that did best on the held-out fold
                trainer.model.load_state_dict(last[0])
            held = _probs(trainer, pool[fold == f], size, progress, f"fold {f} held out")
            tested = _probs(trainer, test, size, progress, f"fold {f} test")
            if runtime.is_main:
                save_model(folder, trainer.model, config)
                with atomic_path(done) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, held=held, test=tested, seconds=state.seconds)
                _drop_checkpoints(folder)
        if runtime.is_main:
            saved = np.load(done)
            oof[fold == f] = saved["held"]
            tests.append(saved["test"])
            seconds += float(saved["seconds"])
    if runtime.is_main:
        finish_cv(store, exp_id, dataset, fold, oof, tests, image_size=size, train_seconds=round(seconds, 1),
                  artifact="model.pt", model_config=config)


# What a CNN run opens (rank 0; store, recipe, data, runtime, key, the weights' origin -> experiment id) and
# what it then runs on every rank (store, experiment id, recipe, data, a fresh model, runtime).
Opener = Callable[[Store, Recipe, Dataset, Runtime, str, str], str]
Work = Callable[[Store, str, Recipe, Dataset, nn.Module, Runtime], None]


def _run(dataset_root: str | Path, preset: str, store: Store | None, overrides: dict | None, progress: bool,
         family: str, cv: int, open_run: Opener, work: Work, recounts: Path | None = None,
         curation: Path | None = None) -> str:
    """What every CNN run shares: the recipe and its data (before the process group, see `load_data`),
    the process group, the recipe as it runs on this device (`Recipe.resolved`), a fresh model, and the
    lifecycle of `core.runs.lifecycle.run_once`."""
    recipe = get_recipe(preset, overrides)
    if cv and (recipe.train_share < 1 or recipe.train_source != "all"):
        raise ValueError("a cross-validated run trains on every fold's photos: train_share and train_source are "
                         "for single runs (learning curves)")
    store = store or Store()
    dataset = load_data(dataset_root, recipe, store, progress, recounts, curation)
    runtime = setup_runtime()
    if recipe.cpu_bf16:
        runtime = runtime.with_cpu_bf16_training()
    # what the recipe leaves to the device (batch, lr scale) settled here, so the params record what trains
    recipe = recipe.resolved(runtime.device.type, runtime.world_size)
    model: nn.Module | None = None

    def start() -> str | None:
        nonlocal model
        model, weights = _fresh_model(recipe, dataset.num_classes, runtime)
        return open_run(store, recipe, dataset, runtime, key, weights) if runtime.is_main else None

    def run(exp_id: str) -> None:
        assert model is not None  # built by start()
        work(store, exp_id, recipe, dataset, model, runtime)

    try:
        key = _key(family, recipe, cv, dataset, runtime)
        return run_once(store, key, start, run, is_main=runtime.is_main, share=runtime.broadcast)
    finally:
        shutdown(runtime)


def train_cnn(dataset_root: str | Path, preset: str = "quick", store: Store | None = None,
              overrides: dict | None = None, progress: bool = True,
              on_epoch: Callable[[int, dict], None] | None = None, cv: int = 0, recounts: Path | None = None,
              curation: Path | None = None) -> str:
    """Train `preset` (with `overrides`) on the data at `dataset_root`; returns the experiment id.

    `cv=K` trains K models on the folds of train+val instead, as one experiment.
    `on_epoch(epoch, values)` is called on rank 0 after each epoch's checkpoint is written.
    `recounts` (a recounts collection, `core.reconcile.recount_labels`) adds people's recounts to the data;
    `curation` (a curation file, `core.reconcile.suspects`) changes what the train split trains on.
    """

    def open_run(store: Store, recipe: Recipe, dataset: Dataset, runtime: Runtime, key: str, weights: str) -> str:
        return _open_experiment(store, preset, recipe, cv, dataset, runtime, key, weights)

    def train(store: Store, exp_id: str, recipe: Recipe, dataset: Dataset, model: nn.Module,
              runtime: Runtime) -> None:
        if cv:  # each fold builds its own model
            _train_folds(store, exp_id, recipe, cv, dataset, runtime, progress, on_epoch)
        else:
            _train_single(store, exp_id, recipe, dataset, model, runtime, progress, on_epoch)

    return _run(dataset_root, preset, store, overrides, progress, FAMILY, cv, open_run, train, recounts, curation)


def find_lr(dataset_root: str | Path, preset: str = "quick", store: Store | None = None,
            overrides: dict | None = None, progress: bool = True) -> str:
    """An LR-finder sweep over the preset's first phase, stored as its own "lr_finder" experiment.

    The curve is in `store.lr_curves(exp_id)` and the suggestion in the record's `suggested_lr`.
    """

    def open_sweep(store: Store, recipe: Recipe, dataset: Dataset, runtime: Runtime, key: str, weights: str) -> str:
        return store.start(f"lr-find {preset}", LR_FAMILY, recipe.backbone, _params(recipe, 0), dataset.fingerprint,
                           code_version=VERSION, world_size=runtime.world_size,
                           data_root=str(Path(dataset.collection.root).resolve()), device=runtime.describe(),
                           weights=weights, preset=preset, image_size=recipe.phases[0].image_size,
                           num_classes=dataset.num_classes)

    def sweep(store: Store, exp_id: str, recipe: Recipe, dataset: Dataset, model: nn.Module,
              runtime: Runtime) -> None:
        data = TrainingData(dataset.images, _split(dataset.split("train")), _split(dataset.split("val")),
                            dataset.num_classes, _features_folder(dataset))
        curve = Trainer(model, recipe, data, runtime, store.artifact_dir(exp_id), progress=progress).find_lr()
        if runtime.is_main:
            store.log_lr_curve(exp_id, curve.lrs, curve.losses, curve.suggested, name=preset)
            store.finish(exp_id, metrics=None, suggested_lr=curve.suggested)

    return _run(dataset_root, preset, store, overrides, progress, LR_FAMILY, 0, open_sweep, sweep)

"""CNN experiments in the store: train a preset (or reuse / resume it), and standalone LR sweeps.

A configuration already finished on the same data is returned as is; one that was interrupted
or failed after at least one epoch continues from its checkpoint in the same experiment.
Under `torchrun`, rank 0 talks to the store and every rank trains.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.backbones import build_model, input_normalization
from core.cnn.checkpoint import BEST, CHECKPOINT
from core.cnn.loop import Split, Trainer, TrainingData
from core.cnn.predictor import MODEL_FILE, save_model
from core.cnn.recipes import Recipe, get_recipe
from core.cnn.runtime import Runtime, first_alone, launch_rank, setup_runtime, shutdown
from core.dataset import DEFAULT_SPLIT, Dataset, prepare_dataset
from core.metrics import classification_report, expected_calibration_error
from core.store import Store, config_key

FAMILY = "cnn"
LR_FAMILY = "lr_finder"
SPLIT = f"train/val/test {'/'.join(str(round(f * 100)) for f in DEFAULT_SPLIT)}, seed 0"


def _split(dataset: Dataset, name: str) -> Split:
    part = dataset.split(name)
    return Split(part["row"].to_numpy(), part["count"].to_numpy())


def load_data(root: str | Path, recipe: Recipe, store: Store, progress: bool) -> tuple[Dataset, TrainingData]:
    """The prepared data set with its cache at every size the recipe uses.

    Called before joining the process group, whose collectives would time out while a large
    collection is decoded: the first process to arrive builds the caches, the others (every
    rank on every node, under `torchrun`) wait on a lock in the store, then load them.
    """
    sizes = sorted({p.image_size for p in recipe.phases})
    lock = store.root / "datasets.lock"
    waiting = f"waiting for another process to build the image caches (lock: {lock})" if launch_rank() == 0 else None
    with first_alone(lock, waiting) as first:
        dataset = prepare_dataset(root, image_size=sizes[0], store=store.root, progress=progress and first)
        for size in sizes[1:]:
            dataset.images(size)
    data = TrainingData(dataset.images, _split(dataset, "train"), _split(dataset, "val"), dataset.num_classes)
    return dataset, data


def _finished_or_fresh_model(family: str, recipe: Recipe, dataset: Dataset, data: TrainingData, store: Store,
                             runtime: Runtime) -> tuple[str | None, nn.Module | None, str]:
    """(id of the finished run of this configuration, None, "") on every rank, or else
    (None, a freshly built model on the device, the description of its weights)."""
    done = runtime.broadcast(store.find_finished(family, recipe.backbone, recipe.params(), dataset.fingerprint)
                             if runtime.is_main else None)
    if done:
        return done, None, ""
    torch.manual_seed(recipe.seed)  # the same fresh head on every rank and every run
    model, weights = build_model(recipe.backbone, data.num_classes, pretrained=recipe.pretrained)
    return None, runtime.prepare(model), weights


def _resumable(store: Store, recipe: Recipe, fingerprint: str) -> str | None:
    """The newest interrupted or failed run of this configuration that left a checkpoint."""
    key = config_key(FAMILY, recipe.backbone, recipe.params(), fingerprint)
    for exp in store.experiments():
        if (exp["config_key"] == key and exp["status"] in ("interrupted", "failed")
                and (store.artifact_dir(exp["id"]) / CHECKPOINT).is_file()):
            return exp["id"]
    return None


def _open_experiment(store: Store, preset: str, recipe: Recipe, dataset: Dataset, runtime: Runtime,
                     weights: str) -> str:
    """Rank 0: reopen the resumable run of this configuration, else start a new one."""
    exp_id = _resumable(store, recipe, dataset.fingerprint)
    if exp_id:
        store.update(exp_id, status="running", pid=os.getpid(), host=socket.gethostname(), error=None,
                     ended_at=None, device=runtime.describe(), weights=weights)
        return exp_id
    exp_id = store.start(preset, FAMILY, recipe.backbone, recipe.params(), dataset.fingerprint,
                         data_root=str(dataset.collection.root), split=SPLIT, device=runtime.describe(),
                         weights=weights)
    store.update(exp_id, details={"preset": preset, "recipe": recipe.notes, "root": str(dataset.collection.root),
                                  "num_classes": dataset.num_classes, "image_size": recipe.phases[-1].image_size,
                                  "images": {s: int((dataset.table["split"] == s).sum())
                                             for s in ("train", "val", "test")}})
    return exp_id


def _log_resume(store: Store, exp_id: str, epoch: int) -> None:
    details = store.experiment(exp_id)["details"]
    details["resumed_from_epochs"] = [*details.get("resumed_from_epochs", []), epoch]
    store.update(exp_id, details=details)


def _finish(store: Store, exp_id: str, preset: str, recipe: Recipe, dataset: Dataset, trainer: Trainer,
            state, probs: np.ndarray) -> None:
    """Rank 0: record the best weights' test `probs`, save the weights for serving, drop the checkpoints."""
    folder = store.artifact_dir(exp_id)
    normalization = input_normalization(recipe.backbone)
    test = dataset.split("test")
    counts = test["count"].to_numpy()
    metrics = classification_report(counts, probs.argmax(axis=1), dataset.num_classes)
    metrics["ece"] = expected_calibration_error(probs, counts)
    config = {"backbone": recipe.backbone, "num_classes": dataset.num_classes, "image_size": state.best_size,
              "mean": list(normalization[0]), "std": list(normalization[1]), "tta": recipe.tta}
    artifact = save_model(folder, trainer.model, config)
    store.log_predictions(exp_id, test["image_id"], test["path"], counts, probs)
    details = store.experiment(exp_id)["details"]
    details.update(image_size=state.best_size, num_classes=dataset.num_classes, train_seconds=round(state.seconds, 1),
                   artifact=artifact, root=str(dataset.collection.root), preset=preset, best_epoch=state.best_epoch,
                   epochs_run=state.epoch, val=state.best_values, phase_lrs=state.phase_lrs,
                   model_config=config)
    store.finish(exp_id, metrics=metrics, details=details)
    for name in (CHECKPOINT, BEST):
        (folder / name).unlink(missing_ok=True)


def train_cnn(dataset_root: str | Path, preset: str = "quick", store: Store | None = None,
              overrides: dict | None = None, progress: bool = True,
              on_epoch: Callable[[int, dict], None] | None = None) -> str:
    """Train `preset` (with `overrides`) on the data at `dataset_root`; returns the experiment id.

    `on_epoch(epoch, values)` is called on rank 0 after each epoch's checkpoint is written.
    """
    recipe = get_recipe(preset, overrides)
    store = store or Store()
    dataset, data = load_data(dataset_root, recipe, store, progress)  # before the process group (see load_data)
    runtime = setup_runtime()
    try:
        done, model, weights = _finished_or_fresh_model(FAMILY, recipe, dataset, data, store, runtime)
        if done:
            return done
        exp_id = runtime.broadcast(
            _open_experiment(store, preset, recipe, dataset, runtime, weights) if runtime.is_main else None)
        with store.failing_on_error(exp_id) if runtime.is_main else nullcontext():
            trainer = Trainer(
                model, recipe, data, runtime, store.artifact_dir(exp_id),
                log_epoch=lambda epoch, values: store.log_epoch(exp_id, epoch, **values),
                log_curve=lambda name, c: store.log_lr_curve(exp_id, c.lrs, c.losses, c.suggested, name=name),
                log_resume=lambda epoch: _log_resume(store, exp_id, epoch), progress=progress)
            state = trainer.fit(on_epoch)
            test_probs = trainer.predict(_split(dataset, "test"), state.best_size, progress, "testing")  # all ranks
            if runtime.is_main:
                _finish(store, exp_id, preset, recipe, dataset, trainer, state, test_probs)
        return exp_id
    finally:
        shutdown(runtime)


def find_lr(dataset_root: str | Path, preset: str = "quick", store: Store | None = None,
            overrides: dict | None = None, progress: bool = True) -> str:
    """An LR-finder sweep over the preset's first phase, stored as its own "lr_finder" experiment.

    The curve is in `store.lr_curves(exp_id)` and the suggestion in the experiment's details.
    """
    recipe = get_recipe(preset, overrides)
    store = store or Store()
    dataset, data = load_data(dataset_root, recipe, store, progress)  # before the process group (see load_data)
    runtime = setup_runtime()
    try:
        done, model, weights = _finished_or_fresh_model(LR_FAMILY, recipe, dataset, data, store, runtime)
        if done:
            return done
        exp_id = runtime.broadcast(
            store.start(f"lr-find {preset}", LR_FAMILY, recipe.backbone, recipe.params(), dataset.fingerprint,
                        data_root=str(dataset.collection.root), split=SPLIT, device=runtime.describe(),
                        weights=weights) if runtime.is_main else None)
        with store.failing_on_error(exp_id) if runtime.is_main else nullcontext():
            trainer = Trainer(model, recipe, data, runtime, store.artifact_dir(exp_id), progress=progress)
            curve = trainer.find_lr()
            if runtime.is_main:
                store.log_lr_curve(exp_id, curve.lrs, curve.losses, curve.suggested, name=preset)
                phase = recipe.phases[0]
                store.finish(exp_id, metrics={}, details={
                    "preset": preset, "suggested_lr": curve.suggested, "steps": len(curve.lrs),
                    "image_size": phase.image_size, "train_body": phase.train_body,
                    "num_classes": dataset.num_classes, "root": str(dataset.collection.root)})
        return exp_id
    finally:
        shutdown(runtime)

"""The training loop: phases of epochs, validation, early stopping, checkpoints, resume.

Every epoch ends with a validation pass (under DDP each rank predicts a share of the split),
a store entry (through `log_epoch`) and an atomic checkpoint in `folder`, written by rank 0; if
rank 0's `folder` already holds a checkpoint, every rank continues from it (broadcast, so other
ranks never read their own disk). Early stopping ends the current phase (a head-only phase that
stalls still leads on to unfreezing). The weights kept are those of the best validation epoch.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.cnn.backbones import input_normalization, set_body_trainable
from core.cnn.checkpoint import BEST, FitState, load_checkpoint, load_state_dict, save_checkpoint, save_state_dict
from core.cnn.evaluate import confusion_summary, predict, score
from core.cnn.feature_cache import FeatureInputs, FrozenFront
from core.cnn.inputs import CachedRows, DeviceBatches, ImageInputs, training_plan
from core.cnn.lr_finder import LRCurve, lr_sweep
from core.cnn.optim import CountingLoss, class_weights, lr_factor, make_optimizer, set_lr
from core.cnn.recipes import MONITORS, Phase, Recipe
from core.cnn.runtime import Runtime
from core.cnn.step import reuse_freed_memory, train_step

# How often the progress bar shows the running loss. Reading it waits for the device, and on a GPU the wait
# empties the queue of work the CPU had run ahead with; every 5 steps, as before, the GPU waited each time.
PROGRESS_SECONDS = 1.0


@dataclass
class Split:
    """One split of a prepared data set: cache rows and their counts."""

    rows: np.ndarray
    counts: np.ndarray


@dataclass
class TrainingData:
    images: Callable[[int], np.ndarray]  # image size -> the (N, S, S, 3) uint8 cache
    train: Split
    val: Split
    num_classes: int
    features_folder: Path | None = None  # where a recipe with frozen_stages keeps its feature cache (None: memory)


def phase_plan(recipe: Recipe) -> list[tuple[int, Phase, int]]:
    """(index, phase, first global epoch) for each phase."""
    starts = itertools.accumulate((p.epochs for p in recipe.phases), initial=0)
    # `starts` ends with the total epochs, one more than there are phases
    return [(i, phase, start) for i, (phase, start) in enumerate(zip(recipe.phases, starts, strict=False))]


def make_loss(recipe: Recipe, data: TrainingData, runtime: Runtime) -> nn.Module:
    weights = class_weights(data.train.counts, data.num_classes, recipe.class_weights)
    return CountingLoss(data.num_classes, weights, recipe.label_smoothing, recipe.count_weight,
                        recipe.ordinal_sigma).to(runtime.device)


def _epoch_line(epoch: int, epochs: int, v: dict) -> str:
    return (f"epoch {epoch}/{epochs} ({v['image_size']}px): train loss {v['train_loss']:.3f} acc "
            f"{v['train_accuracy']:.3f} | val loss {v['val_loss']:.3f} acc {v['val_accuracy']:.3f} balanced "
            f"{v['val_balanced_accuracy']:.3f} RMSE {v['val_rmse']:.3f} | {v['seconds']:.0f} s")


class Trainer:
    """Runs one recipe on one model; see the module docstring. The recipe runs as resolved for the runtime's
    device and processes (`Recipe.resolved`: the device's batch, lrs scaled to it)."""

    def __init__(self, model: nn.Module, recipe: Recipe, data: TrainingData, runtime: Runtime, folder: Path,
                 log_epoch: Callable[[int, dict], None] | None = None,
                 log_curve: Callable[[str, LRCurve], None] | None = None,
                 log_resume: Callable[[int], None] | None = None, progress: bool = True):
        self.model, self.data, self.runtime, self.folder = model, data, runtime, folder
        self.recipe = recipe = recipe.resolved(runtime.device.type, runtime.world_size)
        assert recipe.batch_size is not None  # resolved
        self.batch_size: int = recipe.batch_size
        self.log_epoch, self.log_curve, self.log_resume = log_epoch, log_curve, log_resume
        self.progress = progress and runtime.is_main
        self.normalization = input_normalization(recipe.backbone)
        self.loss_fn = make_loss(recipe, data, runtime)
        if not runtime.cuda:
            reuse_freed_memory()
        # what trains and what it reads: the whole model from the photos, or its upper stages from the
        # cached outputs of its frozen lower stages
        self.front: FrozenFront | None = None
        self.net: nn.Module = model
        self.inputs: ImageInputs | FeatureInputs = ImageInputs(data.images, self.normalization, runtime.device,
                                                               recipe.flip, recipe.rotate, runtime.counting_autocast)
        if recipe.frozen_stages:
            self.front = FrozenFront(model, recipe.backbone, recipe.frozen_stages, data.images, self.normalization,
                                     runtime, data.features_folder, progress)
            self.net, self.inputs = self.front.upper, self.front.inputs(recipe.flip)

    # ---- data ----------------------------------------------------------------------------
    def _train_data(self, size: int) -> CachedRows:
        return self.inputs.dataset(size, self.data.train.rows, self.data.train.counts).by_row()

    def _batches(self, data: CachedRows, epoch: int) -> DeviceBatches:
        """One epoch of training batches on the device: for 1 or N processes a seeded shuffle per epoch, each rank
        its own share (`training_plan`)."""
        plan = training_plan(len(data), self.batch_size, self.recipe.seed, epoch, self.runtime.rank,
                             self.runtime.world_size)
        return DeviceBatches(data, plan, self.runtime.device)

    def _flip_generator(self, epoch: int) -> torch.Generator:
        """The epoch's augmentation draws, on the device (no copy of the draws to it in every step)."""
        generator = torch.Generator(device=self.runtime.device)
        return generator.manual_seed(self.recipe.seed * 1_000_003 + epoch * 1_009 + self.runtime.rank)

    def _endless(self, data: CachedRows) -> Iterator:
        """Network inputs (not augmented) and counts, round after round of shuffled batches."""
        for round_ in itertools.count():
            for batch, counts in self._batches(data, 10_000 + round_):
                yield self.inputs.train_batch(batch, None), counts

    def _set_trainable(self, phase: Phase) -> None:
        set_body_trainable(self.model, self.recipe.backbone, phase.train_body)
        if self.front:
            self.front.freeze()

    # ---- one epoch -----------------------------------------------------------------------
    def _train_epoch(self, model: nn.Module, data: CachedRows, optimizer, phase: Phase, t0: int, epoch: int) -> dict:
        model.train()
        loader = self._batches(data, epoch)
        k = self.data.num_classes
        totals = torch.zeros(2 + k * k, dtype=torch.float64, device=self.runtime.device)  # loss sum, n, confusion
        flips = self._flip_generator(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.recipe.epochs} ({phase.image_size}px)", unit="batch",
                   leave=False, disable=not self.progress)
        shown = time.perf_counter()
        for i, (batch, counts) in enumerate(bar):
            set_lr(optimizer, lr_factor(self.recipe, t0 + i / len(loader), phase.epochs))
            x = self.inputs.train_batch(batch, flips)
            loss, logits = train_step(model, x, counts, self.loss_fn, optimizer, self.runtime)
            totals[0] += loss * len(counts)
            totals[1] += len(counts)
            totals[2:] += torch.bincount(counts * k + logits.argmax(dim=1), minlength=k * k)
            if self.progress and time.perf_counter() - shown > PROGRESS_SECONDS:
                bar.set_postfix(loss=f"{totals[0].item() / totals[1].item():.3f}")
                shown = time.perf_counter()
        summed = self.runtime.all_sum(totals).cpu().numpy()
        confusion = summed[2:].reshape(k, k)
        return {"train_loss": float(summed[0] / max(summed[1], 1)), **confusion_summary(confusion, "train"),
                "lr": optimizer.param_groups[-1]["lr"]}

    def predict(self, split: Split, size: int, progress: bool = False, desc: str = "evaluating") -> np.ndarray:
        """Probabilities for `split` at `size` px with the current weights, on every rank.

        Under DDP every rank must call it: each predicts its share (see `evaluate.predict`).
        """
        data = self.inputs.dataset(size, split.rows, split.counts)
        return predict(self.net, data, lambda net, batch: self.inputs.probabilities(net, batch, self.recipe.tta),
                       self.runtime, progress=progress, desc=desc)

    def _validate(self, size: int) -> dict:
        return score(self.predict(self.data.val, size), self.data.val.counts, self.data.num_classes)

    def _improved(self, state: FitState, value: float) -> bool:
        if state.best_score is None:
            return True
        return value < state.best_score - 1e-6 if MONITORS[self.recipe.monitor] == "min" \
            else value > state.best_score + 1e-6

    # ---- the recipe ----------------------------------------------------------------------
    def _sweep(self, phase: Phase, model: nn.Module, data: CachedRows) -> LRCurve:
        optimizer = make_optimizer(self.model, self.recipe, phase, lr=1.0)  # only the groups' ratios matter
        return lr_sweep(model, self._endless(data), self.loss_fn, optimizer, self.runtime,
                        steps=self.recipe.lr_finder_steps)

    def find_lr(self) -> LRCurve:
        """LR-finder sweep for the recipe's first phase, from the model as it is (weights restored after)."""
        phase = self.recipe.phases[0]
        self._set_trainable(phase)
        return self._sweep(phase, self.runtime.wrap(self.net), self._train_data(phase.image_size))

    def _phase_lr(self, index: int, phase: Phase, state: FitState, model: nn.Module, data: CachedRows) -> float:
        """The phase's lr: fixed by the recipe (scaled to the batch, `Recipe.phase_lr`), or found by a sweep at the
        batch it trains with (once: a resumed run reuses it)."""
        fixed = self.recipe.phase_lr(phase)
        if fixed is not None:
            return fixed
        if str(index) not in state.phase_lrs:
            curve = self._sweep(phase, model, data)
            if self.runtime.is_main and self.log_curve:
                self.log_curve(f"phase {index}", curve)
            state.phase_lrs[str(index)] = self.runtime.broadcast(curve.suggested)
        return state.phase_lrs[str(index)]

    def fit(self, on_epoch: Callable[[int, dict], None] | None = None) -> FitState:
        """Train (or continue training) to the end of the recipe; the model ends with the best weights.

        Every rank returns rank 0's state and ends with rank 0's best weights.
        """
        state, optimizer_state = FitState(), None
        resumed = self.runtime.on_main(partial(load_checkpoint, self.folder))
        if resumed:
            model_state, optimizer_state, state = resumed
            self.model.load_state_dict(model_state)
            if self.runtime.is_main and self.log_resume:
                self.log_resume(state.epoch)
        for index, phase, first in phase_plan(self.recipe):
            if state.epoch < first + phase.epochs:
                self._run_phase(index, phase, first, state, optimizer_state, on_epoch)
        self.model.load_state_dict(self.runtime.on_main(partial(load_state_dict, self.folder / BEST)))
        return self.runtime.broadcast(state)  # other ranks do not track the best epoch

    def _keep_best(self, state: FitState, values: dict, phase: Phase, epoch: int) -> bool:
        """Rank 0: note the epoch (and save its weights) if it is the best so far; whether the phase stops early."""
        if self._improved(state, values[self.recipe.monitor]):
            state.best_score, state.best_epoch = values[self.recipe.monitor], epoch + 1
            state.best_size, state.best_values, state.bad_epochs = phase.image_size, values, 0
            save_state_dict(self.folder / BEST, self.model.state_dict())
        else:
            state.bad_epochs += 1
        return state.bad_epochs >= self.recipe.patience

    def _run_phase(self, index: int, phase: Phase, first: int, state: FitState, optimizer_state: dict | None,
                   on_epoch: Callable[[int, dict], None] | None) -> None:
        """Epochs `state.epoch` .. end of the phase (a fresh DDP wrapper: trainable parameters changed)."""
        started = time.perf_counter()
        last = first + phase.epochs
        self._set_trainable(phase)
        model = self.runtime.wrap(self.net)
        data = self._train_data(phase.image_size)
        lr = self._phase_lr(index, phase, state, model, data)
        optimizer = make_optimizer(self.model, self.recipe, phase, lr)
        if state.epoch > first:  # resuming inside this phase
            assert optimizer_state is not None  # a resumed state comes with its optimiser's
            optimizer.load_state_dict(optimizer_state)
        else:
            state.bad_epochs = 0
        for epoch in range(state.epoch, last):
            values = self._train_epoch(model, data, optimizer, phase, epoch - first, epoch)
            values.update(self._validate(phase.image_size), phase=index, image_size=phase.image_size)
            stop = self.runtime.on_main(partial(self._keep_best, state, values, phase, epoch))
            state.epoch = last if stop else epoch + 1  # an early stop skips the rest of the phase
            state.seconds += time.perf_counter() - started
            started = time.perf_counter()
            if self.runtime.is_main:
                values["seconds"] = state.seconds
                if self.progress:
                    tqdm.write(_epoch_line(epoch + 1, self.recipe.epochs, values))
                save_checkpoint(self.folder, self.model, optimizer, state)
                if self.log_epoch:
                    self.log_epoch(epoch + 1, values)
                if on_epoch:
                    on_epoch(epoch + 1, values)
            if stop:
                return

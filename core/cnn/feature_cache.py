"""Outputs of a model's frozen lower stages, computed once per photo, image size and mirror image.

A recipe with `frozen_stages` never changes the stem and the early stages (nor their BatchNorm
statistics), so what they make of a photo is the same in every epoch, every phase at that size
and every fold. Computing it once and training the upper stages from it saves the lower stages'
forward pass in every step: on EfficientNet-Lite0 the stem and first blocks run at the highest
resolutions, the memory-bound part of the network on a CPU. Each photo is cached as itself and
as its mirror image, so training can still flip (and validation still average over the mirror).

Features are float16, (rows, 2, H, W, C) like the image cache's rows (channels last, as the
models run), indexed by the image cache's row. In a store they are a file per (lower stages'
weights, size, rows) that fills in as rows are asked for, a row marked done only after it is
flushed, under a file lock (the first process computes, the others find it done); without a
folder they live in memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.cnn.backbones import Normalization, split_model, to_model_input
from core.cnn.inputs import CachedRows, DeviceBatches, coin_flips, in_batches
from core.cnn.runtime import Runtime
from core.store.files import atomic_path
from core.store.layout import frozen_features_files
from core.store.locks import exclusive_lock

CPU_BATCH = 32  # activations under 32 MB, so freed ones are reused (`core.cnn.step.reuse_freed_memory`)
VARIANTS = 2  # the photo and its mirror image


def weights_digest(module: nn.Module) -> str:
    """Identifies a module's weights and buffers (the lower stages' features depend on nothing else)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class FrozenFront:
    """The frozen lower stages of `model` (`lower`), the part that trains (`upper`), and the lower stages'
    outputs per cache row at each size (`features`)."""

    def __init__(self, model: nn.Module, backbone: str, stages: int, images: Callable[[int], np.ndarray],
                 normalization: Normalization, runtime: Runtime, folder: Path | None = None, progress: bool = True):
        self.lower, self.upper = split_model(model, backbone, stages)
        self.images, self.normalization, self.runtime = images, normalization, runtime
        self.folder, self.progress = folder, progress and runtime.is_main
        self.freeze()
        self.key = f"{backbone}-{stages}-{weights_digest(self.lower)}"
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def inputs(self, flip: bool) -> FeatureInputs:
        """Training and prediction of `upper` from the cache (the `ImageInputs` of this front)."""
        return FeatureInputs(self, flip)

    def freeze(self) -> None:
        """No gradients and fixed BatchNorm statistics for the lower stages (call after unfreezing the body)."""
        self.lower.eval()
        for param in self.lower.parameters():
            param.requires_grad_(False)

    def features(self, size: int, rows: np.ndarray) -> np.ndarray:
        """The (cache rows, 2, H, W, C) float16 features at `size`, with at least `rows` computed."""
        images = self.images(size)
        if self.folder is None:
            array, done = self._memory.get(size) or self._allocate_in_memory(images, size)
            self._fill(array, done, images, rows)
            return array
        data, mask, lock = frozen_features_files(self.folder, self.key, size, len(images))
        with exclusive_lock(lock):
            array, done = self._open(data, mask, images, size)
            self._fill(array, done, images, rows)
        return np.load(data, mmap_mode="r")

    def _shape(self, images: np.ndarray, size: int) -> tuple[int, ...]:
        probe = torch.zeros((1, size, size, 3), dtype=torch.uint8)
        with torch.no_grad():
            c, h, w = self.lower(to_model_input(probe, self.normalization).to(self.runtime.device)).shape[1:]
        return (len(images), VARIANTS, h, w, c)

    def _allocate_in_memory(self, images: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        self._memory[size] = np.zeros(self._shape(images, size), np.float16), np.zeros(len(images), bool)
        return self._memory[size]

    def _open(self, data: Path, mask: Path, images: np.ndarray, size: int) -> tuple[np.memmap, np.memmap]:
        if not data.is_file():  # a new file starts with no row done (a done mask without its data is stale)
            np.lib.format.open_memmap(mask, "w+", bool, (len(images),)).flush()
            with atomic_path(data) as tmp:  # sparse: rows take disk space as they are written
                np.lib.format.open_memmap(tmp, "w+", np.float16, self._shape(images, size)).flush()
        return np.load(data, mmap_mode="r+"), np.load(mask, mmap_mode="r+")

    @torch.no_grad()
    def _fill(self, array: np.ndarray, done: np.ndarray, images: np.ndarray, rows: np.ndarray) -> None:
        """Compute the rows of `rows` not yet done, in batches; each batch marked done after it is written."""
        todo = np.unique(np.asarray(rows, dtype=np.int64))
        todo = todo[~done[todo]]
        if not len(todo):
            return
        self.lower.eval()
        # one cache serves every run of these stages, whatever precision its upper stages train in
        # (`Recipe.cpu_bf16`): computed in the device's own precision, bf16 on CUDA and fp32 on a CPU
        precision = dataclasses.replace(self.runtime, training="fp32").autocast
        plan = in_batches(np.arange(len(todo)), self.runtime.predict_batch if self.runtime.cuda else CPU_BATCH)
        batches = DeviceBatches(CachedRows(images, todo, np.zeros(len(todo), np.int64)), plan, self.runtime.device)
        for positions, (batch, _) in tqdm(zip(plan, batches, strict=True), total=len(plan),
                                          desc=f"caching frozen-stage features at {array.shape[2]}x{array.shape[3]} "
                                               f"({images.shape[1]}px photos)", unit="batch", leave=False,
                                          disable=not self.progress):
            chunk = todo[positions]
            for variant, pixels in enumerate((batch, batch.flip(2))):  # W of (N, H, W, 3): a mirror image
                with precision():
                    out = self.lower(to_model_input(pixels, self.normalization))
                array[chunk, variant] = out.permute(0, 2, 3, 1).to(torch.float16).cpu().numpy()
            if isinstance(array, np.memmap):
                array.flush()
            done[chunk] = True
            if isinstance(done, np.memmap):
                done.flush()


def pick_variant(pairs: torch.Tensor, mirror: torch.Tensor | None) -> torch.Tensor:
    """(N, 2, H, W, C) cached pairs -> float (N, C, H, W) channels_last: the mirror image where `mirror`."""
    chosen = pairs[:, 0] if mirror is None else torch.where(mirror.view(-1, 1, 1, 1).to(pairs.device),
                                                             pairs[:, 1], pairs[:, 0])
    return chosen.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)


class FeatureInputs:
    """`ImageInputs` for `front.upper`: the photo's cached features, or its mirror image's where a flip is drawn
    (training) or averaged over (test-time augmentation)."""

    def __init__(self, front: FrozenFront, flip: bool):
        self.front, self.flip, self.device = front, flip, front.runtime.device

    def dataset(self, size: int, rows: np.ndarray, counts: np.ndarray) -> CachedRows:
        """The rows' features (both variants of each) with their counts, read from the feature cache."""
        return CachedRows(self.front.features(size, rows), rows, counts)

    def train_batch(self, pairs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The upper stages' input for a training batch: each photo's mirror image where `generator` draws it."""
        mirror = coin_flips(len(pairs), generator) if generator is not None and self.flip else None
        return pick_variant(pairs.to(self.device, non_blocking=True), mirror)

    def probabilities(self, model: nn.Module, pairs: torch.Tensor, tta: bool) -> torch.Tensor:
        pairs = pairs.to(self.device, non_blocking=True)
        mirrored = torch.ones(len(pairs), dtype=torch.bool, device=pairs.device)
        views = (pick_variant(pairs, None), pick_variant(pairs, mirrored)) if tta else (pick_variant(pairs, None),)
        with self.front.runtime.autocast():
            probs = [model(v).float().softmax(dim=1) for v in views]
        return torch.stack(probs).mean(dim=0)

"""From cached arrays to network inputs on the device, and class probabilities.

`core.cnn.backbones.to_model_input` is the one preprocessing path: training, evaluation, the
counting service (`load_predictor`) and the CNN features of classical models all go through
it, starting from the same uint8 arrays the image cache and `core.data.images.load_rgb` produce.

The input path of training and evaluation: a split is rows of a cache array (`CachedRows`: the
photos of `core.data.cache`, or the frozen-stage features of `core.cnn.feature_cache`, indexed
by the same rows). Each batch leaves the array as one gather in ascending row order (training
shuffles blocks of consecutive rows, `training_plan`), into pinned memory on CUDA, and goes to
the device on a side stream while the batch before it is computed on (`DeviceBatches`). The
square's symmetries (`random_symmetries`) and `to_model_input` then run on the device, on the
whole batch. No Python runs per photo.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.cnn.backbones import Normalization, to_model_input

# Consecutive training rows read together: a batch is batch_size / BLOCK runs of neighbouring photos, each one
# sequential read (1.2 MB at 224 px), so the cache streams from disk with readahead when it is not in memory.
# Neighbours in the cache are neighbours in the collection's file order; 8 keeps 32 of them to a batch of 256.
BLOCK = 8


@dataclass(frozen=True)
class CachedRows:
    """Rows of a cache array (first axis) with their counts: a split's photos, or their frozen-stage features."""

    array: np.ndarray
    rows: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.counts):
            raise ValueError("rows and counts differ in length")
        if len(self.rows) and not 0 <= int(np.min(self.rows)) <= int(np.max(self.rows)) < len(self.array):
            raise ValueError(f"rows outside the cache's {len(self.array)}")

    def __len__(self) -> int:
        return len(self.rows)

    def by_row(self) -> CachedRows:
        """The same photos in ascending row order, so that neighbouring positions are neighbours in the array."""
        order = np.argsort(self.rows, kind="stable")
        return CachedRows(self.array, np.asarray(self.rows)[order], np.asarray(self.counts)[order])


def block_order(n: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """Positions 0..n-1 in shuffled blocks of `block` consecutive positions (the last block may be shorter)."""
    starts = rng.permutation(np.arange(0, n, block))
    order = (starts[:, None] + np.arange(block)).ravel()
    return order[order < n]


def rank_share(order: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s contiguous stretch of `order`, of `world` equal stretches: the last is filled up from the
    start of `order` (at most world - 1 positions twice), so every rank runs the same number of steps, as DDP
    needs (`DistributedSampler` pads the same way)."""
    per = -(-len(order) // world)
    return np.resize(order, per * world)[rank * per:(rank + 1) * per]


def training_plan(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  block: int = BLOCK) -> list[np.ndarray]:
    """This rank's batches for one epoch over `n` photos sorted by row (`CachedRows.by_row`): positions, each
    batch ascending. Every photo is in one rank's share once per epoch (`rank_share`); a short last batch is
    left out when there are full ones (a batch of one photo breaks BatchNorm on 1x1 feature maps)."""
    if n < 1:
        raise ValueError("no photos to train on")
    share = rank_share(block_order(n, block, np.random.default_rng([seed, epoch])), rank, world)
    steps = max(1, len(share) // batch_size)
    return [np.sort(share[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]


def in_batches(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`positions` in order, `batch_size` at a time (the last batch shorter)."""
    return [positions[i:i + batch_size] for i in range(0, len(positions), batch_size)]


class DeviceBatches:
    """(array rows, counts) of `data` on `device`, a batch per entry of `plan` (positions into `data`), one ahead.

    A batch is one `np.take` from the array into a new tensor, pinned on CUDA, whose copy to the device
    starts on a side stream before the batch ahead of it is handed out: it runs while that one is
    computed on. On the CPU the batch is the tensor read. Rows in ascending order read the array
    front to back; a memory-mapped cache then streams from disk.
    """

    def __init__(self, data: CachedRows, plan: Sequence[np.ndarray], device: torch.device):
        self.data, self.plan, self.device = data, plan, device
        self.dtype = torch.from_numpy(np.empty(0, data.array.dtype)).dtype
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loads = map(self._start, self.plan)
        ahead = next(loads, None)
        while ahead is not None:
            current, ahead = ahead, next(loads, None)
            yield self._ready(current)

    def _start(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.data.rows[positions]
        pinned = self.stream is not None
        host = torch.empty((len(rows), *self.data.array.shape[1:]), dtype=self.dtype, pin_memory=pinned)
        # rows are checked in CachedRows; "clip" keeps numpy from buffering `out` as "raise" does
        np.take(self.data.array, rows, axis=0, out=host.numpy(), mode="clip")
        counts = torch.from_numpy(np.asarray(self.data.counts[positions], dtype=np.int64))
        if self.stream is None:
            return host, counts
        with torch.cuda.stream(self.stream):
            return host.to(self.device, non_blocking=True), counts.pin_memory().to(self.device, non_blocking=True)

    def _ready(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch, once the compute stream has waited for its copy (and owns its memory)."""
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            for tensor in batch:
                tensor.record_stream(current)
        return batch


def coin_flips(n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` fair coin flips (bool), drawn from `generator` on its device."""
    return torch.rand(n, generator=generator, device=generator.device) < 0.5


def random_symmetries(images: torch.Tensor, generator: torch.Generator, flip: bool = True,
                      rotate: bool = False) -> torch.Tensor:
    """Each image of an (N, H, W, C) batch mirrored left-right (`flip`) and/or turned by a multiple of 90
    degrees (`rotate`, square images), at random, on the batch's device (`generator` must be there too).

    Bins are photographed from above: a mirrored or turned bin is still a bin with the same count,
    and no symmetry of the square crops anything out. Every one of the 8 is a choice of three
    reflections, each drawn per image: a transpose (`t`), an upside-down flip (`a`), a mirror (`b`).
    With `flip` and `rotate` all three are drawn (the 8, evenly); with `rotate` alone b = t xor a
    (an even number of reflections: the 4 rotations, evenly); with `flip` alone only `b`.
    """
    if rotate and images.shape[1] != images.shape[2]:
        raise ValueError(f"90-degree turns need square images, got {tuple(images.shape[1:3])}")

    def where(chosen: torch.Tensor, changed: torch.Tensor, unchanged: torch.Tensor) -> torch.Tensor:
        return torch.where(chosen.view(-1, 1, 1, 1), changed, unchanged)

    n = images.shape[0]
    if rotate:
        t, a = coin_flips(n, generator), coin_flips(n, generator)
        images = where(t, images.transpose(1, 2), images)
        images = where(a, images.flip(1), images)
    if flip or rotate:
        b = coin_flips(n, generator) if flip else t ^ a
        images = where(b, images.flip(2), images)
    return images


@torch.no_grad()
def network_probabilities(model: nn.Module, images: torch.Tensor, normalization: Normalization, tta: bool,
                          autocast: AbstractContextManager | None = None) -> torch.Tensor:
    """Softmax probabilities (N, classes) for a uint8 batch already on the model's device.

    With `tta` the prediction is the mean of the image's and its mirror's probabilities.
    """
    x = to_model_input(images, normalization)
    views = (x, x.flip(3)) if tta else (x,)
    with autocast or nullcontext():
        probs = [model(v).float().softmax(dim=1) for v in views]
    return torch.stack(probs).mean(dim=0)


class ImageInputs:
    """Training and prediction from the uint8 image cache: the symmetries on the uint8 batch, then
    `to_model_input`, on the device. `FrozenFront.inputs` is the same for cached frozen-stage features."""

    def __init__(self, images: Callable[[int], np.ndarray], normalization: Normalization, device: torch.device,
                 flip: bool, rotate: bool, autocast: Callable[[], AbstractContextManager]):
        self.images, self.normalization, self.device = images, normalization, device
        self.flip, self.rotate, self.autocast = flip, rotate, autocast  # the precision predictions count in

    def dataset(self, size: int, rows: np.ndarray, counts: np.ndarray) -> CachedRows:
        return CachedRows(self.images(size), rows, counts)

    def train_batch(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The network's input for a training batch, augmented with `generator`'s draws (None: as it is)."""
        images = images.to(self.device, non_blocking=True)
        if generator is not None:
            images = random_symmetries(images, generator, self.flip, self.rotate)
        return to_model_input(images, self.normalization)

    def probabilities(self, model: nn.Module, images: torch.Tensor, tta: bool) -> torch.Tensor:
        return network_probabilities(model, images.to(self.device, non_blocking=True), self.normalization, tta,
                                     self.autocast())

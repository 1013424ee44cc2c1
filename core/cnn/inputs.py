"""From cached uint8 pixels to network inputs and class probabilities.

`core.cnn.backbones.to_model_input` is the one preprocessing path: training, evaluation, the
counting service (`load_predictor`) and the CNN features of classical models all go through
it, starting from the same uint8 arrays the image cache and `core.data.images.load_rgb` produce.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.cnn.backbones import Normalization, to_model_input


def mirror_mask(n: int, generator: torch.Generator) -> torch.Tensor:
    """Which of `n` photos to mirror: about half, drawn from `generator`."""
    return torch.rand(n, generator=generator) < 0.5


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror about half of a uint8 (N, H, W, 3) batch left-right (a bin's contents have no handedness)."""
    mirror = mirror_mask(images.shape[0], generator)
    return torch.where(mirror.view(-1, 1, 1, 1).to(images.device), images.flip(2), images)


def random_rotation(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Turn each square uint8 (N, S, S, 3) image by a random multiple of 90 degrees.

    Bins are photographed from above, so a turned bin is still a bin with the same count; with
    `random_flip` this covers all eight symmetries of the square and crops nothing out.
    """
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"90-degree turns need square images, got {tuple(images.shape[1:3])}")
    turns = torch.randint(0, 4, (images.shape[0],), generator=generator)
    out = images.clone()
    for k in (1, 2, 3):
        chosen = (turns == k).nonzero().flatten().to(images.device)
        if len(chosen):
            out[chosen] = images[chosen].rot90(k, dims=(1, 2))
    return out


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


class CachedImages(Dataset):
    """Rows of the image cache (a uint8 memmap) with their counts, one (pixels, count) an item."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, counts: np.ndarray):
        if len(rows) != len(counts):
            raise ValueError("rows and counts differ in length")
        self.images, self.rows, self.counts = images, np.asarray(rows), np.asarray(counts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[self.rows[index]])), int(self.counts[index])


def batches(dataset: Dataset, batch_size: int, pin_memory: bool, workers: int, sampler=None,
            drop_last: bool = False) -> DataLoader:
    """A loader in the dataset's order, or the sampler's."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last)


class ImageInputs:
    """Training and prediction from the uint8 image cache: augmentation on the uint8 batch, then
    `to_model_input` on the device. `FrozenFront.inputs` is the same for cached frozen-stage features."""

    def __init__(self, images, normalization: Normalization, device: torch.device, flip: bool, rotate: bool,
                 autocast: Callable[[], AbstractContextManager]):
        self.images, self.normalization, self.device = images, normalization, device
        self.flip, self.rotate, self.autocast = flip, rotate, autocast  # the precision predictions count in

    def dataset(self, size: int, rows: np.ndarray, counts: np.ndarray) -> CachedImages:
        return CachedImages(self.images(size), rows, counts)

    def train_batch(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The network's input for a training batch, augmented with `generator`'s draws (None: as it is)."""
        if generator is not None and self.flip:
            images = random_flip(images, generator)
        if generator is not None and self.rotate:
            images = random_rotation(images, generator)
        return to_model_input(images.to(self.device, non_blocking=True), self.normalization)

    def probabilities(self, model: nn.Module, images: torch.Tensor, tta: bool) -> torch.Tensor:
        return network_probabilities(model, images.to(self.device, non_blocking=True), self.normalization, tta,
                                     self.autocast())

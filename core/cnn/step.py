"""One optimisation step on a uint8 batch: the same for training and for the LR finder."""
from __future__ import annotations

import torch
from torch import nn

from core.backbones import Normalization, to_model_input
from core.cnn.runtime import Runtime


def train_step(model: nn.Module, images: torch.Tensor, counts: torch.Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, runtime: Runtime,
               normalization: Normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, update; returns the (detached) loss and logits of this rank's batch."""
    images = images.to(runtime.device, non_blocking=True)
    counts = counts.to(runtime.device, non_blocking=True)
    x = to_model_input(images, normalization)
    with runtime.autocast():
        logits = model(x)
    loss = loss_fn(logits, counts)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()

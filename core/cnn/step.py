"""One optimisation step on a batch of network inputs: the same for training and for the LR finder."""
from __future__ import annotations

import torch
from torch import nn

from core.cnn.runtime import Runtime


def train_step(model: nn.Module, x: torch.Tensor, counts: torch.Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, update on `x` (the network's input, on the device); returns the (detached) loss and
    logits of this rank's batch."""
    counts = counts.to(runtime.device, non_blocking=True)
    with runtime.autocast():
        logits = model(x)
    loss = loss_fn(logits, counts)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()

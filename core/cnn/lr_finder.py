"""Learning-rate finder (Smith 2017): train for one exponential sweep of learning rates, watch the loss.

The suggestion is the lr where the smoothed loss falls fastest (steepest negative slope
against log lr), looked for before the loss bottoms out. The model's weights are restored
afterwards, so the sweep leaves no trace on training.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.cnn.runtime import Runtime
from core.cnn.step import train_step


@dataclass
class LRCurve:
    lrs: list[float]
    losses: list[float]  # smoothed (bias-corrected exponential moving average)
    suggested: float


def suggest_lr(lrs, losses) -> float:
    """The lr of steepest descent of `losses` against log(lr), before the loss minimum.

    The first tenth of the sweep is left out of the search: there the moving average rests on
    a few batches, and one easy batch can look like the lowest loss of the whole sweep. Slopes
    are taken over windows of 10% of the sweep (about a decade of lr in a 100-step sweep), so the
    batch-to-batch noise of a flat stretch cannot outrun the real descent before the minimum.
    """
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(lrs) < 2:
        raise ValueError("an lr curve needs at least two points")
    skip = min(max(1, len(lrs) // 10), len(lrs) - 1)
    lowest = skip + int(np.nanargmin(losses[skip:]))
    window = max(1, len(lrs) // 10)
    if lowest - skip <= window:  # no descent to speak of: stay well below where the loss bottoms out
        return float(lrs[lowest] / 10)
    log_lrs = np.log(lrs)
    starts = np.arange(skip, lowest - window + 1)
    slopes = (losses[starts + window] - losses[starts]) / (log_lrs[starts + window] - log_lrs[starts])
    return float(lrs[starts[int(np.argmin(slopes))] + window // 2])


def lr_sweep(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
             optimizer: torch.optim.Optimizer, runtime: Runtime, start_lr: float = 1e-7, end_lr: float = 10.0,
             steps: int = 100, smoothing: float = 0.98,
             diverge: float = 4.0) -> LRCurve:
    """Sweep the lr of `optimizer`'s last group from `start_lr` to `end_lr` over `steps` batches.

    Groups keep their ratios (differential lrs sweep together). Stops early once the smoothed
    loss exceeds `diverge` x its minimum. Losses are averaged over ranks, so every rank stops
    at the same step. `batches` yields (network input on the device, counts). `model` may be DDP-wrapped;
    its weights are restored at the end.
    """
    module: nn.Module = getattr(model, "module", model)
    saved = copy.deepcopy(module.state_dict())
    top = max(g["base_lr"] for g in optimizer.param_groups)
    ratio = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs, losses, average, best = [], [], 0.0, math.inf
    model.train()
    try:
        for i in range(steps):
            x, counts = next(batches)
            lr = start_lr * ratio**i
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] / top * lr
            step_loss, _ = train_step(model, x, counts, loss_fn, optimizer, runtime)
            loss = float(runtime.all_sum(step_loss).item()) / runtime.world_size
            average = smoothing * average + (1 - smoothing) * loss
            smoothed = average / (1 - smoothing ** (i + 1))
            if not math.isfinite(smoothed):
                break
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > diverge * best:
                break
    finally:
        module.load_state_dict(saved)
    return LRCurve(lrs, losses, suggest_lr(lrs, losses))

"""What training minimises and how: the counting loss, the optimiser with its layer groups,
and the learning-rate shape inside a phase.

The lr is a pure function of the position in the phase (fractional epochs), so a resumed run
continues the schedule exactly from its checkpoint epoch without a scheduler's state.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.cnn.backbones import head_parameters, param_groups
from core.cnn.recipes import Phase, Recipe

DIFFERENTIAL_DIVISORS = (9.0, 3.0, 1.0)  # early, middle, last layer groups: lr/9, lr/3, lr


def class_weights(counts: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    """Cross-entropy weights from train-set class frequencies, normalised to mean 1 over present classes.

    "balanced" weighs each class by 1/frequency, "sqrt" by 1/sqrt(frequency) (gentler: the rarest
    count has a handful of photos). Absent classes get weight 0.
    """
    if mode == "none":
        return None
    freq = np.bincount(np.asarray(counts, dtype=int), minlength=num_classes).astype(float)
    present = freq > 0
    weights = np.zeros(num_classes)
    power = {"balanced": 1.0, "sqrt": 0.5}[mode]
    weights[present] = (freq[present] / freq.sum()) ** -power
    weights[present] /= weights[present].mean()
    return torch.tensor(weights, dtype=torch.float32)


class CountingLoss(nn.Module):
    """Cross-entropy against soft count targets, plus `count_weight` x the squared error of the expected count.

    Plain cross-entropy treats "4 instead of 5" like "1 instead of 5". With `ordinal_sigma` the
    target spreads over neighbouring counts (a Gaussian of that width around the true count), so
    the network learns that counts are ordered; the expected-count term makes far-off guesses cost
    more, as the RMSE does. `label_smoothing` mixes in a uniform share. Class weights weigh each
    sample by its true count's weight (a weighted mean, like `F.cross_entropy(weight=...)`).
    """

    weights: torch.Tensor  # buffers, registered in __init__
    values: torch.Tensor

    def __init__(self, num_classes: int, weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
                 count_weight: float = 0.0, ordinal_sigma: float = 0.0):
        super().__init__()
        self.register_buffer("weights", weights if weights is not None else torch.ones(num_classes))
        self.register_buffer("values", torch.arange(num_classes, dtype=torch.float32))
        self.label_smoothing, self.count_weight, self.ordinal_sigma = label_smoothing, count_weight, ordinal_sigma

    def targets(self, target: torch.Tensor) -> torch.Tensor:
        """(N, classes) target distributions."""
        if self.ordinal_sigma > 0:
            distance = self.values.view(1, -1) - target.float().view(-1, 1)
            soft = torch.softmax(-distance**2 / (2 * self.ordinal_sigma**2), dim=1)
        else:
            soft = F.one_hot(target, len(self.values)).float()
        return (1 - self.label_smoothing) * soft + self.label_smoothing / len(self.values)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        sample_weights = self.weights[target]
        per_sample = -(self.targets(target) * logits.log_softmax(dim=1)).sum(dim=1)
        loss = (sample_weights * per_sample).sum() / sample_weights.sum().clamp_min(1e-12)
        if self.count_weight:
            expected = logits.softmax(dim=1) @ self.values
            loss = loss + self.count_weight * ((expected - target.float()) ** 2).mean()
        return loss


def make_optimizer(model: nn.Module, recipe: Recipe, phase: Phase, lr: float) -> torch.optim.Optimizer:
    """The phase's optimiser over the trainable parameters; each group keeps its `base_lr`.

    Head-only phases train the head; differential phases use the backbone's early / middle /
    last groups at lr/9, lr/3, lr; otherwise everything trains at lr.
    """
    if not phase.train_body:
        groups = [(head_parameters(model, recipe.backbone), lr)]
    elif phase.differential:
        groups = list(zip(param_groups(model, recipe.backbone), (lr / d for d in DIFFERENTIAL_DIVISORS), strict=True))
    else:
        groups = [(list(model.parameters()), lr)]
    param_dicts = [{"params": [p for p in params if p.requires_grad], "lr": group_lr, "base_lr": group_lr}
                   for params, group_lr in groups]
    param_dicts = [g for g in param_dicts if g["params"]]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(param_dicts, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               nesterov=recipe.momentum > 0)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(param_dicts, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(param_dicts, lr=lr, weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, t: float, phase_epochs: int) -> float:
    """Multiplier of each group's base lr after `t` (fractional) epochs of a `phase_epochs`-long phase."""
    if recipe.schedule == "step":
        factor = recipe.step_gamma ** math.floor(t / recipe.step_epochs)
    elif recipe.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(t / phase_epochs, 1.0)))
    elif recipe.schedule == "sgdr":  # cosine annealing, restarting after cycles of T0, T0*m, T0*m^2, ...
        cycle, start = recipe.restart_epochs, 0.0
        while t >= start + cycle:
            start, cycle = start + cycle, cycle * recipe.restart_mult
        factor = 0.5 * (1 + math.cos(math.pi * (t - start) / cycle))
    else:
        factor = 1.0
    if recipe.warmup_epochs and t < recipe.warmup_epochs:
        factor *= (t + 1e-3) / recipe.warmup_epochs
    return factor


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor

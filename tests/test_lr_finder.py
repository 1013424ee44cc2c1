"""The learning-rate finder: suggestion, sweep mechanics, and curves in the store."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from core.cnn import find_lr, train_cnn
from core.cnn.inputs import to_model_input
from core.cnn.lr_finder import lr_sweep, suggest_lr
from core.cnn.runtime import Runtime
from core.store.database import Store


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = np.logspace(-6, 1, 71)
    # the loss falls fastest at lr 1e-3, bottoms out near 1e-1, then explodes
    losses = 2 - np.tanh(np.log10(lrs) + 3) + np.where(lrs > 0.1, (np.log10(lrs) + 1) ** 2 * 20, 0)
    assert suggest_lr(lrs, losses) == pytest.approx(1e-3, rel=0.5)
    assert suggest_lr([1e-3, 1e-2, 1e-1], [1.0, 5.0, 9.0]) == pytest.approx(1e-3)  # no descent at all


def test_suggestion_ignores_a_lucky_first_batch():
    """As seen on the shared sample: the first smoothed loss (one easy batch) was the sweep's lowest."""
    rng = np.random.default_rng(0)
    lrs = np.logspace(-7, 0.5, 93)
    losses = 3.3 - 0.15 * (np.tanh((np.log10(lrs) + 2) * 2) + 1) / 2 + rng.normal(0, 0.01, 93)
    losses = np.where(lrs > 0.05, losses + (np.log10(lrs) + 1.3) ** 2 * 3, losses)
    losses[0] = 3.05
    assert 2e-3 < suggest_lr(lrs, losses) < 3e-2


def test_suggestion_is_not_won_by_noise_on_a_flat_stretch():
    """As seen on the sample's 58-step head-only sweep: the loss wobbles (by 0.05) for five decades,
    then falls for two before it bottoms out near 3e-2; the wobble must not win (it gave 4e-6)."""
    rng = np.random.default_rng(1)
    lrs = np.logspace(-7, 0.7, 58)
    decades = np.log10(lrs)
    losses = (3.85 - 0.2 * np.clip((decades + 3.5) / 2, 0, 1) + rng.normal(0, 0.025, 58)
              + np.where(decades > -1.5, (decades + 1.5) ** 2 * 3, 0))
    assert 1e-3 < suggest_lr(lrs, losses) < 3e-2


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_sweep_is_exponential_stops_on_divergence_and_restores_weights():
    torch.manual_seed(0)
    model = Linear()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 256, (64, 2, 2, 3), dtype=torch.uint8)
    counts = torch.randint(0, 3, (64,))  # not separable: a huge lr makes the loss explode
    batches = itertools.repeat((to_model_input(images, ((0.5,) * 3, (0.25,) * 3)), counts))
    optimizer = torch.optim.SGD([{"params": model.parameters(), "lr": 1.0, "base_lr": 1.0}], lr=1.0)
    curve = lr_sweep(model, batches, nn.CrossEntropyLoss(), optimizer, Runtime(torch.device("cpu")),
                     start_lr=1e-5, end_lr=1e4, steps=90)
    ratios = np.diff(np.log(curve.lrs))
    assert np.allclose(ratios, ratios[0]) and curve.lrs[0] == pytest.approx(1e-5)
    assert len(curve.lrs) < 90  # a lr of 1e4 diverges long before the end
    assert min(curve.losses) < curve.losses[0] and curve.lrs[0] < curve.suggested < curve.lrs[-1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lr_find_command_stores_a_curve(tiny_collection, store_root):
    store = Store(store_root)
    overrides = {"phases": [{"epochs": 1, "image_size": 32, "train_body": False}], "batch_size": 8,
                 "lr_finder_steps": 12}
    exp_id = find_lr(tiny_collection, "quick", store, overrides, progress=False)
    exp = store.experiment(exp_id)
    (curve,) = store.lr_curves(exp_id)
    assert exp.family == "lr_finder" and exp.status == "finished" and not exp.is_model
    assert 2 <= len(curve["lrs"]) <= 12 and curve["suggested"] == exp.suggested_lr
    assert find_lr(tiny_collection, "quick", store, overrides, progress=False) == exp_id  # reused


def test_phase_without_lr_uses_the_finder_and_records_its_curve(tiny_collection, store_root):
    store = Store(store_root)
    overrides = {"phases": [{"epochs": 1, "image_size": 32, "train_body": False, "lr": 1e-2},
                            {"epochs": 1, "image_size": 32, "differential": True}],
                 "batch_size": 8, "lr_finder_steps": 10}
    exp_id = train_cnn(tiny_collection, "quick", store, overrides, progress=False)
    (curve,) = store.lr_curves(exp_id)
    assert curve["name"] == "phase 1"
    assert store.experiment(exp_id).phase_lrs == {"1": curve["suggested"]}
    epochs = store.epochs(exp_id)
    assert epochs["lr"].iloc[1] <= curve["suggested"]  # the phase ran at (a schedule below) the suggestion

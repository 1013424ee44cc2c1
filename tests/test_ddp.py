"""Two CPU processes on gloo run the training loop under DDP and end with the same weights."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

from core.backbones import build_model
from core.cnn.loop import Split, Trainer, TrainingData
from core.cnn.recipes import get_recipe
from core.cnn.runtime import setup_runtime, shutdown

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    runtime = setup_runtime()
    try:
        rng = np.random.default_rng(0)  # the same data on both ranks; the sampler splits it
        images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
        counts = np.arange(12) % 6
        data = TrainingData(lambda size: images, Split(np.arange(8), counts[:8]), Split(np.arange(8, 12), counts[8:]), 6)
        recipe = get_recipe("quick", {"phases": [{"epochs": 1, "image_size": 32, "lr": 0.05}], "batch_size": 4,
                                      "optimizer": "sgd", "schedule": "constant", "warmup_epochs": 0})
        torch.manual_seed(rank)  # different heads: DDP must start every rank from rank 0's weights
        model, _ = build_model(recipe.backbone, 6, pretrained=False)
        model = runtime.prepare(model)
        initial = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        steps = []
        Trainer(model, recipe, data, runtime, Path(folder), progress=False).fit(on_epoch=lambda e, v: steps.append(e))
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"initial": initial, "weights": weights}, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        shutdown(runtime)


def test_two_gloo_processes_take_a_step_and_agree(tmp_path):
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert not torch.equal(r0["initial"], r1["initial"])  # they did start apart
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.equal(r0["weights"], r0["initial"])  # and a step was taken

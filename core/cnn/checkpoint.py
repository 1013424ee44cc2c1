"""Per-epoch training state on disk, written atomically so a kill never leaves half a file."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.store.files import atomic_path

CHECKPOINT = "checkpoint.pt"  # the latest epoch: weights, optimiser, progress
BEST = "best.pt"  # weights of the best validation epoch so far


@dataclass
class FitState:
    """Progress through a recipe. `epoch` counts completed epochs of the whole schedule."""

    epoch: int = 0
    best_score: float | None = None
    best_epoch: int = 0
    best_size: int = 0
    best_values: dict = field(default_factory=dict)
    bad_epochs: int = 0
    phase_lrs: dict = field(default_factory=dict)  # "phase index" -> lr from the LR finder
    seconds: float = 0.0


def save_state_dict(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state_dict(path: Path) -> dict:
    """Tensors only, loaded on the CPU (`weights_only`: a file cannot run code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: FitState) -> None:
    save_state_dict(folder / CHECKPOINT,
                    {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": asdict(state)})


def load_checkpoint(folder: Path) -> tuple[dict, dict, FitState] | None:
    """(model state, optimiser state, progress) of the last completed epoch, or None if there is none."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    saved = load_state_dict(path)
    return saved["model"], saved["optimizer"], FitState(**saved["state"])

"""A trained CNN on disk (weights + the settings needed to use them) and the counting function over it."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.backbones import build_model
from core.cnn.checkpoint import load_state_dict, save_state_dict
from core.cnn.inputs import network_probabilities
from core.cnn.runtime import local_runtime
from core.files import atomic_path

MODEL_FILE = "model.pt"  # state_dict only
CONFIG_FILE = "model.json"  # backbone, num_classes, image_size, normalization, tta


def save_model(folder: Path, model: nn.Module, config: dict) -> str:
    """Write the weights and their config atomically; returns the weights' file name."""
    save_state_dict(folder / MODEL_FILE, {k: v.cpu() for k, v in model.state_dict().items()})
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    return MODEL_FILE


def load_model(folder: Path, artifact: str = MODEL_FILE) -> tuple[nn.Module, dict]:
    """The saved network (eval mode, on the CPU) and its config."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    model, _ = build_model(config["backbone"], config["num_classes"], pretrained=False)
    model.load_state_dict(load_state_dict(folder / artifact))
    return model.eval(), config


def load_predictor(folder: Path, artifact: str = MODEL_FILE, num_classes: int = 0,
                   batch_size: int = 64, precision: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 (N, image_size, image_size, 3) RGB -> (N, num_classes) uncalibrated probabilities, as in
    training's evaluation. The weights' file and class count come from `folder`'s saved config.
    `precision` ("bf16" or "fp32") defaults to the device's counting precision
    (`core.cnn.runtime.counting_precision`)."""
    model, config = load_model(folder, artifact)
    if num_classes and config["num_classes"] != num_classes:
        raise ValueError(f"{folder} holds a model of {config['num_classes']} classes, expected {num_classes}")
    runtime = local_runtime(precision)
    model = runtime.prepare(model)
    normalization = (tuple(config["mean"]), tuple(config["std"]))
    size = config["image_size"]

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 images of shape (N, {size}, {size}, 3), "
                             f"got {images.dtype} {images.shape}")
        out = [network_probabilities(model, torch.from_numpy(np.array(images[i:i + batch_size])).to(runtime.device),
                                   normalization, config["tta"], runtime.counting_autocast()).cpu()
               for i in range(0, len(images), batch_size)]
        if not out:
            return np.zeros((0, config["num_classes"]))
        return torch.cat(out).numpy().astype(np.float64)

    return predict

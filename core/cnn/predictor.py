"""A trained CNN on disk (weights + the settings needed to use them) and the counting function over it.

The counting function runs the network in one of two engines (`core.cnn.runtime.counting_engine`):
PyTorch, as training does, or ONNX Runtime over the same network exported once into the model's
folder (`served_graph`), which counts faster on a CPU. Both compute `network_probabilities`: the
normalisation and the test-time flip averaging are inside the exported graph.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.cnn.backbones import build_model
from core.cnn.checkpoint import load_state_dict, save_state_dict
from core.cnn.inputs import Normalization, network_probabilities
from core.cnn.runtime import counting_engine, local_runtime
from core.store.files import atomic_path

MODEL_FILE = "model.pt"  # state_dict only
CONFIG_FILE = "model.json"  # backbone, num_classes, image_size, normalization, tta
OPSET = 17
INPUT, OUTPUT = "images", "probs"  # the exported graph's input and output names

Predictor = Callable[[np.ndarray], np.ndarray]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CountingNetwork:
    """A loaded network's counting function, and what computes it."""

    predict: Predictor  # uint8 (N, S, S, 3) -> (N, classes) uncalibrated probabilities
    engine: str  # "onnxruntime" or "torch" (`core.cnn.runtime.ENGINES`)
    precision: str  # "fp32" or "bf16"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)


def save_model(folder: Path, model: nn.Module, config: dict) -> str:
    """Write the weights and their config atomically; returns the weights' file name."""
    save_state_dict(folder / MODEL_FILE, {k: v.cpu() for k, v in model.state_dict().items()})
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    return MODEL_FILE


def read_config(folder: Path) -> dict:
    """The saved model's settings (`CONFIG_FILE`), without loading its weights."""
    return json.loads((folder / CONFIG_FILE).read_text())


def load_model(folder: Path, artifact: str = MODEL_FILE) -> tuple[nn.Module, dict]:
    """The saved network (eval mode, on the CPU) and its config."""
    config = read_config(folder)
    model, _ = build_model(config["backbone"], config["num_classes"], pretrained=False)
    model.load_state_dict(load_state_dict(folder / artifact))
    return model.eval(), config


def _in_batches(run: Callable[[np.ndarray], np.ndarray], size: int, classes: int, batch_size: int) -> Predictor:
    """`run` over uint8 (N, size, size, 3) photos, `batch_size` at a time, as float64 (N, classes);
    anything else is refused with what was expected."""

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"expected uint8 images of shape (N, {size}, {size}, 3), "
                             f"got {images.dtype} {images.shape}")
        out = [run(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, classes))

    return predict


class CountingGraph(nn.Module):
    """uint8 (N, S, S, 3) photos -> (N, classes) probabilities: `network_probabilities` as one module."""

    def __init__(self, model: nn.Module, normalization: Normalization, tta: bool):
        super().__init__()
        self.model, self.normalization, self.tta = model.eval(), normalization, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return network_probabilities(self.model, images, self.normalization, self.tta)


def export_graph(model: nn.Module, config: dict, out: Path) -> None:
    """Write `model` (with its saved `config`) as an ONNX graph at `out`, atomically: uint8 photos in,
    uncalibrated probabilities out, any batch size."""
    graph = CountingGraph(model, (tuple(config["mean"]), tuple(config["std"])), config["tta"])
    size = config["image_size"]
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # the TorchScript-based exporter: the dynamo one needs onnxscript, one more package for the same graph
        torch.onnx.export(graph, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)


def served_graph(folder: Path, artifact: str = MODEL_FILE) -> Path:
    """The ONNX graph of the weights `folder / artifact`, exported beside them the first time they are
    served (and again if the weights are newer than it)."""
    weights, graph = folder / artifact, folder / Path(artifact).with_suffix(".onnx").name
    if not graph.is_file() or graph.stat().st_mtime_ns < weights.stat().st_mtime_ns:
        export_graph(*load_model(folder, artifact), graph)
    return graph


def onnx_runtime_predictor(graph: str | Path, threads: int | None = None, batch_size: int = 64) -> Predictor:
    """An exported graph under ONNX Runtime (CPU): uint8 (N, S, S, 3) -> (N, classes) uncalibrated
    probabilities, the same function as PyTorch's (`load_predictor`).

    The session's threads sleep between calls instead of spinning: the decoding threads that
    prepare the next batch (`core.data.images.decoded_batches`) run on the same cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    size, classes = session.get_inputs()[0].shape[1], session.get_outputs()[0].shape[1]
    return _in_batches(lambda images: session.run([OUTPUT], {INPUT: np.ascontiguousarray(images)})[0],
                       size, classes, batch_size)


def load_predictor(folder: Path, artifact: str = MODEL_FILE, num_classes: int = 0, batch_size: int = 64,
                   precision: str | None = None, engine: str | None = None) -> CountingNetwork:
    """uint8 (N, image_size, image_size, 3) RGB -> (N, num_classes) uncalibrated probabilities, as in
    training's evaluation. The weights' file and class count come from `folder`'s saved config.
    `precision` ("bf16" or "fp32") defaults to the device's counting precision and `engine`
    ("onnxruntime" or "torch") to the one that counts fastest in it there
    (`core.cnn.runtime.counting_precision`, `counting_engine`). Where the graph cannot be exported
    or loaded, PyTorch counts instead, and the log says why."""
    config = read_config(folder)
    if num_classes and config["num_classes"] != num_classes:
        raise ValueError(f"{folder} holds a model of {config['num_classes']} classes, expected {num_classes}")
    runtime = local_runtime(precision)
    if (engine or counting_engine(runtime)) == "onnxruntime":
        try:  # a graph exported before is served without building the PyTorch model at all
            return CountingNetwork(onnx_runtime_predictor(served_graph(folder, artifact), batch_size=batch_size),
                                   "onnxruntime", runtime.counting)
        except Exception as err:  # noqa: BLE001 - a read-only store, an exporter or runtime failure: PyTorch still counts
            log.warning("counting %s with PyTorch: its ONNX graph could not be used (%s: %s)",
                        folder, err.__class__.__name__, err)
    model = runtime.prepare(load_model(folder, artifact)[0])
    normalization = (tuple(config["mean"]), tuple(config["std"]))

    def run(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.array(images)).to(runtime.device)
        probs = network_probabilities(model, batch, normalization, config["tta"], runtime.counting_autocast())
        return probs.cpu().numpy()

    return CountingNetwork(_in_batches(run, config["image_size"], config["num_classes"], batch_size), "torch",
                           runtime.counting)

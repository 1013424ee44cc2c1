"""A trained CNN for deployment outside binsight: ONNX graphs, the calibration and a manifest.

Each graph takes the uint8 RGB photos the counting service decodes (`core.images.load_rgb`:
N x S x S x 3) and returns the network's uncalibrated class probabilities, with the normalisation
and the test-time flip averaging inside the graph, so it is `load_predictor`'s function in ONNX
form. A cross-validated experiment exports one graph per fold; the counting service serves the
mean of the folds' calibrated probabilities. The manifest says what a reader needs to use them.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.cnn.inputs import Normalization, network_probabilities
from core.cnn.predictor import load_model
from core.files import atomic_path
from core.records import Experiment

GRAPH_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
CALIBRATION_FILE = "calibration.json"
OPSET = 17
INPUT, OUTPUT = "images", "probs"


class CountingGraph(nn.Module):
    """uint8 (N, S, S, 3) photos -> (N, classes) probabilities: `network_probabilities` as one module."""

    def __init__(self, model: nn.Module, normalization: Normalization, tta: bool):
        super().__init__()
        self.model, self.normalization, self.tta = model.eval(), normalization, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return network_probabilities(self.model, images, self.normalization, self.tta)


def export_graph(folder: Path, out: Path) -> dict:
    """Write the model saved in `folder` as an ONNX graph at `out`; returns its saved config."""
    model, config = load_model(folder)
    graph = CountingGraph(model, (tuple(config["mean"]), tuple(config["std"])), config["tta"])
    size = config["image_size"]
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # the TorchScript-based exporter: the dynamo one needs onnxscript, one more package for the same graph
        torch.onnx.export(graph, (example,), str(tmp), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    return config


def export_experiment(exp: Experiment, folders: list[Path], out: str | Path) -> Path:
    """Export experiment `exp`, whose model files are in `folders` (one, or one per fold), to `out`:
    graph(s), `calibration.json` and `manifest.json`; returns the manifest's path."""
    if exp.family != "cnn":
        raise ValueError(f"{exp.name} ({exp.id}) is a {exp.family} model: only CNN models export to ONNX")
    out = Path(out)
    graphs = [GRAPH_FILE] if len(folders) == 1 else [f"fold-{k}/{GRAPH_FILE}" for k in range(len(folders))]
    configs = [export_graph(folder, out / graph) for folder, graph in zip(folders, graphs, strict=True)]
    config = configs[0]
    with atomic_path(out / CALIBRATION_FILE) as tmp:
        tmp.write_text(json.dumps(exp.calibration.to_dict(), indent=2))
    num_classes = config["num_classes"]
    manifest = {
        "experiment": exp.id, "name": exp.name, "backbone": config["backbone"],
        "graphs": graphs,
        "ensemble": "mean of the graphs' calibrated probabilities" if len(graphs) > 1 else None,
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["N", config["image_size"], config["image_size"], 3],
                  "meaning": "RGB photos resized (squashed, not cropped) to image_size with bilinear resampling"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["N", num_classes],
                   "meaning": "uncalibrated class probabilities; calibration.json maps each graph's output p to "
                              "likelihoods softmax(log p / temperature + bias), which a prior turns into "
                              "what binsight shows (uniform: the likelihoods themselves)"},
        "image_size": config["image_size"],
        "normalization": {"mean": config["mean"], "std": config["std"], "scale": "pixels / 255, then (x - mean) / std",
                          "in_graph": True},
        "tta": {"horizontal_flip": bool(config["tta"]), "in_graph": True},
        "classes": [exp.count_label(c) for c in range(num_classes)],
        "open_top_class": exp.open_top,
        "calibration": CALIBRATION_FILE,
        "opset": OPSET,
    }
    with atomic_path(out / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return out / MANIFEST_FILE


def load_onnx_predictor(graph: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """An exported graph under ONNX Runtime (CPU): uint8 (N, S, S, 3) -> (N, classes) uncalibrated
    probabilities, the same function as `core.cnn.predictor.load_predictor`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape[1:]):
            raise ValueError(f"expected uint8 images of shape (N, {shape[1]}, {shape[2]}, 3), "
                             f"got {images.dtype} {images.shape}")
        return session.run([OUTPUT], {INPUT: np.ascontiguousarray(images)})[0].astype(np.float64)

    return predict


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {folder}: not a binsight export")
    return json.loads(path.read_text())

"""A trained CNN for deployment outside binsight: ONNX graphs, the calibration and a manifest.

Each graph takes the uint8 RGB photos the counting service decodes (`core.data.images.load_rgb`:
N x S x S x 3) and returns the network's uncalibrated class probabilities, with the normalisation
and the test-time flip averaging inside the graph (`core.cnn.predictor.export_graph`: the graph the
counting service itself runs under ONNX Runtime), so it is `load_predictor`'s function in ONNX
form. A cross-validated experiment exports one graph per fold; the counting service serves the
mean of the folds' calibrated probabilities. An ensemble of experiments (`core.training.ensemble`)
exports each member as above into a folder of its own, beside the ensemble's calibration map and a
manifest of members and weights. The manifest says what a reader needs to use them.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from core.cnn.predictor import INPUT, OPSET, OUTPUT, export_graph, load_model
from core.store.files import atomic_path
from core.store.records import Experiment

GRAPH_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
CALIBRATION_FILE = "calibration.json"


def _export_folder(folder: Path, out: Path) -> dict:
    model, config = load_model(folder)
    export_graph(model, config, out)
    return config


def export_experiment(exp: Experiment, folders: list[Path], out: str | Path) -> Path:
    """Export experiment `exp`, whose model files are in `folders` (one, or one per fold), to `out`:
    graph(s), `calibration.json` and `manifest.json`; returns the manifest's path."""
    if exp.family != "cnn":
        raise ValueError(f"{exp.name} ({exp.id}) is a {exp.family} model: only CNN models export to ONNX")
    out = Path(out)
    graphs = [GRAPH_FILE] if len(folders) == 1 else [f"fold-{k}/{GRAPH_FILE}" for k in range(len(folders))]
    configs = [_export_folder(folder, out / graph) for folder, graph in zip(folders, graphs, strict=True)]
    config = configs[0]
    num_classes = config["num_classes"]
    return _write_manifest(exp, out, {
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
    })


def _write_manifest(exp: Experiment, out: Path, manifest: dict) -> Path:
    """Write `exp`'s calibration and `manifest`, with the classes and files every export names; returns its path."""
    with atomic_path(out / CALIBRATION_FILE) as tmp:
        tmp.write_text(json.dumps(exp.calibration.to_dict(), indent=2))
    manifest = {**manifest, "classes": [exp.count_label(c) for c in range(exp.num_classes or 0)],
                "open_top_class": exp.open_top, "calibration": CALIBRATION_FILE, "opset": OPSET}
    with atomic_path(out / MANIFEST_FILE) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return out / MANIFEST_FILE


def export_ensemble(exp: Experiment, members: Sequence[tuple[Experiment, list[Path]]], out: str | Path) -> Path:
    """Export ensemble `exp` to `out`: each member (an experiment and its model folders, in the order of
    `exp.members`) as `export_experiment` writes it, into `members/<its id>/`, then the ensemble's
    `calibration.json` and `manifest.json`; returns the manifest's path. Only CNN members export."""
    not_cnn = [m.name for m, _ in members if m.family != "cnn"]
    if not_cnn:
        raise ValueError(f"{exp.name} ({exp.id}) mixes in {', '.join(not_cnn)}: only CNN models export to ONNX")
    out = Path(out)
    listed = []
    for member, folders in members:
        folder = f"members/{member.id}"
        export_experiment(member, folders, out / folder)
        listed.append({"experiment": member.id, "name": member.name, "folder": folder,
                       "weight": exp.members[member.id], "image_size": member.image_size})
    return _write_manifest(exp, out, {
        "experiment": exp.id, "name": exp.name, "members": listed,
        "ensemble": "each member's folder holds its own manifest: photos at its image_size in, its likelihoods out "
                    "(its graphs' calibrated probabilities, the mean over its graphs); the ensemble's likelihoods "
                    "are calibration.json's map, softmax(log p / temperature + bias), applied to the weighted mean "
                    "p of the members' likelihoods (weights: times each was chosen), then normalised",
    })


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {folder}: not a binsight export")
    return json.loads(path.read_text())

"""The ONNX export: what `train.py export` writes, and ONNX Runtime counting photos as binsight's own
counter does (the same `BinCounter`, its network swapped for the exported graphs)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.cnn import train_cnn
from core.cnn.onnx_export import read_manifest
from core.cnn.predictor import onnx_runtime_predictor
from core.counting.service import BinCounter, Member, load_counter
from core.data.synthetic import bin_jpeg
from core.evaluation.calibration import Calibration
from core.store.database import Store
from tests.builders import CNN_TINY, run_cli

PHOTOS = [bin_jpeg(k % 6, seed=20_000 + k) for k in range(120)]


def onnx_counter(store: Store, exp_id: str, folder) -> BinCounter:
    manifest = read_manifest(folder)
    exp = store.experiment(exp_id)
    predictors = [onnx_runtime_predictor(folder / graph) for graph in manifest["graphs"]]
    return BinCounter(exp, [Member(predictors, manifest["image_size"], exp.calibration)], precision="fp32",
                      engine="onnxruntime")


def agreement(ours: BinCounter, theirs: BinCounter) -> tuple[float, float]:
    """Share of photos given the same count, and the largest probability difference."""
    a, b = ours.count_batch(PHOTOS), theirs.count_batch(PHOTOS)
    same = np.mean([x.count == y.count for x, y in zip(a, b, strict=True)])
    return float(same), float(np.abs(np.array([x.probs for x in a]) - np.array([y.probs for y in b])).max())


def test_export_writes_the_graph_calibration_and_manifest_and_onnx_runtime_counts_alike(trained_store, tmp_path):
    store = Store(trained_store)
    exp = next(e for e in store.experiments("finished") if e.is_model and e.family == "cnn")
    run = run_cli("export", "--model", exp.id, "--out", str(tmp_path / "bundle"), store=trained_store)
    assert run.returncode == 0, run.stderr
    bundle = tmp_path / "bundle"
    manifest = read_manifest(bundle)
    assert manifest["experiment"] == exp.id and manifest["graphs"] == ["model.onnx"]
    assert manifest["image_size"] == exp.image_size and manifest["open_top_class"] == exp.open_top
    assert manifest["classes"] == [exp.count_label(c) for c in range(exp.num_classes)]
    assert manifest["tta"]["horizontal_flip"] == exp.model_config["tta"]
    assert manifest["normalization"]["mean"] == exp.model_config["mean"]
    assert Calibration.from_dict(json.loads((bundle / "calibration.json").read_text())) == exp.calibration
    same, diff = agreement(load_counter(exp.id, store, precision="fp32", engine="torch"),
                           onnx_counter(store, exp.id, bundle))
    assert same >= 0.995 and diff <= 1e-3


def test_an_ensemble_exports_every_fold(tiny_collection, tmp_path):
    store = Store(tmp_path / "store")
    exp_id = train_cnn(tiny_collection, "quick", store, progress=False, cv=2, overrides={
        **CNN_TINY, "phases": [{"epochs": 1, "image_size": 32, "lr": 1e-3}]})
    run = run_cli("export", "--model", exp_id, "--out", str(tmp_path / "bundle"), store=store.root)
    assert run.returncode == 0, run.stderr
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest["graphs"] == ["fold-0/model.onnx", "fold-1/model.onnx"] and manifest["ensemble"]
    same, diff = agreement(load_counter(exp_id, store, precision="fp32", engine="torch"),
                           onnx_counter(store, exp_id, tmp_path / "bundle"))
    assert same >= 0.995 and diff <= 1e-3


def test_export_refuses_a_classical_model_and_an_unknown_one(trained_store, tmp_path):
    store = Store(trained_store)
    classical = next(e for e in store.experiments("finished") if e.is_model and e.family == "classical")
    run = run_cli("export", "--model", classical.id, "--out", str(tmp_path / "x"), store=trained_store)
    assert run.returncode != 0 and "only CNN models export to ONNX" in run.stderr
    run = run_cli("export", "--model", "no-such-model", "--out", str(tmp_path / "x"), store=trained_store)
    assert run.returncode != 0 and "not found" in run.stderr
    with pytest.raises(FileNotFoundError, match="not a binsight export"):
        read_manifest(tmp_path)

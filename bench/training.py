"""CNN training throughput: today's fp32 step (the whole network, fed from the uint8 image cache) beside
the speed-ups tried on it, and beside an ImageFolder-style loader that decodes and resizes every JPEG
again in every epoch (torchvision transforms).

- the feature cache: stem and early stages frozen, the upper stages trained from their cached outputs
  (`Recipe.frozen_stages`; its one-off cost, computing the cache, is a row of its own);
- bf16 autocast, on the whole network and on the cached upper stages;
- the fused optimiser step;
- glibc keeping freed activations for reuse (`core.cnn.step.reuse_freed_memory`), which every
  row after today's step has, as training has.

Every step is timed the same way (best of `repeat` rounds of `steps` batches after a warm-up), on the
same photos. Epochs per minute are for the grown sample's train split at that speed.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from core.cnn.backbones import build_model, input_normalization
from core.cnn.feature_cache import FrozenFront
from core.cnn.inputs import DeviceBatches, ImageInputs, in_batches
from core.cnn.runtime import Runtime, local_runtime
from core.cnn.step import reuse_freed_memory, train_step
from core.data.dataset import Dataset as BinDataset

FROZEN_STAGES = 4  # EfficientNet-Lite0's stem and first three blocks: everything at 1/2 to 1/8 of the input size


class JpegFolder(Dataset):
    """The naive loader: open, decode, resize and convert each photo on every access."""

    def __init__(self, paths: list[str], counts: np.ndarray, size: int, normalization):
        self.paths, self.counts = paths, counts
        self.transform = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                             transforms.Normalize(*normalization)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), int(self.counts[i])


def _images_per_second(loader, step, steps: int, repeat: int = 1) -> float:
    """Images/s over `steps` batches, after one warm-up batch; the best of `repeat` rounds."""
    best = 0.0
    it = iter(loader)
    step(*next(it))
    for _ in range(repeat):
        start, seen = time.perf_counter(), 0
        for _ in range(steps):
            try:
                images, counts = next(it)
            except StopIteration:
                it = iter(loader)
                images, counts = next(it)
            step(images, counts)
            seen += len(counts)
        best = max(best, seen / (time.perf_counter() - start))
    return best


class _Bf16Runtime(Runtime):
    """The runtime with bf16 autocast on the CPU too (what `Runtime.autocast` does on CUDA)."""

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)


def _step(net: torch.nn.Module, inputs, runtime: Runtime, fused: bool = False) -> Callable:
    """One training step of `net` on a loader batch through `inputs` (an `ImageInputs` or `FeatureInputs`)."""
    loss_fn = torch.nn.CrossEntropyLoss()
    kwargs = {"fused": True} if fused else {}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, **kwargs)
    flips = torch.Generator(device=runtime.device).manual_seed(0)

    def step(batch, counts):
        train_step(net, inputs.train_batch(batch, flips), counts, loss_fn, optimizer, runtime)
    return step


def _model(backbone: str, num_classes: int, runtime: Runtime) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = build_model(backbone, num_classes, pretrained=True)
    return runtime.prepare(model).train()


def run(dataset: BinDataset, backbone: str, size: int, batch: int, steps: int,
        repeat: int = 2) -> list[tuple[str, str, str, str]]:
    runtime = local_runtime()
    bf16 = _Bf16Runtime(runtime.device, threads=runtime.threads)
    normalization = input_normalization(backbone)
    part = dataset.split("train").head(batch * (steps + 1))
    rows, counts = part["row"].to_numpy(), part["count"].to_numpy()
    epoch_photos = len(dataset.split("train"))
    where = f"{backbone} @{size}px, batch {batch}, {runtime.describe()}"

    plan = in_batches(np.arange(len(rows)), batch)

    def image_step(rt: Runtime, fused: bool = False, frozen: bool = False) -> tuple[Callable, DeviceBatches]:
        inputs = ImageInputs(dataset.images, normalization, rt.device, True, False, rt.autocast)
        loader = DeviceBatches(inputs.dataset(size, rows, counts), plan, rt.device)
        model = _model(backbone, dataset.num_classes, rt)
        if frozen:  # the same frozen stages, run in every step
            FrozenFront(model, backbone, FROZEN_STAGES, dataset.images, normalization, rt, progress=False)
        return _step(model, inputs, rt, fused), loader

    def cached_step(rt: Runtime) -> tuple[Callable, DeviceBatches, float]:
        front = FrozenFront(_model(backbone, dataset.num_classes, rt), backbone, FROZEN_STAGES, dataset.images,
                            normalization, rt, folder=None, progress=False)
        started = time.perf_counter()
        front.features(size, rows)
        build = len(np.unique(rows)) / (time.perf_counter() - started)
        inputs = front.inputs(flip=True)
        loader = DeviceBatches(inputs.dataset(size, rows, counts), plan, rt.device)
        return _step(front.upper, inputs, rt), loader, build

    today = _images_per_second(*reversed(image_step(runtime)), steps, repeat)
    # training sets this once per process (Trainer); it cannot be undone, so every row below has it
    reused = reuse_freed_memory()

    def row(what: str, speed: float) -> tuple[str, str, str, str]:
        per_minute = speed * 60 / epoch_photos
        return (f"{what} ({where})", f"{speed:.1f} img/s, {per_minute:.2f} epochs/min",
                f"{today:.1f} img/s, {today * 60 / epoch_photos:.2f} epochs/min (fp32 step today)",
                f"{speed / today:.2f}x")

    out = [row(f"whole network, fp32, freed memory {'reused' if reused else 'not reused (no glibc)'}",
               _images_per_second(*reversed(image_step(runtime)), steps, repeat))]
    step, loader, build = cached_step(runtime)
    out.append(row(f"training step from the feature cache, {FROZEN_STAGES} stages frozen",
                   _images_per_second(loader, step, steps, repeat)))
    out.append((f"feature cache build, once per size ({where})", f"{build:.1f} img/s (photo and mirror image)",
                "-", "-"))
    step, loader, _ = cached_step(bf16)
    out.append(row("the same, bf16 autocast", _images_per_second(loader, step, steps, repeat)))
    step, loader = image_step(bf16)
    out.append(row("whole network, bf16 autocast", _images_per_second(loader, step, steps, repeat)))
    step, loader = image_step(runtime, frozen=True)
    out.append(row(f"whole network, {FROZEN_STAGES} stages frozen, no cache",
                   _images_per_second(loader, step, steps, repeat)))
    try:
        step, loader = image_step(runtime, fused=True)
    except RuntimeError as err:  # a torch without the fused CPU AdamW
        out.append((f"whole network, fused AdamW ({where})", f"unavailable: {err}", "-", "-"))
    else:
        out.append(row("whole network, fused AdamW", _images_per_second(loader, step, steps, repeat)))

    plain, _ = build_model(backbone, dataset.num_classes, pretrained=False)  # as a tutorial would: no prepare
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def naive(x, labels):
        loss = loss_fn(plain.train()(x), labels)
        plain_optimizer.zero_grad()
        loss.backward()
        plain_optimizer.step()

    jpegs = DataLoader(JpegFolder(part["path"].tolist(), counts, size, normalization), batch_size=batch)
    slow = _images_per_second(jpegs, naive, steps)
    out.append((f"CNN training fp32, image cache vs decoding JPEGs ({where})", f"{today:.1f} img/s",
                f"{slow:.1f} img/s", f"{today / slow:.2f}x"))
    return out

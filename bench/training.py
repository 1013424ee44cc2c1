"""CNN training throughput: steps fed from the uint8 image cache vs an ImageFolder-style loader
that decodes and resizes every JPEG again in every epoch (torchvision transforms)."""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from core.backbones import build_model, input_normalization
from core.cnn.inputs import CachedImages, batches
from core.cnn.runtime import local_runtime
from core.cnn.step import train_step
from core.dataset import Dataset as BinDataset


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


def _images_per_second(loader, step, steps: int) -> float:
    """Images/s over `steps` batches, after one warm-up batch."""
    it = iter(loader)
    step(*next(it))
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        images, counts = next(it)
        step(images, counts)
        seen += len(counts)
    return seen / (time.perf_counter() - start)


def run(dataset: BinDataset, backbone: str, size: int, batch: int, steps: int) -> list[tuple[str, str, str, str]]:
    runtime = local_runtime()
    normalization = input_normalization(backbone)
    part = dataset.split("train").head(batch * (steps + 1))
    loss_fn = torch.nn.CrossEntropyLoss()
    model, _ = build_model(backbone, dataset.num_classes, pretrained=False)
    model = runtime.prepare(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    plain, _ = build_model(backbone, dataset.num_classes, pretrained=False)  # as a tutorial would: no prepare
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-4)

    def ours(images, counts):
        train_step(model, images, counts, loss_fn, optimizer, runtime, normalization)

    def naive(x, counts):
        loss = loss_fn(plain.train()(x), counts)
        plain_optimizer.zero_grad()
        loss.backward()
        plain_optimizer.step()

    cached = batches(CachedImages(dataset.images(size), part["row"].to_numpy(), part["count"].to_numpy()),
                     batch, pin_memory=False, workers=0)
    jpegs = DataLoader(JpegFolder(part["path"].tolist(), part["count"].to_numpy(), size, normalization),
                       batch_size=batch)
    fast = _images_per_second(cached, ours, steps)
    slow = _images_per_second(jpegs, naive, steps)
    return [(f"CNN training {backbone} @{size}px, batch {batch} ({runtime.describe()})",
             f"{fast:.1f} img/s", f"{slow:.1f} img/s", f"{fast / slow:.2f}x")]

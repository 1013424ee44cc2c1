"""Counting speed of the serving model: one photo at a time (p50/p95 latency) and in batches,
against a naive pipeline (full PIL decode, torchvision Resize + ToTensor, the same weights in
eval mode, the same test-time flip averaging as the model's config, so both do the same network work)."""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from bench.common import percentiles
from core.cnn.predictor import load_model
from core.predict import BinCounter
from core.store import Store


def naive_counter(store: Store, counter: BinCounter):
    model, config = load_model(store.artifact_dir(counter.exp_id))
    transform = transforms.Compose([transforms.Resize((config["image_size"],) * 2), transforms.ToTensor(),
                                    transforms.Normalize(config["mean"], config["std"])])

    def count(paths: list[str]) -> np.ndarray:
        with torch.no_grad():
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
            probs = model(x).softmax(1)
            if config["tta"]:
                probs = (probs + model(x.flip(3)).softmax(1)) / 2
            return probs.argmax(1).numpy()

    return count


def _latencies(fn, paths: list[str]) -> list[float]:
    fn(paths[0])  # warm-up
    out = []
    for p in paths:
        start = time.perf_counter()
        fn(p)
        out.append(time.perf_counter() - start)
    return out


def _throughput(fn, paths: list[str], batch: int) -> float:
    fn(paths[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        fn(paths[i:i + batch])
    return len(paths) / (time.perf_counter() - start)


def run(store: Store, counter: BinCounter, paths: list[str], batch: int) -> list[tuple[str, str, str, str]]:
    naive = naive_counter(store, counter)
    ours_lat = percentiles(_latencies(counter.count, paths))
    naive_lat = percentiles(_latencies(lambda p: naive([p]), paths))
    ours_tp = _throughput(lambda ps: counter.count_batch(ps, batch_size=batch), paths, batch)
    naive_tp = _throughput(naive, paths, batch)
    label = f"{counter.name} @{counter.image_size}px, tta={counter.exp.model_config.get('tta')}"
    return [
        (f"count 1 photo p50 ({label})", f"{ours_lat[0] * 1e3:.0f} ms", f"{naive_lat[0] * 1e3:.0f} ms",
         f"{naive_lat[0] / ours_lat[0]:.2f}x"),
        ("count 1 photo p95", f"{ours_lat[1] * 1e3:.0f} ms", f"{naive_lat[1] * 1e3:.0f} ms",
         f"{naive_lat[1] / ours_lat[1]:.2f}x"),
        (f"count batch of {batch} ({len(paths)} photos)", f"{ours_tp:.1f} img/s", f"{naive_tp:.1f} img/s",
         f"{ours_tp / naive_tp:.2f}x"),
    ]

"""Counting speed of the serving model: one photo at a time (p50/p95 latency) and in batches,
against a naive pipeline (full PIL decode, torchvision Resize + ToTensor, the same weights in
eval mode, fp32, the same test-time flip averaging as the model's config, so both do the same
network work), and each row's share of the machine's peak GEMM rate (`bench.peak`).

Batch rows: the service as it counts on this machine (its precision and engine, decoding threads
beside the network), the same photos decoded alone by the same pool (the most any counting row could
reach, whatever the network), then each lever alone: PyTorch fp32 with decoding in line (the service before
bf16, the pool and ONNX Runtime), PyTorch bf16 in line, PyTorch fp32 with the pool, and ONNX
Runtime (fp32) in line and with the pool.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from bench.common import percentiles
from bench.peak import model_gflops, share
from core.cnn.predictor import load_model
from core.counting.service import BinCounter, load_counter
from core.data.images import decoded_batches
from core.store.database import Store

Row = tuple[str, str, str, str, str]


def naive_counter(store: Store, counter: BinCounter) -> Callable[[list[str]], np.ndarray]:
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


def _throughput(fn: Callable[[list[str]], object], paths: list[str], batch: int) -> float:
    """Photos/s of `fn` over all of `paths` in one call, after a warm-up call on one batch."""
    fn(paths[:batch])
    start = time.perf_counter()
    fn(paths)
    return len(paths) / (time.perf_counter() - start)


def _in_batches(fn: Callable[[list[str]], object], batch: int) -> Callable[[list[str]], None]:
    def run(paths: list[str]) -> None:
        for i in range(0, len(paths), batch):
            fn(paths[i:i + batch])

    return run


def run(store: Store, counter: BinCounter, paths: list[str], batch: int, peak: dict[str, float]) -> list[Row]:
    """`counter` is the service as loaded on this machine; every other counter is loaded beside it."""
    naive = naive_counter(store, counter)
    model, config = load_model(store.artifact_dir(counter.exp_id))
    flops = model_gflops(model, config["image_size"], config["tta"])
    fp32 = load_counter(counter.exp_id, store, precision="fp32", engine="torch")
    bf16 = load_counter(counter.exp_id, store, precision="bf16", engine="torch")
    onnx = load_counter(counter.exp_id, store, precision="fp32", engine="onnxruntime")
    label = f"{counter.name} @{counter.image_size}px, tta={config['tta']}, {flops:.2f} GFLOP/photo"

    ours_lat = percentiles(_latencies(counter.count, paths))
    torch_lat = percentiles(_latencies(fp32.count, paths))
    naive_lat = percentiles(_latencies(lambda p: naive([p]), paths))
    naive_tp = _throughput(_in_batches(naive, batch), paths, batch)
    workers = counter.workers

    def decode_only(sources: list[str]) -> None:
        for _ in decoded_batches(sources, counter.image_size, batch, workers):
            pass

    def peak_of(precision: str, rate: float) -> str:
        return share(flops, rate, peak["bf16" if precision == "bf16" else "fp32"])

    rows: list[Row] = [
        (f"count 1 photo p50 ({label}; service: {counter.served_by})", f"{ours_lat[0] * 1e3:.0f} ms",
         f"{naive_lat[0] * 1e3:.0f} ms", f"{naive_lat[0] / ours_lat[0]:.2f}x",
         peak_of(counter.precision, 1 / ours_lat[0])),
        ("count 1 photo p95", f"{ours_lat[1] * 1e3:.0f} ms", f"{naive_lat[1] * 1e3:.0f} ms",
         f"{naive_lat[1] / ours_lat[1]:.2f}x", ""),
        (f"count 1 photo p50: {fp32.served_by} (the service before ONNX Runtime)", f"{torch_lat[0] * 1e3:.0f} ms",
         f"{naive_lat[0] * 1e3:.0f} ms", f"{naive_lat[0] / torch_lat[0]:.2f}x", peak_of("fp32", 1 / torch_lat[0])),
    ]
    variants = [
        (f"service: {counter.served_by}, {workers} decoding threads", counter, None),
        (f"{fp32.served_by}, decoding in line (before bf16, the pool and ONNX Runtime)", fp32, 0),
        (f"{bf16.served_by}, decoding in line", bf16, 0),
        (f"{fp32.served_by}, {workers} decoding threads", fp32, None),
        (f"{onnx.served_by}, decoding in line", onnx, 0),
        (f"{onnx.served_by}, {workers} decoding threads", onnx, None),
    ]
    for what, variant, threads in variants:
        rate = _throughput(lambda ps, v=variant, w=threads: v.count_batch(ps, batch_size=batch, workers=w),
                           paths, batch)
        rows.append((f"count batches of {batch} ({len(paths)} photos): {what}", f"{rate:.1f} img/s",
                     f"{naive_tp:.1f} img/s", f"{rate / naive_tp:.2f}x",
                     peak_of("bf16" if variant.precision == "bf16" else "fp32", rate)))
        if variant is counter:  # the service's ceiling, right under it
            decoded = _throughput(decode_only, paths, batch)
            rows.append((f"decode alone, batches of {batch}, {workers} decoding threads @{counter.image_size}px "
                         f"(the service's ceiling: {rate / decoded:.0%} of it)", f"{decoded:.1f} img/s", "", "", ""))
    rows.append(("naive pipeline, batches (fp32)", f"{naive_tp:.1f} img/s", "", "", peak_of("fp32", naive_tp)))
    return rows

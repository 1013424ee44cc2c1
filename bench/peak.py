"""What this machine can do at most: peak GEMM GFLOP/s in fp32 and bf16, and a model's FLOPs per
photo, so every counting row can say what share of the peak it reaches."""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

GEMM_SIZE = 2048


def gemm_gflops(dtype: torch.dtype, n: int = GEMM_SIZE, repeat: int = 5) -> float:
    """Best of `repeat` timings of an n x n by n x n matrix product (2 n^3 floating-point operations)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up: oneDNN picks its kernel on the first call
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def peaks() -> dict[str, float]:
    """Peak GFLOP/s by counting precision ("fp32", "bf16"), measured now."""
    return {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}


def model_gflops(model: nn.Module, size: int, tta: bool) -> float:
    """GFLOPs one photo costs at `size` px (convolutions and matrix products, 2 per multiply-add),
    twice over with flip averaging."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() * (2 if tta else 1) / 1e9


def share(gflops_per_photo: float, photos_per_second: float, peak_gflops: float) -> str:
    return f"{gflops_per_photo * photos_per_second / peak_gflops:.1%} of {peak_gflops:.0f} GFLOP/s"

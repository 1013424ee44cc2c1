"""One optimisation step on a batch of network inputs: the same for training and for the LR finder."""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import torch
from torch import nn

from core.cnn.runtime import Runtime

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit machines


@cache
def reuse_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MB for reuse instead of unmapping them (once per process).

    Each forward and backward pass allocates and frees the same large activations. By default glibc
    hands blocks over its (adaptive) mmap threshold back to the kernel on free, and the next step
    page-faults them in afresh: the profiler saw 64,000 faults per EfficientNet-Lite0 step at 128 px and
    half of the CPU time of building the feature cache in the kernel. Returns False where the C library
    has no `mallopt` (not glibc): nothing changes there.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError, TypeError):
        return False


def train_step(model: nn.Module, x: torch.Tensor, counts: torch.Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, update on `x` (the network's input, on the device); returns the (detached) loss and
    logits of this rank's batch."""
    counts = counts.to(runtime.device, non_blocking=True)
    with runtime.autocast():
        logits = model(x)
    loss = loss_fn(logits, counts)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()

"""Where training runs: one CPU or GPU process, or one of N under `torchrun` (DDP).

Models are channels_last everywhere. On CUDA: bf16 autocast, pinned memory, NCCL. On CPU:
fp32, every core the process may use (shared evenly between local ranks), gloo. Every rank
runs the same code; only rank 0 writes to the store and the artifact folder.
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    threads: int = 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def loader_workers(self) -> int:
        """Background decoding only pays on GPU; on CPU the cores are busy with the model."""
        return min(4, self.threads) if self.cuda else 0

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()

    def describe(self) -> str:
        where = f"cuda ({torch.cuda.get_device_name(self.device)}, bf16 autocast)" if self.cuda \
            else f"cpu ({self.threads} threads)"
        return f"{where} x {self.world_size} processes (DDP)" if self.distributed else where

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move `model` to the device, channels_last; call before building its optimiser."""
        return model.to(self.device, memory_format=torch.channels_last)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around `model` when distributed. Re-wrap after changing which parameters train."""
        if not self.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.cuda else None)

    def broadcast(self, value):
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (a copy; the input is left alone)."""
        tensor = tensor.detach().clone()
        if self.distributed:
            tensor = tensor.to(self.device)
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(device_ids=[self.device.index] if self.cuda else None)


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def setup_runtime() -> Runtime:
    """The runtime of this process: plain, or a rank of a `torchrun` job (joins its process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    threads = max(1, _usable_cpus() // max(1, local_world))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        torch.set_num_threads(threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Runtime(device, rank, world, local_rank, threads)


def local_runtime() -> Runtime:
    """One process on the best local device, no process group (serving, evaluation)."""
    if torch.cuda.is_available():
        return Runtime(torch.device("cuda", torch.cuda.current_device()))
    return Runtime(torch.device("cpu"), threads=torch.get_num_threads())


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()

"""Where training runs: one CPU or GPU process, or one of N under `torchrun` (DDP).

Models are channels_last everywhere. On CUDA: bf16 autocast, pinned memory, NCCL. On CPU:
fp32 (bf16 autocast for a recipe that asks, `cpu_bf16`, on a CPU with native bf16), every core the
process may use (shared evenly between local ranks), gloo. Counting (forward
passes only: evaluation and the counting service) may run in bf16 on a CPU that multiplies bf16 in
hardware, by choice (`counting_precision`): it is faster there but changes some counts. Every rank
runs the same code; only rank 0 writes to the store and the artifact folder, and the others get
what it reads (a checkpoint, the best weights) by broadcast, never from their own disk.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.store.locks import exclusive_lock

T = TypeVar("T")


PRECISIONS = ("fp32", "bf16")
PRECISION_ENV = "BINSIGHT_COUNTING_PRECISION"  # "bf16" opts in to bf16 counting on a CPU with native bf16
ENGINES = {"onnxruntime": "ONNX Runtime", "torch": "PyTorch"}  # what may run a CNN's counting, and its name
ENGINE_ENV = "BINSIGHT_COUNTING_ENGINE"  # "torch" keeps fp32 counting on the CPU in PyTorch
# Photos per batch of a pass that only predicts. Without gradients a batch's activations are held a layer at a
# time, so a GPU takes 512 at 224 px in well under 1 GB and needs that many to be kept busy. The CPU keeps 64:
# it is busy from a batch of 32 on, and larger batches only outgrow the freed blocks glibc keeps for reuse
# (`core.cnn.step.reuse_freed_memory`).
PREDICT_BATCH = {"cpu": 64, "cuda": 512}


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles); elsewhere PyTorch
    emulates bf16, slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def counting_precision(device: torch.device) -> str:
    """The precision forward passes that only count run in on `device`: bf16 on CUDA (as training);
    on the CPU fp32, or bf16 where `BINSIGHT_COUNTING_PRECISION=bf16` asks for it and the CPU has
    native bf16.

    bf16 is not the CPU default because it changes what users see: on this 2-core Xeon
    (avx512_bf16, amx_bf16) the `quick` model (2 epochs, 160 px) counted the shared sample's 973
    test photos with the same count as fp32 on 96.6% of them, and its calibrated probabilities
    moved by up to 0.033, against the 99.5% and 0.01 the counting service holds itself to. Training
    under bf16 was slower than fp32 there (38 against 47-49 img/s) and stays fp32.
    """
    if device.type == "cuda":
        return "bf16"
    wanted = os.environ.get(PRECISION_ENV, "fp32")
    return "bf16" if check_precision(wanted) == "bf16" and native_bf16() else "fp32"


def counting_engine(runtime: Runtime) -> str:
    """What runs the network when `runtime` counts: ONNX Runtime for fp32 on the CPU, PyTorch on CUDA
    and for bf16 (ONNX Runtime's CPU kernels compute in fp32), or where `BINSIGHT_COUNTING_ENGINE=torch`.

    ONNX Runtime is the CPU default because it counts the same photos faster with the same
    numbers: on this 2-core EPYC (README, "Speed"; `quick-frozen`, 160 px) 125 against 84 img/s in
    batches with the same decoding threads, and one photo in 12 against 59 ms, with probabilities
    within 1e-3 of PyTorch's (tests/test_precision.py).
    """
    wanted = os.environ.get(ENGINE_ENV, "onnxruntime")
    if wanted not in ENGINES:
        raise ValueError(f"{ENGINE_ENV} must be one of {tuple(ENGINES)}, got {wanted!r}")
    if runtime.cuda or runtime.counting != "fp32" or wanted == "torch":
        return "torch"
    return "onnxruntime"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    threads: int = 1
    counting: str = "fp32"  # precision of forward passes that only count (see `counting_precision`)
    training: str = "fp32"  # the CPU's training precision (`with_cpu_bf16_training`); CUDA trains in bf16

    def __post_init__(self) -> None:
        check_precision(self.counting)
        check_precision(self.training)

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
    def predict_batch(self) -> int:
        """Photos per batch in passes that only predict (validation, testing, caching frozen-stage features)."""
        return PREDICT_BATCH["cuda" if self.cuda else "cpu"]

    def autocast(self) -> AbstractContextManager:
        """Training's precision: bf16 autocast on CUDA; on the CPU fp32, or bf16 where `training` says so."""
        if self.cuda or self.training == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def with_cpu_bf16_training(self) -> Runtime:
        """This runtime training under bf16 autocast on a CPU that computes bf16 in hardware (a recipe's
        `cpu_bf16`); unchanged on CUDA (bf16 already) and on CPUs without native bf16 (slower there)."""
        return self if self.cuda or not native_bf16() else dataclasses.replace(self, training="bf16")

    def counting_autocast(self) -> AbstractContextManager:
        """Counting's precision (`counting`): bf16 autocast on this device, or fp32."""
        if self.counting == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def describe(self) -> str:
        where = f"cuda ({torch.cuda.get_device_name(self.device)}, bf16 autocast)" if self.cuda \
            else f"cpu ({self.threads} threads; {self.training} training, {self.counting} counting)"
        return f"{where} x {self.world_size} processes (DDP)" if self.distributed else where

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move `model` to the device, channels_last; call before building its optimiser."""
        # Module.to takes a device and a memory format together; torch's overloads list them apart
        return model.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]

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

    def on_main(self, compute: Callable[[], T]) -> T:
        """`compute()`, run on rank 0 only (it may read the store or the disk), on every rank."""
        return self.broadcast(compute() if self.is_main else None)

    def gather(self, value) -> list:
        """Every rank's `value` (any picklable object) on every rank, in rank order."""
        if not self.distributed:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) into `model` on every rank.

        DDP makes the parameters equal, and the buffers only at the start of each training
        forward pass: each rank's last batch then moves its own running statistics. Evaluating
        on every rank needs rank 0's model everywhere (the one that is checkpointed and saved).
        """
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (a copy; the input is left alone)."""
        tensor = tensor.detach().clone()
        if self.distributed:
            tensor = tensor.to(self.device)
            dist.all_reduce(tensor)
        return tensor


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def launch_rank() -> int:
    """This process's rank in its `torchrun` job (0 without one); known before the process group exists."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def first_alone(lock_path: Path, waiting: str | None = None) -> Iterator[bool]:
    """Run the block in every process that enters, the first to arrive alone; yields whether this one was first.

    Before the process group exists ranks cannot wait on a barrier (and a collective would time out
    while caches of a large collection are built: hours at full ABID). A file lock orders them
    instead: the process that takes the lock at once runs the block holding it and builds what
    the block needs; the others wait for the lock (printing `waiting` once), then run the block
    side by side and find it built. Any lock holder is the first or waited for it, so nobody
    passes before the first is done. With the store on shared storage this holds across nodes
    (see `core.store.locks`). A process that dies releases the lock.
    """
    with exclusive_lock(lock_path, blocking=False) as first:
        if first:
            yield True
            return
    if waiting:
        print(waiting, file=sys.stderr, flush=True)
    with exclusive_lock(lock_path):
        pass
    yield False


def setup_runtime() -> Runtime:
    """The runtime of this process: plain, or a rank of a `torchrun` job (joins its process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launch_rank()
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
    return Runtime(device, rank, world, local_rank, threads, counting_precision(device))


def local_runtime(precision: str | None = None) -> Runtime:
    """One process on the best local device, no process group (serving, evaluation); counting in
    `precision`, by default the device's (`counting_precision`)."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    threads = 1 if device.type == "cuda" else torch.get_num_threads()
    return Runtime(device, threads=threads, counting=check_precision(precision or counting_precision(device)))


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()

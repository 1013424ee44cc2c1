"""The plain GPU-resident training loop that `bench/gpu.sh` prints beside the product (issue 26).

    python -m bench.gpu_baseline --data DIR --store DIR [--size 224] [--batch 256] [--steps 200] [--warmup 30]

The product's network (EfficientNet-Lite0, `core.cnn.backbones.build_model`) with the whole network
trained at `--size` px on the photos of the data's train split (read once from the product's image
cache in `--store`), held on the device as uint8. Each step takes the next `--batch` photos of a
shuffled order, mirrors half of them and turns each by a random number of quarter turns on the
device, and trains under bf16 autocast (CUDA; fp32 on the CPU) in channels_last with AdamW. Nothing
else: no loader, no validation, no checkpoints, no per-photo Python. This is the most the chip gives
this network, the yardstick for the product's own img/s.

The `--warmup` steps (cuDNN's autotuning, the allocator's first requests) are timed apart from the
`--steps` that follow.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.cnn.backbones import build_model, input_normalization, to_model_input
from core.data.dataset import prepare_dataset

BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class LoopRates:
    """What one run of the loop measured."""

    device: str
    precision: str
    size: int
    batch: int
    photos: int  # the train split's photos, resident on the device
    warmup_steps: int
    warmup_seconds: float
    steps: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.batch * self.steps / self.seconds

    def line(self) -> str:
        return (f"plain GPU-resident loop: {BACKBONE} @{self.size}px, whole network, batch {self.batch}, "
                f"{self.precision}, AdamW, {self.photos} photos on {self.device}: warm-up {self.warmup_steps} steps "
                f"in {self.warmup_seconds:.1f} s, then {self.steps} steps in {self.seconds:.1f} s = "
                f"{self.images_per_second:.0f} img/s")


def augment(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) photos on their device, each mirrored with probability 1/2, then turned by 0-3
    quarter turns; no sync with the host (all four turns are computed, and each photo takes its own)."""
    n = images.shape[0]
    mirror = torch.rand(n, device=images.device) < 0.5
    images = torch.where(mirror[:, None, None, None], images.flip(2), images)
    turns = torch.randint(0, 4, (n,), device=images.device)
    return torch.stack([images.rot90(k, (1, 2)) for k in range(4)])[turns, torch.arange(n, device=images.device)]


def run(images: np.ndarray, counts: np.ndarray, num_classes: int, device: torch.device, batch: int, steps: int,
        warmup: int) -> LoopRates:
    """Train on `images` (uint8 (N, S, S, 3)) and `counts` for `warmup` then `steps` timed steps."""
    cuda = device.type == "cuda"
    model = build_model(BACKBONE, num_classes, pretrained=False)[0]
    model = model.to(device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cuda)
    normalization = input_normalization(BACKBONE)
    resident = torch.from_numpy(images).to(device)
    labels = torch.from_numpy(counts.astype(np.int64)).to(device)
    order = torch.randperm(len(resident), device=device)
    position = 0

    def step() -> None:
        nonlocal order, position
        if position + batch > len(order):  # a new epoch: a new order
            order, position = torch.randperm(len(resident), device=device), 0
        rows = order[position:position + batch]
        position += batch
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(to_model_input(augment(resident[rows]), normalization)), labels[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(n: int) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(n):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    warmup_seconds = timed(warmup)
    seconds = timed(steps)
    where = f"cuda ({torch.cuda.get_device_name(device)})" if cuda else f"cpu ({torch.get_num_threads()} threads)"
    return LoopRates(where, "bf16 autocast" if cuda else "fp32", images.shape[1], batch, len(images), warmup,
                     warmup_seconds, steps, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True, help="where the product's image cache is (or goes)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures here (bench.gpu summary reads them)")
    args = parser.parse_args(argv)
    dataset = prepare_dataset(args.data, image_size=args.size, store_root=args.store, progress=False, open_top=True)
    train = dataset.split("train")
    images = dataset.images(args.size)[train["row"].to_numpy()]  # the photos the product trains on
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    rates = run(images, train["count"].to_numpy(), dataset.num_classes, device, args.batch, args.steps, args.warmup)
    print(rates.line())
    if args.json:
        args.json.write_text(json.dumps({**asdict(rates), "images_per_second": rates.images_per_second}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`bench/gpu.sh --dry-run`: the GPU script's smoke part (2 torchrun processes, DDP over gloo, sharded
validation), its plain GPU-resident loop and its counting and decoding rates run on the CPU at a tiny
size, so the script cannot rot before a GPU machine runs it whole."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import torch

from bench.gpu_baseline import augment
from core.config import PROJECT_ROOT


def test_gpu_script_dry_run_trains_two_ddp_processes_on_the_cpu(tmp_path):
    env = {**os.environ, "PY": sys.executable, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    env.pop("BINSIGHT_STORE", None)
    run = subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=400, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "x 2 processes (DDP)" in run.stdout and "img/s" in run.stdout and "smoke run passed" in run.stdout
    assert "  validation   n=" in run.stdout and "accuracy" in run.stdout  # the run's figures, as train.py prints
    assert "first epoch" in run.stdout and "(warm-up), then" in run.stdout  # the warm-up apart from the rest
    assert "plain GPU-resident loop: efficientnet_lite0 @32px" in run.stdout and "fp32" in run.stdout
    assert "counting service: warm-up pass" in run.stdout and "decoding alone: warm-up pass" in run.stdout
    for row in ("training img/s", "the paper's full experiment", "counting img/s", "warm-up, timed apart"):
        assert row in run.stdout, row
    assert not list(tmp_path.glob("tmp*"))  # the script's work folder is gone
    assert not (tmp_path / "binsight-gpu-store").exists()  # the dry run trains nothing on the real data


def test_the_plain_loop_mirrors_and_turns_each_photo_on_its_own():
    torch.manual_seed(0)
    photos = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 5, 5, 3), dtype=np.uint8))
    out = augment(photos)
    assert out.shape == photos.shape and out.dtype == torch.uint8
    seen = set()
    for before, after in zip(photos, out, strict=True):  # each output is one of the square's 8 symmetries
        variants = [before.flip(1) if m else before for m in (False, True)]
        matches = [(m, k) for m, v in enumerate(variants) for k in range(4) if torch.equal(v.rot90(k, (0, 1)), after)]
        assert matches
        seen.update(matches)
    assert len(seen) == 8  # and all 8 occur

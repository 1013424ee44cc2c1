"""`bench/gpu.sh --dry-run`: the GPU script's smoke part (2 torchrun processes, DDP over gloo, sharded
validation) runs on the CPU, so the script cannot rot before a GPU machine runs it whole."""
from __future__ import annotations

import os
import subprocess
import sys

from core.config import PROJECT_ROOT


def test_gpu_script_dry_run_trains_two_ddp_processes_on_the_cpu(tmp_path):
    env = {**os.environ, "PY": sys.executable, "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    env.pop("BINSIGHT_STORE", None)
    run = subprocess.run(["bash", "bench/gpu.sh", "--dry-run"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "x 2 processes (DDP)" in run.stdout and "img/s" in run.stdout and "smoke run passed" in run.stdout
    assert "  validation   n=" in run.stdout and "accuracy" in run.stdout  # the run's figures, as train.py prints
    assert not (tmp_path / "binsight-gpu-store").exists()  # the dry run trains nothing on the real data

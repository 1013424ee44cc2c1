#!/usr/bin/env bash
# The GPU path, ready to run on a CUDA machine (from a clone with `make install` done):
#   1. a smoke run: 2 processes under torchrun (DDP, bf16 autocast, sharded validation) train the
#      recipe below for a few steps on 48 generated bins, and the run's record is checked;
#   2. the recipe trained 5-fold on the grown sample, its figures and img/s printed.
#
#   bench/gpu.sh [--dry-run] [--data DIR] [--preset NAME] [--folds K] [--store DIR]
#
# --dry-run runs only the smoke part, on the CPU (gloo, fp32): CI runs it (tests/test_gpu_script.py)
# so the script cannot rot. With one GPU, NCCL cannot host two ranks on it: the smoke then runs one
# process on the GPU (bf16) and the two-process DDP run on the CPU. The 5-fold store defaults to
# ~/binsight-gpu-store (outside the clone), so an interrupted run resumes fold by fold.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
PRESET=quick-frozen   # the recipe `make run` trains (core/training/suite.py)
DATA=${ABID_DATA:-../shared/abid-sample}
FOLDS=5
STORE=${BINSIGHT_GPU_STORE:-$HOME/binsight-gpu-store}
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --data) DATA=$2; shift ;;
        --preset) PRESET=$2; shift ;;
        --folds) FOLDS=$2; shift ;;
        --store) STORE=$2; shift ;;
        *) echo "unknown argument: $1 (see the top of $0)" >&2; exit 2 ;;
    esac
    shift
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
GPUS=0
if [ "$DRY" = 0 ] && command -v nvidia-smi >/dev/null; then GPUS=$(nvidia-smi -L | wc -l); fi

# a few steps: 2 phases (head, then the body as the recipe unfreezes it) of one epoch at 32 px, batch 4
TINY=(--set 'phases=[{"epochs": 1, "image_size": 32, "train_body": false, "lr": 0.003},
                     {"epochs": 1, "image_size": 32, "differential": true, "lr": 0.001}]'
      batch_size=4 lr_finder_steps=4)
"$PY" -m bench.gpu tiny "$WORK/tiny"

smoke() {  # smoke PROCESSES STORE [env...]: train the tiny run under torchrun, then check its record
    local n=$1 store=$2; shift 2
    echo "== smoke: $n processes, $*"
    env "$@" "$PY" -m torch.distributed.run --standalone --nproc_per_node "$n" \
        train.py cnn --data "$WORK/tiny" --preset "$PRESET" --store "$store" --quiet "${TINY[@]}" >"$WORK/smoke.log" 2>&1 \
        || { cat "$WORK/smoke.log"; echo "FAILED: the smoke run exited non-zero"; exit 1; }
}

if [ "$GPUS" -ge 2 ]; then
    smoke 2 "$WORK/smoke"
    "$PY" -m bench.gpu report "$WORK/smoke" --processes 2 --cuda
else
    if [ "$GPUS" = 1 ]; then
        smoke 1 "$WORK/smoke-gpu"
        "$PY" -m bench.gpu report "$WORK/smoke-gpu" --cuda
    fi
    smoke 2 "$WORK/smoke" CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1
    "$PY" -m bench.gpu report "$WORK/smoke" --processes 2
fi
echo "smoke run passed"
[ "$DRY" = 1 ] && exit 0

if [ "$GPUS" = 0 ]; then echo "no GPU found (nvidia-smi): only the smoke part ran" >&2; exit 1; fi
echo "== $PRESET, $FOLDS-fold, on $DATA, $GPUS GPU process(es), store $STORE"
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" \
    train.py cnn --data "$DATA" --preset "$PRESET" --cv "$FOLDS" --store "$STORE"
"$PY" -m bench.gpu report "$STORE" --processes "$GPUS" --cuda

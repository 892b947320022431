#!/usr/bin/env bash
# What saekit runs on a lent GPU machine (the `device` tool; see docs/benchmarks.md): that machine has
# PyTorch but reaches no package index, so the peers travel as wheels in .whl/ and the activations as
# the bundle of benchmarks/portable_activations.py in .gpu/. Prints everything; copies logs to $OUT.
#   bash benchmarks/lent_gpu.sh peers [TOKENS] [PRECISION]   # CUDA tests, then benchmarks/peers.py
#   bash benchmarks/lent_gpu.sh decompose TOY...              # benchmarks/decompose.py --published
#   bash benchmarks/lent_gpu.sh steps                         # CUDA tests, then benchmarks/step_time.py
set -uo pipefail
OUT=${OUT:-/tmp/lent-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
cuda_tests() {
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_sparse.py tests/test_trainer.py \
        tests/test_decompose.py -k "device or bfloat16 or agree or short_training" 2>&1 | tail -15 | tee "$OUT/tests.txt"
}
case "$1" in
steps)
    cuda_tests
    timeout 200 python3 benchmarks/step_time.py --device cuda --profile 2>&1 | tee "$OUT/step_time.txt"
    ;;
peers)
    tokens=${2:-20000000}; precision=${3:-bf16}
    cuda_tests
    [ -f /tmp/export/train.npy ] || timeout 120 python3 benchmarks/portable_activations.py unpack \
        --bundle .gpu/minilm-l3 --out /tmp/export --device cuda || exit 1
    timeout "${PEERS_TIMEOUT:-420}" python3 benchmarks/peers.py --device cuda --precision "$precision" --data /tmp/export \
        --peer-python "$(command -v python3)" --tokens "$tokens" --repeats 3 --threads 8 \
        --json "$OUT/peers-$precision.json" 2>&1 | grep -v Warning | tee "$OUT/peers-$precision.txt"
    ;;
decompose)
    shift
    for toy in "$@"; do
        timeout "${DECOMPOSE_TIMEOUT:-280}" python3 benchmarks/decompose.py --toys "$toy" --published \
            --device cuda --threads 8 --progress --out "$OUT" ${DECOMPOSE_STEPS:+--steps $DECOMPOSE_STEPS} \
            2>&1 | tr '\r' '\n' | awk '!/it\/s|s\/it/ || /[0-9]000\//' | tee "$OUT/$toy.txt"
    done
    ;;
esac

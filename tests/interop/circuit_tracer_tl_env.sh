#!/usr/bin/env bash
# Build the circuit-tracer *attribution* environment (.cache/ct-tl-venv): circuit-tracer 0.5.0 with its
# TransformerLens backend, for tests/interop/test_attribution_circuit_tracer.py. Idempotent (a stamp
# names the pinned versions; a rerun with the same pins returns at once).
#
# A venv of its own, beside the loader-only one of tests/interop/circuit_tracer_env.sh: circuit-tracer's
# `attribute` needs a replacement model, whose TransformerLens backend imports transformer-lens, and
# transformer-lens 2.16 pins numpy<2 (the loader venv has numpy 2). torch first, the same CPU build saekit
# uses, then a constraint on every later install so nothing pulls a CUDA torch; transformers pinned to the
# newest circuit-tracer 0.5.0 accepts, pyarrow to one built for numpy 1 (datasets imports it).
# circuit-tracer goes in with --no-deps (its metadata also asks for
# nnsight, which only its nnsight backend imports).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SAEKIT_CT_TL_VENV:-.cache/ct-tl-venv}
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"
NO_DEPS="circuit-tracer==0.5.0"
PINS="transformers==4.57.3 huggingface-hub<1.0 pyarrow<21"
RUNTIME="transformer-lens==2.16.1 safetensors>=0.5 pydantic>=2 pyyaml tqdm einops"
SPEC="$TORCH $NO_DEPS $PINS $RUNTIME"
STAMP="$VENV/.saekit-ct-tl-env"

mkdir -p "$(dirname "$VENV")"
if command -v flock > /dev/null; then
  exec 9> "$VENV.lock"
  flock 9
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SPEC" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
rm -f "$STAMP"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
INSTALL="$PIP install --no-compile"
CONSTRAINTS="$VENV/saekit-constraints.txt"
printf '%s\n' "$TORCH" $PINS > "$CONSTRAINTS"
$INSTALL "$TORCH"
$INSTALL --no-deps $NO_DEPS
# shellcheck disable=SC2086  # lists of requirement specifiers
$INSTALL -c "$CONSTRAINTS" $PINS $RUNTIME
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert md.version("circuit-tracer") == "0.5.0", md.version("circuit-tracer")
from circuit_tracer.attribution.attribute import attribute  # noqa: F401
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel  # noqa: F401
PY
echo "$SPEC" > "$STAMP"

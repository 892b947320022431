#!/usr/bin/env bash
# Build the circuit-tracer virtual environment (.cache/ct-venv) holding the real circuit-tracer 0.5.0
# from PyPI, for tests/interop/test_circuit_tracer.py. Idempotent: a finished build leaves a stamp
# naming the pinned versions, and a rerun with the same pins returns at once.
#
# A venv of its own: circuit-tracer pins transformers<=4.57.3 (saekit's venv has a newer one) and the
# SAELens peer venv pins others. torch comes first, from the same CPU build saekit uses, and is a
# constraint on every later install, so nothing can pull a CUDA torch. circuit-tracer itself goes in
# with --no-deps: its metadata also requires transformer-lens and nnsight, which only its replacement
# models import (the TransformerLens and nnsight backends); the transcoder loaders and writers these
# tests drive (`circuit_tracer.transcoder`, `circuit_tracer.utils.caching`) need only the runtime
# packages listed in RUNTIME, installed normally under the torch constraint.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SAEKIT_CT_VENV:-.cache/ct-venv}
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"
NO_DEPS="circuit-tracer==0.5.0"
RUNTIME="transformers==4.57.3 huggingface-hub<1.0 safetensors>=0.5 numpy pydantic>=2 pyyaml tqdm einops"
SPEC="$TORCH $NO_DEPS $RUNTIME"
STAMP="$VENV/.saekit-ct-env"

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
echo "$TORCH" > "$CONSTRAINTS"
$INSTALL "$TORCH"
$INSTALL --no-deps $NO_DEPS
# shellcheck disable=SC2086  # RUNTIME is a list of requirement specifiers
$INSTALL -c "$CONSTRAINTS" $RUNTIME
# Fail here, with the import error, rather than in every test.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert md.version("circuit-tracer") == "0.5.0", md.version("circuit-tracer")
from circuit_tracer.transcoder import load_transcoder_set  # noqa: F401
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt  # noqa: F401
from circuit_tracer.utils.caching import load_transcoders_from_cache  # noqa: F401
PY
echo "$SPEC" > "$STAMP"

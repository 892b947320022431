#!/usr/bin/env bash
# Build the peer virtual environment (.cache/peer-venv) holding the real SAELens, sparsify and
# dictionary_learning from PyPI, for tests/interop. Idempotent: a finished build leaves a stamp naming
# the pinned versions, and a rerun with the same pins returns at once.
#
# Pins: torch first, from the same CPU build saekit uses, and as a constraint on every later install,
# so no peer's requirements can pull a CUDA torch. dictionary-learning 0.1.0 requires nnsight<0.4, whose
# metadata pulls torchvision (a CUDA build whose C++ ops cannot register beside CPU torch, breaking
# `import transformers` model classes) and diffusers, neither of which nnsight imports for what
# dictionary_learning does: both are installed --no-deps, plus the runtime packages their imports need.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SAEKIT_PEER_VENV:-.cache/peer-venv}
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"
PEERS="sae-lens==6.54.12 eai-sparsify==1.3.3"
NO_DEPS="dictionary-learning==0.1.0 nnsight==0.3.7"
RUNTIME="pillow accelerate pydantic python-socketio sentencepiece zstandard datasets einops tqdm"
SPEC="$TORCH $PEERS $NO_DEPS $RUNTIME"
STAMP="$VENV/.saekit-peer-env"

# One build at a time: a second caller (another pytest run) waits, then finds the stamp.
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
# --no-compile: skip byte-compiling every installed module (transformers alone has thousands of files);
# the few modules the tests import compile on first use.
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
INSTALL="$PIP install --no-compile"
CONSTRAINTS="$VENV/saekit-constraints.txt"
echo "$TORCH" > "$CONSTRAINTS"
$INSTALL "$TORCH"
$INSTALL -c "$CONSTRAINTS" $PEERS
$INSTALL --no-deps $NO_DEPS
$INSTALL -c "$CONSTRAINTS" $RUNTIME
# Fail here, with the import error, rather than in every test.
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
from sae_lens import SAE  # noqa: F401
from sparsify import SparseCoder  # noqa: F401
from dictionary_learning.utils import load_dictionary  # noqa: F401
PY
echo "$SPEC" > "$STAMP"

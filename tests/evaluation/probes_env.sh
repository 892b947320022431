#!/usr/bin/env bash
# Build the side virtual environment (.cache/probes-venv) holding the real sae-probes 0.4.2 from PyPI with
# TransformerLens and SAELens, for tests/evaluation/test_probing_peer.py (saekit's sparse probing against
# sae-probes' own pipeline). saekit never imports from it. Idempotent: a finished build leaves a stamp
# naming the pinned versions, and a rerun with the same pins returns at once.
#
# Pins: torch first, from the same CPU build saekit uses, and as a constraint on every later install, so
# no requirement can pull a CUDA torch. sae-probes and xgboost are installed --no-deps: xgboost's metadata
# pulls nvidia-nccl-cu12 (a GPU library that sae-probes' logistic-regression probes never load), so
# sae-probes' other requirements are listed here with its own bounds.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${SAEKIT_PROBES_VENV:-.cache/probes-venv}
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"
NO_DEPS="sae-probes==0.4.2 xgboost==3.1.2"
REQUIREMENTS="sae-lens>=5,<7 transformer-lens>=2.15.4,<4 scikit-learn>=1.6.1,<2 pandas>=2.2.3,<3 pyarrow<26
zstandard>=0.19 scipy joblib tqdm"
SPEC="$TORCH $NO_DEPS $REQUIREMENTS"
STAMP="$VENV/.saekit-probes-env"

mkdir -p "$(dirname "$VENV")"
if command -v flock > /dev/null; then  # one build at a time; a second caller waits, then finds the stamp
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
INSTALL="$PIP install --no-compile"  # the few modules the tests import compile on first use
CONSTRAINTS="$VENV/saekit-constraints.txt"
echo "$TORCH" > "$CONSTRAINTS"
$INSTALL "$TORCH"
# shellcheck disable=SC2086  # word splitting of the lists is meant
$INSTALL -c "$CONSTRAINTS" $REQUIREMENTS
# shellcheck disable=SC2086
$INSTALL --no-deps $NO_DEPS
# Fail here, with the import error, rather than in every test.
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
from sae_probes.run_sae_evals import run_sae_eval  # noqa: F401  (imports TransformerLens and SAELens)
from sae_probes.run_baselines import run_baseline_dataset_layer  # noqa: F401
PY
echo "$SPEC" > "$STAMP"

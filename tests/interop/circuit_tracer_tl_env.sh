#!/usr/bin/env bash
# Build the circuit-tracer *attribution* environment (.cache/ct-tl-venv): circuit-tracer 0.5.0 with its
# TransformerLens backend, for tests/interop/test_attribution_circuit_tracer.py (the build itself:
# tests/side_venv.sh).
#
# A venv of its own, beside the loader-only one of tests/interop/circuit_tracer_env.sh: circuit-tracer's
# `attribute` needs a replacement model, whose TransformerLens backend imports transformer-lens, and
# transformer-lens 2.16 pins numpy<2 (the loader venv has numpy 2). transformers is pinned to the newest
# circuit-tracer 0.5.0 accepts, pyarrow to one built for numpy 1 (datasets imports it). circuit-tracer goes
# in with --no-deps (its metadata also asks for nnsight, which only its nnsight backend imports).
NAME=ct-tl-env
VENV=${SAEKIT_CT_TL_VENV:-.cache/ct-tl-venv}
REQUIREMENTS=""
NO_DEPS="circuit-tracer==0.5.0"
PINS="transformers==4.57.3 huggingface-hub<1.0 pyarrow<21"
RUNTIME="transformer-lens==2.16.1 safetensors>=0.5 pydantic>=2 pyyaml tqdm einops"
CHECK="
import importlib.metadata as md
assert md.version('circuit-tracer') == '0.5.0', md.version('circuit-tracer')
from circuit_tracer.attribution.attribute import attribute
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel"
source "$(dirname "$0")/../side_venv.sh"

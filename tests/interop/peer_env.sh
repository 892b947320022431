#!/usr/bin/env bash
# Build the peer virtual environment (.cache/peer-venv) holding the real SAELens, sparsify and
# dictionary_learning from PyPI, for tests/interop (the build itself: tests/side_venv.sh).
#
# dictionary-learning 0.1.0 requires nnsight<0.4, whose metadata pulls torchvision (a CUDA build whose C++
# ops cannot register beside CPU torch, breaking `import transformers` model classes) and diffusers, neither
# of which nnsight imports for what dictionary_learning does: both go in --no-deps, plus the runtime
# packages their imports need.
NAME=peer-env
VENV=${SAEKIT_PEER_VENV:-.cache/peer-venv}
REQUIREMENTS="sae-lens==6.54.12 eai-sparsify==1.3.3"
NO_DEPS="dictionary-learning==0.1.0 nnsight==0.3.7"
PINS=""
RUNTIME="pillow accelerate pydantic python-socketio sentencepiece zstandard datasets einops tqdm"
CHECK="
from sae_lens import SAE
from sparsify import SparseCoder
from dictionary_learning.utils import load_dictionary"
source "$(dirname "$0")/../side_venv.sh"

#!/usr/bin/env bash
# Build the side virtual environment (.cache/probes-venv) holding the real sae-probes 0.4.2 from PyPI with
# TransformerLens and SAELens, for tests/evaluation/test_probing_peer.py (saekit's sparse probing against
# sae-probes' own pipeline; the build itself: tests/side_venv.sh).
#
# sae-probes and xgboost go in --no-deps: xgboost's metadata pulls nvidia-nccl-cu12 (a GPU library that
# sae-probes' logistic-regression probes never load), so sae-probes' other requirements are listed here
# with its own bounds.
NAME=probes-env
VENV=${SAEKIT_PROBES_VENV:-.cache/probes-venv}
REQUIREMENTS="sae-lens>=5,<7 transformer-lens>=2.15.4,<4 scikit-learn>=1.6.1,<2 pandas>=2.2.3,<3 pyarrow<26"
REQUIREMENTS="$REQUIREMENTS zstandard>=0.19 scipy joblib tqdm"
NO_DEPS="sae-probes==0.4.2 xgboost==3.1.2"
PINS=""
RUNTIME=""
CHECK="
from sae_probes.run_sae_evals import run_sae_eval  # imports TransformerLens and SAELens
from sae_probes.run_baselines import run_baseline_dataset_layer"
source "$(dirname "$0")/../side_venv.sh"

"""saekit: sparse dictionary learning on the internals of neural networks.

Public API (a contract for notebooks and outside tools):
    DictionaryConfig, TrainingConfig, Provenance, DictionarySpec, RunConfig, Dictionary, train, save,
    load, evaluate, method_names, SaekitError; multi-layer transcoders in `saekit.circuits`
"""

import os

# Large CPU tensors on transparent huge pages (PyTorch's own switch, read at the process's first
# allocation, so it is set before anything allocates). A training step allocates several fresh
# [batch, d_sae] tensors; on 4 KiB pages the kernel's page faults for a 100 MB tensor cost ~40 ms on
# one core, 9x the time to fill it (benchmarks/dense_peak.py: dense steps 17-38% faster). A user's own
# setting wins; `THP_MEM_ALLOC_ENABLE=0` turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.evaluation.metrics import evaluate
from saekit.formats.detect import load, save  # any format, local or Hub; transcoder sets and CLTs too
from saekit.methods import method_names
from saekit.spec import DictionarySpec
from saekit.training.config import RunConfig, TrainingConfig
from saekit.training.trainer import train

__version__ = "0.1.0"

__all__ = [
    "Dictionary",
    "DictionaryConfig",
    "DictionarySpec",
    "Provenance",
    "RunConfig",
    "SaekitError",
    "TrainingConfig",
    "evaluate",
    "load",
    "method_names",
    "save",
    "train",
]

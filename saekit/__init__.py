"""saekit: sparse dictionary learning on the internals of neural networks.

Public API (a contract for notebooks and outside tools):
    DictionaryConfig, TrainConfig, Dictionary, train, save, load, evaluate, SaekitError
"""

from saekit.config import METHODS, DictionaryConfig, TrainConfig
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.evaluation.metrics import evaluate
from saekit.formats.detect import load_any as load  # any format, local or Hugging Face Hub
from saekit.formats.native import save
from saekit.training.trainer import train

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Dictionary",
    "DictionaryConfig",
    "SaekitError",
    "TrainConfig",
    "evaluate",
    "load",
    "save",
    "train",
]

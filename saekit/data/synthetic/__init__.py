"""Synthetic ground-truth data with hierarchy (SynthSAEBench's recipe; docs/synthetic.md):
`SyntheticConfig` (and presets), `SyntheticModel` (features, probabilities, hierarchy; `sample`),
`SyntheticData` (the resumable stream the trainer reads)."""

from saekit.data.synthetic.config import SYNTHETIC_PRESETS, SyntheticConfig, synthetic_preset
from saekit.data.synthetic.model import SyntheticData, SyntheticModel

__all__ = ["SYNTHETIC_PRESETS", "SyntheticConfig", "SyntheticData", "SyntheticModel", "synthetic_preset"]

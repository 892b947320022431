"""What a synthetic ground-truth model is: `SyntheticConfig` and its presets (docs/synthetic.md).

The defaults are the published SynthSAEBench-16k (v2) model (METHODS-2 §5.1): 16,384 features in 768
dimensions, Zipf firing probabilities, a forest of 128 trees of depth 3 with mutually exclusive children
scaled by their parent, a rank-25 correlation, lightly orthogonalised directions and a bias of norm 0.5.
The `cpu` preset keeps every setting but the sizes (1,024 features, 128 dimensions, 16 roots).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saekit.config import check_fields, help_field
from saekit.errors import SaekitError

COMPENSATIONS = ("exact", "saelens")


@dataclass
class SyntheticConfig:
    """A synthetic model: ground-truth features, how often and how strongly they fire, their hierarchy."""

    n_features: int = help_field("Number N of ground-truth features.", default=16_384)
    d_in: int = help_field("Dimension of the activations the features are written into.", default=768)
    seed: int = help_field("Seed of the model: directions (a stream derived from seed), magnitude spreads "
                           "(seed+1), hierarchy (seed+3), correlation (seed+4).", default=42)
    zipf_exponent: float = help_field("Feature i (rank r = i+1) fires with p_min + (p_max − p_min)·"
                                      "(r^−a − N^−a)/(1 − N^−a); this is a.", default=0.5)
    p_max: float = help_field("Firing probability of the most frequent feature.", default=0.4)
    p_min: float = help_field("Firing probability of the rarest feature.", default=5e-4)
    roots: int = help_field("Hierarchy: number of trees (features 0..roots−1 are their roots; 0: no "
                            "hierarchy).", default=128)
    branching: int = help_field("Hierarchy: children per parent.", default=4)
    max_depth: int = help_field("Hierarchy: levels below the roots.", default=3)
    exclusive_portion: float = help_field("Hierarchy: fraction of parents (at depth >= exclusive_min_depth, "
                                          "with >= 2 children) whose children are mutually exclusive.",
                                          default=1.0)
    exclusive_min_depth: int = help_field("Hierarchy: shallowest parent depth that can have mutually "
                                          "exclusive children (0 = roots).", default=0)
    scale_children_by_parent: bool = help_field("Hierarchy: a child's magnitude is multiplied by "
                                                "parent/mean(parent) (else it is only gated by the parent).",
                                                default=True)
    compensate_probabilities: bool = help_field("Hierarchy: raise children's probabilities so each feature "
                                                "still fires at its Zipf rate despite gating and exclusion.",
                                                default=True)
    compensation: str = help_field("How: 'exact' (solve for each mutually exclusive group so every child "
                                   "fires at its base rate, METHODS-2 §5.1) or 'saelens' (SAELens 6.54's "
                                   "first-order rule, 1 + Σ other siblings' p / p_parent).", default="exact")
    correlation_rank: int = help_field("Rank of the Gaussian-copula correlation of firing (0: independent).",
                                       default=25)
    correlation_scale: float = help_field("Standard deviation of the correlation factor's entries.",
                                          default=0.1)
    orthogonalize_steps: int = help_field("Adam steps on Σ_{i≠j}(d_i·d_j)² + N·Σ(|d_i|²−1)² that spread "
                                          "the random unit directions apart (0: none).", default=100)
    orthogonalize_lr: float = help_field("Learning rate of those steps.", default=3e-4)
    magnitude_start: float = help_field("Mean firing magnitude of feature 0 (linear to magnitude_end).",
                                        default=5.0)
    magnitude_end: float = help_field("Mean firing magnitude of the last feature.", default=4.0)
    magnitude_spread_mean: float = help_field("Per-feature std of magnitudes is |m + s·n|, n ~ N(0, 1); "
                                              "this is m.", default=0.5)
    magnitude_spread_std: float = help_field("... and this is s.", default=0.5)
    bias_norm: float = help_field("Norm of the constant vector added to every activation.", default=0.5)

    def __post_init__(self) -> None:
        positive = ("n_features", "d_in", "branching", "max_depth")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SaekitError(f"synthetic {name} must be a positive integer, got {value!r}")
        if self.roots < 0 or self.roots > self.n_features:
            raise SaekitError(f"synthetic roots must be in [0, n_features], got {self.roots}")
        if self.branching < 2:
            raise SaekitError("synthetic branching must be at least 2")
        if not 0 < self.p_min < self.p_max <= 1:
            raise SaekitError("synthetic probabilities need 0 < p_min < p_max <= 1")
        if self.zipf_exponent <= 0:
            raise SaekitError("synthetic zipf_exponent must be positive")
        if not 0 <= self.exclusive_portion <= 1:
            raise SaekitError("synthetic exclusive_portion must be in [0, 1]")
        if self.compensation not in COMPENSATIONS:
            raise SaekitError(f"synthetic compensation must be one of {', '.join(COMPENSATIONS)}")
        if self.correlation_rank < 0 or self.correlation_scale < 0:
            raise SaekitError("synthetic correlation_rank and correlation_scale must be >= 0")
        if self.orthogonalize_steps < 0 or self.orthogonalize_lr <= 0:
            raise SaekitError("synthetic orthogonalize_steps must be >= 0 and orthogonalize_lr > 0")
        if self.magnitude_start <= 0 or self.magnitude_end <= 0:
            raise SaekitError("synthetic mean magnitudes must be positive (children are scaled by "
                              "parent / mean(parent))")
        if self.magnitude_spread_std < 0 or self.bias_norm < 0:
            raise SaekitError("synthetic magnitude_spread_std and bias_norm must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticConfig:
        check_fields(cls, data, "synthetic config")
        return cls(**data)


# Presets: the published 16k model (for GPUs) and the same model shrunk to run on a CPU in minutes.
SYNTHETIC_PRESETS: dict[str, dict[str, Any]] = {
    "16k": {},
    "cpu": dict(n_features=1024, d_in=128, roots=16),
}


def synthetic_preset(name: str, **overrides: Any) -> SyntheticConfig:
    """The preset's config with `overrides` applied."""
    if name not in SYNTHETIC_PRESETS:
        raise SaekitError(f"unknown synthetic preset {name!r}: choose one of {', '.join(SYNTHETIC_PRESETS)}")
    return SyntheticConfig(**{**SYNTHETIC_PRESETS[name], **overrides})

"""The one learning-rate schedule, used by SAE training, end-to-end training and parameter decomposition.

A linear warm-up from 0 over `warmup_steps`, then either constant with a linear decay to 0 over the
last `decay_steps` (the SAE recipes: April-2024 update, Gemma Scope, BatchTopK) or a half-cosine from
the end of the warm-up to 0 at the last step (the APD/SPD configs).
"""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: float = 0.0, decay_steps: float = 0.0,
              shape: str = "linear") -> float:
    """Multiplier of the base learning rate at `step` (0-based) of `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if shape == "cosine":
        progress = (step - warmup_steps) / max(total_steps - warmup_steps - 1, 1)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape != "linear":
        raise ValueError(f"unknown schedule shape {shape!r}: use 'linear' or 'cosine'")
    if decay_steps > 0 and step >= total_steps - decay_steps:
        return max(0.0, (total_steps - step) / decay_steps)
    return 1.0


def warmup_factor(step: int, warmup_steps: float) -> float:
    """Linear warm-up of a coefficient (the sparsity penalty λ) from 0 over `warmup_steps`."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0

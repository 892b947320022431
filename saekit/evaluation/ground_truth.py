"""Scores against known features: how well a dictionary's decoder directions recover ground truth."""

from __future__ import annotations

from torch import Tensor


def mmcs(ground_truth: Tensor, dictionary_directions: Tensor) -> float:
    """Mean max cosine similarity: (1/G) Σ_g max_j cos(F_g, D_j), over ground-truth features."""
    f = ground_truth / ground_truth.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    d = dictionary_directions / dictionary_directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return float((f @ d.T).max(dim=1).values.mean())

"""Model diffing with crosscoders: which latents belong to which model (CC, MIN; docs/methods.md
"Transcoders, crosscoders, meta-SAEs").

For a crosscoder over two sources (e.g. base and chat), latent i has one decoder block per source. The
relative decoder norm r_i = ||d_i^B|| / (||d_i^A|| + ||d_i^B||) is ≈ 0 for first-model-only latents,
≈ 1 for second-model-only, ≈ 0.5 for shared ones. Thresholds (ours, stated): first-only r < 0.1,
second-only r > 0.9, shared 0.3 ≤ r ≤ 0.7; the rest are "other". Decoder-norm labels from an L1
crosscoder can be artefacts (complete shrinkage, latent decoupling): check with latent scaling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.dictionary import Dictionary

FIRST_ONLY, SECOND_ONLY, SHARED_LOW, SHARED_HIGH = 0.1, 0.9, 0.3, 0.7


def decoder_blocks(d: Dictionary) -> Tensor:
    """W_dec as [d_sae, n_sources, d] (one block per source)."""
    return d.W_dec.detach().reshape(d.d_sae, d.cfg.n_sources, -1)


def relative_decoder_norms(d: Dictionary) -> Tensor:
    """r_i = ||d_i^second|| / (||d_i^first|| + ||d_i^second||) for a two-source crosscoder."""
    if d.cfg.n_sources != 2:
        raise ValueError(f"relative decoder norms need a 2-source crosscoder, got {d.cfg.n_sources}")
    norms = decoder_blocks(d).norm(dim=-1)
    return norms[:, 1] / norms.sum(-1).clamp_min(1e-12)


def classify_latents(d: Dictionary, alive: Tensor | None = None) -> dict[str, Tensor]:
    """Boolean masks: first_only, second_only, shared, other (dead latents excluded when `alive`)."""
    r = relative_decoder_norms(d)
    keep = torch.ones_like(r, dtype=torch.bool) if alive is None else alive
    return {
        "first_only": keep & (r < FIRST_ONLY),
        "second_only": keep & (r > SECOND_ONLY),
        "shared": keep & (r >= SHARED_LOW) & (r <= SHARED_HIGH),
        "other": keep & (((r >= FIRST_ONLY) & (r < SHARED_LOW)) | ((r > SHARED_HIGH) & (r <= SECOND_ONLY))),
    }


def shared_decoder_cosines(d: Dictionary, shared: Tensor) -> Tensor:
    """cos(d_i^first, d_i^second) for the shared latents."""
    blocks = decoder_blocks(d)[shared]
    return torch.nn.functional.cosine_similarity(blocks[:, 0], blocks[:, 1], dim=-1)


def latent_scaling_beta(latent_values: Tensor, targets: Tensor, direction: Tensor) -> float:
    """Closed-form β = argmin Σ_x ||y(x) − β f(x) d||² = dᵀ(Σ f·y) / (||d||² Σ f²) (MIN/DTK)."""
    numerator = direction @ (latent_values[:, None] * targets).sum(0)
    denominator = direction.pow(2).sum() * latent_values.pow(2).sum()
    return float(numerator / denominator.clamp_min(1e-12))


def diffing_summary(d: Dictionary, alive: Tensor | None = None, bins: int = 20) -> dict[str, Any]:
    masks = classify_latents(d, alive)
    r = relative_decoder_norms(d)
    kept = r if alive is None else r[alive]
    histogram = torch.histc(kept, bins=bins, min=0.0, max=1.0)
    cosines = shared_decoder_cosines(d, masks["shared"])
    names = d.provenance.source_hookpoints or ["first", "second"]
    return {
        "sources": names,
        "counts": {key: int(mask.sum()) for key, mask in masks.items()},
        "relative_norm_histogram": {"bins": bins, "counts": [int(c) for c in histogram]},
        "shared_cosine_mean": float(cosines.mean()) if cosines.numel() else None,
        "shared_cosine_median": float(cosines.median()) if cosines.numel() else None,
        "thresholds": {"first_only": f"r < {FIRST_ONLY}", "second_only": f"r > {SECOND_ONLY}",
                       "shared": f"{SHARED_LOW} <= r <= {SHARED_HIGH}"},
    }

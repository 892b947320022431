"""Per-head attention-output SAEs (Kissane et al. 2024; METHODS-2.md §4.3): a dictionary on `attn_z.L`,
the concatenated per-head outputs [n_heads · d_head] before the output projection, whose decoder rows
split into one block per head. Latent i is attributed to head h by its decoder norm there:
‖d_i^h‖ / Σ_h' ‖d_i^h'‖ (L2 norms of the blocks; the paper's weight-based attribution, whose exact norm
METHODS-2 leaves open), so the fractions of a latent sum to 1 and a latent that writes through one head
only has fraction 1 on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.errors import SaekitError


def head_attribution(W_dec: Tensor, n_heads: int) -> Tensor:
    """[d_sae, n_heads] fraction of each latent's decoder norm on each head."""
    d_sae, width = W_dec.shape
    if n_heads <= 0 or width % n_heads:
        raise SaekitError(f"a decoder of width {width} does not split into {n_heads} heads: is the dictionary "
                          "on an attn_z.L hookpoint of this model?")
    norms = W_dec.detach().float().reshape(d_sae, n_heads, width // n_heads).norm(dim=-1)
    return norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)


def top_head(fractions: Tensor) -> tuple[Tensor, Tensor]:
    """(head, fraction) [d_sae] of each latent's largest head share."""
    values, heads = fractions.max(-1)
    return heads, values


def summary(fractions: Tensor) -> dict[str, float]:
    """How concentrated latents are on heads: the median and quartiles of the top-head fraction, and
    the shares of latents above 0.5 and 0.9 (the paper: most latents sit on few heads)."""
    _, top = top_head(fractions)
    quartiles = torch.quantile(top, torch.tensor([0.25, 0.5, 0.75]))
    return {"latents": int(top.numel()), "top_head_fraction_median": float(quartiles[1]),
            "top_head_fraction_q25": float(quartiles[0]), "top_head_fraction_q75": float(quartiles[2]),
            "share_above_0.5": float((top > 0.5).float().mean()),
            "share_above_0.9": float((top > 0.9).float().mean()),
            "uniform_fraction": 1.0 / fractions.shape[1]}

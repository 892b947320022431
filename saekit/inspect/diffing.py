"""Model diffing with crosscoders: which latents belong to which model (CC, MIN; docs/diffing.md).

For a crosscoder over two sources (e.g. base and chat), latent i has one decoder block per source. The
relative decoder norm r_i = ||d_i^B|| / (||d_i^A|| + ||d_i^B||) (blocks in the space the crosscoder was
trained in, where both models' activations had the same mean norm) is ≈ 0 for first-model-only latents,
≈ 1 for second-model-only, ≈ 0.5 for shared ones. Thresholds (ours, stated): first-only r < 0.1,
second-only r > 0.9, shared 0.3 ≤ r ≤ 0.7; the rest are "other". Decoder-norm labels from an L1
crosscoder can be artefacts (complete shrinkage, latent decoupling): `LatentScaling` checks them, and
`survives_latent_scaling` applies our thresholds (|ν_error| < 0.2, |ν_reconstruction| < 0.5,
β^own_error > 0, ≥ 10 firings).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.dictionary import Dictionary

FIRST_ONLY, SECOND_ONLY, SHARED_LOW, SHARED_HIGH = 0.1, 0.9, 0.3, 0.7
# Latent scaling: a model-specific latent "survives" when both ratios ν = β^other / β^own are below these
# and it fired on at least MIN_SCALING_COUNT evaluation tokens (ours, stated; Minder et al. rank by ν).
NU_ERROR_MAX, NU_RECONSTRUCTION_MAX, MIN_SCALING_COUNT = 0.2, 0.5, 10


def decoder_blocks(d: Dictionary, trained_space: bool = False) -> Tensor:
    """W_dec as [d_sae, n_sources, d] (one block per source). With `trained_space`, each block is in the
    space the crosscoder was trained in (times its source's normalisation scale), where every source's
    activations had the same mean norm; saved weights take raw activations."""
    blocks = d.W_dec.detach().reshape(d.d_sae, d.cfg.n_sources, -1)
    return blocks * source_scales(d).to(blocks)[None, :, None] if trained_space else blocks


def relative_decoder_norms(d: Dictionary) -> Tensor:
    """r_i = ||d_i^second|| / (||d_i^first|| + ||d_i^second||) for a two-source crosscoder, on the blocks
    in the trained space: with raw blocks a model whose activations are 4× larger would seem to own every
    latent (benchmarks/diffing.py, "second model 4× louder")."""
    if d.cfg.n_sources != 2:
        raise ValueError(f"relative decoder norms need a 2-source crosscoder, got {d.cfg.n_sources}")
    norms = decoder_blocks(d, trained_space=True).norm(dim=-1)
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


class LatentScaling:
    """Latent scaling (Minder et al. 2025; the diffing toolkit's `closed_form_scalars`), accumulated over
    batches of a two-source crosscoder's inputs.

    For latent j, probed with its decoder block in the model it is said to belong to (p_j = d_j^own),
    and for each model m, β^m_t = p_jᵀ(Σ_x f_j(x) y(x)) / (||p_j||² Σ_x f_j(x)²) with two targets y:
    - error: y = x^m − (x̂^m − f_j d_j^m), model m's reconstruction error with latent j's own term added
      back, i.e. what is left for latent j to explain;
    - reconstruction: y = x̂^m, model m's full reconstruction (b_dec included).
    ν_t = β^other_t / β^own_t. A latent that truly belongs to one model has ν ≈ 0: the other model's
    activations hold nothing along p_j. Complete shrinkage (the concept is in the other model, weaker,
    and the sparsity penalty zeroed its block there) shows as a high ν_error; latent decoupling (other
    latents carry the concept in the other model) as a high ν_reconstruction.

    Everything is computed in the space the crosscoder was trained in (each source multiplied by its
    recorded normalisation scale), so the two models' β are comparable when their activation norms differ.
    """

    def __init__(self, d: Dictionary, latents: Tensor, own: Tensor) -> None:
        if d.cfg.n_sources != 2:
            raise ValueError(f"latent scaling needs a 2-source crosscoder, got {d.cfg.n_sources}")
        self.latents, self.own = latents.long(), own.long()
        self.scale = source_scales(d)  # [2]
        blocks = decoder_blocks(d, trained_space=True).float()  # [d_sae, 2, d]
        self.blocks = blocks
        self.bias = d.b_dec.detach().float().reshape(2, -1) * self.scale[:, None]
        self.probes = blocks[self.latents, self.own]  # [L, d]
        n, width = len(self.latents), blocks.shape[-1]
        # Σ_x f_j y(x) for each model and target, the Σ f_j², and the firing counts.
        self.sum_f_error = torch.zeros(n, 2, width, dtype=torch.float64)
        self.sum_f_reconstruction = torch.zeros(n, 2, width, dtype=torch.float64)
        self.sum_f2 = torch.zeros(n, dtype=torch.float64)
        self.count = torch.zeros(n, dtype=torch.long)

    @torch.no_grad()
    def update(self, inputs: Tensor, codes: Tensor) -> None:
        """inputs [N, 2·d] (raw, as the crosscoder reads them), codes [N, d_sae] = d.encode(inputs)."""
        x = inputs.float().reshape(inputs.shape[0], 2, -1) * self.scale[None, :, None]
        codes = codes.float()
        f = codes[:, self.latents]  # [N, L]
        for m in range(2):
            reconstruction = codes @ self.blocks[:, m] + self.bias[m]  # [N, d]
            self.sum_f_reconstruction[:, m] += (f.T @ reconstruction).double()
            self.sum_f_error[:, m] += (f.T @ (x[:, m] - reconstruction)).double()
        self.sum_f2 += f.pow(2).sum(0).double()
        self.count += (f > 0).sum(0)

    def betas(self) -> dict[str, Tensor]:
        """beta_error / beta_reconstruction [L, 2] (columns: the two sources), nu_error /
        nu_reconstruction [L] (other over own), count [L] (tokens where the latent fired)."""
        p = self.probes.double()
        denominator = p.pow(2).sum(-1) * self.sum_f2  # ||p_j||² Σ f_j²
        # The error target adds latent j's own term back: Σ_x f_j·(f_j d_j^m) = (Σ f_j²)·d_j^m.
        own_terms = self.sum_f2[:, None, None] * self.blocks[self.latents].double()
        out: dict[str, Tensor] = {}
        for name, sums in (("error", self.sum_f_error + own_terms), ("reconstruction", self.sum_f_reconstruction)):
            beta = (sums * p[:, None, :]).sum(-1) / denominator[:, None]
            beta[self.count == 0] = float("nan")
            own = beta.gather(1, self.own[:, None]).squeeze(1)
            other = beta.gather(1, (1 - self.own)[:, None]).squeeze(1)
            out[f"beta_{name}"] = beta.float()
            out[f"nu_{name}"] = (other / own).float()
        out["count"] = self.count.clone()
        return out


def source_scales(d: Dictionary) -> Tensor:
    """Each source's training normalisation scale (ones when none was recorded)."""
    recorded = (d.meta.get("normalization") or {}).get("input_scale", 1.0)
    values = recorded if isinstance(recorded, list) else [recorded] * d.cfg.n_sources
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def survives_latent_scaling(scaling: dict[str, Tensor], own: Tensor, min_count: int = MIN_SCALING_COUNT
                            ) -> Tensor:
    """Model-specific by latent scaling: the latent explains its own model's error (β^own_error > 0), both
    ratios are small in magnitude (|ν_error| < NU_ERROR_MAX, |ν_reconstruction| < NU_RECONSTRUCTION_MAX: a
    large negative ν means the direction is in the other model too, with the opposite sign), and it
    fired often enough to estimate them (thresholds are ours; see the module docstring)."""
    own_beta = scaling["beta_error"].gather(1, own.long()[:, None]).squeeze(1)
    return ((own_beta > 0) & (scaling["nu_error"].abs() < NU_ERROR_MAX)
            & (scaling["nu_reconstruction"].abs() < NU_RECONSTRUCTION_MAX) & (scaling["count"] >= min_count))


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

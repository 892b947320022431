"""Reconstruction and sparsity metrics (METHODS.md §12), as functions and as a streaming accumulator.

Definitions, stated once:
- L0: mean over tokens of #{i : f_i ≠ 0}.
- MSE: mean over tokens of ||x − x̂||² (summed over dimensions, as SAELens/SAEBench report it).
- FVU: Σ||x − x̂||² / Σ||x − mean(x)||², the mean taken per dimension over the whole dataset.
  Explained variance = 1 − FVU.
- Legacy explained variance (SAELens/SAEBench "explained_variance_legacy"): the per-token ratio
  1 − ||x − x̂||² / ||x − batch_mean(x)||², averaged over tokens. Reported under that name only.
- Cosine similarity: mean over tokens of cos(x, x̂); l2 ratio: mean ||x̂||/||x||.
- Relative reconstruction bias γ = E||x̂||² / E[x·x̂] (Gated paper eq. 10): < 1 means shrinkage.
- Firing density: fraction of tokens on which a latent is non-zero; dead = never fires on the data;
  dense = fires on more than 1% (or 10%) of tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from saekit.dictionary import Dictionary


def l0(latents: Tensor) -> float:
    return float((latents != 0).sum(-1).double().mean())


def mse(x: Tensor, x_hat: Tensor) -> float:
    return float((x - x_hat).pow(2).sum(-1).mean())


def fvu(x: Tensor, x_hat: Tensor) -> float:
    x64, err = x.double(), (x - x_hat).double()
    return float(err.pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum())


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    return 1.0 - fvu(x, x_hat)


def explained_variance_legacy(x: Tensor, x_hat: Tensor) -> float:
    x64, err = x.double(), (x - x_hat).double()
    per_token = 1 - err.pow(2).sum(-1) / (x64 - x64.mean(0)).pow(2).sum(-1)
    return float(per_token.mean())


def cosine_similarity(x: Tensor, x_hat: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(x.double(), x_hat.double(), dim=-1).mean())


def l2_ratio(x: Tensor, x_hat: Tensor) -> float:
    return float((x_hat.double().norm(dim=-1) / x.double().norm(dim=-1).clamp_min(1e-12)).mean())


def relative_reconstruction_bias(x: Tensor, x_hat: Tensor) -> float:
    x64, xh = x.double(), x_hat.double()
    return float(xh.pow(2).sum(-1).mean() / (x64 * xh).sum(-1).mean())


def firing_density(latents: Tensor) -> Tensor:
    return (latents != 0).double().mean(0)


def dead_fraction(density: Tensor) -> float:
    return float((density == 0).double().mean())


def dense_fraction(density: Tensor, threshold: float = 0.01) -> float:
    return float((density > threshold).double().mean())


class MetricsAccumulator:
    """Streams batches and gives every metric above over all of them, in float64.

    FVU needs the dataset mean, which is only known at the end, so it keeps Σx and Σ||x||² and uses
    Σ||x − μ||² = Σ||x||² − N·||μ||². The legacy EV uses each batch's own mean, as SAELens does.
    """

    def __init__(self, d_sae: int) -> None:
        self.tokens = 0
        self.sum_x: Tensor | None = None
        self.sum_sq_x = 0.0
        self.sum_err = 0.0
        self.sum_l0 = 0.0
        self.sum_cos = 0.0
        self.sum_l2_ratio = 0.0
        self.sum_xhat_sq = 0.0
        self.sum_x_dot_xhat = 0.0
        self.sum_legacy_ev = 0.0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, latents: Tensor) -> None:
        x64, xh = x.double().cpu(), x_hat.double().cpu()
        n = x64.shape[0]
        err = (x64 - xh).pow(2).sum(-1)
        self.tokens += n
        self.sum_x = x64.sum(0) if self.sum_x is None else self.sum_x + x64.sum(0)
        self.sum_sq_x += float(x64.pow(2).sum())
        self.sum_err += float(err.sum())
        self.sum_l0 += float((latents != 0).sum())
        self.sum_cos += float(torch.nn.functional.cosine_similarity(x64, xh, dim=-1).sum())
        self.sum_l2_ratio += float((xh.norm(dim=-1) / x64.norm(dim=-1).clamp_min(1e-12)).sum())
        self.sum_xhat_sq += float(xh.pow(2).sum())
        self.sum_x_dot_xhat += float((x64 * xh).sum())
        batch_var = (x64 - x64.mean(0)).pow(2).sum(-1)
        self.sum_legacy_ev += float((1 - err / batch_var.clamp_min(1e-30)).sum())
        self.fire_counts += (latents != 0).sum(0).double().cpu()

    def result(self) -> dict[str, float]:
        if self.tokens == 0:
            raise ValueError("no tokens were evaluated")
        n = self.tokens
        assert self.sum_x is not None  # every update() sets it, and there was at least one
        mean = self.sum_x / n
        total_variance = self.sum_sq_x - n * float(mean.pow(2).sum())
        density = self.fire_counts / n
        fvu_value = self.sum_err / total_variance
        return {
            "tokens": n,
            "l0": self.sum_l0 / n,
            "mse": self.sum_err / n,
            "fvu": fvu_value,
            "explained_variance": 1 - fvu_value,
            "explained_variance_legacy": self.sum_legacy_ev / n,
            "cossim": self.sum_cos / n,
            "l2_ratio": self.sum_l2_ratio / n,
            # γ is undefined for an all-zero reconstruction (0/0): reported as NaN
            "relative_reconstruction_bias": (self.sum_xhat_sq / self.sum_x_dot_xhat
                                             if self.sum_x_dot_xhat else float("nan")),
            "dead_fraction": dead_fraction(density),
            "dense_fraction_1pct": dense_fraction(density, 0.01),
            "dense_fraction_10pct": dense_fraction(density, 0.10),
            "mean_firing_density": float(density.mean()),
        }

    def firing_density(self) -> Tensor:
        return self.fire_counts / max(self.tokens, 1)


@torch.no_grad()
def evaluate(dictionary: Dictionary, batches: Iterable[Tensor],
             encode: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
    """All metrics of `dictionary` over `batches` of raw activations [n, d_in].

    `encode` replaces the dictionary's own encoder (e.g. an inference-time encoder); decoding always
    uses the dictionary's decoder. Batches may live anywhere: each is moved to the dictionary's device.
    """
    encode = encode or dictionary.encode
    device = next(dictionary.parameters()).device
    accumulator = MetricsAccumulator(dictionary.d_sae)
    for x in batches:
        x = x.to(device, torch.float32)
        latents = encode(x)
        accumulator.update(x, dictionary.decode(latents), latents)
    return accumulator.result()

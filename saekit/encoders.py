"""Inference-time encoders over a trained decoder (docs/methods.md "Inference-time encoders"): sparse
approximation per input.

Both are batched over tokens and vectorised over the dictionary; the only loop is over the k atoms:
- matching pursuit: add the atom with the largest positive correlation to the residual, with the
  correlation as its coefficient (on unit-normalised atoms), k times;
- gradient pursuit (DL `grad_pursuit.py`): grow the support by the best atom, then take an exact
  line-search gradient step restricted to the support and clip at 0, k times. Each step is one
  [B, d]×[d, M] product and no least-squares solve, which is why it suits accelerators.
Inputs have b_dec subtracted first; the codes decode with the dictionary's own decoder, so they are in
the same units as the dictionary's latents.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from saekit.dictionary import Dictionary
from saekit.errors import SaekitError

ENCODERS = ("dictionary", "matching-pursuit", "gradient-pursuit", "topk")


@torch.no_grad()
def matching_pursuit(x: Tensor, decoder: Tensor, k: int) -> Tensor:
    """Non-negative matching pursuit: codes [B, M] with at most k non-zeros, x ≈ codes @ decoder."""
    norms = decoder.norm(dim=-1).clamp_min(1e-12)
    atoms = decoder / norms[:, None]
    residual = x.clone()
    unit_codes = torch.zeros(x.shape[0], decoder.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(k):
        correlations = residual @ atoms.T
        best_value, best = correlations.max(dim=-1)
        best_value = best_value.clamp_min(0.0)  # no positive correlation left: add nothing
        unit_codes.scatter_add_(1, best[:, None], best_value[:, None])
        residual -= best_value[:, None] * atoms[best]
    return unit_codes / norms


@torch.no_grad()
def gradient_pursuit(x: Tensor, decoder: Tensor, k: int) -> Tensor:
    """Batched non-negative gradient pursuit: codes [B, M] with at most k non-zeros."""
    codes = torch.zeros(x.shape[0], decoder.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(k):
        residual = x - codes @ decoder
        correlations = residual @ decoder.T
        support = codes != 0
        support.scatter_(1, correlations.argmax(dim=-1, keepdim=True), True)
        gradient = correlations * support
        direction = gradient @ decoder
        step = (direction * residual).sum(-1) / (direction * direction).sum(-1).clamp_min(1e-12)
        codes = (codes + step[:, None] * gradient).relu()
    return codes


@torch.no_grad()
def topk_of_encoder(d: Dictionary, x: Tensor, k: int) -> Tensor:
    """The dictionary's own latents restricted to their k largest per token (the baseline at L0 = k)."""
    latents = d.encode(x)
    values, indices = torch.topk(latents, min(k, latents.shape[-1]), dim=-1)
    return torch.zeros_like(latents).scatter_(-1, indices, values)


def make_encoder(d: Dictionary, name: str = "dictionary", l0: int | None = None
                 ) -> Callable[[Tensor], Tensor]:
    """An encode function x [..., d_in] -> latents [..., d_sae] for `saekit eval --encoder`."""
    if name not in ENCODERS:
        raise SaekitError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
    if name == "dictionary":
        return d.encode
    if l0 is None or not 0 < l0 <= d.d_sae:
        raise SaekitError(f"encoder {name!r} needs --l0 (atoms per token) between 1 and the dictionary's "
                          f"{d.d_sae} latents, got {l0}")
    if d.cfg.is_transcoder:
        raise SaekitError("inference-time encoders approximate the input with the decoder; a "
                          "transcoder's decoder lives in its output space")

    def encode(x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(d.W_dec.dtype)
        if name == "topk":
            codes = topk_of_encoder(d, flat, l0)
        else:
            solver = matching_pursuit if name == "matching-pursuit" else gradient_pursuit
            codes = solver(flat - d.b_dec, d.W_dec, l0)
        return codes.reshape(*shape[:-1], d.d_sae)

    return encode

"""Training losses: reconstruction, each method's sparsity term, and the dead-latent auxiliaries.

Reconstruction error is ||x − x̂||² summed over dimensions and averaged over tokens, for every method,
so coefficients are comparable across a sweep. Inputs are already normalised by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from saekit.activations import heaviside_step
from saekit.config import TOPK_FAMILY
from saekit.dictionary import Dictionary, Encoding
from saekit.sparse import sparse_decode, sparse_topk_of_columns

# AuxK takes the dense form over the dead latents while k_aux·AUX_DENSE_RATIO ≥ n_dead: a selection of
# k_aux = 192 among 430 dead latents (d_sae 6144, 2 CPU threads) costs 70 ms dense, 125 ms sparse; they
# meet near n_dead ≈ 4-5·k_aux (benchmarks: 1000 dead, 129 vs 110 ms).
AUX_DENSE_RATIO = 4


@dataclass
class LossResult:
    total: Tensor
    encoding: Encoding
    reconstruction: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)  # detached 0-d terms, for logging


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Per-token ||x − x̂||²."""
    return (x - x_hat).pow(2).sum(-1)


def training_loss(d: Dictionary, x: Tensor, sparsity_coefficient: float,
                  dead_mask: Tensor | None, target: Tensor | None = None) -> LossResult:
    """The full training objective of `d.cfg.method` on a normalised batch x [B, d_in].

    `target` is what to reconstruct (transcoders: the MLP output); by default x itself.
    """
    cfg = d.cfg
    target = x if target is None else target
    enc = d.encode_with_details(x, batch_level=True, sparse=cfg.sparse_kernels)
    x_hat = d.decode_encoding(enc, x)
    per_token_error = squared_error(target, x_hat)
    if cfg.method == "matryoshka":
        reconstruction = matryoshka_reconstruction_loss(d, x, target, enc)
    else:
        reconstruction = per_token_error.mean()
    total = reconstruction
    parts = {"mse": per_token_error.detach().mean()}

    sparsity = sparsity_loss(d, enc)
    if sparsity is not None:
        total = total + sparsity_coefficient * sparsity
        parts["sparsity"] = sparsity.detach()
    if cfg.method == "gated":
        gated_aux = gated_auxiliary_loss(d, x, target, enc)
        total = total + gated_aux
        parts["gated_aux"] = gated_aux.detach()
    has_dead = dead_mask is not None and bool(dead_mask.any())
    if has_dead and cfg.aux_k > 0:
        aux = auxk_loss(d, x, target - x_hat, dead_mask, cfg.aux_k)
        total = total + cfg.aux_coefficient * aux
        parts["auxk"] = aux.detach()
    if has_dead and cfg.ghost_grads:
        ghost = ghost_grads_loss(d, target - x_hat, enc.pre, dead_mask, per_token_error)
        total = total + ghost
        parts["ghost"] = ghost.detach()
    return LossResult(total, enc, x_hat, parts)


def sparsity_loss(d: Dictionary, enc: Encoding) -> Tensor | None:
    """relu: Σ f_i·||d_i|| (April-2024; crosscoders: Σ_m ||d_i^m||); gated: L1 of ReLU(π_gate);
    jumprelu: L0 via the step STE."""
    method = d.cfg.method
    if method == "relu":
        return (enc.latents * d.decoder_norms()).sum(-1).mean()
    if method == "gated":
        return enc.gate_activation.sum(-1).mean()
    if method == "jumprelu":
        if enc.l0 is not None:
            return enc.l0
        return heaviside_step(enc.pre, d.threshold, d.cfg.jumprelu_bandwidth).sum(-1).mean()
    return None


def gated_auxiliary_loss(d: Dictionary, x: Tensor, target: Tensor, enc: Encoding) -> Tensor:
    """||y − ŷ_frozen(ReLU(π_gate))||² with the decoder frozen, so the gate path learns to reconstruct."""
    x_hat_frozen = enc.gate_activation @ d.W_dec.detach() + d.b_dec.detach()
    if d.cfg.skip_connection:
        x_hat_frozen = x_hat_frozen + x @ d.W_skip.detach().T
    return squared_error(target, x_hat_frozen).mean()


def matryoshka_reconstruction_loss(d: Dictionary, x: Tensor, target: Tensor, enc: Encoding) -> Tensor:
    """Mean over nested prefixes m_g of ||y − (b_dec + Σ_{i<m_g} f_i d_i)||² (uniform group weights)."""
    partial = d._add_skip(d.b_dec.expand_as(target), x)
    losses = []
    start = 0
    for end in d.cfg.matryoshka_prefixes:
        if enc.codes is not None:
            group = enc.codes.subset((enc.codes.cols >= start) & (enc.codes.cols < end))
            partial = partial + sparse_decode(group, d.W_dec)
        else:
            partial = partial + enc.latents[:, start:end] @ d.W_dec[start:end]
        losses.append(squared_error(target, partial).mean())
        start = end
    return torch.stack(losses).mean()


def auxk_loss(d: Dictionary, x: Tensor, residual: Tensor, dead_mask: Tensor, aux_k: int) -> Tensor:
    """||e − W_dec[dead]·TopK_aux(pre[:, dead])||² with e = x − x̂ detached (BTK's form; METHODS §4).

    Both forms touch only the dead latents. The dense one costs five [B, d]×[d, n_dead] products; the
    sparse kernels differentiate only the B·k_aux selected entries, which pays once the selection is
    sparse among the dead latents (k_aux < n_dead / AUX_DENSE_RATIO; measured crossover near 1/4-1/5)."""
    if d.cfg.sparse_kernels and d.cfg.method in TOPK_FAMILY:
        columns = dead_mask.nonzero().squeeze(1)
        k_aux = min(aux_k, columns.numel())
        if k_aux * AUX_DENSE_RATIO < columns.numel():
            codes = sparse_topk_of_columns(x, d.W_enc, d.b_enc,
                                           d.b_dec if d.cfg.apply_b_dec_to_input else None, k_aux, columns)
            return squared_error(residual.detach(), sparse_decode(codes, d.W_dec)).mean()
    dead_pre = d.dead_preactivations(x, dead_mask).relu()
    k_aux = min(aux_k, dead_pre.shape[1])
    values, indices = torch.topk(dead_pre, k_aux, dim=-1, sorted=False)
    codes = torch.zeros_like(dead_pre).scatter_(-1, indices, values)
    aux_reconstruction = codes @ d.W_dec[dead_mask]
    return squared_error(residual.detach(), aux_reconstruction).mean()


def ghost_grads_loss(d: Dictionary, residual: Tensor, pre: Tensor, dead_mask: Tensor,
                     per_token_error: Tensor) -> Tensor:
    """Ghost grads (JAN24, as SAELens pre-v6 implemented it; METHODS §1).

    Dead latents' exp(pre-activation) reconstruct the residual, rescaled to half its norm, and the
    loss is put on the scale of the main MSE by a detached per-token factor.
    """
    residual = residual.detach()
    ghost = pre[:, dead_mask].clamp(max=30.0).exp() @ d.W_dec[dead_mask]
    scale = residual.norm(dim=-1, keepdim=True) / (2 * ghost.norm(dim=-1, keepdim=True) + 1e-8)
    ghost = ghost * scale.detach()
    ghost_error = squared_error(residual, ghost)
    rescale = (per_token_error / (ghost_error + 1e-6)).detach()
    return (rescale * ghost_error).mean()

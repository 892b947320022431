"""Sparse activation functions, including the straight-through estimators JumpReLU needs.

JumpReLU's threshold θ gets no gradient from the true derivative (the step is flat almost everywhere),
so its backward replaces the Dirac delta with a rectangle kernel of width ε (METHODS.md §3):
    ∂JumpReLU/∂θ := −(θ/ε)·K((z−θ)/ε),   ∂H(z−θ)/∂θ := −(1/ε)·K((z−θ)/ε),   K(u) = 1[−½ < u < ½].
The pre-activation z gets its true gradient H(z − θ) through JumpReLU and none through the step.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad_out * (z > threshold).to(z.dtype)
        grad_threshold = -(threshold / eps) * _rectangle((z - threshold) / eps) * grad_out
        grad_threshold = grad_threshold.reshape(-1, z.shape[-1]).sum(0)
        return grad_z, grad_threshold, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * _rectangle((z - threshold) / eps) * grad_out
        grad_threshold = grad_threshold.reshape(-1, z.shape[-1]).sum(0)
        return torch.zeros_like(z), grad_threshold, None


def float_mask(condition_fn, *args) -> Tensor:
    """A comparison written straight into a float tensor (bool tensors are 2-3x slower to use on CPU)."""
    out = torch.empty_like(args[0])
    return condition_fn(*args, out=out)


def column_sums(t: Tensor) -> Tensor:
    """Σ over rows as a matrix-vector product, which BLAS does far faster than a reduction."""
    return torch.ones(1, t.shape[0], dtype=t.dtype, device=t.device).mm(t).squeeze(0)


class _JumpReLUWithL0(torch.autograd.Function):
    """Both training quantities from one pass: f = JumpReLU_θ(z) and L0 = mean_b Σ_i H(z − θ).

    Fused because each separately re-reads [B, d_sae] several times; here forward keeps two float masks
    (active, inside the kernel window) and backward reuses them. Gradients equal those of `jumprelu`
    and `heaviside_step` combined (tested). The active mask is returned for firing statistics."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float):
        active = float_mask(torch.gt, z, threshold)
        half = bandwidth / 2
        window = float_mask(torch.gt, z, threshold - half).sub_(float_mask(torch.gt, z, threshold + half))
        ctx.save_for_backward(active, window, threshold)
        ctx.bandwidth = bandwidth
        ctx.mark_non_differentiable(active)
        # The active mask gets no gradient: without this autograd fills a [B, d_sae] zero tensor for it
        # every step.
        ctx.set_materialize_grads(False)
        l0 = column_sums(active).sum() / z.shape[0]
        return z * active, l0, active

    @staticmethod
    def backward(ctx, grad_f: Tensor, grad_l0: Tensor, _grad_active: Tensor):
        active, window, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        if grad_f is None:
            grad_f = torch.zeros_like(active)
        if grad_l0 is None:
            grad_l0 = torch.zeros((), dtype=active.dtype, device=active.device)
        in_window = column_sums(grad_f * window)
        window_count = column_sums(window)
        grad_threshold = -(threshold / eps) * in_window - (grad_l0 / (eps * active.shape[0])) * window_count
        return grad_f * active, grad_threshold, None


def jumprelu_with_l0(z: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor, Tensor]:
    """(JumpReLU_θ(z), mean number of active entries per row, float mask of active entries), with the
    rectangle-kernel STE gradients for θ."""
    return _JumpReLUWithL0.apply(z, threshold, bandwidth)


def jumprelu(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """z·H(z − θ) with the rectangle-kernel straight-through gradient for θ."""
    return _JumpReLU.apply(z, threshold, bandwidth)


def heaviside_step(z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """H(z − θ), whose θ-gradient is the rectangle-kernel estimate; used for the L0 penalty."""
    return _Step.apply(z, threshold, bandwidth)


@functools.lru_cache(maxsize=256)
def column_groups(width: int, k: int) -> int | None:
    """How many strided column groups `largest_per_row` splits a row of `width` into (a divisor G of
    width with G >= 2k), or None where grouping would not pay. Its two selections read G group maxima
    and k·width/G candidates, least near G = sqrt(width·k); it pays when that is well under the width."""
    if k <= 0:
        return None
    divisors = [g for low in range(1, math.isqrt(width) + 1) if width % low == 0
                for g in (low, width // low) if g >= 2 * k]
    if not divisors:
        return None
    best = min(divisors, key=lambda g: g + k * width // g)
    return best if best + k * width // best <= width // 2 else None


def largest_per_row(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest entries of each row: `torch.topk(scores, k, dim=-1,
    sorted=False)`, in two small selections on a CPU.

    torch's CPU top-k walks every entry of a row through a heap (~4 ns per entry, as much as a third of a
    TopK SAE's encoder product). Splitting the columns into G strided groups, every one of the k largest
    entries lies in a group whose maximum is among the k largest group maxima (those k maxima are k
    entries at least as large as the smallest of them), so the top k of those k groups' entries are the
    top k of the row: the same values, the same indices up to ties. The group maxima are one vectorised
    pass. Values keep their gradient (gathered); indices come without one."""
    width = scores.shape[-1]
    groups = column_groups(width, k) if scores.device.type == "cpu" and scores.ndim >= 1 else None
    if groups is None:
        return torch.topk(scores, k, dim=-1, sorted=False)
    with torch.no_grad():
        rows = scores.detach().reshape(-1, width)
        per_group = width // groups
        strided = rows.reshape(rows.shape[0], per_group, groups)  # column c is in group c % groups
        best_groups = torch.topk(strided.amax(1), k, dim=-1, sorted=False).indices  # [n, k]
        candidates = strided.gather(2, best_groups.unsqueeze(1).expand(-1, per_group, k))
        picked = torch.topk(candidates.reshape(rows.shape[0], per_group * k), k, dim=-1, sorted=False).indices
        indices = (picked // k) * groups + best_groups.gather(1, picked % k)
        indices = indices.reshape(*scores.shape[:-1], k)
    return scores.gather(-1, indices), indices


def topk_per_row(z: Tensor, k: int, score_scale: Tensor | None = None) -> Tensor:
    """Keep the k largest entries of each row (after ReLU), zero the rest. With `score_scale`, rank by
    z·scale (decoder-norm-scaled scores) but keep the values of z."""
    scores = z if score_scale is None else z.relu() * score_scale
    indices = largest_per_row(scores.detach(), k)[1]
    return torch.zeros_like(z).scatter_(-1, indices, z.gather(-1, indices).relu())


def topk_over_batch(z: Tensor, k: int, score_scale: Tensor | None = None) -> Tensor:
    """BatchTopK: keep the k·B largest entries of the whole [B, M] batch (after ReLU)."""
    scores = z.relu() if score_scale is None else z.relu() * score_scale
    keep = min(k * z.shape[0], scores.numel())
    indices = torch.topk(scores.reshape(-1), keep, sorted=False).indices
    flat = z.relu().reshape(-1)
    return torch.zeros_like(flat).scatter_(0, indices, flat[indices]).reshape(z.shape)

"""Activation normalisation, with one owner: estimate the scale, apply it in training, fold it into the
saved weights, record it once.

Methods' hyperparameters (λ, θ0, the JumpReLU bandwidth) assume a fixed input scale, so each input (and
a transcoder's target) is multiplied by one scalar per source block, estimated before the first step:
'mean_norm_sqrt_d' makes E||x|| = √d (April-2024 update), 'mean_squared_norm_1' makes E||x||² = 1
(Gemma Scope), 'none' leaves x as it is. Crosscoders estimate one scalar per source, so each model's
activations get equal weight. After training the scale is folded into the weights (`Dictionary.
fold_activation_scale`), so a saved dictionary takes raw activations; `record` is what cfg.json keeps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def activation_scale(kind: str, x: Tensor, n_blocks: int = 1) -> Tensor:
    """Per-dimension scale [d]: one scalar per block (crosscoder source), estimated on the rows of x."""
    blocks = x.float().reshape(x.shape[0], n_blocks, -1)
    width = blocks.shape[-1]
    norms = blocks.norm(dim=-1)  # [B, n_blocks]
    if kind == "mean_norm_sqrt_d":
        scales = math.sqrt(width) / norms.mean(0).clamp_min(1e-12)
    elif kind == "mean_squared_norm_1":
        scales = 1.0 / norms.pow(2).mean(0).sqrt().clamp_min(1e-12)
    else:
        scales = torch.ones(n_blocks)
    return scales.repeat_interleave(width)


def compact(scale: Tensor) -> float | list[float]:
    """A scale vector as recorded: one number, or one per source block."""
    blocks = torch.unique_consecutive(scale.cpu())
    return float(blocks[0]) if blocks.numel() == 1 else [float(v) for v in blocks]


def record(kind: str, scale_in: Tensor, scale_out: Tensor, tokens: int) -> dict[str, Any]:
    """What a saved dictionary records about the normalisation folded into its weights."""
    return {"method": kind, "input_scale": compact(scale_in), "target_scale": compact(scale_out),
            "estimated_on_tokens": tokens, "folded": True}

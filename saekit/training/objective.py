"""Training objectives: what a sweep member's loss is, given a batch of the stream.

`LocalObjective` (the default) reconstructs activations: ||y − ŷ||² summed over dimensions and averaged
over tokens for every method (so coefficients are comparable across a sweep), plus the method's
sparsity and auxiliary terms and its dead-latent care, each asked of the method object. Other
objectives plug into the same trainer through the same two calls (`start`, `loss`): end-to-end training
(`saekit.training.e2e.E2EObjective`) splices the dictionary into a model and pays KL instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from saekit.dictionary import Dictionary
from saekit.methods import Encoding
from saekit.methods.dead_latents import squared_error


@dataclass
class LossResult:
    total: Tensor
    encoding: Encoding
    reconstruction: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)  # detached 0-d terms, for logging
    inputs: tuple[Tensor, Tensor | None] | None = None  # the normalised (x, target), for resampling


def training_loss(d: Dictionary, x: Tensor, sparsity_coefficient: float | Tensor, dead_mask: Tensor | None,
                  training: Any, target: Tensor | None = None) -> LossResult:
    """The full objective on a normalised batch x [B, d_in]; `target` is what to reconstruct
    (transcoders: the MLP output), by default x itself."""
    method = d.method
    target = x if target is None else target
    enc = d.encode_with_details(x, training=True, sparse=training.sparse_kernels)
    x_hat = d.decode_encoding(enc, x)
    per_token_error = squared_error(target, x_hat)
    total = method.reconstruction_loss(d, x, target, enc, per_token_error)
    parts = {"mse": per_token_error.detach().mean(), "fvu": batch_fvu(per_token_error, target)}

    sparsity = method.sparsity_loss(d, enc)
    if sparsity is not None:
        total = total + sparsity_coefficient * sparsity
        parts["sparsity"] = sparsity.detach()
    for name, term in method.auxiliary_losses(d, x, target, enc).items():
        total = total + term
        parts[name] = term.detach()
    if dead_mask is not None and bool(dead_mask.any()):
        dead = method.dead_latent_loss(d, x, target - x_hat, enc, dead_mask, per_token_error, training)
        if dead is not None:
            name, term, weight = dead
            total = total + weight * term
            parts[name] = term.detach()
    return LossResult(total, enc, x_hat, parts)


@torch.no_grad()
def batch_fvu(per_token_error: Tensor, target: Tensor) -> Tensor:
    """Σ||y − ŷ||² / Σ||y − mean(y)||² over the batch (NMSE; docs/methods.md "Evaluation metrics"), for
    the logs: comparable across layers and sites whatever their scale."""
    centered = target.detach() - target.detach().mean(0)
    return per_token_error.detach().sum() / centered.pow(2).sum().clamp_min(1e-12)


class Objective(Protocol):
    """What a member's data means: how to initialise from the first batch, and the loss of a batch.
    An objective with `reads_rows = False` gets the stream's batches as they come (sequences, token ids)
    instead of its member's rows of activations (`SweepMember.inputs`)."""

    def start(self, member: Any, x: Any, target: Any) -> None: ...

    def loss(self, member: Any, x: Any, target: Any, sparsity_coefficient: float | Tensor,
             dead_mask: Tensor | None) -> LossResult: ...


class LocalObjective:
    """Reconstruct the stream's activations (or a transcoder's target) from the normalised input."""

    def start(self, member: Any, x: Tensor, target: Tensor | None) -> None:
        member.start(x, target)

    def loss(self, member: Any, x: Tensor, target: Tensor | None, sparsity_coefficient: float | Tensor,
             dead_mask: Tensor | None) -> LossResult:
        x = x.to(member.device, torch.float32) * member.scale_in
        if target is not None:
            target = target.to(member.device, torch.float32) * member.scale_out
        result = training_loss(member.dictionary, x, sparsity_coefficient, dead_mask, member.training,
                               target)
        result.inputs = (x, target)
        return result

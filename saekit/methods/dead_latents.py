"""Dead-latent losses: ghost grads (the L1/L0 methods) and AuxK (the TopK family).

Both reconstruct the main loss's residual e = y − ŷ (detached) from the latents that have not fired for
`dead_tokens` tokens, so gradient reaches encoder directions that the main loss no longer trains.

Ghost grads come in three forms (`TrainingConfig.ghost_grads_form`; docs/methods.md "Dead latents"):
- original: Anthropic's January-2024 form (exp of the dead pre-activations), as SAELens pre-v6 coded it;
- scaled: the same loss multiplied by the fraction of latents that are dead, which is how the one public
  code of GDM's "Improving ghost grads" (Progress Update #1) differs from plain ghost grads (saex's
  `dm_ghost_grads`; METHODS.md §5(b)); a reconstruction, since the post's body was not read;
- softplus: scaled, with softplus in place of exp (saex's form: "DeepMind's scaled ghost gradients,
  modified to use Softplus").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.activations import largest_per_row
from saekit.sparse import sparse_decode, sparse_topk_of_columns

MAX_DEAD_TOKENS = 10_000_000  # Gao et al.'s dead window


def run_dead_tokens(total_tokens: int) -> int:
    """The default dead window: a tenth of the run, at most 10M tokens. Gao et al.'s 10M never elapses in a
    run of under 10M tokens, so AuxK (or ghost grads) would never act there; a tenth leaves nine tenths
    of the run to revive what dies early, and is Gao's window from 100M tokens on."""
    return max(1, min(MAX_DEAD_TOKENS, total_tokens // 10))


if TYPE_CHECKING:
    from saekit.dictionary import Dictionary

# AuxK takes the dense form over the dead latents while k_aux·AUX_DENSE_RATIO ≥ n_dead: a selection of
# k_aux = 192 among 430 dead latents (d_sae 6144, 2 CPU threads) costs 70 ms dense, 125 ms sparse; they
# meet near n_dead ≈ 4-5·k_aux (benchmarks: 1000 dead, 129 vs 110 ms).
AUX_DENSE_RATIO = 4


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Per-token ||x − x̂||²."""
    return (x - x_hat).pow(2).sum(-1)


# The ghost-grads forms: (activation of the dead pre-activations, scale the loss by the dead fraction).
GHOST_GRADS_FORMS: dict[str, tuple[str, bool]] = {
    "original": ("exp", False),
    "scaled": ("exp", True),
    "softplus": ("softplus", True),
}


def ghost_grads_loss(d: Dictionary, residual: Tensor, pre: Tensor | None, dead_mask: Tensor,
                     per_token_error: Tensor, form: str = "original") -> Tensor:
    """Ghost grads (docs/methods.md "Dead latents") in one of `GHOST_GRADS_FORMS`.

    Dead latents' exp (or softplus) of their pre-activations reconstruct the residual, rescaled to half
    its norm, and the loss is put on the scale of the main MSE by a detached per-token factor; the
    scaled forms then multiply it by n_dead / d_sae, so the term fades as latents come back to life
    instead of pulling with full weight on a handful of dead ones.
    """
    assert pre is not None, "ghost grads need the dense pre-activations"
    activation, scaled = GHOST_GRADS_FORMS[form]
    dead_pre = pre[:, dead_mask]
    # exp is clamped so one large pre-activation cannot overflow; softplus grows linearly and needs none
    codes = dead_pre.clamp(max=30.0).exp() if activation == "exp" else F.softplus(dead_pre)
    residual = residual.detach()
    ghost = codes @ d.W_dec[dead_mask]
    scale = residual.norm(dim=-1, keepdim=True) / (2 * ghost.norm(dim=-1, keepdim=True) + 1e-8)
    ghost = ghost * scale.detach()
    ghost_error = squared_error(residual, ghost)
    rescale = (per_token_error / (ghost_error + 1e-6)).detach()
    loss = (rescale * ghost_error).mean()
    if scaled:
        loss = loss * dead_mask.float().mean()
    return loss


def auxk_loss(d: Dictionary, x: Tensor, residual: Tensor, dead_mask: Tensor, aux_k: int,
              sparse: bool) -> Tensor:
    """||e − W_dec[dead]·TopK_aux(pre[:, dead])||² with e = y − ŷ detached (BTK's form; docs/methods.md
    "Dead latents").

    Both forms touch only the dead latents. The dense one costs four [B, d]×[d, n_dead] products:
    (x − b_dec)·W is computed as x·W − b_dec·W, so b_dec's gradient is one vector product and no
    [B, d] gradient of the centred input is ever formed; and while every dead latent is among the k_aux
    largest (n_dead ≤ k_aux) there is no selection at all. The sparse kernels differentiate only the
    B·k_aux selected entries, which pays once the selection is sparse among the dead latents
    (k_aux < n_dead / AUX_DENSE_RATIO; measured crossover near 1/4-1/5)."""
    b_dec = d.b_dec if d.cfg.apply_b_dec_to_input else None
    columns = dead_mask.nonzero().squeeze(1)
    k_aux = min(aux_k, columns.numel())
    if sparse and k_aux * AUX_DENSE_RATIO < columns.numel():
        selected = sparse_topk_of_columns(x, d.W_enc, d.b_enc, b_dec, k_aux, columns)
        return squared_error(residual.detach(), sparse_decode(selected, d.W_dec)).mean()
    W_dead = d.W_enc.index_select(1, columns)
    bias = d.b_enc.index_select(0, columns)
    if b_dec is not None:
        bias = bias - b_dec @ W_dead
    dead_pre = torch.addmm(bias, x, W_dead).relu()
    if k_aux < columns.numel():
        values, indices = largest_per_row(dead_pre, k_aux)
        codes = torch.zeros_like(dead_pre).scatter_(-1, indices, values)
    else:
        codes = dead_pre  # every dead latent is among the k_aux largest
    aux_reconstruction = codes @ d.W_dec.index_select(0, columns)
    return squared_error(residual.detach(), aux_reconstruction).mean()

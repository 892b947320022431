"""What a language model's outputs are compared by: next-token cross-entropy and KL(p_clean ‖ p_other).

One definition each, shared by spliced evaluation, end-to-end training and interventions:
- CE counts a position when its *target* token counts (special tokens are never targets);
- KL(p_clean ‖ p_other) is summed over the vocabulary, per position.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def next_token_loss(logits: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(per-position CE [B, T-1], target mask [B, T-1]) of predicting ids[:, 1:] from logits[:, :-1]."""
    ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return ce.view(ids.shape[0], -1), mask[:, 1:].float()


def kl_per_position(clean_logp: Tensor, logits: Tensor) -> Tensor:
    """KL(p_clean ‖ softmax(logits)) per position [...], with p_clean given as log-probabilities."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp_min(1)

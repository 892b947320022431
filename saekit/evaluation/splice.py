"""Spliced evaluation (docs/methods.md "Evaluation metrics"): a dictionary's reconstruction in place of
the real activation.

Per batch, one clean forward (recording the hookpoint), one zero-ablated forward and one spliced forward
per dictionary. Definitions (SAELens/SAEBench conventions):
- CE is next-token cross-entropy, averaged over positions whose *target* token counts (special tokens
  such as BOS/EOS/padding are never targets);
- ce_loss_score = (CE_zero − CE_spliced) / (CE_zero − CE_clean), zero = the hookpoint zero-ablated;
- KL(p_clean ‖ p_spliced) summed over the vocabulary, averaged over the same positions;
  kl_score = (KL_zero − KL_spliced) / KL_zero;
- delta_lm_loss = CE_spliced − CE_clean.
Only counted positions are replaced (the BOS position keeps its real activation, as its huge norm is not
what dictionaries are trained on); zero-ablation zeroes the same positions. Core metrics (L0, FVU, ...)
are computed on the same counted activations. For transcoders the dictionary reads the input hookpoint
and its output replaces the target hookpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.dictionary import Dictionary
from saekit.evaluation.metrics import MetricsAccumulator
from saekit.models.hooks import hooks, splice
from saekit.models.outputs import kl_per_position, next_token_loss
from saekit.models.sites import Hookpoint


class _Sums:
    def __init__(self) -> None:
        self.ce = 0.0
        self.kl = 0.0

    def add(self, ce: Tensor, kl: Tensor | None, target_mask: Tensor) -> None:
        self.ce += float((ce * target_mask).sum())
        if kl is not None:
            self.kl += float((kl * target_mask).sum())


@torch.no_grad()
def spliced_evaluation(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], hookpoint: Hookpoint,
                       dictionaries: dict[str, Dictionary],
                       encoders: dict[str, Callable[[Tensor], Tensor]] | None = None,
                       target_hookpoint: Hookpoint | None = None) -> dict[str, dict[str, float]]:
    """Spliced metrics and core metrics for each dictionary (all reading the same hookpoint)."""
    encoders = encoders or {}
    device = next(model.parameters()).device
    out_point = target_hookpoint or hookpoint
    points = [hookpoint] if target_hookpoint is None else [hookpoint, target_hookpoint]
    clean, zero = _Sums(), _Sums()
    spliced = {name: _Sums() for name in dictionaries}
    accumulators = {name: MetricsAccumulator(d.d_sae) for name, d in dictionaries.items()}
    targets = 0.0

    for ids, mask in batches:
        ids, mask = ids.to(device), mask.to(device)
        keep = mask.bool()
        store: dict[str, Tensor] = {}
        with hooks(model, points, store):
            clean_logits = model(input_ids=ids).logits
        ce_clean, target_mask = next_token_loss(clean_logits, ids, mask)
        clean_logp = F.log_softmax(clean_logits[:, :-1].float(), dim=-1)
        clean.add(ce_clean, None, target_mask)
        targets += float(target_mask.sum())

        with splice(model, out_point, torch.zeros_like, positions=keep):
            logits = model(input_ids=ids).logits
        zero.add(next_token_loss(logits, ids, mask)[0], kl_per_position(clean_logp, logits[:, :-1]),
                 target_mask)

        x = store[hookpoint.name][keep].float()
        truth = store[out_point.name][keep].float()
        for name, d in dictionaries.items():
            encode = encoders.get(name, d.encode)
            latents = encode(x)
            reconstruction = d.decode(latents, x)
            accumulators[name].update(truth, reconstruction, latents)

            def replacement(_rows: Tensor, r: Tensor = reconstruction) -> Tensor:
                return r

            with splice(model, out_point, replacement, positions=keep):
                logits = model(input_ids=ids).logits
            spliced[name].add(next_token_loss(logits, ids, mask)[0],
                              kl_per_position(clean_logp, logits[:, :-1]), target_mask)

    ce_clean_mean, ce_zero_mean = clean.ce / targets, zero.ce / targets
    kl_zero_mean = zero.kl / targets
    results = {}
    for name in dictionaries:
        ce_spliced = spliced[name].ce / targets
        kl_spliced = spliced[name].kl / targets
        results[name] = {
            **accumulators[name].result(),
            "ce_clean": ce_clean_mean,
            "ce_spliced": ce_spliced,
            "ce_zero_ablation": ce_zero_mean,
            "ce_loss_score": (ce_zero_mean - ce_spliced) / (ce_zero_mean - ce_clean_mean),
            "delta_lm_loss": ce_spliced - ce_clean_mean,
            "kl_spliced": kl_spliced,
            "kl_zero_ablation": kl_zero_mean,
            "kl_score": (kl_zero_mean - kl_spliced) / kl_zero_mean,
            "eval_targets": targets,
        }
    return results


def evaluate_on_text(model: nn.Module, tokenizer: Any, dictionaries: dict[str, Dictionary], text: Any,
                     tokens: int, encoder: str = "dictionary", l0: int | None = None,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Rows of metrics, one per dictionary, on `tokens` held-out tokens (the test split of `text`, a
    `TextConfig`), grouping dictionaries that share a hookpoint so each group shares its clean and
    zero-ablated forwards."""
    from tqdm.auto import tqdm

    from saekit.encoders import make_encoder
    from saekit.errors import SaekitError
    from saekit.models.sites import resolve_hookpoints

    groups: dict[tuple[str, str | None], dict[str, Dictionary]] = {}
    for name, d in dictionaries.items():
        if not d.provenance.hookpoint:
            raise SaekitError(f"dictionary {name} does not record its hookpoint: it cannot be spliced")
        groups.setdefault((d.provenance.hookpoint, d.provenance.target_hookpoint), {})[name] = d
    # Tokenised once: every group evaluates on the same held-out windows.
    held_out = list(text.token_stream(tokenizer, split="test", max_tokens=tokens))
    rows = []
    for (hookpoint, target), members in groups.items():
        point = resolve_hookpoints(model, [hookpoint])[0]
        target_point = resolve_hookpoints(model, [target])[0] if target else None
        batches = tqdm(held_out, desc=f"evaluating at {hookpoint}", unit="batch", disable=not progress)
        encoders = {name: make_encoder(d, encoder, l0) for name, d in members.items()}
        results = spliced_evaluation(model, batches, point, members, encoders, target_point)
        for name, metrics in results.items():
            rows.append({"name": name, "method": members[name].cfg.method, "hookpoint": hookpoint,
                         "encoder": encoder, **metrics})
    return rows

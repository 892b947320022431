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
and its output replaces the target hookpoint. Anything else that stands in for an activation (an
attention replacement computing `attn_out.L` from `attn_in.L`) is a `Replacement` of `spliced_metrics`.
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


# A replacement of the activation at the spliced hookpoint: from the clean values of the read hookpoints
# (full [B, T, d] tensors) and the counted-token mask [B, T], (true rows, replacement rows, latent rows)
# at the counted positions.
Replacement = Callable[[dict[str, Tensor], Tensor], tuple[Tensor, Tensor, Tensor]]


@torch.no_grad()
def spliced_metrics(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], reads: list[Hookpoint],
                    out_point: Hookpoint, replacements: dict[str, Replacement], widths: dict[str, int]
                    ) -> dict[str, dict[str, float]]:
    """Spliced and core metrics of replacements of the activation at `out_point` (see the module doc):
    a dictionary's reconstruction, or an attention replacement's output computed from the layer's
    input. Only `out_point` is edited, so the clean values of hookpoints before it are also their values
    in the spliced forward, and each replacement is computed once from the clean forward's store.
    `widths` holds each replacement's number of latents."""
    device = next(model.parameters()).device
    points = list(dict.fromkeys([*reads, out_point]))
    clean, zero = _Sums(), _Sums()
    spliced = {name: _Sums() for name in replacements}
    accumulators = {name: MetricsAccumulator(widths[name]) for name in replacements}
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

        for name, replace in replacements.items():
            truth, reconstruction, latents = replace(store, keep)
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
    for name in replacements:
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


def dictionary_replacement(d: Dictionary, hookpoint: Hookpoint, out_point: Hookpoint,
                           encode: Callable[[Tensor], Tensor] | None = None) -> Replacement:
    """A dictionary as a Replacement: it reads `hookpoint`'s counted rows, and its reconstruction
    stands in for `out_point` (the same hookpoint, or a transcoder's target)."""
    encode = encode or d.encode

    def replace(store: dict[str, Tensor], keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = store[hookpoint.name][keep].float()
        latents = encode(x)
        return store[out_point.name][keep].float(), d.decode(latents, x), latents

    return replace


def spliced_evaluation(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], hookpoint: Hookpoint,
                       dictionaries: dict[str, Dictionary],
                       encoders: dict[str, Callable[[Tensor], Tensor]] | None = None,
                       target_hookpoint: Hookpoint | None = None) -> dict[str, dict[str, float]]:
    """Spliced metrics and core metrics for each dictionary (all reading the same hookpoint)."""
    encoders = encoders or {}
    out_point = target_hookpoint or hookpoint
    replacements = {name: dictionary_replacement(d, hookpoint, out_point, encoders.get(name))
                    for name, d in dictionaries.items()}
    return spliced_metrics(model, batches, [hookpoint], out_point, replacements,
                           {name: d.d_sae for name, d in dictionaries.items()})


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

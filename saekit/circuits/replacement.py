"""Spliced evaluation of a transcoder set or CLT: every MLP output replaced at once (the replacement model).

Per batch of held-out token windows:
1. a clean forward records every layer's MLP input and output. Open-loop metrics per layer come from
   those: NMSE (FVU) of each target, L0 and dead fraction of each source layer's latents;
2. one forward with every covered MLP output zero-ablated (at counted positions);
3. one forward in which every covered MLP output is the transcoders' reconstruction, computed from the
   MLP inputs *of that same forward* (the replacement model: errors compound through the layers, and a
   CLT's layer t reads the latents of every source s ≤ t computed in that forward);
4. with `per_layer`, one forward per layer with only that layer's MLP output replaced (reconstruction
   from the clean inputs): the per-layer splice figures.
All edits go through `saekit.models.hooks.splice` (one per layer), at counted positions only (BOS and
other special tokens keep their clean values, as in `saekit.evaluation.splice`). Scores as there:
ce_loss_score = (CE_zero − CE_replaced)/(CE_zero − CE_clean), kl_score = 1 − KL_replaced/KL_zero,
KL(p_clean ‖ p_replaced) summed over the vocabulary and averaged over counted target positions. With
every MLP ablated CE_zero is very large, which makes the CE-loss score look generous: read it with the
KL and the delta LM loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.circuits.clt import CrossLayerTranscoder
from saekit.circuits.transcoder_set import TranscoderSet
from saekit.evaluation.metrics import MetricsAccumulator
from saekit.models.hooks import hooks, splice
from saekit.models.outputs import kl_per_position, next_token_loss
from saekit.models.sites import Hookpoint, resolve_hookpoints

Layered = TranscoderSet | CrossLayerTranscoder


class _Totals:
    def __init__(self) -> None:
        self.ce = 0.0
        self.kl = 0.0

    def add(self, logits: Tensor, ids: Tensor, mask: Tensor, clean_logp: Tensor | None) -> None:
        ce, target_mask = next_token_loss(logits, ids, mask)
        self.ce += float((ce * target_mask).sum())
        if clean_logp is not None:
            self.kl += float((kl_per_position(clean_logp, logits[:, :-1]) * target_mask).sum())


def _points(model: nn.Module, names: list[str]) -> list[Hookpoint]:
    return [resolve_hookpoints(model, [name])[0] for name in names]


class LayerByLayer:
    """The reconstruction of each target as the layers are reached: `step(t, x_t)` encodes layer t's
    input, adds what its latents write into every target it reaches to running sums, and returns target
    t's reconstruction (sum of the sources ≤ t, decoder bias, skip term). Works for a forward pass in
    progress (the replacement model) as for recorded inputs; each source is decoded once, on the sparse
    kernels, so a CLT costs O(L0·reach·d) per token instead of O(L²·F·d). `edit(t, latents)`, when given,
    may change layer t's latents before they are decoded (interventions in the replacement model)."""

    def __init__(self, transcoders: Layered, edit: Callable[[int, Tensor], Tensor] | None = None) -> None:
        self.transcoders = transcoders
        self.edit = edit
        self.sums: dict[int, Tensor] = {}
        self.latents: list[Tensor] = []

    def step(self, t: int, x: Tensor) -> Tensor:
        tc = self.transcoders
        latents = tc.encode_layer(t, x)
        if self.edit is not None:
            latents = self.edit(t, latents)
        self.latents.append(latents)
        contributions = tc.decode_source(t, latents)
        for r in range(contributions.shape[1]):
            self.sums[t + r] = self.sums[t + r] + contributions[:, r] if t + r in self.sums else contributions[:, r]
        out = self.sums.pop(t) + tc.decoder_bias(t)
        skip = tc.skip(t)
        if skip is not None:
            out = out + x.to(skip.dtype) @ skip.T
        return out


def _reconstruct_all(transcoders: Layered, inputs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(latents per source, reconstruction per target) from every layer's inputs [n, d_in]."""
    walk = LayerByLayer(transcoders)
    recon = [walk.step(t, x) for t, x in enumerate(inputs)]
    return walk.latents, recon


def _constant(value: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda _rows: value


def model_name_of(obj: Any) -> str | None:
    """The model a dictionary, transcoder set or CLT records."""
    if isinstance(obj, TranscoderSet):
        return obj.model_name
    return obj.provenance.model_name


@torch.no_grad()
def replacement_logits(model: nn.Module, ids: Tensor, keep: Tensor, transcoders: Layered,
                       in_points: list[Hookpoint] | None = None, out_points: list[Hookpoint] | None = None) -> Tensor:
    """Logits of the replacement model: every covered MLP output (at the positions `keep`) replaced by the
    transcoders' reconstruction from the MLP inputs of this same forward."""
    in_points = in_points or _points(model, transcoders.input_hookpoints)
    out_points = out_points or _points(model, transcoders.output_hookpoints)
    live: dict[str, Tensor] = {}
    walk = LayerByLayer(transcoders)

    def replace_layer(t: int) -> Callable[[Tensor], Tensor]:
        def edit(_rows: Tensor) -> Tensor:
            return walk.step(t, live[in_points[t].name][keep].float())
        return edit

    with contextlib.ExitStack() as stack:
        stack.enter_context(hooks(model, in_points, live))
        for t, point in enumerate(out_points):
            stack.enter_context(splice(model, point, replace_layer(t), positions=keep))
        return model(input_ids=ids).logits


@torch.no_grad()
def replacement_evaluation(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], transcoders: Layered,
                           per_layer: bool = True) -> dict[str, Any]:
    """Metrics of the replacement model (every MLP replaced at once) and per layer; see the module doc."""
    device = next(model.parameters()).device
    L = transcoders.n_layers
    in_points = _points(model, transcoders.input_hookpoints)
    out_points = _points(model, transcoders.output_hookpoints)
    widths = [transcoders.layer_dictionary(i).d_sae for i in range(L)]
    accumulators = [MetricsAccumulator(w) for w in widths]
    clean, zero, replaced = _Totals(), _Totals(), _Totals()
    single = [_Totals() for _ in range(L)] if per_layer else []
    targets = 0.0
    for ids, mask in batches:
        ids, mask = ids.to(device), mask.to(device)
        keep = mask.bool()
        store: dict[str, Tensor] = {}
        with hooks(model, in_points + out_points, store):
            clean_logits = model(input_ids=ids).logits
        clean.add(clean_logits, ids, mask, None)
        clean_logp = F.log_softmax(clean_logits[:, :-1].float(), dim=-1)
        targets += float(mask[:, 1:].float().sum())

        inputs = [store[p.name][keep].float() for p in in_points]
        truths = [store[p.name][keep].float() for p in out_points]
        latents, recon = _reconstruct_all(transcoders, inputs)
        for i in range(L):
            accumulators[i].update(truths[i], recon[i], latents[i])

        with contextlib.ExitStack() as stack:
            for point in out_points:
                stack.enter_context(splice(model, point, torch.zeros_like, positions=keep))
            zero.add(model(input_ids=ids).logits, ids, mask, clean_logp)

        replaced.add(replacement_logits(model, ids, keep, transcoders, in_points, out_points), ids, mask,
                     clean_logp)

        for t in range(len(single)):
            with splice(model, out_points[t], _constant(recon[t]), positions=keep):
                single[t].add(model(input_ids=ids).logits, ids, mask, clean_logp)

    ce_clean, ce_zero, ce_replaced = clean.ce / targets, zero.ce / targets, replaced.ce / targets
    kl_zero, kl_replaced = zero.kl / targets, replaced.kl / targets
    layers = []
    for i, layer in enumerate(transcoders.layers):
        metrics = accumulators[i].result()
        row = {"layer": layer, "fvu": metrics["fvu"], "l0": metrics["l0"],
               "dead_fraction": metrics["dead_fraction"], "explained_variance": metrics["explained_variance"],
               "mse": metrics["mse"]}
        if single:
            ce_t, kl_t = single[i].ce / targets, single[i].kl / targets
            row.update(ce_spliced=ce_t, delta_lm_loss=ce_t - ce_clean, kl_spliced=kl_t)
        layers.append(row)
    return {
        "ce_clean": ce_clean,
        "ce_replaced": ce_replaced,
        "ce_zero_ablation": ce_zero,
        "ce_loss_score": (ce_zero - ce_replaced) / (ce_zero - ce_clean),
        "delta_lm_loss": ce_replaced - ce_clean,
        "kl_replaced": kl_replaced,
        "kl_zero_ablation": kl_zero,
        "kl_score": 1.0 - kl_replaced / kl_zero if kl_zero else float("nan"),
        "fvu": sum(r["fvu"] for r in layers) / L,
        "l0": sum(r["l0"] for r in layers),
        "dead_fraction": sum(r["dead_fraction"] * w for r, w in zip(layers, widths)) / sum(widths),
        "eval_targets": targets,
        "layers": layers,
    }


def evaluate_layered_on_text(model: nn.Module, tokenizer: Any, name: str, transcoders: Layered, text: Any,
                             tokens: int, per_layer: bool = True, progress: bool = True) -> dict[str, Any]:
    """One row (what `saekit eval` prints and writes) for a transcoder set or CLT on `tokens` held-out
    tokens of `text` (a TextConfig's test split)."""
    from tqdm.auto import tqdm

    held_out = list(text.token_stream(tokenizer, split="test", max_tokens=tokens))
    kind = "transcoder_set" if isinstance(transcoders, TranscoderSet) else "cross_layer_transcoder"
    method = (transcoders.transcoders[0].cfg.method if isinstance(transcoders, TranscoderSet)
              else transcoders.cfg.method)
    batches = tqdm(held_out, desc=f"replacement model ({name})", unit="batch", disable=not progress)
    result = replacement_evaluation(model, batches, transcoders, per_layer=per_layer)
    return {"name": name, "kind": kind, "method": method, "hookpoint": "every MLP", **result}

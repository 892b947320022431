"""Interventions that check an attribution graph (METHODS-2 §3.8, §3.9).

- `frozen_effects`: the constrained model (attention patterns, norm scales and every MLP output frozen
  at their clean values; skip terms follow their inputs) with vectors added at write sites. It is
  linear, so adding a source's vector once more changes every target by exactly its adjacency entry:
  the column identity of §3.8 (tested).
- `intervene`: set features to values (0 = ablate, k·a = scale) in the real model, as circuit-tracer's
  `feature_intervention` does: at each layer the features' current activations (recomputed from the
  live MLP input, so upstream interventions propagate) are moved to the requested value by adding
  (value − current)·W_dec at their output site(s) (CLT: every layer they write to). Attention patterns
  are frozen at their clean values with `freeze_attention` (the default; norms are not), and every edit
  goes through `saekit.models.hooks.splice`.
- `predicted_logit_change`: what the graph predicts for the same intervention, by propagating the
  activation changes along the graph's edges (features downstream move by their pre-activation change
  while active); `check_graph` compares predicted and measured changes for a graph's top features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from saekit.circuits.attribution import tokenize_prompt
from saekit.circuits.graph import AttributionGraph
from saekit.circuits.local_model import FrozenState, LocalReplacementModel
from saekit.circuits.replacement import Layered
from saekit.errors import SaekitError
from saekit.models.hooks import hooks, splice

Intervention = tuple[int, int, int, float]  # (layer, position, feature, value)


@torch.no_grad()
def frozen_effects(local: LocalReplacementModel, ids: Tensor, clean: dict[str, Any],
                   additions: dict[str, Tensor]) -> dict[str, Tensor]:
    """MLP inputs [L, n, d] and unembedding input [n, d] of the constrained model (patterns, scales and
    MLP outputs frozen at `clean`'s values) with `additions` ({"embed" or "mlp_out.L": [n, d]}) added."""
    store: dict[str, Tensor] = {}
    tc = local.transcoders

    def mlp_edit(layer: int) -> Any:
        def edit(value: Tensor) -> Tensor:
            out = clean["mlp_out"][layer].clone()
            skip = tc.skip(layer)
            if skip is not None:
                x_now = store[local.in_points[layer].name][0].float()
                out = out + (x_now - clean["mlp_in"][layer]) @ skip.float().T
            if f"mlp_out.{layer}" in additions:
                out = out + additions[f"mlp_out.{layer}"].to(out.device)
            return out[None].to(value.dtype)
        return edit

    replace = {p.name: mlp_edit(i) for i, p in enumerate(local.out_points)}
    if "embed" in additions:
        replace[local.embed_point.name] = lambda value: value + additions["embed"][None].to(value.device, value.dtype)
    use = FrozenState("use", patterns=clean["state"].patterns, scales=clean["state"].scales,
                      checked=clean["state"].checked)
    points = [local.embed_point] + local.in_points + local.out_points + [local.unembed_point]
    with local.frozen(use), hooks(local.model, points, store, replace=replace):
        local.model(input_ids=ids[None].to(local.device))
    return {"mlp_in": torch.stack([store[p.name][0].float() for p in local.in_points]),
            "unembed_in": store["unembed_in"][0].float()}


def _by_layer(local: LocalReplacementModel, n: int,
              interventions: Sequence[Intervention]) -> dict[int, list[tuple[int, int, float]]]:
    by_layer: dict[int, list[tuple[int, int, float]]] = {}
    for layer, pos, feature, value in interventions:
        if not 0 <= layer < local.n_layers or not 0 <= pos < n or not 0 <= feature < local.transcoders.d_sae:
            raise SaekitError(f"intervention ({layer}, {pos}, {feature}) is outside the model's {local.n_layers} "
                              f"layers, the prompt's {n} positions or the {local.transcoders.d_sae} latents")
        by_layer.setdefault(int(layer), []).append((int(pos), int(feature), float(value)))
    return by_layer


@torch.no_grad()
def intervene(model: torch.nn.Module, tokenizer: Any, transcoders: Layered, prompt: str | Sequence[int] | Tensor,
              interventions: Sequence[Intervention], freeze_attention: bool = True) -> dict[str, Tensor]:
    """Logits [n, V] of the clean and the intervened model, and the intervened features' activations
    before the intervention (see the module docstring)."""
    local = LocalReplacementModel(model, transcoders)
    ids = tokenize_prompt(tokenizer, prompt)
    return _intervene(local, ids, local.clean_run(ids), interventions, freeze_attention)


@torch.no_grad()
def _intervene(local: LocalReplacementModel, ids: Tensor, clean: dict[str, Any],
               interventions: Sequence[Intervention], freeze_attention: bool) -> dict[str, Tensor]:
    """`intervene` on a prepared model, prompt and clean run (which `check_graph` makes once per graph)."""
    model, transcoders = local.model, local.transcoders
    by_layer = _by_layer(local, len(ids), interventions)
    live: dict[str, Tensor] = {}
    deltas: dict[int, Tensor] = {}  # per target layer, what to add to its MLP output [n, d]
    before: list[float] = []

    def read_inputs(layer: int) -> Any:
        def edit(value: Tensor) -> Tensor:
            if layer in by_layer:
                latents = transcoders.encode_layer(layer, value[0].float()).float()
                change = torch.zeros_like(latents)
                for pos, feature, target in by_layer[layer]:
                    before.append(float(latents[pos, feature]))
                    change[pos, feature] = target - latents[pos, feature]
                for t in range(layer, local.n_layers):
                    block = transcoders.decoder(layer, t)
                    if block is not None:
                        add = change @ block.float()
                        deltas[t] = deltas[t] + add if t in deltas else add
            return value
        return edit

    def write_outputs(layer: int) -> Any:
        def edit(value: Tensor) -> Tensor:
            add = deltas.pop(layer, None)
            return value if add is None else value + add[None].to(value.dtype)
        return edit

    with contextlib.ExitStack() as stack:
        if freeze_attention:
            stack.enter_context(local.frozen(FrozenState("use", patterns=clean["state"].patterns)))
        stack.enter_context(hooks(model, local.in_points, live,
                                  replace={p.name: read_inputs(i) for i, p in enumerate(local.in_points)}))
        for i, point in enumerate(local.out_points):
            stack.enter_context(splice(model, point, write_outputs(i)))
        logits = model(input_ids=ids[None].to(local.device)).logits[0].float()
    return {"clean_logits": clean["logits"], "logits": logits, "activations_before": torch.tensor(before)}


@torch.no_grad()
def intervene_in_replacement(model: torch.nn.Module, tokenizer: Any, transcoders: Layered,
                             prompt: str | Sequence[int] | Tensor,
                             interventions: Sequence[Intervention]) -> dict[str, Tensor]:
    """The same interventions in the local replacement model instead of the real one: attention patterns
    and norm scales frozen, every MLP replaced by the transcoders reading their live inputs, the clean
    run's error nodes added back (so with no intervention it reproduces the clean logits). Features are
    set to their values where they are encoded, and downstream features respond through their own
    nonlinearity. Measured against the graph's prediction this isolates the graph's linearisation; the
    real model's answer (`intervene`) adds how far the transcoders are from the MLPs they replace."""
    local = LocalReplacementModel(model, transcoders)
    ids = tokenize_prompt(tokenizer, prompt)
    clean = local.clean_run(ids)
    return _intervene_in_replacement(local, ids, clean, local.reconstruction_errors(clean), interventions)


@torch.no_grad()
def _intervene_in_replacement(local: LocalReplacementModel, ids: Tensor, clean: dict[str, Any], errors: Tensor,
                              interventions: Sequence[Intervention]) -> dict[str, Tensor]:
    """`intervene_in_replacement` on a prepared model, prompt, clean run and error nodes."""
    by_layer = _by_layer(local, len(ids), interventions)
    before: list[float] = []

    def edit(layer: int, latents: Tensor) -> Tensor:
        if layer not in by_layer:
            return latents
        latents = latents.clone()
        for pos, feature, target in by_layer[layer]:
            before.append(float(latents[pos, feature]))
            latents[pos, feature] = target
        return latents

    logits = local.replacement_logits(ids, clean["state"], errors, edit)
    return {"clean_logits": clean["logits"], "logits": logits, "activations_before": torch.tensor(before)}


def predicted_node_changes(graph: AttributionGraph, changes: dict[int, float]) -> Tensor:
    """Change of every node's input (features: pre-activation; logits: demeaned logit) predicted by the
    graph when the feature nodes in `changes` ({node: Δactivation}) move by those amounts: edges are
    linear in their source's activation (A[t, s] = a_s·…), so Δ_t = Σ_s A[t, s]·Δa_s / a_s, and features
    downstream pass their own change on (Δa = Δh while they stay active)."""
    n_feat = graph.n_features
    values = graph.activation_values[graph.selected_features].float()
    A = graph.adjacency[:, :n_feat] / values.clamp_min(1e-12)[None, :]
    delta_act = torch.zeros(n_feat)
    fixed = torch.zeros(n_feat, dtype=torch.bool)
    for node, change in changes.items():
        delta_act[node] = change
        fixed[node] = True
    # features are ordered by layer, so one pass per layer settles every downstream change
    for _ in range(graph.n_layers + 1):
        incoming = A[:n_feat] @ delta_act
        updated = torch.where(fixed, delta_act, incoming)
        if torch.allclose(updated, delta_act):
            break
        delta_act = updated
    return A @ delta_act


def _demeaned(logits: Tensor, token: int) -> float:
    """The last position's logit of `token` minus the mean logit (what a graph's logit node reads)."""
    return float(logits[-1, token] - logits[-1].mean())


def check_graph(model: torch.nn.Module, tokenizer: Any, transcoders: Layered, graph: AttributionGraph,
                top: int = 10, scale: float = 0.0, freeze_attention: bool = True) -> list[dict[str, float]]:
    """For each of the graph's `top` most influential features: scale it by `scale` (0 = ablate) in the
    real model and compare the change of the top logit (demeaned, as the graph's logit nodes read it)
    with the graph's prediction; `in_replacement` is the same change measured in the local replacement
    model (`intervene_in_replacement`). One dict per feature."""
    influence = graph.node_influence()[:graph.n_features]
    order = torch.argsort(influence, descending=True)[:top]
    target = int(graph.logit_tokens[0])
    local = LocalReplacementModel(model, transcoders)
    ids = tokenize_prompt(tokenizer, graph.input_tokens)
    clean = local.clean_run(ids)
    errors = local.reconstruction_errors(clean)
    clean_logit = _demeaned(clean["logits"], target)
    rows = []
    for node in order.tolist():
        layer, pos, feature = (int(v) for v in graph.active_features[graph.selected_features[node]])
        value = float(graph.activation_values[graph.selected_features[node]])
        change = [(layer, pos, feature, value * scale)]
        measured = _demeaned(_intervene(local, ids, clean, change, freeze_attention)["logits"], target) - clean_logit
        in_replacement = _demeaned(_intervene_in_replacement(local, ids, clean, errors, change)["logits"],
                                   target) - clean_logit
        predicted = float(predicted_node_changes(graph, {node: value * (scale - 1)})[graph.logit_start])
        rows.append({"node": node, "layer": layer, "pos": pos, "feature": feature, "activation": value,
                     "influence": float(influence[node]), "predicted": predicted, "measured": measured,
                     "in_replacement": in_replacement})
    return rows

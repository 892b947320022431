"""Attribution graphs of one prompt, as circuit-tracer 0.5.0 computes them (METHODS-2 §3).

`attribute(model, tokenizer, transcoders, prompt)` returns an `AttributionGraph`:
1. tokens: a special token is prepended unless the prompt starts with one (§3.1);
2. clean run (patterns and norm scales recorded); transcoder latents at every layer from the MLP inputs;
   latents at the first `skip_first` positions zeroed (default 1: the BOS position); error nodes =
   MLP output − reconstruction (decoder bias and skip included), zero at those positions;
3. logit targets: the top `max_n_logits` next-token probabilities, cut at cumulative `desired_logit_prob`
   (§3.3); each read as the demeaned unembedding row at the unembedding input (pre-softcap);
4. rows by batched backward passes through the local replacement model (`local_model`): a batch of
   targets (logits first, then features) injects each target's read vector (demeaned unembedding or
   encoder column) as the output gradient at its read site, one vectorised backward (`is_grads_batched`)
   gives the gradient at every write site, and contracting it with every source's vector gives
   A[t, s] = u_t·J·v_s (activation × gradient): features a_s·W_dec (CLT: each target-layer slice at its
   layer), errors, token embeddings. Feature columns are contracted in chunks of `chunk_features`, so a
   batch's working memory is batch × chunk × d, whatever the number of active features; a batch whose
   attention gradients would pass `attention_bytes` runs as sub-batches, and only the latest prefix run
   is kept, so memory grows linearly with the prompt;
5. with `max_feature_nodes` below the number of active features, features are visited in order of
   their partial influence on the logits (recomputed every `update_interval` batches), as
   circuit-tracer does, and the unvisited ones are dropped from rows and columns.

Node order (rows = targets, columns = sources): [selected features | errors (layer-major) | tokens |
logits]; error and token rows are zero, logit columns are zero (§3.2).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.circuits.graph import AttributionGraph, partial_influences
from saekit.circuits.local_model import LocalReplacementModel
from saekit.circuits.replacement import LayerByLayer, Layered
from saekit.errors import SaekitError


def tokenize_prompt(tokenizer: Any, prompt: str | Sequence[int] | Tensor) -> Tensor:
    """Token ids [n] of a prompt with a special token first (BOS, else pad, else EOS, else any special id),
    unless it already starts with one (circuit-tracer's rule; its first-token position is then ignored)."""
    if isinstance(prompt, str):
        ids = torch.tensor(tokenizer(prompt, add_special_tokens=False)["input_ids"], dtype=torch.long)
    else:
        ids = torch.as_tensor(prompt, dtype=torch.long).flatten()
    special = list(getattr(tokenizer, "all_special_ids", []) or [])
    if ids.numel() and int(ids[0]) in special:
        return ids
    candidates = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, *special]
    first = next((c for c in candidates if c is not None), None)
    if first is None:
        raise SaekitError("the tokenizer has no special token to put first; pass token ids that start with one")
    return torch.cat([torch.tensor([int(first)]), ids])


def salient_logits(logits: Tensor, max_n_logits: int = 10, desired_logit_prob: float = 0.95) -> tuple[Tensor, Tensor]:
    """(token ids, probabilities) of the top logits until their cumulative probability reaches
    `desired_logit_prob`, at most `max_n_logits` (circuit-tracer's `_from_salient`)."""
    probs = torch.softmax(logits.float(), dim=-1)
    top_p, top_idx = torch.topk(probs, min(max_n_logits, probs.numel()))
    cutoff = int(torch.searchsorted(torch.cumsum(top_p, 0), torch.tensor(desired_logit_prob))) + 1
    return top_idx[:cutoff], top_p[:cutoff]


class _Sources:
    """Every source node's vector at its write site, gathered lazily per chunk of features."""

    def __init__(self, tc: Layered, active: Tensor, values: Tensor, n_layers: int) -> None:
        self.tc = tc
        self.active = active  # [m, 3] (layer, pos, feature)
        self.values = values
        # per target layer t: indices (into active) of features whose decoders write to t
        self.writers: list[Tensor] = []
        layers = active[:, 0]
        for t in range(n_layers):
            mask = torch.zeros(len(active), dtype=torch.bool)
            for s in range(t + 1):
                if tc.decoder(s, t) is not None:
                    mask |= layers == s
            self.writers.append(torch.nonzero(mask).flatten())

    @torch.no_grad()
    def decoder_vectors(self, target_layer: int, idx: Tensor) -> Tensor:
        """a·W_dec^{s→t}[i] [len(idx), d] for the features `idx` (all of them writing to `target_layer`)."""
        out = torch.empty(len(idx), self.tc.d_out, device=self.values.device)
        layers = self.active[idx, 0]
        for s in layers.unique().tolist():
            mask = layers == s
            pick = idx[mask]
            block = self.tc.decoder(int(s), target_layer)
            assert block is not None
            out[mask] = block[self.active[pick, 2]].float() * self.values[pick, None]
        return out

    @torch.no_grad()
    def encoder_vectors(self, idx: Tensor) -> Tensor:
        """Encoder columns [len(idx), d_in] of the features `idx` (their read vectors as targets)."""
        out = torch.empty(len(idx), self.tc.d_in, device=self.values.device)
        layers = self.active[idx, 0]
        for s in layers.unique().tolist():
            mask = layers == s
            W_enc, _ = self.tc.encoder(int(s))
            out[mask] = W_enc[:, self.active[idx[mask], 2]].T.float()
        return out


def active_features_and_errors(local: LocalReplacementModel, mlp_in: Tensor, mlp_out: Tensor, skip_first: int
            ) -> tuple[Tensor, Tensor, Tensor]:
    """(active features [m, 3] as (layer, position, latent), their activations [m], error nodes [L, n, d])
    from the clean MLP inputs and outputs; the first `skip_first` positions have neither."""
    walk = LayerByLayer(local.transcoders)
    actives, values, errors = [], [], []
    for layer in range(local.n_layers):
        recon = walk.step(layer, mlp_in[layer]).float()
        latents = walk.latents[-1].float().clone()
        latents[:skip_first] = 0
        pos, feat = torch.nonzero(latents, as_tuple=True)
        actives.append(torch.stack([torch.full_like(pos, layer), pos, feat], 1))
        values.append(latents[pos, feat])
        error = mlp_out[layer] - recon
        error[:skip_first] = 0
        errors.append(error)
    return torch.cat(actives), torch.cat(values), torch.stack(errors)


class _RowComputer:
    """Attribution rows for batches of targets: one vectorised backward per batch.

    Causal attention means a target at position p depends on positions ≤ p only, so a batch whose targets
    all sit before position m runs its backward through the frozen model of the first m tokens (a prefix
    run: the recorded patterns and scales sliced, no copy). Prefix lengths are rounded up to multiples of
    `granule` positions. Only the latest prefix run is kept (batches come sorted by prefix, and each run
    holds a graph of m positions: keeping them all would cost memory quadratic in the prompt's length), and
    a batch whose attention gradients ([B, heads, m, m] per layer) would pass `attention_bytes` is split
    into sub-batches, so a long prompt needs memory linear in its length and in its active features."""

    def __init__(self, local: LocalReplacementModel, ids: Tensor, state: Any, sources: _Sources, errors: Tensor,
                 embed_values: Tensor, n_cols: int, chunk_features: int, granule: int,
                 attention_bytes: int = 256 * 2 ** 20) -> None:
        self.local, self.ids, self.state, self.sources = local, ids, state, sources
        config: Any = getattr(local.model, "config", None)
        self.n_heads = int(getattr(config, "num_attention_heads", 1) or 1)
        self.attention_bytes = attention_bytes
        self.errors, self.embed_values = errors, embed_values
        self.n_cols, self.chunk = n_cols, chunk_features
        self.n_feat = len(sources.active)
        self.n_pos = errors.shape[1]
        self.granule = max(1, granule)
        self.runs: dict[int, dict[str, Any]] = {}

    def _run(self, m: int) -> dict[str, Any]:
        if m not in self.runs:
            from saekit.circuits.local_model import FrozenState

            state = FrozenState("use", patterns={k: v[..., :m, :m] for k, v in self.state.patterns.items()},
                                scales={k: v[:, :m] for k, v in self.state.scales.items()}, checked=self.state.checked)
            self.runs.clear()
            self.runs[m] = self.local.gradient_run(self.ids[:m], state, 0)
        return self.runs[m]

    def rows(self, layers: Tensor, positions: Tensor, vectors: Tensor) -> Tensor:
        """Rows [B, n_cols] for targets reading `vectors` [B, d] at (layer, position); layer L = logits."""
        m = min(self.n_pos, -(-(int(positions.max()) + 1) // self.granule) * self.granule)
        largest = max(1, self.attention_bytes // (self.n_heads * m * m * 4))
        return torch.cat([self._rows(layers[i:i + largest], positions[i:i + largest], vectors[i:i + largest], m)
                          for i in range(0, len(layers), largest)])

    def _rows(self, layers: Tensor, positions: Tensor, vectors: Tensor, m: int) -> Tensor:
        L, B = self.local.n_layers, len(layers)
        run = self._run(m)
        reads = run["reads"]
        top = int(layers.max())
        outputs, grads = [], []
        for layer in sorted(set(layers.tolist())):
            g = torch.zeros(B, *reads[layer].shape, dtype=reads[layer].dtype, device=reads[layer].device)
            mask = layers == layer
            batch = torch.nonzero(mask).flatten()
            g[batch, 0, positions[mask]] = vectors[mask].to(g.device, g.dtype)
            outputs.append(reads[layer])
            grads.append(g)
        inputs = [run["embed"]] + run["mlp_out"][:min(top, L)]
        found = torch.autograd.grad(outputs, inputs, grads, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
        with torch.no_grad():
            return self._contract(found, B, m).cpu()

    def _contract(self, found: Sequence[Tensor | None], B: int, m: int) -> Tensor:
        """Contract the write-site gradients [B, 1, m, d] (first m positions) with every source's vector."""
        L, n = self.local.n_layers, self.n_pos
        row = torch.zeros(B, self.n_cols, device=self.errors.device)
        tok_start = self.n_feat + L * n
        g_embed = found[0]
        if g_embed is not None:
            row[:, tok_start:tok_start + m] = (g_embed[:, 0].float() * self.embed_values[:m]).sum(-1)
        for t, g in enumerate(found[1:]):
            if g is None:
                continue
            g = g[:, 0].float()  # [B, m, d]
            start = self.n_feat + t * n
            row[:, start:start + m] = (g * self.errors[t, :m]).sum(-1)
            writers = self.sources.writers[t]
            writers = writers[self.sources.active[writers, 1] < m]
            if len(writers) == 0:
                continue
            by_position = g.transpose(0, 1).contiguous()  # [m, B, d]: a writer's gradients are one block
            for c in range(0, len(writers), self.chunk):
                idx = writers[c:c + self.chunk]
                vecs = self.sources.decoder_vectors(t, idx)  # [c, d]
                pos = self.sources.active[idx, 1].to(g.device)
                row[:, idx] += torch.bmm(by_position.index_select(0, pos), vecs[:, :, None])[..., 0].T
        return row


def attribute(model: nn.Module, tokenizer: Any, transcoders: Layered, prompt: str | Sequence[int] | Tensor, *,
              max_n_logits: int = 10, desired_logit_prob: float = 0.95, batch_size: int = 64,
              max_feature_nodes: int | None = None, update_interval: int = 4, skip_first: int = 1,
              chunk_features: int = 2048, prefix_granule: int = 32, attention_bytes: int = 256 * 2 ** 20,
              progress: bool = False) -> AttributionGraph:
    """The attribution graph of `prompt` (see the module docstring)."""
    start = time.perf_counter()
    if batch_size < 1 or chunk_features < 1:
        raise SaekitError("batch_size and chunk_features must be positive")
    local = LocalReplacementModel(model, transcoders)
    ids = tokenize_prompt(tokenizer, prompt)
    n = len(ids)
    if skip_first >= n:
        raise SaekitError(f"the prompt has {n} tokens: nothing is left after ignoring the first {skip_first}")
    clean = local.clean_run(ids)
    with torch.no_grad():
        active, values, errors = active_features_and_errors(local, clean["mlp_in"], clean["mlp_out"], skip_first)
    L = local.n_layers
    target_ids, target_probs = salient_logits(clean["logits"][-1].cpu(), max_n_logits, desired_logit_prob)
    W_U = local.W_U.detach().float()
    logit_vectors = W_U[target_ids.to(W_U.device)] - W_U.mean(0, keepdim=True)
    active = active.cpu()  # node bookkeeping on the CPU; vectors and gradients stay on the model's device
    sources = _Sources(transcoders, active, values, L)
    n_active = len(active)
    n_logits = len(target_ids)
    logit_offset = n_active + (L + 1) * n
    total_nodes = logit_offset + n_logits
    budget = min(max_feature_nodes or n_active, n_active)

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            embed_values = cast(Any, model).get_input_embeddings()(ids[None].to(local.device))[0].float()
        computer = _RowComputer(local, ids, clean["state"], sources, errors, embed_values, logit_offset,
                                chunk_features, prefix_granule, attention_bytes)
        edge = torch.zeros(budget + n_logits, total_nodes)  # logit columns stay zero
        row_node = torch.zeros(budget + n_logits, dtype=torch.long)
        for i in range(0, n_logits, batch_size):
            vec = logit_vectors[i:i + batch_size]
            last = torch.full((len(vec),), n - 1)
            edge[i:i + len(vec), :logit_offset] = computer.rows(torch.full((len(vec),), L), last, vec)
            row_node[i:i + len(vec)] = torch.arange(i, i + len(vec)) + logit_offset
        st = n_logits
        visited = torch.zeros(n_active, dtype=torch.bool)
        n_visited = 0
        bar = tqdm(total=budget, desc="attribution rows", unit="feature", disable=not progress)
        while n_visited < budget:
            if budget == n_active:
                pending = torch.arange(n_active)
            else:
                influence = partial_influences(edge[:st], target_probs, row_node[:st])
                rank = torch.argsort(influence[:n_active], descending=True)
                queue = min(update_interval * batch_size, budget - n_visited)
                pending = rank[~visited[rank]][:queue]
            # batches of targets in the same prefix run (positions within one granule: shorter runs on long
            # prompts), and within it at nearby layers (the backward stops at the batch's highest layer);
            # rows keep circuit-tracer's order
            granule = max(1, prefix_granule)
            bucket = -(-(active[pending, 1] + 1) // granule)
            order = torch.argsort(bucket * (L + 1) + active[pending, 0], stable=True)
            for b in range(0, len(pending), batch_size):
                slots = order[b:b + batch_size]
                idx = pending[slots]
                rows = computer.rows(active[idx, 0], active[idx, 1], sources.encoder_vectors(idx))
                edge[st + slots, :logit_offset] = rows
                row_node[st + slots] = idx
                visited[idx] = True
                bar.update(len(idx))
            st += len(pending)
            n_visited += len(pending)
        bar.close()
    finally:
        for p in params:
            p.requires_grad_(True)
        if "computer" in locals():
            computer.runs.clear()

    selected = torch.nonzero(visited).flatten()
    if budget < n_active:
        edge = edge[:, torch.cat([selected, torch.arange(n_active, total_nodes)])]
    edge = edge[torch.argsort(row_node)]
    size = edge.shape[1]
    adjacency = torch.zeros(size, size)
    adjacency[:budget] = edge[:budget]
    adjacency[-n_logits:] = edge[budget:]
    vocab = tokenizer.convert_ids_to_tokens if hasattr(tokenizer, "convert_ids_to_tokens") else None
    return AttributionGraph(
        prompt=prompt if isinstance(prompt, str) else tokenizer.decode(ids.tolist()),
        input_tokens=ids, token_strings=[str(t) for t in vocab(ids.tolist())] if vocab else [str(i) for i in ids],
        n_layers=L, active_features=active, activation_values=values.cpu(), selected_features=selected,
        adjacency=adjacency, logit_tokens=target_ids, logit_probabilities=target_probs.float(),
        logit_strings=[str(t) for t in vocab(target_ids.tolist())] if vocab else [str(int(i)) for i in target_ids],
        meta={"transcoders": getattr(transcoders, "name", None) or type(transcoders).__name__,
              "kind": "transcoder_set" if hasattr(transcoders, "transcoders") else "cross_layer_transcoder",
              "model": getattr(getattr(model, "config", None), "_name_or_path", None), "skip_first": skip_first,
              "max_n_logits": max_n_logits, "desired_logit_prob": desired_logit_prob,
              "max_feature_nodes": max_feature_nodes, "n_active_features": n_active, "batch_size": batch_size,
              "seconds": time.perf_counter() - start, "total_nodes_before_budget": total_nodes})

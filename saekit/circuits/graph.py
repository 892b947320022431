"""An attribution graph, its influence, pruning and scores (METHODS-2 §3.2, §3.6, §3.7).

Definitions are circuit-tracer 0.5.0's (`graph.py`), restated here:
- Â = |A| with each row divided by its sum (clamped at 1e-10);
- node influence I = w·(Â + Â² + …), w = the logit probabilities on the logit nodes (iterated until
  the product vanishes, which it does because the graph is acyclic; at most 1000 steps);
- `prune`: keep nodes whose influence reaches the cut that keeps `node_threshold` of the total
  (tokens and logits always kept), zero the rest, recompute Â′ and I′, score edges Â′ ⊙ (I′ + w)[:, None]
  and keep those above the cut that keeps `edge_threshold`; then, until nothing changes, drop features
  and errors without a kept outgoing edge and features without a kept incoming edge;
- `scores`: replacement = Σ_tokens I / (Σ_tokens I + Σ_errors I); completeness =
  Σ_n (1 − Σ_{error columns} Â[n, ·])(I_n + w_n) / Σ_n (I_n + w_n).

On disk a graph is a folder: `graph.safetensors` (adjacency and every tensor) and `graph.json` (prompt,
token strings, logit targets, settings, and the node table: one row per node).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saekit.errors import SaekitError
from saekit.io import atomic_write_json, read_json_file

FORMAT = "saekit-attribution-graph"
VERSION = 1
TENSORS = ("adjacency", "input_tokens", "active_features", "activation_values", "selected_features",
           "logit_tokens", "logit_probabilities")


def normalize_matrix(matrix: Tensor, rows: Tensor | None = None) -> Tensor:
    """|A| with every row divided by its sum (rows summing to 0 stay 0); with `rows`, only those rows
    ([len(rows), N]): a graph's error and token rows are zero, and leaving them out keeps long prompts from
    needing a second N × N matrix."""
    absolute = (matrix if rows is None else matrix.index_select(0, rows)).abs()
    return absolute.div_(absolute.sum(dim=1, keepdim=True).clamp(min=1e-10))


def influence(normalized: Tensor, weights: Tensor, rows: Tensor | None = None, max_iter: int = 1000) -> Tensor:
    """w·(Â + Â² + …) by repeated products (the graph is acyclic, so the product vanishes); `normalized`
    holds the rows `rows` of Â (all rows when None), the others being zero."""
    def step(vector: Tensor) -> Tensor:
        return (vector if rows is None else vector[rows]) @ normalized

    current = step(weights)
    total = current.clone()
    for _ in range(max_iter):
        if not current.any():
            return total
        current = step(current)
        total += current
    raise SaekitError(f"node influence did not converge in {max_iter} steps: the adjacency matrix has a cycle")


def cut_for(scores: Tensor, fraction: float, zeros: int = 0) -> Tensor:
    """The score at which the scores sorted descending first reach `fraction` of their sum (`zeros` more
    entries of 0 counted after them, as if they had been passed)."""
    ordered = torch.sort(scores.flatten(), descending=True).values
    cumulative = torch.cumsum(ordered, 0) / ordered.sum()
    index = int(torch.searchsorted(cumulative, torch.tensor(fraction, dtype=cumulative.dtype)))
    if index >= len(ordered):
        return ordered.new_zeros(()) if zeros else ordered[-1]
    return ordered[index]


def partial_influences(rows: Tensor, logit_probs: Tensor, row_to_node: Tensor, max_iter: int = 128) -> Tensor:
    """Influence of every column node from the rows computed so far (row i = node `row_to_node[i]`),
    circuit-tracer's `compute_partial_influences` (row sums clamped at 1e-8): ranks features to visit
    under a feature budget."""
    normalized = rows.abs()
    normalized = normalized / normalized.sum(dim=1, keepdim=True).clamp(min=1e-8)
    total = torch.zeros(rows.shape[1])
    prod = torch.zeros(rows.shape[1])
    prod[-len(logit_probs):] = logit_probs
    for _ in range(max_iter):
        prod = prod[row_to_node] @ normalized
        if not prod.any():
            return total
        total += prod
    raise SaekitError("partial influences did not converge")


class PruneResult(NamedTuple):
    node_mask: Tensor
    edge_mask: Tensor
    cumulative_scores: Tensor


@dataclass
class AttributionGraph:
    """The attribution graph of one prompt. Nodes: [selected features | errors L·n (layer-major) |
    tokens n | logits]; `adjacency[target, source]` = direct effect of source on target."""

    prompt: str
    input_tokens: Tensor
    token_strings: list[str]
    n_layers: int
    active_features: Tensor  # [m, 3] (layer, position, feature)
    activation_values: Tensor  # [m]
    selected_features: Tensor  # [n_sel] indices into active_features
    adjacency: Tensor  # [N, N]
    logit_tokens: Tensor
    logit_probabilities: Tensor
    logit_strings: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    supernodes: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------------------ node layout
    @property
    def n_pos(self) -> int:
        return len(self.input_tokens)

    @property
    def n_features(self) -> int:
        return len(self.selected_features)

    @property
    def n_logits(self) -> int:
        return len(self.logit_tokens)

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def error_node(self, layer: int, position: int) -> int:
        return self.error_start + layer * self.n_pos + position

    def token_node(self, position: int) -> int:
        return self.token_start + position

    def logit_node(self, k: int) -> int:
        return self.logit_start + k

    def feature_node(self, layer: int, position: int, feature: int) -> int:
        """Node index of a selected feature (SaekitError when it is not in the graph)."""
        wanted = torch.tensor([layer, position, feature])
        rows = self.active_features[self.selected_features]
        hit = torch.nonzero((rows == wanted).all(1)).flatten()
        if not len(hit):
            raise SaekitError(f"feature {feature} at layer {layer}, position {position} is not a node of this graph")
        return int(hit[0])

    def logit_weights(self) -> Tensor:
        weights = torch.zeros(self.n_nodes)
        weights[self.logit_start:] = self.logit_probabilities.float()
        return weights

    def node(self, index: int) -> dict[str, Any]:
        """One row of the node table: kind, layer, position, feature, activation, label."""
        if index < self.error_start:
            layer, pos, feature = (int(v) for v in self.active_features[self.selected_features[index]])
            value = float(self.activation_values[self.selected_features[index]])
            return {"id": index, "kind": "feature", "layer": layer, "pos": pos, "feature": feature,
                    "activation": value, "label": f"L{layer} #{feature}"}
        if index < self.token_start:
            layer, pos = divmod(index - self.error_start, self.n_pos)
            return {"id": index, "kind": "error", "layer": layer, "pos": pos, "label": f"error L{layer}"}
        if index < self.logit_start:
            pos = index - self.token_start
            return {"id": index, "kind": "token", "layer": -1, "pos": pos, "token": self.token_strings[pos],
                    "label": self.token_strings[pos]}
        k = index - self.logit_start
        return {"id": index, "kind": "logit", "layer": self.n_layers, "pos": self.n_pos - 1,
                "token": self.logit_strings[k], "probability": float(self.logit_probabilities[k]),
                "label": f"logit {self.logit_strings[k]}"}

    def node_table(self) -> list[dict[str, Any]]:
        return [self.node(i) for i in range(self.n_nodes)]

    # ------------------------------------------------------------------------- influence, pruning
    def live_rows(self) -> Tensor:
        """The rows that can be non-zero: features and logits (error and token nodes have no inputs)."""
        return torch.cat([torch.arange(self.n_features), torch.arange(self.logit_start, self.n_nodes)])

    def node_influence(self) -> Tensor:
        rows = self.live_rows()
        return influence(normalize_matrix(self.adjacency, rows), self.logit_weights(), rows)

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """circuit-tracer's `prune_graph` (see the module docstring)."""
        for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not 0.0 <= value <= 1.0:
                raise SaekitError(f"{name} must be between 0 and 1, got {value}")
        n_keep = self.n_logits + self.n_pos
        weights = self.logit_weights()
        rows = self.live_rows()
        node_influence = influence(normalize_matrix(self.adjacency, rows), weights, rows)
        node_mask = node_influence >= cut_for(node_influence, node_threshold)
        node_mask[-n_keep:] = True
        pruned = self.adjacency.index_select(0, rows)  # a copy of the live rows only
        pruned[~node_mask[rows]] = 0
        pruned[:, ~node_mask] = 0
        normalized = normalize_matrix(pruned)
        edge_scores = normalized * (influence(normalized, weights, rows) + weights)[rows, None]
        zero_entries = (self.n_nodes - len(rows)) * self.n_nodes
        cut = cut_for(edge_scores, edge_threshold, zero_entries)
        edge_mask = torch.full((self.n_nodes, self.n_nodes), bool(cut <= 0))
        edge_mask[rows] = edge_scores >= cut
        old = node_mask.clone()
        node_mask[:-n_keep] &= edge_mask[:, :-n_keep].any(0)
        node_mask[:self.n_features] &= edge_mask[:self.n_features].any(1)
        while not torch.equal(node_mask, old):
            old[:] = node_mask
            edge_mask[~node_mask] = False
            edge_mask[:, ~node_mask] = False
            node_mask[:-n_keep] &= edge_mask[:, :-n_keep].any(0)
            node_mask[:self.n_features] &= edge_mask[:self.n_features].any(1)
        ordered, order = torch.sort(node_influence, descending=True)
        cumulative = torch.zeros_like(node_influence)
        cumulative[order] = torch.cumsum(ordered, 0) / ordered.sum()
        return PruneResult(node_mask, edge_mask, cumulative)

    def scores(self) -> dict[str, float]:
        """Replacement and completeness scores of the unpruned graph (circuit-tracer's definitions)."""
        weights = self.logit_weights()
        rows = self.live_rows()
        normalized = normalize_matrix(self.adjacency, rows)
        node_influence = influence(normalized, weights, rows)
        tokens = node_influence[self.token_start:self.logit_start].sum()
        errors = node_influence[self.error_start:self.token_start].sum()
        replacement = tokens / (tokens + errors)
        non_error = torch.ones(self.n_nodes)  # rows without inputs count as complete
        non_error[rows] = 1 - normalized[:, self.error_start:self.token_start].sum(-1)
        output = node_influence + weights
        completeness = (non_error * output).sum() / output.sum()
        return {"replacement_score": float(replacement), "completeness_score": float(completeness)}

    # ---------------------------------------------------------------------------------- saving
    def save(self, folder: str | Path) -> Path:
        """Write `graph.safetensors` and `graph.json` into `folder` (created; files replaced atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous().cpu() for name in TENSORS}
        tmp = folder / ".graph.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(folder / "graph.safetensors")
        atomic_write_json(folder / "graph.json", {
            "format": FORMAT, "version": VERSION, "prompt": self.prompt, "token_strings": self.token_strings,
            "n_layers": self.n_layers, "logit_strings": self.logit_strings, "meta": self.meta,
            "supernodes": self.supernodes, "scores": self.scores(), "nodes": self.node_table()})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AttributionGraph:
        folder = Path(folder)
        info = read_json_file(folder / "graph.json", "attribution graph")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise SaekitError(f"{folder} is not a saekit attribution graph (no graph.json of format {FORMAT})")
        if info.get("version", 0) > VERSION:
            raise SaekitError(f"{folder} was written by a newer saekit (graph version {info['version']}): "
                              "upgrade saekit")
        path = folder / "graph.safetensors"
        if not path.exists():
            raise SaekitError(f"{folder} has graph.json but no graph.safetensors")
        tensors = load_file(str(path))
        missing = [name for name in TENSORS if name not in tensors]
        if missing:
            raise SaekitError(f"{path} lacks {', '.join(missing)}: the graph is incomplete")
        graph = cls(prompt=info["prompt"], token_strings=list(info["token_strings"]), n_layers=int(info["n_layers"]),
                    logit_strings=list(info["logit_strings"]), meta=dict(info.get("meta") or {}),
                    supernodes=list(info.get("supernodes") or []), **{name: tensors[name] for name in TENSORS})
        expected = graph.logit_start + graph.n_logits
        if graph.adjacency.shape != (expected, expected):
            raise SaekitError(f"{path}: adjacency {tuple(graph.adjacency.shape)} does not match the node counts "
                              f"({expected} nodes)")
        return graph

"""Attribution graphs on tiny random Llamas: the local replacement model reproduces the logits with its
error nodes; the adjacency satisfies the row identity (edges into a node sum to what it reads) and the
column identity (adding a source's vector once more in the constrained model changes each target by its
edge); circuit-tracer's pruning and score definitions on the graph of METHODS-2 §3.6 check 1 and on an
exact-transcoder toy; saving and loading; the feature budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saekit.circuits.attribution import active_features_and_errors, attribute, salient_logits, tokenize_prompt
from saekit.circuits.graph import AttributionGraph
from saekit.circuits.interventions import frozen_effects
from saekit.circuits.local_model import LocalReplacementModel
from saekit.circuits.transcoder_set import TranscoderSet
from saekit.errors import SaekitError
from tests.helpers import random_clt, random_transcoder_set, tiny_llama, tiny_tokenizer

D = 32


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(len(tokenizer), layers=3, seed=5)


def _prompt(tokenizer, n: int = 9, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    words = tokenizer.convert_ids_to_tokens(torch.randint(5, len(tokenizer), (n,), generator=g).tolist())
    return " ".join(words)


def _transcoders(kind: str, zero_bias: bool = False):
    """Random transcoders whose outputs are about as large as the tiny model's MLP outputs (decoders
    scaled down), so the replacement model stays in the model's range."""
    if kind == "plt":
        tc = random_transcoder_set("jumprelu", layers=(0, 1, 2), d=D, d_sae=24, seed=11)
    elif kind == "plt_skip":
        tc = random_transcoder_set("relu", layers=(0, 1, 2), d=D, d_sae=24, seed=12, skip_connection=True)
    else:
        tc = random_clt("jumprelu", n_layers=3, d=D, d_sae=24, seed=13)
    with torch.no_grad():
        if isinstance(tc, TranscoderSet):
            for d in tc:
                d.W_dec.mul_(0.02)
                d.b_dec.mul_(0.02)
                if d.cfg.skip_connection:
                    d.W_skip.mul_(0.02)
                d.threshold.abs_().mul_(0.2) if "threshold" in d.weights() else None
                if zero_bias:
                    d.b_dec.zero_()
        else:
            for theta in tc.threshold:
                theta.abs_().mul_(0.2)
            for w in tc.W_dec:
                w.mul_(0.02)
            tc.b_dec.mul_(0.02)
            if zero_bias:
                tc.b_dec.zero_()
    return tc


KINDS = ["plt", "plt_skip", "clt"]


@pytest.mark.parametrize("kind", KINDS)
def test_replacement_model_with_errors_reproduces_the_logits(model, tokenizer, kind):
    tc = _transcoders(kind)
    local = LocalReplacementModel(model, tc)
    ids = tokenize_prompt(tokenizer, _prompt(tokenizer))
    clean = local.clean_run(ids)
    with torch.no_grad():
        reference = model(input_ids=ids[None]).logits[0].float()
        errors = local.reconstruction_errors(clean)
    assert torch.allclose(clean["logits"], reference, atol=1e-5)
    with_errors = local.replacement_logits(ids, clean["state"], errors)
    without = local.replacement_logits(ids, clean["state"])
    scale = reference.abs().max()
    assert (with_errors - reference).abs().max() < 1e-5 * scale
    assert (without - reference).abs().max() > 1e-2 * scale  # the errors matter: the check can fail


@pytest.mark.parametrize("kind", KINDS)
def test_row_identity_edges_sum_to_what_each_node_reads(model, tokenizer, kind):
    """No biases in the Llama, decoder biases zeroed, no ignored position: every feature's pre-activation
    (minus b_enc) and every demeaned target logit is exactly the sum of its row (METHODS-2 §3.8.2)."""
    tc = _transcoders(kind, zero_bias=True)
    prompt = _prompt(tokenizer, seed=1)
    graph = attribute(model, tokenizer, tc, prompt, batch_size=7, skip_first=0, chunk_features=5)
    local = LocalReplacementModel(model, tc)
    clean = local.clean_run(tokenize_prompt(tokenizer, prompt))
    W_U = model.lm_head.weight.detach().float()
    logits = (W_U[graph.logit_tokens] - W_U.mean(0)) @ clean["unembed_in"][-1]
    rows = graph.adjacency.sum(1)
    assert torch.allclose(rows[graph.logit_start:], logits, rtol=1e-4, atol=1e-4 * logits.abs().max())
    feats = graph.active_features[graph.selected_features]
    h = torch.stack([clean["mlp_in"][l_, p] @ tc.encoder(l_)[0][:, f].detach().float() for l_, p, f in feats.tolist()])
    assert graph.n_features > 20
    assert torch.allclose(rows[:graph.n_features], h, rtol=1e-4, atol=1e-4 * h.abs().max())
    assert graph.adjacency[graph.error_start:graph.logit_start].abs().sum() == 0  # error and token rows
    assert graph.adjacency[:, graph.logit_start:].abs().sum() == 0  # logit columns


@pytest.mark.parametrize("kind", KINDS)
def test_column_identity_in_the_constrained_model(model, tokenizer, kind):
    """Adding a source's vector once more (features: doubling it) with patterns, scales and MLP outputs
    frozen changes each target by the source's column (METHODS-2 §3.8.1)."""
    tc = _transcoders(kind)
    prompt = _prompt(tokenizer, seed=2)
    graph = attribute(model, tokenizer, tc, prompt, batch_size=16)
    local = LocalReplacementModel(model, tc)
    ids = tokenize_prompt(tokenizer, prompt)
    clean = local.clean_run(ids)
    n = graph.n_pos
    W_U = model.lm_head.weight.detach().float()
    logit_dirs = W_U[graph.logit_tokens] - W_U.mean(0)
    feats = graph.active_features[graph.selected_features]
    enc = torch.stack([tc.encoder(l_)[0][:, f].detach().float() for l_, _p, f in feats.tolist()])

    def targets(run):
        h = torch.stack([run["mlp_in"][l_, p] for l_, p, _f in feats.tolist()])
        return torch.cat([(h * enc).sum(-1), logit_dirs @ run["unembed_in"][-1]])

    base = targets(clean)
    rows = torch.cat([torch.arange(graph.n_features), torch.arange(graph.logit_start, graph.n_nodes)])
    with torch.no_grad():
        _active, _values, errors = active_features_and_errors(local, clean["mlp_in"], clean["mlp_out"], 1)
    checks = 0
    for source in [0, graph.n_features // 2, graph.n_features - 1]:
        layer, pos, f = feats[source].tolist()
        value = float(graph.activation_values[graph.selected_features[source]])
        adds = {}
        for t in range(layer, 3):
            block = tc.decoder(layer, t)
            if block is not None:
                v = torch.zeros(n, D)
                v[pos] = value * block[f].detach().float()
                adds[f"mlp_out.{t}"] = v
        change = targets(frozen_effects(local, ids, clean, adds)) - base
        expected = graph.adjacency[rows, source]
        assert torch.allclose(change, expected, rtol=1e-3, atol=1e-4 * (1 + expected.abs().max()))
        checks += 1
    for layer, pos in [(0, 3), (2, n - 1)]:
        v = torch.zeros(n, D)
        v[pos] = errors[layer, pos]
        change = targets(frozen_effects(local, ids, clean, {f"mlp_out.{layer}": v})) - base
        expected = graph.adjacency[rows, graph.error_node(layer, pos)]
        assert torch.allclose(change, expected, rtol=1e-3, atol=1e-4 * (1 + expected.abs().max()))
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    v = torch.zeros(n, D)
    v[2] = embeds[2]
    change = targets(frozen_effects(local, ids, clean, {"embed": v})) - base
    expected = graph.adjacency[rows, graph.token_node(2)]
    assert expected.abs().max() > 0
    assert torch.allclose(change, expected, rtol=1e-3, atol=1e-4 * (1 + expected.abs().max()))
    assert checks == 3


def _spec_graph() -> AttributionGraph:
    """METHODS-2 §3.6 check 1 (circuit-tracer's tests/test_graph.py): 12 nodes, logit = node 11."""
    A = torch.zeros(12, 12)
    for target, sources in {11: [1, 3, 6, 8], 3: [0, 1, 6], 1: [9, 10], 0: [9]}.items():
        A[target, sources] = 10.0
    # layout: 9 features, 0 error layers, 2 tokens (9, 10), 1 logit (11)
    return AttributionGraph(prompt="", input_tokens=torch.tensor([0, 1]), token_strings=["a", "b"], n_layers=0,
                            active_features=torch.zeros(9, 3, dtype=torch.long), activation_values=torch.ones(9),
                            selected_features=torch.arange(9), adjacency=A, logit_tokens=torch.tensor([0]),
                            logit_probabilities=torch.tensor([1.0]), logit_strings=["x"])


def test_influence_and_edge_scores_of_the_spec_graph():
    graph = _spec_graph()
    expected = torch.tensor([1 / 12, 1 / 3, 0, 1 / 4, 0, 0, 1 / 3, 0, 1 / 4, 1 / 4, 1 / 6, 0])
    assert torch.allclose(graph.node_influence(), expected, atol=1e-6)
    graph.adjacency[3, 0] = 0
    graph.adjacency[0, 9] = 0
    from saekit.circuits.graph import influence, normalize_matrix

    normalized = normalize_matrix(graph.adjacency)
    weights = graph.logit_weights()
    scores = normalized * (influence(normalized, weights) + weights)[:, None]
    assert torch.allclose(scores[11, [1, 3, 6, 8]], torch.full((4,), 1 / 4))
    assert torch.allclose(scores[3, [1, 6]], torch.full((2,), 1 / 8))
    assert torch.allclose(scores[1, [9, 10]], torch.full((2,), 3 / 16))
    nodes, edges, cumulative = graph.prune(node_threshold=0.8, edge_threshold=0.98)
    assert nodes[[9, 10, 11]].all()  # tokens and logits always kept
    assert not nodes[[2, 4, 5, 7]].any()  # no influence
    assert edges[11, 1] and not edges[~nodes].any()
    assert cumulative.max() == pytest.approx(1.0)


class _ReluMLP(nn.Module):
    def __init__(self, d: int, hidden: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def test_exact_transcoders_give_scores_of_one(tokenizer):
    """A ReLU transcoder equal to a ReLU MLP leaves no error: replacement = completeness = 1
    (METHODS-2 §3.8 check 2)."""
    model = tiny_llama(len(tokenizer), layers=2, seed=7)
    tc = random_transcoder_set("relu", layers=(0, 1), d=D, d_sae=48, seed=3)
    for i, layer in enumerate(model.model.layers):
        layer.mlp = _ReluMLP(D, 48, seed=i)
        with torch.no_grad():
            tc[i].W_enc.copy_(layer.mlp.up.weight.T)
            tc[i].b_enc.copy_(layer.mlp.up.bias)
            tc[i].W_dec.copy_(layer.mlp.down.weight.T)
            tc[i].b_dec.copy_(layer.mlp.down.bias)
    graph = attribute(model, tokenizer, tc, _prompt(tokenizer, seed=3))
    errors = graph.adjacency[:, graph.error_start:graph.token_start]
    assert errors.abs().max() < 1e-5 * graph.adjacency.abs().max()
    scores = graph.scores()
    assert scores["replacement_score"] == pytest.approx(1.0, abs=1e-5)
    assert scores["completeness_score"] == pytest.approx(1.0, abs=1e-5)
    noisy = attribute(tiny_llama(len(tokenizer), layers=2, seed=7), tokenizer, tc, _prompt(tokenizer, seed=3))
    assert noisy.scores()["replacement_score"] < 0.99  # the real (gated) MLPs leave errors


def test_save_and_load_round_trip(model, tokenizer, tmp_path):
    graph = attribute(model, tokenizer, _transcoders("clt"), _prompt(tokenizer))
    graph.supernodes = [{"name": "say <x>", "nodes": [0, 1]}]
    graph.save(tmp_path / "g")
    again = AttributionGraph.load(tmp_path / "g")
    assert torch.equal(again.adjacency, graph.adjacency)
    assert again.token_strings == graph.token_strings and again.supernodes == graph.supernodes
    assert again.scores() == graph.scores()
    import json

    nodes = json.loads((tmp_path / "g" / "graph.json").read_text())["nodes"]
    assert len(nodes) == graph.n_nodes and nodes[graph.logit_start]["kind"] == "logit"
    (tmp_path / "bad").mkdir()
    with pytest.raises(SaekitError, match="graph.json"):
        AttributionGraph.load(tmp_path / "bad")


def test_feature_budget_keeps_the_most_influential_features_and_their_exact_rows(model, tokenizer):
    tc = _transcoders("plt")
    prompt = _prompt(tokenizer, n=10, seed=4)
    full = attribute(model, tokenizer, tc, prompt, batch_size=8)
    budget = attribute(model, tokenizer, tc, prompt, batch_size=8, max_feature_nodes=12, update_interval=1)
    assert budget.n_features == 12 < full.n_features
    keep = budget.selected_features
    cols = torch.cat([keep, torch.arange(full.n_features, full.n_nodes)])
    rows = torch.cat([keep, torch.arange(full.n_features, full.n_nodes)])
    assert torch.allclose(budget.adjacency, full.adjacency[rows][:, cols], atol=1e-6)
    # the first batch visited is the one with the largest influence on the logits through logit rows
    direct = full.adjacency[full.logit_start:, :full.n_features].abs()
    assert int(torch.argmax((direct / full.adjacency[full.logit_start:].abs().sum(1, keepdim=True)).T
                            @ full.logit_probabilities)) in keep.tolist()


def test_salient_logits_and_tokenization(tokenizer):
    logits = torch.log(torch.tensor([0.6, 0.3, 0.06] + [0.04 / 17] * 17))
    ids, probs = salient_logits(logits)
    assert ids.tolist() == [0, 1, 2] and probs.sum() > 0.95
    ids, _ = salient_logits(torch.zeros(40))
    assert len(ids) == 10
    ids = tokenize_prompt(tokenizer, _prompt(tokenizer, n=3))
    assert int(ids[0]) == tokenizer.bos_token_id and len(ids) == 4
    assert tokenize_prompt(tokenizer, ids).tolist() == ids.tolist()  # already starts with a special token


def test_refuses_transcoders_that_miss_a_layer(model, tokenizer):
    with pytest.raises(SaekitError, match="every layer"):
        attribute(model, tokenizer, random_transcoder_set("relu", layers=(0, 1), d=D), "a b")


@pytest.mark.parametrize("kind", ["plt_skip", "clt"])
def test_prefix_runs_give_the_same_rows(model, tokenizer, kind):
    """Targets early in the prompt are attributed through a prefix of the model (causal attention): the
    rows equal those of the full-length backward, with and without a feature budget."""
    tc = _transcoders(kind)
    prompt = _prompt(tokenizer, n=14, seed=6)
    full = attribute(model, tokenizer, tc, prompt, batch_size=9, prefix_granule=1000)
    for granule in (1, 3):
        prefix = attribute(model, tokenizer, tc, prompt, batch_size=9, prefix_granule=granule)
        assert torch.allclose(prefix.adjacency, full.adjacency, rtol=1e-5, atol=1e-6 * full.adjacency.abs().max())
    # batches split by the attention-memory cap (here: one target per backward) give the same rows too
    split = attribute(model, tokenizer, tc, prompt, batch_size=9, prefix_granule=3, attention_bytes=1)
    assert torch.allclose(split.adjacency, full.adjacency, rtol=1e-5, atol=1e-6 * full.adjacency.abs().max())
    budget_full = attribute(model, tokenizer, tc, prompt, batch_size=5, max_feature_nodes=30, prefix_granule=1000)
    budget = attribute(model, tokenizer, tc, prompt, batch_size=5, max_feature_nodes=30, prefix_granule=2,
                       attention_bytes=1)
    assert torch.equal(budget.selected_features, budget_full.selected_features)
    assert torch.allclose(budget.adjacency, budget_full.adjacency, rtol=1e-5,
                          atol=1e-6 * budget_full.adjacency.abs().max())

"""`saekit attribute`, `saekit graph-view` and `saekit intervene` on a tiny Llama, and the interventions
module: setting a feature to its own value changes nothing, ablating moves the logits, and in the
constrained model the graph's prediction is exact."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.circuits.attribution import attribute, tokenize_prompt
from saekit.circuits.graph import AttributionGraph
from saekit.circuits.interventions import (
    check_graph,
    frozen_effects,
    intervene,
    intervene_in_replacement,
    predicted_node_changes,
)
from saekit.circuits.local_model import LocalReplacementModel
from saekit.cli import main
from saekit.formats.detect import save_as
from tests.circuits.test_attribution import _prompt, _transcoders
from tests.helpers import save_tiny, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribute_cli")
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), layers=3, seed=5)
    model_dir = save_tiny(root / "model", model, tokenizer)
    saved = {"plt": save_as(_transcoders("plt"), root / "plt", "saekit"),
             "clt": save_as(_transcoders("clt"), root / "clt", "saekit")}
    ct = save_as(_transcoders("clt"), root / "clt_ct", "circuit-tracer")
    return root, model_dir, saved, ct, tokenizer, model


def test_attribute_writes_a_graph_its_page_and_scores(setup, capsys):
    root, model_dir, saved, ct, tokenizer, model = setup
    prompt = _prompt(tokenizer, seed=1)
    out = root / "graph"
    assert main(["attribute", "--transcoders", str(saved["plt"]), "--model", str(model_dir), "--prompt", prompt,
                 "--out", str(out), "--no-progress", "--dashboards", str(root / "dash")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    graph = AttributionGraph.load(out)
    assert row["replacement_score"] == pytest.approx(graph.scores()["replacement_score"])
    assert (out / "index.html").is_file() and "layer_" in (out / "index.html").read_text()
    import saekit

    direct = attribute(model, tokenizer, saekit.load(saved["plt"]), prompt)
    assert torch.allclose(direct.adjacency, graph.adjacency, atol=1e-6)
    # many prompts, a circuit-tracer folder, a feature budget
    prompts = root / "prompts.txt"
    prompts.write_text(f"{prompt}\n\n{_prompt(tokenizer, seed=2)}\n")
    assert main(["attribute", "--transcoders", str(ct), "--model", str(model_dir), "--prompts", str(prompts),
                 "--out", str(root / "many"), "--no-progress", "--max-feature-nodes", "15"]) == 0
    scores = json.loads((root / "many" / "scores.json").read_text())
    assert len(scores) == 2 and all(r["features"] == 15 for r in scores)
    assert AttributionGraph.load(root / "many" / "graph_001").n_features == 15
    # a folder saekit did not write is refused unless --overwrite
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    args = ["attribute", "--transcoders", str(ct), "--model", str(model_dir), "--prompt", prompt, "--out",
            str(foreign), "--no-progress"]
    assert main(args) == 2
    assert main([*args, "--overwrite"]) == 0 and (foreign / "graph.json").is_file()


def test_bad_input_is_one_line(setup, capsys, tmp_path):
    _root, model_dir, saved, _ct, _tok, _model = setup
    layer0 = saved["plt"]
    assert main(["attribute", "--transcoders", str(tmp_path / "missing"), "--model", str(model_dir), "--prompt", "a",
                 "--out", str(tmp_path / "o")]) == 2
    assert main(["attribute", "--transcoders", str(layer0), "--model", str(model_dir), "--prompts",
                 str(tmp_path / "none.txt"), "--out", str(tmp_path / "o2")]) == 2
    assert "prompt file not found" in capsys.readouterr().err
    assert main(["intervene", "--transcoders", str(layer0), "--model", str(model_dir), "--prompt", "a",
                 "--feature", "1:x:3"]) == 2
    assert "LAYER:POS:FEATURE" in capsys.readouterr().err


def test_graph_view_stores_a_grouping(setup, tmp_path, capsys):
    _root, _model_dir, saved, _ct, tokenizer, model = setup
    import saekit

    graph = attribute(model, tokenizer, saekit.load(saved["clt"]), _prompt(tokenizer, seed=3))
    graph.save(tmp_path / "g")
    groups = tmp_path / "supernodes.json"
    groups.write_text(json.dumps([{"name": "say X", "nodes": [0, 1, 2]}]))
    assert main(["graph-view", str(tmp_path / "g"), "--supernodes", str(groups)]) == 0
    assert AttributionGraph.load(tmp_path / "g").supernodes == [{"name": "say X", "nodes": [0, 1, 2]}]
    assert "say X" in (tmp_path / "g" / "index.html").read_text()
    groups.write_text(json.dumps([{"name": "bad", "nodes": [10 ** 9]}]))
    capsys.readouterr()
    assert main(["graph-view", str(tmp_path / "g"), "--supernodes", str(groups)]) == 2
    assert "node ids" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_interventions_in_the_real_model(setup, kind):
    _root, _dir, _saved, _ct, tokenizer, model = setup
    tc = _transcoders(kind)
    prompt = _prompt(tokenizer, seed=4)
    graph = attribute(model, tokenizer, tc, prompt)
    node = int(torch.argmax(graph.node_influence()[:graph.n_features]))
    layer, pos, feature = graph.active_features[graph.selected_features[node]].tolist()
    value = float(graph.activation_values[graph.selected_features[node]])
    same = intervene(model, tokenizer, tc, prompt, [(layer, pos, feature, value)])
    assert torch.allclose(same["logits"], same["clean_logits"], atol=1e-5)  # set to its own value: no change
    assert same["activations_before"].tolist() == pytest.approx([value], rel=1e-5)
    ablated = intervene(model, tokenizer, tc, prompt, [(layer, pos, feature, 0.0)])
    assert (ablated["logits"][-1] - ablated["clean_logits"][-1]).abs().max() > 1e-4
    assert torch.allclose(ablated["logits"][:pos], ablated["clean_logits"][:pos], atol=1e-5)  # causal
    rows = check_graph(model, tokenizer, tc, graph, top=4)
    assert len(rows) == 4 and all(set(r) >= {"predicted", "measured", "in_replacement"} for r in rows)


@pytest.mark.parametrize("kind", ["plt", "clt"])
def test_the_graph_predicts_small_changes_in_the_replacement_model(setup, kind):
    """In the local replacement model (errors frozen, features live) a small scaling of a feature keeps
    every active set, so the response is linear and the graph's propagated prediction must match it (at
    1% some of these random JumpReLU features already jump their threshold); the same feature set to its
    own value changes nothing."""
    _root, _dir, _saved, _ct, tokenizer, model = setup
    tc = _transcoders(kind)
    prompt = _prompt(tokenizer, seed=6)
    graph = attribute(model, tokenizer, tc, prompt)
    target = int(graph.logit_tokens[0])
    order = torch.argsort(graph.node_influence()[:graph.n_features], descending=True)[:3]
    for node in order.tolist():
        layer, pos, feature = graph.active_features[graph.selected_features[node]].tolist()
        value = float(graph.activation_values[graph.selected_features[node]])
        same = intervene_in_replacement(model, tokenizer, tc, prompt, [(layer, pos, feature, value)])
        assert torch.allclose(same["logits"], same["clean_logits"], atol=1e-4)
        out = intervene_in_replacement(model, tokenizer, tc, prompt, [(layer, pos, feature, value * (1 + 1e-4))])
        measured = float((out["logits"][-1, target] - out["logits"][-1].mean())
                         - (out["clean_logits"][-1, target] - out["clean_logits"][-1].mean()))
        predicted = float(predicted_node_changes(graph, {node: value * 1e-4})[graph.logit_start])
        assert measured == pytest.approx(predicted, rel=0.05, abs=3e-7)


def test_graph_prediction_is_exact_for_direct_effects(setup):
    """In the constrained model (every MLP output frozen) ablating a feature changes each logit by minus
    its edge: what `predicted_node_changes` gives when nothing downstream may move."""
    _root, _dir, _saved, _ct, tokenizer, model = setup
    tc = _transcoders("plt")
    prompt = _prompt(tokenizer, seed=5)
    graph = attribute(model, tokenizer, tc, prompt)
    local = LocalReplacementModel(model, tc)
    ids = tokenize_prompt(tokenizer, prompt)
    clean = local.clean_run(ids)
    node = graph.n_features - 1  # a last-layer feature: nothing downstream but logits
    layer, pos, feature = graph.active_features[graph.selected_features[node]].tolist()
    value = float(graph.activation_values[graph.selected_features[node]])
    v = torch.zeros(graph.n_pos, 32)
    v[pos] = -value * tc.decoder(layer, layer)[feature].detach()
    run = frozen_effects(local, ids, clean, {f"mlp_out.{layer}": v})
    W_U = model.lm_head.weight.detach()
    dirs = W_U[graph.logit_tokens] - W_U.mean(0)
    measured = dirs @ (run["unembed_in"][-1] - clean["unembed_in"][-1])
    predicted = predicted_node_changes(graph, {node: -value})[graph.logit_start:]
    assert torch.allclose(measured, predicted, rtol=1e-3, atol=1e-5)


def test_attribute_and_intervene_run_on_the_device_asked_for(setup, capsys):
    """--device reaches the model and the transcoders ("cpu:0" is a distinct torch.device that runs on the
    CPU); node tables come back on the CPU either way."""
    root, model_dir, saved, _ct, tokenizer, _model = setup
    prompt = _prompt(tokenizer, seed=7)
    assert main(["attribute", "--transcoders", str(saved["clt"]), "--model", str(model_dir), "--prompt", prompt,
                 "--out", str(root / "on_device"), "--no-progress", "--device", "cpu:0"]) == 0
    assert AttributionGraph.load(root / "on_device").adjacency.abs().sum() > 0
    assert main(["intervene", "--transcoders", str(saved["clt"]), "--model", str(model_dir), "--graph",
                 str(root / "on_device"), "--top", "2", "--device", "cpu:0"]) == 0
    assert '"correlation"' in capsys.readouterr().out

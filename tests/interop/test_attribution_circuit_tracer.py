"""saekit's attribution graphs against the real circuit-tracer 0.5.0 on a tiny random Llama.

circuit-tracer's `attribute` needs a replacement model; its TransformerLens backend runs here, in its own
venv (`tests/interop/circuit_tracer_tl_env.sh` builds `.cache/ct-tl-venv`). `ct_attribution_helper.py`
converts the same Llama (read from the folder saekit saved) with transformer-lens's own weight converter,
loads the same transcoders (saved by saekit in circuit-tracer's layout) with circuit-tracer's own loader,
and records circuit-tracer's graph, scores and pruning masks. saekit's graph of the same token ids, from the
Hugging Face model, must have the same nodes, an adjacency equal to 1e-4 relative to its largest entry,
scores to 1e-3, and the same pruning masks; ablating a feature (attention frozen) gives circuit-tracer's
`feature_intervention` logits.

Marked `peers` like the other interop tests; SAEKIT_PEER_TESTS=0 skips them where PyPI is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import saekit
from saekit.circuits.attribution import attribute
from saekit.circuits.interventions import intervene
from saekit.formats.detect import save_as
from tests.circuits.test_attribution import _transcoders
from tests.helpers import save_tiny, tiny_llama, tiny_tokenizer
from tests.side_venv import side_python

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(1500)]

HERE = Path(__file__).resolve().parent
CASES = {"plt_jumprelu": ("plt", None), "plt_relu_skip": ("plt_skip", None), "clt_jumprelu": ("clt", None),
         "plt_budget": ("plt", 25), "clt_budget": ("clt", 25)}
PROMPTS = 2


@pytest.fixture(scope="session")
def ct_tl_python() -> Path:
    return side_python(HERE / "circuit_tracer_tl_env.sh", "SAEKIT_CT_TL_VENV", ".cache/ct-tl-venv",
                       "circuit-tracer attribution")


@pytest.fixture(scope="session")
def compared(ct_tl_python, tmp_path_factory):
    work = tmp_path_factory.mktemp("ct_attribution")
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), layers=3, seed=5)
    save_tiny(work / "model", model, tokenizer)
    sizes = {key: getattr(model.config, key) for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps")}
    sizes["rope_theta"] = 10000.0
    g = torch.Generator().manual_seed(3)
    prompts = [[tokenizer.bos_token_id] + torch.randint(5, len(tokenizer), (11,), generator=g).tolist()
               for _ in range(PROMPTS)]
    cases = {}
    for case, (kind, budget) in CASES.items():
        folder = save_as(_transcoders(kind), work / "transcoders" / case, "circuit-tracer")
        cases[case] = {"transcoders": str(folder), "prompts": prompts, "batch_size": 16, "max_feature_nodes": budget}
    (work / "job.json").write_text(json.dumps({"model": str(work / "model"), "config": sizes, "cases": cases}))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([str(ct_tl_python), str(HERE / "ct_attribution_helper.py"), str(work)], cwd=work,
                            capture_output=True, text=True, env=env, timeout=1200)
    if result.returncode != 0:
        pytest.fail("ct_attribution_helper.py failed:\n" + (result.stdout + result.stderr)[-4000:])
    hf = AutoModelForCausalLM.from_pretrained(work / "model").eval()
    return work, hf, tokenizer, cases


@pytest.mark.parametrize("case", list(CASES))
def test_same_graph_as_circuit_tracer(compared, case):
    work, model, tokenizer, cases = compared
    spec = cases[case]
    transcoders = saekit.load(spec["transcoders"])
    for i, ids in enumerate(spec["prompts"]):
        theirs = load_file(str(work / "ct" / case / f"{i}.safetensors"))
        info = json.loads((work / "ct" / case / f"{i}.json").read_text())
        assert info["tl_vs_hf_logits"] < 1e-4  # transformer-lens runs the same Llama
        graph = attribute(model, tokenizer, transcoders, ids, batch_size=16, prefix_granule=4,
                          max_feature_nodes=spec["max_feature_nodes"])
        assert torch.equal(graph.active_features, theirs["active_features"])
        assert torch.equal(graph.selected_features, theirs["selected_features"])
        assert torch.equal(graph.logit_tokens, theirs["logit_tokens"])
        assert torch.allclose(graph.logit_probabilities, theirs["logit_probabilities"], atol=1e-6)
        assert torch.allclose(graph.activation_values, theirs["activation_values"], rtol=1e-5, atol=1e-6)
        ours, ref = graph.adjacency, theirs["adjacency"]
        assert ours.shape == ref.shape
        relative = float((ours - ref).abs().max() / ref.abs().max())
        assert relative < 1e-4, f"{case} prompt {i}: adjacency differs by {relative:.2g} of its largest entry"
        assert float((ref != 0).float().mean()) > 0.05  # a graph with edges everywhere it can have them
        scores = graph.scores()
        assert scores["replacement_score"] == pytest.approx(info["replacement_score"], abs=1e-3)
        assert scores["completeness_score"] == pytest.approx(info["completeness_score"], abs=1e-3)
        pruned = graph.prune()
        assert torch.equal(pruned.node_mask, theirs["node_mask"])
        assert torch.equal(pruned.edge_mask, theirs["edge_mask"])
        layer, pos, feature = theirs["ablated_feature"].tolist()
        ours_ablated = intervene(model, tokenizer, transcoders, ids, [(layer, pos, feature, 0.0)])
        moved = (ours_ablated["clean_logits"] - theirs["ablated_logits"]).abs().max()
        assert moved > 1e-3  # the ablation changes circuit-tracer's logits
        assert torch.allclose(ours_ablated["logits"], theirs["ablated_logits"], atol=1e-4 * float(moved) + 1e-6)
        if spec["max_feature_nodes"]:
            assert graph.n_features == spec["max_feature_nodes"] < graph.meta["n_active_features"]

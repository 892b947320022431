"""The attention sites (attn_in.L, attn_z.L) mean the same thing on every family, and hookpoints are
ordered by when their hooks fire, so one stopped forward records all of them."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.models.hooks import capture, hooks
from saekit.models.sites import attention_heads, named_sites, resolve_hookpoints
from tests.helpers import ATTENTION_FAMILIES, tiny_family

VOCAB = 40
D_HEAD = 8


def query_rows(model, family: str, layer: int, head: int) -> torch.Tensor:
    """A view of the weights that make head `head`'s queries, found the family's own way (fused QKV
    layouts differ), so the test does not lean on the site it checks."""
    if family in ("llama", "qwen2", "gemma"):
        weight = model.model.layers[layer].self_attn.q_proj.weight  # [n_heads · d_head, d]
        return weight[head * D_HEAD:(head + 1) * D_HEAD]
    if family == "gpt2":
        weight = model.transformer.h[layer].attn.c_attn.weight  # Conv1D [d, 3d]: q | k | v columns
        return weight[:, head * D_HEAD:(head + 1) * D_HEAD]
    weight = model.gpt_neox.layers[layer].attention.query_key_value.weight  # per head: q, k, v rows
    return weight[head * 3 * D_HEAD:head * 3 * D_HEAD + D_HEAD]


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_attn_z_holds_each_heads_output_before_the_projection(family):
    model = tiny_family(family, VOCAB)
    ids = torch.randint(4, VOCAB, (2, 7))
    points = resolve_hookpoints(model, ["attn_z.1", "attn_out.1", "attn_in.1"])
    assert attention_heads(model, "attn_z.1") == (4, D_HEAD)
    assert attention_heads(model, "attn_out.1") is None
    clean = capture(model, ids, points)
    assert set(clean) == {"attn_in.1", "attn_z.1", "attn_out.1"}
    z, out = clean["attn_z.1"], clean["attn_out.1"]
    assert z.shape == (2, 7, 4 * D_HEAD)
    # the projection of attn_z is the attention output
    projection = model.get_submodule(next(p.module for p in points if p.name == "attn_z.1"))
    torch.testing.assert_close(projection(z), out, atol=1e-5, rtol=1e-5)
    # changing head 2's queries changes block 2 of attn_z and no other block
    with torch.no_grad():
        query_rows(model, family, 1, 2).mul_(3.0).add_(0.5)
    changed = capture(model, ids, points)["attn_z.1"].reshape(2, 7, 4, D_HEAD)
    moved = (changed - z.reshape(2, 7, 4, D_HEAD)).abs().amax(dim=(0, 1, 3))
    assert moved[2] > 1e-3 and torch.all(moved[[0, 1, 3]] < 1e-6), moved


@pytest.mark.parametrize("family", ATTENTION_FAMILIES)
def test_attn_in_is_the_normalised_input_of_attention(family):
    model = tiny_family(family, VOCAB)
    ids = torch.randint(4, VOCAB, (2, 6))
    norm = {"llama": "model.layers.1.input_layernorm", "qwen2": "model.layers.1.input_layernorm",
            "gemma": "model.layers.1.input_layernorm", "gpt2": "transformer.h.1.ln_1",
            "gpt_neox": "gpt_neox.layers.1.input_layernorm"}[family]
    store: dict[str, torch.Tensor] = {}
    with hooks(model, resolve_hookpoints(model, ["attn_in.1", norm]), store):
        model(input_ids=ids)
    torch.testing.assert_close(store["attn_in.1"], store[norm])
    sites = named_sites(model)
    assert {"attn_in.0", "attn_z.0", "attn_in.1", "attn_z.1"} <= set(sites)
    assert sites["attn_z.1"].endswith(":input") and sites["attn_in.1"].endswith(":input")


def test_hookpoints_are_ordered_by_when_they_fire():
    """A block's output fires after its MLP's; attention's output after its projection's input. A
    forward stopped after the last one has them all (sorting by module name order would stop at the
    MLP and lose the block output)."""
    model = tiny_family("llama", VOCAB)
    points = resolve_hookpoints(model, ["resid_post.1", "mlp_out.1", "attn_out.0", "attn_z.0",
                                        "attn_in.0"])
    assert [p.name for p in points] == ["attn_in.0", "attn_z.0", "attn_out.0", "mlp_out.1", "resid_post.1"]
    values = capture(model, torch.tensor([[1, 5, 6, 7]]), points)
    assert set(values) == {p.name for p in points}


def test_attention_site_errors_are_one_line():
    model = tiny_family("llama", VOCAB)
    with pytest.raises(saekit.SaekitError, match=r"layer 7 does not exist: the model has 2 layers"):
        resolve_hookpoints(model, ["attn_z.7"])
    del model.model.layers[1].self_attn  # a block without the expected attention module
    with pytest.raises(saekit.SaekitError, match="attn_in.1 reads model.layers.1.self_attn, which"):
        resolve_hookpoints(model, ["attn_in.1"])
    with pytest.raises(saekit.SaekitError, match="attention output projection"):
        resolve_hookpoints(model, ["attn_z.1"])

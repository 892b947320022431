"""Sparse attention replacements (Lorsa): the module against the model's own attention, its storage, and
its training by the one trainer from a stream of sequences shared with ordinary dictionaries."""

from __future__ import annotations

import json

import pytest
import torch

import saekit
from saekit.attention import SparseAttention, load, read_attention, save, sparse_attention_spec
from saekit.data.stream import ActivationStream
from saekit.data.tokens import TokenStream
from saekit.evaluation.metrics import fvu as fraction_unexplained
from saekit.models.hooks import capture
from saekit.models.sites import resolve_hookpoints
from tests.helpers import tiny_family, tiny_tokenizer, write_corpus

VOCAB = 40


def layer_io(model, layer: int = 1, batch: int = 3, length: int = 12, seed: int = 0):
    ids = torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    values = capture(model, ids, resolve_hookpoints(model, [f"attn_in.{layer}", f"attn_out.{layer}"]))
    return values[f"attn_in.{layer}"], values[f"attn_out.{layer}"]


def enlarged(model):
    """Random biases everywhere they exist (Qwen2's q/k/v), so that bias handling is exercised."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_exact_replacement_reproduces_the_models_attention(family):
    """METHODS-2 §4 check 2: one QK head per head, its OV map's singular directions as ± pairs of OV
    heads, all active, give back the layer's output (RoPE, grouped KV heads, biases, score scale)."""
    model = enlarged(tiny_family(family, VOCAB))
    x, y = layer_io(model)
    replacement = SparseAttention.exact(read_attention(model, 1))
    out = replacement(x)
    assert y.abs().max() > 1e-3
    torch.testing.assert_close(out, y, atol=1e-6, rtol=1e-4)
    # the reproduction needs every OV head: dropping the top quarter of latents breaks it
    replacement.ov.cfg.k = replacement.d_sae // 4
    assert (replacement(x) - y).abs().max() > 10 * (out - y).abs().max()


def test_the_fast_path_equals_explicit_patterns():
    """pre-activations through scaled_dot_product_attention = the explicit causal patterns times the
    values, with each OV head reading its own QK head's pattern."""
    model = tiny_family("llama", VOCAB)
    spec, objective = sparse_attention_spec(model, 1, d_sae=64, k=6, qk_repeat=2)
    module = objective.build_module(spec, torch.device("cpu"))
    x, y = layer_io(model)
    module.initialize_from(x, y, torch.ones(x.shape[:2], dtype=torch.bool), torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.ov.b_enc.normal_()
    patterns = module.patterns(x)  # [B, n_qk, T, T]
    assert torch.allclose(patterns.sum(-1), torch.ones(()), atol=1e-6)
    assert torch.all(patterns.triu(1) == 0)
    values = x @ module.ov.W_enc  # [B, T, n_ov]
    heads = torch.arange(module.d_sae) // module.group_size
    expected = torch.einsum("bnqk,bkn->bqn", patterns[:, heads], values) + module.ov.b_enc
    torch.testing.assert_close(module.pre_activations(x), expected, atol=1e-5, rtol=1e-5)
    latents = module.encode(x)
    assert torch.all((latents > 0).sum(-1) <= 6) and torch.all(latents >= 0)
    # the training loss path (sparse decoder) computes the same reconstruction as forward
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[:, 0] = False
    result = module.replacement_loss(x, y, mask, 0.0)
    torch.testing.assert_close(result.reconstruction, module(x)[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.total, (module(x)[mask] - y[mask]).pow(2).sum(-1).mean())


def test_qk_heads_start_as_the_models_heads():
    model = tiny_family("llama", VOCAB)
    weights = read_attention(model, 0)
    spec, objective = sparse_attention_spec(model, 0, d_sae=48, k=4, qk_repeat=3)
    module = objective.build_module(spec, torch.device("cpu"))
    x, y = layer_io(model, layer=0)
    module.initialize_from(2 * x, y, torch.ones(x.shape[:2], dtype=torch.bool), None, torch.tensor([2.0]))
    exact = SparseAttention.exact(weights)
    # on inputs scaled by 2 the copied heads (divided by 2) attend exactly like the model's heads
    torch.testing.assert_close(module.patterns(2 * x), exact.patterns(x).repeat(1, 3, 1, 1))
    # OV heads come in ± pairs and read through their head's OV map
    assert torch.allclose(module.ov.W_dec.norm(dim=-1), torch.ones(48))
    group = module.group_size
    torch.testing.assert_close(module.ov.W_dec[: group // 2], -module.ov.W_dec[group // 2: group])


def test_folding_the_activation_scale_keeps_the_function():
    model = tiny_family("llama", VOCAB)
    spec, objective = sparse_attention_spec(model, 1, d_sae=32, k=4)
    module = objective.build_module(spec, torch.device("cpu"))
    x, y = layer_io(model)
    module.initialize_from(3 * x, 0.5 * y, torch.ones(x.shape[:2], dtype=torch.bool), None, 3.0)
    expected = module(3 * x) / 0.5
    module.fold_activation_scale(torch.full((32,), 3.0), torch.full((32,), 0.5))
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)


def test_unsupported_models_and_layers_are_one_line_errors():
    with pytest.raises(saekit.SaekitError, match="Llama-family attention.*GPT2LMHeadModel has no q_proj"):
        read_attention(tiny_family("gpt2", VOCAB), 0)
    with pytest.raises(saekit.SaekitError, match="GPTNeoXForCausalLM has no q_proj"):
        read_attention(tiny_family("gpt_neox", VOCAB), 0)
    model = tiny_family("llama", VOCAB)
    with pytest.raises(saekit.SaekitError, match="layer 5 does not exist"):
        sparse_attention_spec(model, 5, d_sae=32, k=4)
    with pytest.raises(saekit.SaekitError, match="multiple of the 4 QK heads"):
        sparse_attention_spec(model, 0, d_sae=30, k=4)
    del model.model.layers[0].self_attn.q_proj
    with pytest.raises(saekit.SaekitError, match="has no q_proj in model.layers.0.self_attn"):
        read_attention(model, 0)


def test_save_and_load_round_trip_with_checksums(tmp_path):
    model = tiny_family("qwen2", VOCAB)
    module = SparseAttention.exact(read_attention(enlarged(model), 1))
    module.provenance = saekit.Provenance(model_name="tiny", hookpoint="attn_in.1", target_hookpoint="attn_out.1")
    module.meta["note"] = "test"
    save(module, tmp_path / "r")
    loaded = load(tmp_path / "r")
    x, _ = layer_io(model)
    torch.testing.assert_close(loaded(x), module(x))
    assert loaded.provenance.target_hookpoint == "attn_out.1" and loaded.meta["note"] == "test"
    assert loaded.qk_config == module.qk_config
    cfg = json.loads((tmp_path / "r" / "cfg.json").read_text())
    assert cfg["saekit_attention_format_version"] == 1 and cfg["kind"] == "sparse_attention"
    assert not (tmp_path / "r" / "sae_weights.safetensors").exists()  # no SAE loader mistakes it
    with pytest.raises(saekit.SaekitError, match="attention replacement: load it with saekit.attention.load"):
        saekit.load(tmp_path / "r")
    cfg["qk"]["n_qk_heads"] = 2
    (tmp_path / "r" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(saekit.SaekitError, match="fails its checksum"):
        load(tmp_path / "r")


def test_saving_follows_the_output_rules(tmp_path):
    """Like a dictionary's save: its own earlier output is replaced, a folder saekit did not write only
    with overwrite, and non-finite weights are refused before anything is written."""
    module = SparseAttention.exact(read_attention(tiny_family("llama", VOCAB), 1))
    save(module, tmp_path / "r")
    save(module, tmp_path / "r")  # saekit wrote it: replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(saekit.SaekitError, match="overwrite"):
        save(module, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    save(module, tmp_path / "mine", overwrite=True)
    assert load(tmp_path / "mine").d_sae == module.d_sae
    with torch.no_grad():
        module.W_Q[0, 0, 0] = float("nan")
    with pytest.raises(saekit.SaekitError, match="W_Q hold NaN or inf"):
        save(module, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    model = tiny_family("llama", len(tokenizer), seed=3)
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=80)
    return model, tokenizer, corpus


def stream(model, tokenizer, corpus, hookpoints):
    tokens = TokenStream(tokenizer, str(corpus), context=16, batch_size=4)
    return ActivationStream(model, tokens, hookpoints, sequences=True)


def test_trains_with_a_dictionary_from_one_stream_and_resumes_exactly(tiny_setup, tmp_path):
    """One stream of sequences feeds a replacement (sequences) and a TopK SAE on attn_out (rows) in one
    run; the replacement learns (held-out FVU well below 1), and a run stopped at a checkpoint and
    resumed ends with exactly the weights of an uninterrupted run."""
    model, tokenizer, corpus = tiny_setup
    spec, objective = sparse_attention_spec(model, 1, d_sae=64, k=8, qk_repeat=2, lr=3e-3, seed=1)
    sae = saekit.DictionarySpec.from_options(method="topk", d_in=32, d_sae=64, k=8, hookpoint="attn_out.1")
    points = ["attn_in.1", "attn_out.1"]
    run = dict(total_tokens=96, batch_size=4, progress=False)  # 24 steps of 4 windows
    replacement, dictionary = saekit.train(stream(model, tokenizer, corpus, points), [spec, sae],
                                           objective=[objective, None], **run)
    assert isinstance(replacement, SparseAttention) and isinstance(dictionary, saekit.Dictionary)
    held_out = TokenStream(tokenizer, str(corpus), context=16, batch_size=8, split="test")
    ids, mask = next(iter(held_out))
    x, y = (capture(model, ids, resolve_hookpoints(model, points))[p] for p in points)
    keep = mask.bool()
    fvu = fraction_unexplained(y[keep], replacement(x)[keep])
    assert fvu < 0.5, fvu
    assert replacement.meta["normalization"]["folded"] and replacement.log_feature_density is not None

    # interrupted at step 12 (checkpoint) and resumed
    checkpoints = tmp_path / "ckpt"
    with pytest.raises(RuntimeError, match="stop"):
        saekit.train(_stopping(stream(model, tokenizer, corpus, points), after=13), [spec, sae],
                     objective=[sparse_attention_spec(model, 1, d_sae=64, k=8, qk_repeat=2, lr=3e-3,
                                                      seed=1)[1], None],
                     checkpoint_dir=str(checkpoints), checkpoint_every=12, **run)
    resumed, _ = saekit.train(stream(model, tokenizer, corpus, points), [spec, sae],
                              objective=[sparse_attention_spec(model, 1, d_sae=64, k=8, qk_repeat=2, lr=3e-3,
                                                               seed=1)[1], None],
                              checkpoint_dir=str(checkpoints), **run)
    for name, value in replacement.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)
    saved = checkpoints / "checkpoints"
    exported = sorted(saved.glob("step_*/dictionaries/lorsa-*"))
    assert exported and load(exported[-1]).d_sae == 64


class _stopping:
    """A stream that raises after `after` batches (a killed run)."""

    def __init__(self, inner, after: int) -> None:
        self.inner, self.after = inner, after

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.after:
                raise RuntimeError("stop")
            yield batch


def test_objectives_must_match_the_specs(tiny_setup):
    model, tokenizer, corpus = tiny_setup
    spec, objective = sparse_attention_spec(model, 1, d_sae=32, k=4)
    with pytest.raises(saekit.SaekitError, match="2 objectives for 1 dictionaries"):
        saekit.train(stream(model, tokenizer, corpus, ["attn_in.1", "attn_out.1"]), [spec],
                     objective=[objective, None], total_tokens=8, batch_size=4, progress=False)
    # a replacement on a stream of rows (not sequences) is told how to make the right stream
    tokens = TokenStream(tokenizer, str(corpus), context=16, batch_size=4)
    rows = ActivationStream(model, tokens, ["attn_in.1", "attn_out.1"])
    with pytest.raises(saekit.SaekitError, match=r"sequences=True"):
        saekit.train(rows, [spec], objective=[objective], total_tokens=8, batch_size=4, progress=False)

import pytest
import torch

import saekit
from saekit.data.stream import ActivationStream
from saekit.data.tokens import TokenStream
from saekit.evaluation.splice import spliced_evaluation
from saekit.models.hooks import capture, hooks
from saekit.models.loading import load_model
from saekit.models.sites import Hookpoint, resolve_hookpoints
from tests.helpers import save_tiny, tiny_gpt2, tiny_llama, tiny_tokenizer, write_corpus


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_llama(len(tokenizer))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_load_model_from_a_local_directory(tmp_path, tokenizer, llama):
    save_tiny(tmp_path / "m", llama, tokenizer)
    model, tok = load_model(str(tmp_path / "m"))
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.allclose(model(input_ids=ids).logits, llama(input_ids=ids).logits, atol=1e-5)
    assert tok.bos_token_id == 1 and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(saekit.SaekitError, match="cannot load model"):
        load_model(str(tmp_path / "missing"))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_named_sites_match_hidden_states_and_module_io(family, tokenizer):
    model = tiny_llama(len(tokenizer)) if family == "llama" else tiny_gpt2(len(tokenizer))
    ids = torch.randint(4, len(tokenizer), (2, 9))
    points = resolve_hookpoints(model, ["resid_post.*", "mlp_in.1", "mlp_out.0", "attn_out.1"])
    assert [p.name for p in points][:2] == ["resid_post.0", "attn_out.1"] or \
        {p.name for p in points} == {"resid_post.0", "resid_post.1", "mlp_in.1", "mlp_out.0", "attn_out.1"}
    store = {}
    with hooks(model, points, store):
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(store["resid_post.0"], hidden[1], atol=1e-6)
    if family == "llama":  # the MLP input is the post-attention norm's output
        normed = {}
        norm = resolve_hookpoints(model, ["model.layers.1.post_attention_layernorm"])
        with hooks(model, norm, normed):
            model(input_ids=ids)
        assert torch.allclose(store["mlp_in.1"], normed["model.layers.1.post_attention_layernorm"])
    assert store["mlp_out.0"].shape[-1] == 32


def test_wildcards_inputs_and_errors(llama):
    points = resolve_hookpoints(llama, ["model.layers.[0-1]", "model.layers.1.mlp:input"])
    # in firing order: block 1's MLP reads its input before block 1 returns its output
    assert [p.name for p in points] == ["model.layers.0", "model.layers.1.mlp:input", "model.layers.1"]
    assert points[1].capture_input
    with pytest.raises(saekit.SaekitError, match="did you mean"):
        resolve_hookpoints(llama, ["model.layer.0"])
    with pytest.raises(saekit.SaekitError, match="layer 7 does not exist"):
        resolve_hookpoints(llama, ["resid_post.7"])


def test_forward_stops_after_the_last_hookpoint(llama):
    ran = []
    handle = llama.get_submodule("model.layers.1").register_forward_hook(lambda *a: ran.append(1))
    try:
        capture(llama, torch.tensor([[1, 5, 6]]), resolve_hookpoints(llama, ["resid_post.0"]))
        assert ran == []
        capture(llama, torch.tensor([[1, 5, 6]]), resolve_hookpoints(llama, ["resid_post.1"]))
        assert ran == [1]
    finally:
        handle.remove()


def test_token_stream_packs_masks_and_loses_nothing(tokenizer, corpus):
    stream = TokenStream(tokenizer, str(corpus), context=16, batch_size=4, shuffle_buffer=1)
    batches = list(stream)
    ids = torch.cat([b[0] for b in batches])
    mask = torch.cat([b[1] for b in batches])
    assert ids.shape[1] == 16 and (ids[:, 0] == tokenizer.bos_token_id).all()
    assert not mask[:, 0].any() and not mask[ids == tokenizer.eos_token_id].any()
    words = sum(len(p.read_text().split()) for i, p in enumerate(sorted(corpus.iterdir())) if i % 20 != 19)
    tail = words + 1  # the trailing partial window is dropped: at most one window short
    assert words - 15 * 1 <= int(mask.sum()) <= tail


def test_shuffle_is_seeded_and_resume_gives_the_tail(tokenizer, corpus):
    a = list(TokenStream(tokenizer, str(corpus), context=16, batch_size=4, seed=3))
    b = list(TokenStream(tokenizer, str(corpus), context=16, batch_size=4, seed=3))
    c = list(TokenStream(tokenizer, str(corpus), context=16, batch_size=4, seed=4))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    stream = TokenStream(tokenizer, str(corpus), context=16, batch_size=4, seed=3)
    full = torch.cat([ids[mask] for ids, mask in stream])
    resumed = torch.cat([ids[mask] for ids, mask in stream.resume_from(37)])
    assert torch.equal(resumed, full[37:])


def test_activation_stream_resumes_exactly(tokenizer, corpus, llama):
    tokens = TokenStream(tokenizer, str(corpus), context=16, batch_size=4)
    stream = ActivationStream(llama, tokens, ["resid_post.0", "mlp_out.1"])
    full = [b for b in stream]
    whole = torch.cat([b["resid_post.0"] for b in full])
    tail = torch.cat([b["resid_post.0"] for b in stream.resume_from(100)])
    assert torch.allclose(tail, whole[100:], atol=1e-5)
    assert stream.widths() == {"resid_post.0": 32, "mlp_out.1": 32}


def _identity(d: int) -> saekit.Dictionary:
    """relu(x) − relu(−x) = x: an exact identity written as a dictionary."""
    dictionary = saekit.Dictionary(saekit.DictionaryConfig(method="relu", d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    dictionary.load_weights({"W_enc": torch.cat([eye, -eye], 1), "b_enc": torch.zeros(2 * d),
                             "W_dec": torch.cat([eye, -eye], 0), "b_dec": torch.zeros(d)})
    return dictionary.eval()


def test_identity_scores_one_and_zero_ablation_scores_zero(tokenizer, corpus, llama):
    zero = _identity(32)
    with torch.no_grad():
        zero.W_dec.zero_()
    batches = list(TokenStream(tokenizer, str(corpus), context=16, batch_size=4, split="test"))
    point = resolve_hookpoints(llama, ["resid_post.0"])[0]
    results = spliced_evaluation(llama, batches, point, {"identity": _identity(32), "zero": zero})
    identity, ablated = results["identity"], results["zero"]
    assert identity["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
    assert identity["kl_score"] == pytest.approx(1.0, abs=1e-5)
    assert identity["delta_lm_loss"] == pytest.approx(0.0, abs=1e-5)
    assert identity["fvu"] == pytest.approx(0.0, abs=1e-8)
    assert ablated["ce_loss_score"] == pytest.approx(0.0, abs=1e-5)
    assert ablated["kl_score"] == pytest.approx(0.0, abs=1e-5)
    assert abs(ablated["ce_zero_ablation"] - ablated["ce_clean"]) > 1e-4  # the ablation did something


def test_a_stream_of_sequences_keeps_windows_whole_and_resumes_by_window(llama, tokenizer, corpus):
    tokens = TokenStream(tokenizer, str(corpus), context=12, batch_size=3)
    stream = ActivationStream(llama, tokens, ["attn_in.1", "resid_post.0"], sequences=True)
    batches = list(stream)
    first = batches[0]
    assert set(first) == {"attn_in.1", "resid_post.0", "mask"}
    assert first["attn_in.1"].shape == (3, 12, 32) and first["mask"].dtype == torch.bool
    assert not first["mask"][:, 0].any()  # BOS never counts
    ids = next(iter(tokens))[0]
    direct = capture(llama, ids, resolve_hookpoints(llama, ["resid_post.0"]))["resid_post.0"]
    torch.testing.assert_close(first["resid_post.0"], direct)
    resumed = list(stream.resume_from(4))  # the trainer counts sequences for such streams
    flat = torch.cat([b["attn_in.1"] for b in batches])
    torch.testing.assert_close(torch.cat([b["attn_in.1"] for b in resumed]), flat[4:])
    for rank in (0, 1):  # under torchrun a rank's share is still sequences: every 2nd window
        shard = list(stream.for_rank(rank, 2, 3))
        assert all(set(b) == set(first) for b in shard)
        windows = torch.cat([b["attn_in.1"] for b in shard])
        torch.testing.assert_close(windows, flat[rank::2][:len(windows)])
    with pytest.raises(saekit.SaekitError, match="clashes with the mask"):
        ActivationStream(llama, tokens, [Hookpoint("mask", "model.layers.0")], sequences=True)

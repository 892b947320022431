import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import saekit
from saekit.models.hooks import hooks
from saekit.models.sites import resolve_hookpoints
from saekit.training.e2e import E2EConfig, kl_clean_to_spliced, train_e2e


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(config).eval()


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(1, 64, (8, 16), generator=g)
        mask = torch.ones_like(ids)
        mask[:, 0] = 0  # first position excluded, as BOS would be
        yield ids, mask


def test_kl_is_zero_for_identical_logits_and_positive_otherwise(generator):
    logits = torch.randn(2, 5, 11, generator=generator)
    mask = torch.ones(2, 5)
    assert float(kl_clean_to_spliced(logits, logits, mask)) == pytest.approx(0.0, abs=1e-6)
    other = logits + torch.randn(2, 5, 11, generator=generator)
    p, q = torch.softmax(logits, -1), torch.softmax(other, -1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    assert float(kl_clean_to_spliced(logits, other, mask)) == pytest.approx(float(expected), rel=1e-5)


def spliced_kl(model, d, hookpoint, seed=5):
    ids, mask = next(batches(seed=seed))
    point = resolve_hookpoints(model, [hookpoint])[0]
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with hooks(model, [point], replace={point.name: lambda x: d(x)}):
            spliced = model(input_ids=ids).logits
    return float(kl_clean_to_spliced(clean, spliced, mask.float()))


@pytest.mark.parametrize("method", ["relu", "topk"])
def test_e2e_training_lowers_the_spliced_kl(tiny_model, method):
    cfg = E2EConfig(hookpoint="model.layers.0", d_sae=64, sparsity_coefficient=0.05, lr=3e-3,
                    method=method, k=8 if method == "topk" else None)

    short = train_e2e(tiny_model, batches(), cfg, total_steps=2, progress=False)
    trained = train_e2e(tiny_model, batches(), cfg, total_steps=120, progress=False)
    assert spliced_kl(tiny_model, trained, cfg.hookpoint) < 0.5 * spliced_kl(tiny_model, short, cfg.hookpoint)
    if method == "topk":
        assert int((trained.encode(torch.randn(5, 32)) > 0).sum(-1).max()) <= 8
    assert torch.allclose(trained.W_dec.norm(dim=-1), torch.ones(64), atol=1e-4)
    assert all(not p.requires_grad for p in tiny_model.parameters())


def test_e2e_with_downstream_layers_runs_and_saves(tiny_model, tmp_path):
    cfg = E2EConfig(hookpoint="model.layers.0", d_sae=48, downstream_hookpoints=["model.layers.1",
                                                                                 "model.layers.2"])
    d = train_e2e(tiny_model, batches(), cfg, total_steps=3, progress=False)
    saekit.save(d, tmp_path / "e2e")
    loaded = saekit.load(tmp_path / "e2e")
    assert loaded.meta["downstream_hookpoints"] == ["model.layers.1", "model.layers.2"]
    with pytest.raises(saekit.SaekitError, match="model.nope"):
        train_e2e(tiny_model, batches(), E2EConfig(hookpoint="model.nope", d_sae=8), 1, progress=False)


def test_e2e_fine_tuning_starts_from_a_local_dictionary(tiny_model):
    cfg = E2EConfig(hookpoint="model.layers.0", d_sae=64, method="topk", k=8, lr=1e-3)
    start = train_e2e(tiny_model, batches(), cfg, total_steps=1, progress=False)
    barely = E2EConfig(hookpoint="model.layers.0", d_sae=64, method="topk", k=8, lr=1e-12)
    tuned = train_e2e(tiny_model, batches(), barely, total_steps=1, progress=False, init=start)
    for name, tensor in start.weights().items():
        torch.testing.assert_close(tensor, tuned.weights()[name], atol=1e-8, rtol=0, msg=name)
    with pytest.raises(saekit.SaekitError, match="init dictionary"):
        train_e2e(tiny_model, batches(), E2EConfig(hookpoint="model.layers.0", d_sae=32, method="topk", k=4),
                  1, progress=False, init=start)
    # another method of the same shape has other weights: refused, never loaded in part
    with pytest.raises(saekit.SaekitError, match="same method and shape"):
        train_e2e(tiny_model, batches(), E2EConfig(hookpoint="model.layers.0", d_sae=64, method="relu"),
                  1, progress=False, init=start)


def test_e2e_fine_tuning_keeps_the_local_decoder_scale(tiny_model):
    """A local dictionary's decoder rows carry its folded input scale; renormalising them to 1 would
    wreck the reconstruction on the first step."""
    cfg = E2EConfig(hookpoint="model.layers.0", d_sae=64, method="topk", k=8, lr=1e-5)
    start = train_e2e(tiny_model, batches(), cfg, total_steps=1, progress=False)
    with torch.no_grad():
        start.W_dec.mul_(3.0)
    tuned = train_e2e(tiny_model, batches(), cfg, total_steps=2, progress=False, init=start)
    torch.testing.assert_close(tuned.W_dec.norm(dim=-1), start.W_dec.norm(dim=-1), rtol=1e-2, atol=1e-3)

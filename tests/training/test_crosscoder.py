"""Crosscoder recipe: decoder blocks initialised alike (`crosscoder_init`), and what it buys on a synthetic
pair of near-identical models with known differences (benchmarks/diffing.py measures the budget curve)."""

import pytest
import torch

import saekit
from saekit.config import DictionaryConfig
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.experiments.diff_toy import ToyPair, ToyPairConfig, matched_shared_cosine, score_specific_latents
from saekit.inspect.diffing import classify_latents, decoder_blocks
from saekit.training.config import TrainingConfig


@pytest.mark.parametrize("method", ["batchtopk", "relu"])
def test_same_init_repeats_one_direction_in_every_block(method):
    cfg = DictionaryConfig(method=method, d_in=3 * 8, d_sae=16, n_sources=3,
                           **({"k": 2} if method == "batchtopk" else {}))
    x = torch.randn(64, 24)
    inits = {}
    for init in ("same", "independent"):
        training = TrainingConfig(crosscoder_init=init).resolved(cfg)
        d = Dictionary(cfg, training=training)
        d.initialize(x, training, torch.Generator().manual_seed(0))
        blocks = decoder_blocks(d)
        torch.testing.assert_close(d.W_dec.norm(dim=-1), torch.full((16,), training.decoder_init_norm))
        torch.testing.assert_close(d.W_enc, d.W_dec.T)  # tied encoder, as for any SAE
        inits[init] = blocks
    same, independent = inits["same"], inits["independent"]
    torch.testing.assert_close(same[:, 0], same[:, 1])
    torch.testing.assert_close(same[:, 0], same[:, 2])
    cos = torch.nn.functional.cosine_similarity(independent[:, 0], independent[:, 1], dim=-1)
    assert cos.abs().max() < 0.9


def test_crosscoder_init_is_the_default_and_checked():
    assert TrainingConfig().crosscoder_init == "same"
    with pytest.raises(SaekitError, match="crosscoder_init must be one of same, independent"):
        saekit.DictionarySpec.from_options(method="topk", k=2, d_in=8, d_sae=8, crosscoder_init="tied")


def test_same_init_aligns_shared_latents_at_a_short_budget_and_finds_the_specific_ones_later():
    """On a pair whose shared features drift slightly between models (true decoder cosine ≈ 0.995):
    after 100 steps the latents that learned a shared feature have aligned blocks with the same init and
    not with independent blocks; after 1,000 steps the second-only features are found and labelled."""
    pair = ToyPair(ToyPairConfig())
    cosines = {}
    for init in ("same", "independent"):
        spec = saekit.DictionarySpec.from_options(method="batchtopk", k=4, d_in=64, d_sae=128, lr=2e-3,
                                                  crosscoder_init=init, source_hookpoints=["first", "second"])
        d = saekit.train(pair.stream(), [spec], total_tokens=100 * 256, batch_size=256, progress=False)[0]
        cosines[init] = matched_shared_cosine(d, pair)
    assert cosines["same"] > 0.97 and cosines["independent"] < 0.9, cosines

    spec = saekit.DictionarySpec.from_options(method="batchtopk", k=4, d_in=64, d_sae=128, lr=2e-3,
                                              source_hookpoints=["first", "second"])
    d = saekit.train(pair.stream(), [spec], total_tokens=1000 * 256, batch_size=256, progress=False)[0]
    x = pair.sample(20_000)
    masks = classify_latents(d, (d.encode(x) > 0).any(0))
    for source, key in ((1, "second_only"), (0, "first_only")):
        score = score_specific_latents(d, pair, masks[key], source)
        assert score["recall"] >= 0.75 and score["precision"] == 1.0, (key, score)
    assert matched_shared_cosine(d, pair) > 0.99

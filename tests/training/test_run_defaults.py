"""Defaults that depend on the run: the dead window (a tenth of the run, at most 10M tokens) and TopK's
learning rate (sparsify's width rule, raised for runs of fewer than 2^16 steps)."""

import math

import pytest
import torch

import saekit
from saekit.data.toy import ToyConfig, ToyData
from saekit.methods.topk import topk_lr
from saekit.training.config import run_dead_tokens


def test_dead_window_is_a_tenth_of_the_run_capped_at_ten_million():
    assert run_dead_tokens(1_000_000) == 100_000
    assert run_dead_tokens(400_000) == 40_000
    assert run_dead_tokens(100_000_000) == 10_000_000
    assert run_dead_tokens(10**10) == 10_000_000
    assert run_dead_tokens(5) == 1


@pytest.mark.parametrize("given", [None, 300])
def test_trained_dictionary_records_the_dead_window_it_used(given):
    data = ToyData(ToyConfig(d_in=16, n_features=32, mean_active=3, seed=2), chunk_size=128)
    options = {} if given is None else {"dead_tokens": given}
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=16, d_sae=48, k=3, **options)
    assert spec.training.dead_tokens == given  # the spec keeps "default" until the run's length is known
    (d,) = saekit.train(iter(data), [spec], total_tokens=20 * 128, batch_size=128, progress=False)
    assert d.training_config.dead_tokens == (256 if given is None else given)


def test_latents_silent_for_a_tenth_of_a_short_run_get_auxk():
    """In a 10,240-token run the default window is 1,024 tokens, so latents that cannot fire are dead
    (and trained by AuxK) from the 9th step of 128 tokens, long before Gao's 10M."""
    from saekit.training.member import SweepMember

    data = ToyData(ToyConfig(d_in=16, n_features=16, mean_active=2, seed=4), chunk_size=128)
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=16, d_sae=64, k=2, aux_every=1)
    member = SweepMember(spec, total_steps=80)
    batches = iter(data)
    member.start(next(batches))
    with torch.no_grad():
        member.dictionary.b_enc[:8] = -100.0
    with_auxk = [step for step in range(12) if "auxk" in member.step(next(batches), step)]
    assert member.training.dead_tokens == 1024
    assert with_auxk == [8, 9, 10, 11]  # silent for 8 steps of 128 tokens
    assert member.dead_mask()[:8].all()


def test_topk_lr_is_sparsifys_rule_for_long_runs_and_grows_as_runs_shorten():
    for d_sae in (4096, 2**14, 65536):
        width_rule = 2e-4 / math.sqrt(d_sae / 2**14)
        assert topk_lr(d_sae, 2700) == pytest.approx(width_rule)
        assert topk_lr(d_sae, 10**6) == pytest.approx(width_rule)  # never below the long-run rule
        assert topk_lr(d_sae, 300) == pytest.approx(9**0.75 * width_rule)  # (2700 / S)^(3/4)
        assert topk_lr(d_sae, 244) == pytest.approx(6.07 * width_rule, rel=1e-3)
        assert topk_lr(d_sae, 50) == pytest.approx(16 * width_rule)  # the cap
        assert topk_lr(d_sae, 1) == pytest.approx(16 * width_rule)
    # the benchmark's shape (d_sae 6144, batch 4096): ~4e-3 at 0.4M tokens, ~2e-3 at 1M, ~7e-4 at 4M
    assert [round(topk_lr(6144, tokens // 4096), 4) for tokens in (400_000, 1_000_000, 4_000_000)] == \
        [0.004, 0.002, 0.0007]


@pytest.mark.parametrize("method, given", [("topk", None), ("topk", 1e-3), ("batchtopk", None)])
def test_trained_dictionary_records_the_learning_rate_it_used(method, given):
    data = ToyData(ToyConfig(d_in=16, n_features=32, mean_active=3, seed=2), chunk_size=128)
    options = {} if given is None else {"lr": given}
    spec = saekit.DictionarySpec.from_options(method=method, d_in=16, d_sae=48, k=3, **options)
    (d,) = saekit.train(iter(data), [spec], total_tokens=20 * 128, batch_size=128, progress=False)
    expected = {"topk": topk_lr(48, 20), "batchtopk": 3e-4}[method] if given is None else given
    assert d.training_config.lr == pytest.approx(expected)

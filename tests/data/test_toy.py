"""The toy's ground truth must not be where a dictionary starts (issue 19 part 4)."""

import pytest
import torch

import saekit
from saekit.data.seeds import derived_seed
from saekit.data.synthetic import SyntheticConfig, SyntheticModel
from saekit.data.toy import ToyConfig, ToyData
from saekit.evaluation.ground_truth import mmcs


@pytest.mark.parametrize("seed", [0, 5])
def test_dictionary_with_the_toy_seed_does_not_start_on_the_features(seed):
    """Before the fix both drew randn(G, h) from manual_seed(seed): with d_sae = G a dictionary trained
    with the toy's seed (both default 0) started with MMCS 1.0."""
    toy = ToyConfig(d_in=64, n_features=64, mean_active=3, seed=seed)
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=64, d_sae=64, k=3, lr=1e-12, seed=seed,
                                              b_dec_init="zeros")
    (d,) = saekit.train(ToyData(toy, chunk_size=256), [spec], total_tokens=256, batch_size=256, progress=False)
    assert mmcs(ToyData(toy).features, d.W_dec.detach()) < 0.6  # random directions in 64 dims: ≈ 0.4


def test_synthetic_directions_are_not_a_same_seed_init():
    cfg = SyntheticConfig(n_features=32, d_in=16, roots=0, orthogonalize_steps=0, seed=7)
    model = SyntheticModel(cfg)
    init = torch.randn(32, 16, generator=torch.Generator().manual_seed(7))
    init = init / init.norm(dim=-1, keepdim=True)
    assert (model.features * init).sum(-1).abs().max() < 0.99


def test_derived_seed_is_deterministic_and_labelled():
    assert derived_seed("toy features", 0) == derived_seed("toy features", 0)
    assert derived_seed("toy features", 0) != derived_seed("toy features", 1)
    assert derived_seed("toy features", 0) != derived_seed("synthetic directions", 0)
    assert 0 <= derived_seed("x", 3) < 2**63


def test_toy_stream_resumes_mid_chunk_and_splits_are_disjoint():
    data = ToyData(ToyConfig(d_in=16, n_features=32), chunk_size=10)
    first = torch.cat([next(iter(data)), next(iter(data.resume_from(10)))])
    assert torch.equal(next(data.resume_from(7)), first[7:10])  # the rest of chunk 0
    assert torch.equal(next(data.resume_from(13)), first[13:20])
    test = ToyData(ToyConfig(d_in=16, n_features=32), chunk_size=10, split="test")
    assert not torch.equal(next(iter(test)), first[:10])
    with pytest.raises(saekit.SaekitError, match="split must be one of train, test"):
        ToyData(ToyConfig(d_in=16, n_features=32), split="validation")

"""The Dictionary module with every method: layout, forward, folding, initialisation."""

import pytest
import torch

from saekit import DictionaryConfig, TrainingConfig
from saekit.dictionary import Dictionary, geometric_median
from saekit.formats.core import gated_to_jumprelu
from tests.helpers import METHODS, make

LAYOUTS = {  # SAELens's tensor names per method, besides W_dec [32, 12] and b_dec [12]
    "relu": {"W_enc", "b_enc"}, "topk": {"W_enc", "b_enc"},
    "gated": {"W_enc", "b_gate", "b_mag", "r_mag"},
    "jumprelu": {"W_enc", "b_enc", "threshold"}, "batchtopk": {"W_enc", "b_enc", "threshold"},
    "matryoshka": {"W_enc", "b_enc", "threshold"}, "matching_pursuit": set(),
}


@pytest.mark.parametrize("method", METHODS)
def test_layout_matches_saelens(method):
    w = make(method).weights()
    assert set(w) == LAYOUTS[method] | {"W_dec", "b_dec"}
    assert w["W_dec"].shape == (32, 12) and w["b_dec"].shape == (12,)
    if "W_enc" in w:
        assert w["W_enc"].shape == (12, 32)


@pytest.mark.parametrize("method", METHODS)
def test_forward_is_decode_of_encode(method, generator):
    d = make(method)
    x = torch.randn(3, 5, 12, generator=generator)
    f = d.encode(x)
    assert f.shape == (3, 5, 32)
    assert torch.allclose(d(x), f @ d.W_dec + d.b_dec)


def test_gated_equals_derived_jumprelu(generator):
    gated = make("gated", d_in=16, d_sae=64, seed=3)
    jump = gated_to_jumprelu(gated)
    x = torch.randn(500, 16, generator=generator)
    f_gated, f_jump = gated.encode(x), jump.encode(x)
    assert (f_gated != 0).sum() > 100  # the comparison is not vacuous
    assert (f_gated != 0).eq(f_jump != 0).all()  # same active set
    assert torch.allclose(f_gated, f_jump, rtol=1e-5, atol=1e-5)
    assert (gated(x) - jump(x)).abs().max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_folding_activation_scale_gives_raw_space_outputs(method, generator):
    d = make(method)
    x_raw = torch.randn(64, 12, generator=generator) * 7 + 2
    c = 0.37
    normalized_recon = d(x_raw * c) / c
    latents = d.encode(x_raw * c)
    d.fold_activation_scale(c)
    # methods with an encoder keep their latents; matching pursuit's codes are linear in the input
    unit = 1.0 if d.method.has_encoder else c
    assert torch.allclose(d.encode(x_raw) * unit, latents, atol=1e-5)
    assert torch.allclose(d(x_raw), normalized_recon, atol=1e-5)


@pytest.mark.parametrize("method", ["relu", "gated", "jumprelu"])
def test_fold_decoder_norms_keeps_outputs(method, generator):
    d = make(method)
    x = torch.randn(64, 12, generator=generator)
    before = d(x)
    d.fold_decoder_norms()
    assert torch.allclose(d.W_dec.norm(dim=-1), torch.ones(32), atol=1e-6)
    assert torch.allclose(d(x), before, atol=1e-5)


@pytest.mark.parametrize("method", ["topk", "batchtopk", "matching_pursuit"])
def test_fold_decoder_norms_refused_for_selection_methods(method):
    with pytest.raises(ValueError):
        make(method).fold_decoder_norms()


def test_initialization_is_tied_with_requested_norm_and_bias(generator):
    x = torch.randn(256, 12, generator=generator) + 5
    relu_cfg = DictionaryConfig(method="relu", d_in=12, d_sae=32)
    relu = Dictionary(relu_cfg)
    relu.initialize(x, TrainingConfig().resolved(relu_cfg), generator)
    assert torch.allclose(relu.W_dec.norm(dim=-1), torch.full((32,), 0.1))
    assert torch.equal(relu.W_enc, relu.W_dec.T)
    assert torch.count_nonzero(relu.b_dec) == 0
    topk_cfg = DictionaryConfig(method="topk", d_in=12, d_sae=32, k=4)
    topk = Dictionary(topk_cfg)
    topk.initialize(x, TrainingConfig().resolved(topk_cfg), generator)
    assert torch.allclose(topk.W_dec.norm(dim=-1), torch.ones(32))
    assert torch.allclose(topk.b_dec, geometric_median(x))


def test_geometric_median_minimises_sum_of_distances(generator):
    points = torch.cat([torch.randn(50, 3, generator=generator), torch.full((5, 3), 40.0)])
    median = geometric_median(points)
    cost = lambda m: (points - m).norm(dim=-1).sum()
    for _ in range(20):
        probe = median + 0.05 * torch.randn(3, generator=generator)
        assert cost(median) <= cost(probe) + 1e-4
    # robust to the outliers, unlike the mean
    assert median.norm() < points.mean(0).norm()


def test_b_dec_median_is_estimated_on_evenly_spaced_rows(generator, monkeypatch):
    import saekit.dictionary as dictionary

    monkeypatch.setattr(dictionary, "GEOMETRIC_MEDIAN_ROWS", 64)
    x = torch.randn(1000, 12, generator=generator) + 5
    assert torch.equal(dictionary.evenly_spaced_rows(x, 64)[[0, -1]], x[[0, -1]])  # first and last rows kept
    assert dictionary.evenly_spaced_rows(x[:50], 64).shape[0] == 50  # fewer rows: all of them
    cfg = DictionaryConfig(method="topk", d_in=12, d_sae=32, k=4)
    d = Dictionary(cfg)
    d.initialize(x, TrainingConfig().resolved(cfg), generator)
    assert torch.allclose(d.b_dec, geometric_median(dictionary.evenly_spaced_rows(x, 64)))
    cost = lambda m: (x - m).norm(dim=-1).sum()
    assert cost(d.b_dec) <= cost(geometric_median(x)) * 1.01  # close to the full sample's optimum

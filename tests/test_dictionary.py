import pytest
import torch

from saekit import DictionaryConfig
from saekit.config import METHODS
from saekit.dictionary import Dictionary, gated_to_jumprelu, geometric_median


def make(method: str, d_in=12, d_sae=32, seed=0, **kw) -> Dictionary:
    if method in ("topk", "batchtopk", "matryoshka"):
        kw.setdefault("k", 4)
    d = Dictionary(DictionaryConfig(method=method, d_in=d_in, d_sae=d_sae, **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if method in ("batchtopk", "matryoshka"):
            d.threshold.fill_(0.2)
        if method == "jumprelu":
            d.threshold.copy_(torch.rand(d_sae, generator=g) * 0.4)
    return d.eval()


@pytest.mark.parametrize("method", METHODS)
def test_layout_matches_saelens(method):
    d = make(method)
    w = d.weights()
    assert w["W_enc"].shape == (12, 32) and w["W_dec"].shape == (32, 12) and w["b_dec"].shape == (12,)
    if method == "gated":
        assert {"b_gate", "b_mag", "r_mag"} <= set(w) and "b_enc" not in w
    else:
        assert w["b_enc"].shape == (32,)
    assert ("threshold" in w) == (method in ("jumprelu", "batchtopk", "matryoshka"))


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
    assert torch.allclose(d.encode(x_raw), latents, atol=1e-5)
    assert torch.allclose(d(x_raw), normalized_recon, atol=1e-5)


@pytest.mark.parametrize("method", ["relu", "gated", "jumprelu"])
def test_fold_decoder_norms_keeps_outputs(method, generator):
    d = make(method)
    x = torch.randn(64, 12, generator=generator)
    before = d(x)
    d.fold_decoder_norms()
    assert torch.allclose(d.W_dec.norm(dim=-1), torch.ones(32), atol=1e-6)
    assert torch.allclose(d(x), before, atol=1e-5)


def test_fold_decoder_norms_refused_for_topk():
    with pytest.raises(ValueError):
        make("topk").fold_decoder_norms()


def test_initialization_is_tied_with_requested_norm_and_bias(generator):
    x = torch.randn(256, 12, generator=generator) + 5
    relu = Dictionary(DictionaryConfig(method="relu", d_in=12, d_sae=32))
    relu.initialize(x, generator)
    assert torch.allclose(relu.W_dec.norm(dim=-1), torch.full((32,), 0.1))
    assert torch.equal(relu.W_enc, relu.W_dec.T)
    assert torch.count_nonzero(relu.b_dec) == 0
    topk = Dictionary(DictionaryConfig(method="topk", d_in=12, d_sae=32, k=4))
    topk.initialize(x, generator)
    assert torch.allclose(topk.W_dec.norm(dim=-1), torch.ones(32))
    assert torch.allclose(topk.b_dec, geometric_median(x))


def test_geometric_median_minimises_sum_of_distances(generator):
    points = torch.cat([torch.randn(50, 3, generator=generator), torch.full((5, 3), 40.0)])
    median = geometric_median(points)
    cost = lambda m: (points - m).norm(dim=-1).sum()  # noqa: E731
    for _ in range(20):
        probe = median + 0.05 * torch.randn(3, generator=generator)
        assert cost(median) <= cost(probe) + 1e-4
    # robust to the outliers, unlike the mean
    assert median.norm() < points.mean(0).norm()

"""Latent scaling (Minder et al.): the closed form against an independent least-squares solve, and what
it is for: telling complete shrinkage from a truly model-specific latent on a synthetic pair."""

import pytest
import torch

import saekit
from saekit.config import DictionaryConfig
from saekit.dictionary import Dictionary
from saekit.experiments.diff_toy import ToyPair, ToyPairConfig, score_specific_latents
from saekit.inspect.diffing import (
    LatentScaling,
    classify_latents,
    decoder_blocks,
    latent_scaling_beta,
    relative_decoder_norms,
    survives_latent_scaling,
)


def random_crosscoder(d: int = 6, d_sae: int = 10, seed: int = 0, scales=(2.0, 0.5)) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    cc = Dictionary(DictionaryConfig(method="relu", d_in=2 * d, d_sae=d_sae, n_sources=2))
    with torch.no_grad():
        cc.W_enc.copy_(torch.randn(2 * d, d_sae, generator=g))
        cc.W_dec.copy_(torch.randn(d_sae, 2 * d, generator=g))
        cc.b_dec.copy_(torch.randn(2 * d, generator=g))
        cc.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.5)
    cc.meta["normalization"] = {"method": "mean_norm_sqrt_d", "input_scale": list(scales)}
    return cc


def lstsq_beta(f: torch.Tensor, y: torch.Tensor, p: torch.Tensor) -> float:
    """argmin_β Σ_x ||y(x) − β f(x) p||², solved as a one-column least-squares problem."""
    column = (f[:, None] * p[None, :]).reshape(-1, 1).double()
    return float(torch.linalg.lstsq(column, y.reshape(-1, 1).double()).solution)


def test_betas_match_an_independent_least_squares_solve():
    d, scales = 6, torch.tensor([2.0, 0.5])
    cc = random_crosscoder(d)
    x = torch.randn(300, 2 * d, generator=torch.Generator().manual_seed(1)) * 3
    f = cc.encode(x).detach()
    latents, own = torch.tensor([0, 3, 7]), torch.tensor([1, 0, 1])
    scaling = LatentScaling(cc, latents, own)
    for chunk in range(3):  # accumulated over batches
        scaling.update(x[chunk * 100:(chunk + 1) * 100], f[chunk * 100:(chunk + 1) * 100])
    betas = scaling.betas()

    # Independently: everything in the normalised space (source m times its scale), targets built
    # explicitly per latent, β by least squares.
    xs = x.reshape(-1, 2, d) * scales[None, :, None]
    blocks = cc.W_dec.detach().reshape(-1, 2, d) * scales[None, :, None]
    bias = cc.b_dec.detach().reshape(2, d) * scales[:, None]
    for n, (j, o) in enumerate(zip(latents.tolist(), own.tolist())):
        probe = blocks[j, o]
        for m in range(2):
            reconstruction = f @ blocks[:, m] + bias[m]
            error = xs[:, m] - (reconstruction - f[:, j:j + 1] * blocks[j, m])
            expected_error = lstsq_beta(f[:, j], error, probe)
            expected_reconstruction = lstsq_beta(f[:, j], reconstruction, probe)
            assert betas["beta_error"][n, m] == pytest.approx(expected_error, rel=1e-4, abs=1e-5)
            assert betas["beta_reconstruction"][n, m] == pytest.approx(expected_reconstruction, rel=1e-4,
                                                                       abs=1e-5)
            # ... and the single-latent helper agrees too.
            assert latent_scaling_beta(f[:, j], error, probe) == pytest.approx(expected_error, rel=1e-4,
                                                                               abs=1e-5)
        other = 1 - o
        assert betas["nu_error"][n] == pytest.approx(float(betas["beta_error"][n, other] / betas["beta_error"][n, o]),
                                                     rel=1e-5)
        assert betas["nu_reconstruction"][n] == pytest.approx(
            float(betas["beta_reconstruction"][n, other] / betas["beta_reconstruction"][n, o]), rel=1e-5)
        assert betas["count"][n] == int((f[:, j] > 0).sum())


def test_a_direction_present_in_both_models_has_ratio_one_and_an_absent_one_zero():
    """Exact cases for a latent whose decoder lives in the second model only: data written along its
    direction in both models gives ν_ε = 1 (the first model's error holds it all: complete shrinkage);
    data written in the second model only gives ν_ε = 0."""
    d = 4
    cc = Dictionary(DictionaryConfig(method="relu", d_in=2 * d, d_sae=1, n_sources=2))
    direction = torch.tensor([1.0, 2.0, -1.0, 0.5])
    with torch.no_grad():
        cc.W_dec.copy_(torch.cat([0 * direction, direction])[None])
    values = torch.rand(50, generator=torch.Generator().manual_seed(0))[:, None]
    for first_model, expected in ((values * direction, 1.0), (torch.zeros(50, d), 0.0)):
        scaling = LatentScaling(cc, torch.tensor([0]), torch.tensor([1]))
        scaling.update(torch.cat([first_model, values * direction], dim=-1), values)
        betas = scaling.betas()
        assert betas["beta_error"][0, 1] == pytest.approx(1.0, abs=1e-5)
        assert betas["beta_reconstruction"][0].tolist() == pytest.approx([0.0, 1.0], abs=1e-5)
        assert betas["nu_error"][0] == pytest.approx(expected, abs=1e-5)
        assert betas["nu_reconstruction"][0] == pytest.approx(0.0, abs=1e-5)


def test_relative_norms_are_measured_where_both_models_had_the_same_scale():
    """A crosscoder trained on normalised activations and folded for a second model 4× louder has raw
    second blocks 4× smaller... or larger: r must not change with the fold."""
    trained = random_crosscoder(scales=(1.0, 1.0))
    trained.meta.pop("normalization")
    folded = random_crosscoder(scales=(1.0, 1.0))
    folded.fold_activation_scale(torch.cat([torch.ones(6), torch.full((6,), 0.25)]))
    folded.meta["normalization"] = {"input_scale": [1.0, 0.25]}
    torch.testing.assert_close(relative_decoder_norms(folded), relative_decoder_norms(trained))
    assert not torch.allclose(decoder_blocks(folded), decoder_blocks(trained))


def test_survival_needs_small_ratios_of_either_sign_a_positive_own_beta_and_enough_firings():
    nan = float("nan")
    scaling = {"beta_error": torch.tensor([[0.05, 1.0], [-4.0, 1.0], [0.0, -0.3], [0.0, 1.0], [nan, nan]]),
               "nu_error": torch.tensor([0.05, -4.0, -0.0, 0.0, nan]),
               "nu_reconstruction": torch.tensor([0.4, 0.1, 0.1, 0.1, nan]),
               "count": torch.tensor([50, 50, 50, 9, 0])}
    own = torch.ones(5, dtype=torch.long)
    assert survives_latent_scaling(scaling, own).tolist() == [True, False, False, False, False]
    assert survives_latent_scaling(scaling, own, min_count=5).tolist() == [True, False, False, True, False]


def test_latent_scaling_tells_complete_shrinkage_from_a_model_specific_latent():
    """An L1 crosscoder shrinks the first block of features that are only weaker (0.3×) in the first
    model to zero, labelling them second-only; latent scaling finds them in the first model's error
    (ν_ε ≈ 0.3) and rejects them, while the truly second-only features survive."""
    pair = ToyPair(ToyPairConfig(weak_scale=0.3))
    spec = saekit.DictionarySpec.from_options(method="relu", d_in=64, d_sae=128, sparsity_coefficient=2.0,
                                              lr=1e-2, source_hookpoints=["first", "second"])
    d = saekit.train(pair.stream(), [spec], total_tokens=400 * 256, batch_size=256, progress=False)[0]
    x = pair.sample(20_000)
    f = d.encode(x)
    second_only = classify_latents(d, (f > 0).any(0))["second_only"]
    blocks = torch.nn.functional.normalize(decoder_blocks(d)[:, 1], dim=-1)
    weak = [int((blocks @ torch.nn.functional.normalize(pair.second[j], dim=0)).argmax())
            for j in pair.groups["weak"]]
    r = relative_decoder_norms(d)
    assert sum(bool(second_only[i]) for i in weak) >= 3, r[weak]  # the artefact: labelled second-only

    labelled = torch.nonzero(second_only).flatten()
    scaling = LatentScaling(d, labelled, torch.ones_like(labelled))
    scaling.update(x, f)
    betas = scaling.betas()
    survive = survives_latent_scaling(betas, torch.ones_like(labelled))
    for n, i in enumerate(labelled.tolist()):
        if i in weak:
            assert 0.2 < betas["nu_error"][n] < 0.45 and not survive[n], betas["nu_error"][n]
    before = score_specific_latents(d, pair, second_only, 1)
    confirmed = torch.zeros_like(second_only)
    confirmed[labelled[survive]] = True
    after = score_specific_latents(d, pair, confirmed, 1)
    assert before["recall"] == after["recall"] == 1.0
    assert after["precision"] > before["precision"] and after["precision"] >= 0.9, (before, after)

import torch

from saekit.evaluation import metrics as M


def data(generator, n=400, d=10, mean=0.0):
    x = torch.randn(n, d, generator=generator) * torch.linspace(0.5, 3, d) + mean
    x_hat = x + 0.3 * torch.randn(n, d, generator=generator)
    return x, x_hat


def test_fvu_matches_one_minus_r2_with_torch_var(generator):
    x, x_hat = data(generator)
    var_total = torch.var(x, dim=0, unbiased=False).sum()
    expected = ((x - x_hat) ** 2).sum(-1).mean() / var_total
    assert abs(M.fvu(x, x_hat) - float(expected)) < 1e-6
    assert abs(M.explained_variance(x, x_hat) - (1 - float(expected))) < 1e-6


def test_legacy_explained_variance_differs_on_data_with_a_large_mean(generator):
    x, x_hat = data(generator, mean=0.0)
    x_big, x_hat_big = x + 50.0, x_hat + 50.0
    # FVU is invariant to a shared offset ...
    assert abs(M.fvu(x, x_hat) - M.fvu(x_big, x_hat_big)) < 1e-6
    # ... and the legacy per-token ratio is a different number from the corrected EV.
    legacy = M.explained_variance_legacy(x, x_hat)
    per_token = 1 - ((x - x_hat) ** 2).sum(-1) / ((x - x.mean(0)) ** 2).sum(-1)
    assert abs(legacy - float(per_token.mean())) < 1e-6
    assert abs(legacy - M.explained_variance(x, x_hat)) > 1e-3


def test_relative_reconstruction_bias_of_scaled_input_is_the_scale(generator):
    x, _ = data(generator)
    for c in (0.5, 0.8, 1.0, 1.3):
        assert abs(M.relative_reconstruction_bias(x, c * x) - c) < 1e-6
    assert abs(M.l2_ratio(x, 0.8 * x) - 0.8) < 1e-6


def test_cosine_l0_mse_density(generator):
    x, x_hat = data(generator)
    expected_cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).mean()
    assert abs(M.cosine_similarity(x, x_hat) - float(expected_cos)) < 1e-6
    assert abs(M.mse(x, x_hat) - float(((x - x_hat) ** 2).sum(-1).mean())) < 1e-5
    f = torch.zeros(4, 5)
    f[0, :3] = 1.0
    f[1, 0] = 2.0
    f[3, 1] = -0.5
    assert M.l0(f) == (3 + 1 + 0 + 1) / 4
    density = M.firing_density(f)
    assert torch.allclose(density, torch.tensor([0.5, 0.5, 0.25, 0.0, 0.0], dtype=torch.float64))
    assert M.dead_fraction(density) == 0.4
    assert M.dense_fraction(density, 0.3) == 0.4


def test_accumulator_over_batches_equals_whole_data(generator):
    x, x_hat = data(generator, mean=3.0)
    f = (torch.randn(400, 20, generator=generator) > 1.5).float()
    acc = M.MetricsAccumulator(20)
    for i in range(0, 400, 64):
        acc.update(x[i:i + 64], x_hat[i:i + 64], f[i:i + 64])
    r = acc.result()
    assert abs(r["fvu"] - M.fvu(x, x_hat)) < 1e-9
    assert abs(r["explained_variance"] - M.explained_variance(x, x_hat)) < 1e-9
    assert abs(r["cossim"] - M.cosine_similarity(x, x_hat)) < 1e-9
    assert abs(r["relative_reconstruction_bias"] - M.relative_reconstruction_bias(x, x_hat)) < 1e-9
    assert abs(r["l0"] - M.l0(f)) < 1e-9
    assert abs(r["dead_fraction"] - M.dead_fraction(M.firing_density(f))) < 1e-12

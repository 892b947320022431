"""The synthetic ground-truth generator (METHODS-2 §5.1 and its CPU-preset checks §5.3 (2)):
probabilities, hierarchy structure, compensation, exclusivity, scaling by the parent, orthogonalisation,
determinism, resumable streaming, files."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from saekit.data.synthetic import SyntheticConfig, SyntheticData, SyntheticModel, synthetic_preset
from saekit.data.synthetic.hierarchy import (
    achieved_rates,
    build_hierarchy,
    compensated_probabilities,
    survival_given_active,
)
from saekit.data.synthetic.model import orthogonalize, zipf_probabilities
from saekit.errors import SaekitError

SAMPLES = 16 * 4096


@pytest.fixture(scope="module")
def cpu_model() -> SyntheticModel:
    return SyntheticModel(synthetic_preset("cpu"))


@pytest.fixture(scope="module")
def uncorrelated() -> tuple[SyntheticModel, torch.Tensor]:
    """The CPU preset without correlation (so siblings fire independently, as compensation assumes)
    and its codes on SAMPLES rows."""
    model = SyntheticModel(synthetic_preset("cpu", correlation_scale=0.0, orthogonalize_steps=0))
    data = SyntheticData(model)
    return model, torch.cat([data.chunk(i)[1] for i in range(SAMPLES // data.chunk_size)])


@pytest.fixture(scope="module")
def cpu_codes(cpu_model) -> torch.Tensor:
    data = SyntheticData(cpu_model)
    return torch.cat([data.chunk(i)[1] for i in range(SAMPLES // data.chunk_size)])


def z_scores(rates: torch.Tensor, expected: torch.Tensor, n: int) -> torch.Tensor:
    e = expected.double()
    return (rates.double() - e) / (e * (1 - e) / n).clamp_min(1e-30).sqrt()


def test_zipf_probabilities_follow_the_formula():
    p = zipf_probabilities(100, 0.5, 0.4, 5e-4)
    assert p[0] == pytest.approx(0.4) and p[-1] == pytest.approx(5e-4)
    r = 10  # rank 10, index 9, by hand
    expected = 5e-4 + (0.4 - 5e-4) * (r ** -0.5 - 100 ** -0.5) / (1 - 100 ** -0.5)
    assert float(p[9]) == pytest.approx(expected, rel=1e-6)
    assert bool((p[1:] < p[:-1]).all())


def test_hierarchy_numbers_features_breadth_first_as_synthsaebench():
    h = build_hierarchy(synthetic_preset("cpu"))
    parent, depth = h.parent, h.depth
    assert (depth[:16] == 0).all() and (parent[:16] == -1).all()
    # depth 1: 16..79, root r's children are 16 + 4r .. 16 + 4r + 3
    assert parent[16:80].tolist() == [r for r in range(16) for _ in range(4)]
    assert parent[80:336].tolist() == [p for p in range(16, 80) for _ in range(4)]
    # depth 3 runs out of features: 688 leaves under the first 172 depth-2 nodes
    assert parent[336:].tolist() == [p for p in range(80, 252) for _ in range(4)]
    assert (depth[336:] == 3).all()
    # every parent with >= 2 children has mutually exclusive children (portion 1.0 from depth 0)
    has_children = torch.zeros(1024, dtype=torch.bool)
    has_children[parent[parent >= 0]] = True
    assert torch.equal(h.exclusive, has_children)
    # the 16k preset uses 128 + 512 + 2048 + 8192 features; the rest are free
    big = build_hierarchy(SyntheticConfig())
    assert int((big.depth >= 0).sum()) == 10_880 and (big.depth[10_880:] == -1).all()


def test_survival_probability_equals_subset_enumeration():
    probabilities = [0.9, 0.3, 0.55, 0.05]
    for i in range(4):
        others = [j for j in range(4) if j != i]
        total = 0.0
        for fires in itertools.product([0, 1], repeat=3):
            chance = math.prod(probabilities[j] if f else 1 - probabilities[j] for j, f in zip(others, fires))
            total += chance / (1 + sum(fires))
        assert survival_given_active(probabilities)[i] == pytest.approx(total, abs=1e-12)


def test_exact_compensation_gives_every_unclamped_feature_its_base_rate():
    model = SyntheticModel(synthetic_preset("cpu", orthogonalize_steps=0))
    unclamped = model.probabilities < 1
    assert 0 < int(unclamped.sum()) < 1024  # the CPU preset over-subscribes its deep groups
    predicted = achieved_rates(model.hierarchy, model.probabilities)
    torch.testing.assert_close(predicted[unclamped], model.base_probabilities[unclamped], rtol=1e-5, atol=0)
    assert bool((predicted[~unclamped] < model.base_probabilities[~unclamped]).all())


def test_saelens_compensation_is_its_first_order_rule():
    cfg = synthetic_preset("cpu", compensation="saelens", orthogonalize_steps=0)
    h = build_hierarchy(cfg)
    b = zipf_probabilities(1024, 0.5, 0.4, 5e-4).double()
    p = compensated_probabilities(h, b.float(), "saelens").double()
    siblings = [16, 17, 18, 19]  # root 0's exclusive children
    for i in siblings:
        others = sum(float(b[j]) for j in siblings if j != i)
        assert float(p[i]) == pytest.approx(min(float(b[i]) / float(b[0]) * (1 + others / float(b[0])), 1),
                                            rel=1e-6)


def test_empirical_rates_match_base_rates_up_to_the_clamp(uncorrelated):
    """METHODS-2 §5.3 (2), without correlation: every feature's rate within sampling error of its base
    rate, except the clamped ones, which fire at their (lower) predicted rate."""
    model, codes = uncorrelated
    rates = (codes > 0).double().mean(0)
    unclamped = model.probabilities < 1
    z = z_scores(rates[unclamped], model.base_probabilities[unclamped], codes.shape[0])
    assert float((z.abs() > 3).double().mean()) < 0.01 and float(z.abs().max()) < 5
    assert float(z.pow(2).mean()) == pytest.approx(1.0, abs=0.25)
    z = z_scores(rates[~unclamped], model.expected_rates[~unclamped], codes.shape[0])
    assert float((z.abs() > 3).double().mean()) < 0.01 and float(z.abs().max()) < 5
    true_l0 = float((codes > 0).sum(-1).double().mean())
    assert true_l0 == pytest.approx(float(model.expected_rates.sum()), rel=0.01)


def test_with_correlation_roots_keep_their_rates(cpu_model, cpu_codes):
    """The copula keeps every marginal: features no parent gates (the roots) fire at their base rate."""
    rates = (cpu_codes > 0).double().mean(0)
    roots = cpu_model.hierarchy.depth == 0
    z = z_scores(rates[roots], cpu_model.base_probabilities[roots], cpu_codes.shape[0])
    assert float(z.abs().max()) < 4


def test_children_fire_only_with_their_parent_and_exclusive_siblings_never_together(cpu_model, cpu_codes):
    h = cpu_model.hierarchy
    active = cpu_codes > 0
    children = h.parent >= 0
    assert not bool((active[:, children] & ~active[:, h.parent[children]]).any())
    for groups in h.groups:
        members = groups.clamp(min=0)
        together = (active[:, members] & (groups >= 0)).sum(-1)
        assert int(together.max()) <= 1
    # and the exclusion is not vacuous: many groups have an active member
    assert float(active[:, h.groups[0].flatten()].any(-1).double().mean()) > 0.3


def test_children_are_scaled_by_their_parent_over_its_mean(cpu_model, cpu_codes):
    """mean of child / (parent / μ_parent) over active children ≈ μ_child (the unscaled magnitude)."""
    h = cpu_model.hierarchy
    for kids, parents in h.levels:
        child = cpu_codes[:, kids]
        scale = cpu_codes[:, parents] / cpu_model.mean_magnitudes[parents]
        active = child > 0
        ratio = (child / scale.clamp_min(1e-12))[active]
        expected = cpu_model.mean_magnitudes[kids].expand_as(child)[active]
        assert float(ratio.mean()) == pytest.approx(float(expected.mean()), rel=0.02)
    # without scaling, a child's magnitude does not depend on its parent's
    plain = SyntheticModel(synthetic_preset("cpu", scale_children_by_parent=False, orthogonalize_steps=0))
    _, codes = plain.sample(4096, torch.Generator().manual_seed(0))
    kids, parents = plain.hierarchy.levels[0]
    active = codes[:, kids] > 0
    assert float(codes[:, kids][active].mean()) == pytest.approx(float(plain.mean_magnitudes[kids].mean()),
                                                                 rel=0.05)


def test_activations_are_codes_times_directions_plus_bias(cpu_model):
    x, codes = cpu_model.sample(64, torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, codes @ cpu_model.features + cpu_model.bias)
    assert cpu_model.bias.norm() == pytest.approx(0.5, rel=1e-5)
    torch.testing.assert_close(cpu_model.features.norm(dim=-1), torch.ones(1024))


def test_orthogonalize_gradient_is_the_loss_gradient_and_spreads_directions():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(40, 8, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    # one Adam step from the written-out gradient equals one from autograd of the loss
    ours = orthogonalize(d, steps=1, lr=1e-2, chunk=16)
    leaf = d.clone().requires_grad_(True)
    gram = leaf @ leaf.T
    off = gram - torch.diag(torch.diag(gram))
    loss = off.pow(2).sum() + 40 * (torch.diag(gram) - 1).pow(2).sum()
    loss.backward()
    optimizer = torch.optim.Adam([leaf], lr=1e-2)
    optimizer.step()
    reference = leaf.detach() / leaf.detach().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ours, reference)
    def overlap(rows: torch.Tensor) -> float:  # Σ_{i≠j} cos², what the loss drives down at unit norm
        gram = rows @ rows.T
        return float((gram - torch.diag(torch.diag(gram))).pow(2).sum())

    # N unit vectors in d < N dimensions have Σ_{i≠j} cos² >= N²/d − N, with equality for a tight frame:
    # the minimum the optimisation should reach
    assert overlap(d) > 180 and overlap(orthogonalize(d, steps=200, lr=1e-2)) == pytest.approx(40**2 / 8 - 40,
                                                                                               rel=1e-3)


def test_same_seed_same_model_and_stream_resumes_anywhere():
    cfg = synthetic_preset("cpu", orthogonalize_steps=2)
    a, b = SyntheticModel(cfg), SyntheticModel(cfg)
    for name, tensor in a.tensors().items():
        assert torch.equal(tensor, b.tensors()[name]), name
    data = SyntheticData(a, chunk_size=256)
    rows = torch.cat(list(itertools.islice(iter(data), 4)))
    resumed = torch.cat(list(itertools.islice(data.resume_from(300), 3)))
    assert torch.equal(resumed[: rows.shape[0] - 300], rows[300:])
    test = torch.cat(list(itertools.islice(iter(SyntheticData(a, "test", chunk_size=256)), 1)))
    assert not torch.equal(test, rows[:256])
    other = SyntheticModel(synthetic_preset("cpu", orthogonalize_steps=2, seed=7))
    assert not torch.equal(other.features, a.features)


def test_save_and_load_give_the_same_samples(tmp_path):
    model = SyntheticModel(synthetic_preset("cpu", orthogonalize_steps=1, compensation="saelens"))
    model.save(tmp_path / "m")
    loaded = SyntheticModel.load(tmp_path / "m")
    assert loaded.cfg == model.cfg
    x1, c1 = model.sample(128, torch.Generator().manual_seed(1))
    x2, c2 = loaded.sample(128, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and torch.equal(c1, c2)
    with pytest.raises(SaekitError, match="not a saved synthetic model"):
        SyntheticModel.load(tmp_path / "nothing")


def test_evaluation_batches_cover_exactly_the_requested_samples(cpu_model):
    data = SyntheticData(cpu_model, "test", chunk_size=1000)
    batches = list(data.batches(2500, 300))
    assert sum(x.shape[0] for x, _ in batches) == 2500 and all(x.shape[0] <= 300 for x, _ in batches)
    assert torch.equal(torch.cat([x for x, _ in batches])[:1000], data.chunk(0)[0])


@pytest.mark.parametrize("bad", [dict(p_min=0.5, p_max=0.4), dict(branching=1), dict(compensation="other"),
                                 dict(n_features=0), dict(magnitude_start=0.0), dict(roots=-1)])
def test_bad_configs_are_one_line_errors(bad):
    with pytest.raises(SaekitError):
        SyntheticConfig(**bad)
    with pytest.raises(SaekitError, match="unknown synthetic preset"):
        synthetic_preset("huge")

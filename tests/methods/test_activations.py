import torch

from saekit.activations import heaviside_step, jumprelu, topk_over_batch, topk_per_row


def test_jumprelu_forward_and_ste_gradients():
    z = torch.tensor([[0.5, 1.0004, 0.9996, 2.0, -1.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0], requires_grad=True)
    eps = 0.001
    out = jumprelu(z, theta, eps)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 1.0004, 0.0, 2.0, 0.0]]))
    out.sum().backward()
    # dz = H(z - θ); dθ = -(θ/ε)·K((z-θ)/ε): only entries within ε/2 of θ contribute.
    assert torch.equal(z.grad, torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]]))
    expected = torch.tensor([0.0, -1.0 / eps, -1.0 / eps, 0.0, 0.0])
    assert torch.allclose(theta.grad, expected)


def test_step_ste_sends_gradient_only_to_threshold():
    z = torch.tensor([[0.9998, 1.5], [1.0001, 0.2]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0], requires_grad=True)
    eps = 0.001
    out = heaviside_step(z, theta, eps)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    out.sum().backward()
    assert torch.count_nonzero(z.grad) == 0
    assert torch.allclose(theta.grad, torch.tensor([-2.0 / eps, 0.0]))


def test_topk_per_row_keeps_k_largest(generator):
    z = torch.randn(8, 50, generator=generator)
    out = topk_per_row(z, 5)
    assert ((out != 0).sum(-1) <= 5).all()
    for row, kept in zip(z, out):
        top = torch.topk(row, 5).values.relu()
        assert torch.allclose(torch.sort(kept[kept != 0]).values, torch.sort(top[top > 0]).values)


def test_batch_topk_keeps_k_times_batch_over_the_batch(generator):
    z = torch.randn(16, 40, generator=generator)
    out = topk_over_batch(z, 3)
    assert (out != 0).sum() == 16 * 3
    cutoff = out[out != 0].min()
    assert (z[out == 0] <= cutoff).all()
    # per-row counts vary: that is the point of BatchTopK
    assert len(set((out != 0).sum(-1).tolist())) > 1


def test_fused_jumprelu_with_l0_equals_the_separate_estimators(generator):
    from saekit.activations import jumprelu_with_l0

    z = torch.randn(64, 30, generator=generator) * 0.01 + 0.02
    theta = torch.rand(30, generator=generator) * 0.03
    eps = 0.005
    z1, t1 = z.clone().requires_grad_(), theta.clone().requires_grad_()
    f, l0, active = jumprelu_with_l0(z1, t1, eps)
    assert torch.equal(active, (z > theta).float())
    (f.pow(2).sum() + 3.0 * l0).backward()
    z2, t2 = z.clone().requires_grad_(), theta.clone().requires_grad_()
    f2 = jumprelu(z2, t2, eps)
    l02 = heaviside_step(z2, t2, eps).sum(-1).mean()
    (f2.pow(2).sum() + 3.0 * l02).backward()
    assert torch.equal(f.detach(), f2.detach()) and torch.allclose(l0, l02)
    assert torch.allclose(z1.grad, z2.grad)
    assert torch.allclose(t1.grad, t2.grad, rtol=1e-5, atol=1e-6)
    assert torch.count_nonzero(t1.grad) > 5


def test_largest_per_row_equals_torch_topk(generator):
    from saekit.activations import column_groups, largest_per_row

    assert column_groups(4608, 32) == 384 and column_groups(100, 40) is None  # grouped, and where it cannot pay
    for shape, k in [((64, 4608), 32), ((3, 5, 96), 5), ((17, 6144), 64), ((9, 100), 40)]:
        z = torch.randn(*shape, generator=generator)
        values, indices = largest_per_row(z, k)
        reference = torch.topk(z, k, dim=-1)
        assert torch.equal(indices.sort(-1).values, reference.indices.sort(-1).values)
        assert torch.equal(values, z.gather(-1, indices))
    # ties (integer values): the same multiset of values as torch.topk's
    z = torch.randint(0, 4, (32, 960), generator=generator).float()
    values, _ = largest_per_row(z, 16)
    assert torch.equal(values.sort(-1).values, torch.topk(z, 16, dim=-1).values.sort(-1).values)
    # a column view (non-contiguous rows) and the gradient through the values
    z = torch.randn(960, 48, generator=generator).T.requires_grad_()
    values, indices = largest_per_row(z, 8)
    values.sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z).scatter_(-1, indices, 1.0))

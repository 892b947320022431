"""Each method's loss terms against an independent computation."""

import torch

from saekit import DictionaryConfig, TrainingConfig
from saekit.dictionary import Dictionary
from saekit.methods.dead_latents import auxk_loss
from saekit.training.objective import training_loss
from tests.helpers import make


def sparsity_loss(d, enc):
    return d.method.sparsity_loss(d, enc)


def test_relu_sparsity_is_l1_weighted_by_decoder_norms(generator):
    d = make("relu")
    x = torch.randn(20, 12, generator=generator)
    enc = d.encode_with_details(x)
    expected = sum(float(enc.latents[:, i].sum() * d.W_dec[i].norm()) for i in range(32)) / 20
    assert abs(float(sparsity_loss(d, enc)) - expected) < 1e-4


def test_jumprelu_sparsity_is_l0(generator):
    d = make("jumprelu")
    x = torch.randn(20, 12, generator=generator)
    enc = d.encode_with_details(x)
    assert abs(float(sparsity_loss(d, enc)) - float((enc.latents != 0).sum(-1).float().mean())) < 1e-6


def test_gated_auxiliary_loss_does_not_train_the_decoder(generator):
    d = make("gated")
    d.train()
    x = torch.randn(20, 12, generator=generator)
    d.method.auxiliary_losses(d, x, x, d.encode_with_details(x))["gated_aux"].backward()
    assert d.W_dec.grad is None or torch.count_nonzero(d.W_dec.grad) == 0
    assert torch.count_nonzero(d.W_enc.grad) > 0 and torch.count_nonzero(d.b_gate.grad) > 0


def test_matryoshka_loss_is_mean_of_prefix_reconstructions(generator):
    cfg = DictionaryConfig(method="matryoshka", d_in=12, d_sae=32, k=4, matryoshka_prefixes=[4, 16, 32])
    d = Dictionary(cfg)
    d.load_weights(make("matryoshka", matryoshka_prefixes=[4, 16, 32]).weights())
    x = torch.randn(16, 12, generator=generator)
    result = training_loss(d, x, 0.0, None, TrainingConfig(sparse_kernels=False).resolved(cfg))
    f = result.encoding.latents
    expected = torch.stack([((x - (f[:, :m] @ d.W_dec[:m] + d.b_dec)) ** 2).sum(-1).mean()
                            for m in (4, 16, 32)]).mean()
    assert torch.allclose(result.total, expected, atol=1e-5)


def test_auxk_uses_only_dead_latents(generator):
    d = make("topk")
    x = torch.randn(16, 12, generator=generator)
    enc = d.encode_with_details(x)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:5] = True
    residual = x - d.decode(enc.latents)
    loss = auxk_loss(d, x, residual, dead, aux_k=3, sparse=False)
    loss.backward()
    assert torch.count_nonzero(d.W_dec.grad[5:]) == 0
    assert torch.count_nonzero(d.W_dec.grad[:5]) > 0
    codes = torch.zeros(16, 5)
    vals, idx = torch.topk(enc.pre[:, :5].relu(), 3, dim=-1)
    codes.scatter_(-1, idx, vals)
    expected = ((residual - codes @ d.W_dec[:5]) ** 2).sum(-1).mean()
    assert torch.allclose(loss, expected)


def test_ghost_grads_only_reach_dead_latents(generator):
    cfg = DictionaryConfig(method="relu", d_in=12, d_sae=32)
    training = TrainingConfig(ghost_grads=True).resolved(cfg)
    d = Dictionary(cfg)
    d.load_weights(make("relu").weights())
    x = torch.randn(16, 12, generator=generator)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 7]] = True
    with_ghost = training_loss(d, x, 0.0, dead, training)
    without = training_loss(d, x, 0.0, None, training)
    assert "ghost" in with_ghost.parts and with_ghost.parts["ghost"] > 0
    (with_ghost.total - without.total).backward()
    rows_with_grad = torch.nonzero(d.W_dec.grad.abs().sum(-1)).flatten().tolist()
    assert rows_with_grad == [3, 7]

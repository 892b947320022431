"""The three ghost-grads forms against a hand computation, token by token and latent by latent."""

from __future__ import annotations

import math

import pytest
import torch

from saekit import DictionaryConfig, SaekitError, TrainingConfig
from saekit.dictionary import Dictionary
from saekit.training.objective import training_loss
from tests.helpers import make

DEAD = [1, 4, 9]  # of 12 latents


def hand_loss_and_gradient(pre, W_dec, residual, main_error, form):
    """Loss and d loss / d pre[:, dead] written out with Python loops, from the definitions:

    a_bi = exp(p_bi) (original, scaled) or log(1 + exp(p_bi)) (softplus) for dead i;
    g_b = Σ_i a_bi d_i;  s_b = ||r_b|| / (2 ||g_b||);  e_b = ||r_b − s_b g_b||²;  c_b = E_b / e_b;
    L = (1/B) Σ_b c_b e_b  × (n_dead / M for the scaled forms), with s_b and c_b held constant, so
    dL/da_bi = (1/B) c_b · (−2 s_b) <r_b − s_b g_b, d_i> (× n_dead / M), and da/dp = exp(p) or sigmoid(p).
    """
    B, M = pre.shape
    d = len(residual[0])
    loss, grad = 0.0, [[0.0] * len(DEAD) for _ in range(B)]
    factor = len(DEAD) / M if form in ("scaled", "softplus") else 1.0
    for b in range(B):
        acts, slopes = [], []
        for i in DEAD:
            p = float(pre[b, i])
            if form == "softplus":
                acts.append(math.log1p(math.exp(p)))
                slopes.append(1 / (1 + math.exp(-p)))
            else:
                acts.append(math.exp(p))
                slopes.append(math.exp(p))
        g = [sum(a * float(W_dec[i, j]) for a, i in zip(acts, DEAD)) for j in range(d)]
        r = [float(residual[b, j]) for j in range(d)]
        s = math.sqrt(sum(v * v for v in r)) / (2 * math.sqrt(sum(v * v for v in g)))
        diff = [r[j] - s * g[j] for j in range(d)]
        e = sum(v * v for v in diff)
        c = float(main_error[b]) / e
        loss += c * e / B * factor
        for n, i in enumerate(DEAD):
            along = sum(diff[j] * float(W_dec[i, j]) for j in range(d))
            grad[b][n] = c * (-2 * s) * along / B * factor * slopes[n]
    return loss, torch.tensor(grad)


@pytest.mark.parametrize("form", ["original", "scaled", "softplus"])
def test_ghost_loss_and_its_gradient_match_the_hand_computation(form, generator):
    cfg = DictionaryConfig(method="relu", d_in=6, d_sae=12)
    training = TrainingConfig(ghost_grads=True, ghost_grads_form=form).resolved(cfg)
    d = Dictionary(cfg, training=training)
    with torch.no_grad():
        for tensor in d.parameters():
            tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))
    x = torch.randn(5, 6, generator=generator)
    dead = torch.zeros(12, dtype=torch.bool)
    dead[DEAD] = True
    enc = d.encode_with_details(x, training=True, sparse=False)
    enc.pre.retain_grad()
    x_hat = d.decode_encoding(enc, x)
    main_error = ((x - x_hat) ** 2).sum(-1)
    name, loss, weight = d.method.dead_latent_loss(d, x, x - x_hat, enc, dead, main_error, training)
    loss.backward()
    expected_loss, expected_grad = hand_loss_and_gradient(enc.pre.detach(), d.W_dec.detach(),
                                                          (x - x_hat).detach(), main_error.detach(), form)
    assert name == "ghost" and weight == 1.0
    assert float(loss.detach()) == pytest.approx(expected_loss, rel=1e-4)
    # the ghost term is the only one backpropagated here, and it reaches only the dead pre-activations
    torch.testing.assert_close(enc.pre.grad[:, DEAD], expected_grad.float(), rtol=1e-3, atol=1e-7)
    assert torch.count_nonzero(enc.pre.grad[:, [i for i in range(12) if i not in DEAD]]) == 0


def test_the_forms_differ_where_they_should(generator):
    """scaled = original · n_dead/M exactly; softplus changes the gradient, not only its size."""
    cfg = DictionaryConfig(method="relu", d_in=12, d_sae=32)
    d = Dictionary(cfg)
    d.load_weights(make("relu").weights())
    x = torch.randn(16, 12, generator=generator)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 7, 20, 21]] = True
    losses, grads = {}, {}
    for form in ("original", "scaled", "softplus"):
        training = TrainingConfig(ghost_grads=True, ghost_grads_form=form).resolved(cfg)
        d.zero_grad(set_to_none=True)
        result = training_loss(d, x, 0.0, dead, training)
        losses[form] = result.parts["ghost"]
        (result.total - training_loss(d, x, 0.0, None, training).total).backward()
        grads[form] = d.W_enc.grad.clone()
    assert torch.allclose(losses["scaled"], losses["original"] * 4 / 32)
    torch.testing.assert_close(grads["scaled"], grads["original"] * 4 / 32)
    cosine = torch.nn.functional.cosine_similarity(grads["softplus"].flatten(), grads["scaled"].flatten(), dim=0)
    assert float(cosine) < 0.9999  # a different function of the pre-activations, not a rescaling


def test_ghost_grads_form_options_are_checked():
    cfg = DictionaryConfig(method="relu", d_in=6, d_sae=12)
    assert TrainingConfig(ghost_grads=True).resolved(cfg).ghost_grads_form == "original"  # back-compat
    with pytest.raises(SaekitError, match="ghost_grads_form must be one of original, scaled, softplus"):
        TrainingConfig(ghost_grads=True, ghost_grads_form="dm").resolved(cfg)
    with pytest.raises(SaekitError, match="applies only with ghost_grads"):
        TrainingConfig(ghost_grads_form="scaled").resolved(cfg)
    with pytest.raises(SaekitError, match="uses AuxK"):
        TrainingConfig(ghost_grads=True, ghost_grads_form="softplus").resolved(
            DictionaryConfig(method="topk", d_in=6, d_sae=12, k=2))

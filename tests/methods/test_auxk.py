"""AuxK against an independent dense computation, and its every-n-steps schedule in training."""

import pytest
import torch

import saekit
from saekit import DictionaryConfig, TrainingConfig
from saekit.data.toy import ToyConfig, ToyData
from saekit.dictionary import Dictionary
from saekit.methods import dead_latents
from saekit.training.member import SweepMember
from saekit.training.objective import training_loss
from tests.helpers import make


def naive_auxk(d: Dictionary, x: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, aux_k: int):
    """The AuxK loss written out on the full [B, d_sae] pre-activations: mask the live latents to -inf,
    take each row's aux_k largest, ReLU, decode, squared error against the detached residual."""
    pre = (x - d.b_dec) @ d.W_enc + d.b_enc
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = torch.topk(masked, min(aux_k, int(dead.sum())), dim=-1)
    codes = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    return ((residual.detach() - codes @ d.W_dec) ** 2).sum(-1).mean()


@pytest.mark.parametrize("n_dead, form", [(5, "dense, no selection"), (20, "dense"), (20, "sparse kernels")])
def test_auxk_loss_and_gradients_match_a_dense_computation(n_dead, form, generator, monkeypatch):
    monkeypatch.setattr(dead_latents, "AUX_DENSE_RATIO", 1 if form == "sparse kernels" else 4)
    twins = [make("topk", d_in=12, d_sae=40, seed=3) for _ in range(2)]
    with torch.no_grad():
        for d in twins:
            d.b_dec.copy_(torch.randn(12, generator=torch.Generator().manual_seed(5)))
    x = torch.randn(24, 12, generator=generator)
    residual = torch.randn(24, 12, generator=generator)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40, generator=generator)[:n_dead]] = True
    aux_k = 8
    ours = dead_latents.auxk_loss(twins[0], x, residual, dead, aux_k, sparse=form == "sparse kernels")
    expected = naive_auxk(twins[1], x, residual, dead, aux_k)
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-6)
    ours.backward()
    expected.backward()
    for (name, p), q in zip(twins[0].named_parameters(), twins[1].parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    assert torch.count_nonzero(twins[0].W_dec.grad[~dead]) == 0  # only dead latents are trained
    assert torch.count_nonzero(twins[0].b_dec.grad) > 0  # b_dec through the centred input


def test_auxk_weight_is_aux_every_times_alpha(generator):
    cfg = DictionaryConfig(method="topk", d_in=12, d_sae=32, k=4)
    d = Dictionary(cfg)
    d.load_weights(make("topk").weights())
    x = torch.randn(16, 12, generator=generator)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:6] = True
    for every in (1, 4):
        training = TrainingConfig(aux_every=every, aux_coefficient=0.25).resolved(cfg)
        result = training_loss(d, x, 0.0, dead, training)
        assert torch.allclose(result.total, result.parts["mse"] + 0.25 * every * result.parts["auxk"])


def test_auxk_runs_on_every_aux_every_th_step():
    """With latents that cannot fire, the AuxK term appears on steps 0, 3, 6, ... (aux_every 3) once they
    are dead, and never in between."""
    data = ToyData(ToyConfig(d_in=16, n_features=16, mean_active=2, seed=4), chunk_size=128)
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=16, d_sae=64, k=2, dead_tokens=256,
                                              aux_every=3)
    member = SweepMember(spec, total_steps=20)
    batches = iter(data)
    member.start(next(batches))
    with torch.no_grad():
        member.dictionary.b_enc[:8] = -100.0
    with_auxk = [step for step in range(12) if "auxk" in member.step(next(batches), step)]
    assert with_auxk == [3, 6, 9]  # dead from step 2 (256 tokens unfired), then every third step


def test_aux_every_must_be_a_positive_integer():
    cfg = DictionaryConfig(method="topk", d_in=12, d_sae=32, k=4)
    with pytest.raises(saekit.SaekitError, match="aux_every"):
        TrainingConfig(aux_every=0).resolved(cfg)

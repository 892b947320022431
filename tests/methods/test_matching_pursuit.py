"""The matching-pursuit SAE: its encoder against a plain per-token loop, its gradients, its training."""

import pytest
import torch

import saekit
from saekit import DictionaryConfig
from saekit.errors import SaekitError
from tests.helpers import make


def pursuit_one_token(x, W_dec, b_dec, k, threshold):
    """Matching pursuit written out for one token, as SAELens documents it: pick argmax ReLU(<r, d_j>),
    add the coefficient to latent j, stop after a step that leaves the support unchanged or once
    ||r|| < threshold (threshold > 0), at most k steps."""
    r = x - b_dec
    z = torch.zeros(W_dec.shape[0], dtype=torch.float64)
    for _ in range(k):
        scores = (W_dec @ r).clamp_min(0)
        j = int(torch.argmax(scores))
        c = float(scores[j])
        before = set(torch.nonzero(z).flatten().tolist())
        z[j] += c
        r = r - c * W_dec[j]
        if set(torch.nonzero(z).flatten().tolist()) == before:
            break
        if threshold > 0 and float(r.norm()) < threshold:
            break
    return z


@pytest.mark.parametrize("threshold", [0.0, 7.0])
def test_encoder_equals_the_per_token_pursuit(threshold, generator):
    d = make("matching_pursuit", d_in=12, d_sae=32, k=6, residual_threshold=threshold)
    x = torch.randn(40, 12, generator=generator) * 2 + 0.5
    latents = d.encode(x).double()
    for i in range(x.shape[0]):
        expected = pursuit_one_token(x[i].double(), d.W_dec.double(), d.b_dec.double(), 6, threshold)
        torch.testing.assert_close(latents[i], expected, atol=1e-5, rtol=1e-5)
    l0 = (latents > 0).sum(-1)
    assert int(l0.max()) <= 6 and bool((latents >= 0).all())
    if threshold > 0:  # the threshold stopped some tokens early
        unthresholded = (make("matching_pursuit", d_in=12, d_sae=32, k=6).encode(x) > 0).sum(-1)
        assert float(l0.float().mean()) < float(unthresholded.float().mean())


def test_reconstruction_improves_with_every_step(generator):
    x = torch.randn(64, 12, generator=generator)
    errors = []
    for k in (1, 2, 4, 8):
        d = make("matching_pursuit", k=k)
        with torch.no_grad():
            d.W_dec.div_(d.W_dec.norm(dim=-1, keepdim=True))  # unit atoms: each step cannot increase ||r||
        errors.append(float((d(x) - x).pow(2).sum(-1).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.8 * errors[0]


def test_gradients_reach_the_decoder_and_b_dec_through_the_loop(generator):
    d = make("matching_pursuit", k=4)
    d.train()
    x = torch.randn(16, 12, generator=generator)
    enc = d.encode_with_details(x, training=True)
    loss = (d.decode_encoding(enc) - x).pow(2).sum(-1).mean()
    loss.backward()
    assert torch.count_nonzero(d.W_dec.grad) > 0 and torch.count_nonzero(d.b_dec.grad) > 0
    used = torch.unique(torch.nonzero(enc.latents)[:, 1])
    unused = torch.ones(32, dtype=torch.bool)
    unused[used] = False
    assert torch.count_nonzero(d.W_dec.grad[unused]) == 0  # atoms never picked get no gradient


def test_config_is_checked():
    with pytest.raises(SaekitError, match="k"):
        DictionaryConfig(method="matching_pursuit", d_in=8, d_sae=16)
    with pytest.raises(SaekitError, match="transcoder"):
        DictionaryConfig(method="matching_pursuit", d_in=8, d_sae=16, k=2, transcoder=True)
    with pytest.raises(SaekitError, match="residual_threshold"):
        DictionaryConfig(method="topk", d_in=8, d_sae=16, k=2, residual_threshold=0.5)
    with pytest.raises(SaekitError, match="dead latents"):
        saekit.DictionarySpec.from_options(method="matching_pursuit", d_in=8, d_sae=16, k=2, aux_k=4)


def test_trains_from_the_one_trainer_and_round_trips(tmp_path):
    from saekit.data.toy import ToyConfig, ToyData
    from saekit.evaluation.ground_truth import mmcs

    toy = ToyConfig(d_in=32, n_features=48, mean_active=3, seed=2)
    spec = saekit.DictionarySpec.from_options(method="matching_pursuit", d_in=32, d_sae=48, k=3, lr=2e-3)
    untrained = make("matching_pursuit", d_in=32, d_sae=48, k=3)
    (d,) = saekit.train(ToyData(toy), [spec], total_tokens=200_000, batch_size=512, progress=False)
    data = ToyData(toy)
    assert mmcs(data.features, d.W_dec) > 0.9 > mmcs(data.features, untrained.W_dec)
    x = ToyData(toy, split="test").sample(1024)
    saekit.save(d, tmp_path / "mp")
    loaded = saekit.load(tmp_path / "mp")
    assert loaded.cfg == d.cfg and not hasattr(loaded, "W_enc")
    torch.testing.assert_close(loaded(x), d(x))

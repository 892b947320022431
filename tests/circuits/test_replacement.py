"""The replacement model (every MLP output replaced at once) against an independent implementation on
plain PyTorch hooks, and against an oracle transcoder that reproduces the MLPs exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saekit.circuits.replacement import replacement_evaluation
from tests.helpers import random_clt, random_transcoder_set, tiny_llama

D = 32


@pytest.fixture(scope="module")
def model():
    return tiny_llama(40, layers=3, seed=4)


def _batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        ids = torch.randint(4, 40, (3, 12), generator=g)
        ids[:, 0] = 1  # BOS: not counted, keeps its clean MLP output
        mask = torch.ones_like(ids)
        mask[:, 0] = 0
        out.append((ids, mask))
    return out


def _independent(model, batches, transcoders, only: int | None = None):
    """CE and KL with MLP outputs replaced by raw forward hooks: each MLP's output at counted positions
    becomes the transcoders' reconstruction from that MLP's own input in the same forward (a CLT layer
    adds what earlier layers' latents, computed in the same forward, write into it)."""
    total_ce = total_kl = count = 0.0
    for ids, mask in batches:
        with torch.no_grad():
            clean = F.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
        keep = mask.bool()
        written: dict[int, torch.Tensor] = {}
        handles = []
        for t, layer in enumerate(transcoders.layers):
            def hook(module, args, output, t=t, keep=keep, written=written):
                x = args[0][keep].float()
                latents = transcoders.encode_layer(t, x)
                contributions = transcoders.decode_source(t, latents)
                for r in range(contributions.shape[1]):
                    written[t + r] = written.get(t + r, 0) + contributions[:, r]
                recon = written.pop(t) + transcoders.decoder_bias(t)
                if transcoders.skip(t) is not None:
                    recon = recon + x @ transcoders.skip(t).T
                if only is not None and t != only:
                    return None
                out = output.clone()
                out[keep] = recon
                return out
            handles.append(model.model.layers[layer].mlp.register_forward_hook(hook))
        try:
            with torch.no_grad():
                logits = model(input_ids=ids).logits
        finally:
            for handle in handles:
                handle.remove()
        target = mask[:, 1:].float()
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view_as(target)
        kl = (clean.exp() * (clean - F.log_softmax(logits[:, :-1].float(), -1))).sum(-1)
        total_ce += float((ce * target).sum())
        total_kl += float((kl * target).sum())
        count += float(target.sum())
    return total_ce / count, total_kl / count


@pytest.mark.parametrize("kind", ["plt", "plt_skip", "clt", "clt_reach1"])
def test_replacement_model_matches_plain_hooks(model, kind):
    if kind.startswith("plt"):
        transcoders = random_transcoder_set("jumprelu", d=D, d_sae=48, skip_connection=kind == "plt_skip")
    else:
        transcoders = random_clt("jumprelu", d=D, d_sae=48, max_reach=1 if kind == "clt_reach1" else None)
    batches = _batches()
    result = replacement_evaluation(model, batches, transcoders, per_layer=True)
    ce, kl = _independent(model, batches, transcoders)
    assert result["ce_replaced"] == pytest.approx(ce, rel=1e-5, abs=1e-6)
    assert result["kl_replaced"] == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert kl > 1e-4  # the transcoders do change the model, so the comparison has teeth
    for t, row in enumerate(result["layers"]):
        ce_t, kl_t = _independent(model, batches, transcoders, only=t)
        # alone, layer t reads clean inputs: the independent run's earlier layers compute but do not write
        assert row["ce_spliced"] == pytest.approx(ce_t, rel=1e-5, abs=1e-6)
        assert row["kl_spliced"] == pytest.approx(kl_t, rel=1e-4, abs=1e-7)
    assert result["ce_loss_score"] == pytest.approx(
        (result["ce_zero_ablation"] - ce) / (result["ce_zero_ablation"] - result["ce_clean"]), rel=1e-5)


class _Oracle:
    """A 'transcoder set' whose latents are the MLP's true output: replacing with it changes nothing."""

    def __init__(self, model):
        import copy

        self.mlps = [copy.deepcopy(model.model.layers[i].mlp) for i in range(3)]  # unhooked copies
        self.layers = [0, 1, 2]
        self.n_layers = 3
        self.input_hookpoints = [f"mlp_in.{i}" for i in self.layers]
        self.output_hookpoints = [f"mlp_out.{i}" for i in self.layers]

    def encode_layer(self, t, x):
        with torch.no_grad():
            return self.mlps[t](x)

    def decode_source(self, t, latents):
        return latents[:, None]

    def decoder_bias(self, t):
        return torch.zeros(D)

    def skip(self, t):
        return None

    def layer_dictionary(self, t):
        return type("Width", (), {"d_sae": D})()


def test_an_exact_replacement_reproduces_the_model(model):
    result = replacement_evaluation(model, _batches(), _Oracle(model), per_layer=True)
    assert result["ce_replaced"] == pytest.approx(result["ce_clean"], abs=1e-5)
    assert result["kl_replaced"] < 1e-8 and result["fvu"] < 1e-10
    assert all(row["kl_spliced"] < 1e-8 for row in result["layers"])
    assert abs(result["ce_zero_ablation"] - result["ce_clean"]) > 1e-4  # ablating does change it

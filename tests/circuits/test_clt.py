"""Cross-layer transcoders: the forward pass against its definition, the losses against independent
formulas, sparse against dense kernels, a reach-0 CLT against a transcoder set, folding, the memory
formula, and training through the one trainer (per-layer logs, exact resume, bf16 decoders)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import saekit
from saekit.circuits import CLTConfig, CLTSpec, CrossLayerTranscoder
from saekit.circuits.clt_training import clt_training_loss
from saekit.circuits.transcoder_set import TranscoderSet, transcoder_set_specs
from saekit.config import DictionaryConfig
from saekit.dictionary import Dictionary
from saekit.training.checkpoint import list_checkpoints
from tests.helpers import layer_stream, random_clt

METHODS = ["relu", "jumprelu", "topk", "batchtopk"]


def reference_forward(clt: CrossLayerTranscoder, x: torch.Tensor) -> torch.Tensor:
    """ŷ_t = Σ_{s ≤ t within reach} a_s·W_dec^{s→t} + b_dec[t], written from the definition in float64."""
    L = clt.n_layers
    x = x.double()
    latents = []
    for s in range(L):
        pre = x[:, s] @ clt.W_enc[s].double() + clt.b_enc[s].double()
        if clt.cfg.method == "relu":
            a = pre.relu()
        elif clt.cfg.method in ("jumprelu", "batchtopk"):
            a = pre * (pre > clt.threshold[s].double())
        else:
            top = pre.topk(clt.cfg.k, dim=-1)
            a = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        latents.append(a)
    out = []
    for t in range(L):
        y = clt.b_dec[t].double().clone()
        for s in range(t + 1):
            if t - s < clt.reach(s):
                block = clt.W_dec[s].double()[t - s]
                y = y + latents[s] @ block
        out.append(y)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("max_reach", [None, 1, 0])
def test_forward_matches_the_definition(method, max_reach):
    clt = random_clt(method, n_layers=4, max_reach=max_reach, seed=3)
    x = torch.randn(50, 4, 8, generator=torch.Generator().manual_seed(0))
    expected = reference_forward(clt, x).float()
    torch.testing.assert_close(clt(x), expected, atol=1e-5, rtol=1e-5)
    enc = clt.encode_layers(x)  # the training path, at inference
    torch.testing.assert_close(clt.decode_layers(enc), expected, atol=1e-5, rtol=1e-5)
    assert clt.decoder(2, 1) is None and clt.decoder(0, 0) is not None
    assert (clt.decoder(0, 3) is None) == (max_reach is not None and max_reach < 3)


@pytest.mark.parametrize("method", ["topk", "batchtopk"])
def test_sparse_kernels_give_the_dense_loss_and_gradients(method):
    spec = CLTSpec.from_options(method=method, n_layers=3, d_in=8, d_sae=16, k=3)
    losses, grads = [], []
    for sparse in (False, True):
        clt = random_clt(method, seed=5)
        for p in clt.parameters():
            p.requires_grad_(True)
        training = spec.training
        training.sparse_kernels = sparse
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(64, 3, 8, generator=g), torch.randn(64, 3, 8, generator=g)
        dead = torch.zeros(48, dtype=torch.bool)
        dead[[1, 17, 40]] = True
        result = clt_training_loss(clt, x, y, 0.0, dead, training)
        result.total.backward()
        losses.append(result.total.detach())
        grads.append({n: p.grad.clone() for n, p in clt.named_parameters()})
        assert "auxk" in result.parts
    torch.testing.assert_close(losses[0], losses[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_jumprelu_losses_are_the_circuit_tracing_recipe():
    """λ·Σ tanh(c·a·‖d‖) and λ_p·Σ ReLU(θ − h)·‖d‖, with ‖d‖ the concatenated decoder norm, computed
    here from the weights."""
    clt = random_clt("jumprelu", seed=2)
    spec = CLTSpec.from_options(method="jumprelu", n_layers=3, d_in=8, d_sae=16, tanh_scale=3.0,
                                preactivation_coefficient=0.01)
    x, y = torch.randn(32, 3, 8), torch.randn(32, 3, 8)
    result = clt_training_loss(clt, x, y, 0.5, None, spec.training)
    tanh_total, pre_total, recon = 0.0, 0.0, 0.0
    for s in range(3):
        norm = clt.W_dec[s].permute(1, 0, 2).reshape(16, -1).norm(dim=-1)  # concatenation over targets s..L-1
        torch.testing.assert_close(norm, clt.decoder_norms()[s])
        pre = x[:, s] @ clt.W_enc[s] + clt.b_enc[s]
        a = pre * (pre > clt.threshold[s])
        tanh_total += torch.tanh(3.0 * a * norm).sum(-1).mean()
        pre_total += ((clt.threshold[s] - pre).relu() * norm).sum(-1).mean()
    recon = (reference_forward(clt, x).float() - y).pow(2).sum(-1).mean(0).sum()
    torch.testing.assert_close(result.parts["sparsity"], tanh_total)
    torch.testing.assert_close(result.parts["preactivation"], 0.01 * pre_total)
    torch.testing.assert_close(result.total, recon + 0.5 * tanh_total + 0.01 * pre_total)


def test_one_layer_concatenated_norm_is_the_transcoder_norm():
    clt = random_clt("relu", n_layers=1)
    torch.testing.assert_close(clt.decoder_norms()[0], clt.W_dec[0][0].norm(dim=-1))


@pytest.mark.parametrize("method", ["topk", "relu", "jumprelu"])
@pytest.mark.parametrize("sparse", [False, True])
def test_a_reach_0_clt_is_a_transcoder_set(method, sparse):
    """No decoder crosses layers: the CLT's reconstruction loss is the sum of per-layer transcoders' and
    every gradient is theirs (METHODS-2 §1.7 check 2)."""
    clt = random_clt(method, max_reach=0, seed=7)
    for p in clt.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(64, 3, 8, generator=g), torch.randn(64, 3, 8, generator=g)
    clt_loss = (clt.decode_layers(clt.encode_layers(x, training=False, sparse=sparse)) - y).pow(2).sum(-1).mean(0).sum()
    clt_loss.backward()
    total = 0.0
    for s in range(3):
        cfg = DictionaryConfig(method=method, d_in=8, d_sae=16, transcoder=True, k=clt.cfg.k)
        d = Dictionary(cfg)
        weights = {"W_enc": clt.W_enc[s], "b_enc": clt.b_enc[s], "W_dec": clt.W_dec[s][0], "b_dec": clt.b_dec[s]}
        if method == "jumprelu":
            weights["threshold"] = clt.threshold[s]
        d.load_weights({k: v.detach() for k, v in weights.items()})
        enc = d.encode_with_details(x[:, s], sparse=sparse)
        loss = (d.decode_encoding(enc, x[:, s]) - y[:, s]).pow(2).sum(-1).mean()
        loss.backward()
        total += float(loss.detach())
        pairs = (("W_enc", clt.W_enc[s].grad, d.W_enc.grad), ("W_dec", clt.W_dec[s].grad[0], d.W_dec.grad),
                 ("b_enc", clt.b_enc[s].grad, d.b_enc.grad), ("b_dec", clt.b_dec.grad[s], d.b_dec.grad))
        for name, ours, theirs in pairs:
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=f"layer {s} {name}")
    assert float(clt_loss.detach()) == pytest.approx(total, rel=1e-5)


def test_folding_per_layer_scales_gives_raw_space_outputs():
    clt = random_clt("jumprelu", seed=4)
    c_in, c_out = torch.tensor([3.0, 0.5, 20.0]), torch.tensor([0.1, 2.0, 7.0])
    x = torch.randn(40, 3, 8).abs() * 5
    expected = clt(x * c_in[None, :, None]) / c_out[None, :, None]
    clt.fold_activation_scale(c_in.repeat_interleave(8), c_out.repeat_interleave(8))
    torch.testing.assert_close(clt(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("max_reach", [None, 4])
def test_decoder_memory_is_the_formula(max_reach):
    L, F, d = 12, 32, 16
    clt = CrossLayerTranscoder(CLTConfig(method="jumprelu", n_layers=L, d_in=d, d_sae=F, max_reach=max_reach))
    pairs = L * (L + 1) // 2 if max_reach is None else sum(min(L - s, max_reach + 1) for s in range(L))
    assert clt.cfg.decoder_pairs == pairs
    assert sum(w.numel() for w in clt.W_dec) == pairs * F * d
    half = CrossLayerTranscoder(CLTConfig(method="jumprelu", n_layers=L, d_in=d, d_sae=F, max_reach=max_reach,
                                          decoder_dtype="bfloat16"))
    assert sum(w.numel() * w.element_size() for w in half.W_dec) * 2 == pairs * F * d * 4


@pytest.mark.parametrize("method", ["jumprelu", "topk", "batchtopk"])
def test_training_lowers_every_layers_nmse_and_logs_per_layer(tmp_path, method):
    options = dict(lr=3e-3, sparsity_coefficient=0.05) if method == "jumprelu" else dict(lr=3e-3)
    spec = CLTSpec.from_options(method=method, n_layers=3, d_in=8, d_sae=32, k=4 if method != "jumprelu" else None,
                                **options)
    log = tmp_path / "log.jsonl"
    (clt,) = saekit.train(layer_stream(scales=[50.0, 1.0, 0.02]), [spec], total_tokens=40 * 256, batch_size=256,
                          progress=False, normalization_tokens=256, log_every=5, log_file=str(log))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    for layer in range(3):
        assert rows[-1][f"fvu.layer_{layer}"] < rows[0][f"fvu.layer_{layer}"], layer
        assert {f"l0.layer_{layer}", f"dead_fraction.layer_{layer}"} <= set(rows[-1])
    scales = clt.meta["normalization"]["input_scale"]
    assert scales[0] < scales[1] < scales[2] and clt.meta["normalization"]["folded"]
    # the exported CLT takes raw activations: evaluate on fresh raw rows of the same stream
    batch = next(iter(layer_stream(scales=[50.0, 1.0, 0.02], seed=9, batches=1)))
    x = torch.stack([batch[f"mlp_in.{i}"] for i in range(3)], 1)
    y = torch.stack([batch[f"mlp_out.{i}"] for i in range(3)], 1)
    fvu = ((clt(x) - y).pow(2).sum((0, 2)) / (y - y.mean(0)).pow(2).sum((0, 2)))
    assert bool((fvu < 0.9).all()), fvu
    if method == "batchtopk":
        l0 = (clt.encode(x) > 0).float().sum(-1).mean(0)
        assert bool(((l0 > 2) & (l0 < 8)).all()), l0


def test_resume_gives_identical_weights(tmp_path):
    """A PLT set and a CLT from one stream, stopped after a checkpoint and resumed, end where an
    uninterrupted run ends."""
    def specs():
        return transcoder_set_specs([0, 1, 2], 8, method="batchtopk", d_sae=16, k=3, lr=3e-3) + [
            CLTSpec.from_options(method="batchtopk", n_layers=3, d_in=8, d_sae=16, k=3, lr=3e-3, dead_tokens=512),
            CLTSpec.from_options(method="jumprelu", n_layers=3, d_in=8, d_sae=16, lr=3e-3)]

    options = dict(total_tokens=30 * 128, batch_size=128, progress=False, normalization_tokens=256)
    reference = saekit.train(layer_stream(rows=128, batches=30), specs(), **options)
    partial = list(layer_stream(rows=128, batches=30))[:13]
    saekit.train(partial, specs(), checkpoint_dir=str(tmp_path), checkpoint_every=5, **options)
    for extra in list_checkpoints(tmp_path):
        if extra.name != "step_000000010":
            shutil.rmtree(extra)
    resumed = saekit.train(layer_stream(rows=128, batches=30), specs(), checkpoint_dir=str(tmp_path),
                           checkpoint_every=5, **options)
    for a, b in zip(reference, resumed):
        for (name, t1), t2 in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(t1, t2), name
    last = list_checkpoints(tmp_path)[-1] / "dictionaries"
    loaded = saekit.load(last / "clt-batchtopk-k3-16")
    x = torch.randn(20, 3, 8)
    torch.testing.assert_close(loaded(x), resumed[3](x))
    assert isinstance(TranscoderSet.from_training(specs()[:3], resumed[:3]), TranscoderSet)


def test_bfloat16_decoders_train_and_stay_bfloat16():
    spec = CLTSpec.from_options(method="topk", n_layers=3, d_in=8, d_sae=32, k=4, lr=3e-3, decoder_dtype="bfloat16")
    (clt,) = saekit.train(layer_stream(), [spec], total_tokens=40 * 256, batch_size=256, progress=False,
                          normalization_tokens=256)
    assert all(w.dtype == torch.bfloat16 for w in clt.W_dec) and clt.W_enc[0].dtype == torch.float32
    batch = next(iter(layer_stream(seed=9, batches=1)))
    x = torch.stack([batch[f"mlp_in.{i}"] for i in range(3)], 1)
    y = torch.stack([batch[f"mlp_out.{i}"] for i in range(3)], 1)
    assert float((clt(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()) < 0.9


@pytest.mark.parametrize(("options", "message"), [
    (dict(method="gated"), "unknown cross-layer transcoder method 'gated'"),
    (dict(method="topk"), "needs k"),
    (dict(method="jumprelu", k=4), "k does not apply"),
    (dict(method="relu"), "cannot be trained"),
    (dict(method="jumprelu", unit_norm_decoder=True), "unit_norm_decoder does not apply"),
    (dict(method="jumprelu", max_reach=-1), "max_reach must be"),
    (dict(method="jumprelu", decoder_dtype="float16"), "decoder_dtype must be"),
    (dict(method="jumprelu", wings=2), "unknown cross-layer transcoder option"),
    (dict(method="jumprelu", target_l0=20.0), "target_l0 is not implemented for cross-layer transcoders"),
])
def test_bad_clt_options_are_one_line_errors(options, message):
    with pytest.raises(saekit.SaekitError, match=message) as info:
        CLTSpec.from_options(n_layers=3, d_in=8, d_sae=16, **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["topk", "jumprelu"])
def test_bfloat16_autocast_trains_a_clt_with_float32_weights(method):
    spec = CLTSpec.from_options(method=method, n_layers=3, d_in=8, d_sae=32, k=4 if method == "topk" else None,
                                lr=3e-3)
    (clt,) = saekit.train(layer_stream(batches=20), [spec], total_tokens=20 * 256, batch_size=256, progress=False,
                          normalization_tokens=256, autocast="bfloat16")
    assert all(p.dtype == torch.float32 for p in clt.parameters())
    x = torch.stack([next(iter(layer_stream(batches=1)))[f"mlp_in.{i}"] for i in range(3)], 1)
    assert bool(torch.isfinite(clt(x)).all())


def test_clt_training_config_fills_its_activations_defaults_and_names_itself_in_errors():
    from saekit.circuits.clt_training import CLTTrainingConfig
    from saekit.errors import SaekitError
    from saekit.training.config import MAX_DEAD_TOKENS, TrainingConfig

    cfg = CLTConfig(method="jumprelu", n_layers=2, d_in=8, d_sae=16)
    resolved = CLTTrainingConfig(lr=1e-3, dead_tokens=None).resolved(cfg)
    assert isinstance(resolved, CLTTrainingConfig)
    assert resolved.dead_tokens == MAX_DEAD_TOKENS and resolved.lr == 1e-3
    assert resolved.tanh_scale is not None and resolved.preactivation_coefficient is not None
    assert CLTTrainingConfig(dead_tokens=500).resolved(cfg).dead_tokens == 500
    with pytest.raises(SaekitError, match="unknown cross-layer transcoder training config field"):
        CLTTrainingConfig.from_dict({"lr": 1e-3, "nope": 1})
    with pytest.raises(SaekitError, match="unknown training config field"):
        TrainingConfig.from_dict({"nope": 1})
    with pytest.raises(SaekitError, match=r"no default for tanh_scale \(someone\)"):
        CLTTrainingConfig().filled({}, {f for f in TrainingConfig.__dataclass_fields__} | {"preactivation_coefficient"},
                                   "someone")

"""Foreign formats without the foreign libraries: round trips, detection, Gemma Scope, safety, errors.

The peer libraries themselves are exercised in tests/interop/test_peers.py; here every format is written
by saekit and read back, which proves saekit's reader and writer agree and that nothing a format holds
is lost. Dictionaries have random non-zero weights everywhere (tests/interop/dictionaries.py), so a b_dec
convention error or a transposed tensor cannot hide behind a zero.
"""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import saekit
from saekit.cli import main
from saekit.formats import detect, gemma_scope, hub, saelens
from saekit.formats import dictionary_learning as dl
from tests.helpers import D_IN, D_OUT, D_SAE, HOOK, LM, inputs, make_site_inputs, random_dictionary

TRANSCODER = dict(target_hookpoint="blocks.3.hook_mlp_out", d_out=D_OUT)
SQUARE_TRANSCODER = dict(target_hookpoint="blocks.3.hook_mlp_out")
# (id, method, config overrides, formats that can hold it)
CASES = [
    ("relu", "relu", {}, ("saekit", "saelens", "dictionary_learning")),
    ("relu_bdec", "relu", dict(apply_b_dec_to_input=True), ("saekit", "saelens", "dictionary_learning")),
    ("gated", "gated", {}, ("saekit", "saelens", "dictionary_learning")),
    ("jumprelu", "jumprelu", {}, ("saekit", "saelens", "dictionary_learning")),
    ("jumprelu_no_bdec", "jumprelu", dict(apply_b_dec_to_input=False),
     ("saekit", "saelens", "dictionary_learning")),
    ("topk", "topk", {}, ("saekit", "saelens", "sparsify", "dictionary_learning")),
    ("batchtopk", "batchtopk", {}, ("saekit", "saelens", "dictionary_learning")),
    ("matryoshka", "matryoshka", {}, ("saekit", "saelens", "dictionary_learning")),
    ("relu_transcoder", "relu", TRANSCODER, ("saekit", "saelens")),
    ("relu_skip_transcoder", "relu", dict(TRANSCODER, skip_connection=True), ("saekit", "saelens")),
    ("jumprelu_transcoder", "jumprelu", TRANSCODER, ("saekit", "saelens")),
    ("jumprelu_skip_transcoder", "jumprelu", dict(TRANSCODER, skip_connection=True), ("saekit", "saelens")),
    ("topk_transcoder", "topk", SQUARE_TRANSCODER, ("saekit", "sparsify")),
    ("topk_skip_transcoder", "topk", dict(SQUARE_TRANSCODER, skip_connection=True), ("saekit", "sparsify")),
]
ROUND_TRIPS = [pytest.param(method, overrides, fmt, id=f"{case}-{fmt}")
               for case, method, overrides, formats in CASES for fmt in formats]


def _outputs(d, x):
    with torch.no_grad():
        return d.encode(x), d(x)


@pytest.mark.parametrize("method, overrides, fmt", ROUND_TRIPS)
def test_round_trip_is_exact(method, overrides, fmt, tmp_path):
    d = random_dictionary(method, **overrides)
    x = inputs()
    detect.save_as(d, tmp_path / "out", fmt)
    assert detect.detect_format(tmp_path / "out") == fmt
    loaded = saekit.load(tmp_path / "out")
    if fmt != "dictionary_learning":  # a file of the folder names the folder
        assert torch.equal(saekit.load(tmp_path / "out" / "cfg.json").W_dec, loaded.W_dec)
    latents, recon = _outputs(loaded, x)
    expected_latents, expected_recon = _outputs(d, x)
    # saekit computes (x − b_dec)·W + b as x·W + (b − b_dec·W): re-expressed biases give the same bits.
    assert torch.equal(latents, expected_latents)
    assert torch.equal(recon, expected_recon)
    # What the source knew travels with it.
    assert loaded.provenance.hookpoint == HOOK and loaded.provenance.model_name == LM
    assert loaded.cfg.method == method and loaded.cfg.k == d.cfg.k
    if fmt != "dictionary_learning" or method != "jumprelu" or not d.cfg.apply_b_dec_to_input:
        assert loaded.cfg == d.cfg  # saekit's own config rides along in every writable format
    if method in ("jumprelu", "batchtopk", "matryoshka"):
        assert loaded.threshold.min() >= 0


@pytest.mark.parametrize("method", ["relu", "gated", "jumprelu", "topk", "batchtopk", "matryoshka"])
def test_saekit_saelens_saekit_is_bit_identical(method, tmp_path):
    d = random_dictionary(method)
    d.log_feature_density = torch.rand(D_SAE).log10()
    d.meta["normalization"] = {"input_scale": 0.25}
    saelens.save(d, tmp_path / "lens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert "saekit" not in cfg  # a plain SAELens directory, not a native one
    assert cfg["architecture"] == saelens.export_architecture(d)
    back = saekit.load(tmp_path / "lens")
    assert back.cfg == d.cfg and back.meta["normalization"] == {"input_scale": 0.25}
    for name, tensor in d.weights().items():
        assert torch.equal(back.weights()[name], tensor), name
    assert torch.equal(back.log_feature_density, d.log_feature_density)
    saekit.save(back, tmp_path / "native")
    again = saekit.load(tmp_path / "native")
    assert all(torch.equal(again.weights()[n], t) for n, t in d.weights().items())


def test_saelens_without_saekit_metadata_loads_what_it_computes(tmp_path):
    """A BatchTopK written for SAELens and stripped of saekit's stash comes back as the JumpReLU it
    computes; with SAELens's training-architecture metadata, as BatchTopK again."""
    d = random_dictionary("batchtopk")
    saelens.save(d, tmp_path / "lens")
    cfg_path = tmp_path / "lens" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["metadata"]["saekit"]
    cfg_path.write_text(json.dumps(cfg))
    plain = saekit.load(tmp_path / "lens")
    assert plain.cfg.method == "jumprelu"
    # TransformerLens's residual-stream name becomes saekit's site; SAELens gets its own name back.
    assert plain.provenance.hookpoint == "resid_post.3" and plain.meta["source"]["hook_name"] == HOOK
    assert saelens.export_cfg(plain)["metadata"]["hook_name"] == HOOK
    x = inputs()
    assert torch.equal(plain(x), d(x))
    cfg["metadata"].update(training_architecture="batchtopk", training_architecture_details={"k": 4})
    cfg_path.write_text(json.dumps(cfg))
    trained = saekit.load(tmp_path / "lens")
    assert trained.cfg.method == "batchtopk" and trained.cfg.k == 4
    assert torch.equal(trained(x), d(x))


def test_saelens_checkpoint_normalisation_and_rescaled_topk_are_folded(tmp_path):
    """Training checkpoints: `activation_scaler.json` folded (raw x in, raw x̂ out) and TopK's
    rescale_acts_by_decoder_norm folded, each checked against the computation written out by hand."""
    d = random_dictionary("topk")
    saelens.save(d, tmp_path / "ck")
    cfg_path = tmp_path / "ck" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["metadata"]["saekit"]
    cfg.update(normalize_activations="expected_average_only_in", rescale_acts_by_decoder_norm=True)
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / "ck" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5}))
    loaded = saekit.load(tmp_path / "ck")
    x = inputs()
    W_enc, b_enc, W_dec, b_dec = d.W_enc, d.b_enc, d.W_dec, d.b_dec
    norms = W_dec.norm(dim=-1)
    xs = x * 2.5
    pre = ((xs - b_dec) @ W_enc + b_enc) * norms  # ranks f·||d||
    top = torch.topk(pre, 4, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    recon = ((f / norms) @ W_dec + b_dec) / 2.5
    assert torch.allclose(loaded.encode(x), f, atol=1e-5)
    assert torch.allclose(loaded(x), recon, atol=1e-5)
    assert loaded.meta["normalization"]["input_scale"] == 2.5 and loaded.meta["decoder_norms_folded"]


@pytest.mark.parametrize("hook, site", [
    ("blocks.7.hook_resid_post", "resid_post.7"), ("blocks.7.hook_resid_pre", "resid_post.6"),
    ("blocks.0.hook_resid_pre", None), ("resid_post_layer_2", "resid_post.2"), ("layers.5", "resid_post.5"),
    ("h.5", "resid_post.5"), ("blocks.7.hook_mlp_out", None), ("layers.5.mlp", None), (None, None)])
def test_peer_residual_names_become_saekit_sites(hook, site):
    """Only the residual stream is translated; MLP/attention names differ by family and are kept."""
    assert saelens.named_site(hook) == site


# ----------------------------------------------------------------------------------------- Gemma Scope
def _jumprelu_reference(params: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gemma Scope's published JumpReLU, in float64 numpy: no b_dec subtraction before encoding."""
    z = x @ params["W_enc"].astype(np.float64) + params["b_enc"]
    f = np.maximum(z, 0.0) * (z > params["threshold"])
    return f, f @ params["W_dec"].astype(np.float64) + params["b_dec"]


def _gemma_scope_params(seed: int = 0, negative_thresholds: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    threshold = rng.uniform(0.0, 0.5, D_SAE)
    if negative_thresholds:
        threshold[:5] = -0.3
    return {"W_enc": rng.normal(0, 0.3, (D_IN, D_SAE)), "W_dec": rng.normal(0, 0.3, (D_SAE, D_IN)),
            "b_enc": rng.normal(0, 0.3, D_SAE), "b_dec": rng.normal(0, 0.3, D_IN),
            "threshold": threshold}


@pytest.mark.parametrize("negative_thresholds", [False, True])
def test_gemma_scope_npz_matches_reference_jumprelu(tmp_path, negative_thresholds):
    params = {k: v.astype(np.float32) for k, v in _gemma_scope_params(1, negative_thresholds).items()}
    folder = tmp_path / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    assert detect.detect_format(folder) == "gemma_scope"
    d = saekit.load(folder)
    x = inputs().numpy()
    f_ref, recon_ref = _jumprelu_reference(params, x.astype(np.float64))
    latents, recon = _outputs(d, torch.from_numpy(x))
    assert np.allclose(latents.numpy(), f_ref, atol=1e-5)
    assert np.allclose(recon.numpy(), recon_ref, atol=1e-5)
    assert (latents.numpy() > 0).sum() == (f_ref > 0).sum()
    assert d.cfg.method == "jumprelu" and not d.cfg.apply_b_dec_to_input
    assert d.meta["source"]["layer"] == 12 and d.meta["source"]["average_l0"] == 82
    if negative_thresholds:
        assert d.meta["negative_thresholds_clamped"] == 5
    # The same file loads by its own name, and a Hub-style path names model and hookpoint.
    assert torch.equal(saekit.load(folder / "params.npz").W_enc, d.W_enc)
    named = gemma_scope.load(folder, repo_id="google/gemma-scope-2b-pt-res",
                             subfolder="layer_12/width_16k/average_l0_82")
    assert named.provenance.model_name == "google/gemma-2-2b" and named.provenance.hookpoint == "resid_post.12"


def test_gemma_scope_2_skip_transcoder(tmp_path):
    """Gemma Scope 2: params.safetensors with lower-case w_enc/w_dec, config.json naming Hugging Face
    hook points, and an affine skip connection stored [d_in, d_out] (x @ A)."""
    rng = np.random.default_rng(3)
    params = {"w_enc": rng.normal(0, 0.3, (D_IN, D_SAE)), "w_dec": rng.normal(0, 0.3, (D_SAE, D_OUT)),
              "b_enc": rng.normal(0, 0.3, D_SAE), "b_dec": rng.normal(0, 0.3, D_OUT),
              "threshold": rng.uniform(0, 0.5, D_SAE), "affine_skip_connection": rng.normal(0, 0.3, (D_IN, D_OUT))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    folder = tmp_path / "transcoder_all" / "layer_5_width_16k_l0_big_affine"
    folder.mkdir(parents=True)
    save_file({k: torch.from_numpy(v) for k, v in params.items()}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": "gemma-v3-1b-pt", "affine_connection": True,
        "hf_hook_point_in": "model.layers.5.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.5.post_feedforward_layernorm.output"}))
    d = saekit.load(folder)
    assert d.cfg.is_transcoder and d.cfg.skip_connection and d.cfg.d_out == D_OUT
    assert d.provenance.model_name == "google/gemma-3-1b-pt"
    assert d.provenance.hookpoint == "model.layers.5.pre_feedforward_layernorm"
    assert d.provenance.target_hookpoint == "model.layers.5.post_feedforward_layernorm"
    assert d.meta["source"]["layer"] == 5 and d.meta["source"]["width"] == "16k" and d.meta["source"]["l0"] == "big"
    x = inputs().numpy().astype(np.float64)
    f_ref, _ = _jumprelu_reference({"W_enc": params["w_enc"], "W_dec": params["w_dec"], **params}, x)
    out_ref = f_ref @ params["w_dec"] + params["b_dec"] + x @ params["affine_skip_connection"]
    latents, out = _outputs(d, torch.from_numpy(x).float())
    assert np.allclose(latents.numpy(), f_ref, atol=1e-5) and np.allclose(out.numpy(), out_ref, atol=1e-5)


def test_gemma_scope_write_and_convert(tmp_path):
    d = random_dictionary("jumprelu")  # subtracts b_dec: written re-expressed for Gemma Scope
    gemma_scope.save(d, tmp_path / "gs")
    with np.load(tmp_path / "gs" / "params.npz") as data:
        params = {k: data[k] for k in data.files}
    assert params["W_enc"].shape == (D_IN, D_SAE) and params["W_dec"].shape == (D_SAE, D_IN)
    x = inputs()
    f_ref, recon_ref = _jumprelu_reference(params, x.double().numpy())
    assert np.allclose(d.encode(x).numpy(), f_ref, atol=1e-5)
    assert np.allclose(d(x).numpy(), recon_ref, atol=1e-5)
    code = main(["convert", str(tmp_path / "gs"), str(tmp_path / "lens"), "--to", "saelens",
                 "--model-name", "google/gemma-2-2b", "--hookpoint", "model.layers.3"])
    assert code == 0
    lens = saekit.load(tmp_path / "lens")
    assert lens.provenance.model_name == "google/gemma-2-2b" and lens.provenance.hookpoint == "model.layers.3"
    assert torch.allclose(lens(x), d(x), atol=1e-5)


# ------------------------------------------------------------------------------- dictionary_learning
class _Payload:
    """Unpickling this runs code (it would create `marker`): weights_only must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_dictionary_learning_pickle_is_loaded_weights_only(tmp_path, monkeypatch):
    d = random_dictionary("topk")
    dl.save(d, tmp_path / "trainer_0")
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = saekit.load(tmp_path / "trainer_0")
    assert seen == [True]
    assert torch.equal(loaded(inputs()), d(inputs()))
    monkeypatch.setattr(torch, "load", real_load)

    marker = tmp_path / "pwned"
    state = {"encoder.weight": torch.zeros(3, 2), "evil": _Payload(marker)}
    torch.save(state, tmp_path / "trainer_0" / "ae.pt")
    with pytest.raises(saekit.SaekitError, match="weights_only=True") as info:
        saekit.load(tmp_path / "trainer_0")
    assert not marker.exists() and "\n" not in str(info.value)
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(saekit.SaekitError):
        saekit.load(tmp_path / "raw.pt")
    assert not marker.exists()


def test_dictionary_learning_bare_ae_pt_needs_no_config(tmp_path):
    d = random_dictionary("gated")
    _, state = dl.export_state_dict(d)
    torch.save(state, tmp_path / "ae.pt")
    loaded = saekit.load(tmp_path / "ae.pt")
    assert loaded.cfg.method == "gated" and torch.equal(loaded(inputs()), d(inputs()))
    _, state = dl.export_state_dict(random_dictionary("topk"))
    torch.save(state, tmp_path / "topk.pt")
    with pytest.raises(saekit.SaekitError, match="dict_class="):
        saekit.load(tmp_path / "topk.pt")
    assert saekit.load(tmp_path / "topk.pt", dict_class="AutoEncoderTopK").cfg.method == "topk"


# ------------------------------------------------------------------------------ errors and detection
def _corrupt_cases(tmp_path):
    d = random_dictionary("topk")
    for fmt in ("saelens", "sparsify", "dictionary_learning"):
        detect.save_as(d, tmp_path / fmt, fmt)
    gemma_scope.save(random_dictionary("jumprelu"), tmp_path / "gemma")
    return {"saelens": tmp_path / "saelens" / "sae_weights.safetensors",
            "sparsify": tmp_path / "sparsify" / "sae.safetensors",
            "dictionary_learning": tmp_path / "dictionary_learning" / "ae.pt",
            "gemma_scope": tmp_path / "gemma" / "params.npz"}


@pytest.mark.faults  # kill points and damaged files (the fault-injection suite)
@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "dictionary_learning", "gemma_scope"])
@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_files_give_one_line_errors(tmp_path, fmt, damage):
    path = _corrupt_cases(tmp_path)[fmt]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00garbage" * 40)
    with pytest.raises(saekit.SaekitError) as info:
        saekit.load(path.parent)
    message = str(info.value)
    assert "\n" not in message and str(path.parent) in message
    assert any(word in message for word in ("re-save", "re-download", "corrupted"))


def test_unknown_and_ambiguous_folders(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"1234")
    with pytest.raises(saekit.SaekitError, match="params.npz; pass the folder"):
        saekit.load(tmp_path / "junk")
    run = tmp_path / "run"
    for layer in (2, 3):
        detect.save_as(random_dictionary("topk", seed=layer), run / f"layers.{layer}", "sparsify")
    with pytest.raises(saekit.SaekitError, match=r"holds 2 dictionaries \(layers.2, layers.3\)"):
        saekit.load(run)
    assert torch.equal(saekit.load(run, subfolder="layers.3").W_enc, random_dictionary("topk", seed=3).W_enc)
    with pytest.raises(saekit.SaekitError, match="unknown format 'onnx'"):
        detect.save_as(random_dictionary("topk"), tmp_path / "x", "onnx")
    with pytest.raises(saekit.SaekitError, match="cannot write format 'gemma_scope'"):
        detect.save_as(random_dictionary("jumprelu"), tmp_path / "x", "gemma_scope")
    with pytest.raises(saekit.SaekitError, match="only per-token TopK"):
        detect.save_as(random_dictionary("relu"), tmp_path / "x", "sparsify")
    with pytest.raises(saekit.SaekitError, match="no such dictionary"):
        saekit.load(tmp_path / "run" / "layers.9")


def test_sparsify_bf16_stays_bf16_unless_asked(tmp_path):
    d = random_dictionary("topk", dtype=torch.bfloat16)
    detect.save_as(d, tmp_path / "layers.3", "sparsify")
    loaded = saekit.load(tmp_path / "layers.3")
    assert loaded.W_dec.dtype == torch.bfloat16
    up = saekit.load(tmp_path / "layers.3", dtype=torch.float32)
    assert up.W_dec.dtype == torch.float32 and up.meta["upcast_from"] == "bfloat16"
    assert torch.equal(up.W_enc, d.W_enc.float())


# ---------------------------------------------------------------------------- loaded = native, Hub
def test_loaded_dictionaries_evaluate_like_native_ones(tmp_path):
    d = random_dictionary("jumprelu")
    detect.save_as(d, tmp_path / "dl", "dictionary_learning")
    loaded = saekit.load(tmp_path / "dl")
    x = inputs(256)
    native = saekit.evaluate(d, [x])
    foreign = saekit.evaluate(loaded, [x])
    for key in ("l0", "mse", "fvu"):
        assert foreign[key] == pytest.approx(native[key], rel=1e-5, abs=1e-7), key
    saekit.save(loaded, tmp_path / "native")  # a loaded dictionary saves natively too
    assert saekit.load(tmp_path / "native").meta["source"]["format"] == "dictionary_learning"


def test_hub_ids_go_through_snapshot_download(tmp_path, monkeypatch):
    repo = tmp_path / "hub-cache" / "snapshot"
    d = random_dictionary("topk")
    detect.save_as(d, repo / "layers.3", "sparsify")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(repo)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(hub, "list_repo_files", lambda repo_id, revision=None: [
        "README.md", "layers.3/cfg.json", "layers.3/sae.safetensors", "layers.4/cfg.json"])
    monkeypatch.chdir(tmp_path)
    loaded = saekit.load("EleutherAI/sae-pythia-70m-32k", subfolder="layers.3", revision="main")
    assert calls == [("EleutherAI/sae-pythia-70m-32k", "main", ["layers.3/*"])]
    assert loaded.meta["source"]["repo_id"] == "EleutherAI/sae-pythia-70m-32k"
    assert torch.equal(loaded(inputs()), d(inputs()))
    with pytest.raises(saekit.SaekitError, match="no folder 'layers.9'"):
        saekit.load("EleutherAI/sae-pythia-70m-32k", subfolder="layers.9")
    # Without a subfolder, a repository of per-layer folders is listed, not downloaded whole.
    with pytest.raises(saekit.SaekitError, match=r"2 dictionaries in folders \(layers.3, layers.4\)"):
        saekit.load("EleutherAI/sae-pythia-70m-32k")
    assert len(calls) == 2

    def offline(**kwargs):
        raise OSError("offline mode is enabled")

    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: offline())
    monkeypatch.setattr(hub, "list_repo_files", lambda *a, **k: offline())
    with pytest.raises(saekit.SaekitError, match="cannot download 'org/name'"):
        saekit.load("org/name")
    (tmp_path / "runs").mkdir()
    with pytest.raises(saekit.SaekitError, match="no such dictionary"):
        saekit.load("runs/typo")  # a local parent folder: a mistyped path, not a repository


# ---------------------------------------------------------------------------------------- CLI
def test_convert_cli(tmp_path, capsys):
    d = random_dictionary("topk")
    saekit.save(d, tmp_path / "native")
    x = inputs()
    for fmt in ("saelens", "sparsify", "dictionary_learning"):
        code = main(["convert", str(tmp_path / "native"), str(tmp_path / fmt), "--to", fmt])
        out = capsys.readouterr().out
        assert code == 0 and f"({fmt}) from saekit: topk" in out
        assert detect.detect_format(tmp_path / fmt) == fmt
        assert torch.equal(saekit.load(tmp_path / fmt)(x), d(x))
    code = main(["convert", str(tmp_path / "sparsify"), str(tmp_path / "bf16"), "--to", "saekit",
                 "--dtype", "bf16"])
    assert code == 0 and "dtype=bfloat16" in capsys.readouterr().out
    code = main(["convert", str(tmp_path / "nothing"), str(tmp_path / "o"), "--to", "saelens"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no such dictionary" in err
    saekit.save(random_dictionary("relu"), tmp_path / "relu")
    code = main(["convert", str(tmp_path / "relu"), str(tmp_path / "o"), "--to", "sparsify"])
    err = capsys.readouterr().err
    assert code == 2 and "--to saelens or dictionary_learning" in err
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "relu"), str(tmp_path / "o"), "--to", "onnx"])
    code = main(["info", str(tmp_path / "dictionary_learning")])
    assert code == 0 and json.loads(capsys.readouterr().out)["meta"]["source"]["format"] == \
        "dictionary_learning"


def test_native_directories_keep_loading_and_saving(tmp_path):
    d = random_dictionary("matryoshka")
    saekit.save(d, tmp_path / "n")
    assert detect.detect_format(tmp_path / "n") == "saekit"
    loaded = saekit.load(tmp_path / "n")
    assert loaded.cfg == d.cfg and "source" not in loaded.meta
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_file({"sparsity": torch.zeros(D_SAE)}, str(tmp_path / "n" / "extra.safetensors"))
        assert saekit.load(tmp_path / "n").cfg == d.cfg


def test_foreign_dictionaries_get_the_same_dashboards(tmp_path, capsys):
    """A dictionary converted to dictionary_learning's format and stripped of everything saekit stashed
    beside it gets the same dashboard site as the native original (model named on the command line)."""
    model_dir, corpus, dict_dir = make_site_inputs(tmp_path)
    assert main(["convert", str(dict_dir), str(tmp_path / "dl"), "--to", "dictionary_learning"]) == 0
    config = json.loads((tmp_path / "dl" / "config.json").read_text())
    del config["saekit"]
    (tmp_path / "dl" / "config.json").write_text(json.dumps(config))
    common = ["--tokens", "600", "--dataset", str(corpus), "--context-size", "32",
              "--model-batch-size", "8", "--no-progress", "--model", str(model_dir)]
    sites = {}
    for name, source in (("native", dict_dir), ("foreign", tmp_path / "dl")):
        sites[name] = tmp_path / f"site-{name}"
        assert main(["dashboard", str(source), "--out", str(sites[name]), *common]) == 0
    capsys.readouterr()
    native = sorted(p.relative_to(sites["native"]) for p in sites["native"].rglob("*") if p.is_file())
    foreign = sorted(p.relative_to(sites["foreign"]) for p in sites["foreign"].rglob("*") if p.is_file())
    assert native == foreign and len(native) > 10
    differing = [p for p in native if (sites["native"] / p).read_bytes() != (sites["foreign"] / p).read_bytes()]
    assert differing == []

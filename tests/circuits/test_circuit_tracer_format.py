"""circuit-tracer's layout on saekit's side: exact file contents, round trips, what is refused and why,
and one-line errors for broken folders (mismatched layer counts, missing or truncated files). The real
circuit-tracer reads and writes these in tests/interop/test_circuit_tracer.py."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import saekit
from saekit.circuits import CrossLayerTranscoder
from saekit.circuits.transcoder_set import TranscoderSet
from saekit.cli import main
from saekit.formats.detect import detect_format, save_as
from saekit.io import OWNER_MARK
from tests.helpers import make, random_clt, random_transcoder_set

X = torch.randn(40, 3, 8, generator=torch.Generator().manual_seed(0)) * 2


SKIP = {"skip_connection": True}


@pytest.mark.parametrize(("method", "options"), [("relu", {}), ("jumprelu", {}), ("batchtopk", {}), ("matryoshka", {}),
                                                 ("gated", {}), ("jumprelu", SKIP), ("relu", SKIP)])
def test_transcoder_sets_round_trip(tmp_path, method, options):
    tset = random_transcoder_set(method, **options)
    save_as(tset, tmp_path / "ct", "circuit-tracer")
    assert detect_format(tmp_path / "ct") == "circuit-tracer"
    files = sorted(p.name for p in (tmp_path / "ct").iterdir() if p.name != OWNER_MARK)
    assert files == ["config.yaml", "layer_0.safetensors", "layer_1.safetensors", "layer_2.safetensors"]
    tensors = load_file(str(tmp_path / "ct" / "layer_1.safetensors"))
    names = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"W_skip"} if options else set())
    if method != "relu":
        names.add("activation_function.threshold")
    assert set(tensors) == names  # nothing circuit-tracer's strict loader would refuse (no `k`)
    assert tensors["W_enc"].shape == (16, 8) and tensors["W_dec"].shape == (16, 8)
    config = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set"
    assert (config["feature_input_hook"], config["feature_output_hook"]) == ("mlp.hook_in", "mlp.hook_out")
    back = saekit.load(tmp_path / "ct")
    assert isinstance(back, TranscoderSet)
    torch.testing.assert_close(back(X), tset(X), atol=1e-5, rtol=1e-5)
    assert back.input_hookpoints == tset.input_hookpoints and back.model_name == "tiny"
    assert back[0].cfg.method == ("relu" if method == "relu" else "jumprelu")


@pytest.mark.parametrize("method", ["relu", "jumprelu", "batchtopk"])
@pytest.mark.parametrize("max_reach", [None, 1])
def test_clts_round_trip(tmp_path, method, max_reach):
    clt = random_clt(method, max_reach=max_reach)
    clt.provenance.model_name = "tiny"
    save_as(clt, tmp_path / "ct", "circuit-tracer")
    files = sorted(p.name for p in (tmp_path / "ct").iterdir() if p.name != OWNER_MARK)
    assert files == ["W_dec_0.safetensors", "W_dec_1.safetensors", "W_dec_2.safetensors", "W_enc_0.safetensors",
                     "W_enc_1.safetensors", "W_enc_2.safetensors", "config.yaml"]
    encoder = load_file(str(tmp_path / "ct" / "W_enc_1.safetensors"))
    expected = {"W_enc_1", "b_enc_1", "b_dec_1"} | ({"threshold_1"} if method != "relu" else set())
    assert set(encoder) == expected and encoder["W_enc_1"].shape == (16, 8)
    assert load_file(str(tmp_path / "ct" / "W_dec_1.safetensors"))["W_dec_1"].shape == (16, 2, 8)
    back = saekit.load(tmp_path / "ct")
    assert isinstance(back, CrossLayerTranscoder)
    torch.testing.assert_close(back(X), clt(X), atol=1e-5, rtol=1e-5)
    assert back.cfg.method == method and back.provenance.model_name == "tiny"  # restored from saekit's section
    assert back.input_hookpoints == ["mlp_in.0", "mlp_in.1", "mlp_in.2"]


def test_what_circuit_tracer_cannot_hold_is_refused(tmp_path):
    cases = [
        (random_transcoder_set("topk"), "cannot hold topk transcoders.*come back as ReLU"),
        (random_transcoder_set("relu", layers=(1, 2, 3)), r"covers layers \[1, 2, 3\]"),
        (random_transcoder_set("relu", layers=(0, 2)), r"covers layers \[0, 2\]"),
        (random_clt("topk"), "JumpReLU or ReLU; a topk CLT has no threshold"),
        (make("relu", d_in=8, d_sae=16, transcoder=True), "not single dictionaries"),
    ]
    unestimated = random_clt("batchtopk")
    unestimated.threshold.fill_(-1.0)
    cases.append((unestimated, "no inference threshold yet"))
    mixed = random_transcoder_set("relu")
    mixed.transcoders[1] = make("relu", d_in=8, d_sae=32, transcoder=True)
    mixed.transcoders[1].provenance = mixed.transcoders[0].provenance.__class__(
        hookpoint="mlp_in.1", target_hookpoint="mlp_out.1")
    cases.append((mixed, r"one width; this set's layers have \[16, 32\]"))
    for obj, message in cases:
        with pytest.raises(saekit.SaekitError, match=message) as info:
            save_as(obj, tmp_path / "out", "circuit-tracer")
        assert "\n" not in str(info.value)
        assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(saekit.SaekitError, match="saelens holds single dictionaries, not a transcoder set"):
        save_as(random_transcoder_set("relu"), tmp_path / "out", "saelens")


def _written(tmp_path, obj):
    save_as(obj, tmp_path / "ct", "circuit-tracer")
    return tmp_path / "ct"


@pytest.mark.parametrize(("break_it", "message"), [
    (lambda p: (p / "layer_1.safetensors").unlink(), "none for layer 1: mismatched layer count"),
    (lambda p: (p / "layer_2.safetensors").write_bytes((p / "layer_2.safetensors").read_bytes()[:-50]),
     r"cannot read .*layer_2.safetensors"),
    (lambda p: (p / "config.yaml").write_text("model_kind: [unclosed"), "is not valid YAML"),
    (lambda p: (p / "config.yaml").write_text("model_kind: sae"), "model_kind 'sae'"),
    (lambda p: (p / "config.yaml").write_text("model_kind: transcoder_set\ntranscoders: [hf://org/x/layer_0.st]"),
     "names files on the Hugging Face Hub"),
    (lambda p: (p / "config.yaml").write_text("model_kind: transcoder_set\ntranscoders: [../../etc/passwd]"),
     "refusing layer file name"),
    (lambda p: save_file({"W_enc": torch.zeros(32, 8), "b_enc": torch.zeros(32), "W_dec": torch.zeros(32, 8),
                          "b_dec": torch.zeros(8)}, str(p / "layer_1.safetensors")), "different widths"),
    (lambda p: save_file({"W_enc": torch.zeros(16, 8), "b_enc": torch.zeros(16), "W_dec": torch.zeros(16, 8),
                          "b_dec": torch.zeros(8), "k": torch.tensor(4)}, str(p / "layer_1.safetensors")),
     "refuses extra keys"),
])
def test_broken_transcoder_set_folders_are_one_line_errors(tmp_path, break_it, message):
    folder = _written(tmp_path, random_transcoder_set("jumprelu"))
    break_it(folder)
    with pytest.raises(saekit.SaekitError, match=message) as info:
        saekit.load(folder)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("break_it", "message"), [
    (lambda p: (p / "W_dec_2.safetensors").unlink(), "mismatched layer counts: 3 encoder files .* but 2 decoder"),
    (lambda p: (p / "W_enc_1.safetensors").unlink(), "none for layer 1"),
    (lambda p: save_file({"W_dec_1": torch.zeros(16, 1, 8)}, str(p / "W_dec_1.safetensors")),
     r"W_dec_1 has shape \(16, 1, 8\), expected \(16, 2, 8\).*mismatched layer counts"),
    (lambda p: (p / "W_enc_0.safetensors").write_bytes(b"\x00" * 12), r"cannot read .*W_enc_0"),
    (lambda p: (p / "W_enc_3.safetensors").write_bytes((p / "W_enc_2.safetensors").read_bytes()),
     "mismatched layer counts: 4 encoder files"),
])
def test_broken_clt_folders_are_one_line_errors(tmp_path, break_it, message):
    folder = _written(tmp_path, random_clt("jumprelu"))
    break_it(folder)
    with pytest.raises(saekit.SaekitError, match=message) as info:
        saekit.load(folder)
    assert "\n" not in str(info.value)


def test_config_activation_topk_is_read_as_topk(tmp_path):
    """Newer circuit-tracer loaders read `activation: topk` + `k` from config.yaml; saekit does too."""
    folder = _written(tmp_path, random_transcoder_set("relu"))
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config.pop("saekit")
    config.update(activation="topk", k=3)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    back = saekit.load(folder)
    assert back[0].cfg.method == "topk" and back[0].cfg.k == 3
    assert bool(((back.encode(X) > 0).sum(-1) <= 3).all())


def test_gemma_scope_2_layer_files(tmp_path):
    """Gemma Scope 2 transcoders (w_enc [d, F], affine_skip_connection x·A) and CLTs (w_dec [F, L, d])
    listed in config.yaml load with the same outputs as the definitions."""
    g = torch.Generator().manual_seed(0)
    d, F, L = 8, 16, 3
    layers = []
    for i in range(L):
        tensors = {"w_enc": torch.randn(d, F, generator=g), "w_dec": torch.randn(F, d, generator=g),
                   "b_enc": torch.randn(F, generator=g), "b_dec": torch.randn(d, generator=g),
                   "threshold": torch.rand(F, generator=g), "affine_skip_connection": torch.randn(d, d, generator=g)}
        save_file(tensors, str(tmp_path / f"plt_{i}.safetensors"))
        layers.append(tensors)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out",
        "transcoders": [f"plt_{i}.safetensors" for i in range(L)]}))
    tset = saekit.load(tmp_path)
    for i, t in enumerate(layers):
        pre = X[:, i] @ t["w_enc"] + t["b_enc"]
        expected = (pre * (pre > t["threshold"])) @ t["w_dec"] + t["b_dec"] + X[:, i] @ t["affine_skip_connection"]
        torch.testing.assert_close(tset[i](X[:, i]), expected, atol=1e-4, rtol=1e-4)

    clt_dir = tmp_path / "clt"
    clt_dir.mkdir()
    clt_files = []
    for i in range(L):
        tensors = {"w_enc": torch.randn(d, F, generator=g), "w_dec": torch.randn(F, L, d, generator=g),
                   "b_enc": torch.randn(F, generator=g), "b_dec": torch.randn(d, generator=g),
                   "threshold": torch.rand(F, generator=g)}
        save_file(tensors, str(clt_dir / f"l{i}.safetensors"))
        clt_files.append(tensors)
    (clt_dir / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder", "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out", "transcoders": [f"l{i}.safetensors" for i in range(L)]}))
    clt = saekit.load(clt_dir)
    acts = []
    for i, t in enumerate(clt_files):
        pre = X[:, i] @ t["w_enc"] + t["b_enc"]
        acts.append(pre * (pre > t["threshold"]))
    for target in range(L):
        writes = [acts[s] @ clt_files[s]["w_dec"][:, target] for s in range(target + 1)]
        expected = clt_files[target]["b_dec"] + sum(writes)
        torch.testing.assert_close(clt(X)[:, target], expected, atol=1e-4, rtol=1e-4)
    assert clt.input_hookpoints[1] == "blocks.1.hook_resid_mid"


def test_convert_command_writes_and_reads_circuit_tracer(tmp_path, capsys):
    saekit.save(random_clt("jumprelu"), tmp_path / "clt")
    assert main(["convert", str(tmp_path / "clt"), str(tmp_path / "ct"), "--to", "circuit-tracer"]) == 0
    out = capsys.readouterr().out
    assert "cross-layer transcoder" in out and "circuit-tracer" in out
    assert main(["convert", str(tmp_path / "ct"), str(tmp_path / "back"), "--to", "saekit"]) == 0
    torch.testing.assert_close(saekit.load(tmp_path / "back")(X), saekit.load(tmp_path / "clt")(X))
    saekit.save(random_transcoder_set("topk"), tmp_path / "set")
    assert main(["convert", str(tmp_path / "set"), str(tmp_path / "ct2"), "--to", "circuit-tracer"]) == 2
    err = capsys.readouterr().err
    assert "cannot hold topk transcoders" in err and len(err.strip().splitlines()) == 1


def test_negative_thresholds_keep_circuit_tracers_meaning(tmp_path):
    """circuit-tracer computes h·1[h > θ] with no ReLU, so a negative θ lets small negative
    pre-activations through; saekit's JumpReLU computes the same and must not clamp θ."""
    folder = _written(tmp_path, random_transcoder_set("jumprelu"))
    tensors = load_file(str(folder / "layer_0.safetensors"))
    tensors["activation_function.threshold"] = -torch.rand(16) * 0.5
    save_file(tensors, str(folder / "layer_0.safetensors"))
    tset = saekit.load(folder)
    pre = X[:, 0] @ tensors["W_enc"].T + tensors["b_enc"]
    expected = pre * (pre > tensors["activation_function.threshold"])
    assert bool((expected < 0).any())
    torch.testing.assert_close(tset.encode_layer(0, X[:, 0]), expected)

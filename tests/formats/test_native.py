"""saekit's own format: round trips, SAELens's cfg.json, the manifest, and files of earlier versions."""

import json

import pytest
import torch
from safetensors.torch import load_file

import saekit
from saekit.formats.saelens import architectures
from tests.helpers import FIXTURES_V1, METHODS, make


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_gives_identical_outputs(method, tmp_path, generator):
    d = make(method)
    d.log_feature_density = torch.rand(32, generator=generator).log10()
    d.meta["normalization"] = {"input_scale": 0.5}
    d.provenance.hookpoint = "resid_post.3"
    saekit.save(d, tmp_path / "dict")
    loaded = saekit.load(tmp_path / "dict")
    x = torch.randn(50, 12, generator=generator)
    assert torch.equal(loaded.encode(x), d.encode(x))
    assert torch.equal(loaded(x), d(x))
    assert loaded.cfg == d.cfg and loaded.provenance == d.provenance
    assert loaded.meta["normalization"]["input_scale"] == 0.5
    assert torch.equal(loaded.log_feature_density, d.log_feature_density)
    cfg = json.loads((tmp_path / "dict" / "cfg.json").read_text())
    assert cfg["d_in"] == 12 and cfg["d_sae"] == 32 and cfg["metadata"]["hook_name"] == "resid_post.3"
    assert cfg["apply_b_dec_to_input"] == (method != "relu")
    assert cfg["architecture"] == d.method.saelens_architecture  # SAELens's writer output
    assert architectures()[cfg["architecture"]] in (method, "jumprelu")
    assert (tmp_path / "dict" / "sparsity.safetensors").exists()
    manifest = json.loads((tmp_path / "dict" / "manifest.json").read_text())
    assert set(manifest["sha256"]) == {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors"}


def test_dictionaries_saelens_cannot_hold_get_a_saekit_architecture(tmp_path):
    from saekit.config import DictionaryConfig
    from saekit.dictionary import Dictionary

    crosscoder = Dictionary(DictionaryConfig(method="topk", d_in=8, d_sae=16, k=2, n_sources=2))
    unset = make("batchtopk")
    with torch.no_grad():
        unset.threshold.fill_(-1.0)  # no inference threshold yet: SAELens would fire on everything
    for name, d in (("crosscoder", crosscoder), ("unset", unset)):
        saekit.save(d, tmp_path / name)
        cfg = json.loads((tmp_path / name / "cfg.json").read_text())
        assert cfg["architecture"] == f"saekit:{d.cfg.method}"
        assert saekit.load(tmp_path / name).cfg == d.cfg


def test_save_replaces_existing_directory_atomically(tmp_path):
    saekit.save(make("topk", seed=1), tmp_path / "d")
    saekit.save(make("topk", seed=2), tmp_path / "d")
    assert torch.equal(saekit.load(tmp_path / "d").W_enc, make("topk", seed=2).W_enc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize("name", ["sae_weights.safetensors", "cfg.json", "sparsity.safetensors"])
def test_any_changed_byte_is_detected(tmp_path, name, generator):
    d = make("topk")
    d.log_feature_density = torch.rand(32, generator=generator)
    saekit.save(d, tmp_path / "d")
    path = tmp_path / "d" / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(saekit.SaekitError, match=f"{name} fails its checksum"):
        saekit.load(tmp_path / "d")


def test_an_edited_config_value_is_detected(tmp_path):
    """A flipped k (which would make eval report the wrong L0) is caught by the manifest."""
    saekit.save(make("topk"), tmp_path / "d")
    path = tmp_path / "d" / "cfg.json"
    path.write_text(path.read_text().replace('"k": 4', '"k": 5'))
    with pytest.raises(saekit.SaekitError, match="cfg.json fails its checksum"):
        saekit.load(tmp_path / "d")


def test_truncated_weights_are_detected(tmp_path):
    saekit.save(make("relu"), tmp_path / "d")
    path = tmp_path / "d" / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(saekit.SaekitError):
        saekit.load(tmp_path / "d")


def test_a_deleted_manifest_is_refused(tmp_path):
    saekit.save(make("relu"), tmp_path / "d")
    (tmp_path / "d" / "manifest.json").unlink()
    with pytest.raises(saekit.SaekitError, match="no manifest.json"):
        saekit.load(tmp_path / "d")


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"d_in": 3}', "no saekit section"),
    ('{"saekit": {"format_version": 99, "config": {}}}', "format version"),
])
def test_bad_configs_give_clear_errors(tmp_path, content, match):
    saekit.save(make("relu"), tmp_path / "d")
    (tmp_path / "d" / "cfg.json").write_text(content)
    (tmp_path / "d" / "manifest.json").unlink()  # as if written by hand, without a manifest
    with pytest.raises(saekit.SaekitError, match=match):
        saekit.load(tmp_path / "d")


def test_manifest_names_cannot_leave_the_folder(tmp_path):
    saekit.save(make("relu"), tmp_path / "d")
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["sha256"]["../../etc/passwd"] = "0" * 64
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(saekit.SaekitError, match="refusing file name"):
        saekit.load(tmp_path / "d")


def test_missing_directory(tmp_path):
    with pytest.raises(saekit.SaekitError, match="no such"):
        saekit.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(saekit.SaekitError, match="not a saekit dictionary"):
        saekit.load(tmp_path / "empty")


@pytest.mark.parametrize("name", ["relu", "gated", "jumprelu", "topk", "batchtopk", "matryoshka",
                                  "transcoder_skip", "transcoder_jumprelu", "crosscoder"])
def test_dictionaries_written_by_format_1_still_load_with_the_same_outputs(name):
    """Fixtures written by saekit at stop 12 (format 1: one flat config, no manifest), with the inputs
    and outputs that version computed (tests/formats/fixtures/format_v1)."""
    expected = load_file(str(FIXTURES_V1 / "expected.safetensors"))
    d = saekit.load(FIXTURES_V1 / name)
    x = expected["x2"] if name == "crosscoder" else expected["x"]
    latents = d.encode(x)
    torch.testing.assert_close(latents, expected[f"{name}.latents"], rtol=0, atol=0)
    torch.testing.assert_close(d.decode(latents, x), expected[f"{name}.output"], rtol=0, atol=0)
    assert d.provenance.model_name == "tiny" and d.training_config is not None
    assert d.cfg.is_transcoder == name.startswith("transcoder")
    if d.cfg.is_transcoder:
        assert (d.provenance.hookpoint, d.provenance.target_hookpoint) == ("mlp_in.0", "mlp_out.0")
    if name == "crosscoder":
        assert d.cfg.n_sources == 2 and d.provenance.source_hookpoints == ["a/resid_post.0", "b/resid_post.0"]

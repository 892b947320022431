import json

import pytest
import torch

import saekit
from saekit.config import METHODS
from tests.test_dictionary import make


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_gives_identical_outputs(method, tmp_path, generator):
    d = make(method)
    d.log_feature_density = torch.rand(32, generator=generator).log10()
    d.meta["activation_scale"] = 0.5
    saekit.save(d, tmp_path / "dict")
    loaded = saekit.load(tmp_path / "dict")
    x = torch.randn(50, 12, generator=generator)
    assert torch.equal(loaded.encode(x), d.encode(x))
    assert torch.equal(loaded(x), d(x))
    assert loaded.cfg == d.cfg
    assert loaded.meta["activation_scale"] == 0.5
    assert torch.equal(loaded.log_feature_density, d.log_feature_density)
    cfg = json.loads((tmp_path / "dict" / "cfg.json").read_text())
    assert cfg["d_in"] == 12 and cfg["d_sae"] == 32
    assert cfg["apply_b_dec_to_input"] == (method != "relu")
    expected_arch = {"relu": "standard", "gated": "gated", "topk": "topk"}.get(method, "jumprelu")
    assert cfg["architecture"] == expected_arch
    assert (tmp_path / "dict" / "sparsity.safetensors").exists()


def test_save_replaces_existing_directory_atomically(tmp_path):
    saekit.save(make("topk", seed=1), tmp_path / "d")
    saekit.save(make("topk", seed=2), tmp_path / "d")
    assert torch.equal(saekit.load(tmp_path / "d").W_enc, make("topk", seed=2).W_enc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_corrupted_weights_are_detected(tmp_path):
    saekit.save(make("relu"), tmp_path / "d")
    path = tmp_path / "d" / "sae_weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(saekit.SaekitError, match="checksum"):
        saekit.load(tmp_path / "d")


def test_truncated_weights_are_detected(tmp_path):
    saekit.save(make("relu"), tmp_path / "d")
    path = tmp_path / "d" / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(saekit.SaekitError):
        saekit.load(tmp_path / "d")


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"d_in": 3}', "no saekit section"),
    ('{"saekit": {"format_version": 99, "config": {}}}', "format version"),
])
def test_bad_configs_give_clear_errors(tmp_path, content, match):
    saekit.save(make("relu"), tmp_path / "d")
    (tmp_path / "d" / "cfg.json").write_text(content)
    with pytest.raises(saekit.SaekitError, match=match):
        saekit.load(tmp_path / "d")


def test_missing_directory(tmp_path):
    with pytest.raises(saekit.SaekitError, match="no such"):
        saekit.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(saekit.SaekitError, match="not a saekit dictionary"):
        saekit.load(tmp_path / "empty")

"""Layer lists, finding MLPs, and transcoder sets: trained together from one stream they equal the
layers trained one by one; the set's reading surface; native folders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import saekit
from saekit.circuits import mlp_layer_count, parse_layers
from saekit.circuits.transcoder_set import TranscoderSet, transcoder_set_specs
from saekit.formats.detect import load_any
from saekit.io import OWNER_MARK
from tests.helpers import layer_stream, random_transcoder_set, tiny_gpt2, tiny_llama


@pytest.mark.parametrize(("text", "expected"), [
    ("all", list(range(10))), ("0,3,5", [0, 3, 5]), ("::2", [0, 2, 4, 6, 8]), ("4:7", [4, 5, 6]),
    ("8:", [8, 9]), ("0,4:6,4", [0, 4, 5]), ("-2:", [8, 9]), ([1, 2], [1, 2]), (" 7 ", [7]),
])
def test_layer_lists(text, expected):
    assert parse_layers(text, 10) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("10", "layer 10 is out of range: the model has 10 layers"), ("0,12", "layer 12 is out of range"),
    ("3:20", "out of range"), ("::0", "step 0"), ("a,b", "cannot read 'a'"), ("1,,2", "empty entry"),
    ("9:2", "selects no layer"),
])
def test_bad_layer_lists_are_one_line_errors(text, message):
    with pytest.raises(saekit.SaekitError, match=message) as info:
        parse_layers(text, 10)
    assert "\n" not in str(info.value)


def test_mlp_layers_are_found_and_missing_ones_reported():
    assert mlp_layer_count(tiny_llama(40, layers=3)) == 3
    assert mlp_layer_count(tiny_gpt2(40)) == 2

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.Linear(4, 4)

    class NoMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.Module()
            self.transformer.h = nn.ModuleList([Block(), Block()])

    with pytest.raises(saekit.SaekitError, match=r"cannot find the MLP modules of NoMLP \(no transformer.h.0.mlp\)"):
        mlp_layer_count(NoMLP())
    with pytest.raises(saekit.SaekitError, match="cannot find the MLP modules of Linear"):
        mlp_layer_count(nn.Linear(3, 3))


def test_a_set_trained_together_equals_its_layers_trained_one_by_one():
    """Summing the layers' losses does not couple them (METHODS-2 §1.7 check 1): same batches, same seeds,
    same weights, bit for bit."""
    options = dict(total_tokens=20 * 256, batch_size=256, progress=False, normalization_tokens=512)
    specs = transcoder_set_specs([0, 1, 2], 8, method="topk", d_sae=24, k=3, lr=3e-3)
    together = saekit.train(layer_stream(batches=20), specs, **options)
    for spec, trained in zip(specs, together):
        (alone,) = saekit.train(layer_stream(batches=20), [spec], **options)
        for name, tensor in trained.weights().items():
            assert torch.equal(tensor, alone.weights()[name]), (spec.name, name)
    tset = TranscoderSet.from_training(specs, together)
    assert tset.layers == [0, 1, 2] and tset.name == "transcoders-topk-k3-24"
    assert tset.input_hookpoints == ["mlp_in.0", "mlp_in.1", "mlp_in.2"]
    assert [s.name for s in specs] == [f"transcoders-topk-k3-24.layer_{i}" for i in range(3)]
    assert [s.training.seed for s in specs] == [0, 1, 2]


def test_set_specs_refuse_per_layer_options():
    with pytest.raises(saekit.SaekitError, match="hookpoint is set per layer"):
        transcoder_set_specs([0], 8, method="topk", d_sae=8, k=2, hookpoint="resid_post.0")


def test_the_reading_surface_of_a_set():
    tset = random_transcoder_set("jumprelu", layers=(2, 3), skip_connection=True)
    x = torch.randn(10, 8)
    latents = tset.encode_layer(1, x)
    torch.testing.assert_close(latents, tset[1].encode(x))
    torch.testing.assert_close(tset.decode_layer(1, [None, latents], x), tset[1](x))
    assert tset.decoder(0, 1) is None and tset.decoder(1, 1) is tset[1].W_dec
    assert tset.skip(0) is tset[0].W_skip and tset.position(3) == 1
    torch.testing.assert_close(tset.decode_source(0, tset.encode_layer(0, x))[:, 0] + tset.decoder_bias(0)
                               + x @ tset.skip(0).T, tset[0](x))
    with pytest.raises(saekit.SaekitError, match="no layer 7"):
        tset.position(7)


def test_native_set_folders_round_trip_and_detect_tampering(tmp_path):
    tset = random_transcoder_set("batchtopk", layers=(0, 1, 2))
    saekit.save(tset, tmp_path / "set")
    files = sorted(p.name for p in (tmp_path / "set").iterdir() if p.name != OWNER_MARK)
    assert files == ["layer_0", "layer_1", "layer_2", "transcoder_set.json"]
    back = saekit.load(tmp_path / "set")
    x = torch.randn(16, 3, 8)
    assert isinstance(back, TranscoderSet) and back.layers == [0, 1, 2]
    torch.testing.assert_close(back(x), tset(x))
    assert saekit.load(tmp_path / "set" / "layer_1").cfg.method == "batchtopk"  # a layer loads on its own
    with pytest.raises(saekit.SaekitError, match="is a transcoder set"):
        load_any(tmp_path / "set")
    # a layer swapped for another dictionary is detected
    other = random_transcoder_set("batchtopk", layers=(0, 1, 2), seed=9)
    saekit.save(other[1], tmp_path / "set" / "layer_1")
    with pytest.raises(saekit.SaekitError, match="does not match the transcoder set's manifest"):
        saekit.load(tmp_path / "set")


@pytest.mark.parametrize("kind", ["set", "clt"])
@pytest.mark.parametrize("to", ["saekit", "circuit-tracer"])
def test_sets_and_clts_replace_only_what_saekit_wrote(tmp_path, kind, to):
    from saekit.formats.detect import save_as
    from tests.helpers import random_clt

    obj = random_transcoder_set("jumprelu") if kind == "set" else random_clt("jumprelu")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not saekit's")
    with pytest.raises(saekit.SaekitError, match="was not written by saekit") as info:
        save_as(obj, foreign, to)
    assert "\n" not in str(info.value) and (foreign / "notes.txt").read_text() == "not saekit's"
    save_as(obj, foreign, to, overwrite=True)
    assert not (foreign / "notes.txt").exists() and (foreign / OWNER_MARK).is_file()
    save_as(obj, foreign, to)  # saekit's own folder: replaced without asking
    assert type(saekit.load(foreign)) is type(obj)


@pytest.mark.parametrize("to", ["saekit", "circuit-tracer"])
def test_non_finite_clts_are_neither_saved_nor_loaded(tmp_path, to):
    from safetensors.torch import load_file, save_file

    from saekit.formats.detect import save_as
    from tests.helpers import random_clt

    clt = random_clt("jumprelu")
    with torch.no_grad():
        clt.W_dec[1][0, 3, 2] = float("nan")
    with pytest.raises(saekit.SaekitError, match="NaN or inf"):
        save_as(clt, tmp_path / "bad", to)
    assert not (tmp_path / "bad").exists()
    with torch.no_grad():
        clt.W_dec[1][0, 3, 2] = 0.0
    save_as(clt, tmp_path / "ok", to)
    name = "W_enc_1.safetensors" if to == "circuit-tracer" else "layer_1.safetensors"
    tensors = load_file(str(tmp_path / "ok" / name))
    key = "b_enc_1" if to == "circuit-tracer" else "b_enc"
    tensors[key][0] = float("inf")
    save_file(tensors, str(tmp_path / "ok" / name))
    if to == "saekit":  # the checksum catches the edit first; a consistent manifest still gets the check
        import json

        from saekit.io import sha256_file

        manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
        manifest["sha256"][name] = sha256_file(tmp_path / "ok" / name)
        (tmp_path / "ok" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(saekit.SaekitError, match="NaN or inf"):
        saekit.load(tmp_path / "ok")

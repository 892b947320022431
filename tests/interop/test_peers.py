"""saekit against the real SAELens, sparsify and dictionary_learning, installed from PyPI.

The peers live in their own virtual environment (`tests/interop/peer_env.sh` builds
`.cache/peer-venv`; their pins clash with saekit's, and saekit must not import them). One subprocess runs
`peer_helper.py` in that environment: it builds and saves dictionaries of every architecture with each
library's own classes and records the library's own encode/forward outputs on shared inputs, and it loads
the dictionaries saekit wrote in each format and records the same outputs. The tests here compare those
with saekit's, to 1e-5.

Marked `peers`. They run with the rest of the suite (CI included); the first run builds the peer
environment (a few minutes, see the README), later runs reuse it. Deselect with `-m "not peers"`, or set
SAEKIT_PEER_TESTS=0 to skip them where PyPI is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import saekit
from saekit.formats import detect
from tests.helpers import HOOK, LM, inputs, random_dictionary

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-5

# Dictionaries the peers create (names must match peer_helper.py's `create`).
PEER_CASES = {
    # SAELens: every inference architecture, transcoders, and training checkpoints
    "saelens_standard": "relu", "saelens_standard_no_bdec": "relu", "saelens_gated": "gated",
    "saelens_jumprelu": "jumprelu", "saelens_topk": "topk", "saelens_topk_rescaled": "topk",
    "saelens_batchtopk": "batchtopk", "saelens_batchtopk_checkpoint": "batchtopk",
    "saelens_matryoshka": "matryoshka", "saelens_matryoshka_checkpoint": "matryoshka",
    "saelens_transcoder": "relu", "saelens_skip_transcoder": "relu",
    "saelens_jumprelu_transcoder": "jumprelu", "saelens_jumprelu_skip_transcoder": "jumprelu",
    "saelens_scaled_checkpoint": "relu", "saelens_matching_pursuit": "matching_pursuit",
    # sparsify: TopK SAE, transcoders with and without skip, a bf16 release-like file
    "sparsify_topk": "topk", "sparsify_transcoder": "topk", "sparsify_transcoder_skip": "topk",
    "sparsify_bf16": "topk",
    # dictionary_learning: each dictionary class, trained by the library's own trainers
    "dl_standard": "relu", "dl_april": "relu", "dl_autoencodernew": "relu", "dl_gated": "gated",
    "dl_topk": "topk", "dl_batchtopk": "batchtopk", "dl_jumprelu": "jumprelu",
    "dl_matryoshka": "matryoshka",
}

TRANSCODER = dict(target_hookpoint="blocks.3.hook_mlp_out", d_out=12)
SQUARE = dict(target_hookpoint="blocks.3.hook_mlp_out")
# Dictionaries saekit writes for the peers to load: (format, method, overrides, dtype).
SAEKIT_CASES = {
    "to_saelens_relu": ("saelens", "relu", {}, torch.float32),
    "to_saelens_relu_bdec": ("saelens", "relu", dict(apply_b_dec_to_input=True), torch.float32),
    "to_saelens_gated": ("saelens", "gated", {}, torch.float32),
    "to_saelens_jumprelu": ("saelens", "jumprelu", {}, torch.float32),
    "to_saelens_jumprelu_no_bdec": ("saelens", "jumprelu", dict(apply_b_dec_to_input=False), torch.float32),
    "to_saelens_topk": ("saelens", "topk", {}, torch.float32),
    "to_saelens_batchtopk": ("saelens", "batchtopk", {}, torch.float32),
    "to_saelens_matryoshka": ("saelens", "matryoshka", {}, torch.float32),
    "to_saelens_transcoder": ("saelens", "relu", TRANSCODER, torch.float32),
    "to_saelens_skip_transcoder": ("saelens", "relu", dict(TRANSCODER, skip_connection=True), torch.float32),
    "to_saelens_jumprelu_transcoder": ("saelens", "jumprelu", TRANSCODER, torch.float32),
    "to_saelens_jumprelu_skip_transcoder": ("saelens", "jumprelu", dict(TRANSCODER, skip_connection=True),
                                            torch.float32),
    "to_saelens_matching_pursuit": ("saelens", "matching_pursuit", dict(residual_threshold=0.5), torch.float32),
    # saekit's own directories (saekit.save): SAELens reads them as they are
    "native_topk": ("saekit", "topk", {}, torch.float32),
    "native_batchtopk": ("saekit", "batchtopk", {}, torch.float32),
    "native_transcoder": ("saekit", "relu", TRANSCODER, torch.float32),
    "native_skip_transcoder": ("saekit", "relu", dict(TRANSCODER, skip_connection=True), torch.float32),
    "native_jumprelu_transcoder": ("saekit", "jumprelu", TRANSCODER, torch.float32),
    "native_jumprelu_skip_transcoder": ("saekit", "jumprelu", dict(TRANSCODER, skip_connection=True),
                                        torch.float32),
    "native_matching_pursuit": ("saekit", "matching_pursuit", {}, torch.float32),
    "to_sparsify_topk": ("sparsify", "topk", {}, torch.float32),
    "to_sparsify_topk_bf16": ("sparsify", "topk", {}, torch.bfloat16),
    "to_sparsify_transcoder": ("sparsify", "topk", SQUARE, torch.float32),
    "to_sparsify_skip_transcoder": ("sparsify", "topk", dict(SQUARE, skip_connection=True), torch.float32),
    "to_dl_relu": ("dictionary_learning", "relu", {}, torch.float32),
    "to_dl_relu_bdec": ("dictionary_learning", "relu", dict(apply_b_dec_to_input=True), torch.float32),
    "to_dl_gated": ("dictionary_learning", "gated", {}, torch.float32),
    "to_dl_jumprelu": ("dictionary_learning", "jumprelu", {}, torch.float32),
    "to_dl_topk": ("dictionary_learning", "topk", {}, torch.float32),
    "to_dl_batchtopk": ("dictionary_learning", "batchtopk", {}, torch.float32),
    "to_dl_matryoshka": ("dictionary_learning", "matryoshka", {}, torch.float32),
}


def _saekit_dictionary(name: str):
    fmt, method, overrides, dtype = SAEKIT_CASES[name]
    # dictionary_learning's load_dictionary renormalises AutoEncoder decoders to unit norm (changing
    # latents, not reconstructions); its other classes are trained with unit-norm decoders anyway.
    unit = fmt == "dictionary_learning"
    return random_dictionary(method, seed=300 + list(SAEKIT_CASES).index(name), unit_norm_decoder=unit,
                             dtype=dtype, **overrides)


@pytest.fixture(scope="session")
def work(peer_python, tmp_path_factory) -> Path:
    """Run the peer side once: create the peers' dictionaries and load saekit's."""
    work = tmp_path_factory.mktemp("interop")
    save_file({"x": inputs(96, seed=7)}, str(work / "inputs.safetensors"))
    cases = {}
    for name, (fmt, *_rest) in SAEKIT_CASES.items():
        path = work / "saekit" / name
        detect.save_as(_saekit_dictionary(name), path, fmt)
        cases[name] = {"format": fmt, "path": str(path)}
    (work / "saekit" / "cases.json").write_text(json.dumps(cases, indent=1))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    result = subprocess.run([str(peer_python), str(HERE / "peer_helper.py"), "all", str(work)],
                            cwd=work, capture_output=True, text=True, env=env, timeout=1200)
    if result.returncode != 0:
        pytest.fail("peer_helper.py failed:\n" + (result.stdout + result.stderr)[-4000:])
    return work


def _close(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape, name
    diff = float((ours.float() - theirs.float()).abs().max())
    assert diff <= TOLERANCE, f"{name}: max |saekit − peer| = {diff:.3g}"


def test_peers_created_every_case(work):
    created = json.loads((work / "peer" / "cases.json").read_text())
    assert sorted(created) == sorted(PEER_CASES)


@pytest.mark.parametrize("name", sorted(PEER_CASES))
def test_peer_dictionaries_load_in_saekit(work, name):
    case = json.loads((work / "peer" / "cases.json").read_text())[name]
    path = Path(case["path"])
    d = saekit.load(path, dtype=torch.float32)
    x = load_file(str(work / "inputs.safetensors"))["x"]
    expected = load_file(str(path / "outputs.safetensors"))
    with torch.no_grad():
        _close(f"{name} latents", d.encode(x), expected["latents"])
        _close(f"{name} recon", d(x), expected["recon"])
    assert d.cfg.method == PEER_CASES[name]
    if not name.startswith("sparsify"):  # sparsify does not record the model
        assert d.provenance.model_name == LM, "model name recorded by the peer"
    # Residual-stream hooks become saekit's site resid_post.3 (which resolves on the Hugging Face model);
    # the peer's own name is kept in meta. Transcoders keep the peer's names.
    if "transcoder" in name:
        assert d.provenance.hookpoint in ("blocks.3.hook_resid_post", "layers.3:input")
    else:
        assert d.provenance.hookpoint == "resid_post.3"
        assert d.meta["source"]["hook_name"] == {"saelens": HOOK, "sparsify": "layers.3",
                                                 "dl": "resid_post_layer_3"}[name.split("_")[0]]
    if name.startswith("sparsify"):
        assert d.cfg.k == 4
    if name == "sparsify_bf16":
        assert saekit.load(path).W_dec.dtype == torch.bfloat16  # kept unless asked
    if d.cfg.method in ("topk", "batchtopk", "matryoshka"):
        assert d.cfg.k == 4
    if name == "saelens_scaled_checkpoint":
        assert d.meta["normalization"]["input_scale"] == 2.5
    if name == "saelens_matching_pursuit":  # SAELens's defaults: at most d_in steps, threshold 1e-2
        assert d.cfg.k == 16 and d.cfg.residual_threshold == pytest.approx(1e-2)
    prefixes = {"saelens_matryoshka": [16, 32, 64], "saelens_matryoshka_checkpoint": [16, 32, 64],
                "dl_matryoshka": [16, 64]}  # dictionary_learning: group_fractions [0.25, 0.75]
    if name in prefixes:
        assert d.cfg.matryoshka_prefixes == prefixes[name]
    if name in ("saelens_batchtopk", "saelens_matryoshka"):  # SAELens's one topk_threshold, restored
        assert torch.allclose(d.threshold, torch.full_like(d.threshold, 0.2))


@pytest.mark.parametrize("architecture", ["abstopk"])
def test_peer_architectures_without_saekit_equivalent_are_refused(work, architecture):
    with pytest.raises(saekit.SaekitError, match=f"SAELens architecture '{architecture}' has no saekit "
                                                 "equivalent") as info:
        saekit.load(work / "unsupported" / architecture)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(SAEKIT_CASES))
def test_saekit_dictionaries_load_in_peers(work, name):
    fmt = SAEKIT_CASES[name][0]
    d = _saekit_dictionary(name).float()
    x = load_file(str(work / "inputs.safetensors"))["x"]
    out = work / "saekit_outputs" / name
    theirs = load_file(str(out / "outputs.safetensors"))
    with torch.no_grad():
        _close(f"{name} latents", d.encode(x), theirs["latents"])
        _close(f"{name} recon", d(x), theirs["recon"])
    if fmt == "saekit":  # the class SAELens chose from saekit's cfg.json
        classes = {"native_topk": "TopKSAE", "native_batchtopk": "JumpReLUSAE", "native_transcoder": "Transcoder",
                   "native_skip_transcoder": "SkipTranscoder", "native_jumprelu_transcoder": "JumpReLUTranscoder",
                   "native_jumprelu_skip_transcoder": "JumpReLUSkipTranscoder",
                   "native_matching_pursuit": "MatchingPursuitSAE"}
        assert (out / "architecture.txt").read_text() == classes[name]
    if fmt == "sparsify":
        assert (out / "dtype.txt").read_text() == str(SAEKIT_CASES[name][3]).removeprefix("torch.")
    if fmt == "dictionary_learning":  # the class the library itself instantiated
        expected = {"to_dl_relu": "AutoEncoderNew", "to_dl_relu_bdec": "AutoEncoder",
                    "to_dl_gated": "GatedAutoEncoder", "to_dl_jumprelu": "JumpReluAutoEncoder",
                    "to_dl_topk": "AutoEncoderTopK", "to_dl_batchtopk": "BatchTopKSAE",
                    "to_dl_matryoshka": "MatryoshkaBatchTopKSAE"}[name]
        assert (out / "dict_class.txt").read_text() == expected


@pytest.mark.parametrize("name", sorted(n for n in SAEKIT_CASES if SAEKIT_CASES[n][0] in ("saelens", "saekit")))
def test_saekit_saelens_saekit_through_real_saelens_is_bit_identical(work, name):
    """SAELens loads saekit's directory and saves it again with its own code; saekit reads that back
    with the same config and the same bits."""
    d = _saekit_dictionary(name)
    back = saekit.load(work / "saekit_outputs" / name / "resaved")
    assert back.cfg == d.cfg
    for tensor_name, tensor in d.weights().items():
        assert torch.equal(back.weights()[tensor_name], tensor), tensor_name

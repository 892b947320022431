"""saekit's transcoder sets and CLTs against the real circuit-tracer 0.5.0 from PyPI, both ways.

circuit-tracer lives in its own virtual environment (`tests/interop/circuit_tracer_env.sh` builds
`.cache/ct-venv`: it pins transformers<=4.57.3). One subprocess runs `ct_helper.py` there: circuit-tracer's
own local loader reads every folder saekit wrote (random weights of every kind it supports, and a set and
a CLT trained by saekit) and records its encode/decode outputs; circuit-tracer's own classes and cache
writer create sets and CLTs that saekit then reads. Outputs must agree to 1e-4 on the same inputs.

Marked `peers` like the SAELens interop tests: they run with the suite (CI included); the first run
builds the venv (a minute or two), later runs reuse it. Deselect with `-m "not peers"`, or set
SAEKIT_PEER_TESTS=0 where PyPI is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import saekit
from saekit.circuits import CLTSpec, CrossLayerTranscoder
from saekit.circuits.transcoder_set import TranscoderSet, transcoder_set_specs
from saekit.formats.detect import save_as
from tests.helpers import layer_stream, random_clt, random_transcoder_set
from tests.side_venv import side_python

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(1500)]

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-4
L, D, N = 3, 16, 64


def _trained() -> tuple[TranscoderSet, CrossLayerTranscoder]:
    """A BatchTopK transcoder set and a JumpReLU CLT trained by saekit from one stream."""
    specs = transcoder_set_specs(list(range(L)), D, method="batchtopk", d_sae=32, k=4, lr=3e-3) + [
        CLTSpec.from_options(method="jumprelu", n_layers=L, d_in=D, d_sae=32, lr=3e-3, sparsity_coefficient=0.05)]
    trained = saekit.train(layer_stream(n_layers=L, d=D, batches=30), specs, total_tokens=30 * 256, batch_size=256,
                           progress=False, normalization_tokens=512)
    tset = TranscoderSet.from_training(specs[:L], trained[:L])
    return tset, trained[L]


def saekit_cases() -> dict:
    tset, clt = _trained()
    return {
        "plt_relu": random_transcoder_set("relu", d=D, seed=1),
        "plt_jumprelu": random_transcoder_set("jumprelu", d=D, seed=2),
        "plt_jumprelu_skip": random_transcoder_set("jumprelu", d=D, seed=3, skip_connection=True),
        "plt_batchtopk": random_transcoder_set("batchtopk", d=D, seed=4),
        "plt_gated": random_transcoder_set("gated", d=D, seed=5),
        "plt_trained_batchtopk": tset,
        "clt_relu": random_clt("relu", d=D, seed=6),
        "clt_jumprelu": random_clt("jumprelu", d=D, seed=7),
        "clt_batchtopk": random_clt("batchtopk", d=D, seed=8),
        "clt_jumprelu_reach1": random_clt("jumprelu", d=D, seed=9, max_reach=1),
        "clt_jumprelu_bf16_decoders": random_clt("jumprelu", d=D, seed=10, decoder_dtype="bfloat16"),
        "clt_trained_jumprelu": clt,
    }


@pytest.fixture(scope="session")
def ct_python() -> Path:
    return side_python(HERE / "circuit_tracer_env.sh", "SAEKIT_CT_VENV", ".cache/ct-venv", "circuit-tracer")


@pytest.fixture(scope="session")
def work(ct_python, tmp_path_factory):
    work = tmp_path_factory.mktemp("circuit_tracer")
    x = torch.randn(L, N, D, generator=torch.Generator().manual_seed(11)) * 1.5 + 0.5
    save_file({"x": x}, str(work / "inputs.safetensors"))
    cases = saekit_cases()
    paths = {}
    for name, obj in cases.items():
        paths[name] = str(save_as(obj, work / "saekit" / name, "circuit-tracer"))
    (work / "saekit" / "cases.json").write_text(json.dumps(paths, indent=1))
    # Pins: a TopK set written as a newer loader would read it (activation: topk, k in config.yaml), and a
    # layer file holding `k` (circuit-tracer's own TopK writer puts it there).
    topk = work / "pins" / "topk_set"
    save_as(random_transcoder_set("relu", d=D), topk, "circuit-tracer")
    config = yaml.safe_load((topk / "config.yaml").read_text())
    (topk / "config.yaml").write_text(yaml.safe_dump({**config, "activation": "topk", "k": 3}))
    with_k = work / "pins" / "k_in_file"
    save_as(random_transcoder_set("relu", d=D), with_k, "circuit-tracer")
    tensors = load_file(str(with_k / "layer_0.safetensors"))
    save_file({**tensors, "k": torch.tensor(3)}, str(with_k / "layer_0.safetensors"))
    (work / "saekit" / "pins.json").write_text(json.dumps({"topk_folder": str(topk), "k_folder": str(with_k)}))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([str(ct_python), str(HERE / "ct_helper.py"), str(work)], cwd=work, capture_output=True,
                            text=True, env=env, timeout=1200)
    if result.returncode != 0:
        pytest.fail("ct_helper.py failed:\n" + (result.stdout + result.stderr)[-4000:])
    return work, x, cases


def _ours(obj, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """saekit's latents [L, N, F] and reconstructions [L, N, d] on inputs [L, N, d]."""
    rows = x.transpose(0, 1)  # [N, L, d]
    with torch.no_grad():
        return obj.encode(rows).transpose(0, 1), obj(rows).transpose(0, 1)


def _close(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    diff = float((ours.float() - theirs.float()).abs().max())
    assert diff <= TOLERANCE, f"{name}: max |saekit − circuit-tracer| = {diff:.3g}"


@pytest.mark.parametrize("case", ["plt_relu", "plt_jumprelu", "plt_jumprelu_skip", "plt_batchtopk", "plt_gated",
                                  "plt_trained_batchtopk", "clt_relu", "clt_jumprelu", "clt_batchtopk",
                                  "clt_jumprelu_reach1", "clt_jumprelu_bf16_decoders", "clt_trained_jumprelu"])
def test_saekit_folders_give_the_same_outputs_in_circuit_tracer(work, case):
    work, x, cases = work
    theirs = load_file(str(work / "ct_outputs" / case / "outputs.safetensors"))
    latents, recon = _ours(cases[case], x)
    _close(f"{case} latents", latents, theirs["latents"])
    _close(f"{case} recon", recon, theirs["recon"])
    activation = (work / "ct_outputs" / case / "activation.txt").read_text()
    assert activation == ("relu" if case.endswith("relu") and "jump" not in case else "JumpReLU"), activation
    assert float((latents != 0).float().mean()) > 0.01  # the comparison saw active latents


@pytest.mark.parametrize("case", ["ct_plt_jumprelu", "ct_plt_relu", "ct_plt_jumprelu_skip", "ct_clt_jumprelu",
                                  "ct_clt_relu"])
def test_circuit_tracer_written_folders_load_in_saekit(work, case):
    work, x, _ = work
    folder = Path(json.loads((work / "ct" / "cases.json").read_text())[case])
    assert (folder / "config.yaml").is_file()  # written by circuit-tracer's cache writer
    loaded = saekit.load(folder)
    assert isinstance(loaded, TranscoderSet if "plt" in case else CrossLayerTranscoder)
    expected = load_file(str(work / "ct_reference" / case / "outputs.safetensors"))
    latents, recon = _ours(loaded, x)
    _close(f"{case} latents", latents, expected["latents"])
    _close(f"{case} recon", recon, expected["recon"])
    assert loaded.input_hookpoints == ["mlp_in.0", "mlp_in.1", "mlp_in.2"]
    assert loaded.output_hookpoints == ["mlp_out.0", "mlp_out.1", "mlp_out.2"]
    if isinstance(loaded, TranscoderSet):
        assert loaded.model_name == "tiny-model" and loaded[0].cfg.skip_connection == case.endswith("skip")
    # and back out through saekit: circuit-tracer's files, re-written by saekit, are the same numbers
    rewritten = save_as(loaded, work / "rewritten" / case, "circuit-tracer")
    _close(f"{case} rewritten", _ours(saekit.load(rewritten), x)[1], expected["recon"])


def test_circuit_tracer_limits_are_pinned(work):
    """circuit-tracer 0.5.0 ignores config.yaml's `activation: topk` (a local TopK set comes back ReLU),
    and refuses a layer file holding `k`: why saekit refuses to export TopK sets and never writes `k`."""
    work, _, _ = work
    found = json.loads((work / "pins.json").read_text())
    assert found["topk_activation"] == "relu"
    assert found["k_in_file"].startswith("RuntimeError") and "Unexpected key" in found["k_in_file"]

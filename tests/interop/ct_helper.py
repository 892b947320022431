"""circuit-tracer side of the interop tests: runs with the circuit-tracer venv's python
(tests/interop/circuit_tracer_env.sh; circuit-tracer 0.5.0 from PyPI; saekit NOT importable).

    python ct_helper.py WORKDIR

Inputs: `WORKDIR/inputs.safetensors` (`x [L, N, d]`, float32: each layer's MLP input).
- load: every folder listed in `WORKDIR/saekit/cases.json` ({case: path}) is read by circuit-tracer's own
  local loader (`load_transcoders_from_cache`, which reads config.yaml, then `load_transcoder_set` or
  `load_clt`, lazy decoders as by default); its `encode` and `decode` outputs go to
  `WORKDIR/ct_outputs/<case>/outputs.safetensors` (`latents [L, N, F]`, `recon [L, N, d]`), with the
  activation class circuit-tracer chose in `activation.txt`.
- create: transcoder sets and CLTs built with circuit-tracer's classes and random weights, written by its
  own cache writer (`save_transcoders_to_cache`, whose Hub downloads are pointed at local files) into
  `WORKDIR/ct/<case>/`; their outputs go to `WORKDIR/ct_reference/<case>/outputs.safetensors`.
- pins: what 0.5.0 does with a layer file holding `k` and with `activation: topk` in config.yaml
  (`WORKDIR/pins.json`).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
CPU = torch.device("cpu")


def _write(out: Path, latents: torch.Tensor, recon: torch.Tensor, activation: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.detach().float().contiguous(), "recon": recon.detach().float().contiguous()},
              str(out / "outputs.safetensors"))
    (out / "activation.txt").write_text(activation)


def _outputs(transcoders, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """circuit-tracer's own encode and decode (dense latents, reconstruction of every layer)."""
    from circuit_tracer.transcoder import TranscoderSet

    with torch.no_grad():
        latents = transcoders.encode(x)
        if isinstance(transcoders, TranscoderSet):
            recon = transcoders.decode(latents, x)
        else:
            recon = transcoders.decode(latents)
    return latents, recon


def _activation_name(transcoders) -> str:
    from circuit_tracer.transcoder import TranscoderSet

    fn = transcoders.transcoders[0].activation_function if isinstance(transcoders, TranscoderSet) \
        else transcoders.activation_function
    return getattr(fn, "__name__", type(fn).__name__)


def load_cases(work: Path, x: torch.Tensor) -> None:
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    cases = json.loads((work / "saekit" / "cases.json").read_text())
    for case, path in cases.items():
        path = Path(path)
        transcoders, _config = load_transcoders_from_cache(path.name, cache_dir=path.parent, device=CPU,
                                                           dtype=torch.float32)
        latents, recon = _outputs(transcoders, x)
        _write(work / "ct_outputs" / case, latents, recon, _activation_name(transcoders))


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=g) * 0.3
            if "threshold" in name:
                values = values.abs()
            param.copy_(values)


def _cache_write(work: Path, case: str, config: dict, source_dir: Path) -> Path:
    """Have circuit-tracer's `save_transcoders_to_cache` write the folder: its Hub calls return the local
    config and files."""
    import circuit_tracer.utils.caching as caching

    (source_dir / "config.yaml").write_text(yaml.safe_dump(config))
    caching.hf_hub_download = lambda **_: str(source_dir / "config.yaml")
    caching.snapshot_download = lambda *args, **kwargs: str(source_dir)
    root = work / "ct"
    return caching.save_transcoders_to_cache(f"org/{case}", cache_dir=root, device=CPU, dtype=torch.float32,
                                             delete_hf_cache=False)


def create_cases(work: Path, x: torch.Tensor) -> dict[str, str]:
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

    L, _n, d = x.shape
    F = 32
    created = {}
    for seed, (case, jump, skip) in enumerate([("ct_plt_jumprelu", True, False), ("ct_plt_relu", False, False),
                                               ("ct_plt_jumprelu_skip", True, True)]):
        layers = {}
        for layer in range(L):
            activation = JumpReLU(torch.zeros(F), 0.1) if jump else torch.nn.functional.relu
            transcoder = SingleLayerTranscoder(d, F, activation, layer, skip_connection=skip, device=CPU,
                                               dtype=torch.float32)
            _randomize(transcoder, 100 * seed + layer)
            layers[layer] = transcoder
        tset = TranscoderSet(layers, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out")
        source = work / "ct_source" / case
        tset.to_safetensors(str(source))
        config = {"model_kind": "transcoder_set", "feature_input_hook": "mlp.hook_in",
                  "feature_output_hook": "mlp.hook_out", "model_name": "tiny-model",
                  "transcoders": [str(source / f"layer_{i}.safetensors") for i in range(L)]}
        folder = _cache_write(work, case, config, source)
        latents, recon = _outputs(tset, x)
        _write(work / "ct_reference" / case, latents, recon, _activation_name(tset))
        created[case] = str(folder)
    for seed, (case, activation) in enumerate([("ct_clt_jumprelu", "jump_relu"), ("ct_clt_relu", "relu")]):
        clt = CrossLayerTranscoder(L, F, d, activation_function=activation, lazy_decoder=False, device=CPU,
                                   dtype=torch.float32, feature_input_hook="mlp.hook_in",
                                   feature_output_hook="mlp.hook_out")
        _randomize(clt, 1000 + seed)
        source = work / "ct_source" / case
        clt.to_safetensors(str(source))
        config = {"model_kind": "cross_layer_transcoder", "feature_input_hook": "mlp.hook_in",
                  "feature_output_hook": "mlp.hook_out", "model_name": "tiny-model"}
        folder = _cache_write(work, case, config, source)
        latents, recon = _outputs(clt, x)
        _write(work / "ct_reference" / case, latents, recon, _activation_name(clt))
        created[case] = str(folder)
    (work / "ct" / "cases.json").write_text(json.dumps(created, indent=1))
    return created


def pins(work: Path) -> None:
    """What circuit-tracer 0.5.0 does with a `k` in a layer file and with `activation: topk`."""
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    found = {}
    topk = Path(json.loads((work / "saekit" / "pins.json").read_text())["topk_folder"])
    transcoders, _ = load_transcoders_from_cache(topk.name, cache_dir=topk.parent, device=CPU, dtype=torch.float32)
    found["topk_activation"] = _activation_name(transcoders)
    with_k = Path(json.loads((work / "saekit" / "pins.json").read_text())["k_folder"])
    try:
        load_transcoders_from_cache(with_k.name, cache_dir=with_k.parent, device=CPU, dtype=torch.float32)
        found["k_in_file"] = "loaded"
    except Exception as error:
        found["k_in_file"] = f"{type(error).__name__}: {' '.join(str(error).split())[:400]}"
    (work / "pins.json").write_text(json.dumps(found, indent=1))


def main(work: Path) -> None:
    x = load_file(str(work / "inputs.safetensors"))["x"]
    load_cases(work, x)
    create_cases(work, x)
    pins(work)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

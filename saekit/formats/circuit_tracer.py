"""circuit-tracer's on-disk format (v0.5.0, METHODS-2 §2), both ways, for transcoder sets and CLTs.

**Transcoder set** (`model_kind: transcoder_set`): `config.yaml` + `layer_{i}.safetensors` for every layer
i = 0..L−1, each holding `W_enc [F, d]` (h = x·W_encᵀ + b_enc), `b_enc [F]`, `W_dec [F, d]`, `b_dec [d]`,
`activation_function.threshold [F]` for JumpReLU (absent: ReLU), optional `W_skip [d, d]` (x·W_skipᵀ).
circuit-tracer loads every key strictly, so nothing else may be in the file (a `k`, say).

**Cross-layer transcoder** (`model_kind: cross_layer_transcoder`): `W_enc_{l}.safetensors` with
`W_enc_{l} [F, d]`, `b_enc_{l} [F]`, `b_dec_{l} [d]` (bias of target l), `threshold_{l} [F]` (JumpReLU iff
layer 0 has one), and `W_dec_{l}.safetensors` with `W_dec_{l} [F, L−l, d]` (slot j−l writes to layer j).

`config.yaml` holds `model_kind`, `feature_input_hook`/`feature_output_hook` (TransformerLens names
relative to a block; saekit's `mlp_in.L`/`mlp_out.L` are circuit-tracer's `mlp.hook_in`/`mlp.hook_out`,
the MLP module's input and output on every architecture its nnsight backend maps) and `model_name`;
saekit adds a `saekit` section with its configs (circuit-tracer ignores unknown keys), so a round trip
restores them.

What circuit-tracer 0.5.0 (the PyPI wheel) cannot hold is refused with the reason: per-token TopK (its
local loader ignores `activation`/`k` and would load such a set as ReLU), matching pursuit, TopK CLTs
(CLTs are JumpReLU or ReLU), skip connections on CLTs (it never reads them from CLT files), layer sets
that do not start at layer 0 or have gaps (a set's file i is layer i), and different widths per layer.
BatchTopK and Matryoshka export as JumpReLU with their inference thresholds; Gated as the equivalent
JumpReLU. Reading also accepts `activation: topk` + `k` in config.yaml (newer loaders), Gemma Scope
(`.npz`) and Gemma Scope 2 (`w_enc`, `w_dec`, `affine_skip_connection`; 3-D `w_dec` for CLTs) layer files
named in `transcoders:`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor

from saekit.circuits.clt import CLTConfig, CLTProvenance, CrossLayerTranscoder
from saekit.circuits.transcoder_set import TranscoderSet
from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.formats.core import gated_to_jumprelu, load_tensors, make_dictionary, restore, stash
from saekit.io import atomic_directory, member_path
from saekit.training.guard import check_finite_weights

CONFIG_FILE = "config.yaml"
PLT_KIND, CLT_KIND = "transcoder_set", "cross_layer_transcoder"
THRESHOLD = "activation_function.threshold"
# saekit named sites <-> circuit-tracer hooks relative to a block (the MLP module's input and output).
SITE_TO_HOOK = {"mlp_in": "mlp.hook_in", "mlp_out": "mlp.hook_out"}
HOOK_TO_SITE = {hook: site for site, hook in SITE_TO_HOOK.items()}
_LAYER_FILE = re.compile(r"^layer_(\d+)\.(safetensors|npz)$")
_CLT_FILE = re.compile(r"^W_(enc|dec)_(\d+)\.safetensors$")


# ------------------------------------------------------------------------------------------ hooks
def _hook_of(hookpoints: list[str], layers: list[int], what: str) -> str:
    """The one block-relative hook name that every layer's hookpoint maps to."""
    hooks = set()
    for hookpoint, layer in zip(hookpoints, layers):
        match = re.match(r"^(\w+)\.(\d+)$", hookpoint)
        block = re.match(r"^blocks\.(\d+)\.(.+)$", hookpoint)
        if match and match.group(1) in SITE_TO_HOOK and int(match.group(2)) == layer:
            hooks.add(SITE_TO_HOOK[match.group(1)])
        elif block and int(block.group(1)) == layer:
            hooks.add(block.group(2))
        else:
            raise SaekitError(f"circuit-tracer names each layer's {what} by one hook relative to its block; "
                              f"saekit translates mlp_in.L and mlp_out.L, but layer {layer} reads {hookpoint!r}")
    if len(hooks) != 1:
        raise SaekitError(f"the layers' {what}s map to different circuit-tracer hooks ({sorted(hooks)}); "
                          "circuit-tracer holds one hook for every layer")
    return hooks.pop()


def _hookpoint_of(hook: str, layer: int) -> str:
    """saekit's hookpoint for a circuit-tracer hook at `layer`: the named site when saekit has one,
    else the TransformerLens name (kept, so nothing is lost)."""
    return f"{HOOK_TO_SITE[hook]}.{layer}" if hook in HOOK_TO_SITE else f"blocks.{layer}.{hook}"


def _check_layers(layers: list[int], what: str) -> None:
    if layers != list(range(len(layers))):
        raise SaekitError(f"circuit-tracer reads a {what} as one entry per model layer from 0 (file i = layer i); "
                          f"this one covers layers {layers}: train every layer 0..N (e.g. --transcoders all)")


# ------------------------------------------------------------------------------------------ writing
def plt_tensors(d: Dictionary) -> dict[str, Tensor]:
    """One layer's file in circuit-tracer's names and layout, or a one-line refusal of what its loader
    would misread."""
    if "b_gate" in d.weights():
        d = gated_to_jumprelu(d)
    weights = d.weights()
    if d.cfg.d_in != d.cfg.d_out:
        raise SaekitError(f"circuit-tracer transcoders map d_model to d_model; this one maps {d.cfg.d_in} to "
                          f"{d.cfg.d_out}")
    out = {"W_enc": weights["W_enc"].T, "b_enc": weights["b_enc"], "W_dec": weights["W_dec"],
           "b_dec": weights["b_dec"]}
    if "threshold" in weights:
        if bool((weights["threshold"] < 0).any()):
            raise SaekitError(f"{d.cfg.display_name} has no inference threshold yet (BatchTopK estimates it "
                              "during training): train longer before exporting to circuit-tracer")
        out[THRESHOLD] = weights["threshold"]
    elif d.method.saelens_transcoder_architecture != "transcoder":
        raise SaekitError(f"circuit-tracer 0.5.0 cannot hold {d.cfg.method} transcoders: its loader makes every "
                          f"local layer file ReLU, or JumpReLU when it holds {THRESHOLD} (config.yaml's "
                          "activation and k are ignored), so a TopK set would come back as ReLU. Export relu, "
                          "jumprelu, gated, batchtopk or matryoshka transcoders (the last two with their "
                          "inference thresholds)")
    if d.cfg.skip_connection:
        out["W_skip"] = weights["W_skip"]
    return {name: t.detach().contiguous().cpu() for name, t in out.items()}


def _yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def save(obj: Any, directory: str | Path, overwrite: bool = False) -> Path:
    """Write a `TranscoderSet` or a `CrossLayerTranscoder` in circuit-tracer's layout (atomically; an
    existing `directory` is replaced only if saekit wrote it, or `overwrite`)."""
    if isinstance(obj, TranscoderSet):
        return _save_set(obj, Path(directory), overwrite)
    if isinstance(obj, CrossLayerTranscoder):
        check_finite_weights(obj.weights(), f"saving {directory}")
        return _save_clt(obj, Path(directory), overwrite)
    raise SaekitError("circuit-tracer holds transcoder sets (one transcoder for every layer from 0) and "
                      "cross-layer transcoders, not single dictionaries: pass a transcoder set or CLT folder")


def _save_set(tset: TranscoderSet, directory: Path, overwrite: bool) -> Path:
    _check_layers(tset.layers, "transcoder set")
    widths = {d.d_sae for d in tset.transcoders}
    if len(widths) != 1:
        raise SaekitError(f"circuit-tracer transcoder sets have one width; this set's layers have {sorted(widths)} "
                          "latents")
    files = [plt_tensors(d) for d in tset.transcoders]  # refuse before writing anything
    for layer, tensors in zip(tset.layers, files):
        check_finite_weights(tensors, f"saving layer {layer} to {directory}")
    config = {"model_kind": PLT_KIND,
              "feature_input_hook": _hook_of(tset.input_hookpoints, tset.layers, "input"),
              "feature_output_hook": _hook_of(tset.output_hookpoints, tset.layers, "output"),
              "model_name": tset.model_name,
              "saekit": {"name": tset.name, "meta": tset.meta, "layers": [stash(d) for d in tset.transcoders]}}
    with atomic_directory(directory, overwrite) as tmp:
        for layer, tensors in zip(tset.layers, files):
            save_file(tensors, str(tmp / f"layer_{layer}.safetensors"))
        _yaml(tmp / CONFIG_FILE, config)
    return directory


def _save_clt(clt: CrossLayerTranscoder, directory: Path, overwrite: bool) -> Path:
    _check_layers(clt.layers, "cross-layer transcoder")
    if not clt.method.has_threshold and clt.method.uses_k:  # per-token TopK: no threshold, not ReLU
        raise SaekitError(f"circuit-tracer's cross-layer transcoders are JumpReLU or ReLU; a {clt.cfg.method} CLT "
                          "has no threshold to export. Train jumprelu or batchtopk (exported as JumpReLU with "
                          "its inference thresholds)")
    thresholds = [clt.threshold_of(s) for s in range(clt.n_layers)] if clt.method.has_threshold else []
    if any(t is None for t in thresholds):
        raise SaekitError(f"{clt.cfg.display_name} has no inference threshold yet (BatchTopK estimates it during "
                          "training): train longer before exporting to circuit-tracer")
    L, F, d = clt.n_layers, clt.d_sae, clt.d_out
    config = {"model_kind": CLT_KIND,
              "feature_input_hook": _hook_of(clt.input_hookpoints, clt.layers, "input"),
              "feature_output_hook": _hook_of(clt.output_hookpoints, clt.layers, "output"),
              "model_name": clt.provenance.model_name,
              "saekit": {"dictionary": clt.cfg.to_dict(), "provenance": clt.provenance.to_dict(), "meta": clt.meta,
                         "training": clt.training_config.to_dict() if clt.training_config is not None else None}}
    with atomic_directory(directory, overwrite) as tmp:
        for s in range(L):
            encoder = {f"W_enc_{s}": clt.W_enc[s].detach().T, f"b_enc_{s}": clt.b_enc[s].detach(),
                       f"b_dec_{s}": clt.b_dec[s].detach()}
            if thresholds:
                encoder[f"threshold_{s}"] = thresholds[s].detach()  # type: ignore[union-attr]
            save_file({k: v.contiguous().cpu() for k, v in encoder.items()}, str(tmp / f"W_enc_{s}.safetensors"))
            decoder = torch.zeros(F, L - s, d, dtype=clt.W_dec[s].dtype)
            decoder[:, :clt.reach(s)] = clt.W_dec[s].detach().cpu().permute(1, 0, 2)
            save_file({f"W_dec_{s}": decoder.contiguous()}, str(tmp / f"W_dec_{s}.safetensors"))
        _yaml(tmp / CONFIG_FILE, config)
    return directory


def notes(obj: Any) -> list[str]:
    """What a circuit-tracer reader does not get from saekit's files."""
    return ["circuit-tracer reads config.yaml's hooks relative to each block (mlp.hook_in -> mlp.hook_out); "
            "normalisation is folded into the weights",
            "circuit-tracer ignores the `saekit` section of config.yaml (training configs, provenance)"]


# ------------------------------------------------------------------------------------------ reading
def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SaekitError(f"{path} is not valid YAML ({str(error).splitlines()[0]}): the file is corrupted; "
                          "re-download the transcoders") from None
    if not isinstance(data, dict):
        raise SaekitError(f"{path} does not hold a mapping: not a circuit-tracer config")
    return data


def is_circuit_tracer_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "layer_0.safetensors").is_file() or (path / "layer_0.npz").is_file() \
            or (path / "W_enc_0.safetensors").is_file():
        return True
    if (path / CONFIG_FILE).is_file():
        try:
            data = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            return True  # whoever loads it reports the broken file
        return isinstance(data, dict) and "model_kind" in data
    return False


def _indexed(directory: Path, pattern: re.Pattern, group: int, kind: str | None = None) -> dict[int, str]:
    found: dict[int, str] = {}
    for p in directory.iterdir():
        m = pattern.match(p.name)
        if m and (kind is None or m.group(1) == kind):
            found[int(m.group(group))] = p.name
    return found


def _contiguous(found: dict[int, str], directory: Path, what: str) -> list[str]:
    if not found:
        raise SaekitError(f"{directory} holds no {what} files: not a circuit-tracer folder")
    n = max(found) + 1
    missing = [i for i in range(n) if i not in found]
    if missing:
        raise SaekitError(f"{directory} has {what} files up to layer {n - 1} but none for layer {missing[0]}: "
                          f"mismatched layer count ({len(found)} files for {n} layers); re-download the missing file")
    return [found[i] for i in range(n)]


def _listed_paths(directory: Path, config: dict[str, Any]) -> list[Path] | None:
    listed = config.get("transcoders")
    if listed is None:
        return None
    if not isinstance(listed, list) or not listed:
        raise SaekitError(f"{directory / CONFIG_FILE}: `transcoders` must be a list of layer files")
    paths = []
    for entry in listed:
        if isinstance(entry, str) and entry.startswith("hf://"):
            raise SaekitError(f"{directory / CONFIG_FILE} names files on the Hugging Face Hub ({entry}); download "
                              "them next to config.yaml and list their file names")
        paths.append(member_path(directory, entry, "layer file"))
    return paths


def load(directory: str | Path, *, dtype: torch.dtype | None = None, **_: Any) -> TranscoderSet | CrossLayerTranscoder:
    directory = Path(directory)
    config = _read_config(directory)
    kind = config.get("model_kind")
    if kind is None:
        kind = CLT_KIND if (directory / "W_enc_0.safetensors").is_file() else PLT_KIND
    if kind == PLT_KIND:
        return _load_set(directory, config, dtype)
    if kind == CLT_KIND:
        return _load_clt(directory, config, dtype)
    raise SaekitError(f"{directory / CONFIG_FILE} has model_kind {kind!r}; circuit-tracer knows "
                      f"{PLT_KIND} and {CLT_KIND}")


def _layer_tensors(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".npz":
        from saekit.formats.gemma_scope import _read_npz

        raw = _read_npz(path)
    else:
        raw = load_tensors(path)
    if path.suffix == ".npz" or "w_enc" in raw:
        # Gemma Scope (npz: W_enc [d, F]) and Gemma Scope 2 (w_enc [d, F], affine_skip_connection x @ A)
        out = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in raw.items()}
        out["W_enc"] = out["W_enc"].T
        if "threshold" in out:  # Gemma Scope computes ReLU(h)·1[h > θ]: equal to h·1[h > max(θ, 0)]
            out[THRESHOLD] = out.pop("threshold").clamp_min(0.0)
        if "affine_skip_connection" in out:
            out["W_skip"] = out.pop("affine_skip_connection").T
        return out
    return raw


def _load_set(directory: Path, config: dict[str, Any], dtype: torch.dtype | None) -> TranscoderSet:
    paths = _listed_paths(directory, config)
    if paths is None:
        paths = [directory / name for name in _contiguous(_indexed(directory, _LAYER_FILE, 1), directory, "layer_{i}")]
    in_hook = str(config.get("feature_input_hook") or "mlp.hook_in")
    out_hook = str(config.get("feature_output_hook") or "mlp.hook_out")
    activation, k = config.get("activation"), config.get("k")
    if activation == "topk" and not isinstance(k, int):
        raise SaekitError(f"{directory / CONFIG_FILE} says activation: topk but gives no integer k")
    stashed = (config.get("saekit") or {}).get("layers") if isinstance(config.get("saekit"), dict) else None
    dictionaries, widths = [], set()
    for layer, path in enumerate(paths):
        if not path.is_file():
            raise SaekitError(f"{path} is missing: the transcoder set lists {len(paths)} layers; re-download it")
        tensors = _layer_tensors(path)
        required = {"W_enc", "b_enc", "W_dec", "b_dec"}
        extra = set(tensors) - required - {THRESHOLD, "W_skip"}
        if not required <= set(tensors) or extra:
            raise SaekitError(f"{path} holds {sorted(tensors)}; a circuit-tracer layer holds W_enc, b_enc, W_dec, "
                              f"b_dec and optionally {THRESHOLD} and W_skip (circuit-tracer itself refuses extra keys)")
        F, d = tensors["W_enc"].shape
        widths.add(F)
        if THRESHOLD in tensors:
            method, method_k = "jumprelu", None
        elif activation == "topk":
            method, method_k = "topk", int(k)  # type: ignore[arg-type]
        else:
            method, method_k = "relu", None
        cfg = DictionaryConfig(method=method, d_in=d, d_sae=F, d_out=tensors["W_dec"].shape[1], k=method_k,
                               transcoder=True, skip_connection="W_skip" in tensors)
        mapped = {"W_enc": tensors["W_enc"].T, "b_enc": tensors["b_enc"], "W_dec": tensors["W_dec"],
                  "b_dec": tensors["b_dec"]}
        if THRESHOLD in tensors:
            mapped["threshold"] = tensors[THRESHOLD]  # both compute h·1[h > θ]: any θ, no clamp
        if "W_skip" in tensors:
            mapped["W_skip"] = tensors["W_skip"]
        meta = {"source": {"format": "circuit_tracer", "path": str(path), "layer": layer,
                           "feature_input_hook": in_hook, "feature_output_hook": out_hook}}
        provenance = Provenance(model_name=config.get("model_name"), hookpoint=_hookpoint_of(in_hook, layer),
                                target_hookpoint=_hookpoint_of(out_hook, layer))
        training = None
        found = restore(cfg, stashed[layer], str(directory / CONFIG_FILE)) \
            if isinstance(stashed, list) and len(stashed) == len(paths) else None
        if found is not None:
            cfg, training = found.dictionary, found.training
            provenance, meta = found.provenance, {**found.meta, **meta}
        dictionaries.append(make_dictionary(cfg, mapped, source=str(path), dtype=dtype, meta=meta,
                                            provenance=provenance, training=training))
    if len(widths) != 1:
        raise SaekitError(f"{directory}: layers have different widths {sorted(widths)}; circuit-tracer sets have one")
    section: dict[str, Any] = config["saekit"] if isinstance(config.get("saekit"), dict) else {}
    return TranscoderSet(list(range(len(paths))), dictionaries, name=section.get("name") or directory.name,
                         meta={**(section.get("meta") or {}), "source": {"format": "circuit_tracer",
                                                                          "path": str(directory)}})


def _load_clt(directory: Path, config: dict[str, Any], dtype: torch.dtype | None) -> CrossLayerTranscoder:
    listed = _listed_paths(directory, config)
    if listed is not None:
        return _load_gemma_scope_2_clt(directory, config, listed, dtype)
    encoders = _contiguous(_indexed(directory, _CLT_FILE, 2, "enc"), directory, "W_enc_{l}")
    decoders = _indexed(directory, _CLT_FILE, 2, "dec")
    if len(decoders) != len(encoders) or set(decoders) != set(range(len(encoders))):
        raise SaekitError(f"{directory}: mismatched layer counts: {len(encoders)} encoder files (W_enc_*) but "
                          f"{len(decoders)} decoder files (W_dec_*); re-download the cross-layer transcoder")
    L = len(encoders)
    layers_enc = [load_tensors(directory / name) for name in encoders]
    first = layers_enc[0]
    if "W_enc_0" not in first or "b_enc_0" not in first or "b_dec_0" not in first:
        raise SaekitError(f"{directory / encoders[0]} holds {sorted(first)}; expected W_enc_0, b_enc_0, b_dec_0 "
                          "(and threshold_0)")
    F, d = first["W_enc_0"].shape
    has_threshold = "threshold_0" in first
    cfg = CLTConfig(method="jumprelu" if has_threshold else "relu", n_layers=L, d_in=d, d_sae=F,
                    d_out=first["b_dec_0"].shape[0])
    in_hook = str(config.get("feature_input_hook") or "hook_resid_mid")
    out_hook = str(config.get("feature_output_hook") or "hook_mlp_out")
    provenance = CLTProvenance(model_name=config.get("model_name"), layers=list(range(L)),
                               input_hookpoints=[_hookpoint_of(in_hook, i) for i in range(L)],
                               target_hookpoints=[_hookpoint_of(out_hook, i) for i in range(L)])
    meta: dict[str, Any] = {"source": {"format": "circuit_tracer", "path": str(directory),
                                       "feature_input_hook": in_hook, "feature_output_hook": out_hook}}
    training = None
    section = config.get("saekit")
    if isinstance(section, dict):
        try:
            from saekit.circuits.clt_training import CLTTrainingConfig

            stashed = CLTConfig.from_dict(section["dictionary"])
            if (stashed.n_layers, stashed.d_in, stashed.d_sae, stashed.d_out) == (L, d, F, cfg.d_out) and \
                    _has_threshold(stashed) == has_threshold:
                cfg = CLTConfig(**{**stashed.to_dict(), "max_reach": None, "decoder_dtype": stashed.decoder_dtype})
                provenance = CLTProvenance.from_dict(section.get("provenance") or {})
                meta = {**(section.get("meta") or {}), **meta}
                if isinstance(section.get("training"), dict):
                    training = CLTTrainingConfig.from_dict(section["training"]).resolved(cfg)
        except (SaekitError, KeyError, TypeError, ValueError):
            pass  # a stale or foreign section: the files' own description stands
    clt = CrossLayerTranscoder(cfg, dtype=dtype or torch.float32, training=training, provenance=provenance)
    with torch.no_grad():
        for s in range(L):
            enc = layers_enc[s]
            for key, shape in ((f"W_enc_{s}", (F, d)), (f"b_enc_{s}", (F,)), (f"b_dec_{s}", (cfg.d_out,))):
                _expect(enc, key, shape, directory / encoders[s])
            clt.W_enc[s].copy_(enc[f"W_enc_{s}"].T)
            clt.b_enc[s].copy_(enc[f"b_enc_{s}"])
            clt.b_dec[s].copy_(enc[f"b_dec_{s}"])
            if has_threshold:
                _expect(enc, f"threshold_{s}", (F,), directory / encoders[s])
                clt.threshold[s].copy_(enc[f"threshold_{s}"])
            path = directory / decoders[s]
            dec = load_tensors(path)
            _expect(dec, f"W_dec_{s}", (F, L - s, cfg.d_out), path,
                    hint=f"a {L}-layer CLT decodes from layer {s} into {L - s} layers")
            clt.W_dec[s].copy_(dec[f"W_dec_{s}"].permute(1, 0, 2).to(clt.W_dec[s].dtype))
    clt.meta = meta
    check_finite_weights(clt.weights(), str(directory))
    for param in clt.parameters():
        param.requires_grad_(False)
    return clt.eval()


def _has_threshold(cfg: CLTConfig) -> bool:
    from saekit.circuits.clt_activations import get_activation

    return get_activation(cfg.method).has_threshold


def _expect(tensors: dict[str, Tensor], key: str, shape: tuple, path: Path, hint: str = "") -> None:
    if key not in tensors:
        raise SaekitError(f"{path} has no {key} (it holds {sorted(tensors)}): the file is truncated or from "
                          "another layer; re-download it")
    if tuple(tensors[key].shape) != tuple(shape):
        raise SaekitError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(shape)}"
                          f"{' (' + hint + ')' if hint else ''}: mismatched layer counts or widths")


def _load_gemma_scope_2_clt(directory: Path, config: dict[str, Any], paths: list[Path],
                            dtype: torch.dtype | None) -> CrossLayerTranscoder:
    """Gemma Scope 2 CLTs: one file per layer with `w_enc [d, F]`, `b_enc`, `b_dec`, `threshold` and
    `w_dec [F, L, d]` (decoders into every layer; slots before the source are unused). circuit-tracer
    0.5.0's own loader skips the last listed file; this reads them all."""
    L = len(paths)
    files = [load_tensors(p) for p in paths]
    F, d = files[0]["w_enc"].shape[1], files[0]["w_enc"].shape[0]
    cfg = CLTConfig(method="jumprelu", n_layers=L, d_in=d, d_sae=F, d_out=files[0]["b_dec"].shape[0])
    in_hook = str(config.get("feature_input_hook") or "hook_resid_mid")
    out_hook = str(config.get("feature_output_hook") or "hook_mlp_out")
    clt = CrossLayerTranscoder(cfg, dtype=dtype or torch.float32, provenance=CLTProvenance(
        model_name=config.get("model_name"), input_hookpoints=[_hookpoint_of(in_hook, i) for i in range(L)],
        target_hookpoints=[_hookpoint_of(out_hook, i) for i in range(L)]))
    with torch.no_grad():
        for s, (path, tensors) in enumerate(zip(paths, files)):
            _expect(tensors, "w_enc", (d, F), path)
            _expect(tensors, "w_dec", (F, L, cfg.d_out), path, hint=f"{L} layers are listed")
            clt.W_enc[s].copy_(tensors["w_enc"])
            clt.b_enc[s].copy_(tensors["b_enc"])
            clt.b_dec[s].copy_(tensors["b_dec"])
            clt.threshold[s].copy_(tensors["threshold"].clamp_min(0.0))
            clt.W_dec[s].copy_(tensors["w_dec"][:, s:].permute(1, 0, 2))
    clt.meta = {"source": {"format": "gemma_scope_2", "path": str(directory)}}
    check_finite_weights(clt.weights(), str(directory))
    for param in clt.parameters():
        param.requires_grad_(False)
    return clt.eval()

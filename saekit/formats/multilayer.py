"""saekit's own folders for multi-layer transcoders: transcoder sets (PLTs) and cross-layer transcoders.

**Transcoder set**: one folder holding a saekit dictionary folder per layer (`layer_<L>/`, each with its
own cfg.json, weights and manifest, so every layer also loads on its own) and `transcoder_set.json`:
kind, format version, name, layers, member folders, facts, and the sha256 of each member's manifest.json,
so a swapped or edited layer is detected.

**Cross-layer transcoder**: `clt.json` (kind, format version, the three configs and recorded facts),
one `layer_<i>.safetensors` per position holding that layer's encoder (`W_enc [d_in, d_sae]`, `b_enc`,
`threshold` when the method has one), its decoders into its targets (`W_dec [reach, d_sae, d_out]`, block r
writing into layer i+r, in the decoder dtype) and the bias of target i (`b_dec [d_out]`), optional
`sparsity.safetensors` (log10 firing density per latent, layer-major), and `manifest.json` with the
sha256 of every other file. circuit-tracer's layout is written by `saekit.formats.circuit_tracer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from saekit.circuits.clt import CLTConfig, CLTProvenance, CrossLayerTranscoder
from saekit.circuits.transcoder_set import TranscoderSet
from saekit.errors import SaekitError
from saekit.formats.core import load_tensors, read_json
from saekit.io import OWNER_MARK, atomic_directory, member_path, sha256_file
from saekit.training.guard import check_finite_weights

SET_FILE = "transcoder_set.json"
SET_KIND = "saekit-transcoder-set"
CLT_FILE = "clt.json"
CLT_KIND = "saekit-cross-layer-transcoder"
MANIFEST_FILE = "manifest.json"
SPARSITY_FILE = "sparsity.safetensors"
FORMAT_VERSION = 1


def layer_folder(layer: int) -> str:
    return f"layer_{layer}"


def save_any(obj: Any, directory: str | Path, overwrite: bool = False) -> Path:
    """Write a dictionary, a transcoder set or a cross-layer transcoder in saekit's format (an existing
    `directory` is replaced only if saekit wrote it, or `overwrite`)."""
    from saekit.formats.native import save as save_dictionary

    if isinstance(obj, TranscoderSet):
        return save_transcoder_set(obj, directory, overwrite)
    if isinstance(obj, CrossLayerTranscoder):
        return save_clt(obj, directory, overwrite)
    return save_dictionary(obj, directory, overwrite)


# --------------------------------------------------------------------------------- transcoder sets
def is_transcoder_set_dir(path: Path) -> bool:
    return path.is_dir() and (path / SET_FILE).is_file()


def save_transcoder_set(tset: TranscoderSet, directory: str | Path, overwrite: bool = False) -> Path:
    """Write the set atomically: every layer as a saekit dictionary folder, then the set manifest."""
    from saekit.formats.native import save as save_dictionary

    directory = Path(directory)
    with atomic_directory(directory, overwrite) as tmp:
        members = []
        for layer, d in zip(tset.layers, tset.transcoders):
            save_dictionary(d, tmp / layer_folder(layer))
            members.append(layer_folder(layer))
        manifest = {"kind": SET_KIND, "format_version": FORMAT_VERSION, "name": tset.name,
                    "layers": tset.layers, "members": members, "model_name": tset.model_name,
                    "meta": tset.meta,
                    "sha256": {m: sha256_file(tmp / m / MANIFEST_FILE) for m in members}}
        (tmp / SET_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def load_transcoder_set(directory: str | Path, *, dtype: torch.dtype | None = None, **_: Any) -> TranscoderSet:
    """A set written by `save_transcoder_set`, every member verified against the set manifest."""
    from saekit.formats.native import load as load_dictionary

    directory = Path(directory)
    manifest = read_json(directory / SET_FILE)
    if manifest.get("kind") != SET_KIND:
        raise SaekitError(f"{directory / SET_FILE} is not a saekit transcoder set manifest (kind "
                          f"{manifest.get('kind')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SaekitError(f"{directory / SET_FILE} has format version {manifest.get('format_version')!r}; "
                          f"this saekit reads version {FORMAT_VERSION}: upgrade saekit")
    layers, members, checksums = manifest.get("layers"), manifest.get("members"), manifest.get("sha256")
    if not (isinstance(layers, list) and isinstance(members, list) and isinstance(checksums, dict)
            and len(layers) == len(members) and layers):
        raise SaekitError(f"{directory / SET_FILE} lists {len(layers or [])} layers and {len(members or [])} "
                          "member folders: the manifest is corrupted; re-save the transcoder set")
    dictionaries = []
    for member in members:
        folder = member_path(directory, member, "member folder")
        manifest_path = folder / MANIFEST_FILE
        if not manifest_path.is_file():
            raise SaekitError(f"{folder} is missing or incomplete (no {MANIFEST_FILE}): the transcoder set "
                              "is incomplete; re-save or re-copy it")
        if sha256_file(manifest_path) != checksums.get(member):
            raise SaekitError(f"{manifest_path} does not match the transcoder set's manifest: the layer was "
                              "replaced or edited; re-save the transcoder set")
        dictionaries.append(load_dictionary(folder, dtype=dtype))
    return TranscoderSet(layers, dictionaries, name=manifest.get("name"), meta=manifest.get("meta") or {})


# ---------------------------------------------------------------------------- cross-layer transcoders
def is_clt_dir(path: Path) -> bool:
    return path.is_dir() and (path / CLT_FILE).is_file()


def clt_layer_tensors(clt: CrossLayerTranscoder, source: int) -> dict[str, torch.Tensor]:
    tensors = {"W_enc": clt.W_enc[source], "b_enc": clt.b_enc[source], "W_dec": clt.W_dec[source],
               "b_dec": clt.b_dec[source]}
    if clt.method.has_threshold:
        tensors["threshold"] = clt.threshold[source]
    return {name: t.detach().contiguous().cpu() for name, t in tensors.items()}


def save_clt(clt: CrossLayerTranscoder, directory: str | Path, overwrite: bool = False) -> Path:
    """Write the CLT atomically: one safetensors file per source layer, clt.json, manifest.json."""
    directory = Path(directory)
    check_finite_weights(clt.weights(), f"saving {directory}")
    with atomic_directory(directory, overwrite) as tmp:
        for source in range(clt.n_layers):
            save_file(clt_layer_tensors(clt, source), str(tmp / f"layer_{source}.safetensors"))
        if clt.log_feature_density is not None:
            save_file({"sparsity": clt.log_feature_density.detach().float().contiguous().cpu()},
                      str(tmp / SPARSITY_FILE))
        training = clt.training_config.to_dict() if clt.training_config is not None else None
        config = {"kind": CLT_KIND, "format_version": FORMAT_VERSION, "dictionary": clt.cfg.to_dict(),
                  "training": training, "provenance": clt.provenance.to_dict(), "meta": clt.meta}
        (tmp / CLT_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir() if p.name != OWNER_MARK)
        manifest = {"kind": CLT_KIND, "format_version": FORMAT_VERSION,
                    "sha256": {name: sha256_file(tmp / name) for name in files}}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def _verify(directory: Path) -> None:
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise SaekitError(f"{directory} has no {MANIFEST_FILE}: the cross-layer transcoder is incomplete; "
                          "re-save or re-copy it")
    manifest = read_json(manifest_path)
    checksums = manifest.get("sha256")
    if manifest.get("kind") != CLT_KIND or not isinstance(checksums, dict) or CLT_FILE not in checksums:
        raise SaekitError(f"{manifest_path} is not a saekit cross-layer transcoder manifest: the folder is "
                          "corrupted; re-save it")
    for name, expected in checksums.items():
        path = member_path(directory, name)
        if not path.is_file():
            raise SaekitError(f"{path} is missing: the cross-layer transcoder is incomplete; re-save or re-copy it")
        if sha256_file(path) != expected:
            raise SaekitError(f"{path} fails its checksum (truncated, corrupted or edited); re-save or re-copy "
                              "the cross-layer transcoder")


def load_clt(directory: str | Path, *, dtype: torch.dtype | None = None, **_: Any) -> CrossLayerTranscoder:
    from saekit.circuits.clt_training import CLTTrainingConfig

    directory = Path(directory)
    _verify(directory)
    config = read_json(directory / CLT_FILE)
    if config.get("format_version") != FORMAT_VERSION:
        raise SaekitError(f"{directory / CLT_FILE} has format version {config.get('format_version')!r}; this "
                          f"saekit reads version {FORMAT_VERSION}: upgrade saekit")
    where = str(directory / CLT_FILE)
    try:
        cfg = CLTConfig.from_dict(config["dictionary"])
        provenance = CLTProvenance.from_dict(config.get("provenance") or {})
    except SaekitError as error:
        raise SaekitError(f"{where}: {error}") from None
    except (KeyError, TypeError) as error:
        raise SaekitError(f"{where}: malformed config ({type(error).__name__}: {error}); re-save it") from None
    training = None
    if isinstance(config.get("training"), dict):
        try:
            training = CLTTrainingConfig.from_dict(config["training"]).resolved(cfg)
        except (SaekitError, TypeError, ValueError):
            training = None  # it only says how the weights were trained
    clt = CrossLayerTranscoder(cfg, dtype=dtype or torch.float32, training=training, provenance=provenance)
    with torch.no_grad():
        for source in range(cfg.n_layers):
            path = directory / f"layer_{source}.safetensors"
            tensors = load_tensors(path)
            expected = clt_layer_tensors(clt, source)
            if set(tensors) != set(expected):
                raise SaekitError(f"{path} holds {sorted(tensors)}, expected {sorted(expected)}: the file does not "
                                  "match its clt.json; re-save the cross-layer transcoder")
            for name, value in tensors.items():
                if value.shape != expected[name].shape:
                    raise SaekitError(f"{path}: {name} has shape {tuple(value.shape)}, expected "
                                      f"{tuple(expected[name].shape)} from clt.json")
            clt.W_enc[source].copy_(tensors["W_enc"])
            clt.b_enc[source].copy_(tensors["b_enc"])
            clt.W_dec[source].copy_(tensors["W_dec"])
            clt.b_dec[source].copy_(tensors["b_dec"])
            if "threshold" in tensors:
                clt.threshold[source].copy_(tensors["threshold"])
    clt.meta = dict(config.get("meta") or {})
    if (directory / SPARSITY_FILE).is_file():
        clt.log_feature_density = load_tensors(directory / SPARSITY_FILE)["sparsity"]
    check_finite_weights(clt.weights(), str(directory))
    for param in clt.parameters():
        param.requires_grad_(False)
    return clt.eval()

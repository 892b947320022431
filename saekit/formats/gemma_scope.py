"""Gemma Scope's format: JumpReLU SAEs as `params.npz` (Gemma Scope, Gemma 2) or `params.safetensors` +
`config.json` (Gemma Scope 2, Gemma 3).

Tensors: `W_enc [d_model, d_sae]`, `W_dec [d_sae, d_model]`, `b_enc [d_sae]`, `b_dec [d_model]`,
`threshold [d_sae]` — saekit's layout. Gemma Scope 2 spells them `w_enc`/`w_dec` and its transcoders add
`affine_skip_connection [d_in, d_out]` (x @ A), which is saekit's `W_skip [d_out, d_in]` transposed.
Encoding does NOT subtract b_dec: f = ReLU(z)·1[z > θ], z = x·W_enc + b_enc; so the loaded dictionary is
a JumpReLU with `apply_b_dec_to_input=False` (negative θ clamped to 0, which is exact; see saelens.py).

What the files do not say (model, hookpoint) comes from Gemma Scope 2's config.json, from the Hub
repository and folder names (`google/gemma-scope-2b-pt-res`, `layer_12/width_16k/average_l0_82`), or from
the caller. Cross-layer transcoders (3-D `w_dec`) are refused.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.formats.core import clamp_threshold, load_tensors, make_dictionary, output_of, read_json, source_meta

NPZ_FILE = "params.npz"
SAFETENSORS_FILE = "params.safetensors"
CFG_FILE = "config.json"
REQUIRED = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def is_gemma_scope(path: Path) -> bool:
    if path.is_file():
        return path.name.endswith(".npz")
    return (path / NPZ_FILE).is_file() or (path / SAFETENSORS_FILE).is_file()


def _read_npz(path: Path) -> dict[str, Tensor]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise SaekitError(f"cannot read {path}: {error}; the file is corrupted or not an .npz of "
                          "arrays, re-download it") from None


def _canonical(raw: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in raw.items():
        out["W_" + key[2:] if key.startswith("w_") else key] = value
    return out


def _site(repo_id: str | None, folder: str) -> tuple[str | None, str | None, dict[str, Any]]:
    """(model_name, hookpoint, facts) from Gemma Scope's repository and folder names.

    The residual stream after layer L is saekit's site `resid_post.L`; MLP outputs use Hugging Face
    module paths; sites that are not a module output (attention `hook_z`) get none."""
    facts: dict[str, Any] = {}
    layer_match = re.search(r"layer_(\d+)", folder)
    layer = int(layer_match.group(1)) if layer_match else None
    if layer is not None:
        facts["layer"] = layer
    width = re.search(r"width_(\d+[km]?)", folder)
    l0 = re.search(r"average_l0_(\d+)", folder)
    l0_class = re.search(r"_l0_([a-z]+)", folder)  # Gemma Scope 2: l0_small / l0_medium / l0_big
    if width:
        facts["width"] = width.group(1)
    if l0:
        facts["average_l0"] = int(l0.group(1))
    elif l0_class:
        facts["l0"] = l0_class.group(1)
    model_name = None
    repo = repo_id.split("/")[-1] if repo_id else ""
    match = re.match(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)", repo)
    if match:
        size, kind, site = match.groups()
        model_name = f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
        facts["site"] = site
        if layer is not None and site == "res":
            return model_name, f"resid_post.{layer}", facts  # saekit's site: the output of layer L
        if layer is not None and site == "mlp":
            return model_name, f"model.layers.{layer}.post_feedforward_layernorm", facts
    return model_name, None, facts


def _hf_hook(name: str | None) -> str | None:
    """Gemma Scope 2 names `model.layers.5.output` and `...o_proj.input`; saekit hooks a module's output
    by its name and its input as `<name>:input` (saekit.models.sites)."""
    if name is None:
        return None
    if name.endswith(".output"):
        return name[: -len(".output")]
    if name.endswith(".input"):
        return name[: -len(".input")] + ":input"
    return name


def load(path: str | Path, *, dtype: torch.dtype | None = None, repo_id: str | None = None,
         subfolder: str | None = None, **_: Any) -> Dictionary:
    """Load a Gemma Scope `params.npz` (file or folder) or a Gemma Scope 2 `params.safetensors` folder."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config: dict[str, Any] = {}
    if path.is_file():
        weights_path = path
    elif (path / NPZ_FILE).is_file():
        weights_path = path / NPZ_FILE
    else:
        weights_path = path / SAFETENSORS_FILE
        if (path / CFG_FILE).is_file():
            config = read_json(path / CFG_FILE)
    raw = _read_npz(weights_path) if weights_path.suffix == ".npz" else load_tensors(weights_path)
    tensors = _canonical(raw)
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise SaekitError(f"{weights_path} lacks {', '.join(missing)}: not a Gemma Scope JumpReLU SAE")
    if config.get("architecture", "jump_relu") != "jump_relu":
        raise SaekitError(f"{folder / CFG_FILE}: architecture {config['architecture']!r} is not "
                          "Gemma Scope's jump_relu")
    if tensors["W_dec"].ndim != 2:
        raise SaekitError(f"{weights_path}: a {tensors['W_dec'].ndim}-D decoder is a cross-layer "
                          "transcoder, which saekit does not support")
    skip = tensors.pop("affine_skip_connection", None)
    weights = {k: tensors[k] for k in REQUIRED}
    d_in, d_sae = weights["W_enc"].shape
    d_out = weights["W_dec"].shape[1]

    model_name, hookpoint, facts = _site(repo_id, subfolder or str(folder))
    model_name = config.get("model_name") or model_name
    if model_name and "/" not in model_name and "gemma" in model_name:
        model_name = "google/" + model_name
    if model_name:  # Gemma Scope 2 configs say gemma-v3-*; the models are google/gemma-3-*
        model_name = model_name.replace("gemma-v3-", "gemma-3-")
    hookpoint = _hf_hook(config.get("hf_hook_point_in")) or hookpoint
    match = re.match(r"^model\.layers\.(\d+)$", hookpoint or "")
    if match:  # a block's output is the residual stream: saekit's named site
        hookpoint = f"resid_post.{match.group(1)}"
    target = _hf_hook(config.get("hf_hook_point_out"))
    kwargs: dict[str, Any] = dict(method="jumprelu", d_in=int(d_in), d_sae=int(d_sae))
    source = Provenance(model_name=model_name, hookpoint=hookpoint)
    if target is not None or d_out != d_in or skip is not None:
        kwargs.update(d_out=int(d_out), transcoder=True, skip_connection=skip is not None)
        source.target_hookpoint = target or output_of(hookpoint)
        if skip is not None:
            weights["W_skip"] = skip.T.contiguous()
    else:
        kwargs["apply_b_dec_to_input"] = False
    meta = source_meta("gemma_scope", path, repo_id=repo_id, subfolder=subfolder, **facts)
    if config:
        meta["gemma_scope_config"] = config
    clamp_threshold(weights, meta)
    try:
        cfg = DictionaryConfig(**kwargs)
    except SaekitError as error:
        raise SaekitError(f"{path}: {error}") from None
    return make_dictionary(cfg, weights, source=str(weights_path), dtype=dtype, meta=meta, provenance=source)


# The saekit method Gemma Scope's params.npz holds.
GEMMA_SCOPE_METHODS = ("jumprelu",)


def save(d: Dictionary, path: str | Path) -> Path:
    """Write `d` (a JumpReLU that does not subtract b_dec, as Gemma Scope's) as `params.npz`."""
    cfg = d.cfg
    if cfg.method not in GEMMA_SCOPE_METHODS or cfg.is_transcoder or cfg.n_sources > 1:
        raise SaekitError("Gemma Scope's params.npz holds plain JumpReLU SAEs only")
    w = {k: v.detach().float().cpu() for k, v in d.weights().items()}
    if cfg.apply_b_dec_to_input:
        w["b_enc"] = w["b_enc"] - w["b_dec"] @ w["W_enc"]
    path = Path(path)
    target = path / NPZ_FILE if path.suffix != ".npz" else path
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **{k: v.numpy() for k, v in w.items()})  # type: ignore[arg-type]
    return target

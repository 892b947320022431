"""saekit's on-disk format: SAELens's layout and key names, plus what only saekit knows.

A directory holds `cfg.json`, `sae_weights.safetensors` and (when firing statistics are known)
`sparsity.safetensors` with key `sparsity` = log10 firing density per latent. cfg.json carries SAELens's
inference fields at the top level (so SAELens/SAEBench can read our dictionaries) and saekit's full
config, recorded facts and file checksums under the `saekit` key (so a load is exact and a corrupted
file is detected before it is used).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit.config import DictionaryConfig
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.io import atomic_directory, sha256_file

FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"

# saekit method -> SAELens architecture. BatchTopK and Matryoshka are exported as JumpReLU with a shared
# threshold, as SAELens does for its own BatchTopK/Matryoshka SAEs.
SAELENS_ARCHITECTURE = {
    "relu": "standard",
    "gated": "gated",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
}


def saelens_cfg(d: Dictionary) -> dict[str, Any]:
    cfg = d.cfg
    out: dict[str, Any] = {
        "architecture": SAELENS_ARCHITECTURE[cfg.method],
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(d.W_dec.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": cfg.model_name,
            "hook_name": cfg.hookpoint,
        },
    }
    if cfg.method == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    return out


def save(d: Dictionary, directory: str | Path) -> Path:
    """Write `d` to `directory` atomically (a killed save leaves the previous contents intact)."""
    directory = Path(directory)
    weights = {name: t.contiguous().cpu() for name, t in d.weights().items()}
    with atomic_directory(directory) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        checksums = {WEIGHTS_FILE: sha256_file(tmp / WEIGHTS_FILE)}
        if d.log_feature_density is not None:
            save_file({"sparsity": d.log_feature_density.detach().float().contiguous().cpu()},
                      str(tmp / SPARSITY_FILE))
            checksums[SPARSITY_FILE] = sha256_file(tmp / SPARSITY_FILE)
        cfg = saelens_cfg(d)
        cfg["saekit"] = {
            "format_version": FORMAT_VERSION,
            "config": d.cfg.to_dict(),
            "meta": d.meta,
            "sha256": checksums,
        }
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SaekitError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): "
                          "the file is corrupted; re-save or re-download the dictionary") from None
    if not isinstance(data, dict):
        raise SaekitError(f"{path} does not hold a JSON object: not a dictionary config")
    return data


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise SaekitError(f"cannot read {path}: {error}; the file is corrupted or not safetensors, "
                          "re-save or re-download it") from None


def load(directory: str | Path, device: str | torch.device = "cpu") -> Dictionary:
    """Load a dictionary saved by `save`, verifying file checksums first."""
    directory = Path(directory)
    if not directory.exists():
        raise SaekitError(f"no such dictionary directory: {directory}")
    cfg_path = directory / CFG_FILE
    if not directory.is_dir() or not cfg_path.exists():
        raise SaekitError(f"{directory} is not a saekit dictionary (no {CFG_FILE}); pass the directory "
                          "that `saekit.save` or `saekit train` wrote")
    raw = _read_json(cfg_path)
    native = raw.get("saekit")
    if not isinstance(native, dict) or "config" not in native:
        raise SaekitError(f"{cfg_path} has no saekit section: this is not a saekit dictionary "
                          "(foreign formats need a converter)")
    if native.get("format_version") != FORMAT_VERSION:
        raise SaekitError(f"{cfg_path} has format version {native.get('format_version')!r}; this "
                          f"saekit reads version {FORMAT_VERSION}: upgrade saekit")
    for name, expected in native.get("sha256", {}).items():
        path = directory / name
        if not path.exists():
            raise SaekitError(f"{path} is missing: the dictionary directory is incomplete")
        if sha256_file(path) != expected:
            raise SaekitError(f"{path} fails its checksum: the file is corrupted; re-save or "
                              "re-download the dictionary")
    cfg = DictionaryConfig.from_dict(native["config"])
    tensors = _load_tensors(directory / WEIGHTS_FILE)
    dtype = tensors["W_dec"].dtype if "W_dec" in tensors else torch.float32
    d = Dictionary(cfg, dtype=dtype)
    try:
        d.load_weights(tensors)
    except (KeyError, ValueError) as error:
        raise SaekitError(f"{directory / WEIGHTS_FILE} does not match its config: {error}") from None
    d.meta = dict(native.get("meta", {}))
    if (directory / SPARSITY_FILE).exists():
        d.log_feature_density = _load_tensors(directory / SPARSITY_FILE)["sparsity"]
    return d.to(device).eval()

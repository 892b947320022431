"""saekit's on-disk format: SAELens's files and cfg.json, plus what only saekit knows, under a manifest.

A directory holds
- `cfg.json`: exactly what SAELens's writer produces for the dictionary (`saekit.formats.saelens.
  export_cfg` and `save`), so SAELens and SAEBench load every variant SAELens knows (SAEs, transcoders,
  skip and JumpReLU transcoders, BatchTopK as JumpReLU, matching pursuit). Its `metadata.saekit` holds
  the format version and saekit's three configs (what it computes, how it was trained, where its data
  came from) and recorded facts; SAELens keeps that key when it re-saves. The top-level
  `saekit_format_version` marks the directory as saekit's own (SAELens drops it when it re-saves, and the
  copy is then an SAELens directory that still restores saekit's configs). Dictionaries SAELens cannot
  hold (crosscoders, TopK/Gated transcoders, BatchTopK before its threshold exists) get architecture
  `saekit:<method>`, which SAELens refuses by name rather than misreading;
- `sae_weights.safetensors` (SAELens's tensor names and layout) and, when firing statistics are known,
  `sparsity.safetensors` (key `sparsity` = log10 firing density per latent);
- `manifest.json`: the sha256 of every other file, cfg.json included, so a flipped byte anywhere (a
  changed k, a hookpoint, a weight) is detected before anything is used.

Format 1 (saekit ≤ stop 12: a top-level `saekit` section with one flat `config`, checksums of the weight
files inside cfg.json, no manifest) still loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.formats.core import load_tensors, make_dictionary, read_json, stash, unstash
from saekit.io import OWNER_MARK, atomic_directory, member_path, sha256_file
from saekit.training.guard import check_finite_weights

FORMAT_VERSION = 2
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_KIND = "saekit-dictionary"
VERSION_KEY = "saekit_format_version"  # top level: this directory is saekit's own


def native_cfg(d: Dictionary) -> dict[str, Any]:
    """SAELens's cfg.json for `d` (or the same fields under `saekit:<method>`) plus the saekit section."""
    from saekit.formats import saelens

    try:
        saelens.export_weights(d)  # what SAELens would misread (an unset threshold) is not SAELens's
        cfg = saelens.export_cfg(d)
    except SaekitError:
        cfg = saelens.export_cfg(d, architecture=f"saekit:{d.cfg.method}")
    cfg["metadata"]["saekit"] = {"format_version": FORMAT_VERSION, **stash(d)}
    cfg[VERSION_KEY] = FORMAT_VERSION
    return cfg


def saekit_section(raw: dict[str, Any]) -> Any:
    """The saekit section of a cfg.json: `metadata.saekit` (format 2) or top-level `saekit` (format 1)."""
    metadata = raw.get("metadata")
    if isinstance(metadata, dict) and "saekit" in metadata:
        return metadata["saekit"]
    return raw.get("saekit")


def save(d: Dictionary, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `d` to `directory` atomically (a killed save leaves the previous contents intact). An
    existing directory is replaced only if saekit wrote it (or `overwrite`)."""
    directory = Path(directory)
    weights = {name: t.contiguous().cpu() for name, t in d.weights().items()}
    check_finite_weights(weights, f"saving {directory}")
    with atomic_directory(directory, overwrite) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        if d.log_feature_density is not None:
            save_file({"sparsity": d.log_feature_density.detach().float().contiguous().cpu()},
                      str(tmp / SPARSITY_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(native_cfg(d), indent=2) + "\n", encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir() if p.name != OWNER_MARK)
        manifest = {"kind": MANIFEST_KIND, "format_version": FORMAT_VERSION,
                    "sha256": {name: sha256_file(tmp / name) for name in files}}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def is_native_dir(path: Path) -> bool:
    """A saekit dictionary: a saekit manifest, or (format 1) cfg.json with a `saekit` section."""
    if not (path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    if (path / MANIFEST_FILE).is_file():
        return True  # whatever is wrong inside, loading it as saekit's reports it
    try:
        raw = json.loads((path / CFG_FILE).read_text(encoding="utf-8"))
        return isinstance(raw, dict) and (VERSION_KEY in raw or "saekit" in raw)  # format 2 or 1
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False  # let whoever loads it report the corrupted file


def verify(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest (format 2) or cfg.json's checksums (format 1); return the
    parsed cfg.json. Raises a one-line SaekitError naming the first file that fails."""
    manifest_path = directory / MANIFEST_FILE
    if manifest_path.is_file():
        manifest = read_json(manifest_path)
        checksums = manifest.get("sha256")
        if manifest.get("kind") != MANIFEST_KIND or not isinstance(checksums, dict) or CFG_FILE not in checksums:
            raise SaekitError(f"{manifest_path} is not a saekit dictionary manifest: the directory is "
                              "corrupted; re-save or re-download the dictionary")
        _check_files(directory, checksums)
        raw = read_json(directory / CFG_FILE)
        section = saekit_section(raw)
        version = section.get("format_version") if isinstance(section, dict) else None
        if version != manifest.get("format_version"):
            raise SaekitError(f"{directory / CFG_FILE} says format version {version!r} but its manifest "
                              f"says {manifest.get('format_version')!r}: the directory is corrupted")
        return raw
    raw = read_json(directory / CFG_FILE)
    native = saekit_section(raw)
    version = raw.get(VERSION_KEY, native.get("format_version") if isinstance(native, dict) else None)
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise SaekitError(f"{directory / CFG_FILE} has format version {version}; this saekit reads versions "
                          f"1 to {FORMAT_VERSION}: upgrade saekit")
    if version != 1:
        raise SaekitError(f"{directory} has no {MANIFEST_FILE} (format {version!r}): the dictionary is "
                          "incomplete or was edited; re-save or re-download it")
    checksums = native.get("sha256")
    if not isinstance(checksums, dict) or WEIGHTS_FILE not in checksums:
        raise SaekitError(f"{directory / CFG_FILE} (format 1) has no checksums for its weights: the file "
                          "is corrupted or was edited; re-save or re-download the dictionary")
    _check_files(directory, checksums)
    return raw


def _check_files(directory: Path, checksums: dict[str, Any]) -> None:
    for name, expected in checksums.items():
        path = member_path(directory, name)
        if not path.is_file():
            raise SaekitError(f"{path} is missing or not a regular file: the dictionary directory is "
                              "incomplete; re-save or re-download it")
        if sha256_file(path) != expected:
            raise SaekitError(f"{path} fails its checksum: the file is corrupted or was edited; re-save "
                              "or re-download the dictionary")


def load(directory: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
         **_: Any) -> Dictionary:
    """Load a dictionary saved by `save` (or by saekit ≤ stop 12), verifying every file first."""
    directory = Path(directory)
    if not directory.exists():
        raise SaekitError(f"no such dictionary directory: {directory}")
    if not directory.is_dir() or not (directory / CFG_FILE).exists():
        raise SaekitError(f"{directory} is not a saekit dictionary (no {CFG_FILE}); pass the directory "
                          "that `saekit.save` or `saekit train` wrote")
    raw = verify(directory)
    native = saekit_section(raw)
    if not isinstance(native, dict):
        raise SaekitError(f"{directory / CFG_FILE} has no saekit section: this is not a saekit dictionary "
                          "(foreign formats need a converter)")
    if native.get("format_version") not in (1, FORMAT_VERSION):
        raise SaekitError(f"{directory / CFG_FILE} has format version {native.get('format_version')!r}; "
                          f"this saekit reads versions 1 and {FORMAT_VERSION}: upgrade saekit")
    found = unstash(native, str(directory / CFG_FILE))
    tensors = load_tensors(directory / WEIGHTS_FILE)
    d = make_dictionary(found.dictionary, tensors, source=str(directory / WEIGHTS_FILE), dtype=dtype,
                        meta=found.meta, provenance=found.provenance, training=found.training)
    for param in d.parameters():  # a native dictionary is yours to fine-tune
        param.requires_grad_(True)
    if (directory / SPARSITY_FILE).is_file():
        d.log_feature_density = load_tensors(directory / SPARSITY_FILE)["sparsity"]
    return d.to(device)

"""One entry point for every format: recognise a dictionary by its files, load it, write it as another.

| format              | recognised by                                              |
|---------------------|------------------------------------------------------------|
| saekit (native)     | cfg.json with a `saekit` section + sae_weights.safetensors |
| saelens             | cfg.json + sae_weights.safetensors                         |
| sparsify            | cfg.json + sae.safetensors                                 |
| dictionary_learning | ae.pt (+ config.json), or a bare .pt file                  |
| gemma_scope         | params.npz (file or folder), or params.safetensors         |

A name that is not a local path but looks like `org/repo` is fetched from the Hugging Face Hub first.
A folder holding several dictionaries (a sparsify run, a dictionary_learning sweep) is refused with the
list of its members, so the caller picks one with `subfolder=`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saekit.dictionary import Dictionary
from saekit.errors import SaekitError

FORMATS = ("saekit", "saelens", "sparsify", "dictionary_learning", "gemma_scope")
WRITABLE = ("saekit", "saelens", "sparsify", "dictionary_learning")
# Files that only make sense inside their folder (ae.pt and params.npz load on their own).
MEMBER_FILES = ("cfg.json", "config.json", "sae_weights.safetensors", "sae.safetensors",
                "sparsity.safetensors", "params.safetensors")


def detect_format(path: str | Path) -> str:
    """The format of the dictionary at `path` (one of FORMATS), from its files alone."""
    from saekit.formats import dictionary_learning, gemma_scope, sparsify

    path = Path(path)
    if not path.exists():
        raise SaekitError(f"no such dictionary file or directory: {path}")
    if path.is_dir() and (path / "cfg.json").is_file():
        if (path / "sae_weights.safetensors").is_file():
            import json

            try:
                has_native = "saekit" in json.loads((path / "cfg.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                has_native = False  # let the loader report the corrupted file
            return "saekit" if has_native else "saelens"
        if sparsify.is_sparsify_dir(path):
            return "sparsify"
    if gemma_scope.is_gemma_scope(path):
        return "gemma_scope"
    if dictionary_learning.is_dictionary_learning(path):
        return "dictionary_learning"
    members = _members(path) if path.is_dir() else []
    if members:
        shown = ", ".join(members[:8]) + (", ..." if len(members) > 8 else "")
        raise SaekitError(f"{path} holds {len(members)} dictionaries ({shown}): pass one of them, "
                          f"e.g. subfolder={members[0]!r} (command line: --subfolder {members[0]})")
    raise SaekitError(f"{path} is not a saekit dictionary nor one in a known format ({', '.join(FORMATS)}): "
                      "expected cfg.json + sae_weights.safetensors, cfg.json + sae.safetensors, ae.pt or "
                      "params.npz; pass the folder that holds them")


def _members(path: Path, depth: int = 2) -> list[str]:
    """Sub-folders (up to `depth` deep) that hold a dictionary in a known format."""
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            detect_format(child)
            found.append(child.name)
        except SaekitError:
            if depth > 1:
                found += [f"{child.name}/{m}" for m in _members(child, depth - 1)]
    return found


def load_any(path_or_repo: str | Path, *, subfolder: str | None = None, revision: str | None = None,
             format: str | None = None, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu", hookpoint: str | None = None,
             model_name: str | None = None, dict_class: str | None = None) -> Dictionary:
    """Load a dictionary in any supported format, from a local path or a Hugging Face repository id.

    `format` skips detection; `dtype` casts (files keep their dtype otherwise: sparsify's bf16 stays
    bf16); `hookpoint`/`model_name` fill in what a format does not record (or override it);
    `dict_class` disambiguates a dictionary_learning `ae.pt` that has no config.json."""
    name = str(path_or_repo)
    repo_id = None
    path = Path(name)
    if not path.exists():
        from saekit.formats import hub

        if hub.looks_like_repo_id(name):
            repo_id = name
            path = hub.download(name, subfolder=subfolder, revision=revision)
        else:
            raise SaekitError(f"no such dictionary file or directory: {name} (nor a Hugging Face "
                              "repository id of the form org/name)")
    elif subfolder:
        path = path / subfolder
    if path.is_file() and path.name in MEMBER_FILES:  # a file of a dictionary folder names the folder
        path = path.parent
    fmt = format or detect_format(path)
    d = _load(fmt, path, dtype=dtype, repo_id=repo_id, subfolder=subfolder, dict_class=dict_class)
    if repo_id is not None:
        source = d.meta.setdefault("source", {})
        source.update({"repo_id": repo_id, "subfolder": subfolder, "revision": revision})
        source["path"] = str(path)
    if hookpoint is not None:
        d.cfg.hookpoint = hookpoint
    if model_name is not None:
        d.cfg.model_name = model_name
    return d.to(device)


def _load(fmt: str, path: Path, *, dtype: torch.dtype | None, repo_id: str | None,
          subfolder: str | None, dict_class: str | None) -> Dictionary:
    if fmt == "saekit":
        from saekit.formats import native

        d = native.load(path)
        return d.to(dtype) if dtype is not None else d
    if fmt == "saelens":
        from saekit.formats import saelens

        return saelens.load(path, dtype=dtype)
    if fmt == "sparsify":
        from saekit.formats import sparsify

        return sparsify.load(path, dtype=dtype)
    if fmt == "dictionary_learning":
        from saekit.formats import dictionary_learning

        return dictionary_learning.load(path, dtype=dtype, dict_class=dict_class)
    if fmt == "gemma_scope":
        from saekit.formats import gemma_scope

        return gemma_scope.load(path, dtype=dtype, repo_id=repo_id, subfolder=subfolder)
    raise SaekitError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def save_as(d: Dictionary, path: str | Path, to: str) -> Path:
    """Write `d` in format `to` (one of WRITABLE)."""
    if to == "saekit":
        from saekit.formats import native

        return native.save(d, path)
    if to == "saelens":
        from saekit.formats import saelens

        return saelens.save(d, path)
    if to == "sparsify":
        from saekit.formats import sparsify

        return sparsify.save(d, path)
    if to == "dictionary_learning":
        from saekit.formats import dictionary_learning

        return dictionary_learning.save(d, path)
    raise SaekitError(f"cannot write format {to!r}: choose one of {', '.join(WRITABLE)}")


def export_notes(d: Dictionary, to: str) -> list[str]:
    """What a reader of format `to` will not get from `d` (saekit reads everything back)."""
    notes = []
    if to == "saelens" and d.cfg.method in ("batchtopk", "matryoshka"):
        notes.append(f"SAELens loads this {d.cfg.method} dictionary as the JumpReLU it computes at "
                     "inference (shared threshold); k and the batch-level training rule live only in "
                     "metadata['saekit']")
    if to == "dictionary_learning" and d.cfg.method == "relu" and d.cfg.apply_b_dec_to_input:
        notes.append("dictionary_learning's load_dictionary rescales AutoEncoder decoder columns to unit "
                     "norm on load: reconstructions are unchanged, latents scale by the column norms")
    if to == "dictionary_learning" and d.cfg.method in ("jumprelu", "batchtopk", "matryoshka", "topk"):
        notes.append("encoder biases may be re-expressed for dictionary_learning's b_dec convention "
                     "(same outputs up to float rounding)")
    if to in ("sparsify", "dictionary_learning") and d.log_feature_density is not None:
        notes.append(f"{to} has no place for firing densities (sparsity.safetensors): not written")
    return notes


def convert(src: str | Path, dst: str | Path, to: str, **load_kwargs: Any) -> tuple[Dictionary, Path]:
    """Load `src` (any format, local or Hub) and write it to `dst` in format `to`."""
    if to not in WRITABLE:
        raise SaekitError(f"cannot write format {to!r}: choose one of {', '.join(WRITABLE)}")
    d = load_any(src, **load_kwargs)
    return d, save_as(d, dst, to)

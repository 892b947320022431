"""One entry point for every format: recognise a dictionary by its files, load it, write it as another.

| format              | recognised by                                              |
|---------------------|------------------------------------------------------------|
| saekit (native)     | cfg.json with a `saekit` section + sae_weights.safetensors |
| saelens             | cfg.json + sae_weights.safetensors                         |
| sparsify            | cfg.json + sae.safetensors                                 |
| dictionary_learning | ae.pt (+ config.json), or a bare .pt file                  |
| gemma_scope         | params.npz (file or folder), or params.safetensors         |
| saekit_transcoder_set | transcoder_set.json + one saekit folder per layer        |
| saekit_clt          | clt.json + layer_<i>.safetensors + manifest.json           |
| circuit-tracer      | config.yaml (model_kind) + layer_{i} or W_enc_{l}/W_dec_{l} |

`load` returns a `Dictionary`, or for the multi-layer formats a `TranscoderSet` or a
`CrossLayerTranscoder`; `load_any` insists on a single dictionary (commands that need one use it).

A name that is not a local path but looks like `org/repo` is fetched from the Hugging Face Hub first.
A folder holding several dictionaries (a sparsify run, a dictionary_learning sweep) is refused with the
list of its members, so the caller picks one with `subfolder=`. That listing looks at most two levels
down, never follows symbolic links and stops after `MAX_SCANNED` folders, so a link cycle or a huge
tree (`saekit info /usr`) ends at once. The formats themselves live in `saekit.formats.registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saekit.circuits.clt import CrossLayerTranscoder
from saekit.circuits.transcoder_set import TranscoderSet
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.formats.registry import formats, get_format, writable

Loaded = Dictionary | TranscoderSet | CrossLayerTranscoder

# Files that only make sense inside their folder (ae.pt and params.npz load on their own).
MEMBER_FILES = ("cfg.json", "config.json", "sae_weights.safetensors", "sae.safetensors",
                "sparsity.safetensors", "params.safetensors", "manifest.json")
MAX_SCANNED = 2000  # folders looked at when listing the dictionaries inside a folder


def _detect(path: Path) -> str | None:
    for fmt in formats():
        if fmt.detect(path):
            return fmt.name
    return None


def detect_format(path: str | Path) -> str:
    """The format of the dictionary at `path` (a registered format's name), from its files alone."""
    path = Path(path)
    if not path.exists():
        raise SaekitError(f"no such dictionary file or directory: {path}")
    found = _detect(path)
    if found is not None:
        return found
    members = _members(path) if path.is_dir() else []
    if members:
        shown = ", ".join(members[:8]) + (", ..." if len(members) > 8 else "")
        raise SaekitError(f"{path} holds {len(members)} dictionaries ({shown}): pass one of them, "
                          f"e.g. subfolder={members[0]!r} (command line: --subfolder {members[0]})")
    from saekit.attention.files import is_attention_dir  # a module kind of its own, not a dictionary

    if is_attention_dir(path):
        raise SaekitError(f"{path} holds a sparse attention replacement: load it with saekit.attention.load")
    names = ", ".join(fmt.name for fmt in formats())
    raise SaekitError(f"{path} is not a saekit dictionary nor one in a known format ({names}): "
                      "expected cfg.json + sae_weights.safetensors, cfg.json + sae.safetensors, ae.pt or "
                      "params.npz; pass the folder that holds them")


def _members(path: Path, depth: int = 2) -> list[str]:
    """Sub-folders (up to `depth` deep, no symbolic links, at most MAX_SCANNED looked at) that hold a
    dictionary in a known format."""
    found: list[str] = []
    budget = [MAX_SCANNED]

    def walk(folder: Path, prefix: str, depth: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            if budget[0] <= 0:
                return
            if child.is_symlink() or not child.is_dir():
                continue
            budget[0] -= 1
            if _detect(child) is not None:
                found.append(prefix + child.name)
            elif depth > 1:
                walk(child, f"{prefix}{child.name}/", depth - 1)

    walk(path, "", depth)
    return found


def load(path_or_repo: str | Path, *, subfolder: str | None = None, revision: str | None = None,
         format: str | None = None, dtype: torch.dtype | None = None,
         device: str | torch.device = "cpu", hookpoint: str | None = None,
         model_name: str | None = None, dict_class: str | None = None) -> Loaded:
    """Load a dictionary in any supported format, from a local path or a Hugging Face repository id;
    a transcoder set or cross-layer transcoder folder (saekit's or circuit-tracer's) loads as one
    `TranscoderSet` / `CrossLayerTranscoder`.

    `format` skips detection; `dtype` casts (files keep their dtype otherwise: sparsify's bf16 stays
    bf16); `hookpoint`/`model_name` fill in what a format does not record (or override it; single
    dictionaries only, model_name also for multi-layer ones); `dict_class` disambiguates a
    dictionary_learning `ae.pt` that has no config.json."""
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
    fmt = get_format(format or detect_format(path))
    loaded = fmt.load(path, dtype=dtype, repo_id=repo_id, subfolder=subfolder, dict_class=dict_class)
    if isinstance(loaded, (TranscoderSet, CrossLayerTranscoder)):
        if hookpoint is not None:
            raise SaekitError(f"{path} holds one transcoder per layer, each with its own hookpoints: drop "
                              "hookpoint=")
        if model_name is not None:
            for member in (loaded.transcoders if isinstance(loaded, TranscoderSet) else [loaded]):
                member.provenance.model_name = model_name
        if repo_id is not None:
            loaded.meta.setdefault("source", {}).update({"repo_id": repo_id, "subfolder": subfolder,
                                                         "revision": revision})
        return loaded.to(device)
    d = loaded
    if dtype is not None and d.W_dec.dtype != dtype:
        d = d.to(dtype)
    if repo_id is not None:
        source = d.meta.setdefault("source", {})
        source.update({"repo_id": repo_id, "subfolder": subfolder, "revision": revision})
        source["path"] = str(path)
    if hookpoint is not None:
        d.provenance.hookpoint = hookpoint
    if model_name is not None:
        d.provenance.model_name = model_name
    return d.to(device)


def load_any(path_or_repo: str | Path, **kwargs: Any) -> Dictionary:
    """`load`, for callers that need one dictionary: a transcoder set or CLT is refused with the way
    to get one of its layers."""
    loaded = load(path_or_repo, **kwargs)
    if isinstance(loaded, TranscoderSet):
        raise SaekitError(f"{path_or_repo} is a transcoder set ({len(loaded)} layers): pass one layer's folder "
                          f"(e.g. {Path(str(path_or_repo)) / ('layer_' + str(loaded.layers[0]))}) or use a command "
                          "that takes sets (eval, dashboard, convert, info)")
    if isinstance(loaded, CrossLayerTranscoder):
        raise SaekitError(f"{path_or_repo} is a cross-layer transcoder ({loaded.n_layers} layers): this needs a "
                          "single dictionary; eval, dashboard, convert and info take CLTs")
    return loaded


MULTI_LAYER_FORMATS = ("saekit", "circuit-tracer")


def save(obj: Loaded, path: str | Path, overwrite: bool = False) -> Path:
    """Write a dictionary, transcoder set or cross-layer transcoder in saekit's format."""
    return save_as(obj, path, "saekit", overwrite)


def save_as(d: Loaded, path: str | Path, to: str, overwrite: bool = False) -> Path:
    """Write `d` in format `to` (one of `writable()`); an existing `path` is replaced only if saekit
    wrote it (or `overwrite`)."""
    fmt = get_format(to)
    if fmt.save is None:
        raise SaekitError(f"cannot write format {to!r}: choose one of {', '.join(writable())}")
    if isinstance(d, (TranscoderSet, CrossLayerTranscoder)) and to not in MULTI_LAYER_FORMATS:
        what = "a transcoder set" if isinstance(d, TranscoderSet) else "a cross-layer transcoder"
        raise SaekitError(f"{to} holds single dictionaries, not {what}: write it --to "
                          f"{' or '.join(MULTI_LAYER_FORMATS)}, or convert one layer's folder")
    return fmt.save(d, Path(path), overwrite=overwrite)


def export_notes(d: Loaded, to: str) -> list[str]:
    """What a reader of format `to` will not get from `d` (saekit reads everything back)."""
    return get_format(to).notes(d)


def convert(src: str | Path, dst: str | Path, to: str, overwrite: bool = False,
            **load_kwargs: Any) -> tuple[Loaded, Path]:
    """Load `src` (any format, local or Hub) and write it to `dst` in format `to` (an existing `dst` is
    replaced only if saekit wrote it, or `overwrite`; checked before loading)."""
    from saekit.io import check_replaceable

    if get_format(to).save is None:
        raise SaekitError(f"cannot write format {to!r}: choose one of {', '.join(writable())}")
    check_replaceable(dst, overwrite)
    d = load(src, **load_kwargs)
    return d, save_as(d, dst, to, overwrite)

"""The formats saekit reads and writes, as one registry instead of if-chains.

Each format is a `Format`: how to recognise it from its files, how to load it, how (if at all) to write
it, and what its readers lose. Detection tries the formats in registry order, most specific first (a
saekit directory is also an SAELens one). A new format is one module plus one `register` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError


def _no_notes(_: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[Path], bool]  # does `path` (file or folder) hold one dictionary of this format?
    load: Callable[..., Any]  # load(path, *, dtype=None, **context) -> Dictionary
    save: Callable[..., Path] | None = None  # save(d, path, overwrite=False); None: read-only
    notes: Callable[[Any], list[str]] = field(default=_no_notes)  # what a reader of the format loses


_FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    _FORMATS[fmt.name] = fmt
    return fmt


def formats() -> list[Format]:
    _register_builtin()
    return list(_FORMATS.values())


def get_format(name: str) -> Format:
    _register_builtin()
    if name not in _FORMATS:
        raise SaekitError(f"unknown format {name!r}: choose one of {', '.join(_FORMATS)}")
    return _FORMATS[name]


def writable() -> list[str]:
    return [fmt.name for fmt in formats() if fmt.save is not None]


def _register_builtin() -> None:
    if _FORMATS:
        return
    from saekit.formats import circuit_tracer, dictionary_learning, gemma_scope, multilayer, native, saelens, sparsify

    register(Format("saekit", native.is_native_dir, native.load, multilayer.save_any))
    register(Format("saekit_transcoder_set", multilayer.is_transcoder_set_dir, multilayer.load_transcoder_set))
    register(Format("saekit_clt", multilayer.is_clt_dir, multilayer.load_clt))
    register(Format("circuit-tracer", circuit_tracer.is_circuit_tracer_dir, circuit_tracer.load,
                    circuit_tracer.save, circuit_tracer.notes))
    register(Format("saelens", saelens.is_saelens_dir, saelens.load, saelens.save, saelens.notes))
    register(Format("sparsify", sparsify.is_sparsify_dir, sparsify.load, sparsify.save, sparsify.notes))
    register(Format("gemma_scope", gemma_scope.is_gemma_scope, gemma_scope.load))
    register(Format("dictionary_learning", dictionary_learning.is_dictionary_learning,
                    dictionary_learning.load, dictionary_learning.save, dictionary_learning.notes))

"""Hookpoints on any `transformers` model: module names with wildcards, and named sites.

A hookpoint is either
- a module name, optionally with wildcards (`model.layers.*`, `model.layers.[0-3]`, `model.layers.6.mlp`;
  fnmatch rules), capturing the module's output, or its input with the suffix `:input`; or
- a named site that means the same thing in every common family, so users need not learn module names:
  `resid_post.L` (residual stream after block L), `mlp_in.L` (the MLP's input, i.e. after the
  pre-MLP norm), `mlp_out.L` (the MLP's output), `attn_out.L` (the attention block's output), with L an
  integer or `*`.
Resolved hookpoints keep the name the user gave (that is what dictionaries record).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Sized
from dataclasses import dataclass
from typing import cast

from torch import nn

from saekit.errors import SaekitError

# family -> (blocks container, mlp child, attention child); the first whose container exists wins.
FAMILIES = [
    ("model.layers", "mlp", "self_attn"),  # Llama, Qwen, Gemma, Mistral, SmolLM
    ("model.language_model.layers", "mlp", "self_attn"),  # Gemma 3 multimodal wrappers
    ("transformer.h", "mlp", "attn"),  # GPT-2, GPT-J
    ("gpt_neox.layers", "mlp", "attention"),  # GPT-NeoX, Pythia
    ("model.decoder.layers", "fc2", "self_attn"),  # OPT (MLP output = fc2)
    ("encoder.layer", "output", "attention"),  # BERT (AutoModel)
    ("bert.encoder.layer", "output", "attention"),  # BERT inside task heads
]
NAMED_SITE = re.compile(r"^(resid_post|mlp_in|mlp_out|attn_out)\.(\d+|\*)$")


@dataclass(frozen=True)
class Hookpoint:
    name: str  # as the user wrote it (expanded for wildcards)
    module: str  # module name inside the model
    capture_input: bool = False

    @property
    def site(self) -> str:
        return f"{self.module}:input" if self.capture_input else self.module


def _family(model: nn.Module) -> tuple[str, str, str]:
    names = dict(model.named_modules())
    for container, mlp, attn in FAMILIES:
        if container in names:
            return container, mlp, attn
    raise SaekitError("named sites (resid_post.L, mlp_in.L, ...) are not known for "
                      f"{type(model).__name__}: use module names instead (see `saekit hookpoints`)")


def _expand_named(model: nn.Module, site: str, layer: str) -> list[Hookpoint]:
    container, mlp, attn = _family(model)
    n_layers = len(cast(Sized, model.get_submodule(container)))  # the family's ModuleList of blocks
    layers = range(n_layers) if layer == "*" else [int(layer)]
    out = []
    for index in layers:
        if not 0 <= index < n_layers:
            raise SaekitError(f"layer {index} does not exist: the model has {n_layers} layers (0..{n_layers - 1})")
        block = f"{container}.{index}"
        name = f"{site}.{index}"
        if site == "resid_post":
            out.append(Hookpoint(name, block))
        elif site == "mlp_in":
            out.append(Hookpoint(name, f"{block}.{mlp}", capture_input=True))
        elif site == "mlp_out":
            out.append(Hookpoint(name, f"{block}.{mlp}"))
        else:
            out.append(Hookpoint(name, f"{block}.{attn}"))
    return out


def resolve_hookpoints(model: nn.Module, patterns: list[str]) -> list[Hookpoint]:
    """Expand every pattern into hookpoints, in model order, with a clear error for no match."""
    module_names = [name for name, _ in model.named_modules() if name]
    order = {name: i for i, name in enumerate(module_names)}
    found: list[Hookpoint] = []
    for pattern in patterns:
        match = NAMED_SITE.match(pattern)
        if match:
            found.extend(_expand_named(model, match.group(1), match.group(2)))
            continue
        base, _, suffix = pattern.partition(":")
        if suffix not in ("", "input", "output"):
            raise SaekitError(f"hookpoint {pattern!r}: the suffix must be :input or :output")
        hits = [name for name in module_names if fnmatch.fnmatchcase(name, base)]
        if not hits:
            close = difflib.get_close_matches(base, module_names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SaekitError(f"hookpoint {pattern!r} matches no module of {type(model).__name__}"
                              f"{hint} (named sites: resid_post.L, mlp_in.L, mlp_out.L, attn_out.L)")
        for name in hits:
            found.append(Hookpoint(name + (":input" if suffix == "input" else ""), name,
                                   capture_input=suffix == "input"))
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda h: order.get(h.module, -1))


def named_sites(model: nn.Module) -> dict[str, str]:
    """{named site: the module (and `:input`) it reads} for every layer, or {} for unknown families."""
    try:
        container = _family(model)[0]
    except SaekitError:
        return {}
    n_layers = len(cast(Sized, model.get_submodule(container)))  # the family's ModuleList of blocks
    sites = {}
    for kind in ("resid_post", "mlp_in", "mlp_out", "attn_out"):
        for point in _expand_named(model, kind, "*"):
            sites[point.name] = point.site
    return dict(sorted(sites.items(), key=lambda item: (int(item[0].split(".")[1]), item[0]))) \
        if n_layers else {}


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, in order (one of the known families)."""
    return list(cast(nn.ModuleList, model.get_submodule(_family(model)[0])))


def list_modules(model: nn.Module, depth: int = 4) -> list[str]:
    """Module names up to `depth` dots, for `saekit hookpoints`."""
    return [name for name, _ in model.named_modules() if name and name.count(".") < depth]

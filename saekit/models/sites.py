"""Hookpoints on any `transformers` model: module names with wildcards, and named sites.

A hookpoint is either
- a module name, optionally with wildcards (`model.layers.*`, `model.layers.[0-3]`, `model.layers.6.mlp`;
  fnmatch rules), capturing the module's output, or its input with the suffix `:input`; or
- a named site that means the same thing in every common family, so users need not learn module names:
  `resid_post.L` (residual stream after block L), `mlp_in.L` (the MLP's input, i.e. after the
  pre-MLP norm), `mlp_out.L` (the MLP's output), `attn_out.L` (the attention block's output),
  `attn_in.L` (the attention block's input, i.e. after the pre-attention norm) and `attn_z.L` (the
  concatenated per-head outputs [n_heads · d_head] before the output projection, the site of
  attention-output SAEs whose decoders attribute latents to heads), with L an integer or `*`.
Resolved hookpoints keep the name the user gave (that is what dictionaries record).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Sized
from dataclasses import dataclass
from typing import cast

from torch import Tensor, nn

from saekit.errors import SaekitError

# family -> (blocks container, mlp child, attention child, attention output projection inside the
# block, whose input is the concatenation of the heads' outputs); the first whose container exists wins.
FAMILIES = [
    ("model.layers", "mlp", "self_attn", "self_attn.o_proj"),  # Llama, Qwen, Gemma, Mistral, SmolLM
    ("model.language_model.layers", "mlp", "self_attn", "self_attn.o_proj"),  # Gemma 3 multimodal
    ("transformer.h", "mlp", "attn", "attn.c_proj"),  # GPT-2 (GPT-J: attn.out_proj, see _projection)
    ("gpt_neox.layers", "mlp", "attention", "attention.dense"),  # GPT-NeoX, Pythia
    ("model.decoder.layers", "fc2", "self_attn", "self_attn.out_proj"),  # OPT (MLP output = fc2)
    ("encoder.layer", "output", "attention", "attention.output.dense"),  # BERT (AutoModel)
    ("bert.encoder.layer", "output", "attention", "attention.output.dense"),  # BERT inside task heads
]
SITE_KINDS = ("resid_post", "mlp_in", "mlp_out", "attn_in", "attn_out", "attn_z")
NAMED_SITE = re.compile(rf"^({'|'.join(SITE_KINDS)})\.(\d+|\*)$")
SITE_NAMES = "resid_post.L, mlp_in.L, mlp_out.L, attn_in.L, attn_out.L, attn_z.L"



@dataclass(frozen=True)
class Hookpoint:
    name: str  # as the user wrote it (expanded for wildcards)
    module: str  # module name inside the model
    capture_input: bool = False

    @property
    def site(self) -> str:
        return f"{self.module}:input" if self.capture_input else self.module


def _family(model: nn.Module) -> tuple[str, str, str, str]:
    names = dict(model.named_modules())
    for family in FAMILIES:
        if family[0] in names:
            return family
    raise SaekitError("named sites (resid_post.L, mlp_in.L, ...) are not known for "
                      f"{type(model).__name__}: use module names instead (see `saekit hookpoints`)")


def _projection(model: nn.Module, block: str, projection: str) -> str:
    """The attention output projection of one block, or a one-line error when the block has none (a
    model whose attention is not the usual heads-then-projection)."""
    for candidate in (projection, projection.rsplit(".", 1)[0] + ".out_proj"):
        try:
            model.get_submodule(f"{block}.{candidate}")
            return f"{block}.{candidate}"
        except AttributeError:
            continue
    raise SaekitError(f"attn_z needs the attention output projection {block}.{projection}, which "
                      f"{type(model).__name__} does not have: hook the module whose input holds the "
                      "heads' outputs by name (see `saekit hookpoints`)")


def _expand_named(model: nn.Module, site: str, layer: str) -> list[Hookpoint]:
    container, mlp, attn, projection = _family(model)
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
        elif site == "attn_in":
            out.append(Hookpoint(name, f"{block}.{attn}", capture_input=True))
        elif site == "attn_z":
            out.append(Hookpoint(name, _projection(model, block, projection), capture_input=True))
        else:
            out.append(Hookpoint(name, f"{block}.{attn}"))
    for point in out:
        try:
            model.get_submodule(point.module)
        except AttributeError:
            raise SaekitError(f"{point.name} reads {point.module}, which {type(model).__name__} does not "
                              "have (its blocks differ from the usual family layout): hook a module by "
                              "name instead (see `saekit hookpoints`)") from None
    return out


def attention_heads(model: nn.Module, hookpoint: str) -> tuple[int, int] | None:
    """(n_heads, d_head) of the attention whose per-head outputs `hookpoint` reads (an `attn_z.L` site),
    or None for any other hookpoint."""
    match = NAMED_SITE.match(hookpoint)
    if not match or match.group(1) != "attn_z":
        return None
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    n_heads = getattr(config, "num_attention_heads", None)
    if not isinstance(n_heads, int) or n_heads <= 0:
        raise SaekitError(f"{type(model).__name__}'s config has no num_attention_heads: the heads of "
                          f"{hookpoint} are unknown")
    point = _expand_named(model, "attn_z", match.group(2))[0]
    projection = model.get_submodule(point.module)
    weight = cast(Tensor, projection.weight)
    # nn.Linear keeps its weight as [out, in]; GPT-2's Conv1D as [in, out]
    width = projection.in_features if isinstance(projection, nn.Linear) else weight.shape[0]
    if width % n_heads:
        raise SaekitError(f"{hookpoint} has width {width}, not a multiple of {n_heads} heads")
    return n_heads, int(width) // n_heads


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
                              f"{hint} (named sites: {SITE_NAMES})")
        for name in hits:
            found.append(Hookpoint(name + (":input" if suffix == "input" else ""), name,
                                   capture_input=suffix == "input"))
    unique = list(dict.fromkeys(found))
    # Sorted by when each hook fires: a module's input when the module starts, its output once all of
    # its submodules have run (modules are listed depth first, so its last descendant's position).
    # A block's output thus comes after its MLP's, and attention's output after its projection's input,
    # so a forward stopped after the last hookpoint has recorded every one of them.
    last_descendant = {}
    for name in module_names:
        prefix = name
        while prefix:
            last_descendant[prefix] = order[name]
            prefix = prefix.rpartition(".")[0]
    return sorted(unique, key=lambda h: (order.get(h.module, -1), 0) if h.capture_input
                  else (last_descendant.get(h.module, -1), 1))


def named_sites(model: nn.Module) -> dict[str, str]:
    """{named site: the module (and `:input`) it reads} for every layer, or {} for unknown families."""
    try:
        container = _family(model)[0]
    except SaekitError:
        return {}
    n_layers = len(cast(Sized, model.get_submodule(container)))  # the family's ModuleList of blocks
    sites = {}
    for kind in SITE_KINDS:
        try:
            points = _expand_named(model, kind, "*")
        except SaekitError:  # a family without an output projection has no attn_z
            continue
        for point in points:
            sites[point.name] = point.site
    return dict(sorted(sites.items(), key=lambda item: (int(item[0].split(".")[1]), item[0]))) \
        if n_layers else {}


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, in order (one of the known families)."""
    return list(cast(nn.ModuleList, model.get_submodule(_family(model)[0])))


def list_modules(model: nn.Module, depth: int = 4) -> list[str]:
    """Module names up to `depth` dots, for `saekit hookpoints`."""
    return [name for name, _ in model.named_modules() if name and name.count(".") < depth]

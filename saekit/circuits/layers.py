"""Which layers a transcoder set or a cross-layer transcoder covers, and where their MLPs are.

Layer lists are written the way users think of them: `all`, a comma list `0,3,5`, a Python slice
`::2` / `4:12` / `10:` (stride and ranges), or a mix (`0,4:8`). Every layer reads the MLP's input
(`mlp_in.L`, after the pre-MLP norm) and predicts the MLP's output (`mlp_out.L`): the site every
reference trains transcoders on (METHODS-2 §1.1; circuit-tracer's `mlp.hook_in` → `mlp.hook_out`).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import cast

from torch import nn

from saekit.errors import SaekitError
from saekit.models.sites import FAMILIES

INPUT_SITE, OUTPUT_SITE = "mlp_in", "mlp_out"


def input_hookpoint(layer: int) -> str:
    return f"{INPUT_SITE}.{layer}"


def output_hookpoint(layer: int) -> str:
    return f"{OUTPUT_SITE}.{layer}"


def mlp_layer_count(model: nn.Module) -> int:
    """Number of transformer blocks of `model` whose MLP module saekit can find, with a one-line error
    for a model whose blocks or MLPs it cannot find (a transcoder needs both the MLP's input and its
    output)."""
    names = dict(model.named_modules())
    for container, mlp, *_ in FAMILIES:
        if container not in names:
            continue
        blocks = cast(Sized, model.get_submodule(container))
        n = len(blocks)
        missing = [i for i in range(n) if f"{container}.{i}.{mlp}" not in names]
        if n == 0 or missing:
            where = f"{container}.{missing[0] if missing else 0}.{mlp}"
            raise SaekitError(f"cannot find the MLP modules of {type(model).__name__} (no {where}): "
                              "transcoders need each block's MLP; train on module hookpoints "
                              "(--hookpoints NAME:input with target_hookpoint NAME) instead")
        return n
    raise SaekitError(f"cannot find the MLP modules of {type(model).__name__}: its blocks are not in a "
                      "known layout (Llama/Qwen/Gemma, GPT-2, GPT-NeoX, OPT, BERT); train on module "
                      "hookpoints (--hookpoints NAME:input with target_hookpoint NAME) instead")


def parse_layers(text: str | list[int] | tuple[int, ...], n_layers: int) -> list[int]:
    """Sorted distinct layers from `all`, `0,3,5`, `::2`, `4:12`, `0,4:8` (or a list of ints), each
    checked against the model's `n_layers`."""
    if isinstance(text, (list, tuple)):
        parts: list[str] = [str(v) for v in text]
    else:
        spec = str(text).strip().lower()
        if spec in ("all", "*", ""):
            return list(range(n_layers))
        parts = [p.strip() for p in spec.split(",")]
    layers: list[int] = []
    for part in parts:
        if not part:
            raise SaekitError(f"empty entry in the layer list {text!r}: write e.g. all, 0,3,5 or ::2")
        try:
            if ":" in part:
                pieces = [int(p) if p.strip() else None for p in part.split(":")]
                if len(pieces) > 3:
                    raise ValueError
                start, stop, step = (pieces + [None, None])[:3]
                if step == 0:
                    raise SaekitError(f"layer slice {part!r} has step 0")
                for bound in (start, stop):
                    if bound is not None and not -n_layers <= bound <= n_layers:
                        raise SaekitError(f"layer slice {part!r} is out of range: the model has {n_layers} "
                                          f"layers (0..{n_layers - 1})")
                layers.extend(range(n_layers)[slice(start, stop, step)])
            else:
                layer = int(part)
                if not 0 <= layer < n_layers:
                    raise SaekitError(f"layer {layer} is out of range: the model has {n_layers} layers "
                                      f"(0..{n_layers - 1})")
                layers.append(layer)
        except ValueError:
            raise SaekitError(f"cannot read {part!r} in the layer list {text!r}: write all, a comma list "
                              "(0,3,5) or a slice (::2, 4:12)") from None
    found = sorted(set(layers))
    if not found:
        raise SaekitError(f"the layer list {text!r} selects no layer of the model's {n_layers}")
    return found


def hookpoints_for(layers: list[int]) -> list[str]:
    """The named sites a set of layers reads: each layer's MLP input and output."""
    return [name for layer in layers for name in (input_hookpoint(layer), output_hookpoint(layer))]

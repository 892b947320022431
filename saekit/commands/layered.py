"""`saekit train --transcoders LAYERS` / `--clt LAYERS`: transcoder sets and cross-layer transcoders from one
model forward. Parsing and wiring only; the work is `saekit.train` and `saekit.circuits`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from saekit.circuits.clt import CLTConfig
from saekit.circuits.clt_training import CLT_TRAINING_ONLY, CLTSpec, CLTTrainingConfig
from saekit.commands.common import add_dataclass_arguments, dataclass_values
from saekit.config import DictionaryConfig
from saekit.errors import SaekitError
from saekit.training.config import TrainingConfig

# CLTConfig fields a flag of their own carries (the others share DictionaryConfig's --method, --d-sae, ...).
CLT_ONLY = tuple(f.name for f in dataclasses.fields(CLTConfig)
                 if f.name not in {g.name for g in dataclasses.fields(DictionaryConfig)} and f.name != "n_layers")
# DictionaryConfig fields a cross-layer transcoder takes from the shared flags.
CLT_SHARED = ("method", "d_sae", "k", "name")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "transcoders at every layer (with --model): MLP input -> MLP output, from one model forward")
    group.add_argument("--transcoders", default=None, metavar="LAYERS",
                       help="Train a per-layer transcoder set on these layers: all, a list (0,3,5) or a slice "
                            "(::2, 4:12); one folder per set, one saekit transcoder per layer inside.")
    group.add_argument("--clt", default=None, metavar="LAYERS",
                       help="Train a cross-layer transcoder over these layers (same syntax): one encoder per "
                            "layer, decoders from each layer into every later one. With --transcoders, both "
                            "train from the same stream (equal k gives equal total L0).")
    add_dataclass_arguments(parser, CLTConfig, exclude=tuple(f.name for f in dataclasses.fields(CLTConfig)
                                                             if f.name not in CLT_ONLY),
                            group_title="cross-layer transcoder: what it computes")
    add_dataclass_arguments(parser, CLTTrainingConfig, exclude=tuple(
        f.name for f in dataclasses.fields(CLTTrainingConfig) if f.name not in CLT_TRAINING_ONLY),
        group_title="cross-layer transcoder: how it is trained")


def requested(args: argparse.Namespace) -> bool:
    return bool(args.transcoders or args.clt)


def _clt_options(values: dict[str, Any]) -> dict[str, Any]:
    """The options of one [[dictionaries]] entry (and flags) that a CLT takes, refusing the others."""
    allowed = set(CLT_SHARED) | set(CLT_ONLY) | set(CLT_TRAINING_ONLY) | {f.name for f in dataclasses.fields(
        TrainingConfig)} | {"model_name", "dataset", "context_size"}
    for key, value in values.items():
        if key not in allowed and value not in (None, False):
            raise SaekitError(f"{key} does not apply to cross-layer transcoders; drop it (or train only "
                              "--transcoders)")
    return {key: value for key, value in values.items() if key in allowed}


def layered_specs(entries: list[dict[str, Any]], flags: dict[str, Any], widths: dict[Any, int],
                  plt_layers: list[int], clt_layers: list[int], source: dict[str, Any]
                  ) -> tuple[list[Any], list[tuple[str, str, list[int]]]]:
    """Specs for every [[dictionaries]] entry: a transcoder set over `plt_layers` and/or a CLT over
    `clt_layers`; and the groups (kind, name, spec indices) to assemble after training."""
    from saekit.circuits.layers import input_hookpoint, output_hookpoint
    from saekit.circuits.transcoder_set import transcoder_set_specs

    specs: list[Any] = []
    groups: list[tuple[str, str, list[int]]] = []
    for entry in entries:
        values = {**entry, **flags}
        for key in ("hookpoint", "target_hookpoint", "source_hookpoints"):
            if values.get(key):
                raise SaekitError(f"{key} is chosen per layer by --transcoders / --clt (mlp_in.L -> mlp_out.L); "
                                  "drop it")
        provenance = {key: value for key, value in source.items() if value is not None}
        plt_values = {k: v for k, v in values.items() if k not in CLT_ONLY and k not in CLT_TRAINING_ONLY}
        if any(k in values for k in CLT_ONLY + CLT_TRAINING_ONLY) and not clt_layers:
            raise SaekitError("max_reach, decoder_dtype, tanh_scale and preactivation_coefficient are for "
                              "cross-layer transcoders: add --clt LAYERS")
        if plt_layers:
            first = plt_layers[0]
            set_specs = transcoder_set_specs(plt_layers, widths[input_hookpoint(first)],
                                             widths[output_hookpoint(first)], **{**provenance, **plt_values})
            name = set_specs[0].name.rsplit(".layer_", 1)[0]
            groups.append(("transcoder_set", name, list(range(len(specs), len(specs) + len(set_specs)))))
            specs.extend(set_specs)
        if clt_layers:
            clt_values = _clt_options(values)
            spec = CLTSpec.from_options(n_layers=len(clt_layers), layers=clt_layers,
                                        d_in=widths[input_hookpoint(clt_layers[0])],
                                        d_out=widths[output_hookpoint(clt_layers[0])], **{**provenance, **clt_values})
            groups.append(("cross_layer_transcoder", spec.name, [len(specs)]))
            specs.append(spec)
    return specs, groups


def stream_and_layers(args: argparse.Namespace, text: Any) -> tuple[Any, dict[str, int], list[int], list[int]]:
    """(activation stream over every needed layer's MLP input and output, widths, PLT layers, CLT layers)."""
    from saekit.circuits.layers import hookpoints_for, mlp_layer_count, parse_layers
    from saekit.commands.sources import open_model
    from saekit.data.stream import ActivationStream

    if args.model is None:
        raise SaekitError("--transcoders and --clt read a model's MLPs: pass --model")
    if args.hookpoints:
        raise SaekitError("--transcoders and --clt choose their hookpoints (mlp_in.L -> mlp_out.L): drop --hookpoints")
    model, tokenizer = open_model(args)
    n_layers = mlp_layer_count(model)
    plt_layers = parse_layers(args.transcoders, n_layers) if args.transcoders else []
    clt_layers = parse_layers(args.clt, n_layers) if args.clt else []
    stream = ActivationStream(model, text.token_stream(tokenizer, "train"),
                              hookpoints_for(sorted(set(plt_layers) | set(clt_layers))))
    return stream, stream.widths(), plt_layers, clt_layers


def flags(args: argparse.Namespace) -> dict[str, Any]:
    return {**dataclass_values(args, CLTConfig), **dataclass_values(args, CLTTrainingConfig)}


def group_targets(out: Path, groups: list[tuple[str, str, list[int]]]) -> list[Path]:
    """The folder each set or CLT is saved to (checked before training, written after)."""
    return [out / name for _, name, _ in groups]


def save_groups(out: Path, specs: list[Any], trained: list[Any], groups: list[tuple[str, str, list[int]]],
                overwrite: bool = False) -> None:
    import saekit
    from saekit.circuits.transcoder_set import TranscoderSet

    for kind, name, indices in groups:
        if kind == "transcoder_set":
            obj: Any = TranscoderSet.from_training([specs[i] for i in indices], [trained[i] for i in indices],
                                                   name=name)
        else:
            obj = trained[indices[0]]
        target = out / name
        saekit.save(obj, target, overwrite=overwrite)
        print(f"saved {name} ({kind.replace('_', ' ')}, {len(indices) if kind == 'transcoder_set' else obj.n_layers} "
              f"layers) -> {target}")

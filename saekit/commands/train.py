"""`saekit train`: train one dictionary or a sweep from a config file and/or flags."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from saekit.commands import layered
from saekit.commands.common import add_dataclass_arguments, build, dataclass_values, load_config_file
from saekit.commands.sources import activation_stream, add_model_arguments, model_config, text_config
from saekit.config import DictionaryConfig, Provenance
from saekit.data.config import TextConfig
from saekit.errors import SaekitError
from saekit.io import check_replaceable
from saekit.spec import DictionarySpec
from saekit.training.config import RunConfig, TrainingConfig
from saekit.training.distributed import is_main_process

# Provenance fields the text options fill in (their flags are --dataset and --context-size).
FROM_TEXT = ("dataset", "context_size")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="Train sparse dictionaries (one or a sweep) on a stream of activations.",
        description="Train one dictionary, or a sweep from a config file, on one pass over the "
                    "activations. A config file (TOML/YAML/JSON) has a [train] table of training "
                    "options and a [[dictionaries]] list of dictionary options; flags override the "
                    "[train] table and apply to every dictionary.")
    parser.add_argument("--config", type=Path, default=None, help="Sweep config file.")
    source = parser.add_argument_group("activations (choose one source)")
    source.add_argument("--activations", type=Path, default=None,
                        help="Activations file: .npy or .safetensors holding one [tokens, d_in] array.")
    source.add_argument("--from-cache", type=Path, default=None,
                        help="Activation cache directory written by `saekit cache`.")
    source.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True,
                        help="Cache: shuffle rows within shard-sized windows (seeded).")
    parser.add_argument("--out", type=Path, required=True,
                        help="Output directory: one folder per dictionary, checkpoints, log.jsonl.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace dictionary folders in --out even if saekit did not write them.")
    add_model_arguments(parser)
    add_dataclass_arguments(parser, RunConfig, exclude=("checkpoint_dir", "device"), group_title="run")
    add_dataclass_arguments(parser, DictionaryConfig, group_title="dictionary: what it computes")
    add_dataclass_arguments(parser, TrainingConfig, group_title="dictionary: how it is trained")
    add_dataclass_arguments(parser, Provenance, exclude=FROM_TEXT, group_title="dictionary: where its data "
                            "comes from")
    layered.add_arguments(parser)
    parser.set_defaults(func=run)


def _per_hookpoint(entries: list[dict[str, Any]], flags: dict[str, Any], widths: dict[Any, int]
                   ) -> list[dict[str, Any]]:
    """An entry that names no hookpoint (and is no crosscoder) is trained at every hookpoint, as
    SAELens and sparsify users expect from `--hookpoints a b`; names then carry the hookpoint."""
    expanded = []
    for entry in entries:
        values = {**entry, **flags}
        if values.get("hookpoint") is not None or values.get("source_hookpoints"):
            expanded.append(entry)
        elif len(widths) == 1:
            expanded.append({**entry, "hookpoint": next(iter(widths))})
        else:
            for hookpoint in widths:
                copy = {**entry, "hookpoint": hookpoint}
                if values.get("name"):
                    copy["name"] = f"{values['name']}-{hookpoint}"
                expanded.append(copy)
    return expanded


def dictionary_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The per-dictionary options passed as flags (they apply to every dictionary of the sweep)."""
    return {**dataclass_values(args, DictionaryConfig), **dataclass_values(args, TrainingConfig),
            **dataclass_values(args, Provenance)}


def run_and_entries(file_values: dict[str, Any], args: argparse.Namespace
                    ) -> tuple[RunConfig, list[dict[str, Any]]]:
    """The run's options ([train] table, then flags) and the [[dictionaries]] entries."""
    unknown_sections = sorted(set(file_values) - {"train", "dictionaries", "data"})
    if unknown_sections:
        raise SaekitError(f"unknown config section(s): {', '.join(unknown_sections)}; "
                          "use [train], [data] and [[dictionaries]]")
    run_values = dict(file_values.get("train") or {})
    run_values.update(dataclass_values(args, RunConfig))
    run_values.update(checkpoint_dir=str(args.out / "checkpoints"), device=args.device)
    run = build(RunConfig, run_values, "training")
    entries = file_values.get("dictionaries") or [{}]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SaekitError("'dictionaries' in the config file must be a list of tables")
    return run, entries


def sweep_specs(file_values: dict[str, Any], args: argparse.Namespace, widths: dict[Any, int],
                source: dict[str, Any]) -> tuple[RunConfig, list[DictionarySpec]]:
    """The run's options and one DictionarySpec per [[dictionaries]] entry, with d_in (and d_out)
    filled in from the widths of the hookpoints each dictionary reads, and `source` (model, dataset,
    context size) recorded as each dictionary's provenance unless the entry says otherwise."""
    run, entries = run_and_entries(file_values, args)
    flags = dictionary_flags(args)
    specs = []
    for entry in _per_hookpoint(entries, flags, widths):
        values = {**entry, **flags}
        sources = values.get("source_hookpoints") or [values.get("hookpoint")]
        for name in sources + ([values["target_hookpoint"]] if values.get("target_hookpoint") else []):
            if name not in widths:
                raise SaekitError(f"hookpoint {name!r} is not in the activations "
                                  f"(available: {', '.join(map(str, widths))}); set hookpoint")
        values.setdefault("d_in", sum(widths[name] for name in sources))
        if values.get("target_hookpoint"):
            values.setdefault("d_out", widths[values["target_hookpoint"]])
        for key, value in source.items():
            if value is not None:
                values.setdefault(key, value)
        specs.append(DictionarySpec.from_options(**values))
    return run, specs


def _source(model: str | None, text: TextConfig | None, dataset: str | None = None) -> dict[str, Any]:
    return {"model_name": model, "dataset": dataset or (text.dataset if text else None),
            "context_size": text.context_size if text else None}


def _run_layered(args: argparse.Namespace, file_values: dict[str, Any], text: TextConfig) -> int:
    """Transcoder sets and/or cross-layer transcoders from one model forward (`--transcoders`, `--clt`)."""
    import saekit

    if args.activations is not None or args.from_cache is not None:
        raise SaekitError("--transcoders and --clt read a live model: pass --model, not --activations or "
                          "--from-cache")
    stream, widths, plt_layers, clt_layers = layered.stream_and_layers(args, text)
    run_config, entries = run_and_entries(file_values, args)
    specs, groups = layered.layered_specs(entries, {**dictionary_flags(args), **layered.flags(args)}, widths,
                                          plt_layers, clt_layers, _source(args.model, text))
    for target in layered.group_targets(args.out, groups):  # before the (long) training, not after it
        check_replaceable(target, args.overwrite)
    trained = saekit.train(stream, specs, run=run_config)
    if not is_main_process():  # under torchrun every rank holds the same modules: one writes them
        return 0
    layered.save_groups(args.out, specs, trained, groups, args.overwrite)
    return 0


def run(args: argparse.Namespace) -> int:
    import saekit
    from saekit.training.trainer import unique_names

    file_values = load_config_file(args.config) if args.config else {}
    text = text_config(args, file_values)
    model_config(args)  # checked whatever the source, so a bad --model-dtype is never silently ignored
    if layered.requested(args):
        return _run_layered(args, file_values, text)
    given = [name for name in ("activations", "from_cache", "model") if getattr(args, name) is not None]
    if len(given) != 1:
        raise SaekitError("give exactly one activation source: --model M --hookpoints H, "
                          "--from-cache DIR or --activations FILE")
    stream: Iterable[Any]
    widths: dict[Any, int]
    if args.model is not None:
        stream, widths, _, _ = activation_stream(args, text)
        run_config, specs = sweep_specs(file_values, args, widths, _source(args.model, text))
    elif args.activations is not None:
        from saekit.data.arrays import ArrayStream

        stream = array_stream = ArrayStream(args.activations)
        widths = {None: array_stream.width}
        run_config, specs = sweep_specs(file_values, args, widths, _source(None, None))
    else:
        from saekit.data.cache import open_cache

        cache = open_cache(args.from_cache)
        recorded = cache.metadata or {}
        cache_widths: dict[Any, int] = {name: int(d or 0) for name, d in cache.d.items()}
        run_config, specs = sweep_specs(file_values, args, cache_widths, {
            "model_name": cache.model, "dataset": recorded.get("dataset"),
            "context_size": recorded.get("context_size")})
        stream = cache.stream_many(None, run_config.batch_size, shuffle=args.shuffle, seed=text.data_seed)
    by_hookpoint = len({spec.source.hookpoint for spec in specs}) > 1
    targets = [args.out / folder_name(str(spec.source.hookpoint)) / name if by_hookpoint else args.out / name
               for spec, name in zip(specs, unique_names(specs))]
    for target in targets:  # before the (long) training, not after it
        check_replaceable(target, args.overwrite)
    dictionaries = saekit.train(stream, specs, run=run_config)
    if not is_main_process():  # under torchrun every rank holds the same dictionaries: one writes them
        return 0
    for spec, d, target in zip(specs, dictionaries, targets):
        saekit.save(d, target, overwrite=args.overwrite)
        print(f"saved {spec.name} -> {target}")
    return 0


def folder_name(hookpoint: str) -> str:
    """A folder for a hookpoint's dictionaries that stays inside --out whatever the name (hookpoint names
    can come from a cache manifest, which anyone can edit)."""
    name = hookpoint.replace("/", "_").replace("\\", "_")
    return f"_{name}" if name in ("", ".", "..") or name.startswith(".") else name

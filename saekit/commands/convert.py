"""`saekit convert`: read a dictionary in any supported format and write it in another."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "float64": "float64"}


def register(subparsers: argparse._SubParsersAction) -> None:
    from saekit.formats.registry import formats, writable

    parser = subparsers.add_parser(
        "convert", help="Convert a dictionary between SAELens, sparsify, dictionary_learning, Gemma "
                        "Scope and saekit formats, and transcoder sets / CLTs to and from circuit-tracer.",
        description="Load a dictionary (format recognised by its files; a name like org/repo is fetched "
                    "from the Hugging Face Hub) and write it in another format. Outputs are preserved "
                    "exactly; anything a target format cannot hold is reported.")
    parser.add_argument("source", help="Dictionary directory or file, or a Hugging Face repo id.")
    parser.add_argument("output", type=Path, help="Directory to write.")
    parser.add_argument("--to", required=True, choices=writable(), help="Format to write.")
    parser.add_argument("--from", dest="source_format", choices=[fmt.name for fmt in formats()], default=None,
                        help="Format of the source (default: recognised from its files).")
    parser.add_argument("--subfolder", default=None,
                        help="Folder inside the source or repo holding one dictionary (e.g. layers.6).")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit).")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="Cast weights to this dtype (default: keep the source's dtype).")
    parser.add_argument("--hookpoint", default=None, help="Record this hookpoint (when the source "
                                                          "does not say, or to override it).")
    parser.add_argument("--model-name", default=None, help="Record this model name.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace the output even if saekit did not write it (default: refuse).")
    parser.add_argument("--dict-class", default=None,
                        help="dictionary_learning class, for an ae.pt without config.json.")
    parser.set_defaults(func=run)


def describe(d: Any) -> str:
    """One line on what was loaded: a dictionary, a transcoder set or a cross-layer transcoder."""
    from saekit.circuits import CrossLayerTranscoder
    from saekit.circuits.transcoder_set import TranscoderSet

    if isinstance(d, TranscoderSet):
        return (f"transcoder set of {d.n_layers} layers ({d.layers[0]}..{d.layers[-1]}), {d[0].cfg.method}, "
                f"d_in={d.d_in}, d_sae={d.d_sae} per layer")
    if isinstance(d, CrossLayerTranscoder):
        return (f"cross-layer transcoder of {d.n_layers} layers, {d.cfg.method}, d_in={d.d_in}, "
                f"d_sae={d.d_sae} per layer, decoders {str(d.W_dec[0].dtype).removeprefix('torch.')}")
    return (f"{d.cfg.method}, d_in={d.cfg.d_in}, d_sae={d.cfg.d_sae}, "
            f"dtype={str(d.W_dec.dtype).removeprefix('torch.')}")


def run(args: argparse.Namespace) -> int:
    import torch

    from saekit.formats.detect import convert, export_notes

    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    d, written = convert(args.source, args.output, args.to, subfolder=args.subfolder,
                         revision=args.revision, format=args.source_format, dtype=dtype,
                         hookpoint=args.hookpoint, model_name=args.model_name,
                         dict_class=args.dict_class, overwrite=args.overwrite)
    source = d.meta.get("source", {}).get("format", "saekit")
    print(f"wrote {written} ({args.to}) from {source}: {describe(d)}")
    for note in export_notes(d, args.to):
        print(f"note: {note}")
    return 0

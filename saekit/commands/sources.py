"""The model + text activation source shared by `saekit train`, `saekit cache` and `saekit eval`."""

from __future__ import annotations

import argparse
from typing import Any

from saekit.errors import SaekitError


def add_model_arguments(parser: argparse.ArgumentParser, hookpoints_required: bool = False,
                        model: bool = True, hookpoints: bool = True) -> None:
    """The shared source options. Commands that name their model(s) or hookpoint differently (diff's
    --models, demo's --hookpoint) leave out --model / --hookpoints rather than accept and ignore them."""
    group = parser.add_argument_group("model and text")
    if model:
        group.add_argument("--model", default=None,
                           help="Hugging Face model name, local directory, .gguf file, or `offline-default` "
                                "(SmolLM2-135M-Instruct, installed by scripts/setup.sh).")
    if hookpoints:
        group.add_argument("--hookpoints", nargs="+", default=None, required=hookpoints_required,
                           help="Where to read activations: named sites (resid_post.L, mlp_in.L, mlp_out.L, "
                                "attn_out.L) or module names with wildcards, `:input` for a module's input.")
    group.add_argument("--dataset", default="offline-default",
                       help="Text: `offline-default` (Python 3.11 docs), a local file or directory "
                            "(text/jsonl/parquet), or a Hugging Face dataset name.")
    group.add_argument("--text-column", default="text", help="Dataset column holding the text.")
    group.add_argument("--context-size", type=int, default=128, help="Tokens per sequence.")
    group.add_argument("--model-batch-size", type=int, default=16, help="Sequences per model forward.")
    group.add_argument("--model-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                       help="Model weights' dtype (activations are stored as float32).")
    group.add_argument("--device", default="cpu", help="Device for the model and training.")
    group.add_argument("--data-seed", type=int, default=0, help="Seed of the shuffle buffer.")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="Allow model repositories to run their own code (off unless asked).")


def open_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from saekit.data.model_loading import load_model

    if not args.model:
        raise SaekitError("no model given: pass --model (a hub name, a local directory or "
                          "offline-default)")
    return load_model(args.model, dtype=args.model_dtype, device=args.device,
                      trust_remote_code=args.trust_remote_code)


def token_stream(args: argparse.Namespace, tokenizer: Any, split: str = "train",
                 max_tokens: int | None = None):
    from saekit.data.tokens import TokenStream

    return TokenStream(tokenizer, args.dataset, context=args.context_size,
                       batch_size=args.model_batch_size, split=split, seed=args.data_seed,
                       text_column=args.text_column, max_tokens=max_tokens)


def activation_stream(args: argparse.Namespace, split: str = "train", max_tokens: int | None = None):
    """(stream of {hookpoint: [n, d]}, hookpoint widths, model, tokenizer)."""
    from saekit.data.stream import ActivationStream

    if not args.hookpoints:
        raise SaekitError("no hookpoints given: pass --hookpoints (e.g. resid_post.6)")
    model, tokenizer = open_model(args)
    stream = ActivationStream(model, token_stream(args, tokenizer, split, max_tokens), args.hookpoints)
    return stream, stream.widths(), model, tokenizer


def source_metadata(args: argparse.Namespace) -> dict[str, Any]:
    return {"dataset": args.dataset, "context_size": args.context_size, "data_seed": args.data_seed,
            "text_column": args.text_column, "model_dtype": args.model_dtype}

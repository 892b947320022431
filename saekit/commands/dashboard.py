"""`saekit dashboard`: a static HTML site of feature dashboards for every latent of a dictionary."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.commands.sources import add_model_arguments, open_model, text_config, warn_other_model
from saekit.errors import SaekitError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dashboard", help="Build feature dashboards (static HTML) for every latent of a dictionary.",
        description="One pass of the model over --tokens tokens, encoded for all latents at once, then "
                    "a static site: index.html (search and sort latents) and one page per latent "
                    "(top and quantile examples with per-token highlighting, histogram, density, "
                    "logit lens, nearest latents; for attention replacements, the source tokens each top "
                    "activation read from; for dictionaries on attn_z.L, the share of decoder norm per "
                    "head). Open index.html from disk; no server needed.")
    parser.add_argument("dictionary", type=Path, help="Dictionary (or sparse attention replacement) directory.")
    parser.add_argument("--tokens", type=int, default=100_000, help="Tokens to run the model on.")
    parser.add_argument("--out", type=Path, required=True, help="Site directory (replaced).")
    parser.add_argument("--split", default="train", choices=("train", "test"),
                        help="Which split of the text to read.")
    parser.add_argument("--top-examples", type=int, default=20, help="Top-activating contexts per latent.")
    parser.add_argument("--names", type=Path, default=None,
                        help="JSON object {latent id: name} of latent names (default: each latent's "
                             "most common top-activating token).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace --out even if saekit did not write it (default: refuse).")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="Show a progress bar.")
    add_model_arguments(parser)
    parser.set_defaults(func=run)


def _read_names(path: Path | None) -> dict[int, str]:
    if path is None:
        return {}
    from saekit.io import read_json_file

    raw = read_json_file(path, "latent names file")
    try:
        return {int(key): str(value) for key, value in raw.items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise SaekitError(f"latent names file {path} must map latent numbers to names ({error})") from None


def run(args: argparse.Namespace) -> int:
    import saekit
    from saekit.inspect.dashboard import build_dashboards

    if args.tokens <= 0:
        raise SaekitError("--tokens must be positive")
    if args.hookpoints:
        raise SaekitError("dashboards read the dictionary's own hookpoint; drop --hookpoints")
    from saekit.attention import is_attention_dir, load

    d = load(args.dictionary, device=args.device) if is_attention_dir(args.dictionary) else \
        saekit.load(args.dictionary, device=args.device)
    name = args.model or d.provenance.model_name
    if not name:
        raise SaekitError("the dictionary does not record its model: pass --model")
    if args.top_examples < 1:
        raise SaekitError("--top-examples must be at least 1")
    from saekit.io import check_replaceable

    check_replaceable(args.out, args.overwrite)  # before the model is even loaded
    names = _read_names(args.names)
    warn_other_model(d, name)
    model, tokenizer = open_model(args, model=name)
    batches = text_config(args).token_stream(tokenizer, split=args.split, max_tokens=args.tokens)
    summary = build_dashboards(d, model, tokenizer, batches, args.out, top_examples=args.top_examples,
                               names=names, progress=args.progress, overwrite=args.overwrite)
    print(f"dashboards for {summary['latents']} latents ({summary['alive']} fired on "
          f"{summary['tokens']} tokens) -> {args.out / 'index.html'}")
    print(f"model+encode {summary['model_and_encode_s']:.1f}s, decoder {summary['decoder_s']:.1f}s, "
          f"pages {summary['write_s']:.1f}s")
    return 0

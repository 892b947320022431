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
    parser.add_argument("--layers", default=None, metavar="LAYERS",
                        help="Transcoder sets and CLTs: the layers to build (all, 0,3,5, ::2; default all). "
                             "Each gets a site in OUT/layer_<L>/, listed in OUT/index.html.")
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
    from saekit.circuits import CrossLayerTranscoder
    from saekit.circuits.layers import parse_layers
    from saekit.circuits.replacement import model_name_of
    from saekit.circuits.transcoder_set import TranscoderSet
    from saekit.inspect.dashboard import build_dashboards
    from saekit.inspect.layer_dashboards import build_layer_dashboards

    if args.tokens <= 0:
        raise SaekitError("--tokens must be positive")
    if args.hookpoints:
        raise SaekitError("dashboards read the dictionary's own hookpoint; drop --hookpoints")
    from saekit.attention import is_attention_dir
    from saekit.attention import load as load_attention

    attention = is_attention_dir(args.dictionary)
    loaded = load_attention(args.dictionary, device=args.device) if attention else \
        saekit.load(args.dictionary, device=args.device)
    name = args.model or model_name_of(loaded)
    if not name:
        raise SaekitError("the dictionary does not record its model: pass --model")
    if args.top_examples < 1:
        raise SaekitError("--top-examples must be at least 1")
    from saekit.io import check_replaceable

    check_replaceable(args.out, args.overwrite)  # before the model is even loaded
    names = _read_names(args.names)
    warn_other_model(loaded, name)
    if isinstance(loaded, (TranscoderSet, CrossLayerTranscoder)):
        if args.names is not None:
            raise SaekitError("--names applies to one dictionary; transcoder sets and CLTs name latents per layer")
        model, tokenizer = open_model(args, model=name)
        layers = parse_layers(args.layers, max(loaded.layers) + 1) if args.layers else None
        batches = text_config(args).token_stream(tokenizer, split=args.split, max_tokens=args.tokens)
        result = build_layer_dashboards(loaded, model, tokenizer, batches, args.out, layers=layers,
                                        top_examples=args.top_examples, progress=args.progress,
                                        overwrite=args.overwrite)
        alive = ", ".join(f"{r['layer']}: {r['alive']}/{r['latents']}" for r in result["layers"])
        print(f"dashboards for {len(result['layers'])} layers (fired per layer {alive}) on {result['tokens']} "
              f"tokens -> {args.out / 'index.html'}")
        return 0
    if args.layers is not None:
        raise SaekitError("--layers applies to transcoder sets and CLTs")
    d = loaded
    model, tokenizer = open_model(args, model=name)
    batches = text_config(args).token_stream(tokenizer, split=args.split, max_tokens=args.tokens)
    summary = build_dashboards(d, model, tokenizer, batches, args.out, top_examples=args.top_examples,
                               names=names, progress=args.progress, overwrite=args.overwrite)
    print(f"dashboards for {summary['latents']} latents ({summary['alive']} fired on "
          f"{summary['tokens']} tokens) -> {args.out / 'index.html'}")
    print(f"model+encode {summary['model_and_encode_s']:.1f}s, decoder {summary['decoder_s']:.1f}s, "
          f"pages {summary['write_s']:.1f}s")
    return 0

"""`saekit eval`: core and spliced metrics of saved dictionaries on held-out tokens of a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saekit.commands.common import print_table
from saekit.commands.sources import add_model_arguments, open_model, text_config, warn_other_model
from saekit.errors import SaekitError

TABLE = ["name", "method", "l0", "fvu", "explained_variance", "ce_loss_score", "kl_score",
         "delta_lm_loss", "dead_fraction", "relative_reconstruction_bias"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="Evaluate dictionaries spliced into their model (CE/KL scores, FVU, L0, ...).",
        description="For each dictionary, on held-out tokens (the test split) of the model: CE loss "
                    "clean / spliced / zero-ablated, CE-loss score, KL(clean || spliced) and KL score, "
                    "delta LM loss, and every core metric. Results as JSON and a table.")
    parser.add_argument("dictionaries", nargs="+", type=Path,
                        help="Dictionary directories (sparse attention replacements too: they are spliced "
                             "into the attention output they replace).")
    parser.add_argument("--tokens", type=int, default=20_000, help="Held-out tokens to evaluate on.")
    parser.add_argument("--encoder", default="dictionary",
                        choices=("dictionary", "topk", "matching-pursuit", "gradient-pursuit"),
                        help="How latents are computed: the dictionary's encoder, or an inference-time "
                             "encoder over its decoder (needs --l0).")
    parser.add_argument("--l0", type=int, default=None, help="Atoms per token for --encoder.")
    parser.add_argument("--out", type=Path, default=None, help="Write results JSON here.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    add_model_arguments(parser, hookpoints=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import saekit
    from saekit.attention import is_attention_dir
    from saekit.attention import load as load_attention
    from saekit.attention.evaluate import evaluate_replacements
    from saekit.evaluation.splice import evaluate_on_text

    if args.tokens <= 0:
        raise SaekitError("--tokens must be positive")
    names = [path.name for path in args.dictionaries]
    if len(set(names)) < len(names):  # e.g. out/resid_post.3/topk-k32 and out/resid_post.6/topk-k32
        names = [f"{path.parent.name}/{path.name}" for path in args.dictionaries]
    dictionaries = {name: load_attention(path, device=args.device) if is_attention_dir(path)
                    else saekit.load(path, device=args.device) for name, path in zip(names, args.dictionaries)}
    replacements = any(is_attention_dir(path) for path in args.dictionaries)
    if replacements and args.encoder != "dictionary":
        raise SaekitError("--encoder applies to dictionaries only; evaluate attention replacements with their "
                          "own encoder (drop --encoder)")
    if args.model is None:
        recorded = {d.provenance.model_name for d in dictionaries.values()}
        if len(recorded) != 1 or None in recorded:
            raise SaekitError("pass --model: the dictionaries do not record one common model")
        args.model = recorded.pop()
    for d in dictionaries.values():
        warn_other_model(d, args.model)
    model, tokenizer = open_model(args)
    if replacements:  # modules writing the same output share its clean and zero-ablated forwards
        rows = evaluate_replacements(model, tokenizer, dictionaries, text_config(args), args.tokens,
                                     progress=not args.no_progress)
    else:
        rows = evaluate_on_text(model, tokenizer, dictionaries, text_config(args), args.tokens,  # type: ignore[arg-type]
                                args.encoder, args.l0, progress=not args.no_progress)
    print_table(rows, TABLE)
    evaluated = int(rows[0]["eval_targets"]) if rows else 0
    if evaluated < 0.9 * args.tokens:
        print(f"warning: the test split held {evaluated} evaluable tokens, fewer than the {args.tokens} asked",
              file=sys.stderr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0

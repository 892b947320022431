"""`saekit eval`: core and spliced metrics of saved dictionaries on held-out tokens of a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saekit.commands.common import print_table
from saekit.commands.sources import add_model_arguments, open_model, token_stream
from saekit.errors import SaekitError

TABLE = ["name", "method", "l0", "fvu", "explained_variance", "ce_loss_score", "kl_score",
         "delta_lm_loss", "dead_fraction", "relative_reconstruction_bias"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="Evaluate dictionaries spliced into their model (CE/KL scores, FVU, L0, ...).",
        description="For each dictionary, on held-out tokens (the test split) of the model: CE loss "
                    "clean / spliced / zero-ablated, CE-loss score, KL(clean || spliced) and KL score, "
                    "delta LM loss, and every core metric. Results as JSON and a table.")
    parser.add_argument("dictionaries", nargs="+", type=Path, help="Dictionary directories.")
    parser.add_argument("--tokens", type=int, default=20_000, help="Held-out tokens to evaluate on.")
    parser.add_argument("--encoder", default="dictionary",
                        choices=("dictionary", "topk", "matching-pursuit", "gradient-pursuit"),
                        help="How latents are computed: the dictionary's encoder, or an inference-time "
                             "encoder over its decoder (needs --l0).")
    parser.add_argument("--l0", type=int, default=None, help="Atoms per token for --encoder.")
    parser.add_argument("--out", type=Path, default=None, help="Write results JSON here.")
    add_model_arguments(parser, hookpoints=False)
    parser.set_defaults(func=run)


def evaluate_dictionaries(model: Any, tokenizer: Any, dictionaries: dict[str, Any], args: Any,
                          tokens: int, encoder: str = "dictionary", l0: int | None = None
                          ) -> list[dict[str, Any]]:
    """Rows of metrics, one per dictionary, on `tokens` held-out tokens (the test split of the text
    options in `args`), grouping dictionaries that share a hookpoint so each group shares its
    clean and zero-ablated forwards."""
    from saekit.data.sites import resolve_hookpoints
    from saekit.encoders import make_encoder
    from saekit.evaluation.splice import spliced_evaluation
    from tqdm.auto import tqdm

    groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for name, d in dictionaries.items():
        if not d.cfg.hookpoint:
            raise SaekitError(f"dictionary {name} does not record its hookpoint: it cannot be spliced")
        groups.setdefault((d.cfg.hookpoint, d.cfg.target_hookpoint), {})[name] = d
    # Tokenised once: every group evaluates on the same held-out windows.
    held_out = list(token_stream(args, tokenizer, split="test", max_tokens=tokens))
    rows = []
    for (hookpoint, target), members in groups.items():
        point = resolve_hookpoints(model, [hookpoint])[0]
        target_point = resolve_hookpoints(model, [target])[0] if target else None
        batches = tqdm(held_out, desc=f"evaluating at {hookpoint}", unit="batch",
                       disable=getattr(args, "no_progress", False))
        encoders = {name: make_encoder(d, encoder, l0) for name, d in members.items()}
        results = spliced_evaluation(model, batches, point, members, encoders, target_point)
        for name, metrics in results.items():
            rows.append({"name": name, "method": members[name].cfg.method, "hookpoint": hookpoint,
                         "encoder": encoder, **metrics})
    return rows


def run(args: argparse.Namespace) -> int:
    import saekit

    if args.tokens <= 0:
        raise SaekitError("--tokens must be positive")
    names = [path.name for path in args.dictionaries]
    if len(set(names)) < len(names):  # e.g. out/resid_post.3/topk-k32 and out/resid_post.6/topk-k32
        names = [f"{path.parent.name}/{path.name}" for path in args.dictionaries]
    dictionaries = {name: saekit.load(path) for name, path in zip(names, args.dictionaries)}
    if args.model is None:
        recorded = {d.cfg.model_name for d in dictionaries.values()}
        if len(recorded) != 1 or None in recorded:
            raise SaekitError("pass --model: the dictionaries do not record one common model")
        args.model = recorded.pop()
    model, tokenizer = open_model(args)
    rows = evaluate_dictionaries(model, tokenizer, dictionaries, args, args.tokens, args.encoder, args.l0)
    print_table(rows, TABLE)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0

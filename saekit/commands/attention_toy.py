"""`saekit attention-toy`: reproduce gated attention blocks on their skip-trigram toys and print the table."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from saekit.commands.common import print_table
from saekit.errors import SaekitError

COLUMNS = ["toy", "toy_model", "data", "model_learnt", "model_distributed", "block_heads", "one_head",
           "block_distributed", "block_passes", "final_mse", "published", "model_seconds", "block_seconds"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attention-toy", help="Gated attention blocks on OV-incoherent skip trigrams (2H/3ST, 3H/4ST, 4H/5ST).",
        description="For each toy: train the attention-only one-layer model on its skip trigrams (fewer "
                    "heads than trigrams, so heads superpose them), train a gated attention block with "
                    "twice the heads to reproduce its attention output, and apply the published test "
                    "(is each trigram produced by exactly one head under every ablation of the others?). "
                    "Prints, per toy: trigrams the model learnt and how many are distributed over its "
                    "heads; trigrams the block produces with exactly one head (of n); the block's final "
                    "MSE; the published outcome. --settings cpu (default) trains fewer epochs at a larger "
                    "learning rate; --settings published uses the reference's 1000 epochs.")
    parser.add_argument("--toys", nargs="+", default=None, help="Toys to run (default: all three).")
    parser.add_argument("--settings", choices=("cpu", "published"), default="cpu",
                        help="Epochs and learning rates: the CPU settings or the reference's.")
    for name, kind, text in [("model-epochs", int, "Epochs of the toy model"),
                             ("model-lr", float, "Learning rate of the toy model"),
                             ("block-epochs", int, "Epochs of the gated block"),
                             ("block-lr", float, "Learning rate of the gated block"),
                             ("alpha", float, "Gate penalty coefficient"),
                             ("n-batches", int, "Training batches per epoch"),
                             ("per-batch", int, "Sequences per batch"),
                             ("model-seed", int, "Seed of the toy model's initialisation"),
                             ("block-seed", int, "Seed of the block's initialisation")]:
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"{text} (default: the settings').")
    parser.add_argument("--reference", type=Path, default=None,
                        help="The reference's saved_models folder (cmathw/gated-attn, gated_attention/experiments/"
                             "saved_models): first check its shipped toy models and blocks with saekit's check, "
                             "then train saekit's block on its toy models instead of training new ones.")
    parser.add_argument("--reference-data", action="store_true",
                        help="Train on the reference's own batches, drawn token by token as its sampler draws "
                             "them (with --reference and block seed 0: the published run's exact start).")
    parser.add_argument("--compile", action="store_true",
                        help="Train the block through torch.compile (~2.3x faster on a CPU; needs a C++ "
                             "compiler).")
    parser.add_argument("--out", type=Path, default=None, help="Write results.json here.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saekit.experiments.attention_toy import (
        CPU,
        PUBLISHED,
        REFERENCE_COLUMNS,
        check_reference,
        load_reference_model,
        run_toy,
    )

    presets = CPU if args.settings == "cpu" else PUBLISHED
    toys = args.toys or list(presets)
    unknown = [toy for toy in toys if toy not in presets]
    if unknown:
        raise SaekitError(f"unknown toy {', '.join(unknown)}: choose from {', '.join(presets)}")
    overrides = {field: getattr(args, field) for field in ("model_epochs", "model_lr", "block_epochs",
                                                           "block_lr", "alpha", "n_batches", "per_batch",
                                                           "model_seed", "block_seed")
                 if getattr(args, field) is not None}
    for field, value in overrides.items():
        if value <= 0 and not field.endswith("seed"):
            raise SaekitError(f"--{field.replace('_', '-')} must be positive")
    if args.reference is not None:
        shipped = [check_reference(args.reference, PUBLISHED[toy]) for toy in toys]
        print("the reference's shipped toy models and gated blocks, checked by saekit:")
        print_table(shipped, REFERENCE_COLUMNS)
    rows = []
    for toy in toys:
        settings = dataclasses.replace(presets[toy], reference_data=args.reference_data, compile=args.compile,
                                       **overrides)
        model = None if args.reference is None else load_reference_model(args.reference, settings)
        rows.append(run_toy(settings, progress=not args.no_progress, model=model))
    print_table(rows, COLUMNS)
    print("one_head: trigrams produced by exactly one head of the block under every ablation of the others "
          "(the published success criterion; block_passes: all n, none distributed)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0

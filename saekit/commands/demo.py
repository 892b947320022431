"""`saekit demo`: the README's main job (see `saekit.experiments.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.commands.sources import add_model_arguments, model_config, text_config
from saekit.errors import SaekitError
from saekit.experiments.demo import DEMO_METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="Train every method on a real model from one stream, evaluate, report.",
        description="Train one dictionary per method (TopK, BatchTopK, JumpReLU, Gated, ReLU, matching "
                    "pursuit) from a single stream of a model's activations, evaluate each spliced into "
                    "the model on held-out text (CE-loss score, KL, delta LM loss, FVU, L0, dead "
                    "latents) and write report.html (training curves, Pareto plots of FVU and delta LM "
                    "loss against L0, the table), report.txt and results.json. Defaults: the offline "
                    "model and text, resid_post.6, 4x width.")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="Output directory.")
    parser.add_argument("--hookpoint", default="resid_post.6", help="Where to train (a named site or module).")
    parser.add_argument("--methods", nargs="+", default=list(DEMO_METHODS), choices=list(DEMO_METHODS))
    parser.add_argument("--tokens", type=int, default=150_000, help="Training tokens.")
    parser.add_argument("--eval-tokens", type=int, default=4_096, help="Held-out tokens to evaluate on.")
    parser.add_argument("--expansion", type=int, default=4, help="d_sae / d_model.")
    parser.add_argument("--k", type=int, default=32, help="k of the TopK family and matching pursuit "
                                                         "(the target L0).")
    parser.add_argument("--batch-size", type=int, default=1024, help="Tokens per training step.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Write into --out even if saekit did not write it (default: refuse).")
    add_model_arguments(parser, hookpoints=False)
    parser.set_defaults(func=run, model="offline-default")


def run(args: argparse.Namespace) -> int:
    from saekit.experiments.demo import run_demo

    for flag in ("tokens", "eval_tokens", "expansion", "k", "batch_size"):
        if getattr(args, flag) <= 0:
            raise SaekitError(f"--{flag.replace('_', '-')} must be positive")
    results = run_demo(args.out, model_config(args), text_config(args), args.hookpoint, args.methods,
                       args.tokens, args.eval_tokens, args.expansion, args.k, args.batch_size, args.device,
                       progress=not args.no_progress, overwrite=args.overwrite)
    print(results["table"])
    print(f"report: {args.out / 'report.html'} ({results['timings']['total_s']:.0f} s in all)")
    return 0

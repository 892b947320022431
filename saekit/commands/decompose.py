"""`saekit decompose <toy> --method spd|apd`: parameter decomposition of a toy model with ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from saekit.decompose.experiments import METHODS, TOYS, run_toy_decomposition
from saekit.errors import SaekitError


def register(subparsers: argparse._SubParsersAction) -> None:
    toys = "; ".join(f"{name}: {spec.description}" for name, spec in TOYS.items())
    parser = subparsers.add_parser(
        "decompose", help="APD / SPD parameter decomposition of a toy model, scored against ground truth.",
        description="Train a toy target model from a fixed seed, decompose its linear layers with "
                    "Stochastic (spd) or Attribution-based (apd) Parameter Decomposition "
                    "(docs/methods.md), then print MMCS / ML2R against the true mechanisms (TMS), the "
                    "number of non-negligible components per layer, whether each feature gets its own component, "
                    "and write importance-matrix plots (PNG). Defaults are reduced-budget settings that "
                    f"fit a CPU; --published uses the papers' step counts and batch sizes. Toys: {toys}.")
    parser.add_argument("toy", help=f"Which toy model: {', '.join(TOYS)}.")
    parser.add_argument("--method", default="spd", help="spd (default) or apd.")
    parser.add_argument("--published", action="store_true",
                        help="Use the papers' full step counts and batch sizes (slow on a CPU).")
    parser.add_argument("--steps", type=int, default=None, help="Override the decomposition steps.")
    parser.add_argument("--batch-size", type=int, default=None, help="Override the batch size.")
    parser.add_argument("--seed", type=int, default=None, help="Override the decomposition seed.")
    parser.add_argument("--out", type=Path, default=Path("decompose-out"),
                        help="Directory for the PNG plots and report.json (default: ./decompose-out).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    parser.add_argument("--device", default="cpu", help="Where the decomposition trains: cpu or cuda.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.toy not in TOYS:
        raise SaekitError(f"unknown toy {args.toy!r}; choose one of: {', '.join(TOYS)}")
    if args.method not in METHODS:
        raise SaekitError(f"unknown method {args.method!r}; use --method spd or --method apd")
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise SaekitError(f"{flag} must be a positive integer, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_toy_decomposition(args.toy, args.method, published=args.published, steps=args.steps,
                                   batch_size=args.batch_size, seed=args.seed, out_dir=args.out,
                                   progress=not args.no_progress, device=args.device)
    for line in report.lines():
        print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.toy}-{args.method}-report.json").write_text(
        json.dumps(report.summary(), indent=2, default=str) + "\n")
    return 0

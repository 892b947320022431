"""`saekit toy`: train dictionaries on synthetic data with known features and score their recovery."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saekit.commands.common import add_dataclass_arguments, build, dataclass_values, print_table
from saekit.data.toy import ToyConfig
from saekit.errors import SaekitError
from saekit.experiments.toy import TOY_PRESETS, run_toy


def register(subparsers: argparse._SubParsersAction) -> None:
    presets = "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in p.items())
                        for m, p in TOY_PRESETS.items())
    parser = subparsers.add_parser(
        "toy", help="Ground-truth benchmark: recover known sparse features (MMCS, L0, FVU, dead).",
        description="Train one dictionary per method on Sharkey et al.'s toy data (correlated, "
                    "decaying-frequency features in superposition; docs/methods.md, 'Toy ground truth') "
                    "in a single sweep, "
                    "then print MMCS against the true features, L0, FVU and the dead fraction on "
                    f"held-out data. Per-method settings used: {presets}.")
    parser.add_argument("--methods", nargs="+", default=list(TOY_PRESETS),
                        help="Methods to train (default: all of them).")
    parser.add_argument("--total-tokens", type=int, default=2_000_000, help="Training tokens.")
    parser.add_argument("--batch-size", type=int, default=1024, help="Tokens per step.")
    parser.add_argument("--d-sae", type=int, default=None, help="Dictionary width (default: G).")
    parser.add_argument("--k", type=int, default=None, help="Override k for the TopK family and matching pursuit.")
    parser.add_argument("--sparsity-coefficient", type=float, default=None,
                        help="Override λ for relu, gated and jumprelu.")
    parser.add_argument("--out", type=Path, default=None, help="Write results.json here.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    add_dataclass_arguments(parser, ToyConfig, group_title="toy data")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    toy = build(ToyConfig, dataclass_values(args, ToyConfig), "toy")
    if args.total_tokens <= 0 or args.batch_size <= 0:
        raise SaekitError("--total-tokens and --batch-size must be positive")
    if args.d_sae is not None and args.d_sae <= 0:
        raise SaekitError(f"--d-sae must be positive, got {args.d_sae}")
    if args.k is not None and args.k <= 0:
        raise SaekitError(f"--k must be positive, got {args.k}")
    from saekit.methods import get_method

    overrides: dict[str, dict] = {}
    for method in args.methods:
        if args.k is not None and get_method(method).uses_k:
            overrides[method] = {"k": args.k}
        if args.sparsity_coefficient is not None and get_method(method).uses_sparsity_coefficient:
            overrides[method] = {"sparsity_coefficient": args.sparsity_coefficient}
    rows = run_toy(toy, args.methods, total_tokens=args.total_tokens, batch_size=args.batch_size,
                   d_sae=args.d_sae, progress=not args.no_progress, overrides=overrides)
    print_table(rows, ["method", "k / λ", "mmcs", "l0", "fvu", "dead_fraction", "rrb"])
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0

"""`saekit bench <benchmark>`: quality benchmarks that train and score dictionaries on known ground truth.

`saekit bench synth` trains every method at several L0s on a synthetic model with hierarchy (one sweep)
and prints MCC, F1, uniqueness, explained variance, shrinkage, L0 and dead latents per dictionary."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.commands.common import print_table
from saekit.errors import SaekitError


def register(subparsers: argparse._SubParsersAction) -> None:
    from saekit.experiments.synth import BENCH_PRESETS

    parser = subparsers.add_parser("bench", help="Quality benchmarks on known ground truth (synth).",
                                   description=__doc__)
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="<benchmark>")
    presets = "; ".join(f"{name}: {p.d_sae} latents, L0 {', '.join(f'{x:g}' for x in p.l0s)}, "
                        f"{p.total_samples:,} samples, lr {p.lr:g}" for name, p in BENCH_PRESETS.items())
    synth = benchmarks.add_parser(
        "synth", help="Every method at several L0s on a synthetic model with feature hierarchy.",
        description="Train every method at several L0s on a SynthSAEBench-style synthetic model (Zipf "
                    "firing, hierarchy with mutually exclusive children, correlation; docs/synthetic.md) "
                    "in one sweep, then score each dictionary against the true features on held-out "
                    "samples: MCC (Hungarian matching), F1/precision/recall of latents as feature "
                    "detectors, uniqueness, explained variance, shrinkage, L0, dead latents. Prints the "
                    "table and, with --out, writes results.json, table.txt and mcc-f1-vs-l0.png. "
                    f"Presets: {presets}.")
    synth.add_argument("--preset", default="cpu", choices=list(BENCH_PRESETS),
                       help="cpu: minutes on a CPU; 16k: the published SynthSAEBench-16k (for a GPU).")
    synth.add_argument("--methods", nargs="+", default=None, help="Methods to train (default: all).")
    synth.add_argument("--l0s", nargs="+", type=float, default=None, help="L0s to train at (default: the preset's).")
    synth.add_argument("--samples", type=int, default=None, help="Training samples (default: the preset's).")
    synth.add_argument("--eval-samples", type=int, default=None, help="Held-out samples to score on.")
    synth.add_argument("--d-sae", type=int, default=None, help="Dictionary width (default: the preset's).")
    synth.add_argument("--lr", type=float, default=None, help="Learning rate of every method.")
    synth.add_argument("--compensation", choices=["exact", "saelens"], default=None,
                       help="Hierarchy probability compensation of the synthetic model (default: exact).")
    synth.add_argument("--device", default="cpu", help="Device of the model, data and dictionaries.")
    synth.add_argument("--out", type=Path, default=None, help="Write results.json, table.txt and the plot here.")
    synth.add_argument("--overwrite", action="store_true",
                       help="Write into --out even if saekit did not write it (default: refuse).")
    synth.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    synth.set_defaults(func=run_synth)
    parser.set_defaults(func=lambda args: parser.print_help() or 0)


def run_synth(args: argparse.Namespace) -> int:
    from saekit.experiments.synth import COLUMNS, bench_preset, run_synth_bench

    for name in ("samples", "eval_samples", "d_sae"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SaekitError(f"--{name.replace('_', '-')} must be positive")
    if args.lr is not None and not args.lr > 0:
        raise SaekitError("--lr must be positive")
    if args.l0s is not None and not all(x > 0 for x in args.l0s):
        raise SaekitError("--l0s must be positive")
    preset = bench_preset(args.preset, l0s=tuple(args.l0s) if args.l0s else None,
                          total_samples=args.samples, eval_samples=args.eval_samples, d_sae=args.d_sae,
                          lr=args.lr)
    overrides = {"compensation": args.compensation} if args.compensation else None
    result = run_synth_bench(preset, args.methods, device=args.device, progress=not args.no_progress,
                             synthetic_overrides=overrides, out=args.out,
                             overwrite=args.overwrite)
    print_table(result["rows"], COLUMNS)
    true_l0 = result["rows"][0]["true_l0"] if result["rows"] else float("nan")
    print(f"\ntrue L0 {true_l0:.2f}; training {result['train_s']:.0f} s for {len(result['rows'])} dictionaries "
          f"({preset.total_samples:,} samples each, one stream)")
    print(f"published orderings (SynthSAEBench-16k, L0 25), checked at L0 {preset.reference_l0:g}:")
    for claim in result["orderings"]:
        verdict = {True: "holds", False: "does not hold", None: "not measured"}[claim["holds"]]
        print(f"  {claim['claim']}: {verdict}")
    if args.out is not None:
        print(f"\nwrote {args.out / 'results.json'}, {args.out / 'table.txt'}, {args.out / 'mcc-f1-vs-l0.png'}")
    return 0

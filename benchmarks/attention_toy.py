"""The gated-attention toy table (METHODS-2.md §4.1): for 2H/3ST, 3H/4ST and 4H/5ST, the toy model's learnt and
distributed trigrams, and the gated block's trigrams produced by exactly one head (of n), its final MSE, against
the published outcome (every trigram by one head, none distributed), with settings and wall time.

    nice -n 10 .venv/bin/python benchmarks/attention_toy.py --out out/attention-toy
    .venv/bin/python benchmarks/attention_toy.py --settings published   # the reference's 1000 epochs (hours)

--block-seeds runs the block stage once per seed on the same toy model (the published run used one seed).
--reference DIR (the reference's saved_models, e.g. from a clone of cmathw/gated-attn) first checks its shipped
toy models and blocks with saekit's check, then trains saekit's block on the shipped toy models.
--reference-data trains on the reference's own batches (draw for draw); with --reference and block seed 0 the
block starts where the published run started. --compile runs the block's step through torch.compile (~2.3x).

    .venv/bin/python benchmarks/attention_toy.py --threads 1 --settings published --toys 4H/5ST \
        --reference DIR --reference-data --compile --block-seeds 0 1   # ~1 h per seed on one core
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from common import machine

from saekit.experiments.attention_toy import (
    CPU,
    PUBLISHED,
    REFERENCE_COLUMNS,
    check_reference,
    load_reference_model,
    run_toy,
)
from saekit.inspect.tables import format_table

COLUMNS = ["toy", "toy_model", "data", "block_seed", "model_learnt", "model_distributed", "one_head",
           "block_distributed", "block_passes", "final_mse", "published", "model_epochs", "model_lr",
           "block_epochs", "block_lr", "alpha", "model_seconds", "block_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", choices=("cpu", "published"), default="cpu")
    parser.add_argument("--toys", nargs="+", default=list(CPU))
    parser.add_argument("--block-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reference", type=Path, default=None,
                        help="The reference's saved_models folder (cmathw/gated-attn, "
                             "gated_attention/experiments/saved_models): check its shipped originals and blocks "
                             "with saekit's check, and train saekit's block on its originals.")
    parser.add_argument("--block-epochs", type=int, default=None, help="Override the preset's block epochs.")
    parser.add_argument("--block-lr", type=float, default=None, help="Override the preset's block lr.")
    parser.add_argument("--compile", action="store_true",
                        help="Train the block through torch.compile (~2.3x faster on a CPU; needs a C++ compiler).")
    parser.add_argument("--reference-data", action="store_true",
                        help="Train on the reference's own batches, draw for draw (with --reference and block "
                             "seed 0, the published run's exact start).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    presets = CPU if args.settings == "cpu" else PUBLISHED
    rows = []
    if args.reference is not None:
        shipped = [check_reference(args.reference, PUBLISHED[toy]) for toy in args.toys]
        print("the reference's shipped toy models and gated blocks, checked by saekit:")
        print(format_table(shipped, REFERENCE_COLUMNS), flush=True)
    for toy in args.toys:
        for seed in args.block_seeds:
            settings = dataclasses.replace(presets[toy], block_seed=seed, reference_data=args.reference_data,
                                           compile=args.compile)
            if args.block_epochs is not None:
                settings = dataclasses.replace(settings, block_epochs=args.block_epochs)
            if args.block_lr is not None:
                settings = dataclasses.replace(settings, block_lr=args.block_lr)
            original = None if args.reference is None else load_reference_model(args.reference, settings)
            row = run_toy(settings, progress=True, model=original)
            row["toy_model"] = "saekit" if original is None else "reference (shipped)"
            row.update(block_seed=seed, **{key: row["settings"][key] for key in
                                           ("model_epochs", "model_lr", "block_epochs", "block_lr", "alpha")})
            rows.append(row)
            print(format_table([row], COLUMNS), flush=True)
    print()
    print(format_table(rows, COLUMNS))
    print(f"published settings: {json.dumps({k: dataclasses.asdict(v) for k, v in PUBLISHED.items()})}")
    print(machine(args.threads))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        shipped_rows = shipped if args.reference is not None else []
        (args.out / "results.json").write_text(json.dumps({"rows": rows, "shipped": shipped_rows,
                                                           "machine": machine(args.threads)}, indent=2) + "\n")


if __name__ == "__main__":
    main()

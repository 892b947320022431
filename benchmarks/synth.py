"""The synthetic ground-truth benchmark's figures: every method at several L0s on the CPU preset (one
sweep), the table, the published orderings of SynthSAEBench-16k at L0 25 checked at the CPU preset's
counterpart L0, and the time each part takes on this machine.

    .venv/bin/python benchmarks/synth.py [--preset cpu] [--out docs/figures/synth-cpu] [--threads 2]

Times: building the model, generating the data alone (samples/s, median of 5 chunks), training the
whole sweep (one stream), and scoring each dictionary (`eval_s`, from `saekit bench synth`'s rows).
The machine is shared: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine, median_seconds  # benchmarks/ is on sys.path when run as a script

from saekit.data.synthetic import SyntheticData, SyntheticModel, synthetic_preset
from saekit.experiments.synth import COLUMNS, PUBLISHED_16K, bench_preset, run_synth_bench
from saekit.inspect.tables import format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--samples", type=int, default=None, help="Training samples (default: the preset's).")
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/synth-cpu"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = bench_preset(args.preset, total_samples=args.samples)

    model = SyntheticModel(synthetic_preset(preset.data), device=args.device)
    data = SyntheticData(model)
    chunk = median_seconds(lambda: data.chunk(0), repeats=5, device=args.device)
    generation = f"data generation: {data.chunk_size / chunk:,.0f} samples/s ({machine(args.threads)})"
    print(generation, flush=True)

    started = time.perf_counter()
    result = run_synth_bench(preset, args.methods, device=args.device, progress=False, out=args.out,
                             overwrite=True)  # this script's own figures folder
    total = time.perf_counter() - started
    rows = result["rows"]
    print(format_table(rows, COLUMNS))
    evals = sorted(r["eval_s"] for r in rows)
    timing = (f"model build {result['model_build_s']:.1f} s; training {len(rows)} dictionaries in one sweep of "
              f"{preset.total_samples:,} samples: {result['train_s']:.0f} s; scoring "
              f"({preset.eval_samples:,} held-out samples each): median {evals[len(evals) // 2]:.1f} s, "
              f"max {evals[-1]:.1f} s; whole benchmark {total:.0f} s ({machine(args.threads)})")
    print(timing)
    print(f"\ntrue L0 {rows[0]['true_l0']:.2f}. Published SynthSAEBench-16k at L0 25 (width 4096, 200M samples):")
    print(format_table([{"method": m, **v} for m, v in PUBLISHED_16K[25.0].items()],
                       ["method", "f1", "mcc", "uniqueness", "explained_variance"]))
    print(f"\nPublished orderings checked at L0 {preset.reference_l0:g} (the CPU counterpart of 25):")
    for claim in result["orderings"]:
        print(f"  {'holds' if claim['holds'] else 'does not hold' if claim['holds'] is False else 'n/a':13s} "
              f"{claim['claim']}")
    (args.out / "timing.txt").write_text(generation + "\n" + timing + "\n")
    print(f"\nwrote {args.out}/results.json, table.txt, mcc-f1-vs-l0.png, timing.txt")
    print(json.dumps({"orderings_held": sum(bool(c["holds"]) for c in result["orderings"]),
                      "of": len(result["orderings"])}))


if __name__ == "__main__":
    main()

"""Parameter decomposition on the larger toys: SPD on TMS 40-10, compressed computation, cross-layer.

For each toy: train the target from its fixed seed, decompose it with SPD using the reduced CPU
settings of `saekit decompose` (experiments.TOYS; `--published` for the papers' settings), then print
the ground-truth figures (MMCS / ML2R for TMS; per-layer non-negligible subcomponents; whether the
one-hot importance matrix of each W_in is a permutation of the identity at the stated threshold; the
share of W_out subcomponents co-active per feature) with wall-clock and CPU seconds. Plots (PNG) and
one JSON report per toy go to `--out`. The TMS 5-2 cases run in tests/test_decompose.py.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decompose.py [--toys tms-40-10 resid-mlp-1 resid-mlp-2]
        [--steps N] [--published] [--device cuda] [--out decompose-bench]

CPU seconds (process time) are the figure to compare across machines: wall time on a shared machine
mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from saekit.decompose.experiments import TOYS, run_toy_decomposition

DEFAULT_TOYS = ("tms-40-10", "resid-mlp-1", "resid-mlp-2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toys", nargs="+", default=list(DEFAULT_TOYS), choices=list(TOYS))
    parser.add_argument("--method", default="spd", choices=["spd", "apd"])
    parser.add_argument("--steps", type=int, default=None, help="Override the decomposition steps.")
    parser.add_argument("--published", action="store_true", help="The papers' settings (slow on CPU).")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("decompose-bench"))
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the target always trains on the CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    summary = []
    for toy in args.toys:
        wall, cpu = time.perf_counter(), time.process_time()
        report = run_toy_decomposition(toy, args.method, published=args.published, steps=args.steps,
                                       seed=args.seed, out_dir=args.out, progress=args.progress,
                                       device=args.device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                 else f"{args.threads} CPU thread(s)")
        print(f"\n=== {toy} ({args.method}) — wall {wall:.0f} s, CPU {cpu:.0f} s on {where} ===")
        for line in report.lines():
            print(line)
        data = report.summary() | {"wall_seconds": wall, "cpu_seconds": cpu, "threads": args.threads}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{toy}-{args.method}-report.json").write_text(
            json.dumps(data, indent=2, default=str) + "\n")
        summary.append((toy, report, wall, cpu))
    print("\ntoy | MMCS | ML2R | non-negligible per layer | W_in permutation | wall s | CPU s")
    for toy, report, wall, cpu in summary:
        mmcs = "-" if report.mmcs is None else f"{report.mmcs:.4f}"
        ml2r = "-" if report.ml2r is None else f"{report.ml2r:.4f}"
        counts = ", ".join(f"{k} {v}" for k, v in report.non_negligible.items())
        perm = ", ".join(f"{k} {c.is_permutation}" for k, c in report.permutation.items())
        print(f"{toy} | {mmcs} | {ml2r} | {counts} | {perm} | {wall:.0f} | {cpu:.0f}")


if __name__ == "__main__":
    main()

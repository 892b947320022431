"""Budget sweep: saekit's TopK defaults against sparsify's, at several token budgets.

Every library trains the TopK SAE of `benchmarks/peers.py` (all-MiniLM-L6-v2 layer 3 over the Python docs,
k=32, d_sae = 16·d_in, batch 4096) at its own defaults, once per budget, and is evaluated by the same code
on the same 100k held-out rows (`benchmarks/peer_train.py`). At budgets beyond the ~1M cached training
rows every library starts over at the start of the file, in the same order. Runs alternate between
libraries (and saekit variants), so load on this shared machine hits them alike. FVU and dead fraction
do not depend on the load (same data, same seeds, deterministic CPU kernels); tokens/s does, so the load
average before and after each run is printed with it.

    .venv/bin/python benchmarks/defaults.py [--tokens 400000 1000000 4000000] [--repeats 1]
        [--variants '{"lr 2e-3": {"lr": 2e-3}}'] [--json out.json] [--plot fvu.png]

`--variants` adds saekit runs with options (DictionaryConfig / TrainingConfig fields) beside its defaults,
which is how the defaults in docs/defaults.md were chosen; `--no-defaults` leaves the defaults out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np
from peers import PEER_PYTHON, ROOT, export, run  # benchmarks/ is on sys.path when run as a script


def plot(results: dict[str, dict[int, list[dict]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_budget in results.items():
        budgets = sorted(by_budget)
        ax.plot(budgets, [statistics.median(r["fvu"] for r in by_budget[b]) for b in budgets], marker="o",
                label=name)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out FVU (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[400_000, 1_000_000, 4_000_000])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--heldout", type=int, default=100_000)
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache/bench/minilm-l3")
    parser.add_argument("--data", type=Path, default=ROOT / ".cache/bench/minilm-l3-export")
    parser.add_argument("--variants", default="{}",
                        help="JSON object {name: {saekit option: value}}: saekit runs beside its defaults")
    parser.add_argument("--no-defaults", action="store_true", help="leave saekit's defaults out")
    parser.add_argument("--no-sparsify", action="store_true", help="leave sparsify out")
    parser.add_argument("--sparsify-once", action="store_true",
                        help="one sparsify run at the largest budget, evaluated on the way at the smaller ones "
                             "(its schedule-free SignSGD has no schedule, so that is a run of that length)")
    parser.add_argument("--json", type=Path, help="also write every run's record here")
    parser.add_argument("--plot", type=Path, help="PNG of held-out FVU against training tokens")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    args = parser.parse_args()

    entries: list[tuple[str, str, dict]] = []  # (name, library, saekit options)
    if not args.no_defaults:
        entries.append(("saekit defaults", "saekit", {}))
    entries += [(f"saekit {name}", "saekit", options) for name, options in json.loads(args.variants).items()]
    if not args.no_sparsify:
        if not args.peer_python.exists():
            raise SystemExit("no peer environment: run SAEKIT_PEER_VENV=.cache/peer-venv bash "
                             "tests/interop/peer_env.sh (or pass --no-sparsify)")
        entries.append(("sparsify defaults", "sparsify", {}))
    data = export(args.cache, args.data, args.heldout)
    d_in = int(np.load(data / "heldout.npy", mmap_mode="r").shape[1])

    results: dict[str, dict[int, list[dict]]] = {name: {} for name, _, _ in entries}

    def show(name: str, record: dict) -> None:
        results[name].setdefault(record["tokens"], []).append(record)
        print(f"  {record['tokens']:>9,} tok  {name:24s} fvu {record['fvu']:.4f}  dead "
              f"{record['dead_fraction']:.3f}  {record['tokens_per_s']:7,.0f} tok/s  load "
              f"{record['load_start']:.1f}->{record['load_end']:.1f}", flush=True)

    budgets = sorted(args.tokens)
    for rep in range(args.repeats):
        for tokens in budgets:
            order = entries if rep % 2 == 0 else entries[::-1]
            for name, library, options in order:
                if library == "sparsify" and args.sparsify_once and tokens != budgets[-1]:
                    continue  # its figures at this budget come from the longest run's evaluations
                run_args = argparse.Namespace(
                    tokens=tokens, threads=args.threads, batch=args.batch, device="cpu", precision="fp32",
                    k=32, d_sae=16 * d_in, peer_python=args.peer_python, saekit_options=json.dumps(options))
                extra = ("--eval-at", *map(str, budgets[:-1])) if library == "sparsify" and args.sparsify_once \
                    else ()
                record = run(library, data, run_args, extra) | {"options": options}
                for point in record.pop("checkpoints", []):
                    show(name, record | point | {"tokens_per_s": point["tokens"] / point["seconds"],
                                                 "evaluated_within": record["tokens"]})
                show(name, record)

    loads = [r[k] for by in results.values() for rs in by.values() for r in rs for k in ("load_start", "load_end")]
    print(f"\nTopK k=32, d_in={d_in}, d_sae={16 * d_in}, batch {args.batch}, {args.heldout:,} held-out rows; "
          f"{args.threads} threads; medians of {args.repeats} run(s) per budget, alternating")
    print(f"load average during runs: min {min(loads):.1f}, median {statistics.median(loads):.1f}, "
          f"max {max(loads):.1f} ({os.cpu_count()} CPUs): tokens/s are only comparable within a budget")
    for name, _, options in entries:
        if options:
            print(f"{name}: {json.dumps(options)}")
    budgets = sorted({b for by in results.values() for b in by})
    print(f"{'':24s}" + "".join(f"{b:>28,}" for b in budgets))
    print(f"{'':24s}" + "".join(f"{'FVU':>10s}{'dead':>7s}{'tok/s':>11s}" for _ in budgets))
    for name, by_budget in results.items():
        cells = []
        for b in budgets:
            rs = by_budget.get(b, [])
            cells.append(f"{statistics.median(r['fvu'] for r in rs):10.4f}"
                         f"{statistics.median(r['dead_fraction'] for r in rs):7.3f}"
                         f"{statistics.median(r['tokens_per_s'] for r in rs):11,.0f}" if rs else f"{'-':>28s}")
        print(f"{name:24s}" + "".join(cells))
    if "saekit defaults" in results and "sparsify defaults" in results:
        for b in budgets:
            ours, theirs = results["saekit defaults"].get(b), results["sparsify defaults"].get(b)
            if ours and theirs:
                fvu = statistics.median(r["fvu"] for r in ours) / statistics.median(r["fvu"] for r in theirs)
                print(f"{b:>9,} tokens: saekit / sparsify FVU x{fvu:.3f} "
                      f"({'saekit' if fvu <= 1 else 'sparsify'} lower or equal)")
    if args.json:
        args.json.write_text(json.dumps({name: {str(b): rs for b, rs in by.items()}
                                         for name, by in results.items()}, indent=1))
    if args.plot:
        plot(results, args.plot, f"TopK k=32, d_sae {16 * d_in}, MiniLM-L6 layer 3, batch {args.batch}")


if __name__ == "__main__":
    main()

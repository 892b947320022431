"""Dead latents on a ReLU SAE sweep: no care, resampling, and the three ghost-grads forms (METHODS.md §5(b)).

Every member of the sweep trains in one `saekit.train` call on the same batches of a `saekit cache` of the
offline default model, with the same seed and token budget; only the dead-latent care differs. A short
dead window (`--dead-tokens`) and a large λ make latents die within a short CPU run. Printed: the dead
fraction and training MSE over steps (and a plot of both), then held-out FVU, L0 and never-firing
fraction on rows of the cache the run did not train on.

    saekit cache --model offline-default --hookpoints resid_post.6 --tokens 300000 --out out/cache-l6
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/ghost_grads.py out/cache-l6 --plot docs/figures/ghost-grads.png
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import saekit
from saekit.data.cache import open_cache
from saekit.inspect.report import read_log

CARES = {  # name -> dead-latent options
    "none": {},
    "resampling": {"resample_every": "RESAMPLE"},
    "ghost original": {"ghost_grads": True, "ghost_grads_form": "original"},
    "ghost scaled": {"ghost_grads": True, "ghost_grads_form": "scaled"},
    "ghost softplus": {"ghost_grads": True, "ghost_grads_form": "softplus"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", type=Path, help="A `saekit cache` directory with --hookpoint.")
    parser.add_argument("--hookpoint", default="resid_post.6")
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[20.0], help="λ values (the sweep).")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200, help="Training steps (at most the cache's rows "
                                                                   "less --held-out).")
    parser.add_argument("--held-out", type=int, default=16_384, help="Cache rows kept out of training.")
    parser.add_argument("--dead-tokens", type=int, default=32_768)
    parser.add_argument("--resample-every", type=int, default=60, help="Steps between resamplings.")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None, help="Write dead fraction and MSE vs step here.")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()

    cache = open_cache(args.cache)
    d_in = cache.d[args.hookpoint]
    train_tokens = min(args.steps, (cache.total_tokens - args.held_out) // args.batch) * args.batch
    specs = []
    for lam in args.sparsity:
        for care, options in CARES.items():
            values = {k: (args.resample_every if v == "RESAMPLE" else v) for k, v in options.items()}
            specs.append(saekit.DictionarySpec.from_options(
                method="relu", d_in=d_in, d_sae=args.d_sae, lr=args.lr, sparsity_coefficient=lam,
                dead_tokens=args.dead_tokens, seed=args.seed, hookpoint=args.hookpoint,
                name=f"{care} λ={lam:g}", **values))
    stream = cache.stream(args.hookpoint, args.batch, shuffle=True, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        started = time.perf_counter()
        dictionaries = saekit.train(stream, specs, total_tokens=train_tokens, batch_size=args.batch,
                                    log_every=args.log_every, log_file=str(log), progress=True)
        seconds = time.perf_counter() - started
        runs = read_log(log)
    held = torch.cat(list(cache.stream(args.hookpoint, 4096, start_token=train_tokens, shuffle=True,
                                       seed=args.seed)))
    print(f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} model={cache.model} "
          f"site={args.hookpoint} d_sae={args.d_sae} lr={args.lr} train_tokens={train_tokens} "
          f"steps={train_tokens // args.batch} dead_tokens={args.dead_tokens} held_out={held.shape[0]} "
          f"train_s={seconds:.0f} (all members together)")
    print(f"{'member':<26} {'dead (train)':>12} {'never fires':>12} {'FVU':>7} {'L0':>7} {'MSE last 10%':>13}")
    results = []
    total_variance = float((held - held.mean(0)).pow(2).sum())
    for spec, d in zip(specs, dictionaries):
        with torch.no_grad():
            latents = d.encode(held)
            fvu = float((held - d.decode(latents)).pow(2).sum()) / total_variance
        rows = runs[spec.name]
        tail = rows[len(rows) * 9 // 10:]
        row = {"name": spec.name, "dead_fraction": rows[-1]["dead_fraction"],
               "never_fires_held_out": float(((latents > 0).sum(0) == 0).float().mean()), "fvu": fvu,
               "l0": float((latents > 0).sum(-1).float().mean()),
               "mse_last_10pct": sum(r["mse"] for r in tail) / len(tail),
               "curve": [{"step": r["step"], "dead_fraction": r["dead_fraction"], "mse": r["mse"]} for r in rows]}
        results.append(row)
        print(f"{spec.name:<26} {row['dead_fraction']:>12.3f} {row['never_fires_held_out']:>12.3f} "
              f"{fvu:>7.4f} {row['l0']:>7.1f} {row['mse_last_10pct']:>13.4f}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot is not None:
        plot(results, args.plot, f"ReLU SAE, {cache.model} {args.hookpoint}, d_sae {args.d_sae}")
        print(f"plot -> {args.plot}")


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for row in results:
        steps = [p["step"] for p in row["curve"]]
        axes[0].plot(steps, [p["dead_fraction"] for p in row["curve"]], label=row["name"], linewidth=1.3)
        axes[1].plot(steps, [p["mse"] for p in row["curve"]], label=row["name"], linewidth=1.3)
    axes[0].set_ylabel("dead fraction")
    axes[1].set_ylabel("training MSE (normalised inputs)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()

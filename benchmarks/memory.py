"""Peak memory of TopK training against width: the sparse path's working memory does not grow with
batch × d_sae.

Each width trains a few steps in a fresh process (peak RSS is a per-process high-water mark) and
reports its peak RSS, the RSS before training (interpreter, torch, the batch), the weights' and
optimiser's own memory (W_enc, W_dec, their gradients and Adam's two moments: 16 bytes per weight, the
floor for Adam training in fp32), and what is left: the step's working memory. For comparison it
prints the size of one dense [batch, d_sae] fp32 tensor, of which a dense TopK step holds several
(pre-activations, latents, their gradients); the dense path (`sparse_kernels=False`) is measured too up
to `--dense-up-to`.

    .venv/bin/python benchmarks/memory.py [--widths 4096 8192 16384 32768 65536] [--batch 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from common import peak_rss_mib, rss_mib  # benchmarks/ is on sys.path when run as a script


def child(width: int, batch: int, d_in: int, k: int, steps: int, sparse: bool) -> None:
    import saekit

    torch.set_num_threads(int(os.environ.get("SAEKIT_BENCH_THREADS", "2")))
    x = torch.randn(batch, d_in)
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=d_in, d_sae=width, k=k, sparse_kernels=sparse)
    before = rss_mib()
    saekit.train((x for _ in range(steps)), [spec], total_tokens=steps * batch, batch_size=batch, progress=False,
                 normalization_tokens=batch)
    print(json.dumps({"before": before, "peak": peak_rss_mib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dense-up-to", type=int, default=16384,
                        help="also measure the dense path up to this width (0: never)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), args.batch, args.d_in, args.k, args.steps, args.child[1] == "sparse")
        return

    print(f"TopK k={args.k}, d_in={args.d_in}, batch {args.batch}, {args.steps} steps, peak RSS per "
          f"process; load average {os.getloadavg()[0]:.1f}")
    print(f"{'d_sae':>6s} {'path':6s} {'peak RSS':>9s} {'before':>7s} {'weights+Adam':>12s} "
          f"{'working':>8s} {'one [B, d_sae]':>14s}   (MiB)")
    for width in args.widths:
        state = 16 * 2 * args.d_in * width / 2**20
        dense_tensor = 4 * args.batch * width / 2**20
        paths = ["sparse"] + (["dense"] if width <= args.dense_up_to else [])
        for path in paths:
            cmd = [sys.executable, __file__, "--child", str(width), path, "--batch", str(args.batch),
                   "--d-in", str(args.d_in), "--k", str(args.k), "--steps", str(args.steps)]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True)
                             .stdout.strip().splitlines()[-1])
            working = out["peak"] - out["before"] - state
            print(f"{width:6d} {path:6s} {out['peak']:9,.0f} {out['before']:7,.0f} {state:12,.0f} "
                  f"{working:8,.0f} {dense_tensor:14,.0f}", flush=True)


if __name__ == "__main__":
    main()

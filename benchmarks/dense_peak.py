"""Dense methods (ReLU, JumpReLU, Gated) against this machine's matmul peak, measured in the same run.

A dense SAE training step is five [B, d_in]×[d_in, d_sae]-sized products (encoder forward, decoder
forward, and the decoder-weight, latent and encoder-weight gradients): 10·B·d_in·d_sae FLOPs. Gated
needs two more (its auxiliary reconstruction through the frozen decoder, forward and backward): 14·B·d·M.
The script alternates timing the bare product (the peak) and training steps of each method, and prints
the fraction of the median peak.

    .venv/bin/python benchmarks/dense_peak.py [--threads 2] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import machine, matmul_peak, step_time  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--d-sae", type=int, default=6144)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    products = {"relu": 5, "jumprelu": 5, "gated": 7}
    print(f"{machine(args.threads)} batch={args.batch} d_in={args.d_in} d_sae={args.d_sae} "
          f"(medians of {args.steps} steps)")
    peaks, seconds = [], {}
    for method in products:
        peaks.append(matmul_peak(args.batch, args.d_in, args.d_sae, 10))
        seconds[method] = step_time(method, args.batch, args.d_in, args.d_sae, args.steps)
    peaks.append(matmul_peak(args.batch, args.d_in, args.d_sae, 10))
    peak = statistics.median(peaks)
    print(f"matmul peak: median {peak / 1e9:.1f} GFLOP/s (measurements: "
          + ", ".join(f"{p / 1e9:.0f}" for p in peaks) + ")")
    for method, n_products in products.items():
        achieved = 2 * n_products * args.batch * args.d_in * args.d_sae / seconds[method]
        print(f"{method:9s} step {seconds[method] * 1000:7.1f} ms  {args.batch / seconds[method]:8,.0f} "
              f"tokens/s  {achieved / 1e9:6.1f} GFLOP/s = {achieved / peak:5.1%} of peak "
              f"({n_products} products)")


if __name__ == "__main__":
    main()

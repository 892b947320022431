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
import os
import statistics
import time

import torch

import saekit
from saekit.training.member import SweepMember


def matmul_peak(batch: int, d_in: int, d_sae: int, repeats: int = 10, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> float:
    """Median FLOP/s of [batch, d_in]×[d_in, d_sae] in this process (torch threads already set)."""
    a = torch.randn(batch, d_in, device=device, dtype=dtype)
    b = torch.randn(d_in, d_sae, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * batch * d_in * d_sae / statistics.median(times)


def step_time(method: str, batch: int, d_in: int, d_sae: int, steps: int, device: str = "cpu",
              autocast: str = "none", **options) -> float:
    """Seconds per training step. CPU: the median of single steps (robust to a noisy neighbour).
    GPU: the mean over `steps` queued back to back, synchronised once, as a training loop runs them."""
    cfg = saekit.DictionaryConfig(method=method, d_in=d_in, d_sae=d_sae, lr=1e-4, **options)
    member = SweepMember(cfg, total_steps=1000, device=device, autocast=autocast)
    x = torch.randn(batch, d_in, device=device)
    member.start(x)
    for i in range(3):
        member.step(x, i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(steps):
            member.step(x, i + 3)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps
    times = []
    for i in range(steps):
        start = time.perf_counter()
        member.step(x, i + 3)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    print(f"threads={args.threads} load_avg={os.getloadavg()[0]:.2f} batch={args.batch} "
          f"d_in={args.d_in} d_sae={args.d_sae} (medians of {args.steps} steps)")
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

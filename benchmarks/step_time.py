"""Training-step time of each method and kernel path on one device: where a GPU step's time goes.

Prints tokens/s per variant (fp32 and bf16 autocast) at the peers benchmark's shape (batch 4096,
d_in 384, d_sae 16x), then a torch.profiler table of the default TopK step. On a GPU a step of this
size is launch-bound, so the table's CPU-side totals matter as much as the kernels.

    python benchmarks/step_time.py --device cuda [--steps 200] [--profile]
"""

from __future__ import annotations

import argparse

import torch
from common import matmul_peak, step_time  # benchmarks/ is on sys.path when run as a script

VARIANTS = {
    "topk (sparse kernels)": ("topk", {}),
    "topk (dense path)": ("topk", {"sparse_kernels": False}),
    "topk, no AuxK": ("topk", {"aux_k": 0}),
    "topk, dense, no AuxK": ("topk", {"aux_k": 0, "sparse_kernels": False}),
    "batchtopk": ("batchtopk", {}),
    "relu": ("relu", {}),
    "jumprelu": ("jumprelu", {}),
    "gated": ("gated", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    d_sae = args.d_in * args.expansion
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"{name}: batch {args.batch}, d_in {args.d_in}, d_sae {d_sae}, {args.steps} steps per figure")
    for dtype in (torch.float32, torch.bfloat16):
        peak = matmul_peak(args.batch, args.d_in, d_sae, device=args.device, dtype=dtype)
        print(f"matmul peak {dtype}: {peak / 1e12:.1f} TFLOP/s")
    print(f"{'variant':24s} {'fp32 tok/s':>12s} {'bf16 tok/s':>12s}")
    for label, (method, options) in VARIANTS.items():
        k = {"k": 32} if method in ("topk", "batchtopk") else {}
        speeds = [args.batch / step_time(method, args.batch, args.d_in, d_sae, args.steps, args.device,
                                         autocast, **k, **options)
                  for autocast in ("none", "bfloat16")]
        print(f"{label:24s} {speeds[0]:12,.0f} {speeds[1]:12,.0f}", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if name != "cpu" else [])
        with profile(activities=activities) as prof:
            step_time("topk", args.batch, args.d_in, d_sae, 20, args.device, k=32)
        sort = "cuda_time_total" if name != "cpu" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=25))


if __name__ == "__main__":
    main()

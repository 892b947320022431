"""Training-step time of each method and kernel path on one device: where a GPU step's time goes.

Prints tokens/s per variant (fp32 and bf16 autocast) at the peers benchmark's shape (batch 4096,
d_in 384, d_sae 16x), then a torch.profiler table of the default TopK step. On a GPU a step of this
size is launch-bound, so the table's CPU-side totals matter as much as the kernels.

    python benchmarks/step_time.py --device cuda [--steps 200] [--profile]
"""

from __future__ import annotations

import argparse

import torch
from common import chosen_variants, matmul_peak, step_time  # benchmarks/ is on sys.path when run as a script

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
    parser.add_argument("--d-sae", type=int, default=0, help="latents (default: expansion x d_in)")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--variants", default="", help="semicolon-separated subset of the variants (default: all)")
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32, bf16 or both")
    parser.add_argument("--profile", action="store_true", help="a profiler table of the default TopK step")
    args = parser.parse_args()
    d_sae = args.d_sae or args.d_in * args.expansion
    variants = {name: VARIANTS[name] for name in chosen_variants(args.variants, VARIANTS, ";")}
    autocasts = {"fp32": "none", "bf16": "bfloat16"}
    precisions = args.precisions.split(",")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"{name}: batch {args.batch}, d_in {args.d_in}, d_sae {d_sae}, k {args.k}, "
          f"{args.steps} steps per figure")
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        peak = matmul_peak(args.batch, args.d_in, d_sae, device=args.device, dtype=dtype)
        print(f"matmul peak {dtype}: {peak / 1e12:.1f} TFLOP/s")
    print(f"{'variant':24s}" + "".join(f" {p + ' tok/s':>12s}" for p in precisions))
    for label, (method, options) in variants.items():
        k = {"k": args.k} if method in ("topk", "batchtopk") else {}
        speeds = [args.batch / step_time(method, args.batch, args.d_in, d_sae, args.steps, args.device,
                                         autocasts[p], **k, **options)
                  for p in precisions]
        print(f"{label:24s}" + "".join(f" {v:12,.0f}" for v in speeds), flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if name != "cpu" else [])
        with profile(activities=activities) as prof:
            step_time("topk", args.batch, args.d_in, d_sae, 10, args.device, autocasts[precisions[-1]], k=args.k)
        sort = "cuda_time_total" if name != "cpu" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=48)
        print(table)
        if name != "cpu":
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48))


if __name__ == "__main__":
    main()

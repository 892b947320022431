"""Does a TopK SAE learn as well on this device as on the CPU? One shape, several step variants, held-out FVU.

Found on an H200 (docs/benchmarks.md "On a lent GPU"): at d_in 384 / d_sae 6144 / k 32, 488 steps of 4096
synthetic rows, saekit's defaults reached held-out FVU 0.461 on the GPU and 0.219 on the CPU, while
sparsify reached 0.274 on both, so the rows were alike and the difference is saekit's GPU step. This trains
the same dictionary once per variant, each turning one part of the GPU step off (bf16 autocast, the
prefetch thread, the sparse kernels, AuxK, rows already on the device), and prints the FVU of each: the
variant that closes the gap names the part at fault. The variant "cpu here" trains on this machine's CPU
(its torch, the same rows): if it matches the GPU rather than the 0.219 measured elsewhere, the cause is
the torch version or the machine, not the GPU kernels. The rows are made on the CPU whatever the device, so
every variant and the CPU reference see the same rows, and each GPU-trained dictionary is evaluated on the
device and again on the CPU (`fvu_cpu_eval`), which tells a learning defect from an evaluation one.

    python benchmarks/device_parity.py --device cuda [--tokens 2000000] [--variants default,fp32,...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from peer_train import DeviceRows, RowReader, evaluate, saekit_reconstruct  # benchmarks/ is on sys.path
from peers import synthetic

# name: (DictionaryConfig/TrainingConfig options, run options, rows already on the device, on the CPU instead)
VARIANTS: dict[str, tuple[dict, dict, bool, bool]] = {
    "default": ({}, {"autocast": "bfloat16"}, True, False),
    "cpu here": ({}, {"autocast": "none"}, False, True),
    "fp32": ({}, {"autocast": "none"}, True, False),
    "no prefetch": ({}, {"autocast": "bfloat16", "prefetch": 0}, True, False),
    "dense path": ({"sparse_kernels": False}, {"autocast": "bfloat16"}, True, False),
    "no AuxK": ({"aux_k": 0}, {"autocast": "bfloat16"}, True, False),
    "rows from host": ({}, {"autocast": "bfloat16"}, False, False),
    "all off": ({"sparse_kernels": False, "aux_k": 0}, {"autocast": "none", "prefetch": 0}, False, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, default=Path("/tmp/parity-rows"))
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--d-sae", type=int, default=6144)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--heldout", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    args = parser.parse_args()
    names = args.variants.split(",")
    if unknown := [n for n in names if n not in VARIANTS]:
        raise SystemExit(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    import saekit

    data = synthetic(args.data, args.d_in, min(args.tokens, 500_000), args.heldout, "cpu")
    reader, heldout = RowReader(data / "train.npy"), RowReader(data / "heldout.npy")
    tokens = args.tokens // args.batch * args.batch
    on_device = DeviceRows(reader, tokens, args.device)
    print(f"{args.device}: d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}, batch {args.batch}, "
          f"{tokens // args.batch} steps, held-out FVU on {args.heldout:,} rows", flush=True)
    for name in names:
        options, run, rows_on_device, on_cpu = VARIANTS[name]
        device = "cpu" if on_cpu else args.device
        spec = saekit.DictionarySpec.from_options(method="topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k,
                                                  **options)
        source = on_device if rows_on_device else reader
        started = time.perf_counter()
        d = saekit.train(source.batches(args.batch, tokens), spec, total_tokens=tokens, batch_size=args.batch,
                         progress=False, device=device, **run)[0]
        seconds = time.perf_counter() - started
        figures = evaluate(saekit_reconstruct(d), heldout, args.d_sae, device)
        if device != "cpu":
            figures["fvu_cpu_eval"] = evaluate(saekit_reconstruct(d.cpu()), heldout, args.d_sae)["fvu"]
        print(json.dumps({"variant": name, "device": device, "seconds": round(seconds, 2)} | figures), flush=True)


if __name__ == "__main__":
    main()

"""Does a TopK SAE learn as well on this device as on the CPU? One shape, several step variants, held-out FVU.

Found on an H200 (docs/benchmarks.md "On a lent GPU"): at d_in 384 / d_sae 6144 / k 32, 488 steps of 4096
synthetic rows, saekit's defaults reached held-out FVU 0.461 on the GPU and 0.219 on the CPU, while
sparsify reached 0.274 on both, so the rows were alike and the difference is saekit's GPU step. This trains
the same dictionary once per variant, each turning one part of the GPU step off (bf16 autocast, the
prefetch thread, the sparse kernels, AuxK, Adam's fused kernel, torch's non-deterministic kernels, rows
already on the device), and prints the FVU of each: the
variant that closes the gap names the part at fault. The variant "cpu here" trains on this machine's CPU
(its torch, the same rows): if it matches the GPU rather than the 0.219 measured elsewhere, the cause is
the torch version or the machine, not the GPU kernels. The rows are made on the CPU whatever the device, so
every variant and the CPU reference see the same rows, and each GPU-trained dictionary is evaluated on the
device and again on the CPU (`fvu_cpu_eval`), which tells a learning defect from an evaluation one.

    python benchmarks/device_parity.py --device cuda [--tokens 2000000] [--variants default,fp32,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import chosen_variants  # benchmarks/ is on sys.path
from peer_train import DeviceRows, RowReader, evaluate, saekit_reconstruct
from peers import synthetic


@dataclass
class Variant:
    options: dict = field(default_factory=dict)  # DictionaryConfig / TrainingConfig fields
    run: dict = field(default_factory=lambda: {"autocast": "bfloat16"})  # saekit.train's run options
    rows_on_device: bool = True  # batches are views of rows already on the device, else read from disk
    on_cpu: bool = False  # train on this machine's CPU instead
    torch_setting: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # around the run


class UnfusedAdam(torch.optim.Adam):
    """Adam's plain per-tensor loop in place of its fused kernel (the one saekit asks for)."""

    def __init__(self, params, **options):
        options.update(fused=False, foreach=False)
        super().__init__(params, **options)


@contextlib.contextmanager
def unfused_adam() -> Iterator[None]:
    fused, torch.optim.Adam = torch.optim.Adam, UnfusedAdam  # looked up by saekit at each construction
    try:
        yield
    finally:
        torch.optim.Adam = fused


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """torch's deterministic kernels (ordered sums instead of atomics; stable top-k ties where torch has them)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


VARIANTS: dict[str, Variant] = {
    "default": Variant(),
    "cpu here": Variant(run={"autocast": "none"}, rows_on_device=False, on_cpu=True),
    "fp32": Variant(run={"autocast": "none"}),
    "no prefetch": Variant(run={"autocast": "bfloat16", "prefetch": 0}),
    "dense path": Variant(options={"sparse_kernels": False}),
    "no AuxK": Variant(options={"aux_k": 0}),
    "unfused Adam": Variant(torch_setting=unfused_adam),
    "deterministic": Variant(torch_setting=deterministic),
    "rows from host": Variant(rows_on_device=False),
    "all off": Variant(options={"sparse_kernels": False, "aux_k": 0}, run={"autocast": "none", "prefetch": 0},
                       rows_on_device=False, torch_setting=unfused_adam),
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
    names = chosen_variants(args.variants, VARIANTS, ",")
    torch.set_num_threads(args.threads)
    import saekit

    data = synthetic(args.data, args.d_in, min(args.tokens, 500_000), args.heldout, "cpu")
    reader, heldout = RowReader(data / "train.npy"), RowReader(data / "heldout.npy")
    tokens = args.tokens // args.batch * args.batch
    on_device = DeviceRows(reader, tokens, args.device)
    print(f"{args.device}: d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}, batch {args.batch}, "
          f"{tokens // args.batch} steps, held-out FVU on {args.heldout:,} rows", flush=True)
    for name in names:
        variant = VARIANTS[name]
        device = "cpu" if variant.on_cpu else args.device
        spec = saekit.DictionarySpec.from_options(method="topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k,
                                                  **variant.options)
        source = on_device if variant.rows_on_device else reader
        started = time.perf_counter()
        with variant.torch_setting():
            d = saekit.train(source.batches(args.batch, tokens), spec, total_tokens=tokens, batch_size=args.batch,
                             progress=False, device=device, **variant.run)[0]
        seconds = time.perf_counter() - started
        figures = evaluate(saekit_reconstruct(d), heldout, args.d_sae, device)
        if device != "cpu":
            figures["fvu_cpu_eval"] = evaluate(saekit_reconstruct(d.cpu()), heldout, args.d_sae)["fvu"]
        print(json.dumps({"variant": name, "device": device, "seconds": round(seconds, 2)} | figures), flush=True)


if __name__ == "__main__":
    main()

"""Live training with glibc's default malloc thresholds and with saekit's (keep_freed_blocks), alternating in
one process: `saekit.train` on `ActivationStream` (the offline default model to resid_post.6, TopK k 32,
width 4608, 16 windows of 128 tokens = ~2k tokens a step) and the model forward alone, under each setting.

mallopt settings can be changed at any time, so both settings run side by side in the same process: each
round runs the forward alone and a short training run under each (the order alternates between rounds) and
prints tokens/s. (`saekit.train` sets saekit's thresholds once per process; between rounds this script puts
glibc's defaults back for the "default" runs.)

    .venv/bin/python benchmarks/host_memory.py [--rounds 4] [--tokens 20000] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch
from common import machine, offline_model

from saekit.training import host_memory

GLIBC_DEFAULT = 128 * 1024  # both thresholds' starting values


def use(kept: bool) -> None:
    libc = ctypes.CDLL(None)
    if kept:
        host_memory.keep_freed_blocks.cache_clear()
        host_memory.keep_freed_blocks()
    else:
        host_memory.keep_freed_blocks()  # cached from here on: saekit.train leaves the defaults below alone
        libc.mallopt(host_memory.M_MMAP_THRESHOLD, GLIBC_DEFAULT)
        libc.mallopt(host_memory.M_TRIM_THRESHOLD, GLIBC_DEFAULT)
    libc.malloc_trim(0)  # start each setting from a trimmed heap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=20_000, help="Tokens of text per run.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import saekit
    from saekit.data.stream import ActivationStream
    from saekit.data.tokens import TokenStream
    from saekit.models.hooks import capture
    from saekit.models.sites import resolve_hookpoints

    model, tokenizer = offline_model()
    site = "resid_post.6"
    point = resolve_hookpoints(model, [site])
    d_in = model.config.hidden_size
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=d_in, d_sae=8 * d_in, k=32, hookpoint=site)

    def windows() -> TokenStream:
        return TokenStream(tokenizer, "offline-default", context=128, batch_size=16, max_tokens=args.tokens)

    counted = sum(int(mask.sum()) for _, mask in windows())
    budget = counted // 2048 * 2048

    def forward() -> float:
        started = time.perf_counter()
        for ids, _ in windows():
            capture(model, ids, point)
        return counted / (time.perf_counter() - started)

    def train() -> float:
        started = time.perf_counter()
        saekit.train(ActivationStream(model, windows(), [site]), [spec], total_tokens=budget, batch_size=2048,
                     progress=False)
        return budget / (time.perf_counter() - started)

    rates: dict[str, list[float]] = {f"{run} {setting}": [] for run in ("forward", "train")
                                     for setting in ("default", "kept")}
    print(f"{machine(args.threads)} d_sae={spec.dictionary.d_sae} tokens={counted}", flush=True)
    for round_ in range(args.rounds):
        for kept in (False, True) if round_ % 2 == 0 else (True, False):
            use(kept)
            setting = "kept" if kept else "default"
            rates[f"forward {setting}"].append(forward())
            rates[f"train {setting}"].append(train())
        print(f"round {round_ + 1}: tokens/s  " + "  ".join(f"{name} {values[-1]:,.0f}"
                                                          for name, values in rates.items()), flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print("median tokens/s: " + "  ".join(f"{name} {value:,.0f}" for name, value in medians.items()))
    for run in ("forward", "train"):
        print(f"{run}: saekit's thresholds / glibc default x{medians[f'{run} kept'] / medians[f'{run} default']:.2f}")
    print(f"{machine(args.threads)} (at the end)")


if __name__ == "__main__":
    main()

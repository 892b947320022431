"""Is training from the disk cache I/O-bound? Read throughput of the activation cache.

Writes a cache of synthetic activations (d=576, float32, ~1 GB by default) under /tmp, then prints the
median of a few runs of:
  - write throughput (includes sha256 and fsync of every shard);
  - checksum verification of the whole cache (`verify="full"`, what `saekit cache verify` does);
  - sequential and shuffled reads, batch 4096, with lazy verification (the default: each shard is hashed
    once, before its first rows are yielded) and with verification off, from the page cache ("warm") and
    after evicting the cache files from it with posix_fadvise ("cold"; a VM's host may still cache);
  - the same access patterns on an in-memory tensor (the ceiling).
Last, a TopK SAE (d_in=576, d_sae=9216, k=32) trains for a few steps from RAM and from the cold cache.
Every batch is summed, so each byte is really read (a float32 sequential batch is a zero-copy view of the
memory map, whose pages are only faulted in when touched). Compare with the consumer: a TopK SAE step
(d_in=576, d_sae=9216) runs ~5-10k tokens/s on this machine's CPU.

    .venv/bin/python benchmarks/cache_read.py [--tokens 450000] [--runs 3] [--train-steps 8]
                                              [--threads 1] [--dir /tmp/saekit-cache-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from saekit.data.cache import open_cache
from saekit.data.cache.writer import write_cache

D = 576
BATCH = 4096


def synthetic(tokens: int, chunk: int = 8192) -> Iterable[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    for start in range(0, tokens, chunk):
        yield torch.randn(min(chunk, tokens - start), D, generator=g)


def evict(path: Path) -> None:
    """Drop the cache's files from the page cache (no root needed), for a cold read."""
    for file in path.rglob("*.npy"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def consume(batches: Iterable[torch.Tensor]) -> int:
    rows = 0
    for batch in batches:
        batch.sum()  # touch every byte
        rows += batch.shape[0]
    return rows


def median_time(fn: Callable[[], object], runs: int, before: Callable[[], None] = lambda: None) -> float:
    times = []
    for _ in range(runs):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_memory(x: torch.Tensor, shuffle: bool, window: int) -> Iterable[torch.Tensor]:
    """The same access pattern over a tensor in RAM: the ceiling for any reader."""
    g = torch.Generator().manual_seed(0)
    for lo in range(0, x.shape[0], window):
        part = x[lo:lo + window]
        order = torch.randperm(part.shape[0], generator=g) if shuffle else None
        for i in range(0, part.shape[0], BATCH):
            yield part[i:i + BATCH] if order is None else part.index_select(0, order[i:i + BATCH])


def train_comparison(path: Path, x: torch.Tensor, steps: int) -> None:
    """The end-to-end claim: a TopK SAE trains as fast from the cache as from a tensor in RAM."""
    import saekit

    cfg = saekit.DictionarySpec.from_options(method="topk", d_in=D, d_sae=9216, k=32)
    tokens = steps * BATCH
    options = dict(total_tokens=tokens, batch_size=BATCH, progress=False)
    sources = {
        "in-memory tensor": lambda: (x[i:i + BATCH] for i in range(0, tokens, BATCH)),
        "cache, shuffled, verify=lazy, cold": lambda: (
            evict(path), open_cache(path).stream("resid", BATCH, shuffle=True, seed=1))[1],
    }
    print(f"TopK SAE training (d_in={D}, d_sae=9216, k=32), {steps} steps of {BATCH}:")
    for name, make in sources.items():
        stream = make()
        start = time.perf_counter()
        saekit.train(stream, [cfg], **options)
        seconds = time.perf_counter() - start
        print(f"  from {name:<40} {tokens / seconds:>10,.0f} tokens/s ({seconds:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=450_000, help="Tokens cached (450k = 1.04 GB).")
    parser.add_argument("--shard-tokens", type=int, default=None, help="Default: the writer's (~256 MiB).")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/saekit-cache-bench"))
    parser.add_argument("--train-steps", type=int, default=8,
                        help="TopK SAE steps timed from RAM and from the cache (0 skips).")
    parser.add_argument("--keep", action="store_true", help="Keep the cache directory afterwards.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = args.dir
    shutil.rmtree(path, ignore_errors=True)
    load = os.getloadavg()[0]
    try:
        start = time.perf_counter()
        manifest = write_cache(synthetic(args.tokens), path, hookpoints=["resid"], model="synthetic",
                               shard_tokens=args.shard_tokens)
        write_s = time.perf_counter() - start
        size_mb = sum(f["bytes"] for s in manifest["shards"] for f in s["files"].values()) / 1e6
        n = manifest["total_tokens"]
        shards = len(manifest["shards"])
        print(f"cache: {n} tokens x d={D} float32 = {size_mb:.0f} MB in {shards} shards of "
              f"{manifest['shard_tokens']} tokens; {args.threads} torch thread(s); load average {load:.2f}")
        print(f"write (sha256 + fsync): {write_s:.2f} s = {n / write_s:,.0f} tokens/s, "
              f"{size_mb / write_s:.0f} MB/s")

        def report(name: str, seconds: float) -> None:
            print(f"  {name:<44} {n / seconds:>12,.0f} tokens/s {size_mb / seconds:>8,.0f} MB/s "
                  f"({seconds:.3f} s)")

        full = median_time(lambda: open_cache(path, verify="full"), args.runs)
        print(f"verify='full' on open: {full:.2f} s for {size_mb:.0f} MB = {size_mb / full:.0f} MB/s "
              f"(~{full * 1000 / size_mb:.2f} s per GB)")
        cold_full = median_time(lambda: open_cache(path, verify="full"), args.runs, lambda: evict(path))
        print(f"verify='full' on open, cold: {cold_full:.2f} s = {size_mb / cold_full:.0f} MB/s")

        window = manifest["shard_tokens"]
        x = torch.cat(list(synthetic(args.tokens)))
        print(f"reads, batch {BATCH}, median of {args.runs}:")
        for shuffle in (False, True):
            kind = "shuffled" if shuffle else "sequential"
            report(f"in-memory tensor, {kind}",
                   median_time(lambda shuffle=shuffle: consume(in_memory(x, shuffle, window)), args.runs))
            for verify in ("none", "lazy"):
                def read(verify: str = verify, shuffle: bool = shuffle) -> int:
                    cache = open_cache(path, verify=verify)
                    return consume(cache.stream("resid", BATCH, shuffle=shuffle, seed=1))
                assert read() == n
                report(f"cache {kind}, verify={verify}, warm", median_time(read, args.runs))
                report(f"cache {kind}, verify={verify}, cold", median_time(read, args.runs,
                                                                           lambda: evict(path)))
        if args.train_steps:
            train_comparison(path, x, args.train_steps)
    finally:
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Tokens/s of the real-model pipeline on the offline default model (SmolLM2-135M-Instruct, Python docs):

    (a) the model forward alone (stopped after the hookpoint),
    (b) forward + training 1, 4 and 8 TopK dictionaries on that hookpoint from the same forward,
    (c) training the same 1, 4 and 8 dictionaries from a disk cache of the same tokens.

    .venv/bin/python benchmarks/pipeline.py [--tokens 20000] [--site resid_post.6] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import saekit
from saekit.data.cache import open_cache, write_cache
from saekit.data.stream import ActivationStream
from saekit.data.tokens import TokenStream
from saekit.models.loading import load_model


def sweep(n: int, d_in: int, site: str, expansion: int) -> list[saekit.DictionarySpec]:
    return [saekit.DictionarySpec.from_options(method="topk", d_in=d_in, d_sae=expansion * d_in, k=16 + 8 * (i % 4),
                                    hookpoint=site, seed=i, name=f"topk-{i}") for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--site", default="resid_post.6")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("offline-default")

    def stream() -> ActivationStream:
        tokens = TokenStream(tokenizer, "offline-default", context=128, batch_size=16,
                             max_tokens=args.tokens + 2048)
        return ActivationStream(model, tokens, [args.site])

    d_in = stream().widths()[args.site]
    budget = args.tokens // args.batch_size * args.batch_size
    print(f"threads={args.threads} load={os.getloadavg()[0]:.1f} site={args.site} d_in={d_in} "
          f"d_sae={args.expansion * d_in} tokens={budget} batch={args.batch_size}")

    started, seen, kept = time.perf_counter(), 0, []
    for batch in stream():
        kept.append(batch)
        seen += next(iter(batch.values())).shape[0]
    forward = seen / (time.perf_counter() - started)
    print(f"(a) model forward alone           {forward:9.0f} tok/s")
    for n in (1, 4, 8):
        started = time.perf_counter()
        saekit.train(stream(), sweep(n, d_in, args.site, args.expansion), total_tokens=budget,
                     batch_size=args.batch_size, progress=False)
        rate = budget / (time.perf_counter() - started)
        print(f"(b) forward + {n} dictionaries       {rate:9.0f} tok/s  ({rate / forward:.2f} of forward alone)")
    with tempfile.TemporaryDirectory() as folder:
        write_cache(kept, folder, hookpoints=[args.site], model="offline-default")
        for n in (1, 4, 8):
            cache = open_cache(folder)
            started = time.perf_counter()
            saekit.train(cache.stream_many(None, args.batch_size), sweep(n, d_in, args.site, args.expansion),
                         total_tokens=budget, batch_size=args.batch_size, progress=False)
            rate = budget / (time.perf_counter() - started)
            print(f"(c) from cache, {n} dictionaries     {rate:9.0f} tok/s")


if __name__ == "__main__":
    main()

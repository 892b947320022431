"""Inference-time encoders on real activations: gradient pursuit vs the trained encoder at equal L0.

Trains a ReLU SAE and a TopK SAE on residual-stream activations of the offline default model
(SmolLM2-135M-Instruct, after layer `--layer`) over the Python 3.11 docs, then on held-out tokens prints,
for each target L0 = k: the MSE of the dictionary's own latents restricted to their top k, of matching
pursuit and of gradient pursuit over the same decoder, with the time per token of each encoder.

    .venv/bin/python benchmarks/ito.py [--train-tokens 100000] [--layer 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from common import activations, offline_model

import saekit
from saekit.encoders import make_encoder


def timed(fn, x: torch.Tensor, repeats: int = 3) -> tuple[torch.Tensor, float]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times) / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-tokens", type=int, default=100_000)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = offline_model()
    site = f"resid_post.{args.layer}"
    train = activations(model, tokenizer, [site], args.train_tokens)[site]
    held_out = activations(model, tokenizer, [site], args.eval_tokens, split="test")[site]
    acts = train
    d_in = acts.shape[1]
    configs = [saekit.DictionarySpec.from_options(method="relu", d_in=d_in, d_sae=args.d_sae, lr=1e-3,
                                       sparsity_coefficient=2.0, name="relu"),
               saekit.DictionarySpec.from_options(method="topk", d_in=d_in, d_sae=args.d_sae, k=32, lr=1e-3,
                                       name="topk-k32")]
    dictionaries = saekit.train(train.split(4096), configs, total_tokens=train.shape[0] // 4096 * 4096,
                                batch_size=4096, progress=False)
    print(f"threads={args.threads} load_avg={os.getloadavg()[0]:.2f} layer={args.layer} d_in={d_in} "
          f"d_sae={args.d_sae} train_tokens={train.shape[0]} eval_tokens={held_out.shape[0]}")
    print(f"{'dictionary':10s} {'L0':>4s} {'encoder top-k MSE':>18s} {'MP MSE':>10s} {'GP MSE':>10s} "
          f"{'GP/enc':>7s} {'enc us/tok':>10s} {'GP us/tok':>10s}")
    for d in dictionaries:
        for k in (8, 16, 32):
            row = {}
            for name in ("topk", "matching-pursuit", "gradient-pursuit"):
                latents, seconds = timed(make_encoder(d, name, k), held_out)
                row[name] = (float((held_out - d.decode(latents)).pow(2).sum(-1).mean()), seconds)
            print(f"{d.cfg.name:10s} {k:4d} {row['topk'][0]:18.4f} {row['matching-pursuit'][0]:10.4f} "
                  f"{row['gradient-pursuit'][0]:10.4f} {row['gradient-pursuit'][0] / row['topk'][0]:7.3f} "
                  f"{row['topk'][1] * 1e6:10.1f} {row['gradient-pursuit'][1] * 1e6:10.1f}")


if __name__ == "__main__":
    main()

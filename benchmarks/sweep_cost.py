"""Does a sweep of N dictionaries from one stream cost less than N separate runs?

Prints the wall time of one sweep training 4 dictionaries (TopK, BatchTopK, JumpReLU, ReLU) from a
single pass over the toy stream against the sum of 4 separate runs over the same stream, alternating
the two arms and quoting medians. The stream here is the toy generator; with a model forward as the
source (benchmarks/real_model.py) the shared part is far larger.

    .venv/bin/python benchmarks/sweep_cost.py [--tokens 300000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import saekit
from saekit.data.toy import ToyConfig, ToyData


def configs(d_in: int, d_sae: int) -> list[saekit.DictionarySpec]:
    return [
        saekit.DictionarySpec.from_options(method="topk", d_in=d_in, d_sae=d_sae, k=8, lr=1e-3),
        saekit.DictionarySpec.from_options(method="batchtopk", d_in=d_in, d_sae=d_sae, k=8, lr=1e-3),
        saekit.DictionarySpec.from_options(method="jumprelu", d_in=d_in, d_sae=d_sae, lr=1e-3),
        saekit.DictionarySpec.from_options(method="relu", d_in=d_in, d_sae=d_sae, lr=1e-3),
    ]


def timed_train(cfgs: list[saekit.DictionarySpec], toy: ToyConfig, tokens: int, batch: int) -> float:
    start = time.perf_counter()
    saekit.train(ToyData(toy, chunk_size=batch), cfgs, total_tokens=tokens, batch_size=batch,
                 progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy = ToyConfig(d_in=256, n_features=1024)
    cfgs = configs(toy.d_in, 2048)
    sweep_times, separate_times = [], []
    for _ in range(args.repeats):
        sweep_times.append(timed_train(cfgs, toy, args.tokens, args.batch))
        separate_times.append(sum(timed_train([c], toy, args.tokens, args.batch) for c in cfgs))
    sweep, separate = statistics.median(sweep_times), statistics.median(separate_times)
    print(f"threads={args.threads} load_avg={os.getloadavg()[0]:.2f} tokens={args.tokens} "
          f"batch={args.batch} d_in={toy.d_in} d_sae=2048 repeats={args.repeats}")
    print(f"sweep of 4 from one stream : median {sweep:.2f} s ({args.tokens / sweep:,.0f} tokens/s "
          "per dictionary)")
    print(f"4 separate runs (summed)   : median {separate:.2f} s")
    print(f"sweep / separate           : {sweep / separate:.3f}")


if __name__ == "__main__":
    main()

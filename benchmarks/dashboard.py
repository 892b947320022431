"""Dashboard build time: every latent of a 16x dictionary on the offline default model.

Builds the full dashboard site (one model pass over `--tokens` tokens, all latents encoded together, then
logit lens, nearest latents and one page per latent) for a 16x TopK dictionary (d_sae 9216) on
SmolLM2-135M-Instruct's residual stream after layer 6 over the Python 3.11 docs, and prints the time of
each phase with the thread count and the machine's load (the machine is shared: record both).

    .venv/bin/python benchmarks/dashboard.py --dictionary runs/smol/topk-k32-9216 [--tokens 100000]
    .venv/bin/python benchmarks/dashboard.py --train-tokens 300000   # trains a quick dictionary first

Without --dictionary it first trains one with `saekit.train` (TopK, k = 32, 16x) on --train-tokens
tokens of the train split; the dashboards read the same split (as dashboards normally do).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import saekit
from saekit.data.stream import ActivationStream
from saekit.data.tokens import TokenStream
from saekit.inspect.dashboard import build_dashboards
from saekit.models.loading import load_model


def train_quick(model, tokenizer, tokens: int, out: Path) -> Path:
    stream = ActivationStream(model, TokenStream(tokenizer, context=128, batch_size=16, seed=1),
                              ["resid_post.6"])
    cfg = saekit.DictionarySpec.from_options(method="topk", d_in=576, d_sae=9216, k=32, hookpoint="resid_post.6",
                                  model_name="offline-default")
    (d,) = saekit.train(stream, [cfg], total_tokens=tokens, batch_size=2048,
                        checkpoint_dir=str(out / "checkpoints"), log_every=5)
    return saekit.save(d, out / "topk-k32-9216")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dictionary", type=Path, default=None)
    parser.add_argument("--train-tokens", type=int, default=300_000)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--out", type=Path, default=Path("out/bench-dashboard"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model, tokenizer = load_model("offline-default")
    path = args.dictionary or train_quick(model, tokenizer, args.train_tokens, args.out / "run")
    d = saekit.load(path)
    started = time.perf_counter()
    batches = TokenStream(tokenizer, context=128, batch_size=16, max_tokens=args.tokens)
    summary = build_dashboards(d, model, tokenizer, batches, args.out / "site", progress=True)
    total = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (args.out / "site").rglob("*") if p.is_file())
    result = {"dictionary": str(path), "d_sae": d.d_sae, "d_in": d.d_in, "tokens": summary["tokens"],
              "threads": args.threads, "cpus": os.cpu_count(),
              "load_avg_1m_before": round(load_before[0], 2),
              "load_avg_1m_after": round(os.getloadavg()[0], 2),
              "model_and_encode_s": round(summary["model_and_encode_s"], 1),
              "decoder_s": round(summary["decoder_s"], 1), "write_s": round(summary["write_s"], 1),
              "total_s": round(total, 1), "alive_latents": summary["alive"],
              "site_mb": round(size / 2**20, 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

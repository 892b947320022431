"""EleutherAI sparsify's own `Trainer`, training a TopK SAE live from a model on given token windows, timed.

Run by `benchmarks/live.py` with the peer environment's Python (`.cache/peer-venv`, built by
tests/interop/peer_env.sh). Prints one JSON line: tokens trained, seconds of `Trainer.fit()` (the model
load and the trainer's set-up are not counted), tokens/s.

    .cache/peer-venv/bin/python benchmarks/peer_live.py --model DIR --ids ids.npy --layer 6 --latents 4608 --k 32
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Local model directory (Hugging Face layout).")
    parser.add_argument("--ids", required=True, help=".npy of token windows [n, context] (int64).")
    parser.add_argument("--layer", type=int, default=6, help="Decoder layer whose output is trained on.")
    parser.add_argument("--latents", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="Sequences per step.")
    parser.add_argument("--exclude", type=int, nargs="*", default=[], help="Token ids left out (specials).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from datasets import Dataset
    from sparsify import SaeConfig, TrainConfig, Trainer
    from transformers import AutoModelForCausalLM

    ids = np.load(args.ids)
    dataset = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=getattr(torch, args.dtype)).eval()
    model.to(args.device)
    counted = int(np.isin(ids, args.exclude, invert=True).sum())
    with tempfile.TemporaryDirectory() as folder:
        cfg = TrainConfig(SaeConfig(k=args.k, num_latents=args.latents), batch_size=args.batch,
                          hookpoints=[f"layers.{args.layer}"], exclude_tokens=list(args.exclude),
                          save_every=10**9, save_dir=folder, log_to_wandb=False)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = Trainer(cfg, dataset, model)
            started = time.perf_counter()
            trainer.fit()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
    print(json.dumps({"library": "sparsify", "tokens": counted, "seconds": seconds,
                      "tokens_per_s": counted / seconds}))


if __name__ == "__main__":
    main()

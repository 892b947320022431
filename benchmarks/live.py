"""Training live from a model: saekit against the model forward alone and against sparsify's own Trainer.

On the offline default model (SmolLM2-135M-Instruct) at resid_post.6 (the output of decoder layer 6), a
TopK SAE (k 32, width 4608 = 8 x 576) trains on the same token windows (context 128, 16 windows = ~2k
tokens a step) in each of, alternating, per round:

    forward      saekit's model forward alone, stopped after layer 6 (the ceiling for live training)
    ceiling      the same forward plus only the TopK encoder product and selection of each batch (no
                 backward, no optimiser): what no TopK trainer can beat on this hardware
    saekit       `saekit.train` on `ActivationStream` (forward + SAE step, batches prefetched by a thread)
    saekit-p0    the same with prefetch=0 (stream and step in one thread)
    saekit-bf16  the device's default prefetch (0 on a CPU), the SAE step under bf16 autocast
                 (`autocast="bfloat16"`; the model keeps --dtype): on a CPU with AMX the encoder product
                 runs ~3x faster
    saekit-no-screen  the device's default prefetch, fp32, without the bf16 screen of the encoder's selection
                 (SAEKIT_BF16_SCREEN=0; saekit.screen: on a CPU with AMX the default screens the fp32 top-k
                 with a bf16 product, the same selection)
    sparsify     EleutherAI sparsify's `Trainer.fit()` in the peer venv (it trains inside forward hooks and
                 runs the whole model: `.cache/peer-venv`, built by tests/interop/peer_env.sh)

Prints tokens/s per run and the medians, and saekit's rate as a fraction of the forward alone.

    .venv/bin/python benchmarks/live.py [--tokens 100000] [--rounds 3] [--threads 2] [--no-peer]

On a GPU (benchmarks/lent_gpu.sh): `--device cuda --dtype bfloat16 --model DIR --windows 64`, where DIR
may be a random model of the real shape (benchmarks/shape_model.py); the peer then runs in the same Python.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, offline_model

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".cache" / "peer-venv" / "bin" / "python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100_000, help="Tokens of text per run.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--no-peer", action="store_true", help="Skip sparsify.")
    parser.add_argument("--model", default="offline-default", help="Model name or local directory.")
    parser.add_argument("--text", default="offline-default", help="Text: offline-default or a local file.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="The model's dtype (float32, bfloat16).")
    parser.add_argument("--windows", type=int, default=16, help="Windows of 128 tokens per forward.")
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import saekit
    from saekit.data.stream import ActivationStream
    from saekit.data.tokens import TokenStream
    from saekit.models.hooks import capture
    from saekit.models.loading import load_model, offline_default_directory
    from saekit.models.sites import resolve_hookpoints
    from saekit.screen import SCREEN_VARIABLE
    from saekit.sparse import fused_encode_topk
    from saekit.training.host_memory import keep_freed_blocks

    # saekit.train sets this on a CPU; set it from the start so the forward alone and the ceiling run under
    # the same allocator settings as training (it speeds up the forward too).
    keep_freed_blocks()

    if args.model == "offline-default" and args.device == "cpu" and args.dtype == "float32":
        model, tokenizer = offline_model()
    else:
        model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    model_dir = offline_default_directory() if args.model == "offline-default" else Path(args.model)
    site = f"resid_post.{args.layer}"
    point = resolve_hookpoints(model, [site])

    def windows() -> TokenStream:
        return TokenStream(tokenizer, args.text, context=128, batch_size=args.windows, max_tokens=args.tokens)

    ids = torch.cat([batch for batch, _ in windows()]).numpy()
    counted = sum(int(mask.sum()) for _, mask in windows())
    d_in = model.config.hidden_size
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=d_in, d_sae=args.expansion * d_in, k=args.k,
                                              hookpoint=site)
    batch_size = 128 * args.windows
    budget = counted // batch_size * batch_size
    print(f"{machine(args.threads)} model={args.model} ({args.dtype} on {args.device}) site={site} "
          f"d_sae={spec.dictionary.d_sae} k={args.k} windows={ids.shape[0]}x{ids.shape[1]} "
          f"counted_tokens={counted} batch={batch_size}",
          flush=True)

    def synchronized() -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    def forward() -> float:
        started = synchronized()
        for batch, _ in windows():
            capture(model, batch.to(args.device), point)
        return counted / (synchronized() - started)

    W_enc = torch.randn(d_in, spec.dictionary.d_sae, device=args.device) / d_in ** 0.5
    b_enc = torch.zeros(spec.dictionary.d_sae, device=args.device)

    def ceiling() -> float:
        """The forward plus only the TopK encoder product and selection (no backward, no optimiser): no
        TopK trainer can beat this rate, whatever it does with the rest of the step."""
        started = synchronized()
        for batch, _ in windows():
            acts = capture(model, batch.to(args.device), point)[site]
            fused_encode_topk(acts.reshape(-1, d_in).float(), W_enc, b_enc, args.k)
        return counted / (synchronized() - started)

    def train(prefetch: int | None, autocast: str = "none", screen: str = "auto") -> float:
        os.environ[SCREEN_VARIABLE] = screen  # "0": the fp32 encoder product without the bf16 screen
        started = synchronized()
        saekit.train(ActivationStream(model, windows(), [site]), [spec], total_tokens=budget,
                     batch_size=batch_size, progress=False, prefetch=prefetch, device=args.device,
                     autocast=autocast)
        os.environ[SCREEN_VARIABLE] = "auto"
        return budget / (synchronized() - started)

    rates: dict[str, list[float]] = {"forward": [], "ceiling": [], "saekit": [], "saekit-p0": [], "saekit-bf16": [],
                                     "saekit-no-screen": [], "sparsify": []}
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "ids.npy", ids.astype(np.int64))
        peer = [str(args.peer_python), str(ROOT / "benchmarks" / "peer_live.py"), "--model",
                str(model_dir), "--device", args.device, "--dtype", args.dtype, "--batch", str(args.windows),
                "--ids", str(Path(folder) / "ids.npy"), "--layer", str(args.layer),
                "--latents", str(spec.dictionary.d_sae), "--k", str(args.k), "--threads", str(args.threads),
                "--exclude", *map(str, sorted(tokenizer.all_special_ids))]
        for round_ in range(args.rounds):
            rates["forward"].append(forward())
            rates["ceiling"].append(ceiling())
            rates["saekit"].append(train(prefetch=2))
            rates["saekit-p0"].append(train(prefetch=0))
            rates["saekit-bf16"].append(train(prefetch=None, autocast="bfloat16"))
            rates["saekit-no-screen"].append(train(prefetch=None, screen="0"))
            if not args.no_peer and args.peer_python.exists():
                done = subprocess.run(peer, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"sparsify failed: {done.stderr.strip().splitlines()[-1:]}")
                rates["sparsify"].append(json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_s"])
            line = "  ".join(f"{name} {values[-1]:,.0f}" for name, values in rates.items() if values)
            print(f"round {round_ + 1}: tokens/s  {line}", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items() if values}
    print("median tokens/s: " + "  ".join(f"{name} {value:,.0f}" for name, value in medians.items()))
    print(f"forward + encoder product and top-k only / forward alone: {medians['ceiling'] / medians['forward']:.3f}")
    print(f"saekit / forward alone: {medians['saekit'] / medians['forward']:.3f} (prefetch 2), "
          f"{medians['saekit-p0'] / medians['forward']:.3f} (prefetch 0), "
          f"{medians['saekit-bf16'] / medians['forward']:.3f} (bf16 step), "
          f"{medians['saekit-no-screen'] / medians['forward']:.3f} (no bf16 screen)")
    if "sparsify" in medians:
        print(f"saekit / sparsify: x{medians['saekit'] / medians['sparsify']:.2f} (prefetch 2), "
              f"x{medians['saekit-p0'] / medians['sparsify']:.2f} (prefetch 0), "
              f"x{medians['saekit-bf16'] / medians['sparsify']:.2f} (bf16 step)")
    print(f"{machine(args.threads)} (at the end)")


if __name__ == "__main__":
    main()

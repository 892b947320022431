"""Fine-tune a copy of a causal LM on different text, to give crosscoders a real model pair offline.

The offline machines have no base/chat pair of one family (see OFFLINE.md), so `saekit diff` is shown on
SmolLM2-135M-Instruct and a copy fine-tuned here on the King James Bible (Debian's `bible-kjv`): the
copy should grow latents for archaic scripture that the original lacks. Only the MLPs of the first
`--layers` blocks train (cheap on CPU, and the hookpoint of the diff, e.g. resid_post.6, sees them).

    .venv/bin/python scripts/finetune_copy.py --out .cache/smollm2-kjv --steps 150
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import torch


def bible_text() -> str:
    if shutil.which("bible") is None:
        raise SystemExit("needs Debian's bible-kjv: apt-get install -y bible-kjv bible-kjv-text")
    return subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                          check=True).stdout


def main() -> None:
    from saekit.data.model_loading import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline-default")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--layers", type=int, default=7, help="Train the MLPs of blocks 0..layers-1.")
    parser.add_argument("--lr", type=float, default=3e-4)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    ids = torch.tensor(tokenizer(bible_text())["input_ids"])
    windows = ids[: len(ids) // args.context * args.context].reshape(-1, args.context)
    order = torch.randperm(len(windows))
    model.requires_grad_(False)
    trained = [p for i in range(args.layers) for p in model.model.layers[i].mlp.parameters()]
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    model.train()
    started = time.perf_counter()
    for step in range(args.steps):
        batch = windows[order[(step * args.batch) % len(order):][: args.batch]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

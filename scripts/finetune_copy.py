"""Fine-tune a copy of a causal LM on the King James Bible, to give crosscoders a real model pair offline.

The offline machines have no base/chat pair of one family (see OFFLINE.md), so `saekit diff` is shown on
SmolLM2-135M-Instruct and a copy fine-tuned here on the KJV (Debian's `bible-kjv`, saekit's named text
`kjv`): the copy should grow directions for archaic scripture that the original lacks. Only the MLPs of
the first `--layers` blocks train (cheap on CPU, and the hookpoint of the diff, e.g. resid_post.6, sees
them); every other weight stays bit-identical (saved in float32). Training reads only the text's train
split, so the held-out chapters that `saekit diff --dataset kjv` reports on were never trained on.

    .venv/bin/python scripts/finetune_copy.py            # -> ~/.cache/saekit/models/smollm2-kjv
    saekit diff --models base=offline-default kjv=~/.cache/saekit/models/smollm2-kjv \\
        --dataset kjv --hookpoint resid_post.6 --out runs/diff-kjv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """Mean next-token cross-entropy over the held-out windows."""
    losses = [float(model(input_ids=windows[i:i + 8], labels=windows[i:i + 8]).loss)
              for i in range(0, len(windows), 8)]
    return sum(losses) / len(losses)


def token_windows(tokenizer: object, split: str, context: int) -> torch.Tensor:
    from saekit.data.tokens import documents

    ids: list[int] = []
    for text in documents("kjv", split):
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
        ids.append(tokenizer.eos_token_id)  # type: ignore[attr-defined]
    flat = torch.tensor(ids[: len(ids) // context * context])
    return flat.reshape(-1, context)


def main() -> None:
    from saekit.io import atomic_directory
    from saekit.models.loading import cache_root, load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="offline-default")
    parser.add_argument("--out", type=Path, default=cache_root() / "models" / "smollm2-kjv")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--layers", type=int, default=7, help="Train the MLPs of blocks 0..layers-1.")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-windows", type=int, default=64, help="Held-out windows for the losses.")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    windows = token_windows(tokenizer, "train", args.context)
    held_out = token_windows(tokenizer, "test", args.context)[: args.eval_windows]
    before = held_out_loss(model, held_out)
    print(f"held-out KJV loss before: {before:.3f} ({len(windows)} training windows)", flush=True)
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
    model.requires_grad_(False)
    after = held_out_loss(model, held_out)
    print(f"held-out KJV loss after: {after:.3f}", flush=True)
    record = {"base_model": args.model, "text": "kjv (train split)", "steps": args.steps, "batch": args.batch,
              "context": args.context, "trained": f"MLPs of blocks 0..{args.layers - 1}", "lr": args.lr,
              "held_out_loss_before": before, "held_out_loss_after": after,
              "seconds": round(time.perf_counter() - started)}
    with atomic_directory(args.out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

"""Carry the peers benchmark's activations to a machine that cannot download the model or hold the cache.

The activations of `benchmarks/peers.py` (all-MiniLM-L6-v2, resid_post.L over the Python 3.11 docs) are
1.6 GB for 1.1M tokens; a lent GPU machine receives at most 64 MiB and reaches no package index. What
travels instead is what makes them: the token windows saekit's cache read (uint16 ids + counted mask)
and the model cut down to what resid_post.L depends on (layers 0..L, and only the embedding rows those
windows use, re-indexed), stored in float16 (~25 MB). `unpack` runs that model there and writes
`train.npy` / `heldout.npy` exactly as `peers.py` exports them from a cache (same split, same shuffle).

    .venv/bin/python benchmarks/portable_activations.py pack --model DIR --out .gpu/minilm-l3
    python benchmarks/portable_activations.py unpack --bundle .gpu/minilm-l3 --out DIR --device cuda

`pack` checks the cut-down float16 model against the full model on the first batch of windows and
prints the relative error (the unpacked rows are this close to the cached ones, not bit-identical).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saekit.data.stream import capture
from saekit.models.sites import resolve_hookpoints

CONTEXT = 128


def layer_of(hookpoint: str) -> int:
    site, _, layer = hookpoint.partition(".")
    if site != "resid_post" or not layer.isdigit():
        raise SystemExit(f"only resid_post.L hookpoints can be packed, got {hookpoint!r}")
    return int(layer)


def activations(model: torch.nn.Module, hookpoint: str, ids: torch.Tensor, mask: torch.Tensor,
                batch: int = 256) -> torch.Tensor:
    """Counted rows of `hookpoint`, [n, d] float32 on the CPU, window batch by window batch."""
    points = resolve_hookpoints(model, [hookpoint])
    rows = []
    for start in range(0, ids.shape[0], batch):
        out = capture(model, ids[start:start + batch], points)[points[0].name]
        rows.append(out.float()[mask[start:start + batch].to(out.device)].cpu())
    return torch.cat(rows)


def pack(args: argparse.Namespace) -> None:
    from transformers import AutoModel

    from saekit.data.tokens import TokenStream
    from saekit.models.loading import load_model

    layer = layer_of(args.hookpoint)
    model, tokenizer = load_model(str(args.model), causal_lm=False)
    stream = TokenStream(tokenizer, args.dataset, context=CONTEXT, batch_size=64, seed=args.data_seed,
                         max_tokens=args.tokens)
    windows = list(stream)
    ids = torch.cat([w[0] for w in windows])
    mask = torch.cat([w[1] for w in windows])
    used = torch.unique(ids)
    if used.numel() > 65535:
        raise SystemExit("more distinct tokens than uint16 holds")
    remap = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
    remap[used] = torch.arange(used.numel())

    config = model.config.__class__.from_dict(model.config.to_dict())
    config.num_hidden_layers = layer + 1
    config.vocab_size = int(used.numel())
    small = AutoModel.from_config(config)
    state = {k: v for k, v in model.state_dict().items() if k in small.state_dict()}
    state["embeddings.word_embeddings.weight"] = model.embeddings.word_embeddings.weight[used]
    small.load_state_dict(state)
    small = small.half().eval()

    args.out.mkdir(parents=True, exist_ok=True)
    small.save_pretrained(args.out / "model", safe_serialization=True)
    np.savez_compressed(args.out / "windows.npz", ids=remap[ids].numpy().astype(np.uint16),
                        mask=mask.numpy())
    meta = {"hookpoint": args.hookpoint, "tokens": int(mask.sum()), "windows": int(ids.shape[0]),
            "source_model": str(args.model), "dataset": args.dataset, "data_seed": args.data_seed,
            "distinct_tokens": int(used.numel())}
    (args.out / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n")

    check = slice(0, 64)
    full = activations(model, args.hookpoint, ids[check], mask[check])
    cut = activations(small.float(), args.hookpoint, remap[ids[check]], mask[check])
    error = float((full - cut).norm() / full.norm())
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 2**20
    print(f"packed {meta['tokens']:,} tokens in {meta['windows']:,} windows, {meta['distinct_tokens']:,} "
          f"distinct ids, {size:.1f} MiB; float16 cut-down model vs full model on 64 windows: "
          f"relative error {error:.2e}")


def unpack(args: argparse.Namespace) -> None:
    from peers import save_split  # benchmarks/ is on sys.path when run as a script
    from transformers import AutoModel

    meta = json.loads((args.bundle / "bundle.json").read_text())
    model = AutoModel.from_pretrained(args.bundle / "model", dtype=torch.float32).to(args.device).eval()
    windows = np.load(args.bundle / "windows.npz")
    ids = torch.from_numpy(windows["ids"].astype(np.int64))
    mask = torch.from_numpy(windows["mask"])
    with torch.no_grad():
        rows = activations(model, meta["hookpoint"], ids, mask)
    save_split(rows, args.out, args.heldout)
    print(f"unpacked {rows.shape[0]:,} rows of {meta['hookpoint']} into {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--model", type=Path, required=True, help="the all-MiniLM-L6-v2 directory")
    p.add_argument("--hookpoint", default="resid_post.3")
    p.add_argument("--dataset", default="offline-default")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--tokens", type=int, default=1_100_000)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=pack)
    u = sub.add_parser("unpack")
    u.add_argument("--bundle", type=Path, required=True)
    u.add_argument("--out", type=Path, required=True)
    u.add_argument("--heldout", type=int, default=100_000)
    u.add_argument("--device", default="cpu")
    u.set_defaults(func=unpack)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()

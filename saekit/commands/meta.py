"""`saekit meta`: train a meta-SAE on a dictionary's decoder directions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

from saekit.errors import SaekitError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "meta", help="Meta-SAE: decompose a dictionary's latents into meta-latents.",
        description="Train a BatchTopK dictionary on the decoder directions of a trained dictionary "
                    "(Bussmann et al.), report the variance explained and how many meta-latents each "
                    "latent uses, and save which meta-latents compose each latent.")
    parser.add_argument("dictionary", type=Path, help="Directory of the trained dictionary.")
    parser.add_argument("--out", type=Path, required=True, help="Output directory.")
    parser.add_argument("--k", type=int, default=4, help="Meta-latents per latent (mean). Default 4.")
    parser.add_argument("--width", type=int, default=None,
                        help="Number of meta-latents (default: 2304/49152 of d_sae, as the reference).")
    parser.add_argument("--epochs", type=int, default=200, help="Passes over the decoder rows.")
    parser.add_argument("--batch-size", type=int, default=4096, help="Decoder rows per step.")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate.")
    parser.add_argument("--device", default="cpu", help="Where the meta-SAE trains: cpu, cuda or cuda:N.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import saekit
    from saekit.formats.detect import load_any
    from saekit.training.meta import train_meta_sae

    if args.k <= 0 or args.epochs <= 0 or args.batch_size <= 0:
        raise SaekitError("--k, --epochs and --batch-size must be positive")
    d = load_any(args.dictionary, device=args.device)
    if args.width is not None and not args.k <= args.width:
        raise SaekitError(f"--width {args.width} must be at least --k {args.k}")
    result = train_meta_sae(d, d_meta=args.width, k=args.k, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, progress=not args.no_progress,
                            device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    saekit.save(result.meta, args.out / "meta_sae")
    save_file({"indices": result.composition_indices.cpu().contiguous(),
               "values": result.composition_values.cpu().contiguous()},
              str(args.out / "composition.safetensors"))
    summary = {"dictionary": str(args.dictionary), "d_sae": d.d_sae, "meta_latents": result.meta.d_sae,
               "k": args.k, "explained_variance": result.explained_variance, "fvu": result.fvu,
               "mean_meta_latents_per_latent": result.mean_meta_latents_per_latent}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0

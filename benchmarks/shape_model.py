"""A model with a real model's shape and random weights, for machines its weights cannot reach.

The lent GPU machine reaches no model hub and takes at most 64 MiB of files, so SmolLM2-135M's 514 MB of
weights cannot travel; its config.json and tokenizer can. Timing a live run needs the real shape (30
layers of width 576), not the real weights, so the weights are drawn at random (seeded) from the config.
Quality figures are not measured on such a model.

    python benchmarks/shape_model.py pack MODEL_DIR --out .gpu/smollm2-shape   # here: config + tokenizer
    python benchmarks/shape_model.py build .gpu/smollm2-shape --out /tmp/smollm2-random   # there
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

SHAPE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "generation_config.json")


def pack(model_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in SHAPE_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    if not (out / "config.json").is_file():
        raise SystemExit(f"{model_dir} has no config.json: give a Hugging Face model directory")


def build(shape_dir: Path, out: Path, seed: int = 0) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(shape_dir)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(shape_dir).save_pretrained(out)
    print(f"random {config.model_type} model, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
          f"parameters, saved to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "build"])
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.action == "pack":
        pack(args.source, args.out)
    else:
        build(args.source, args.out, args.seed)


if __name__ == "__main__":
    main()

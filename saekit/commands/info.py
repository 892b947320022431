"""`saekit info`: what a saved dictionary is (method, shape, recorded facts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="Describe a saved dictionary.",
                                   description="Load a dictionary directory (verifying checksums) "
                                               "and print its config and recorded facts as JSON.")
    parser.add_argument("path", type=Path, help="Dictionary directory.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import saekit

    d = saekit.load(args.path)
    summary = {"path": str(args.path), "dictionary": d.cfg.to_dict(), "provenance": d.provenance.to_dict(),
               "training": d.training_config.to_dict() if d.training_config is not None else None,
               "meta": d.meta, "weights": {k: list(v.shape) for k, v in d.weights().items()}}
    print(json.dumps(summary, indent=2))
    return 0

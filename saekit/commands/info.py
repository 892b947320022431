"""`saekit info`: what a saved dictionary is (method, shape, recorded facts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="Describe a saved dictionary.",
                                   description="Load a dictionary directory (verifying checksums) "
                                               "and print its config and recorded facts as JSON; "
                                               "transcoder sets and CLTs too.")
    parser.add_argument("path", type=Path, help="Dictionary directory.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import saekit
    from saekit.circuits import CrossLayerTranscoder
    from saekit.circuits.transcoder_set import TranscoderSet

    d = saekit.load(args.path)
    if isinstance(d, TranscoderSet):
        print(json.dumps({"path": str(args.path), "kind": "transcoder_set", "name": d.name, "layers": d.layers,
                          "model_name": d.model_name, "meta": d.meta,
                          "members": [{"layer": layer, "dictionary": t.cfg.to_dict(),
                                       "provenance": t.provenance.to_dict()} for layer, t in zip(d.layers, d)]},
                         indent=2))
        return 0
    if isinstance(d, CrossLayerTranscoder):
        decoder_bytes = sum(w.numel() * w.element_size() for w in d.W_dec)
        print(json.dumps({"path": str(args.path), "kind": "cross_layer_transcoder", "dictionary": d.cfg.to_dict(),
                          "provenance": d.provenance.to_dict(),
                          "training": d.training_config.to_dict() if d.training_config is not None else None,
                          "meta": d.meta, "decoder_pairs": d.cfg.decoder_pairs, "decoder_bytes": decoder_bytes},
                         indent=2))
        return 0
    summary = {"path": str(args.path), "dictionary": d.cfg.to_dict(), "provenance": d.provenance.to_dict(),
               "training": d.training_config.to_dict() if d.training_config is not None else None,
               "meta": d.meta, "weights": {k: list(v.shape) for k, v in d.weights().items()}}
    print(json.dumps(summary, indent=2))
    return 0

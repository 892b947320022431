"""`saekit intervene`: set transcoder features to values in the real model and see the next-token logits
move; with `--graph`, check a saved attribution graph (predicted vs measured logit change of its top
features)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from saekit.commands.attribute import model_flags, open_model
from saekit.errors import SaekitError

FEATURE = re.compile(r"^(\d+):(\d+):(\d+)(?:=(-?[0-9.eE+-]+))?$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "intervene", help="Ablate or set transcoder features in the model; check an attribution graph.",
        description="With --prompt and --feature LAYER:POS:FEATURE[=VALUE] (repeatable; no value = ablate): "
                    "moves each feature to its value by adding (value − current)·decoder at its output site(s) "
                    "(attention patterns frozen unless --no-freeze-attention) and prints the top next-token "
                    "logits before and after. With --graph: for the graph's --top most influential features, "
                    "scales each by --scale (0 = ablate) and prints the change of the top logit predicted by "
                    "the graph and measured in the model, and their correlation.")
    model_flags(parser)
    parser.add_argument("--prompt", default=None, help="Prompt to intervene on.")
    parser.add_argument("--feature", action="append", default=[], metavar="L:POS:F[=V]",
                        help="Feature at layer L, token position POS (0 = the BOS put first), latent F, set to V "
                             "(default 0: ablated). Repeatable.")
    parser.add_argument("--graph", type=Path, default=None, help="A graph folder (saekit attribute) to check.")
    parser.add_argument("--top", type=int, default=10, help="--graph: features to check.")
    parser.add_argument("--scale", type=float, default=0.0, help="--graph: multiply each feature by this.")
    parser.add_argument("--no-freeze-attention", action="store_true",
                        help="Let attention patterns change too (default: frozen at their clean values).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the result as JSON.")
    parser.set_defaults(func=run)


def _parse(features: list[str]) -> list[tuple[int, int, int, float]]:
    parsed = []
    for text in features:
        match = FEATURE.match(text.strip())
        if not match:
            raise SaekitError(f"--feature {text!r}: write LAYER:POS:FEATURE or LAYER:POS:FEATURE=VALUE, e.g. 3:5:120=0")
        layer, pos, feature, value = match.groups()
        parsed.append((int(layer), int(pos), int(feature), float(value) if value else 0.0))
    return parsed


def run(args: argparse.Namespace) -> int:
    import torch

    from saekit.circuits.graph import AttributionGraph
    from saekit.circuits.interventions import check_graph, intervene

    if (args.graph is None) == (args.prompt is None):
        raise SaekitError("pass --prompt with --feature (an intervention), or --graph (check a graph)")
    freeze = not args.no_freeze_attention
    result: dict[str, Any]
    if args.graph is not None:
        graph = AttributionGraph.load(args.graph)
        transcoders, model, tokenizer = open_model(args)
        rows = check_graph(model, tokenizer, transcoders, graph, top=args.top, scale=args.scale,
                           freeze_attention=freeze)
        for row in rows:
            print(json.dumps(row))
        predicted = torch.tensor([r["predicted"] for r in rows])
        measured = torch.tensor([r["measured"] for r in rows])
        corr = float(torch.corrcoef(torch.stack([predicted, measured]))[0, 1]) if len(rows) > 1 else float("nan")
        result = {"graph": str(args.graph), "features": rows, "correlation": corr}
        print(json.dumps({"correlation": corr, "features": len(rows)}))
    else:
        if not args.feature:
            raise SaekitError("pass at least one --feature LAYER:POS:FEATURE[=VALUE]")
        interventions = _parse(args.feature)
        transcoders, model, tokenizer = open_model(args)
        out = intervene(model, tokenizer, transcoders, args.prompt, interventions, freeze_attention=freeze)
        clean, new = torch.softmax(out["clean_logits"][-1], -1), torch.softmax(out["logits"][-1], -1)
        top = torch.topk(clean, 5).indices.tolist()
        top_new = torch.topk(new, 5).indices.tolist()
        tokens = tokenizer.convert_ids_to_tokens(sorted(set(top + top_new)))
        ids = sorted(set(top + top_new))
        result = {"prompt": args.prompt, "interventions": interventions,
                  "activations_before": out["activations_before"].tolist(),
                  "logits": [{"token": t, "clean_prob": float(clean[i]), "new_prob": float(new[i]),
                              "logit_change": float(out["logits"][-1, i] - out["clean_logits"][-1, i])}
                             for t, i in zip(tokens, ids)]}
        for row in result["logits"]:
            print(json.dumps(row, ensure_ascii=False))
    if args.out is not None:
        from saekit.io import atomic_write_json

        atomic_write_json(args.out, result)
    return 0

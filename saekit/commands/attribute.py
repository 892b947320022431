"""`saekit attribute` (attribution graphs of prompts through a transcoder set or CLT) and `saekit graph-view`
(re-draw a saved graph's page, optionally with a supernode grouping)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from saekit.commands.common import read_prompts
from saekit.errors import SaekitError


def model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transcoders", type=Path, required=True,
                        help="Transcoder set or cross-layer transcoder folder (saekit's or circuit-tracer's layout), "
                             "with a transcoder at every layer.")
    parser.add_argument("--model", default=None,
                        help="Model (default: the one the transcoders record; `offline-default` is "
                             "SmolLM2-135M-Instruct).")
    parser.add_argument("--device", default="cpu", help="Device for the model and transcoders.")
    parser.add_argument("--model-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="Allow model repositories to run their own code (off unless asked).")


def open_model(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(transcoders, model, tokenizer) from the command's flags."""
    from saekit.circuits import CrossLayerTranscoder
    from saekit.circuits.replacement import model_name_of
    from saekit.circuits.transcoder_set import TranscoderSet
    from saekit.commands.sources import warn_other_model
    from saekit.data.config import ModelConfig
    from saekit.formats.detect import load

    transcoders = load(args.transcoders, device=args.device)
    if not isinstance(transcoders, (TranscoderSet, CrossLayerTranscoder)):
        raise SaekitError(f"{args.transcoders} is a single dictionary: attribution graphs need a transcoder set or a "
                          "cross-layer transcoder (saekit train --transcoders / --clt)")
    name = args.model or model_name_of(transcoders)
    if not name:
        raise SaekitError("the transcoders do not record their model: pass --model")
    warn_other_model(transcoders, name)
    model, tokenizer = ModelConfig(name, args.model_dtype, args.trust_remote_code).load(args.device)
    return transcoders.eval(), model, tokenizer


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attribute", help="Attribution graph of a prompt through a transcoder set or CLT (circuit-tracer's method).",
        description="Builds the local replacement model of each prompt (attention patterns and norm scales "
                    "frozen, transcoders at every MLP, error nodes), computes the direct effect of every active "
                    "feature, error and token on every feature and on the top next-token logits, and writes "
                    "graph.safetensors + graph.json + index.html (a viewer of the pruned graph) per prompt. "
                    "Prints the replacement and completeness scores.")
    model_flags(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="The prompt (a BOS token is put first unless it starts with a special one).")
    source.add_argument("--prompts", type=Path, help="A file with one prompt per line: one graph folder each.")
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    parser.add_argument("--max-n-logits", type=int, default=10, help="At most this many logit targets.")
    parser.add_argument("--desired-logit-prob", type=float, default=0.95,
                        help="Keep top logits until their cumulative probability reaches this.")
    parser.add_argument("--batch-size", type=int, default=64, help="Targets per backward pass.")
    parser.add_argument("--max-feature-nodes", type=int, default=None,
                        help="Feature budget: keep the most influential features only (default: all).")
    parser.add_argument("--node-threshold", type=float, default=0.8, help="Pruning for the viewer: node influence.")
    parser.add_argument("--edge-threshold", type=float, default=0.98, help="Pruning for the viewer: edge influence.")
    parser.add_argument("--dashboards", default=None,
                        help="Layer dashboards of these transcoders (folder or URL) to link features to.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an output folder saekit wrote before.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    parser.set_defaults(func=run_attribute)

    view = subparsers.add_parser("graph-view", help="Re-draw an attribution graph's page (index.html).",
                                 description="Writes GRAPH/index.html from graph.json + graph.safetensors; with "
                                             "--supernodes, first stores that grouping (the viewer's "
                                             "supernodes.json) in the graph.")
    view.add_argument("graph", type=Path, help="Graph folder (saekit attribute's output).")
    view.add_argument("--supernodes", type=Path, default=None, help="supernodes.json saved from the viewer.")
    view.add_argument("--node-threshold", type=float, default=0.8)
    view.add_argument("--edge-threshold", type=float, default=0.98)
    view.add_argument("--dashboards", default=None, help="Layer dashboards (folder or URL) to link features to.")
    view.set_defaults(func=run_view)


def run_attribute(args: argparse.Namespace) -> int:
    from saekit.circuits.attribution import attribute
    from saekit.inspect.graph_viewer import render_graph_page
    from saekit.io import output_directory

    if not 0 < args.desired_logit_prob <= 1 or args.max_n_logits < 1:
        raise SaekitError("--desired-logit-prob must be in (0, 1] and --max-n-logits at least 1")
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    out = output_directory(args.out, args.overwrite)
    transcoders, model, tokenizer = open_model(args)
    summary = []
    for i, prompt in enumerate(prompts):
        folder = out if args.prompt is not None else out / f"graph_{i:03d}"
        graph = attribute(model, tokenizer, transcoders, prompt, max_n_logits=args.max_n_logits,
                          desired_logit_prob=args.desired_logit_prob, batch_size=args.batch_size,
                          max_feature_nodes=args.max_feature_nodes, progress=not args.no_progress)
        graph.meta["model"] = args.model or graph.meta.get("model")
        graph.save(folder)
        render_graph_page(graph, folder / "index.html", args.node_threshold, args.edge_threshold, args.dashboards)
        row = {"prompt": prompt, "folder": str(folder), **graph.scores(), "features": graph.n_features,
               "nodes": graph.n_nodes, "top_logit": graph.logit_strings[0], "seconds": round(graph.meta["seconds"], 3)}
        summary.append(row)
        print(json.dumps(row, ensure_ascii=False))
    if args.prompts is not None:
        from saekit.io import atomic_write_json

        atomic_write_json(out / "scores.json", summary)
    return 0


def run_view(args: argparse.Namespace) -> int:
    from saekit.circuits.graph import AttributionGraph
    from saekit.inspect.graph_viewer import render_graph_page
    from saekit.io import read_json_file

    graph = AttributionGraph.load(args.graph)
    if args.supernodes is not None:
        groups = read_json_file(args.supernodes, "supernodes file")
        if not isinstance(groups, list) or not all(
                isinstance(g, dict) and isinstance(g.get("name"), str) and isinstance(g.get("nodes"), list)
                and all(isinstance(n, int) and 0 <= n < graph.n_nodes for n in g["nodes"]) for g in groups):
            raise SaekitError(f"{args.supernodes}: expected a list of {{\"name\": str, \"nodes\": [node ids]}} "
                              f"with ids below {graph.n_nodes} (the viewer's supernodes.json)")
        graph.supernodes = groups
        graph.save(args.graph)
    page = render_graph_page(graph, args.graph / "index.html", args.node_threshold, args.edge_threshold,
                             args.dashboards)
    print(page)
    return 0

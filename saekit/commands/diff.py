"""`saekit diff`: model diffing with a crosscoder over two models' activations at one hookpoint.

Both models run on the same tokens; one dictionary reads their concatenated activations and keeps a
decoder block per model (METHODS.md §6). The report classifies latents by relative decoder norm
(saekit.inspect.diffing) and shows, for the most model-specific latents, the held-out contexts where
they fire hardest, so a researcher can see what one model represents and the other does not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from saekit.commands.sources import add_model_arguments, token_stream
from saekit.errors import SaekitError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff", help="Model diffing: train a crosscoder on two models and report model-specific latents.",
        description="Train (or load with --crosscoder) a crosscoder over two models at one hookpoint, "
                    "then write report.html / report.json: relative decoder norm histogram, counts of "
                    "shared / first-only / second-only latents, cosines of shared latents' decoder "
                    "blocks, and top held-out contexts of the most model-specific latents.")
    parser.add_argument("--models", nargs=2, required=True, metavar="LABEL=MODEL",
                        help="The two models, e.g. base=HuggingFaceTB/SmolLM2-135M chat=./my-chat-model.")
    parser.add_argument("--hookpoint", required=True, help="Hookpoint read in both models (e.g. resid_post.6).")
    parser.add_argument("--crosscoder", type=Path, default=None,
                        help="Report on this trained crosscoder instead of training one.")
    parser.add_argument("--method", default="batchtopk", choices=("batchtopk", "relu"),
                        help="BatchTopK crosscoder, or the L1 variant (relu) with summed decoder norms.")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sparsity-coefficient", type=float, default=None, help="λ for --method relu.")
    parser.add_argument("--expansion", type=int, default=4, help="d_sae / d_model.")
    parser.add_argument("--tokens", type=int, default=100_000, help="Training tokens.")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--eval-tokens", type=int, default=8_192, help="Held-out tokens for the report.")
    parser.add_argument("--top-latents", type=int, default=6, help="Model-specific latents shown per model.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-progress", action="store_true")
    add_model_arguments(parser, model=False, hookpoints=False)
    parser.set_defaults(func=run)


def _parse_models(pairs: list[str]) -> dict[str, str]:
    models = {}
    for pair in pairs:
        label, sep, model = pair.partition("=")
        if not sep or not label or not model or "/" in label:
            raise SaekitError(f"--models takes LABEL=MODEL (a label without '/'), got {pair!r}")
        models[label] = model
    if len(models) != 2:
        raise SaekitError("--models needs two different labels")
    return models


def _load_models(args: argparse.Namespace, names: dict[str, str]) -> tuple[dict[str, Any], Any]:
    from saekit.data.model_loading import load_model

    models, tokenizers = {}, {}
    for label, name in names.items():
        models[label], tokenizers[label] = load_model(name, dtype=args.model_dtype, device=args.device,
                                                      trust_remote_code=args.trust_remote_code)
    first, second = tokenizers.values()
    if first.get_vocab() != second.get_vocab():
        raise SaekitError("the two models have different tokenizers: a crosscoder needs both to read "
                          "the same tokens")
    return models, first


def top_contexts(latents: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor, tokenizer: Any,
                 latent: int, n: int = 5, window: int = 8) -> list[dict[str, Any]]:
    """The n strongest activations of one latent, each with the tokens around it (the peak marked)."""
    values = latents[:, latent]
    count = min(n, int((values > 0).sum()))
    contexts = []
    for row in values.topk(count).indices.tolist():
        seq, pos = positions[row].tolist()
        start = max(0, pos - window)
        tokens = [tokenizer.decode([t]) for t in ids[seq, start:pos + 2].tolist()]
        contexts.append({"activation": float(values[row]), "tokens": tokens, "peak": pos - start})
    return contexts


def run(args: argparse.Namespace) -> int:
    import saekit
    from saekit.config import DictionaryConfig
    from saekit.data.stream import ActivationStream

    names = _parse_models(args.models)
    labels = list(names)
    models, tokenizer = _load_models(args, names)
    args.out.mkdir(parents=True, exist_ok=True)
    sources = [f"{label}/{args.hookpoint}" for label in labels]
    if args.crosscoder is not None:
        crosscoder = saekit.load(args.crosscoder)
        if crosscoder.cfg.n_sources != 2:
            raise SaekitError(f"{args.crosscoder} is not a two-model crosscoder")
    else:
        stream = ActivationStream(models, token_stream(args, tokenizer, "train"), [args.hookpoint])
        widths = stream.widths()
        d_in = sum(widths[s] for s in sources)
        options: dict[str, Any] = {"lr": args.lr} if args.lr else {}
        if args.method == "batchtopk":
            options["k"] = args.k
        elif args.sparsity_coefficient is not None:
            options["sparsity_coefficient"] = args.sparsity_coefficient
        cfg = DictionaryConfig(method=args.method, d_in=d_in, d_sae=args.expansion * widths[sources[0]],
                               source_hookpoints=sources, name="crosscoder",
                               model_name=",".join(f"{k}={v}" for k, v in names.items()), **options)
        crosscoder = saekit.train(stream, [cfg], total_tokens=args.tokens, batch_size=args.batch_size,
                                  log_file=str(args.out / "log.jsonl"), progress=not args.no_progress)[0]
        saekit.save(crosscoder, args.out / "crosscoder")
    report = diff_report(crosscoder, models, tokenizer, args, labels)
    write_diff_report(args.out, report)
    counts = report["summary"]["counts"]
    print(f"latents: shared {counts['shared']}, {labels[0]}-only {counts['first_only']}, "
          f"{labels[1]}-only {counts['second_only']}, other {counts['other']}, dead {report['dead']}; "
          f"shared decoder cosine median {report['summary']['shared_cosine_median']}")
    print(f"report: {args.out / 'report.html'}")
    return 0


@torch.no_grad()
def diff_report(crosscoder: Any, models: dict[str, Any], tokenizer: Any, args: argparse.Namespace,
                labels: list[str]) -> dict[str, Any]:
    from saekit.data.stream import ActivationStream
    from saekit.inspect.diffing import diffing_summary, relative_decoder_norms

    sources = [f"{label}/{args.hookpoint}" for label in labels]
    batches = list(token_stream(args, tokenizer, "test", max_tokens=args.eval_tokens))
    ids = torch.cat([b[0] for b in batches])
    masks = torch.cat([b[1] for b in batches]).bool()
    positions = masks.nonzero()
    stream = ActivationStream(models, batches, [args.hookpoint])  # type: ignore[arg-type]
    latents = torch.cat([crosscoder.encode(torch.cat([batch[s] for s in sources], dim=-1))
                         for batch in stream])
    alive = (latents > 0).any(0)
    summary = diffing_summary(crosscoder, alive)
    r = relative_decoder_norms(crosscoder)
    frequency = (latents > 0).float().mean(0)
    specific: dict[str, list[dict[str, Any]]] = {}
    for label, mask in ((labels[0], (r < 0.1) & alive), (labels[1], (r > 0.9) & alive)):
        chosen = torch.nonzero(mask).flatten()
        chosen = chosen[frequency[chosen].argsort(descending=True)][: args.top_latents]
        specific[label] = [{"latent": int(i), "relative_norm": float(r[i]), "frequency": float(frequency[i]),
                            "contexts": top_contexts(latents, ids, positions, tokenizer, int(i))}
                           for i in chosen]
    return {"models": {label: str(v) for label, v in zip(labels, args.models)}, "labels": labels,
            "hookpoint": args.hookpoint, "eval_tokens": int(masks.sum()), "dead": int((~alive).sum()),
            "summary": summary, "relative_norms": r[alive].tolist(), "model_specific": specific}


def write_diff_report(out: Path, report: dict[str, Any]) -> None:
    """report.json, a relative-norm histogram (PNG) and report.html; every token string is escaped."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, second = report["labels"]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(report["relative_norms"], bins=40, range=(0, 1), color="#4a72b0")
    axis.set_xlabel(f"relative decoder norm  ({first}-only 0 … 1 {second}-only)")
    axis.set_ylabel("live latents")
    figure.tight_layout()
    figure.savefig(out / "relative_norms.png", dpi=110)
    plt.close(figure)
    (out / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "relative_norms"},
                                                indent=2) + "\n")

    def context_html(context: dict[str, Any]) -> str:
        cells = [f"<b style='background:#fd8'>{html.escape(t)}</b>" if i == context["peak"] else html.escape(t)
                 for i, t in enumerate(context["tokens"])]
        return f"<li>{context['activation']:.3g}: <code>{''.join(cells)}</code></li>"

    parts = [f"<h1>Model diff at {html.escape(report['hookpoint'])}</h1>",
             "<p>" + html.escape(", ".join(f"{k} = {v}" for k, v in report["models"].items())) + "</p>",
             f"<p>{report['eval_tokens']} held-out tokens; dead latents: {report['dead']}</p>",
             "<pre>" + html.escape(json.dumps(report["summary"], indent=1)) + "</pre>",
             "<img src='relative_norms.png' alt='relative decoder norms'>"]
    for label, latents in report["model_specific"].items():
        parts.append(f"<h2>Most frequent {html.escape(label)}-only latents</h2>")
        for item in latents:
            parts.append(f"<h3>latent {item['latent']} (r = {item['relative_norm']:.3f}, "
                         f"density {item['frequency']:.2e})</h3><ul>"
                         + "".join(context_html(c) for c in item["contexts"]) + "</ul>")
    (out / "report.html").write_text("<!doctype html><meta charset='utf-8'><title>saekit diff</title>"
                                     "<style>body{font-family:sans-serif;margin:2em}code{white-space:pre-wrap}"
                                     "</style>" + "\n".join(parts) + "\n")

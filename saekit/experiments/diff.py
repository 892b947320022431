"""Model diffing, end to end: train a crosscoder over two models at one hookpoint and report which
latents belong to which model, with their held-out contexts (`saekit diff`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from saekit.data.config import TextConfig
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.inspect.diffing import diffing_summary, relative_decoder_norms
from saekit.spec import DictionarySpec


def load_pair(model_names: dict[str, str], model_dtype: str = "float32", device: str = "cpu",
              trust_remote_code: bool = False) -> tuple[dict[str, Any], Any]:
    """Both models, and their (shared) tokenizer; different vocabularies are refused."""
    from saekit.data.config import ModelConfig

    models, tokenizers = {}, {}
    for label, name in model_names.items():
        models[label], tokenizers[label] = ModelConfig(name, model_dtype, trust_remote_code).load(device)
    first, second = tokenizers.values()
    if first.get_vocab() != second.get_vocab():
        raise SaekitError("the two models have different tokenizers: a crosscoder needs both to read "
                          "the same tokens")
    return models, first


def train_crosscoder(models: dict[str, Any], tokenizer: Any, text: TextConfig, hookpoint: str,
                     model_names: dict[str, str], options: dict[str, Any], expansion: int = 4,
                     tokens: int = 100_000, batch_size: int = 1024, out: Path | None = None,
                     device: str = "cpu", progress: bool = True) -> Dictionary:
    """A crosscoder reading both models' activations at `hookpoint` (one decoder block per model),
    trained on `tokens` tokens of `text`; `options` are its dictionary options (method, k, lr, ...)."""
    import saekit
    from saekit.data.stream import ActivationStream

    sources = [f"{label}/{hookpoint}" for label in model_names]
    stream = ActivationStream(models, text.token_stream(tokenizer, "train"), [hookpoint])
    widths = stream.widths()
    spec = DictionarySpec.from_options(
        d_in=sum(widths[s] for s in sources), d_sae=expansion * widths[sources[0]], source_hookpoints=sources,
        name="crosscoder", model_name=",".join(f"{k}={v}" for k, v in model_names.items()),
        dataset=text.dataset, context_size=text.context_size, **options)
    log_file = str(out / "log.jsonl") if out is not None else None
    return saekit.train(stream, [spec], total_tokens=tokens, batch_size=batch_size, device=device,
                        log_file=log_file, progress=progress)[0]


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


@torch.no_grad()
def diff_report(crosscoder: Dictionary, models: dict[str, Any], tokenizer: Any, text: TextConfig,
                hookpoint: str, model_names: dict[str, str], eval_tokens: int = 8_192,
                top_latents: int = 6) -> dict[str, Any]:
    """Relative decoder norms, counts, shared cosines and the top held-out contexts of the most
    model-specific latents, on `eval_tokens` tokens of `text`'s test split."""
    from saekit.data.stream import ActivationStream

    labels = list(model_names)
    sources = [f"{label}/{hookpoint}" for label in labels]
    batches = list(text.token_stream(tokenizer, "test", max_tokens=eval_tokens))
    ids = torch.cat([b[0] for b in batches])
    masks = torch.cat([b[1] for b in batches]).bool()
    positions = masks.nonzero()
    stream = ActivationStream(models, batches, [hookpoint])  # type: ignore[arg-type]
    latents = torch.cat([crosscoder.encode(torch.cat([batch[s] for s in sources], dim=-1))
                         for batch in stream])
    alive = (latents > 0).any(0)
    summary = diffing_summary(crosscoder, alive)
    r = relative_decoder_norms(crosscoder)
    frequency = (latents > 0).float().mean(0)
    specific: dict[str, list[dict[str, Any]]] = {}
    for label, mask in ((labels[0], (r < 0.1) & alive), (labels[1], (r > 0.9) & alive)):
        chosen = torch.nonzero(mask).flatten()
        chosen = chosen[frequency[chosen].argsort(descending=True)][:top_latents]
        specific[label] = [{"latent": int(i), "relative_norm": float(r[i]), "frequency": float(frequency[i]),
                            "contexts": top_contexts(latents, ids, positions, tokenizer, int(i))}
                           for i in chosen]
    return {"models": dict(model_names), "labels": labels, "hookpoint": hookpoint,
            "eval_tokens": int(masks.sum()), "dead": int((~alive).sum()),
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

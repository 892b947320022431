"""The model-diffing report page (`saekit diff`): one static HTML file, readable offline.

Sections: the two models (label, model, held-out loss, reconstruction FVU); the crosscoder; latent counts
per class with their thresholds and how many model-specific latents latent scaling confirms; the
relative-decoder-norm histogram and the shared latents' decoder-cosine histogram (matplotlib, inline
SVG); where the models' next-token losses differ and which latents fire there; and a card per top
model-specific latent: its norms, cosine, latent-scaling β and ν, and its strongest held-out contexts with
what each model predicts next there. Every string from a tokenizer, a text or a model name goes through
`esc`; the page has no script.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from saekit.inspect.diffing import (
    FIRST_ONLY,
    MIN_SCALING_COUNT,
    NU_ERROR_MAX,
    NU_RECONSTRUCTION_MAX,
    SECOND_ONLY,
    SHARED_HIGH,
    SHARED_LOW,
)
from saekit.inspect.html import context_html, esc, fmt, page, show_token
from saekit.io import atomic_write_bytes

CSS = """
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:.8em 0}
.card h3{margin:.2em 0 .4em;font-size:1em}
.badge{display:inline-block;padding:0 .45em;border-radius:3px;font-size:.85em}
.yes{background:#d9f2de;color:#0a6b2b} .no{background:#f6dcdc;color:#a4161a}
.pred{font-size:.85em;color:#444;margin:0 0 .5em 4.5em}
.plots{display:flex;flex-wrap:wrap;gap:1.5em} .plots svg{max-width:100%;height:auto}
td.num,th.num{text-align:right}
"""


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return esc(fmt(float(value), digits))


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """A table from already-escaped cells; columns from `numeric_from` on are right-aligned."""
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{h}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _histogram_svg(values: list[float], bins: int, value_range: tuple[float, float], xlabel: str,
                   title: str, marker: float | None = None, thresholds: tuple[float, ...] = ()) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.4, 3.1))
    ax.hist(values, bins=bins, range=value_range, color="#4a72b0")
    for x in thresholds:
        ax.axvline(x, color="#888", linewidth=.8, linestyle="--")
    if marker is not None:
        ax.axvline(marker, color="#c04000", linewidth=1.2, label=f"median {marker:.3f}")
        ax.legend(fontsize=8)
    ax.set_yscale("log" if values and len(values) > 50 else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latents")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=.3)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _badge(ok: bool, yes: str = "survives", no: str = "does not survive") -> str:
    return f'<span class="badge {"yes" if ok else "no"}">{esc(yes if ok else no)}</span>'


def _latent_card(item: dict[str, Any], labels: list[str], own: int | None) -> str:
    """A latent's card: decoder norms, its latent-scaling verdict when it was probed (`own` = the model it
    is said to belong to; None for a shared latent, shown without β), and its strongest contexts."""
    first, second = labels
    rows = [["decoder norm", _num(item["decoder_norms"][0]), _num(item["decoder_norms"][1])]]
    head = (f"<h3 id=\"latent-{item['latent']}\">latent {item['latent']} · r = {_num(item['relative_norm'])} · "
            f"density {_num(item['frequency'])} · cos(d<sub>{esc(first)}</sub>, d<sub>{esc(second)}</sub>) = "
            f"{_num(item['decoder_cosine'])}</h3>")
    if own is not None:
        beta_e, beta_r = item["beta_error"], item["beta_reconstruction"]
        rows += [["β (error target)", _num(beta_e[0]), _num(beta_e[1])],
                 ["β (reconstruction target)", _num(beta_r[0]), _num(beta_r[1])]]
        few = item["count"] < MIN_SCALING_COUNT
        verdict = (_badge(False, no=f"too few firings ({item['count']})") if few else _badge(item["survives"]))
        head += (f"<p>latent scaling: ν<sub>ε</sub> = {_num(item['nu_error'])}, ν<sub>r</sub> = "
                 f"{_num(item['nu_reconstruction'])} (β of {esc(labels[1 - own])} over β of {esc(labels[own])}, "
                 f"probed with the {esc(labels[own])} decoder; {item['count']:,} firings) {verdict}</p>")
    facts = _table(["", esc(first), esc(second)], rows)
    contexts = []
    scale = max((c["activation"] for c in item["contexts"]), default=1.0)
    for c in item["contexts"]:
        contexts.append(context_html(c["tokens"], c["values"], c["peak"], scale, c["activation"]))
        if c["next_token"]:
            per_model = "; ".join(
                f"{esc(label)}: loss {_num(c['losses'][m])} nats, predicts "
                f'<span class="tok">{show_token(c["predictions"][m])}</span>'
                for m, label in enumerate(labels))
            contexts.append(f'<div class="pred">next token <span class="tok">{show_token(c["next_token"])}'
                            f"</span> — {per_model}</div>")
    return f'<div class="card">{head}{facts}{"".join(contexts)}</div>'


def render_diff_page(report: dict[str, Any]) -> str:
    labels = report["labels"]
    first, second = labels
    summary, counts = report["summary"], report["summary"]["counts"]
    losses = report["loss_difference"]
    title = f"Model diff: {first} vs {second} at {report['hookpoint']}"
    parts = [f"<h1>{esc(title)}</h1>"]
    parts.append(_table(["label", "model", "held-out next-token loss (nats)", "crosscoder FVU"],
                        [[esc(label), esc(report["models"][label]), _num(losses["mean_loss"][m]),
                          _num(report["fvu"][m])] for m, label in enumerate(labels)], numeric_from=2))
    training = report["crosscoder"].get("training") or {}
    parts.append("<h2>Crosscoder</h2>" + _table(
        ["setting", "value"],
        [[esc(k), esc(v)] for k, v in (
            ("method", report["crosscoder"]["method"]), ("k (mean active latents)", report["crosscoder"]["k"]),
            ("latents", report["d_sae"]), ("training tokens", report["crosscoder"]["training_tokens"]),
            ("learning rate", training.get("lr")), ("decoder init", training.get("crosscoder_init")),
            ("normalisation (per model)", training.get("normalize_activations")),
            ("held-out text", report["dataset"]), ("held-out tokens", report["eval_tokens"]),
            ("mean L0 on held-out tokens", fmt(report["l0"])))], numeric_from=2))

    scaling = report["latent_scaling"]
    rows = [
        [f"{esc(first)}-only", f"r &lt; {FIRST_ONLY}", _num(counts["first_only"]),
         _num(scaling["first_only"]["survive"])],
        [f"{esc(second)}-only", f"r &gt; {SECOND_ONLY}", _num(counts["second_only"]),
         _num(scaling["second_only"]["survive"])],
        ["shared", f"{SHARED_LOW} ≤ r ≤ {SHARED_HIGH}", _num(counts["shared"]), "–"],
        ["other", "in between", _num(counts["other"]), "–"],
        ["dead", "never fired on the held-out tokens", _num(report["dead"]), "–"]]
    parts.append("<h2>Latents by relative decoder norm</h2>"
                 f"<p>r = ‖d<sub>{esc(second)}</sub>‖ / (‖d<sub>{esc(first)}</sub>‖ + ‖d<sub>{esc(second)}</sub>‖)"
                 f" per latent. Latent scaling confirms a model-specific latent when |ν<sub>ε</sub>| &lt; "
                 f"{NU_ERROR_MAX}, |ν<sub>r</sub>| &lt; {NU_RECONSTRUCTION_MAX}, its own model's β<sub>ε</sub> "
                 f"&gt; 0 and it fired at least {MIN_SCALING_COUNT} times. Shared latents (random baseline "
                 f"sample): median ν<sub>ε</sub> = "
                 f"{_num(report['shared_baseline_nu']['nu_error'])}, ν<sub>r</sub> = "
                 f"{_num(report['shared_baseline_nu']['nu_reconstruction'])}.</p>"
                 + _table(["class", "rule", "latents", "confirmed by latent scaling"], rows, numeric_from=2))
    median = summary["shared_cosine_median"]
    parts.append('<div class="plots">'
                 + _histogram_svg(report["relative_norms"], 40, (0.0, 1.0),
                                  f"relative decoder norm ({first}-only 0 … 1 {second}-only)",
                                  "relative decoder norms of live latents (dashed: class thresholds)",
                                  thresholds=(FIRST_ONLY, SHARED_LOW, SHARED_HIGH, SECOND_ONLY))
                 + _histogram_svg(report["shared_cosines"], 40, (-1.0, 1.0),
                                  f"cos(d_{first}, d_{second})", "decoder cosine of shared latents",
                                  marker=median)
                 + "</div>")

    parts.append("<h2>Where the next-token losses differ (held-out)</h2>"
                 f"<p>Δ = loss({esc(first)}) − loss({esc(second)}) per token, over {losses['tokens']:,} "
                 f"held-out tokens: mean Δ = {_num(losses['mean_delta'])} nats (positive: {esc(second)} "
                 "predicts better).</p>")
    parts.append(_table(["tokens where any … latent fires", "share of tokens", "share of Σ|Δ|",
                         "mean Δ there"],
                        [[esc(name), _num(v["token_fraction"]), _num(v["share_of_abs_delta"]),
                          _num(v["mean_delta_when_firing"])]
                         for name, v in (
                             (f"{first}-only", losses["by_class"]["first_only"]),
                             (f"{second}-only", losses["by_class"]["second_only"]),
                             ("shared", losses["by_class"]["shared"]))]))
    shown = {item["latent"] for items in report["model_specific"].values() for item in items}
    shown |= {item["latent"] for item in report.get("rotated_shared", [])}
    parts.append("<h3>Latents whose activation tracks Δ most (|correlation|)</h3>" + _table(
        ["latent", "class", "correlation with Δ", "firings", "mean Δ when firing", "share of Σ|Δ|"],
        [[(f'<a href="#latent-{item["latent"]}">{item["latent"]}</a>' if item["latent"] in shown
           else str(item["latent"])), esc(item["class"].replace("first", first).replace("second", second)),
          _num(item["correlation"]), _num(item["fires"]), _num(item["mean_delta_when_firing"]),
          _num(item["share_of_abs_delta"])] for item in losses["latents"]]))
    parts.append("<h3>Next tokens whose loss changed most (summed over occurrences)</h3>" + _table(
        ["token", "occurrences", "total Δ", "mean Δ"],
        [[f'<span class="tok">{show_token(t["token"])}</span>', _num(t["count"]), _num(t["total_delta"]),
          _num(t["mean_delta"])] for t in losses["target_tokens"]]))

    for own, label in enumerate(labels):
        items = report["model_specific"].get(label, [])
        parts.append(f"<h2>Top {esc(label)}-only latents</h2>")
        if not items:
            rule = f"&lt; {FIRST_ONLY}" if own == 0 else f"&gt; {SECOND_ONLY}"
            parts.append(f"<p class=muted>No live latent has r {rule}.</p>")
        parts.extend(_latent_card(item, labels, own) for item in items)
    rotated = report.get("rotated_shared", [])
    if rotated:
        parts.append("<h2>Shared latents whose decoder differs most between the models</h2>"
                     f"<p>The shared latents with the lowest cos(d<sub>{esc(first)}</sub>, "
                     f"d<sub>{esc(second)}</sub>): a concept both models hold but write differently, which is "
                     "where a fine-tune that moves existing features, rather than adding new ones, shows.</p>")
        parts.extend(_latent_card(item, labels, None) for item in rotated)
    return page(title, "\n".join(parts), css_extra=CSS)


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so report.json is standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_diff_report(out: Path, report: dict[str, Any]) -> None:
    """report.html (the page) and report.json (the same numbers for scripts), written atomically."""
    atomic_write_bytes(out / "report.html", render_diff_page(report).encode("utf-8"))
    atomic_write_bytes(out / "report.json", (json.dumps(_finite(report), indent=1) + "\n").encode("utf-8"))

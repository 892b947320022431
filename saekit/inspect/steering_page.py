"""A `SteeringReport` on disk: the curves (PNG and a static page with the same plot inline), the
vectors (.npy, each at the ActAdd vector's norm; improved.npy is the one with the most concept strength at
the ActAdd vector's cost), and report.json. Every string on the page is escaped (inspect/html.py)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from saekit.inspect.html import esc, fmt, page
from saekit.inspect.steering_improve import SteeringReport
from saekit.io import atomic_directory, atomic_write_bytes, atomic_write_json

LABELS = {"actadd": "ActAdd (difference of means)", "sae_reconstruction": "SAE reconstruction",
          "pruned": "irrelevant latents removed", "best_latent": "best single latent", "unsteered": "unsteered"}
COLORS = {"actadd": "#444444", "sae_reconstruction": "#2a7ab0", "pruned": "#e8762c", "best_latent": "#2ca02c"}


def curves_figure(reports: list[SteeringReport]) -> Any:
    """Concept strength against cost, one panel per concept, one line per method (markers at the scales)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    fig = Figure(figsize=(5.0 * len(reports), 3.8))
    axes = fig.subplots(1, len(reports), squeeze=False)[0]
    for ax, report in zip(axes, reports):
        for name, points in report.curves.items():
            xs = [0.0] + [p["cost"] for p in points]
            ys = [0.0] + [p["strength"] for p in points]
            ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.4, color=COLORS.get(name),
                    label=LABELS.get(name, name))
        ax.axvline(report.budget, color="#999", linestyle=":", linewidth=1)
        ax.set_xlabel("cost: held-out CE increase (nats/token)")
        ax.set_ylabel("concept strength: Δ log p(concept words) (nats)")
        ax.set_title(f"{report.concept.name} @ {report.hookpoint}", fontsize=10)
        ax.grid(alpha=.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _figure_bytes(fig: Any, fmt_name: str) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt_name, dpi=130, bbox_inches="tight", metadata={"Date": None} if fmt_name == "svg"
                else None)
    return buffer.getvalue()


def report_json(report: SteeringReport) -> dict[str, Any]:
    return {"concept": {"name": report.concept.name, "positive": report.concept.positive,
                        "negative": report.concept.negative, "words": report.concept.words,
                        "token_ids": report.concept_token_ids},
            "hookpoint": report.hookpoint, "activation_norm": report.activation_norm, "scales": report.scales,
            "display_scale": report.display_scale, "clean_ce": report.clean_ce, "budget": report.budget,
            "strength_at_budget": {k: (v if math.isfinite(v) else None) for k, v in report.at_budget.items()},
            "improved": report.improved, "curves": report.curves, "probe_accuracy": _finite(report.probe_accuracy),
            "screen": {"scale": report.screen.scale, "threshold": report.screen.threshold,
                       "random_effects": report.screen.random_effects, "latents": report.screen.rows},
            "prompts": report.prompts, "generations": report.generations,
            "probe_scores": {k: [_finite(v) for v in vs] for k, vs in report.probe_scores.items()},
            "meta": report.meta}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _number(value: float) -> str:
    return esc(fmt(value)) if math.isfinite(value) else "—"


def _concept_section(report: SteeringReport, index: int) -> str:
    concept = report.concept
    rows = []
    for row in report.summary():
        name = row["method"]
        mark = " ★" if name == report.improved else ""
        rows.append(f'<tr><td>{esc(LABELS.get(name, name))}{mark}</td><td class="num">'
                    f'{_number(row["strength_at_budget"])}</td><td class="num">{_number(row["probe"])}</td></tr>')
    latents = []
    for row in report.screen.rows[:24]:
        cls = "pos" if row["relevant"] else "neg"
        latents.append(f'<tr><td>{row["latent"]}</td><td class="num">{_number(row["coefficient"])}</td>'
                       f'<td class="num">{_number(row["contribution_norm"])}</td><td class="num">'
                       f'{_number(row["effect"])}</td><td class="{cls}">{"kept" if row["relevant"] else "removed"}'
                       "</td></tr>")
    columns = ["unsteered", *report.curves]
    header = "".join(f"<th>{esc(LABELS.get(c, c))}</th>" for c in columns)
    generations = []
    for i, prompt in enumerate(report.prompts):
        cells = "".join(f'<td class="gen">{esc(report.generations[c][i])}<div class="muted">probe '
                        f'{_number(report.probe_scores[c][i])}</div></td>' for c in columns)
        generations.append(f'<tr><td class="gen"><b>{esc(prompt)}</b></td>{cells}</tr>')
    removed = sum(1 for row in report.screen.rows if not row["relevant"])
    return (f'<h2 id="concept-{index}">{esc(concept.name)}</h2>'
            f'<p class="muted">{len(concept.positive)} positive / {len(concept.negative)} negative prompts; concept '
            f'words: {esc(", ".join(concept.words))}; hookpoint {esc(report.hookpoint)}; scales in units of '
            f'ρ = {esc(fmt(report.activation_norm))} (median activation norm): '
            f'{esc(", ".join(fmt(s) for s in report.scales))}</p>'
            f'<p>Strength at the ActAdd vector\'s cost at scale {esc(fmt(report.display_scale))} '
            f'(Δ CE = {_number(report.budget)} nats/token); probe: mean probability of the concept on the '
            f'generations (probe accuracy on held-out prompts: {_number(report.probe_accuracy)}).</p>'
            f'<table class="summary"><thead><tr><th>vector</th><th>strength at that cost</th><th>probe</th></tr>'
            f'</thead><tbody>{"".join(rows)}</tbody></table>'
            f'<h3>Screened latents</h3><p class="muted">each latent steered alone at scale '
            f'{esc(fmt(report.screen.scale))}; relevant when its effect exceeds {_number(report.screen.threshold)} '
            f'(random directions: mean + 2 sd); {removed} of {len(report.screen.rows)} removed</p>'
            f'<table class="screen"><thead><tr><th>latent</th><th>coefficient</th><th>‖c d‖</th><th>effect</th>'
            f'<th></th></tr></thead><tbody>{"".join(latents)}</tbody></table>'
            f'<h3>Generations at scale {esc(fmt(report.display_scale))}</h3>'
            f'<table class="generations"><thead><tr><th>prompt</th>{header}</tr></thead>'
            f'<tbody>{"".join(generations)}</tbody></table>')


def write_steering_report(reports: list[SteeringReport], out_dir: str | Path, title: str = "",
                          overwrite: bool = False) -> Path:
    """curves.png, index.html and report.json in `out_dir`, and per concept a folder of vectors. The
    directory is written whole (`io.atomic_directory`): it replaces only an earlier saekit output, or
    anything with `overwrite`."""
    with atomic_directory(out_dir, overwrite) as tmp:
        _write_report_files(reports, tmp, title)
    return Path(out_dir) / "index.html"


def _write_report_files(reports: list[SteeringReport], out: Path, title: str) -> None:
    import numpy as np

    fig = curves_figure(reports)
    atomic_write_bytes(out / "curves.png", _figure_bytes(fig, "png"))
    svg = _figure_bytes(fig, "svg").decode("utf-8")
    svg = svg[svg.index("<svg"):]
    for index, report in enumerate(reports):
        folder = out / f"concept-{index}"
        folder.mkdir(exist_ok=True)
        for name, vector in {**report.vectors, "improved": report.vectors[report.improved]}.items():
            buffer = io.BytesIO()
            np.save(buffer, vector.detach().float().cpu().numpy())
            atomic_write_bytes(folder / f"{name}.npy", buffer.getvalue())
    atomic_write_json(out / "report.json", [report_json(r) for r in reports])
    css = (".gen{white-space:pre-wrap;vertical-align:top;max-width:18em;font-size:.85em}"
           "table.generations td{border:1px solid #eee}")
    nav = " ".join(f'<a href="#concept-{i}">{esc(r.concept.name)}</a>' for i, r in enumerate(reports))
    body = (f"<h1>Steering vectors improved with a dictionary</h1><p class=\"muted\">{esc(title)}</p>"
            f"<nav>{nav}</nav><div class=\"figure\">{svg}</div>"
            "<p class=\"muted\">Each vector is normalised and added at every position as α·ρ·u. Strength: shift of "
            "log Σ p(concept word) on the neutral prompts, teacher-forced. Cost: increase of next-token "
            "cross-entropy on held-out text. Up and to the left is better; the dotted line is the cost of the "
            "ActAdd vector at the display scale. ★ most strength at that cost (its vector: improved.npy).</p>"
            + "".join(_concept_section(r, i) for i, r in enumerate(reports)))
    atomic_write_bytes(out / "index.html", page("steering vectors", body, css).encode("utf-8"))

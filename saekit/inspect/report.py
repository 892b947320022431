"""One self-contained HTML page per training run or sweep: curves, Pareto plot, evaluation table, links.

Curves come from the run's `log.jsonl` (one JSON object per dictionary per logged step, written by
`saekit.train`), the Pareto plot and the table from evaluation rows (what `saekit eval --out` writes).
Plots are matplotlib figures embedded as inline SVG, so the page is one file that opens from disk.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError
from saekit.inspect.html import esc, fmt, link, page

TABLE_COLUMNS = ["name", "method", "hookpoint", "l0", "fvu", "explained_variance", "ce_loss_score",
                 "kl_score", "delta_lm_loss", "dead_fraction", "dense_fraction",
                 "relative_reconstruction_bias", "cossim"]


def find_log(run_dir: Path) -> Path | None:
    for candidate in (run_dir / "checkpoints" / "log.jsonl", run_dir / "log.jsonl"):
        if candidate.is_file():
            return candidate
    found = sorted(run_dir.rglob("log.jsonl"))
    return found[0] if found else None


def read_log(path: Path) -> dict[str, list[dict[str, Any]]]:
    """{dictionary name: its log rows in order}; unreadable lines (a run killed mid-write) are skipped.
    A resumed run repeats steps after its last checkpoint: the later row for a step wins."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            runs.setdefault(str(row.get("dictionary", "dictionary")), {})[int(row["step"])] = row
    return {name: [steps[s] for s in sorted(steps)] for name, steps in runs.items()}


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline SVG in HTML


def _curve_plot(runs: Mapping[str, list[dict[str, Any]]], key: str, ylabel: str, log: bool = False
                ) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(key in row for rows in runs.values() for row in rows):
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, rows in runs.items():
        points = [(row["tokens"], row[key]) for row in rows if key in row and row[key] is not None]
        if points:
            ax.plot(*zip(*points), label=name, linewidth=1.2)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=.3)
    if len(runs) <= 12:
        ax.legend(fontsize=7)
    return _svg(fig)


LAYER_KEY = re.compile(r"^(fvu|l0|dead_fraction)\.layer_(\d+)$")
SET_MEMBER = re.compile(r"^(.*)\.layer_(\d+)$")
LAYER_METRICS = {"fvu": "NMSE (FVU)", "l0": "L0", "dead_fraction": "dead fraction",
                 "delta_lm_loss": "delta LM loss, this layer spliced alone (nats)",
                 "kl_spliced": "KL(clean ‖ this layer spliced alone)"}


def layer_values(runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[int, float]]]:
    """{group: {metric: {layer: last logged value}}} for transcoder sets (members `<set>.layer_L`, each
    logging fvu, l0, dead_fraction) and cross-layer transcoders (keys `fvu.layer_L`, ...)."""
    groups: dict[str, dict[str, dict[int, float]]] = {}
    for name, rows in runs.items():
        if not rows:
            continue
        last = rows[-1]
        member = SET_MEMBER.match(name)
        if member:
            for metric in ("fvu", "l0", "dead_fraction"):
                if isinstance(last.get(metric), (int, float)):
                    groups.setdefault(member.group(1), {}).setdefault(metric, {})[int(member.group(2))] = last[metric]
        for key, value in last.items():
            match = LAYER_KEY.match(key)
            if match and isinstance(value, (int, float)):
                groups.setdefault(name, {}).setdefault(match.group(1), {})[int(match.group(2))] = value
    return groups


def _layer_plot(groups: Mapping[str, Mapping[str, Mapping[int, float]]], metric: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: values[metric] for name, values in groups.items() if values.get(metric)}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, values in series.items():
        layers = sorted(values)
        ax.plot(layers, [values[layer] for layer in layers], marker="o", markersize=3, linewidth=1.2, label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel(LAYER_METRICS.get(metric, metric))
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    return _svg(fig)


def _layers_section(runs: Mapping[str, list[dict[str, Any]]], rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-layer figures of transcoder sets and CLTs: the last training log line, and the replacement-model
    evaluation (`saekit eval` on a set or CLT)."""
    parts = []
    trained = layer_values(runs)
    if trained:
        plots = [(LAYER_METRICS[m], _layer_plot(trained, m)) for m in ("fvu", "l0", "dead_fraction")]
        parts.append("<h3>Training (last logged batch)</h3><div class=\"cols\" id=\"layers-training\">" + "".join(
            f"<div><h3>{esc(title)}</h3>{svg}</div>" for title, svg in plots if svg) + "</div>")
    evaluated = {str(r.get("name")): {m: {int(layer["layer"]): layer[m] for layer in r["layers"]
                                          if isinstance(layer.get(m), (int, float))} for m in LAYER_METRICS}
                 for r in rows if isinstance(r.get("layers"), list)}
    if evaluated:
        plots = [(LAYER_METRICS[m], _layer_plot(evaluated, m)) for m in LAYER_METRICS]
        summary = "".join(f"<li>{esc(r.get('name'))}: every MLP replaced at once: CE {esc(fmt(r['ce_replaced'], 4))} "
                          f"(clean {esc(fmt(r['ce_clean'], 4))}), KL {esc(fmt(r['kl_replaced'], 4))}, CE-loss score "
                          f"{esc(fmt(r['ce_loss_score'], 4))}</li>"
                          for r in rows if isinstance(r.get("layers"), list) and "ce_replaced" in r)
        parts.append(f"<h3>Replacement model (held-out tokens)</h3><ul>{summary}</ul>"
                     '<div class="cols" id="layers-eval">' + "".join(
                         f"<div><h3>{esc(title)}</h3>{svg}</div>" for title, svg in plots if svg) + "</div>")
    return ("<h2>Layers (transcoder sets and cross-layer transcoders)</h2>" + "".join(parts)) if parts else ""


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when lower x and lower y are both better, sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _pareto_plot(rows: Sequence[Mapping[str, Any]], key: str, label: str, higher_better: bool
                 ) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [r for r in rows if isinstance(r.get("l0"), (int, float)) and isinstance(r.get(key), (int, float))]
    if not usable:
        return None
    xs = [float(r["l0"]) for r in usable]
    ys = [float(r[key]) for r in usable]
    front = pareto_front([(x, -y if higher_better else y) for x, y in zip(xs, ys)])
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    methods = sorted({str(r.get("method", "")) for r in usable})
    for method in methods:
        idx = [i for i, r in enumerate(usable) if str(r.get("method", "")) == method]
        ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], label=method or "dictionary", s=28)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], color="#444", linewidth=.8,
            linestyle="--", label="Pareto front")
    for x, y, r in zip(xs, ys, usable):
        ax.annotate(str(r.get("name", ""))[:24], (x, y), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel(label + (" (higher is better)" if higher_better else " (lower is better)"))
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    return _svg(fig)


def _table(rows: Sequence[Mapping[str, Any]], links: Mapping[str, str]) -> str:
    """The evaluation table; the dashboards link sits next to the name, where it is seen."""
    columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
    head = "".join(f"<th>{esc(c.replace('_', ' '))}</th>" for c in columns)
    if links:
        head = head.replace("</th>", "</th><th>dashboards</th>", 1)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            if isinstance(value, float):
                cells.append(f'<td class="num">{esc(fmt(value, 4))}</td>')
            else:
                cells.append(f'<td style="white-space:nowrap">{esc(value)}</td>')
            if links and len(cells) == 1:
                href = links.get(str(row.get("name")))
                cells.append(f'<td><a href="{esc(href)}">open</a></td>' if href else "<td></td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<div style="overflow-x:auto"><table id="evaluation"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _dead_definition(runs: Mapping[str, list[dict[str, Any]]], rows: Sequence[Mapping[str, Any]]) -> str:
    """Say what "dead" means on this page: the training curves and the evaluation table count over
    different windows of tokens, and a reader comparing them must know which."""
    windows = sorted({int(r[-1]["dead_window_tokens"]) for r in runs.values() if r and "dead_window_tokens" in r[-1]})
    train = ("a latent that has not fired on the last W training tokens, W = min(dead_tokens, tokens trained "
             f"so far) (W = {', '.join(f'{w:,}' for w in windows)} at the end)" if windows else
             "a latent that has not fired for dead_tokens training tokens")
    evaluated = sorted({int(r["tokens"]) for r in rows if isinstance(r.get("tokens"), (int, float))})
    table = (f"; in the evaluation table, one that fires on none of the {', '.join(f'{n:,}' for n in evaluated)} "
             "evaluation tokens" if evaluated else "")
    return f'<p class="muted" id="dead-definition">Dead, in the training curves: {esc(train)}{esc(table)}.</p>'


def write_run_report(run_dir: str | os.PathLike, eval_rows: Sequence[Mapping[str, Any]] | None,
                     out_html: str | os.PathLike,
                     dashboards: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write one HTML page about a training run or sweep and return its path.

    run_dir: the directory `saekit train --out` (or `saekit.train(checkpoint_dir=...)`) wrote; its
        `log.jsonl` is found at `checkpoints/log.jsonl`, `log.jsonl` or anywhere below. Rows are the
        trainer's: `step`, `tokens`, `dictionary` (name), and metrics such as `loss`, `mse`, `l0`,
        `dead_fraction`. A run without a log still gets a page (table and Pareto plot only).
    eval_rows: evaluation results, one dict per dictionary, as `saekit eval --out` writes them
        (`name`, `method`, `l0`, `fvu`, optionally `ce_loss_score`, `kl_score`, ...). May be empty;
        then the Pareto plot uses each dictionary's last logged `l0` and `mse`.
    out_html: the page to write (parent folders are created).
    dashboards: {dictionary name (as in eval_rows / the log): dashboard site directory, its
        index.html, or a URL}; paths are linked relative to the page.
    """
    run_dir, out_html = Path(run_dir), Path(out_html)
    if not run_dir.is_dir():
        raise SaekitError(f"no such run directory: {run_dir}")
    log = find_log(run_dir)
    runs = read_log(log) if log else {}
    rows = [dict(r) for r in (eval_rows or [])]
    links = {str(name): link(target, out_html, site_index=True) for name, target in (dashboards or {}).items()}
    sections = [f"<h1>Run report: {esc(run_dir.name)}</h1>",
                f'<p class="muted">{esc(run_dir.resolve())} · {len(runs)} dictionaries logged'
                f'{" in " + esc(log.name) if log else " (no log.jsonl found)"} · '
                f"{len(rows)} evaluated</p>"]
    if runs:
        plots = [("Loss", _curve_plot(runs, "loss", "loss", log=True)),
                 ("Reconstruction MSE", _curve_plot(runs, "mse", "MSE", log=True)),
                 ("L0", _curve_plot(runs, "l0", "L0")),
                 ("Dead latents", _curve_plot(runs, "dead_fraction", "dead fraction"))]
        sections.append('<h2>Training curves</h2><div class="cols" id="curves">' + "".join(
            f"<div><h3>{esc(title)}</h3>{svg}</div>" for title, svg in plots if svg) + "</div>")
        sections.append(_dead_definition(runs, rows))
    pareto_rows = rows or [{"name": name, "method": "", "l0": r[-1].get("l0"), "mse": r[-1].get("mse")}
                           for name, r in runs.items() if r]
    pareto = [_pareto_plot(pareto_rows, "fvu", "FVU", False),
              _pareto_plot(pareto_rows, "delta_lm_loss", "delta LM loss (nats)", False),
              _pareto_plot(pareto_rows, "ce_loss_score", "CE loss score", True)]
    if not rows:
        pareto = [_pareto_plot(pareto_rows, "mse", "final training MSE", False)]
    if any(pareto):
        sections.append('<h2>Pareto: sparsity vs fidelity</h2><div class="cols" id="pareto">'
                        + "".join(f"<div>{svg}</div>" for svg in pareto if svg) + "</div>")
    layers = _layers_section(runs, rows)
    if layers:
        sections.append(layers)
    if rows:
        sections.append("<h2>Evaluation</h2>" + _table(rows, links))
    elif links:
        items = "".join(f'<li><a href="{esc(href)}">{esc(name)}</a></li>' for name, href in links.items())
        sections.append(f"<h2>Dashboards</h2><ul>{items}</ul>")
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(page(f"run report · {run_dir.name}", "\n".join(sections),
                             css_extra="h3{font-size:.95em;margin:.3em 0} #curves>div,#pareto>div,"
                                       "#layers-training>div,#layers-eval>div{flex:0 1 30em} #curves svg,#pareto svg,"
                                       "#layers-training svg,#layers-eval svg{width:100%;height:auto}"),
                        encoding="utf-8")
    return out_html

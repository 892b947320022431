"""Feature dashboards: a static site (index.html + one page per latent) that opens from disk.

`build_dashboards` gathers everything in one batched pass (see `dashboard_data`) and writes:
- `index.html`: every latent with its name, firing density, max activation and top tokens, searchable
  and sortable in the page (the data is embedded as escaped JSON; the script only sets textContent);
- `latents/<i>.html`: top-activating contexts with per-token highlighting, random examples from
  activation quantile bands, the activation histogram, firing density, the tokens the decoder direction
  promotes and suppresses through the unembedding (logit lens), and the nearest latents by decoder
  cosine. These pages are plain HTML with no script at all; every token string is escaped.
- `latents.json`: the index data, for other tools (steering-vector reports link to the pages).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from saekit.attention.sparse_attention import SparseAttention
from saekit.dictionary import Dictionary
from saekit.inspect.dashboard_data import (
    Activations,
    TokenText,
    contexts,
    gather_activations,
    logit_lens,
    nearest_latents,
    quantile_positions,
    unembedding,
)
from saekit.inspect.html import context_html, esc, fmt, json_for_script, page, show_token, svg_bars
from saekit.io import atomic_directory

MAX_INDEX_ROWS = 1000  # rows drawn at once in the index; search and sort still cover every latent


def latent_href(i: int) -> str:
    """A latent page's path relative to the site root."""
    return f"latents/{i}.html"


def build_dashboards(d: Dictionary | SparseAttention, model: nn.Module, tokenizer: Any,
                     batches: Iterable[tuple[Tensor, Tensor]], out: str | Path, *,
                     top_examples: int = 20, bands: int = 4, per_band: int = 4,
                     names: dict[int, str] | None = None, title: str | None = None,
                     progress: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Build the dashboard site for every latent of `d` into `out` (replaced atomically, and only if
    saekit wrote it, unless `overwrite`). `batches` yields (input_ids [B, T], mask [B, T]) as
    `saekit.data.tokens.TokenStream` does. Returns timings and sizes.

    Attention latents get one more section each: for a sparse attention replacement, which source
    tokens each top activation read from through its QK head; for a dictionary on `attn_z.L`, the
    share of its decoder norm on each head (`saekit.inspect.dashboard_attention`)."""
    from saekit.inspect import dashboard_attention
    from saekit.io import check_replaceable

    check_replaceable(out, overwrite)  # before the (long) model pass
    timings: dict[str, float] = {}
    text = TokenText(tokenizer)
    started = time.perf_counter()
    decoder = d.ov if isinstance(d, SparseAttention) else d
    latents_of = dashboard_attention.replacement_latents(model, d) if isinstance(d, SparseAttention) else None
    record = gather_activations(model, d, batches, progress=progress, latents_of=latents_of)
    timings["model_and_encode_s"] = time.perf_counter() - started
    started = time.perf_counter()
    extra = dashboard_attention.sections(model, d, record, text, top_examples)
    timings["attention_s"] = time.perf_counter() - started
    started = time.perf_counter()
    w_u = unembedding(model)
    lens = logit_lens(dashboard_attention.residual_directions(model, decoder), w_u) if w_u is not None else None
    near = nearest_latents(decoder)
    timings["decoder_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with atomic_directory(Path(out), overwrite) as tmp:
        summary = write_site(record, decoder, text, tmp, lens, near, names or {},
                             title or f"{d.cfg.display_name} @ {d.provenance.hookpoint}",
                             top_examples, bands, per_band, extra)
    timings["write_s"] = time.perf_counter() - started
    return {**summary, **timings, "tokens": record.n_tokens, "d_sae": d.d_sae}


def _visible(token: str) -> str:
    """A token for names and previews: trimmed, or with its whitespace drawn when it is only that."""
    return token.strip() or token.replace("\n", "\u21b5").replace("\t", "\u2192").replace(" ", "\u2423")


def _auto_name(tokens: list[str]) -> str:
    """The most common token among the top examples, as a default name a reader can scan."""
    if not tokens:
        return ""
    return Counter(_visible(t) for t in tokens).most_common(1)[0][0]


def write_site(record: Activations, d: Dictionary, text: TokenText, out: Path,
               lens: tuple[Tensor, ...] | None, near: tuple[Tensor, Tensor], names: dict[int, str],
               title: str, top_examples: int = 20, bands: int = 4, per_band: int = 4,
               extra: Callable[[int], str] | None = None) -> dict[str, Any]:
    """Write index.html, latents/<i>.html and latents.json for `d` into `out`. `extra(i)` is more HTML for
    latent i's page (already escaped), shown after its top activations (a CLT latent's decoder norm into
    each later layer; an attention latent's heads)."""
    (out / "latents").mkdir(parents=True, exist_ok=True)
    near_cos, near_ids = near[0].tolist(), near[1].tolist()
    lens_lists = [t.tolist() for t in lens] if lens is not None else None
    rows = []
    alive = 0
    for i in range(d.d_sae):
        positions, values = record.latent(i)
        count = len(values)
        alive += count > 0
        top = contexts(record, i, positions[:top_examples])
        quantiles = [(label, contexts(record, i, positions[chosen]))
                     for label, chosen in quantile_positions(values, bands, per_band,
                                                             skip_top=top_examples, seed=i)]
        top_tokens = [text(ex.token_ids[ex.peak]) for ex in top]
        name = names.get(i) or _auto_name(top_tokens)
        max_value = float(values[0]) if count else 0.0
        density = count / max(record.n_tokens, 1)
        preview = " ".join(dict.fromkeys(_visible(t) for t in top_tokens if t))
        rows.append([i, name, density, max_value, preview[:80]])
        counts, edges = np.histogram(values, bins=30) if count else ([], [])
        body = _latent_body(i, name, title, d.d_sae, density, count, record.n_tokens, max_value,
                            top, quantiles, text, counts, edges,
                            None if lens_lists is None else [t[i] for t in lens_lists],
                            list(zip(near_ids[i], near_cos[i])), names, extra(i) if extra else "")
        (out / latent_href(i)).write_text(page(f"latent {i} · {title}", body), encoding="utf-8")
    (out / "latents.json").write_text(json.dumps(
        {"title": title, "tokens": record.n_tokens, "columns": ["id", "name", "density", "max", "top"],
         "rows": rows}, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "index.html").write_text(_index_page(title, rows, record.n_tokens, alive), encoding="utf-8")
    return {"latents": d.d_sae, "alive": alive}


def _examples_html(examples: list, text: TokenText, scale: float) -> str:
    return "".join(context_html([text(t) for t in ex.token_ids], ex.values, ex.peak, scale, ex.value,
                                text.separator) for ex in examples)


def _token_list(values: list[float], ids: list[int], text: TokenText, cls: str) -> str:
    items = "".join(f'<tr><td><span class="tok">{show_token(text(t))}</span></td>'
                    f'<td class="num {cls}">{esc(fmt(v))}</td></tr>' for v, t in zip(values, ids))
    return f"<table>{items}</table>"


def _latent_body(i: int, name: str, title: str, d_sae: int, density: float, count: int,
                 n_tokens: int, max_value: float, top: list, quantiles: list, text: TokenText,
                 counts: Any, edges: Any, lens: list | None, near: list, names: dict[int, str],
                 extra: str = "") -> str:
    nav = ['<nav><a href="../index.html">index</a>']
    if i > 0:
        nav.append(f'<a href="{i - 1}.html">&larr; latent {i - 1}</a>')
    if i + 1 < d_sae:
        nav.append(f'<a href="{i + 1}.html">latent {i + 1} &rarr;</a>')
    parts = ["".join(nav) + "</nav>",
             f'<h1>latent {i} <span class="muted" id="name">{esc(name)}</span></h1>',
             f'<p class="muted">{esc(title)}</p>',
             f'<p>firing density <b id="density">{esc(fmt(density))}</b> ({count:,} of {n_tokens:,} '
             f'tokens{", log10 " + esc(f"{np.log10(density):.2f}") if count else ""}) · '
             f'max activation <b id="max">{esc(fmt(max_value))}</b></p>']
    if not count:
        parts.append(f"<p><b>This latent never fired on these {n_tokens:,} tokens.</b></p>")
        parts.append(extra)
    else:
        parts.append('<div class="cols"><div><h2>Activation histogram</h2>'
                     f'{svg_bars(list(counts), list(edges), label="activation (firing tokens)")}</div>')
        if lens is not None:
            parts.append('<div><h2>Logit lens: promoted</h2>'
                         f'{_token_list(lens[0], lens[1], text, "pos")}</div>'
                         '<div><h2>Logit lens: suppressed</h2>'
                         f'{_token_list(lens[2], lens[3], text, "neg")}</div>')
        parts.append("</div>")
        parts.append(f'<h2>Top activations</h2><div id="top">{_examples_html(top, text, max_value)}</div>')
        parts.append(extra)
        for label, examples in quantiles:
            parts.append(f"<h2>{esc(label)}</h2>{_examples_html(examples, text, max_value)}")
    near_rows = "".join(f'<tr><td><a href="{j}.html">latent {j}</a></td><td>{esc(names.get(j, ""))}'
                        f'</td><td class="num">{esc(f"{c:.3f}")}</td></tr>' for j, c in near)
    parts.append(f'<h2>Nearest latents (decoder cosine)</h2><table id="near">{near_rows}</table>')
    return "\n".join(parts)


INDEX_SCRIPT = """<script>
(function () {
  const data = JSON.parse(document.getElementById("latent-data").textContent);
  const rows = data.rows, limit = data.limit;
  const body = document.querySelector("#latents tbody");
  const search = document.getElementById("search"), shown = document.getElementById("shown");
  let key = 0, dir = 1;
  function fmt(v) { return v === 0 ? "0" : (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4)
                     ? v.toExponential(2) : v.toPrecision(3); }
  function render() {
    const q = search.value.trim().toLowerCase();
    let list = rows.filter(r => !q || String(r[0]) === q || r[1].toLowerCase().includes(q)
                                   || r[4].toLowerCase().includes(q));
    list.sort((a, b) => {
      const x = a[key], y = b[key];
      const c = typeof x === "string" ? x.localeCompare(y) : x - y;
      return dir * (c || a[0] - b[0]);
    });
    body.replaceChildren();
    for (const r of list.slice(0, limit)) {
      const tr = document.createElement("tr");
      const a = document.createElement("a");
      a.href = "latents/" + r[0] + ".html"; a.textContent = String(r[0]);
      const cells = [a, r[1], fmt(r[2]), fmt(r[3]), r[4]];
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        if (i === 2 || i === 3) td.className = "num";
        if (typeof c === "string") td.textContent = c; else td.appendChild(c);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    shown.textContent = "showing " + Math.min(list.length, limit) + " of " + list.length +
                        " matching (" + rows.length + " latents)";
    document.querySelectorAll("#latents th").forEach((th, i) => {
      th.className = i === key ? (dir > 0 ? "sorted-asc" : "sorted-desc") : "";
    });
  }
  document.querySelectorAll("#latents th").forEach((th, i) => th.addEventListener("click", () => {
    if (key === i) dir = -dir; else { key = i; dir = (i === 2 || i === 3) ? -1 : 1; }
    render();
  }));
  search.addEventListener("input", render);
  render();
})();
</script>
"""


def _index_page(title: str, rows: list, n_tokens: int, alive: int) -> str:
    data = json_for_script({"rows": rows, "limit": MAX_INDEX_ROWS})
    body = (f"<h1>{esc(title)}</h1>"
            f'<p class="muted">{len(rows):,} latents, {alive:,} fired on {n_tokens:,} tokens. Click a '
            "column to sort; search matches id, name and top tokens.</p>"
            '<p><input type="search" id="search" placeholder="search latents" autofocus> '
            '<span id="shown" class="muted"></span></p>'
            '<table id="latents"><thead><tr><th>id</th><th>name</th><th>density</th>'
            "<th>max activation</th><th>top tokens</th></tr></thead><tbody></tbody></table>"
            f'<script type="application/json" id="latent-data">{data}</script>')
    return page(f"dashboards · {title}", body, script=INDEX_SCRIPT)

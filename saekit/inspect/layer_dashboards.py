"""Dashboards for a transcoder set or a cross-layer transcoder: one site per layer from one model pass.

`build_layer_dashboards` captures every chosen layer's MLP input in the same forward (stopped after the
last), encodes each with its layer's encoder, and writes `layer_<L>/` (a complete dashboard site, as for
one dictionary: index, per-latent pages, logit lens, nearest latents) plus a top `index.html` listing the
layers. A CLT layer's latents write into several layers; their pages add the norm of the latent's decoder
into each later layer (a bar per target, relative to the largest), and the logit lens and nearest latents
read the sum of those decoders (what the latent adds to the residual stream over all its targets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from saekit.circuits.clt import CrossLayerTranscoder
from saekit.circuits.transcoder_set import TranscoderSet
from saekit.errors import SaekitError
from saekit.inspect.dashboard import write_site
from saekit.inspect.dashboard_data import TokenText, gather_many, logit_lens, nearest_latents, unembedding
from saekit.inspect.html import esc, fmt, page
from saekit.io import atomic_directory


def _decoder_norm_section(clt: CrossLayerTranscoder, source: int) -> Callable[[int], str]:
    norms = clt.decoder_norms_by_target(source)  # [d_sae, reach]
    targets = [clt.layers[source + r] for r in range(norms.shape[1])]

    def section(i: int) -> str:
        row = norms[i].tolist()
        top = max(max(row), 1e-12)
        cells = "".join(
            f'<tr><td>layer {esc(layer)}</td><td class="num">{esc(fmt(value))}</td><td style="width:16em">'
            f'<div style="background:#e8762c;height:.8em;width:{100 * value / top:.1f}%"></div></td></tr>'
            for layer, value in zip(targets, row))
        return ("<h2>Decoder norm into each later layer</h2>"
                f'<p class="muted">‖W_dec<sup>{esc(clt.layers[source])}→t</sup>[{i}]‖ for every target layer t '
                "this latent writes to (the concatenated norm is what the sparsity penalty weighs).</p>"
                f'<table id="decoder-norms">{cells}</table>')
    return section


def build_layer_dashboards(transcoders: TranscoderSet | CrossLayerTranscoder, model: nn.Module, tokenizer: Any,
                           batches: Iterable[tuple[Tensor, Tensor]], out: str | Path, *,
                           layers: Sequence[int] | None = None, top_examples: int = 20,
                           progress: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Dashboards for the chosen model `layers` (default: all) of a transcoder set or CLT into `out`
    (replaced atomically, and only if saekit wrote it, unless `overwrite`). Returns timings and, per
    layer, latents and alive counts."""
    from saekit.io import check_replaceable

    check_replaceable(out, overwrite)  # before the (long) model pass
    chosen = list(transcoders.layers) if layers is None else [int(v) for v in layers]
    missing = [layer for layer in chosen if layer not in transcoders.layers]
    if missing:
        raise SaekitError(f"no layer {missing[0]} in this {type(transcoders).__name__} (its layers: "
                          f"{transcoders.layers})")
    positions = [transcoders.layers.index(layer) for layer in chosen]
    dictionaries = [transcoders.layer_dictionary(i) for i in positions]
    started = time.perf_counter()
    records = gather_many(model, [(d.provenance.hookpoint or "", d.encode, d.d_sae) for d in dictionaries],
                          batches, progress, device=dictionaries[0].W_dec.device)
    timings = {"model_and_encode_s": time.perf_counter() - started}
    w_u = unembedding(model)
    text = TokenText(tokenizer)
    is_clt = isinstance(transcoders, CrossLayerTranscoder)
    kind = "cross-layer transcoder" if is_clt else "transcoder set"
    name = transcoders.cfg.display_name if isinstance(transcoders, CrossLayerTranscoder) else transcoders.name
    started = time.perf_counter()
    summaries = []
    with atomic_directory(Path(out), overwrite) as tmp:
        for layer, position, d, record in zip(chosen, positions, dictionaries, records):
            lens = logit_lens(d, w_u) if w_u is not None else None
            extra = _decoder_norm_section(transcoders, position) if isinstance(transcoders, CrossLayerTranscoder) \
                else None
            summary = write_site(record, d, text, tmp / f"layer_{layer}", lens, nearest_latents(d), {},
                                 f"{name} · layer {layer} ({d.provenance.hookpoint} → {d.provenance.target_hookpoint})",
                                 top_examples, extra=extra)
            summaries.append({"layer": layer, **summary})
        (tmp / "index.html").write_text(_index(name, kind, summaries, records[0].n_tokens, is_clt),
                                        encoding="utf-8")
    timings["write_s"] = time.perf_counter() - started
    return {**timings, "layers": summaries, "tokens": records[0].n_tokens}


def _index(name: str, kind: str, summaries: list[dict[str, Any]], n_tokens: int, is_clt: bool) -> str:
    rows = "".join(f'<tr><td><a href="layer_{s["layer"]}/index.html">layer {esc(s["layer"])}</a></td>'
                   f'<td class="num">{esc(s["latents"])}</td><td class="num">{esc(s["alive"])}</td>'
                   f'<td class="num">{esc(fmt(s["alive"] / max(s["latents"], 1)))}</td></tr>' for s in summaries)
    note = (" Each latent page also shows the norm of its decoder into every later layer." if is_clt else "")
    body = (f"<h1>{esc(name)}</h1><p class=\"muted\">{esc(kind)}, {len(summaries)} layers, {n_tokens:,} tokens. "
            f"One dashboard site per layer.{esc(note)}</p>"
            '<table id="layers"><thead><tr><th>layer</th><th>latents</th><th>fired</th><th>fraction alive</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>")
    return page(f"dashboards · {name}", body)

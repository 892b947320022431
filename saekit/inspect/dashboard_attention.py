"""The attention sections of latent pages.

- A sparse attention replacement's latent i is OV head i reading through QK head h(i). Its activation
  at query q is z_i[q] = Σ_{k≤q} c_k + b_V,i with c_k = A_h(i)[q, k]·(x_k·w_v,i): c_k is what source token
  k contributed. For each top activation the page shows the context up to the query with every source
  token highlighted by its c_k, and names the largest source. The windows of the top activations are run
  through the model once more (stopped at the layer's input) after the main pass, since which windows
  hold top activations is only known then.
- A dictionary on `attn_z.L` (per-head attention outputs) shows the share of each latent's decoder norm
  on each head (`saekit.attention.heads`), from the weights alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from saekit.attention.heads import head_attribution
from saekit.attention.sparse_attention import SparseAttention
from saekit.inspect.dashboard_data import Activations, TokenText
from saekit.inspect.html import context_html, esc, fmt, show_token
from saekit.models.hooks import capture
from saekit.models.sites import attention_heads, resolve_hookpoints

WINDOWS_PER_FORWARD = 16
LEFT = 16  # tokens shown before the query (more when the largest source lies further back)


def replacement_latents(model: nn.Module, module: SparseAttention) -> Callable[[Tensor], Tensor]:
    """input_ids [B, T] -> the replacement's latents [B·T, n_ov], from the layer's input sequences."""
    point = resolve_hookpoints(model, [str(module.provenance.hookpoint)])[0]
    device = module.ov.W_dec.device

    def latents_of(input_ids: Tensor) -> Tensor:
        x = capture(model, input_ids, [point])[point.name].float().to(device)
        return module.encode(x).reshape(-1, module.d_sae)

    return latents_of


@torch.no_grad()
def source_contributions(model: nn.Module, module: SparseAttention, record: Activations,
                         top_examples: int) -> dict[int, list[np.ndarray]]:
    """{latent: [c [T] per top example, in the order of its top activations]} (see the module doc)."""
    point = resolve_hookpoints(model, [str(module.provenance.hookpoint)])[0]
    T = record.context
    wanted: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # window -> (latent, t, rank)
    for latent in range(module.d_sae):
        positions, _ = record.latent(latent)
        for rank, position in enumerate(positions[:top_examples].tolist()):
            window, t = divmod(position, T)
            wanted[window].append((latent, t, rank))
    out: dict[int, list[np.ndarray]] = {latent: [np.zeros(0)] * min(top_examples, len(record.latent(latent)[0]))
                                        for latent in range(module.d_sae)}
    windows = sorted(wanted)
    device = module.ov.W_dec.device
    for start in range(0, len(windows), WINDOWS_PER_FORWARD):
        chunk = windows[start:start + WINDOWS_PER_FORWARD]
        ids = torch.from_numpy(record.token_ids[chunk].astype(np.int64))
        x = capture(model, ids, [point])[point.name].float().to(device)  # [b, T, d]
        patterns = module.patterns(x)  # [b, n_qk, T, T]
        for local, window in enumerate(chunk):
            entries = wanted[window]
            latents = torch.tensor([e[0] for e in entries], device=device)
            ts = torch.tensor([e[1] for e in entries], device=device)
            values = (x[local] @ module.ov.W_enc[:, latents]).T  # [n, T]: x_k·w_v,i
            heads = module.qk_head_of(latents)
            contributions = (patterns[local, heads, ts] * values).cpu().numpy()  # [n, T], 0 after t
            for (latent, _, rank), row in zip(entries, contributions):
                out[latent][rank] = row
    return out


def _reads_html(latent: int, module: SparseAttention, record: Activations, rows: list[np.ndarray],
                text: TokenText) -> str:
    if not rows:
        return ""
    positions, values = record.latent(latent)
    head = int(module.qk_head_of(latent))
    lines = []
    for position, value, c in zip(positions.tolist(), values.tolist(), rows):
        window, t = divmod(position, record.context)
        source = int(np.argmax(c[:t + 1]))
        lo = max(0, min(t - LEFT, source - 3))
        tokens = record.token_ids[window, lo:t + 1].tolist()
        positive = np.clip(c[lo:t + 1], 0, None)
        total = float(np.abs(c[:t + 1]).sum()) or 1.0
        share = float(c[source]) / total
        context = context_html([text(tok) for tok in tokens], positive.tolist(), source - lo,
                               float(positive.max()) if positive.size else 0.0, value, text.separator)
        lines.append(f'<div class="read">{context}<div class="muted">reads most from '
                     f'<span class="tok">{show_token(text(int(record.token_ids[window, source])))}</span> '
                     f'at offset {esc(source - t)} ({esc(fmt(100 * share))}% of Σ|c|)</div></div>')
    return (f'<h2>Source tokens of the top activations (QK head {esc(head)})</h2>'
            '<p class="muted">Each line ends at the query token; a source token k is highlighted by what it '
            "contributed, A[q, k]·(x_k·w_v), and the largest source is outlined.</p>"
            f'<div id="reads">{"".join(lines)}</div>')


def _heads_html(fractions: Tensor) -> str:
    rows = []
    top = int(fractions.argmax())
    for head, share in enumerate(fractions.tolist()):
        width = max(1, round(200 * share))
        cls = ' class="top-head"' if head == top else ""
        rows.append(f'<tr{cls}><td>head {esc(head)}</td><td class="num">{esc(f"{share:.3f}")}</td>'
                    f'<td><span style="display:inline-block;height:.8em;width:{width}px;'
                    'background:#e8762c"></span></td></tr>')
    return ("<h2>Heads (share of decoder norm)</h2>"
            f'<p class="muted">Top head: {esc(top)} with {esc(f"{float(fractions[top]):.1%}")} of the latent\'s '
            "decoder norm (uniform would be "
            f'{esc(f"{1 / fractions.numel():.1%}")}).</p><table id="heads">{"".join(rows)}</table>')


@torch.no_grad()
def residual_directions(model: nn.Module, d: Any) -> Tensor:
    """Decoder rows in the residual stream, for the logit lens: a dictionary on `attn_z.L` writes
    per-head outputs, which reach the residual stream through the output projection (applied here
    without its bias); every other decoder is returned as it is."""
    hookpoint = d.provenance.hookpoint
    if not hookpoint or attention_heads(model, hookpoint) is None:
        return d.W_dec
    projection = model.get_submodule(resolve_hookpoints(model, [hookpoint])[0].module)
    weight = next(projection.parameters())
    rows = d.W_dec.detach().to(weight.device, weight.dtype)
    return projection(rows) - projection(torch.zeros_like(rows[:1]))


def sections(model: nn.Module, d: Any, record: Activations, text: TokenText, top_examples: int
             ) -> Callable[[int], str] | None:
    """The extra section of each latent page, or None for latents with no attention view."""
    if isinstance(d, SparseAttention):
        reads = source_contributions(model, d, record, top_examples)
        return lambda i: _reads_html(i, d, record, reads[i], text)
    hookpoint = d.provenance.hookpoint
    heads = attention_heads(model, hookpoint) if hookpoint else None
    if heads is None:
        return None
    fractions = head_attribution(d.W_dec, heads[0])
    return lambda i: _heads_html(fractions[i])

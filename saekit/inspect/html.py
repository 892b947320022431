"""Small HTML helpers shared by the dashboards and the run report: escaping, safe JSON, inline SVG.

Token strings come from tokenizers and texts we do not control (a vocabulary can hold `<script>` or a
quote), so every string that reaches a page goes through `esc` (text and attribute values alike), and
data for page scripts goes through `json_for_script`, which makes a JSON document that cannot close its
`<script>` element. Page scripts only ever set `textContent`, never `innerHTML`, so data stays data.
Plots on per-latent pages are hand-written SVG bars rather than matplotlib figures: a dashboard has one
histogram per latent (thousands), and a matplotlib figure costs ~50 ms where this costs ~50 µs.
"""

from __future__ import annotations

import functools
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:72em;
     padding:0 1em;color:#1d1d1f;background:#fff}
h1{font-size:1.5em;margin:.2em 0} h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{padding:.2em .6em;text-align:left;
     border-bottom:1px solid #eee} th{cursor:pointer;user-select:none;background:#f6f6f6}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
.num{text-align:right;font-variant-numeric:tabular-nums}
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85em;
     white-space:pre-wrap;word-break:break-all;margin:.15em 0;padding:.25em .4em;background:#fafafa;
     border-left:3px solid #ddd}
.ctx .v{color:#888;display:inline-block;min-width:4.5em}
mark{background:rgba(255,110,0,var(--a));color:inherit;border-radius:2px}
mark.peak{outline:1.5px solid #c04000}
.cols{display:flex;flex-wrap:wrap;gap:2em} .cols>div{flex:1 1 20em}
.tok{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f1f1f1;padding:0 .25em;
     white-space:pre}
.pos{color:#0a6b2b} .neg{color:#a4161a} .muted{color:#777}
nav a{margin-right:1em} input[type=search]{font-size:1em;padding:.3em;width:24em}
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute (quotes included)."""
    return html.escape(str(value), quote=True)


@functools.lru_cache(maxsize=1 << 17)
def show_token(text: str) -> str:
    """A token as a reader should see it: newlines and tabs made visible, then escaped. Cached: a
    dashboard shows the same few thousand tokens millions of times."""
    return esc(text.replace("\n", "\u21b5").replace("\t", "\u2192"))


def json_for_script(data: Any) -> str:
    """JSON that is safe inside `<script type="application/json">`: `<`, `>`, `&` and the JavaScript
    line separators are written as \\u escapes, so no string can end the element (`</script>`) or
    open a comment; `JSON.parse` turns them back into the same characters."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def page(title: str, body: str, css_extra: str = "", script: str = "") -> str:
    """A complete standalone page (no external resources, opens from disk)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}{css_extra}</style></head>\n<body>\n{body}\n"
            f"{script}</body></html>\n")


def fmt(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def svg_bars(counts: Sequence[float], edges: Sequence[float], width: int = 360, height: int = 90,
             label: str = "") -> str:
    """A histogram as inline SVG: one rect per bin, axis labels at both ends (escaped)."""
    n = len(counts)
    if n == 0:
        return ""
    top = max(max(counts), 1)
    plot_h = height - 16
    bar_w = width / n
    rects = []
    for i, count in enumerate(counts):
        h = plot_h * count / top
        rects.append(f'<rect x="{i * bar_w:.1f}" y="{plot_h - h:.1f}" width="{max(bar_w - 1, .5):.1f}" '
                     f'height="{h:.1f}" fill="#e8762c"><title>{esc(fmt(edges[i]))}–'
                     f'{esc(fmt(edges[i + 1]))}: {int(count)}</title></rect>')
    axis = (f'<text x="0" y="{height - 2}" font-size="10">{esc(fmt(edges[0]))}</text>'
            f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">'
            f'{esc(fmt(edges[-1]))}</text>')
    if label:
        axis += (f'<text x="{width / 2}" y="{height - 2}" font-size="10" text-anchor="middle">'
                 f'{esc(label)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="{esc(label or "histogram")}">{"".join(rects)}{axis}</svg>')


def context_html(tokens: Sequence[str], values: Sequence[float], peak: int, scale: float,
                 value: float | None = None, separator: str = "") -> str:
    """One context line: tokens with activation > 0 highlighted in proportion to `scale` (the
    latent's max activation), the token the example is about outlined, each value in a tooltip."""
    parts = []
    if value is not None:
        parts.append(f'<span class="v">{esc(fmt(value))}</span>')
    for i, (token, act) in enumerate(zip(tokens, values)):
        text = show_token(token)
        if act > 0:
            alpha = min(1.0, 0.15 + 0.85 * act / scale) if scale > 0 else 1.0
            cls = ' class="peak"' if i == peak else ""
            parts.append(f'<mark{cls} style="--a:{alpha:.2f}" title="{esc(fmt(act))}">{text}</mark>')
        else:
            parts.append(text)
        parts.append(separator)
    return f'<div class="ctx">{"".join(parts)}</div>'


def link(target: str | os.PathLike, from_html: Path, site_index: bool = False) -> str:
    """An href from the page `from_html` to `target`: an http(s) URL as given, or a local path made
    relative to the page (so pages and sites can move together; with `site_index`, a directory means its
    index.html). Any other scheme (`javascript:`, `data:`, `file:`) is refused: a link given on a command
    line must not become script in a page."""
    from urllib.parse import urlsplit

    from saekit.errors import SaekitError

    text = str(target)
    scheme = urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return text
    if scheme and len(scheme) > 1:  # (a one-letter "scheme" is a Windows drive)
        raise SaekitError(f"link {text!r}: only http(s) URLs and local paths are allowed in pages")
    path = Path(text)
    if site_index and path.suffix != ".html":
        path = path / "index.html"
    relative = Path(os.path.relpath(path.resolve(), from_html.resolve().parent)).as_posix()
    return relative if ":" not in relative.split("/")[0] else f"./{relative}"

"""A static, offline page for one attribution graph (`index.html` beside `graph.json`).

The pruned graph (circuit-tracer's pruning, `AttributionGraph.prune`) is drawn as SVG by a small
hand-written script (no library, no CDN): one column per token position, one row per layer (token
embeddings at the bottom, the logits on top), features and error nodes in their cell, edges coloured by
sign (blue +, red −) with width ∝ |weight|. Clicking a node opens a side panel: what it is, its
activation and influence, its strongest incoming and outgoing edges, and a link to its feature's page in
the layer dashboards (`saekit dashboard` on a transcoder set or CLT: `layer_L/latents/I.html`), where its
top contexts are. Nodes can be grouped into supernodes (select with the checkboxes in the panel, name the
group): groups are kept in the browser (localStorage) and saved as `supernodes.json` by a download
link; `saekit graph-view GRAPH --supernodes FILE` writes them into the graph and the page.

Every string reaches the page as escaped text: data goes through `json_for_script`, and the script sets
only `textContent` and attributes, never `innerHTML`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from saekit.circuits.graph import AttributionGraph
from saekit.inspect.html import esc, json_for_script, page

MAX_NODES = 400
MAX_EDGES = 3000

CSS = """
#wrap{display:flex;gap:1em;align-items:flex-start}
#plot{flex:1 1 auto;overflow:auto;border:1px solid #ddd}
#panel{flex:0 0 22em;font-size:.9em;border:1px solid #ddd;padding:.6em;min-height:10em}
.node{cursor:pointer} .node.sel circle,.node.sel rect{stroke:#000;stroke-width:2.5}
.feature circle{fill:#f0b429} .error rect{fill:#bbb} .token rect{fill:#9ecae1} .logit rect{fill:#a1d99b}
.edge{fill:none} .lab{font-size:9px;fill:#333;pointer-events:none}
#panel table{font-size:.85em} #groups li{margin:.2em 0}
"""

SCRIPT = r"""
(function(){
const data = JSON.parse(document.getElementById("graph-data").textContent);
const svgNS = "http://www.w3.org/2000/svg";
function mk(tag, attrs, text) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}
const plot = document.getElementById("plot"), panel = document.getElementById("panel-body");
const crowd = {};
data.nodes.forEach(n => { const k = n.layer + ":" + n.pos; crowd[k] = (crowd[k] || 0) + 1; });
const colW = Math.min(400, Math.max(70, 13 * Math.max(1, ...Object.values(crowd)))), rowH = 46, padL = 60, padB = 40;
const nPos = data.tokens.length, nRows = data.n_layers + 2;
const width = padL + nPos * colW + 20, height = nRows * rowH + padB;
const rowY = layer => height - padB - (layer + 1) * rowH - rowH / 2;
const svg = mk("svg", {width: width, height: height, id: "graph-svg"});
plot.appendChild(svg);
const byId = {}; const cells = {};
data.nodes.forEach(n => {
  byId[n.id] = n; const key = n.layer + ":" + n.pos; (cells[key] = cells[key] || []).push(n);
});
Object.values(cells).forEach(list => list.forEach((n, i) => {
  const step = Math.min(13, (colW - 10) / Math.max(1, list.length));
  n.x = padL + n.pos * colW + colW / 2 + (i - (list.length - 1) / 2) * step;
  n.y = rowY(n.layer);  // tokens (layer -1) at the bottom, logits (layer L) on top
}));
for (let l = -1; l <= data.n_layers; l++) {
  const name = l < 0 ? "tokens" : (l === data.n_layers ? "logits" : "layer " + l);
  svg.appendChild(mk("text", {x: 4, y: rowY(l) + 3, "class": "lab"}, name));
}
data.tokens.forEach((tok, p) => {
  svg.appendChild(mk("text", {x: padL + p * colW + 4, y: height - 8, "class": "lab tok-label"}, tok));
});
const maxW = Math.max(1e-12, ...data.edges.map(e => Math.abs(e.w)));
const edgeLayer = mk("g"); svg.appendChild(edgeLayer);
data.edges.forEach(e => {
  const s = byId[e.s], t = byId[e.t]; if (!s || !t) return;
  edgeLayer.appendChild(mk("line", {x1: s.x, y1: s.y, x2: t.x, y2: t.y, "class": "edge",
    stroke: e.w >= 0 ? "#2166ac" : "#b2182b", "stroke-opacity": "0.55",
    "stroke-width": (0.3 + 4 * Math.abs(e.w) / maxW).toFixed(2)}));
});
const selected = new Set();
function addRow(table, cells, cls) {
  const tr = table.insertRow();
  cells.forEach(v => { tr.insertCell().textContent = String(v); });
  if (cls) tr.cells[tr.cells.length - 1].className = cls;
}
function show(n) {
  document.querySelectorAll(".node.sel").forEach(el => el.classList.remove("sel"));
  const el = document.getElementById("node-" + n.id); if (el) el.classList.add("sel");
  panel.textContent = "";
  const h = document.createElement("h3"); h.textContent = n.label; h.id = "panel-title"; panel.appendChild(h);
  const rows = [["kind", n.kind], ["layer", n.layer], ["position", n.pos]];
  if (n.kind === "feature") rows.push(["feature", n.feature], ["activation", n.activation.toPrecision(4)]);
  if (n.token !== undefined) rows.push(["token", n.token]);
  if (n.probability !== undefined) rows.push(["probability", n.probability.toPrecision(4)]);
  rows.push(["influence", (n.influence || 0).toPrecision(4)], ["context token", data.tokens[n.pos]]);
  const table = document.createElement("table"); table.id = "node-facts";
  rows.forEach(r => addRow(table, r));
  panel.appendChild(table);
  if (n.href) {
    const a = document.createElement("a"); a.href = n.href; a.id = "dashboard-link";
    a.textContent = "top contexts of this feature (dashboard)"; panel.appendChild(a);
  }
  const pick = document.createElement("label"); const box = document.createElement("input");
  box.type = "checkbox"; box.id = "pick"; box.checked = selected.has(n.id);
  box.addEventListener("change", () => { box.checked ? selected.add(n.id) : selected.delete(n.id); updateSel(); });
  pick.appendChild(box); pick.appendChild(document.createTextNode(" add to the supernode selection"));
  panel.appendChild(document.createElement("br")); panel.appendChild(pick);
  const inputs = data.edges.filter(e => e.t === n.id), outputs = data.edges.filter(e => e.s === n.id);
  for (const [title, list, end] of [["strongest inputs", inputs, "s"], ["strongest outputs", outputs, "t"]]) {
    if (!list.length) continue;
    const h4 = document.createElement("h4"); h4.textContent = title; panel.appendChild(h4);
    const t = document.createElement("table");
    list.sort((a, b) => Math.abs(b.w) - Math.abs(a.w)).slice(0, 8).forEach(e => {
      const other = byId[e[end]];
      addRow(t, [other.label + " @" + other.pos, e.w.toPrecision(3)], e.w >= 0 ? "pos num" : "neg num");
    });
    panel.appendChild(t);
  }
}
const nodeLayer = mk("g"); svg.appendChild(nodeLayer);
data.nodes.forEach(n => {
  const g = mk("g", {"class": "node " + n.kind, id: "node-" + n.id});
  const shape = n.kind === "feature" ? mk("circle", {cx: n.x, cy: n.y, r: 5})
    : mk("rect", {x: n.x - 6, y: n.y - 6, width: 12, height: 12});
  shape.appendChild(mk("title", {}, n.label));
  g.appendChild(shape); g.addEventListener("click", () => show(n)); nodeLayer.appendChild(g);
  if (n.kind === "logit") g.appendChild(mk("text", {x: n.x - 6, y: n.y - 9, "class": "lab"}, n.token));
});
const storeKey = "saekit-supernodes:" + data.key;
let groups = data.supernodes.slice();
try {
  const saved = JSON.parse(localStorage.getItem(storeKey) || "null");
  if (Array.isArray(saved)) groups = saved;
} catch (e) {}
function updateSel() { document.getElementById("sel-count").textContent = String(selected.size); }
function renderGroups() {
  const ul = document.getElementById("groups"); ul.textContent = "";
  groups.forEach(g => {
    const li = document.createElement("li"); li.textContent = g.name + " (" + g.nodes.length + " nodes)";
    ul.appendChild(li);
  });
  try { localStorage.setItem(storeKey, JSON.stringify(groups)); } catch (e) {}
  const a = document.getElementById("save-groups");
  a.href = "data:application/json;charset=utf-8," + encodeURIComponent(JSON.stringify(groups, null, 1));
}
document.getElementById("group-btn").addEventListener("click", () => {
  if (!selected.size) return;
  const name = document.getElementById("group-name").value || ("supernode " + (groups.length + 1));
  groups.push({name: name, nodes: Array.from(selected).sort((a, b) => a - b)});
  selected.clear(); updateSel(); renderGroups();
});
renderGroups(); updateSel();
window.__graphReady = true;
})();
"""


def viewer_data(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98,
                dashboards: str | None = None, from_html: Path | None = None) -> dict[str, Any]:
    """The pruned graph as the page's JSON: nodes (with influence and dashboard links) and kept edges."""
    pruned = graph.prune(node_threshold, edge_threshold)
    influence = graph.node_influence()
    keep = torch.nonzero(pruned.node_mask).flatten()
    if len(keep) > MAX_NODES:  # keep the most influential, always tokens and logits
        fixed = keep[keep >= graph.token_start]
        rest = keep[keep < graph.token_start]
        rest = rest[torch.argsort(influence[rest], descending=True)[:MAX_NODES - len(fixed)]]
        keep = torch.sort(torch.cat([rest, fixed])).values
    nodes = []
    for i in keep.tolist():
        node = graph.node(i)
        node["influence"] = float(influence[i])
        if node["kind"] == "feature" and dashboards:
            node["href"] = _dashboard_link(dashboards, node["layer"], node["feature"], from_html)
        nodes.append(node)
    kept = set(keep.tolist())
    mask = pruned.edge_mask.clone()
    targets, sources = torch.nonzero(mask, as_tuple=True)
    edges = [{"t": int(t), "s": int(s), "w": float(graph.adjacency[t, s])}
             for t, s in zip(targets.tolist(), sources.tolist()) if t in kept and s in kept]
    edges.sort(key=lambda e: -abs(e["w"]))
    return {"tokens": graph.token_strings, "n_layers": graph.n_layers, "nodes": nodes, "edges": edges[:MAX_EDGES],
            "supernodes": graph.supernodes, "scores": graph.scores(), "key": graph.prompt[:200]}


def _dashboard_link(dashboards: str, layer: int, feature: int, from_html: Path | None) -> str:
    relative = f"layer_{layer}/latents/{feature}.html"
    if "://" in dashboards:
        return dashboards.rstrip("/") + "/" + relative
    target = Path(dashboards) / relative
    if from_html is not None:
        return Path(os.path.relpath(target, from_html.parent)).as_posix()
    return target.as_posix()


def render_graph_page(graph: AttributionGraph, out: str | Path, node_threshold: float = 0.8,
                      edge_threshold: float = 0.98, dashboards: str | None = None) -> Path:
    """Write the viewer page to `out` (a file path) and return it."""
    out = Path(out)
    data = viewer_data(graph, node_threshold, edge_threshold, dashboards, out)
    scores = data["scores"]
    logits = ", ".join(f"{s} ({float(p):.3f})" for s, p in zip(graph.logit_strings, graph.logit_probabilities))
    body = (f"<h1>Attribution graph</h1><p class=\"tok\" id=\"prompt\">{esc(graph.prompt)}</p>"
            f"<p>targets: <span id=\"targets\">{esc(logits)}</span> · replacement score "
            f"{scores['replacement_score']:.3f} · completeness score {scores['completeness_score']:.3f} · "
            f"{len(data['nodes'])} nodes and {len(data['edges'])} edges after pruning (node {node_threshold}, "
            f"edge {edge_threshold})</p>"
            "<div id=\"wrap\"><div id=\"plot\"></div><div id=\"panel\"><div id=\"panel-body\" class=\"muted\">"
            "Click a node.</div><hr><b>Supernodes</b> (<span id=\"sel-count\">0</span> selected) "
            "<input id=\"group-name\" placeholder=\"name\"> <button id=\"group-btn\">group</button>"
            "<ul id=\"groups\"></ul><a id=\"save-groups\" download=\"supernodes.json\">save grouping "
            "(supernodes.json)</a></div></div>"
            f"<script type=\"application/json\" id=\"graph-data\">{json_for_script(data)}</script>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("." + out.name + ".tmp")
    tmp.write_text(page("Attribution graph", body, CSS, f"<script>{SCRIPT}</script>"), encoding="utf-8")
    tmp.replace(out)
    return out

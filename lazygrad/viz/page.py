"""The viz page: one HTML file with its data (JSON), style and script inline, so it opens with no network.

The script builds the page from the embedded data (`<script type="application/json" id="lazygrad-data">`): the
summary, the overview graph, one collapsible section per schedule item (filled in when opened, so a ResNet step's
240 kernels stay quick), search by kernel name or reason, and each kernel's source on demand.
"""

from __future__ import annotations

import html
import json

from lazygrad.viz.graphs import REASON_COLORS

STYLE = """
body { font: 13px/1.4 Helvetica, Arial, sans-serif; margin: 0 16px 32px; color: #222; }
h1 { font-size: 18px; margin: 12px 0 4px; } h2 { font-size: 15px; margin: 16px 0 4px; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; border-bottom: 1px solid #eee; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.message { background: #fff3cd; border: 1px solid #e0c36c; padding: 6px 10px; margin: 8px 0; }
.legend span { display: inline-block; margin-right: 12px; } .legend i { display: inline-block; width: 18px;
  height: 4px; margin-right: 4px; vertical-align: middle; }
#overview { overflow: auto; max-height: 70vh; border: 1px solid #ddd; }
#overview svg { display: block; }
#overview g.node.hit polygon, #overview g.node.hit ellipse, #overview g.node.hit path {
  stroke-width: 4; fill: #ffe680; }
#controls { position: sticky; top: 0; background: white; padding: 6px 0; border-bottom: 1px solid #ddd; z-index: 1; }
#search { width: 320px; padding: 3px 6px; }
details.item { border: 1px solid #ddd; border-radius: 4px; margin: 3px 0; }
details.item > summary { cursor: pointer; padding: 3px 6px; font-family: Menlo, Consolas, monospace; font-size: 12px; }
details.item[open] > summary { background: #eef3fb; }
details.item .body { padding: 6px 10px; }
details.item .graph { overflow: auto; max-height: 80vh; }
pre { background: #f7f7f7; padding: 6px; overflow: auto; max-height: 60vh; font-size: 11px; }
.reason { color: #555; } .muted { color: #888; }
"""

SCRIPT = r"""
"use strict";
const data = JSON.parse(document.getElementById("lazygrad-data").textContent);
const colors = JSON.parse(document.getElementById("lazygrad-colors").textContent);
const S = data.summary;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}
const ms = (s) => (s * 1e3).toFixed(3);
const rate = (amount, s) => (s > 0 ? (amount / s / 1e9).toFixed(2) : "-");
const shape = (s) => "(" + s.join(", ") + ")";
const itemName = (r, i) => r.name || r.kind + " #" + i;

function renderSummary() {
  const box = document.getElementById("summary");
  box.dataset.kernels = S.kernels;
  box.dataset.copies = S.copies;
  box.dataset.compiled = S.compiled;
  const rows = [
    ["kernels launched", S.kernels], ["of them from the graphs below", S.scheduled_kernels], ["copies", S.copies],
    ["kernels compiled", S.compiled + " (" + S.compile_seconds.toFixed(2) + " s)"],
    ["kernel time", ms(S.kernel_seconds) + " ms" + (S.timed ? "" : " (not timed)")], ["schedules run", S.schedules],
  ];
  const table = el("table");
  for (const [k, v] of rows) table.append(el("tr", {}, el("td", {}, k), el("td", {"class": "num"}, String(v))));
  box.append(table);
  const top = el("table", {id: "top"}, el("tr", {}, el("th", {}, "top kernels by time"),
    el("th", {"class": "num"}, "ms"), el("th", {"class": "num"}, "GFLOP/s"), el("th", {"class": "num"}, "GB/s")));
  for (const [name, s, flops, bytes] of S.top) {
    const index = data.items.findIndex((r) => r.name === name);
    const link = index >= 0 ? el("a", {href: "#k" + index}, name) : name;
    top.append(el("tr", {}, el("td", {}, link), el("td", {"class": "num"}, ms(s)),
      el("td", {"class": "num"}, rate(flops, s)), el("td", {"class": "num"}, rate(bytes, s))));
  }
  box.append(top);
  const legend = el("div", {"class": "legend"}, "buffer reasons (edge and border colours): ");
  for (const [reason, color] of Object.entries(colors))
    legend.append(el("span", {}, el("i", {style: "background:" + color}), reason));
  box.append(legend);
}

function renderOverview() {
  const box = document.getElementById("overview");
  if (!data.graphs.available) {
    document.getElementById("graph-message").append(el("div", {"class": "message"}, data.graphs.message));
    document.getElementById("overview-section").remove();
    return;
  }
  box.innerHTML = data.graphs.overview;
}

function fillBody(details, r, i) {
  const body = details.querySelector(".body");
  if (body.dataset.filled) return;
  body.dataset.filled = "1";
  const outputs = el("table", {},
    el("tr", {}, el("th", {}, "output"), el("th", {}, "shape"), el("th", {}, "why it is a buffer")));
  r.outputs.forEach((o, n) => outputs.append(el("tr", {}, el("td", {}, String(n)),
    el("td", {}, shape(o.shape) + " " + o.dtype), el("td", {"class": "reason"}, o.reason))));
  body.append(outputs);
  if (r.kind === "kernel" && r.launched) {
    const launch = "launch: global " + shape(r.global_size) + (r.local_size > 1 ? ", work-group " + r.local_size : "") +
      " on " + r.device + "; " + (r.flops / 1e6).toFixed(3) + " MFLOP, " + (r.bytes / 1e6).toFixed(3) + " MB" +
      ("seconds" in r ? "; " + ms(r.seconds) + " ms, " + rate(r.flops, r.seconds) + " GFLOP/s, " +
        rate(r.bytes, r.seconds) + " GB/s" : "");
    body.append(el("p", {}, launch));
    body.append(el("div", {}, "options (the code generator's record, with its reasons):"),
      el("pre", {}, data.options[r.name] || ""));
  } else if (r.kind === "kernel") {
    body.append(el("p", {"class": "muted"}, "not launched (an empty tensor)"));
  }
  const inputs = el("ul", {});
  for (const src of r.inputs) {
    const from = src.producer === null ? "a buffer realized before the capture" :
      el("a", {href: "#k" + src.producer}, itemName(data.items[src.producer], src.producer));
    inputs.append(el("li", {}, "reads ", shape(src.shape) + " " + src.dtype + " from ", from,
      el("span", {"class": "reason"}, " (cut: " + src.reason + ")")));
  }
  if (r.inputs.length) body.append(el("div", {}, "inputs:"), inputs);
  const svg = data.graphs.kernels[String(i)];
  if (svg) { const g = el("div", {"class": "graph"}); g.innerHTML = svg; body.append(g); }
  else if (r.kind === "kernel") {
    body.append(el("p", {"class": "muted"}, r.nodes.length + " fused ops: " + r.nodes.map((n) => n[0]).join(" ")));
  }
  if (r.name && data.sources[r.name] !== undefined) {
    const button = el("button", {type: "button"}, "show generated source");
    button.addEventListener("click", () => button.replaceWith(el("pre", {"class": "source"}, data.sources[r.name])));
    body.append(button);
  }
}

function renderItems() {
  const list = document.getElementById("items");
  data.items.forEach((r, i) => {
    const extra = r.outputs.length > 1 ? " +" + (r.outputs.length - 1) + " outputs" : "";
    const time = "seconds" in r ?
      "  " + ms(r.seconds) + " ms  " + rate(r.flops, r.seconds) + " GFLOP/s  " +
      rate(r.bytes, r.seconds) + " GB/s" : "";
    const attrs = {id: "k" + i, "class": "item " + r.kind, "data-name": itemName(r, i), "data-reason": r.reason};
    const details = el("details", attrs,
      el("summary", {}, "#" + i + " " + itemName(r, i) + "  ", el("span", {"class": "reason"}, r.reason + extra), time),
      el("div", {"class": "body"}));
    details.addEventListener("toggle", () => { if (details.open) fillBody(details, r, i); });
    list.append(details);
  });
}

function search(text) {
  const needle = text.trim().toLowerCase();
  const hits = new Set();
  for (const details of document.querySelectorAll("details.item")) {
    const match = !needle || details.dataset.name.toLowerCase().includes(needle) ||
      details.dataset.reason.toLowerCase().includes(needle);
    details.style.display = match ? "" : "none";
    if (match && needle) hits.add(details.id);
  }
  for (const node of document.querySelectorAll("#overview g.node")) {
    const title = node.querySelector("title");
    node.classList.toggle("hit", !!title && hits.has(title.textContent));
  }
  document.getElementById("hits").textContent = needle ? hits.size + " matching" : "";
}

function openFromHash() {
  const target = location.hash && document.getElementById(location.hash.slice(1));
  if (target && target.tagName === "DETAILS") { target.open = true; target.scrollIntoView(); }
}

renderSummary();
renderOverview();
renderItems();
document.getElementById("search").addEventListener("input", (e) => search(e.target.value));
const allItems = () => document.querySelectorAll("details.item");
document.getElementById("expand").addEventListener("click", () => allItems().forEach((d) => {
  if (d.style.display !== "none") d.open = true;
}));
document.getElementById("collapse").addEventListener("click", () => allItems().forEach((d) => { d.open = false; }));
window.addEventListener("hashchange", openFromHash);
openFromHash();
document.body.dataset.rendered = "yes";
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>
<body data-rendered="no">
<h1>{title}</h1>
<div id="summary"></div>
<h2>Kernels and the buffers between them</h2>
<div id="graph-message"></div>
<details id="overview-section" open><summary>overview graph (click a kernel to open it below)</summary>
<div id="overview"></div></details>
<div id="controls"><input id="search" type="search" placeholder="search kernels by name or reason">
<button id="expand" type="button">expand shown</button> <button id="collapse" type="button">collapse all</button>
<span id="hits" class="muted"></span></div>
<div id="items"></div>
<script type="application/json" id="lazygrad-data">{data}</script>
<script type="application/json" id="lazygrad-colors">{colors}</script>
<script>{script}</script>
</body></html>
"""


def _embedded_json(value) -> str:
    # inside <script>: "</" would end the element and "<!--" would change how the parser reads it; a symbolic size
    # (a lazygrad.Variable's expression) is shown as its text
    return json.dumps(value, separators=(",", ":"), default=str).replace("</", "<\\/").replace("<!--", "\\u003c!--")


def render_page(data: dict, title: str = "lazygrad: what the compiler did") -> str:
    return TEMPLATE.format(
        title=html.escape(title),
        style=STYLE,
        data=_embedded_json(data),
        colors=_embedded_json(REASON_COLORS),
        script=SCRIPT,
    )

"""Graph layout for the viz page by Graphviz (`dot -Tsvg`), an optional system dependency.

Two kinds of graph: the overview (one node per kernel, upload or copy; one edge per buffer a kernel reads from
another, coloured by the reason that buffer exists) and one graph per kernel (the lazy ops fused into it, the
buffers it reads, the outputs it stores). All go to one `dot` process, which writes one SVG per graph.
"""

from __future__ import annotations

import shutil
import subprocess

# one colour per reason the scheduler gives for a buffer (schedule.py); the page's legend shows the same
REASON_COLORS = {
    "output": "#1f77b4",
    "effect": "#7f7f7f",
    "shared": "#2ca02c",
    "reduce-in-view": "#d62728",
    "second-reduce": "#9467bd",
    "broadcast-compute": "#ff7f0e",
    "assign-hazard": "#8c564b",
    "assign-order": "#e377c2",
    "realized before the capture": "#bbbbbb",
}
MISSING = (
    "Graphviz is not installed (no `dot` on PATH): the graphs are not drawn, the page lists the kernels instead. "
    "Install it with `apt-get install graphviz` (Debian/Ubuntu) or from https://graphviz.org, then capture again."
)
DOT_TIMEOUT_S = 300
# a kernel of more ops than this is listed, not drawn: dot's layout time grows quickly with crossings
MAX_DRAWN_OPS = 400
# an overview of more items than this is drawn with straight edges
LINE_EDGES_ABOVE = 100


def reason_color(reason: str) -> str:
    return REASON_COLORS.get(reason.split(";")[0].strip(), "#444444")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**attrs) -> str:
    return "[" + ", ".join(f"{k}={_quote(str(v))}" for k, v in attrs.items()) + "]"


def _shape(shape: list) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _item_label(index: int, record: dict) -> str:
    if record["kind"] != "kernel":
        out = record["outputs"][0]
        return f"{record['kind']} #{index}\n{_shape(out['shape'])} {out['dtype']}"
    name = record.get("name", f"kernel #{index} (not launched)")
    time = f"\n{record['seconds'] * 1e3:.3f} ms" if "seconds" in record else ""
    extra = f" +{len(record['outputs']) - 1} outputs" if len(record["outputs"]) > 1 else ""
    return f"{name}\n{record['reason']}{extra}{time}"


def overview_dot(items: list) -> str:
    # a training step's overview has long edges (activations kept for the backward pass) through 150+ ranks:
    # dot's default node placement and spline routing then take minutes; bounded iterations and straight
    # edges take seconds (ResNet-18: 280 kernels, 800 edges, 4 s)
    big = ", splines=line" if len(items) > LINE_EDGES_ABOVE else ""
    lines = [
        "digraph overview {",
        f'  graph [rankdir=TB, nodesep=0.15, ranksep=0.3, fontname="Helvetica", nslimit=0.2, mclimit=0.2{big}];',
        '  node [fontname="Helvetica", fontsize=9, height=0.3];',
        "  edge [arrowsize=0.5, penwidth=1.2];",
    ]
    for index, record in enumerate(items):
        kernel = record["kind"] == "kernel"
        lines.append(
            f"  k{index} "
            + _attrs(
                label=_item_label(index, record),
                shape="box" if kernel else "ellipse",
                style="rounded,filled" if kernel else "filled",
                fillcolor="#eef3fb" if kernel else "#f4f4f4",
                color=reason_color(record["reason"]),
                URL=f"#k{index}",
                tooltip=f"{record.get('name', record['kind'])}: {record['reason']}",
            )
        )
    for index, record in enumerate(items):
        for source in record["inputs"]:
            if source["producer"] is None:
                continue
            tooltip = f"buffer {_shape(source['shape'])} {source['dtype']}: {source['reason']}"
            lines.append(
                f"  k{source['producer']} -> k{index} " + _attrs(color=reason_color(source["reason"]), tooltip=tooltip)
            )
    lines.append("}")
    return "\n".join(lines)


def kernel_dot(index: int, record: dict) -> str:
    """The ops fused into one kernel (a cluster), the buffers it reads and the outputs it stores."""
    lines = [
        f"digraph k{index} {{",
        '  graph [rankdir=TB, nodesep=0.2, ranksep=0.25, fontname="Helvetica", fontsize=10, nslimit=0.2, mclimit=0.2];',
        '  node [fontname="Helvetica", fontsize=9, height=0.25, shape=box, style="rounded,filled", fillcolor=white];',
        '  edge [arrowsize=0.5, fontname="Helvetica", fontsize=8, fontcolor="#555555"];',
        "  subgraph cluster_kernel {",
        "    graph " + _attrs(label=_item_label(index, record), style="rounded,filled", fillcolor="#eef3fb") + ";",
    ]
    # constants are written into their readers' labels: drawn as nodes, a few constants read by many ops make
    # crossings that take dot minutes to minimize (a random-number kernel: 24 constants, 200 ops)
    constants = {n for n, node in enumerate(record["nodes"]) if node[0] == "const"}
    reads_constants: dict = {}
    for source, consumer, _ in record["edges"]:
        if source in constants:
            reads_constants.setdefault(consumer, []).append(record["nodes"][source][3])
    for number, (op, shape, dtype, detail) in enumerate(record["nodes"]):
        if number in constants:
            continue
        label = f"{op}{' ' + detail if detail else ''}\n{_shape(shape)} {dtype}"
        if number in reads_constants:
            label += "\nconst " + ", ".join(dict.fromkeys(reads_constants[number]))
        fill = "#fff7e0" if op in ("sum", "rmax") else "white"
        lines.append(f"    n{number} " + _attrs(label=label, fillcolor=fill))
    lines.append("  }")
    for number, source in enumerate(record["inputs"]):
        origin = f"from #{source['producer']}" if source["producer"] is not None else "buffer"
        label = f"{origin}\n{_shape(source['shape'])} {source['dtype']}\n{source['reason']}"
        url = {"URL": f"#k{source['producer']}"} if source["producer"] is not None else {}
        lines.append(
            f"  i{number} " + _attrs(label=label, shape="ellipse", color=reason_color(source["reason"]), **url)
        )
        for consumer, view in source["to"]:
            lines.append(f"  i{number} -> n{consumer} " + _attrs(label=view, color=reason_color(source["reason"])))
    for position, (out, node) in enumerate(zip(record["outputs"], record.get("output_nodes", []))):
        label = f"store {position}\n{_shape(out['shape'])} {out['dtype']}\n{out['reason']}"
        lines.append(f"  o{position} " + _attrs(label=label, shape="note", color=reason_color(out["reason"])))
        lines.append(f"  n{node} -> o{position}")
    for source, consumer, view in record["edges"]:
        if source not in constants:
            lines.append(f"  n{source} -> n{consumer} " + _attrs(label=view))
    lines.append("}")
    return "\n".join(lines)


def render(items: list) -> dict:
    """{"available": bool, "message": why not, "overview": svg, "kernels": {index: svg}}: every graph in one run
    of `dot`."""
    dot = shutil.which("dot")
    if dot is None:
        return {"available": False, "message": MISSING, "overview": "", "kernels": {}}
    kernels = [i for i, r in enumerate(items) if r["kind"] == "kernel" and len(r["nodes"]) <= MAX_DRAWN_OPS]
    source = "\n".join([overview_dot(items), *(kernel_dot(i, items[i]) for i in kernels)])
    try:
        result = subprocess.run(
            [dot, "-Tsvg"], input=source, capture_output=True, text=True, timeout=DOT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {
            "available": False,
            "message": f"Graphviz took more than {DOT_TIMEOUT_S} s",
            "overview": "",
            "kernels": {},
        }
    svgs = ["<svg" + part.split("<svg", 1)[1] for part in result.stdout.split("<?xml")[1:]]
    if result.returncode != 0 or len(svgs) != 1 + len(kernels):
        message = f"Graphviz failed (dot exited {result.returncode}): {result.stderr.strip()[:500]}"
        return {"available": False, "message": message, "overview": "", "kernels": {}}
    return {"available": True, "message": "", "overview": svgs[0], "kernels": dict(zip(kernels, svgs[1:]))}

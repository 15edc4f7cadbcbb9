"""See what the compiler did: one self-contained HTML page of the realized graph, its kernels and why they fused.

    with lazygrad.viz.capture("step.html") as v:
        loss = model(x).sum(); loss.backward(); optim.step()

or `LAZYGRAD_VIZ=step.html python train.py` for a whole program (written when it exits). The page shows every
kernel the captured code launched from a schedule, the lazy ops fused into it, the reason the scheduler gave for
each buffer (each cut between kernels), the option record the code generator chose, times, GFLOP/s, GB/s and the
generated source. Graphs are laid out by Graphviz (`dot`) when it is installed; without it the page is a list and
says what is missing. `v.profile` is the `lazygrad.profile()` of the same code (`export_chrome_trace` included).
"""

from __future__ import annotations

import atexit
import weakref

from lazygrad import runtime
from lazygrad.ops import Op
from lazygrad.schedule import ItemKind


class capture:  # noqa: N801 (a context manager named like lazygrad.profile)
    """Record the schedules run and the kernels launched inside the with-block; write the page on exit when a
    path is given (else call `write(path)` or `html()`)."""

    def __init__(self, path=None):
        self.path = path
        self.items: list = []  # one record (a dict) per schedule item: kernels, uploads, copies
        self.sources: dict = {}  # kernel name -> generated source
        self.options: dict = {}  # kernel name -> the option record's description, reasons included
        self.schedules = 0
        self._record_of: dict = {}  # id(schedule item) -> its record, until it ran
        self._producer: dict = {}  # id(base) -> (weak reference, record index, output number)
        self._profiler = runtime.profile()
        self.profile = None

    def __enter__(self) -> capture:
        self.profile = self._profiler.__enter__()
        runtime.OBSERVERS.append(self)
        return self

    def __exit__(self, *exc):
        runtime.OBSERVERS.remove(self)
        self._profiler.__exit__(*exc)
        if self.path is not None and exc[0] is None:
            self.write(self.path)
        return False

    # --- what the runtime tells a capture ------------------------------------------------------------
    def schedule(self, items: list) -> None:
        """A schedule is about to run: record each item's graph now, while the lazy nodes still have sources."""
        self.schedules += 1
        for item in items:
            record = self._graph_of(item)
            record["index"] = len(self.items)
            record["schedule"] = self.schedules
            self.items.append(record)
            self._record_of[id(item)] = record
            for number, out in enumerate(item.outputs):
                self._producer[id(out)] = (weakref.ref(out), record["index"], number)

    def kernel(self, item, entry, launch) -> None:
        record = self._record_of.pop(id(item), None)
        if record is None:
            return
        kernel = entry.kernel
        record.update(
            name=kernel.name,
            device=entry.device,
            global_size=list(kernel.program.global_size),
            local_size=kernel.program.local_size,
            flops=entry.flops,
            bytes=entry.bytes,
            launched=True,
        )
        if launch is not None:
            record["seconds"] = launch.seconds
        if kernel.name not in self.sources:
            self.sources[kernel.name] = kernel.source
            capabilities = runtime.backend_for(entry.device).capabilities
            self.options[kernel.name] = runtime.kernel_options(item.ast, kernel.name, capabilities).describe()

    # --- the graph of one item ----------------------------------------------------------------------
    def _graph_of(self, item) -> dict:
        kind = {ItemKind.KERNEL: "kernel", ItemKind.HOST: "upload", ItemKind.COPY: "copy"}[item.kind]
        reasons = item.output_reasons or [item.reason] * len(item.outputs)
        record = {
            "kind": kind,
            "reason": item.reason,
            "outputs": [
                {"shape": list(o.shape), "dtype": o.dtype.name, "reason": r} for o, r in zip(item.outputs, reasons)
            ],
            "nodes": [],  # [op, shape, dtype, detail]
            "edges": [],  # [from node, to node, view ops]
            "inputs": [],  # {"producer": record index or None, "output": n, "shape", "dtype", "reason", "to": [nodes]}
            "launched": False,
        }
        if item.kind is not ItemKind.KERNEL:
            for src in item.inputs:
                record["inputs"].append(self._input(src, []))
            return record
        local: dict = {}  # id(base) -> node number in this kernel
        inputs: dict = {}  # id(input base) -> its entry in record["inputs"]

        def node_of(base) -> int:
            if id(base) in local:
                return local[id(base)]
            local[id(base)] = number = len(record["nodes"])
            detail = _detail(base)
            record["nodes"].append([base.op.value, list(base.shape), base.dtype.name, detail])
            stack.append(base)
            return number

        stack: list = []
        record["output_nodes"] = [node_of(out) for out in item.outputs]
        while stack:
            base = stack.pop()
            consumer = local[id(base)]
            sources = list(base.srcs)
            for src in sources:
                view = ",".join(op.value for op, _ in src.movement) if src.is_view else ""
                source = src.base
                if source.op is Op.CONST or (id(source) in item.fused and source.buffer is None):
                    record["edges"].append([node_of(source), consumer, view])
                else:  # a buffer: the cut between this kernel and the one that wrote it
                    if id(source) not in inputs:
                        inputs[id(source)] = self._input(source, [])
                        record["inputs"].append(inputs[id(source)])
                    inputs[id(source)]["to"].append([consumer, view])
        return record

    def _input(self, base, to: list) -> dict:
        known = self._producer.get(id(base))
        entry = {"producer": None, "output": 0, "shape": list(base.shape), "dtype": base.dtype.name, "to": to}
        if known is not None and known[0]() is base:
            producer = self.items[known[1]]
            entry.update(producer=known[1], output=known[2], reason=producer["outputs"][known[2]]["reason"])
        else:
            entry["reason"] = "realized before the capture"
        return entry

    # --- the page -------------------------------------------------------------------------------------
    def data(self) -> dict:
        """Everything the page shows, as JSON-able data (the page embeds it)."""
        from lazygrad.viz import graphs

        profile = self.profile
        launches = sorted(profile.launches, key=lambda k: -k.seconds)
        total = sum(k.seconds for k in profile.launches)
        return {
            "summary": {
                "kernels": profile.kernels,
                "scheduled_kernels": sum(1 for r in self.items if r["kind"] == "kernel" and r["launched"]),
                "copies": profile.copies,
                "compiled": profile.compiled,
                "compile_seconds": profile.compile_seconds,
                "kernel_seconds": total,
                "schedules": self.schedules,
                "timed": profile.timed,
                "top": [[k.name, k.seconds, k.flops, k.bytes] for k in launches[:10]],
            },
            "items": self.items,
            "sources": self.sources,
            "options": self.options,
            "graphs": graphs.render(self.items),
        }

    def html(self) -> str:
        from lazygrad.viz.page import render_page

        return render_page(self.data())

    def write(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.html())


def _detail(base) -> str:
    """What a node's op needs besides its sources to be read: a reduce's axes, a cast's dtype, a constant."""
    if base.op is Op.CONST:
        return repr(base.arg)
    if base.op in (Op.SUM, Op.RMAX) or base.op is Op.CAST:
        return str(base.arg)
    return ""


_whole_program = None


def capture_whole_program(path: str) -> None:
    """LAZYGRAD_VIZ=path: capture from now until the program exits, then write the page."""
    global _whole_program
    if _whole_program is not None:
        return
    _whole_program = capture(path)
    _whole_program.__enter__()

    def finish():
        _whole_program.__exit__(None, None, None)
        print(f"lazygrad.viz: wrote {path}")

    atexit.register(finish)

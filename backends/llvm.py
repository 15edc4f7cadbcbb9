"""The CPU backend: linear IR -> LLVM IR text -> machine code through llvmlite, run on all cores.

Each kernel is `void name(ptr buf0, ptr buf1, ..., i32 start, i32 end)`; the outermost global loop
runs from start to end, so the native thread pool (NativePool) splits it, calling every kernel through its
`name_task(ptr args, i32 start, i32 end)` wrapper (ctypes releases the GIL during each call).
Loops are do-while with phi counters; accumulators live in allocas that LLVM promotes to registers.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import math
import os
import queue
import re
import struct
import subprocess
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm
import numpy as np

from lazygrad import config, diskcache
from lazygrad import dtype as dt
from lazygrad.backends import Capabilities, CompileError, HostMemory, compile_failure
from lazygrad.backends.llvm_worker import compile_to_object
from lazygrad.codegen.ir import INDEX_ARITHMETIC, Program
from lazygrad.ops import IrOp, Op

# --- rendering --------------------------------------------------------------------------------
_MEM_TYPE = {
    "bool": "i8",
    "uint8": "i8",
    "int8": "i8",
    "int16": "i16",
    "int32": "i32",
    "int64": "i64",
    "float16": "half",
    "float32": "float",
    "float64": "double",
}
_REG_TYPE = dict(_MEM_TYPE, bool="i1")
_INTRINSIC_SUFFIX = {"half": "f16", "float": "f32", "double": "f64"}


def _ty(d: dt.DType, vec: int = 1) -> str:
    return _REG_TYPE[d.name] if vec == 1 else f"<{vec} x {_REG_TYPE[d.name]}>"


def _mem_ty(d: dt.DType, vec: int = 1) -> str:
    return _MEM_TYPE[d.name] if vec == 1 else f"<{vec} x {_MEM_TYPE[d.name]}>"


def _suffix(d: dt.DType, vec: int = 1, memory: bool = False) -> str:
    """Intrinsic name suffix: f32, v16f32, i32, v16i1, ..."""
    t = (_MEM_TYPE if memory else _REG_TYPE)[d.name]
    base = _INTRINSIC_SUFFIX.get(t, t)
    return base if vec == 1 else f"v{vec}{base}"


def _float_literal(value: float, d: dt.DType) -> str:
    # LLVM wants floats as the hex of the double with the same value, exactly representable in d
    if d == dt.float32:
        value = float(np.float32(value))
    elif d == dt.float16:
        value = float(np.float16(value))
    return "0x" + struct.pack(">d", value).hex().upper()


def _const(value, d: dt.DType) -> str:
    if d == dt.bool_:
        return "true" if value else "false"
    if d.is_float:
        return _float_literal(float(value), d)
    return str(int(value))


def _hreduce_run(uops: list, start: int) -> list:
    """The float horizontal sums (or maxima) of equal vectors that follow one another from `start` (a register tile's
    accumulators after a reduce with lanes along it), as many as the largest power of two that is at most the
    vector width and the run's length; [] when uops[start] is not one."""
    first = uops[start]
    if first.op is not IrOp.HREDUCE or not first.dtype.is_float or first.arg not in (Op.ADD, Op.MAX):
        return []
    width = first.srcs[0].vec
    if width < 2 or width & (width - 1):  # the tree halves blocks of lanes
        return []
    run = [first]
    for u in uops[start + 1 : start + width]:
        if u.op is not IrOp.HREDUCE or u.dtype != first.dtype or u.arg is not first.arg or u.srcs[0].vec != width:
            break
        run.append(u)
    return run[: 1 << (len(run).bit_length() - 1)]


class _Renderer:
    def __init__(self, program: Program, task: bool = True):
        self.p = program
        self.task = task  # also render the thread pool's wrapper (render_task)
        self.lines: list = []
        self.entry: list = []
        self.names: dict = {}  # UOp id -> SSA value text
        self.declares: set = set()
        self.block = "entry"
        self.tmp = 0
        self.loops: dict = {}  # range id -> (header label, phi placeholder index, start value)
        self.ifs: list = []  # the labels after the open conditional blocks
        # Float ops whose result is rounded to half. They carry no `contract` flag: where the CPU has half
        # arithmetic (AVX512-FP16), LLVM narrows them to half and would fuse a multiply and an add across
        # the rounding point into one FMA, rounding once where PyTorch rounds twice. Without the flag the
        # result is the same on every host.
        self.rounded_to_half = {
            u.srcs[0].id for u in program.uops if u.op is Op.CAST and u.dtype == dt.float16 and u.srcs
        }

    def fresh(self, hint="t") -> str:
        self.tmp += 1
        return f"%{hint}{self.tmp}"

    def emit(self, text: str):
        self.lines.append("  " + text)

    def val(self, u) -> str:
        if u.op is IrOp.CONST:
            return _const(u.arg, u.dtype)
        if u.op is IrOp.ACC:  # read the accumulator's current value
            name = self.fresh("a")
            self.emit(f"{name} = load {_ty(u.dtype, u.vec)}, ptr {self.names[u.id]}")
            return name
        return self.names[u.id]

    def intrinsic(self, name: str, d: dt.DType, nargs: int, vec: int = 1) -> str:
        t = _ty(d, vec)
        fn = f"@llvm.{name}.{_suffix(d, vec)}"
        self.declares.add(f"declare {t} {fn}({', '.join([t] * nargs)})")
        return fn

    def declare(self, text: str):
        self.declares.add(text)

    def splat(self, value: str, d: dt.DType, vec: int) -> str:
        if value[0] != "%":  # a literal
            return "<" + ", ".join(f"{_ty(d)} {value}" for _ in range(vec)) + ">"
        one, out = self.fresh("ins"), self.fresh("spl")
        self.emit(f"{one} = insertelement <{vec} x {_ty(d)}> poison, {_ty(d)} {value}, i32 0")
        self.emit(
            f"{out} = shufflevector <{vec} x {_ty(d)}> {one}, <{vec} x {_ty(d)}> poison, <{vec} x i32> zeroinitializer"
        )
        return out

    def lane_mask(self, valid, vec: int) -> str:
        """An <vec x i1> mask from a valid UOp (scalar or vector), or all lanes on."""
        if valid is None:
            return self.splat("true", dt.bool_, vec)
        v = self.val(valid)
        return v if valid.vec == vec else self.splat(v, dt.bool_, vec)

    def render(self) -> str:
        p = self.p
        # noalias on memory another argument shares (an assign's target the kernel reads) would be undefined
        params = [f"ptr{'' if i in p.aliased else ' noalias'} align 16 %buf{i}" for i in range(len(p.buffer_dtypes))]
        params += [f"i32 %var_{name}" for name in p.variables]  # run-time sizes and offsets (lazygrad.Variable)
        params += ["i32 %start", "i32 %end"]
        self.first_global = True
        uops, i = p.uops, 0
        while i < len(uops):
            u = uops[i]
            run = _hreduce_run(uops, i)
            if len(run) > 1:  # a register tile's accumulators, each summed across its lanes: one tree for all
                self.render_hreduce_tree(run)
                i += len(run)
                continue
            handler = _STRUCTURE.get(u.op)
            if handler is not None:
                handler(self, u)
            else:
                self.names[u.id] = self.render_alu(u)
            i += 1
        body = "\n".join(self.lines)
        head = f"define void @{p.name}({', '.join(params)}) #0 {{\nentry:\n" + "\n".join(self.entry)
        kernel = head + "\n" + body + "\n  ret void\n}\n"
        if not self.task:
            attrs = 'attributes #0 = { nounwind "no-trapping-math"="true" }'
            return "\n".join(sorted(self.declares)) + "\n\n" + kernel + attrs + "\n"
        # noinline: the task wrapper calls the kernel, which would otherwise be compiled twice
        attrs = 'attributes #0 = { nounwind noinline "no-trapping-math"="true" }'
        return "\n".join(sorted(self.declares)) + "\n\n" + kernel + self.render_task() + attrs + "\n"

    def render_task(self) -> str:
        """`void <name>_task(ptr args, i32 start, i32 end)`: the kernel with its buffers' addresses and then its
        Variables' values in an array of 8-byte slots, the one signature the thread pool calls every kernel by."""
        p, lines, args = self.p, [], []
        for i in range(len(p.buffer_dtypes)):
            lines += [f"  %slot{i} = getelementptr i64, ptr %args, i64 {i}", f"  %buf{i} = load ptr, ptr %slot{i}"]
            args.append(f"ptr %buf{i}")
        for j, name in enumerate(p.variables, start=len(p.buffer_dtypes)):  # a Variable's value: an int64 slot
            lines += [
                f"  %slot{j} = getelementptr i64, ptr %args, i64 {j}",
                f"  %wide{j} = load i64, ptr %slot{j}",
                f"  %var_{name} = trunc i64 %wide{j} to i32",
            ]
            args.append(f"i32 %var_{name}")
        args += ["i32 %start", "i32 %end"]
        lines.append(f"  call void @{p.name}({', '.join(args)})")
        return (
            f"define void @{p.name}_task(ptr %args, i32 %start, i32 %end) #0 {{\nentry:\n"
            + "\n".join(lines)
            + "\n  ret void\n}\n"
        )

    def render_param(self, u):
        self.names[u.id] = f"%buf{u.arg[0]}"

    def render_const(self, u):
        pass  # a literal, written where it is used (`val`)

    def render_variable(self, u):
        self.names[u.id] = f"%var_{u.arg[0]}"

    def render_range(self, u):
        name, size, kind = u.arg
        lo, hi = ("%start", "%end") if (kind == "global" and self.first_global) else ("0", str(size))
        if u.srcs:  # a run-time bound (at least 1: the loop below runs its body before the test)
            hi = self.val(u.srcs[0])
        if kind == "global":
            self.first_global = False
        pred = self.block
        header = f"L{u.id}"
        self.emit(f"br label %{header}")
        self.lines.append(f"{header}:")
        self.block = header
        phi_index = len(self.lines)
        self.lines.append("")  # the phi, filled in at endrange when the latch block is known
        self.names[u.id] = f"%i{u.id}"
        self.loops[u.id] = (header, phi_index, lo, pred, hi)

    def render_endrange(self, u):
        r = u.srcs[0]
        header, phi_index, lo, pred, hi = self.loops[r.id]
        nxt, cond = self.fresh("next"), self.fresh("cond")
        self.emit(f"{nxt} = add nuw nsw i32 %i{r.id}, 1")
        self.emit(f"{cond} = icmp slt i32 {nxt}, {hi}")
        latch = self.block
        self.lines[phi_index] = f"  %i{r.id} = phi i32 [{lo}, %{pred}], [{nxt}, %{latch}]"
        exit_label = f"X{r.id}"
        self.emit(f"br i1 {cond}, label %{header}, label %{exit_label}")
        self.lines.append(f"{exit_label}:")
        self.block = exit_label

    def render_if(self, u):
        then, after = f"T{u.id}", f"F{u.id}"
        self.emit(f"br i1 {self.val(u.srcs[0])}, label %{then}, label %{after}")
        self.lines.append(f"{then}:")
        self.block = then
        self.ifs.append(after)

    def render_endif(self, u):
        after = self.ifs.pop()
        self.emit(f"br label %{after}")
        self.lines.append(f"{after}:")
        self.block = after

    def render_acc(self, u):
        slot = f"%acc{u.id}"
        t = _ty(u.dtype, u.vec)
        self.entry.append(f"  {slot} = alloca {t}")
        self.names[u.id] = slot
        init = _const(u.arg, u.dtype)
        self.emit(f"store {t} {init if u.vec == 1 else self.splat(init, u.dtype, u.vec)}, ptr {slot}")

    def render_acc_update(self, u):
        acc, value = u.srcs
        self.emit(f"store {_ty(acc.dtype, acc.vec)} {self.val(value)}, ptr {self.names[acc.id]}")

    def render_lanes(self, u):
        self.names[u.id] = "<" + ", ".join(f"i32 {i}" for i in range(u.vec)) + ">"

    def render_broadcast(self, u):
        self.names[u.id] = self.splat(self.val(u.srcs[0]), u.dtype, u.vec)

    def _address(self, buf, index_uop, valid) -> tuple:
        mem = _MEM_TYPE[buf.dtype.name]
        index = self.val(index_uop)
        if valid is not None:  # masked-out elements read index 0, which always exists
            safe = self.fresh("safe")
            self.emit(f"{safe} = select i1 {self.val(valid)}, i32 {index}, i32 0")
            index = safe
        ptr = self.fresh("p")
        self.emit(f"{ptr} = getelementptr inbounds {mem}, ptr {self.names[buf.id]}, i32 {index}")
        return ptr, mem

    def render_load(self, u):
        if u.vec > 1:
            return self.render_vector_load(u)
        buf, index_uop = u.srcs[0], u.srcs[1]
        valid = u.srcs[2] if len(u.srcs) > 2 else None
        ptr, mem = self._address(buf, index_uop, valid)
        raw = self.fresh("v")
        self.emit(f"{raw} = load {mem}, ptr {ptr}")
        value = raw
        if u.dtype == dt.bool_:
            value = self.fresh("b")
            self.emit(f"{value} = icmp ne i8 {raw}, 0")
        if valid is not None:
            out = self.fresh("m")
            zero = _const(False if u.dtype == dt.bool_ else 0, u.dtype)
            self.emit(f"{out} = select i1 {self.val(valid)}, {_ty(u.dtype)} {value}, {_ty(u.dtype)} {zero}")
            value = out
        self.names[u.id] = value

    def _from_memory(self, raw: str, d: dt.DType, vec: int) -> str:
        if d != dt.bool_:
            return raw
        out = self.fresh("b")
        self.emit(f"{out} = icmp ne {_mem_ty(d, vec)} {raw}, zeroinitializer")
        return out

    def _to_memory(self, value: str, d: dt.DType, vec: int) -> str:
        if d != dt.bool_:
            return value
        out = self.fresh("z")
        self.emit(f"{out} = zext {_ty(d, vec)} {value} to {_mem_ty(d, vec)}")
        return out

    def render_vector_load(self, u):
        """vec consecutive elements from the lane-0 index; masked lanes touch no memory."""
        if isinstance(u.arg, tuple):
            return self.render_offsets_load(u)
        buf, index = u.srcs[0], u.srcs[1]
        valid = u.srcs[2] if len(u.srcs) > 2 else None
        stride = u.arg or 1  # lane i reads index + i*stride: load stride*vec elements, keep every stride-th
        wide = u.vec * stride
        mt, vt, align = _mem_ty(u.dtype, wide), _mem_ty(u.dtype), u.dtype.itemsize
        ptr, raw = self.fresh("p"), self.fresh("v")
        self.emit(f"{ptr} = getelementptr {vt}, ptr {self.names[buf.id]}, i32 {self.val(index)}")
        if valid is None:
            self.emit(f"{raw} = load {mt}, ptr {ptr}, align {align}")
        else:
            fn = f"@llvm.masked.load.{_suffix(u.dtype, wide, memory=True)}.p0"
            self.declare(f"declare {mt} {fn}(ptr, i32, <{wide} x i1>, {mt})")
            mask = self.lane_mask(valid, u.vec)
            if stride > 1:  # lane i's mask bit at element i*stride; the elements between are not read
                spread = self.fresh("mask")
                picks = ", ".join(f"i32 {j // stride if j % stride == 0 else u.vec}" for j in range(wide))
                self.emit(
                    f"{spread} = shufflevector <{u.vec} x i1> {mask}, <{u.vec} x i1> zeroinitializer, "
                    f"<{wide} x i32> <{picks}>"
                )
                mask = spread
            self.emit(f"{raw} = call {mt} {fn}(ptr {ptr}, i32 {align}, <{wide} x i1> {mask}, {mt} zeroinitializer)")
        if stride > 1:
            kept = self.fresh("strided")
            picks = ", ".join(f"i32 {i * stride}" for i in range(u.vec))
            self.emit(f"{kept} = shufflevector {mt} {raw}, {mt} poison, <{u.vec} x i32> <{picks}>")
            raw = kept
        self.names[u.id] = self._from_memory(raw, u.dtype, u.vec)

    def render_offsets_load(self, u):
        """Lane i reads index + offsets[i] (constants, within two vectors): one contiguous masked load of
        the span and a shuffle. An element is read only if a valid lane wants it."""
        buf, index = u.srcs[0], u.srcs[1]
        valid = u.srcs[2] if len(u.srcs) > 2 else None
        offsets, vec = u.arg, u.vec
        wide = vec if max(offsets) < vec else 2 * vec
        mt, vt, align = _mem_ty(u.dtype, wide), _mem_ty(u.dtype), u.dtype.itemsize
        wanted = [[lane for lane, o in enumerate(offsets) if o == j] for j in range(wide)]
        lane_mask = None if valid is None else self.lane_mask(valid, vec)
        if valid is None:
            mask = "<" + ", ".join(f"i1 {'true' if w else 'false'}" for w in wanted) + ">"
        else:  # element j is read if any lane that wants it is valid: OR over the lanes, one layer at a time
            mask = None
            for layer in range(max(len(w) for w in wanted)):
                picks = ", ".join(f"i32 {w[layer] if layer < len(w) else vec}" for w in wanted)
                part = self.fresh("mask")
                self.emit(
                    f"{part} = shufflevector <{vec} x i1> {lane_mask}, <{vec} x i1> zeroinitializer, "
                    f"<{wide} x i32> <{picks}>"
                )
                if mask is not None:
                    both = self.fresh("mask")
                    self.emit(f"{both} = or <{wide} x i1> {mask}, {part}")
                    part = both
                mask = part
        fn = f"@llvm.masked.load.{_suffix(u.dtype, wide, memory=True)}.p0"
        self.declare(f"declare {mt} {fn}(ptr, i32, <{wide} x i1>, {mt})")
        ptr, raw, out = self.fresh("p"), self.fresh("v"), self.fresh("spread")
        self.emit(f"{ptr} = getelementptr {vt}, ptr {self.names[buf.id]}, i32 {self.val(index)}")
        self.emit(f"{raw} = call {mt} {fn}(ptr {ptr}, i32 {align}, <{wide} x i1> {mask}, {mt} zeroinitializer)")
        picks = ", ".join(f"i32 {o}" for o in offsets)
        self.emit(f"{out} = shufflevector {mt} {raw}, {mt} poison, <{vec} x i32> <{picks}>")
        value = self._from_memory(out, u.dtype, vec)
        if valid is not None:  # a lane whose element another lane made readable must still read 0
            masked = self.fresh("m")
            zero = _const(False if u.dtype == dt.bool_ else 0, u.dtype)
            self.emit(
                f"{masked} = select <{vec} x i1> {lane_mask}, {_ty(u.dtype, vec)} {value}, "
                f"{_ty(u.dtype, vec)} {self.splat(zero, u.dtype, vec)}"
            )
            value = masked
        self.names[u.id] = value

    def _pointers(self, buf, index) -> str:
        ptrs = self.fresh("ps")
        self.emit(
            f"{ptrs} = getelementptr {_mem_ty(buf.dtype)}, ptr {self.names[buf.id]}, "
            f"<{index.vec} x i32> {self.val(index)}"
        )
        return ptrs

    def render_gather(self, u):
        buf, index = u.srcs[0], u.srcs[1]
        valid = u.srcs[2] if len(u.srcs) > 2 else None
        mt, vec = _mem_ty(u.dtype, u.vec), u.vec
        fn = f"@llvm.masked.gather.{_suffix(u.dtype, vec, memory=True)}.v{vec}p0"
        self.declare(f"declare {mt} {fn}(<{vec} x ptr>, i32, <{vec} x i1>, {mt})")
        ptrs, raw = self._pointers(buf, index), self.fresh("g")
        mask = self.lane_mask(valid, vec)
        self.emit(
            f"{raw} = call {mt} {fn}(<{vec} x ptr> {ptrs}, i32 {u.dtype.itemsize}, <{vec} x i1> {mask}, "
            f"{mt} zeroinitializer)"
        )
        self.names[u.id] = self._from_memory(raw, u.dtype, vec)

    def render_vector_store(self, u):
        buf, index, value = u.srcs
        ptr = self.fresh("p")
        self.emit(f"{ptr} = getelementptr {_mem_ty(buf.dtype)}, ptr {self.names[buf.id]}, i32 {self.val(index)}")
        v = self._to_memory(self.val(value), buf.dtype, value.vec)
        self.emit(f"store {_mem_ty(buf.dtype, value.vec)} {v}, ptr {ptr}, align {buf.dtype.itemsize}")

    def render_scatter(self, u):
        buf, index, value = u.srcs
        vec, mt = value.vec, _mem_ty(buf.dtype, value.vec)
        fn = f"@llvm.masked.scatter.{_suffix(buf.dtype, vec, memory=True)}.v{vec}p0"
        self.declare(f"declare void {fn}({mt}, <{vec} x ptr>, i32, <{vec} x i1>)")
        ptrs = self._pointers(buf, index)
        v = self._to_memory(self.val(value), buf.dtype, vec)
        self.emit(
            f"call void {fn}({mt} {v}, <{vec} x ptr> {ptrs}, i32 {buf.dtype.itemsize}, "
            f"<{vec} x i1> {self.lane_mask(None, vec)})"
        )

    def refuse_work_groups(self, u):
        raise CompileError(
            f"kernel {self.p.name}: {u.op} needs work-groups, which the LLVM backend does not have (its capabilities "
            "declare group_reduce=0, so the heuristics never ask for them; forced KernelOptions did)"
        )

    def render_prefetch(self, u):
        """The cache line of element index + offset fetched into every cache level (a read, kept). The index's
        address is the load's (LLVM shares it), the offset a constant that folds into the prefetch's addressing.
        Neither is `inbounds`: the element may lie past the buffer's end, which a prefetch may (it never faults)."""
        buf, index = u.srcs
        ty, at, ahead = _mem_ty(buf.dtype), self.fresh("p"), self.fresh("p")
        self.emit(f"{at} = getelementptr {ty}, ptr {self.names[buf.id]}, i32 {self.val(index)}")
        self.emit(f"{ahead} = getelementptr {ty}, ptr {at}, i64 {u.arg}")
        self.declare("declare void @llvm.prefetch.p0(ptr, i32, i32, i32)")
        self.emit(f"call void @llvm.prefetch.p0(ptr {ahead}, i32 0, i32 3, i32 1)")

    def render_hreduce(self, u):
        (src,) = u.srcs
        d, vec, out = u.dtype, src.vec, self.fresh("h")
        vt = _ty(d, vec)
        self.names[u.id] = out
        if d.is_float and u.arg is Op.ADD:
            fn = f"@llvm.vector.reduce.fadd.{_suffix(d, vec)}"
            self.declare(f"declare {_ty(d)} {fn}({_ty(d)}, {vt})")
            self.emit(f"{out} = call reassoc {_ty(d)} {fn}({_ty(d)} {_const(-0.0, d)}, {vt} {self.val(src)})")
            return
        if d.is_float:
            name = "fmaximum"
        elif d == dt.bool_:
            name = "or"
        else:
            name = "add" if u.arg is Op.ADD else ("umax" if d.kind == "u" else "smax")
        fn = f"@llvm.vector.reduce.{name}.{_suffix(d, vec)}"
        self.declare(f"declare {_ty(d)} {fn}({vt})")
        self.emit(f"{out} = call {_ty(d)} {fn}({vt} {self.val(src)})")

    def render_hreduce_tree(self, run: list):
        """The lanes of n vectors (n a power of two, at most their width) each combined into a scalar, as one tree:
        each level pairs the vectors and adds the lower halves of a pair's blocks to their upper halves, so that one
        vector holds the partial sums of both (2 shuffles and 1 add per pair), until one vector holds every source in
        a block of its own; then each block is halved within that vector. A 4x4 tile's 16 sums of 16 lanes: 30
        shuffles and 15 adds, where one reduction each is 16 x (4 shuffles + 4 adds): attention's scores, lanes
        along a reduce of 64, 2.6 -> 2.0 ms (one thread). (`reassoc`, like the single
        reduction's: the order of the lanes' sum is the renderer's to choose.)"""
        d, width, op = run[0].dtype, run[0].srcs[0].vec, run[0].arg
        vt = _ty(d, width)
        maximum = None if op is Op.ADD else self.intrinsic("maximum", d, 2, width)

        def combine(a: str, b: str) -> str:
            out = self.fresh("ht")
            if maximum is None:
                self.emit(f"{out} = fadd reassoc {vt} {a}, {b}")
            else:
                self.emit(f"{out} = call {vt} {maximum}({vt} {a}, {vt} {b})")
            return out

        def shuffle(a: str, b: str, lanes: list) -> str:
            out = self.fresh("hs")
            mask = ", ".join(f"i32 {lane}" for lane in lanes)
            self.emit(f"{out} = shufflevector {vt} {a}, {vt} {b}, <{width} x i32> <{mask}>")
            return out

        level = [(self.val(u.srcs[0]), [u]) for u in run]  # (vector, the sources of its blocks in order)
        block = width
        while len(level) > 1:
            half = block // 2
            lower, upper = [], []
            for j in range(0, width, block):  # block j of x, then of y: x's lanes 0..width-1, y's width..2*width-1
                lower += [j + t for t in range(half)] + [width + j + t for t in range(half)]
                upper += [j + half + t for t in range(half)] + [width + j + half + t for t in range(half)]
            paired = []
            for (x, xs), (y, ys) in zip(level[0::2], level[1::2]):
                summed = combine(shuffle(x, y, lower), shuffle(x, y, upper))
                paired.append((summed, [s for pair in zip(xs, ys) for s in pair]))
            level, block = paired, half
        vector, sources = level[0]
        span = block
        while span > 1:  # within each block: its upper half onto its lower half
            half = span // 2
            lanes = [j + t + half if t < half else j + t for j in range(0, width, block) for t in range(block)]
            vector = combine(vector, shuffle(vector, "poison", lanes))
            span = half
        for j, u in enumerate(sources):
            out = self.fresh("h")
            self.emit(f"{out} = extractelement {vt} {vector}, i32 {j * block}")
            self.names[u.id] = out

    def render_store(self, u):
        if u.srcs[2].vec > 1:
            return self.render_vector_store(u)
        buf, index_uop, value = u.srcs
        ptr, mem = self._address(buf, index_uop, None)
        v = self.val(value)
        if buf.dtype == dt.bool_:
            wide = self.fresh("z")
            self.emit(f"{wide} = zext i1 {v} to i8")
            v = wide
        self.emit(f"store {mem} {v}, ptr {ptr}")

    def render_alu(self, u) -> str:
        out = self.fresh("r")
        self.emit(f"{out} = {_ALU[u.op](self, u, [self.val(s) for s in u.srcs])}")
        return out

    def contract(self, u) -> str:
        """The flag that lets LLVM fuse a float multiply and add into an FMA, except at a float16 rounding point."""
        return "" if u.id in self.rounded_to_half else " contract"


# --- the ALU table: each elementwise primitive as an LLVM instruction (its text after `%out = `) ---------------
def _arithmetic(signed: str, unsigned: str | None = None, float_op: str | None = None):
    """An instruction named by the operands' kind: signed (and bool) ints, unsigned ints, floats."""

    def render(r: _Renderer, u, a: list) -> str:
        kind = u.srcs[0].dtype.kind
        if kind == "f":
            if float_op is None:
                raise NotImplementedError(f"LLVM renderer: {u.op} on {u.srcs[0].dtype.name}")
            name = float_op + r.contract(u)
        else:
            name = unsigned if kind in "ub" and unsigned else signed
            if u.arg == INDEX_ARITHMETIC:  # an index: never overflows, so LLVM may widen it and fold its offsets
                name += " nsw"
        return f"{name} {_ty(u.dtype, u.vec)} {a[0]}, {a[1]}"

    return render


def _division(signed: str, unsigned: str):
    """Integer division and remainder with a divisor of 0 taken as 1 (x / 0 is x, x % 0 is 0). Dividing by zero is
    undefined behaviour in LLVM, and the lowering also computes padded positions, where a masked load reads 0: LLVM
    then assumed those positions valid and dropped the pad's select (wrong values, found by op_db's scatter_reduce
    mean on int64). Constant divisors (index arithmetic) fold the guard away."""

    def render(r: _Renderer, u, a: list) -> str:
        t = _ty(u.dtype, u.vec)
        zero, one = ("0", "1") if u.vec == 1 else ("zeroinitializer", r.splat("1", u.dtype, u.vec))
        is_zero, divisor = r.fresh("z"), r.fresh("d")
        r.emit(f"{is_zero} = icmp eq {t} {a[1]}, {zero}")
        r.emit(f"{divisor} = select {_ty(dt.bool_, u.vec)} {is_zero}, {t} {one}, {t} {a[1]}")
        return f"{unsigned if u.srcs[0].dtype.kind in 'ub' else signed} {t} {a[0]}, {divisor}"

    return render


def _compare(float_predicate: str, signed: str, unsigned: str):
    def render(r: _Renderer, u, a: list) -> str:
        source = u.srcs[0].dtype
        if source.is_float:
            return f"fcmp {float_predicate} {_ty(source, u.vec)} {a[0]}, {a[1]}"
        return f"icmp {unsigned if source.kind in 'ub' else signed} {_ty(source, u.vec)} {a[0]}, {a[1]}"

    return render


def _maximum(r: _Renderer, u, a: list) -> str:
    d, vec, t = u.dtype, u.vec, _ty(u.dtype, u.vec)
    if d.is_float:  # llvm.maximum propagates NaN, as PyTorch's maximum does
        return f"call {t} {r.intrinsic('maximum', d, 2, vec)}({t} {a[0]}, {t} {a[1]})"
    if d == dt.bool_:
        return f"or {t} {a[0]}, {a[1]}"
    greater = r.fresh("c")
    r.emit(f"{greater} = icmp {'ugt' if d.kind == 'u' else 'sgt'} {t} {a[0]}, {a[1]}")
    return f"select {_ty(dt.bool_, vec)} {greater}, {t} {a[0]}, {t} {a[1]}"


def _negate(r: _Renderer, u, a: list) -> str:
    t = _ty(u.dtype, u.vec)
    return f"fneg {t} {a[0]}" if u.dtype.is_float else f"sub {t} zeroinitializer, {a[0]}"


def _reciprocal(r: _Renderer, u, a: list) -> str:
    one = _const(1.0, u.dtype)
    return f"fdiv {_ty(u.dtype, u.vec)} {one if u.vec == 1 else r.splat(one, u.dtype, u.vec)}, {a[0]}"


# 2**f on [-0.5, 0.5]: Taylor coefficients ln(2)**k / k!; the degree-7 remainder is below 6e-9, under float32's
# rounding, so the result is within about 2 ulp of the exact value
_EXP2_COEFFICIENTS = tuple(math.log(2) ** k / math.factorial(k) for k in range(8))


def _exp2(r: _Renderer, u, a: list) -> str:
    """exp2 on float32 as inline code: 2**round(x) built in the exponent bits times a polynomial in the rest. The
    llvm.exp2 intrinsic has no vector form on x86, so a vector of 16 became 16 calls into libm (10x the cost of the
    vector code), in every kernel with an exp: softmax, GELU, the optimizer's bias corrections. Scalars take the same
    code, so a value does not depend on whether its kernel was vectorized."""
    d, vec = u.dtype, u.vec
    if _REG_TYPE[d.name] != "float":
        t = _ty(d, vec)
        return f"call {t} {r.intrinsic('exp2', d, 1, vec)}({t} {a[0]})"
    t, it = _ty(d, vec), ("i32" if vec == 1 else f"<{vec} x i32>")
    x = a[0]

    def const(value):
        literal = _const(value, d)
        return literal if vec == 1 else r.splat(literal, d, vec)

    def int_const(value):
        return str(value) if vec == 1 else r.splat(str(value), dt.int32, vec)

    def step(text: str, hint: str = "e") -> str:
        out = r.fresh(hint)
        r.emit(f"{out} = {text}")
        return out

    cmp_t = _ty(dt.bool_, vec)
    # clamp to [-151, 129] (2**-151 rounds to 0, 2**129 is inf). Below -151 (a softmax's masked -inf) the result is
    # 0, put in at the end: computed, it would underflow, and each float underflow costs the CPU a microcode
    # assist (a causal softmax's exp, half -inf, ran 6x slower). NaN goes to 0 here and is put back at the end.
    above = step(f"fcmp ogt {t} {x}, {const(-151.0)}")
    low = step(f"select {cmp_t} {above}, {t} {x}, {t} {const(0.0)}")
    below = step(f"fcmp olt {t} {low}, {const(129.0)}")
    clamped = step(f"select {cmp_t} {below}, {t} {low}, {t} {const(129.0)}")
    whole = step(f"call {t} {r.intrinsic('rint', d, 1, vec)}({t} {clamped})")
    frac = step(f"fsub {t} {clamped}, {whole}")
    poly = const(_EXP2_COEFFICIENTS[-1])
    for c in reversed(_EXP2_COEFFICIENTS[:-1]):
        poly = step(f"fmul contract {t} {poly}, {frac}")
        poly = step(f"fadd contract {t} {poly}, {const(c)}")
    # 2**n as two factors 2**(n//2) and 2**(n - n//2), each a normal float, so results down to 2**-149 (subnormal)
    # and up to inf come out right
    n = step(f"fptosi {t} {whole} to {it}")
    half = step(f"ashr {it} {n}, {int_const(1)}")
    rest = step(f"sub {it} {n}, {half}")
    result = poly
    for part in (half, rest):
        biased = step(f"add {it} {part}, {int_const(127)}")
        bits = step(f"shl {it} {biased}, {int_const(23)}")
        scale = step(f"bitcast {it} {bits} to {t}")
        result = step(f"fmul {t} {result}, {scale}")
    result = step(f"select {cmp_t} {above}, {t} {result}, {t} {const(0.0)}")
    nan = step(f"fcmp uno {t} {x}, {x}")
    return f"select {cmp_t} {nan}, {t} {x}, {t} {result}"


def _math(name: str):
    """A float function with an LLVM intrinsic of the same name."""

    def render(r: _Renderer, u, a: list) -> str:
        t = _ty(u.dtype, u.vec)
        return f"call {t} {r.intrinsic(name, u.dtype, 1, u.vec)}({t} {a[0]})"

    return render


_ALU = {
    Op.EXP2: _exp2,
    Op.LOG2: _math("log2"),
    Op.SIN: _math("sin"),
    Op.SQRT: _math("sqrt"),
    Op.RECIP: _reciprocal,
    Op.NEG: _negate,
    Op.CAST: lambda r, u, a: _cast_instruction(u.arg, u.dtype, a[0], u.vec),
    Op.BITCAST: lambda r, u, a: f"bitcast {_ty(u.arg, u.vec)} {a[0]} to {_ty(u.dtype, u.vec)}",
    Op.ADD: _arithmetic("add", float_op="fadd"),
    Op.MUL: _arithmetic("mul", float_op="fmul"),
    Op.MAX: _maximum,
    Op.CMPLT: _compare("olt", "slt", "ult"),
    Op.CMPNE: _compare("une", "ne", "ne"),
    Op.IDIV: _division("sdiv", "udiv"),
    Op.MOD: _division("srem", "urem"),
    Op.AND: _arithmetic("and"),
    Op.OR: _arithmetic("or"),
    Op.XOR: _arithmetic("xor"),
    Op.SHL: _arithmetic("shl"),
    Op.SHR: _arithmetic("ashr", "lshr"),
    Op.WHERE: lambda r, u, a: (
        f"select {_ty(dt.bool_, u.vec)} {a[0]}, {_ty(u.dtype, u.vec)} {a[1]}, {_ty(u.dtype, u.vec)} {a[2]}"
    ),
}

# every other uop: a method of the renderer
_STRUCTURE = {
    IrOp.PARAM: _Renderer.render_param,
    IrOp.VARIABLE: _Renderer.render_variable,
    IrOp.CONST: _Renderer.render_const,
    IrOp.RANGE: _Renderer.render_range,
    IrOp.ENDRANGE: _Renderer.render_endrange,
    IrOp.IF: _Renderer.render_if,
    IrOp.ENDIF: _Renderer.render_endif,
    IrOp.ACC: _Renderer.render_acc,
    IrOp.ACC_UPDATE: _Renderer.render_acc_update,
    IrOp.LOAD: _Renderer.render_load,
    IrOp.STORE: _Renderer.render_store,
    IrOp.GATHER: _Renderer.render_gather,
    IrOp.SCATTER: _Renderer.render_scatter,
    IrOp.LANES: _Renderer.render_lanes,
    IrOp.BROADCAST: _Renderer.render_broadcast,
    IrOp.HREDUCE: _Renderer.render_hreduce,
    IrOp.PREFETCH: _Renderer.render_prefetch,
    IrOp.LOCAL_ID: _Renderer.refuse_work_groups,
    IrOp.GROUP_REDUCE: _Renderer.refuse_work_groups,
    IrOp.LOCAL: _Renderer.refuse_work_groups,
    IrOp.LOCAL_LOAD: _Renderer.refuse_work_groups,
    IrOp.LOCAL_STORE: _Renderer.refuse_work_groups,
    IrOp.BARRIER: _Renderer.refuse_work_groups,
}


def _cast_instruction(src: dt.DType, dst: dt.DType, value: str, vec: int = 1) -> str:
    s, d = _ty(src, vec), _ty(dst, vec)
    if dst == dt.bool_:
        return f"fcmp une {s} {value}, zeroinitializer" if src.is_float else f"icmp ne {s} {value}, zeroinitializer"
    if src.is_float and dst.is_float:
        return f"{'fpext' if dst.itemsize > src.itemsize else 'fptrunc'} {s} {value} to {d}"
    if src.is_float:
        return f"{'fptoui' if dst.kind == 'u' else 'fptosi'} {s} {value} to {d}"
    if dst.is_float:
        return f"{'uitofp' if src.kind in 'ub' else 'sitofp'} {s} {value} to {d}"
    if dst.itemsize == src.itemsize and src != dt.bool_:
        return f"bitcast {s} {value} to {d}"
    if dst.itemsize > src.itemsize or src == dt.bool_:
        return f"{'zext' if src.kind in 'ub' else 'sext'} {s} {value} to {d}"
    return f"trunc {s} {value} to {d}"


def render_llvm(program: Program, task: bool = True) -> str:
    """The kernel's LLVM IR; with `task`, also the wrapper the thread pool calls it by (`<name>_task`), which only a
    kernel the pool may split needs (its compile costs ~6% more: the kernel is then not inlined into it)."""
    return _Renderer(program, task).render()


# --- compiling and running ----------------------------------------------------------------------
class _LLVMCompiler:
    def __init__(self, cpu: str = ""):
        """A compiler for `cpu` (an LLVM CPU name with its own features), or for this machine when empty
        or "host"."""
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        # libm for the math calls; libgcc_s for the half <-> float conversions (__extendhfsf2,
        # __truncsfhf2) that LLVM calls on CPUs without F16C instructions
        for library in ("m", "gcc_s"):
            path = ctypes.util.find_library(library)
            if path:
                llvm.load_library_permanently(path)
        target = llvm.Target.from_default_triple()
        self.is_host = cpu in ("", "host")
        if self.is_host:
            self.cpu, self.features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
        else:
            self.cpu, self.features = cpu, ""
        self.machine = target.create_target_machine(cpu=self.cpu, features=self.features, opt=3, jit=True)
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.machine)
        self.lock = threading.Lock()
        self.target_id = f"{llvm.get_default_triple()}|{self.cpu}|{self.features}|llvmlite {llvmlite.__version__}"

    def vector_width(self) -> int:
        """float32 lanes per vector register of the target CPU."""
        if self.features:
            return 16 if "+avx512f" in self.features else 8 if "+avx2" in self.features else 4
        # a named CPU: its features are LLVM's to know, so see which registers a 16-lane add compiles to
        probe = llvm.parse_assembly(
            "define <16 x float> @probe(<16 x float> %a, <16 x float> %b) {\n"
            "  %c = fadd <16 x float> %a, %b\n  ret <16 x float> %c\n}\n"
        )
        assembly = self.machine.emit_assembly(probe)
        return 16 if "zmm" in assembly else 8 if "ymm" in assembly else 4

    def vector_registers(self) -> int:
        """Vector registers of the target CPU: 32 with AVX-512, 16 with AVX2 or SSE (x86-64)."""
        if self.features:
            return 32 if "+avx512f" in self.features else 16
        return 32 if self.vector_width() == 16 else 16

    def caches(self) -> tuple[int, int]:
        """(L1d, L2) bytes per core that register tiles and cache blocking are sized for: this machine's (read from
        Linux's sysfs), capped at the sizes the heuristics were measured with (larger caches are untested); those
        sizes for a named CPU or where the host does not say."""
        default = Capabilities()
        if not self.is_host:
            return default.l1_bytes, default.l2_bytes
        host = host_cache_sizes()
        return tuple(min(host.get(level, size), size) for level, size in ((1, default.l1_bytes), (2, default.l2_bytes)))

    def object_code(self, source: str, name: str) -> bytes:
        try:
            return compile_to_object(llvm, self.machine, source)  # the compile workers' steps exactly
        except RuntimeError as e:
            raise CompileError(compile_failure("LLVM", "LLVM IR", "ll", name, source, str(e))) from e

    def load(self, obj: bytes, *names: str) -> list:
        """Add compiled code to the process; the addresses of `names` in it."""
        with self.lock:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self.engine.finalize_object()
            return [self.engine.get_function_address(name) for name in names]


# --- compile workers: processes that compile a batch of kernels in parallel -------------------------------------
# llvmlite runs every LLVM call behind one global lock, so threads cannot compile in parallel (measured: 168 modules
# took 6.94 s on two threads, 7.05 s on one). A cold ResNet-18 step compiles ~165 modules, ~30 ms of LLVM each;
# worker processes (backends/llvm_worker.py, llvmlite alone: ~60 ms to start) compile them side by side while this
# process lowers the next ones. Their object code is byte for byte the in-process compiler's (same LLVM, CPU,
# features and passes), so the disk cache and the results cannot tell which compiled a kernel.
COMPILE_POOL_MIN_BATCH = 8  # kernels to compile at once before worker processes are started (then kept)
COMPILE_WORKER_TIMEOUT = 120.0  # seconds a worker may go without answering any job (one module takes ~30 ms)


class _CompileWorker:
    """One worker process, fed by a writer thread (a full pipe never blocks the caller) and drained by a reader
    thread (the worker never blocks on a full pipe either)."""

    def __init__(self, cpu: str, features: str):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llvm_worker.py")
        self.process = subprocess.Popen(
            [sys.executable, script, cpu, features], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.replies: dict = {}  # job number -> (status, payload)
        self.unwanted: set = set()  # job numbers whose replies nobody will ask for (dropped when they come)
        self.submitted = self.answered = 0
        self.alive = True
        self.changed = threading.Condition()
        threading.Thread(target=self._write, daemon=True, name="lazygrad-compile-writer").start()
        threading.Thread(target=self._read, daemon=True, name="lazygrad-compile-reader").start()

    def submit(self, source: str) -> int:
        self.submitted += 1
        self.requests.put(source.encode())
        return self.submitted

    def _write(self):
        try:
            while (data := self.requests.get()) is not None:
                self.process.stdin.write(struct.pack("<I", len(data)) + data)
                self.process.stdin.flush()
            self.process.stdin.close()
        except (OSError, ValueError):
            pass  # the worker is gone: the reader sees its end

    def _read(self):
        stdout = self.process.stdout
        while True:
            header = stdout.read(5)
            payload = stdout.read(struct.unpack("<BI", header)[1]) if len(header) == 5 else b""
            with self.changed:
                if len(header) < 5 or len(payload) != struct.unpack("<BI", header)[1]:
                    self.alive = False  # ended (closed by us, or died): jobs not answered are compiled in-process
                    self.changed.notify_all()
                    return
                self.answered += 1
                if self.answered in self.unwanted:
                    self.unwanted.discard(self.answered)
                else:
                    self.replies[self.answered] = (header[0], payload)
                self.changed.notify_all()

    def reply(self, job: int):
        """(status, payload) of a job, waiting for it; None when the worker ended without answering it, or when it
        answered nothing for COMPILE_WORKER_TIMEOUT seconds (then it is stopped: a process that is not the worker,
        or a hung one, must not hang the launch)."""
        with self.changed:
            progress, deadline = self.answered, time.monotonic() + COMPILE_WORKER_TIMEOUT
            while job not in self.replies and self.alive:
                if self.answered != progress:  # it answers earlier jobs: alive, and busy
                    progress, deadline = self.answered, time.monotonic() + COMPILE_WORKER_TIMEOUT
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.alive = False
                    self.process.kill()
                    break
                self.changed.wait(timeout=remaining)
            return self.replies.pop(job, None)

    def forget(self, job: int):
        with self.changed:
            if self.replies.pop(job, None) is None and job > self.answered:
                self.unwanted.add(job)

    def close(self):
        self.requests.put(None)
        self.process.kill()  # its queued jobs are not wanted any more


class CompilePool:
    """Worker processes that compile LLVM modules handed over in a batch (`submit`); `result` waits for one.
    A job a worker could not answer (LLVM refused the IR, the worker died) comes back as None and is compiled in
    this process, where its error, if any, is raised with the kernel's context."""

    def __init__(self, cpu: str, features: str, size: int):
        self.cpu, self.features, self.size = cpu, features, size
        self.workers: list[_CompileWorker] = []
        self.jobs: dict = {}  # source -> (worker, job number)
        self.pid = os.getpid()  # a forked child must not share its parent's workers (their pipes are the parent's)
        self.warned = False

    def usable(self, batch: int) -> bool:
        if self.size < 1 or os.getpid() != self.pid:
            return False
        if not self.workers:
            if batch < COMPILE_POOL_MIN_BATCH:
                return False  # starting processes for a few kernels costs more than it saves
            try:
                self.workers = [_CompileWorker(self.cpu, self.features) for _ in range(self.size)]
            except OSError as e:
                warnings.warn(
                    f"lazygrad: compile workers could not start ({e}); kernels compile one by one", stacklevel=2
                )
                self.size = 0
                return False
            atexit.register(self.close)
        return any(w.alive for w in self.workers)

    def new_batch(self) -> None:
        """Drop the jobs of the previous batch that nobody asked for (a kernel the plan guessed and then did not
        compile in that form): their replies are not kept."""
        for worker, job in self.jobs.values():
            worker.forget(job)
        self.jobs.clear()

    def submit(self, source: str) -> None:
        if source in self.jobs:
            return
        live = [w for w in self.workers if w.alive]
        if not live:
            return  # `result` finds no job: compiled in this process
        worker = min(live, key=lambda w: w.submitted - w.answered)  # the one with the shortest queue
        self.jobs[source] = (worker, worker.submit(source))

    def result(self, source: str) -> bytes | None:
        """The object code of a submitted source, or None: not submitted, or to be compiled in this process."""
        job = self.jobs.pop(source, None)
        if job is None:
            return None
        reply = job[0].reply(job[1])
        if reply is None and not self.warned:
            self.warned = True
            warnings.warn(
                "lazygrad: an LLVM compile worker ended or stopped answering; its kernels are compiled in this process",
                stacklevel=2,
            )
        return reply[1] if reply is not None and reply[0] == 0 else None

    def close(self):
        if os.getpid() != self.pid:
            return  # a forked child exiting: the workers are its parent's
        for w in self.workers:
            w.close()
        for w in self.workers:
            w.process.wait()
        self.workers = []


# --- the thread pool: native workers that spin between launches -------------------------------------------
# Waking a sleeping thread per launch (a Python pool's submit and result) cost 15-70 us on this 2-vCPU VM, where
# an idle vCPU halts; PyTorch's OpenMP workers spin between parallel regions instead. These workers run in native
# code (a ctypes call that never returns while there is work): a launch publishes its task in shared memory, every
# thread, the caller included, claims pieces of the outer loop until none are left, and the caller waits for the
# pieces claimed by others. A worker idle for SPIN_SECONDS returns to Python and sleeps on an Event until a launch
# finds it asleep; that launch runs without it (the caller claims every piece), so a late or descheduled worker
# never holds a launch up, and a process forked without its workers still runs every launch, alone.
_POOL_IR = """
@task_fn = internal global ptr null
@task_args = internal global ptr null
@task_outer = internal global i32 0
@task_pieces = internal global i32 0
@generation = internal global i32 0
; (generation << 32) | pieces not yet claimed: a claim is one compare-and-swap, and names its launch
@claim = internal global i64 0, align 64
@pending = internal global i32 0, align 64
@lazygrad_pool_sleepers = global i32 0, align 64

declare i32 @sched_yield()
{pause_declare}

define internal void @pause() alwaysinline {{
  {pause_call}
  ret void
}}

; run pieces of launch `gen` until none is left to claim
define internal void @claim_and_run(i32 %gen) {{
entry:
  br label %look
look:
  %word = load atomic i64, ptr @claim acquire, align 8
  %word_gen64 = lshr i64 %word, 32
  %word_gen = trunc i64 %word_gen64 to i32
  %left = trunc i64 %word to i32
  %same = icmp eq i32 %word_gen, %gen
  %some = icmp ne i32 %left, 0
  %ok = and i1 %same, %some
  br i1 %ok, label %try, label %done
try:
  %taken = sub i64 %word, 1
  %pair = cmpxchg ptr @claim, i64 %word, i64 %taken acq_rel acquire
  %won = extractvalue {{ i64, i1 }} %pair, 1
  br i1 %won, label %run, label %look
run:
  ; the task stays as published while a claimed piece is unfinished: the caller waits for it
  %piece = sub i32 %left, 1
  %fn = load ptr, ptr @task_fn
  %args = load ptr, ptr @task_args
  %outer = load i32, ptr @task_outer
  %pieces = load i32, ptr @task_pieces
  %o = zext i32 %outer to i64
  %p = zext i32 %piece to i64
  %n = zext i32 %pieces to i64
  %lo_num = mul i64 %o, %p
  %lo64 = udiv i64 %lo_num, %n
  %p1 = add i64 %p, 1
  %hi_num = mul i64 %o, %p1
  %hi64 = udiv i64 %hi_num, %n
  %lo = trunc i64 %lo64 to i32
  %hi = trunc i64 %hi64 to i32
  call void %fn(ptr %args, i32 %lo, i32 %hi)
  %old = atomicrmw sub ptr @pending, i32 1 release
  br label %look
done:
  ret void
}}

; the caller's side of a launch: publish, work, wait; returns whether a worker was asleep (the caller wakes it)
define i32 @lazygrad_pool_run(ptr %fn, ptr %args, i32 %outer, i32 %pieces, i64 %spins) {{
entry:
  store ptr %fn, ptr @task_fn
  store ptr %args, ptr @task_args
  store i32 %outer, ptr @task_outer
  store i32 %pieces, ptr @task_pieces
  store atomic i32 %pieces, ptr @pending monotonic, align 4
  %g0 = load i32, ptr @generation
  %gen = add i32 %g0, 1
  store i32 %gen, ptr @generation
  %gen64 = zext i32 %gen to i64
  %high = shl i64 %gen64, 32
  %count = zext i32 %pieces to i64
  %word = or i64 %high, %count
  store atomic i64 %word, ptr @claim seq_cst, align 8
  %asleep = load atomic i32, ptr @lazygrad_pool_sleepers seq_cst, align 4
  call void @claim_and_run(i32 %gen)
  br label %wait
wait:
  %i = phi i64 [0, %entry], [%i1, %spin], [0, %yield]
  %left = load atomic i32, ptr @pending acquire, align 4
  %finished = icmp eq i32 %left, 0
  br i1 %finished, label %out, label %more
more:
  %i1 = add i64 %i, 1
  %long = icmp ugt i64 %i1, %spins
  br i1 %long, label %yield, label %spin
spin:
  call void @pause()
  br label %wait
yield:
  ; a worker holding a piece was descheduled: give it the CPU
  %r = call i32 @sched_yield()
  br label %wait
out:
  ret i32 %asleep
}}

; a worker: run the pieces of every launch it sees; after `spins` idle turns count itself asleep and return the
; last launch it saw (its Python thread then waits to be woken and calls again with `resumed` set)
define i32 @lazygrad_pool_worker(i32 %seen_before, i64 %spins, i32 %resumed) {{
entry:
  %was_asleep = icmp ne i32 %resumed, 0
  br i1 %was_asleep, label %wake, label %look
wake:
  %w = atomicrmw sub ptr @lazygrad_pool_sleepers, i32 1 seq_cst
  br label %look
look:
  %seen = phi i32 [%seen_before, %entry], [%seen_before, %wake], [%seen, %spin], [%gen, %work], [%gen2, %back]
  %i = phi i64 [0, %entry], [0, %wake], [%i1, %spin], [0, %work], [0, %back]
  %word = load atomic i64, ptr @claim acquire, align 8
  %gen64 = lshr i64 %word, 32
  %gen = trunc i64 %gen64 to i32
  %new = icmp ne i32 %gen, %seen
  br i1 %new, label %work, label %idle
work:
  call void @claim_and_run(i32 %gen)
  br label %look
idle:
  %i1 = add i64 %i, 1
  %long = icmp ugt i64 %i1, %spins
  br i1 %long, label %sleep, label %spin
spin:
  call void @pause()
  br label %look
sleep:
  ; counted asleep first, then one more look: a launch either sees the count or is seen here
  %s = atomicrmw add ptr @lazygrad_pool_sleepers, i32 1 seq_cst
  %word2 = load atomic i64, ptr @claim seq_cst, align 8
  %gen2_64 = lshr i64 %word2, 32
  %gen2 = trunc i64 %gen2_64 to i32
  %new2 = icmp ne i32 %gen2, %seen
  br i1 %new2, label %back, label %out
back:
  %s2 = atomicrmw sub ptr @lazygrad_pool_sleepers, i32 1 seq_cst
  br label %look
out:
  ret i32 %seen
}}

; `spins` idle turns, for calibrating them against the clock
define void @lazygrad_pool_spin(i64 %spins) {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %word = load atomic i64, ptr @claim acquire, align 8
  call void @pause()
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, %spins
  br i1 %more, label %loop, label %out
out:
  ret void
}}
"""


class NativePool:
    """The workers (threads - 1 of them) and the launches they share (_POOL_IR)."""

    def __init__(self, compiler: _LLVMCompiler, threads: int):
        x86 = llvm.get_default_triple().startswith(("x86_64", "i686", "i386"))
        source = _POOL_IR.format(
            pause_declare="declare void @llvm.x86.sse2.pause()" if x86 else "",
            pause_call="call void @llvm.x86.sse2.pause()" if x86 else "",
        )
        key = f"llvm|{compiler.target_id}|{source}"
        obj = diskcache.get(key)
        if obj is None:
            obj = compiler.object_code(source, "lazygrad_pool")
            diskcache.put(key, obj)
        run, worker, spin = compiler.load(obj, "lazygrad_pool_run", "lazygrad_pool_worker", "lazygrad_pool_spin")
        with compiler.lock:
            sleepers = compiler.engine.get_global_value_address("lazygrad_pool_sleepers")
        self._run = ctypes.CFUNCTYPE(
            ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64
        )(run)
        self._worker = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, ctypes.c_int32)(worker)
        self._spin = ctypes.CFUNCTYPE(None, ctypes.c_int64)(spin)
        self.sleepers = ctypes.c_int32.from_address(sleepers)
        self.threads = threads
        self.spins = self._spins_per_second() * SPIN_SECONDS
        self.lock = threading.Lock()  # one launch at a time shares the workers
        self.wakeups: list = []  # one Event per worker
        self.split_launches = 0  # launches shared with the workers (tests count them)

    def _spins_per_second(self) -> float:
        self._spin(1000)
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            self._spin(20_000)
            best = min(best, time.perf_counter() - t0)
        return 20_000 / max(best, 1e-9)

    def _start(self) -> None:
        for index in range(self.threads - 1):
            wakeup = threading.Event()
            self.wakeups.append(wakeup)
            threading.Thread(target=self._work, args=(wakeup,), daemon=True, name=f"lazygrad-llvm-{index}").start()

    def _work(self, wakeup: threading.Event) -> None:
        seen, resumed, spins = 0, 0, int(self.spins)
        while True:  # the native call releases the GIL and returns only to sleep
            seen = self._worker(seen, spins, resumed)
            wakeup.wait()
            wakeup.clear()
            resumed = 1

    def run(self, task: int, args: int, outer: int, pieces: int) -> bool:
        """Launch `task` over the outer loop [0, outer) in `pieces` shared with the workers; False (nothing run)
        when another thread's launch holds the workers."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if not self.wakeups:
                self._start()
            if self.sleepers.value:  # woken now, a worker may still join this launch
                self._wake()
            if self._run(task, args, outer, pieces, int(self.spins)):
                self._wake()  # fell asleep as this launch began: up for the next
            self.split_launches += 1
        finally:
            self.lock.release()
        return True

    def _wake(self) -> None:
        for wakeup in self.wakeups:
            wakeup.set()


# a kernel that executes fewer IR operations than this runs on the calling thread alone, untimed: GPT generation's
# 1024x256 matrix-vector product (141K operations) split made generation slower (1150 -> 970 tokens/s)
PARALLEL_MIN_OPERATIONS = 200_000
# ... or that reads this many bytes: a memory-bound kernel of few vector operations (GPT's bias gradients, column sums
# of 2048 x 256-1024 floats: 65-260K operations, 0.07-0.35 ms) is timed too; generation's products (1 MiB of weights)
# stay below it
PARALLEL_MIN_BYTES = 2 << 20
# one that does more is timed on one thread over its first launches, and split among the threads from then on if
# the least of those times reached this: operation counts do not tell a memory-bound kernel's time (a 1M-element
# LayerNorm step: ~1 ms) from a product's (2.6M operations in ~150 us). With the Python pool that woke a thread per
# launch (~15 us quiet, far more on a busy machine) this was 300 us; a launch shared with spinning native workers
# costs a few microseconds, and one whose worker sleeps runs alone, so kernels from 50 us are split (GPT's LayerNorm
# and bias-gradient column sums, softmax row reductions: ~10 ms of its step on one thread)
PARALLEL_MIN_SECONDS = 50e-6
# the same for a launch from an eager step: the Python between its launches outlasts a worker's spin, so a split
# launch mostly finds the workers asleep and wakes them (~0.1 ms of 16 eager MLP launches, 1.86 -> 1.96-2.03 ms a
# step, with 50 us here; measured again with the native pool: the MLP's kernels 0.28 -> 0.80 ms a step)
EAGER_PARALLEL_MIN_SECONDS = 300e-6
# ... unless the workers are spinning (a split launch just before left them awake): then an eager launch costs what a
# replayed one does, and splits from the JIT's threshold (a ResNet-18 eager step runs ~24 kernels of 50-300 us)
EAGER_SPINNING_PARALLEL_MIN_SECONDS = PARALLEL_MIN_SECONDS
# the least of these launches counts: the first runs with cold caches, and any may be preempted
TIMED_LAUNCHES = 3
# pieces of a split kernel's outer loop per thread, claimed one at a time
PIECES_PER_THREAD = 4
# how long an idle worker spins, waiting for the next launch, before it sleeps: longer than most kernels that run
# on the calling thread alone between two split ones
SPIN_SECONDS = 100e-6

# uops that are declarations, not work done per iteration
_NOT_WORK = (IrOp.PARAM, IrOp.VARIABLE, IrOp.CONST, IrOp.RANGE, IrOp.ENDRANGE, IrOp.ENDIF, IrOp.ACC)
# uops that render to many instructions: exp2 is ~30 inline (_exp2), log2 and sin are calls into libm
_HEAVY_OPERATIONS = {Op.EXP2: 16, Op.LOG2: 16, Op.SIN: 16}


def _with_trips(uops: list):
    """(uop, how many times it runs: the product of the sizes of the ranges around it) for each uop but the ranges'
    own begin and end."""
    trips, depth = 1, []
    for u in uops:
        if u.op is IrOp.RANGE:
            depth.append(trips)
            trips *= u.arg[1]
        elif u.op is IrOp.ENDRANGE:
            trips = depth.pop()
        else:
            yield u, trips


def executed_operations(uops: list) -> int:
    """The IR operations a kernel executes: each uop counted once per iteration of the loops around it (a
    transcendental as several). A vector operation counts as one, like a scalar one (it costs about as much), so a
    kernel's count does not shrink when it is vectorized or tiled: counting loop iterations instead took a
    1M-element softmax exp (2048 x 8 iterations of 4 rows of 16 lanes) for a small kernel and ran it on one
    thread."""
    return sum(trips * _HEAVY_OPERATIONS.get(u.op, 1) for u, trips in _with_trips(uops) if u.op not in _NOT_WORK)


def loaded_bytes(uops: list) -> int:
    """The bytes a kernel's loads read (each load counted once per iteration of the loops around it, all its lanes)."""
    return sum(trips * u.vec * u.dtype.itemsize for u, trips in _with_trips(uops) if u.op in (IrOp.LOAD, IrOp.GATHER))


def _splittable(program: Program) -> bool:
    """Whether the pool may split the kernel's outer loop among threads: more than one outer iteration and at least
    PARALLEL_MIN_OPERATIONS of work (executed_operations), or PARALLEL_MIN_BYTES read (loaded_bytes)."""
    if not program.global_size or program.global_size[0] <= 1:
        return False
    return (
        executed_operations(program.uops) >= PARALLEL_MIN_OPERATIONS or loaded_bytes(program.uops) >= PARALLEL_MIN_BYTES
    )


class LLVMKernel:
    def __init__(self, backend: LLVMBackend, program: Program, source: str, address: int, task):
        self.name, self.source, self.program = program.name, source, program.summary()  # (the IR is not kept)
        nargs, nvars = len(program.buffer_dtypes), len(program.variables)
        self.fn = ctypes.CFUNCTYPE(
            None, *([ctypes.c_void_p] * nargs), *([ctypes.c_int32] * nvars), ctypes.c_int32, ctypes.c_int32
        )(address)
        self.task = task  # the same kernel, called as <name>_task(ptr args, start, end) by the pool (or None)
        self.backend = backend
        self.outer = program.global_size[0] if program.global_size else 1
        # a kernel worth splitting: its first launches time it alone (alone_times), then alone_seconds decides
        self.candidate = task is not None
        self.alone_times: list = []
        self.alone_seconds: float | None = None

    def splits(self, min_seconds: float | None = None) -> bool:
        """Whether a launch now shares the outer loop among the threads (a candidate, once timed, that ran at least
        `min_seconds` alone: PARALLEL_MIN_SECONDS unless given)."""
        min_seconds = PARALLEL_MIN_SECONDS if min_seconds is None else min_seconds
        return self.alone_seconds is not None and self.alone_seconds >= min_seconds

    def _note_alone(self, seconds: float) -> None:
        self.alone_times.append(seconds)
        if len(self.alone_times) >= TIMED_LAUNCHES:
            self.alone_seconds = min(self.alone_times)

    def bind(self, buffers: list, values: tuple = (), min_seconds: float | None = None):
        """A launcher with the arguments fixed: `launch(wait) -> seconds or None` (JIT replays). `values`: the
        Variables' values (program.variables order); `min_seconds`: the least time alone of a kernel it splits
        (PARALLEL_MIN_SECONDS unless given)."""
        address = self.backend.address
        ptrs = [address(b) for b in buffers] + list(values)
        fn, outer = self.fn, self.outer
        threads = min(self.backend.threads, outer)
        args = None  # the buffers' addresses and the Variables' values as an array, for the pool's launches
        if threads <= 1 or not self.candidate:

            def run():
                fn(*ptrs, 0, outer)
        else:
            # pieces claimed one at a time, several per thread: a thread that starts late or runs slower (another
            # process on its core) takes fewer
            args = (ctypes.c_int64 * max(1, len(ptrs)))(*ptrs)  # 8-byte slots (<name>_task reads them)
            task, args_address, pieces = self.task, ctypes.addressof(args), min(outer, threads * PIECES_PER_THREAD)
            pool = self.backend.native_pool()

            def run():
                if self.splits(min_seconds):
                    if not pool.run(task, args_address, outer, pieces):
                        fn(*ptrs, 0, outer)  # another thread's launch holds the workers
                    return
                t0 = time.perf_counter()
                fn(*ptrs, 0, outer)
                if self.alone_seconds is None:
                    self._note_alone(time.perf_counter() - t0)

        def launch(wait: bool = False):
            t0 = time.perf_counter()
            run()
            return time.perf_counter() - t0 if wait else None

        at = len(buffers)  # where the values follow the buffers' addresses

        def set_values(new_values):  # a JIT replay with other values of the Variables: the same launcher
            ptrs[at : at + len(new_values)] = new_values
            if args is not None:
                args[at : at + len(new_values)] = new_values

        launch.set_values = set_values
        launch.args = args  # (the pool reads the array by its address: it lives as long as the launcher)
        return launch

    def __call__(self, buffers: list, wait: bool = False, values: tuple = ()):
        """One launch (an eager step's), without building a launcher (`bind`'s closures cost more than a small
        kernel): called directly on the calling thread, timed alone over a candidate's first launches, or shared
        with the pool's workers once timed long enough (EAGER_PARALLEL_MIN_SECONDS)."""
        address = self.backend.address
        ptrs = [address(b) for b in buffers]
        if values:
            ptrs += values
        if not (self.candidate or wait):  # (most launches: a small kernel, untimed)
            self.fn(*ptrs, 0, self.outer)
            return None
        start = time.perf_counter()
        if self.candidate and self.backend.threads > 1 and self.outer > 1:
            alone = self.alone_seconds
            if alone is None:
                self.fn(*ptrs, 0, self.outer)
                self._note_alone(time.perf_counter() - start)
                return time.perf_counter() - start if wait else None
            if alone >= EAGER_PARALLEL_MIN_SECONDS or (
                alone >= EAGER_SPINNING_PARALLEL_MIN_SECONDS and self.backend.workers_spinning()
            ):
                args = (ctypes.c_int64 * max(1, len(ptrs)))(*ptrs)  # 8-byte slots (<name>_task reads them)
                pieces = min(self.outer, min(self.backend.threads, self.outer) * PIECES_PER_THREAD)
                if self.backend.native_pool().run(self.task, ctypes.addressof(args), self.outer, pieces):
                    return time.perf_counter() - start if wait else None
        self.fn(*ptrs, 0, self.outer)
        return time.perf_counter() - start if wait else None


def host_cache_sizes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> dict:
    """{level: bytes} of the data (or unified) caches of this machine's first core, from Linux's sysfs; the levels it
    does not state, or states in a form not understood, are left out (then the defaults hold)."""
    sizes = {}
    for index in sorted(Path(root).glob("index[0-9]*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            text = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if kind not in ("Data", "Unified") or match is None:
            continue
        size = int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2]]
        if size > 0:
            sizes[level] = size
    return sizes


class LLVMBackend(HostMemory):
    name = "llvm"
    is_gpu = False

    def __init__(self):
        self.compiler = _LLVMCompiler(config.LLVM_CPU)
        self.device_name = f"CPU ({self.compiler.cpu}, {config.THREADS} threads)"
        self.threads = max(1, config.THREADS)
        # what the code generator may use: float32 lanes per vector register of the target CPU, and cache
        # blocking (big matrix products reduce in cache-sized chunks)
        l1_bytes, l2_bytes = self.compiler.caches()
        self.capabilities = Capabilities(
            vector_width=self.compiler.vector_width(),
            cache_blocking=True,
            vector_registers=self.compiler.vector_registers(),
            l1_bytes=l1_bytes,
            l2_bytes=l2_bytes,
        )
        self._pool: NativePool | None = None  # built at the first split launch
        # worker processes for batches of new kernels (started at the first big batch)
        self._compile_pool = CompilePool(self.compiler.cpu, self.compiler.features, config.COMPILE_WORKERS)
        self._found_ahead: dict = {}
        self._addresses: dict = {}  # id(handle) -> (weak reference to it, address of its first byte)

    def workers_spinning(self) -> bool:
        """Whether the pool's workers are spinning (started, none asleep): a launch shared with them now costs a few
        microseconds, where one that must wake them costs more than a short kernel gains."""
        pool = self._pool
        return pool is not None and bool(pool.wakeups) and not pool.sleepers.value

    def native_pool(self) -> NativePool:
        if self._pool is None:
            self._pool = NativePool(self.compiler, self.threads)
        return self._pool

    # memory is host memory: numpy byte arrays, 64-byte aligned for vector loads
    def allocate(self, nbytes: int):
        # 64-byte aligned, with 64 bytes of slack after the end
        raw = np.empty(max(nbytes, 1) + 128, dtype=np.uint8)
        start = raw.ctypes.data
        offset = (-start) % 64
        handle = raw[offset : offset + max(nbytes, 1)]
        self._addresses[id(handle)] = (weakref.ref(handle), start + offset)
        return handle

    def address(self, handle) -> int:
        """The address of a buffer's memory, for a launch's arguments: remembered at allocation, since numpy's
        `.ctypes.data` costs more than a small kernel's launch (a weak reference tells a reused id apart)."""
        entry = self._addresses.get(id(handle))
        if entry is not None and entry[0]() is handle:
            return entry[1]
        return handle.ctypes.data  # an array not allocated here

    def free(self, handle, nbytes: int) -> None:
        self._addresses.pop(id(handle), None)

    def compile_ahead(self, programs: list) -> None:
        """Start compiling, in worker processes, the kernels about to be compiled one by one (`compile`), when
        enough of them are missing from the disk cache; `compile` then takes their object code from the workers."""
        pool = self._compile_pool
        pool.new_batch()
        self._found_ahead = {}  # this batch's object code found in the disk cache, for `compile` to take
        missing = []
        for program in programs:
            source = render_llvm(program, task=_splittable(program))
            key = f"llvm|{self.compiler.target_id}|{source}"
            obj = diskcache.get(key)
            if obj is None:
                missing.append(source)
            else:
                self._found_ahead[key] = obj
        if len(missing) > 1 and pool.usable(len(missing)):
            for source in missing:
                pool.submit(source)

    def compile(self, program: Program) -> LLVMKernel:
        splittable = _splittable(program)
        source = render_llvm(program, task=splittable)
        key = f"llvm|{self.compiler.target_id}|{source}"
        obj = self._found_ahead.pop(key, None) or diskcache.get(key)
        if obj is None:
            obj = self._compile_pool.result(source) or self.compiler.object_code(source, program.name)
            diskcache.put(key, obj)
        if splittable:
            address, task = self.compiler.load(obj, program.name, f"{program.name}_task")
        else:
            (address,), task = self.compiler.load(obj, program.name), None
        return LLVMKernel(self, program, source, address, task)


def create(name: str = "llvm") -> LLVMBackend:
    return LLVMBackend()

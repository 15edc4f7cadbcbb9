"""The OpenCL backend: linear IR -> OpenCL C -> a program built by the device's driver, run through pyopencl.

Each kernel is `__kernel void name(__global T* buf0, ...)` launched as a 1-D NDRange with one
work-item per output element (per upcast tile). A work-item recovers the index of every global
range from `get_global_id(0)` by div/mod, outermost first; reduce ranges are plain `for` loops.

Storage vs registers: float16 is stored as half and read/written with vload_half/vstore_half (no
cl_khr_fp16 needed), so a float16 value lives in a `float` register holding an exactly
representable half. bool is stored as `uchar` and held as `bool`; a vector of bools is a `charN`
of -1/0, the masks that OpenCL's vector comparisons produce and select() consumes.

Vectors (IR UOps with vec > 1) become OpenCL vector types, vloadN/vstoreN, and lane-by-lane code
for gathers, scatters and partly masked loads. Only CPU devices (PoCL) ask the code generator
for them (`vector_width`); GPUs get scalar code.
"""

from __future__ import annotations

import ctypes.util
import math
import os
import warnings

import numpy as np

from lazygrad import config, diskcache
from lazygrad import dtype as dt
from lazygrad.backends import Capabilities, CompileError, WorkGroupTooLarge, compile_failure
from lazygrad.codegen.ir import Program, UOp
from lazygrad.ops import IrOp, Op

# --- rendering --------------------------------------------------------------------------------
_REG_TYPE = {
    "bool": "bool",
    "uint8": "uchar",
    "int8": "char",
    "int16": "short",
    "int32": "int",
    "int64": "long",
    "float16": "float",
    "float32": "float",
    "float64": "double",
}
_MEM_TYPE = dict(_REG_TYPE, bool="uchar", float16="half")
# the type whose as_<type>() reinterprets bits; float16 goes through the helpers below instead
_BITS_TYPE = dict(_REG_TYPE, bool="uchar")
# OpenCL has no bool vectors: a vector of bools is a charN of -1 (true) and 0, what vector comparisons give
_VECTOR_ELEMENT = dict(_REG_TYPE, bool="char")
# the signed integer of each element size: the mask type select() wants for a vector of that element
_MASK_ELEMENT = {1: "char", 2: "short", 4: "int", 8: "long"}
_LANE_NAMES = "0123456789abcdef"


def _half_helpers(width: int) -> str:
    """Rounding to half precision through private memory: without cl_khr_fp16 a kernel may not hold `half`
    values, but vload_half/vstore_half may point at a ushort."""
    n = "" if width == 1 else str(width)
    return (
        f"inline float{n} round_to_half{n}(float{n} x) {{ ushort{n} h; vstore_half{n}(x, 0, (__private half*)&h); "
        f"return vload_half{n}(0, (__private half*)&h); }}\n"
    )


_HALF_BITS_HELPERS = """\
inline short half_to_bits(float x) { ushort h; vstore_half(x, 0, (__private half*)&h); return as_short(h); }
inline float bits_to_half(short b) { ushort h = as_ushort(b); return vload_half(0, (__private half*)&h); }
"""

_INT_LIMITS_MIN = {"int32": -(2**31), "int64": -(2**63)}


def _float_literal(value: float, d: dt.DType) -> str:
    """An exact C literal: hex floats carry every bit, so no decimal rounding can creep in."""
    c_type = _REG_TYPE[d.name]
    if math.isnan(value):
        return "NAN" if c_type == "float" else "(double)NAN"
    if math.isinf(value):
        text = "INFINITY" if c_type == "float" else "(double)INFINITY"
        return text if value > 0 else f"(-{text})"
    if d == dt.float16:
        value = float(np.float16(value))
    if c_type == "float":
        value = float(np.float32(value))
    text = value.hex() + ("f" if c_type == "float" else "")
    return f"({text})" if text.startswith("-") else text


def _int_literal(value: int, d: dt.DType) -> str:
    suffix = "L" if d == dt.int64 else ""
    if value == _INT_LIMITS_MIN.get(d.name):  # -2147483648 would parse as -(2147483648), a long
        return f"({value + 1}{suffix}-1{suffix})"
    text = f"{value}{suffix}"
    return f"({text})" if value < 0 else text


def _const(value, d: dt.DType) -> str:
    if d == dt.bool_:
        return "true" if value else "false"
    if d.is_float:
        return _float_literal(float(value), d)
    return _int_literal(int(value), d)


def _zero(d: dt.DType) -> str:
    return _const(False if d == dt.bool_ else 0, d)


def _type(d: dt.DType, vec: int = 1) -> str:
    """The register type of a value: `float`, `int4`, a bool vector as `char8`."""
    return _REG_TYPE[d.name] if vec == 1 else f"{_VECTOR_ELEMENT[d.name]}{vec}"


def _mask_type(d: dt.DType, vec: int) -> str:
    return f"{_MASK_ELEMENT[4 if d == dt.float16 else d.itemsize]}{vec}"


def _lane(value: str, i: int) -> str:
    return f"{value}.s{_LANE_NAMES[i]}"


def _strides(sizes: tuple) -> list:
    """Row-major strides of the global ranges inside the flat work-item id."""
    strides, running = [], 1
    for size in reversed(sizes):
        strides.append(running)
        running *= size
    return strides[::-1]


class _Renderer:
    def __init__(self, program: Program):
        self.p = program
        self.lines: list = []
        self.depth = 1
        self.names: dict = {}  # UOp id -> C expression (a variable, a parameter or a literal)
        self.loop_ranges: set = set()
        self.global_index = 0
        self.half_widths: set = set()  # widths of round_to_half helpers used
        self.uses_half_bits = False
        self.uses_double = any(d == dt.float64 for d in program.buffer_dtypes)
        self.store_only_half_casts = self._store_only_half_casts()
        self.local_declarations: list = []  # __local arrays, declared at the kernel's scope as OpenCL requires
        self.local_id = None  # the name of the work-item's index in its group

    def _store_only_half_casts(self) -> set:
        """Casts to float16 consumed only by stores: vstore_half rounds, so they need no rounding of their own."""
        consumers: dict = {}
        for u in self.p.uops:
            for s in u.srcs:
                consumers.setdefault(s.id, []).append(u)
        return {
            u.id
            for u in self.p.uops
            if u.op is Op.CAST
            and u.dtype == dt.float16
            and all(c.op in _STORES and c.srcs[2] is u for c in consumers.get(u.id, []))
        }

    def emit(self, text: str):
        self.lines.append("  " * self.depth + text)

    def define(self, u: UOp, expression: str):
        name = f"v{u.id}"
        self.emit(f"{_type(u.dtype, u.vec)} {name} = {expression};")
        self.names[u.id] = name

    def val(self, u: UOp) -> str:
        return self.names[u.id]

    def render(self) -> str:
        for u in self.p.uops:
            if u.dtype == dt.float64:
                self.uses_double = True
            handler = _STRUCTURE.get(u.op)
            if handler is not None:
                handler(self, u)
            else:
                self.define(u, _ALU[u.op](self, u, [self.val(x) for x in u.srcs]))
        written = {u.arg[0] for u in self.p.uops if u.op is IrOp.PARAM and u.arg[1]}
        written |= {u.srcs[0].arg[0] for u in self.p.uops if u.op in _STORES}
        params = []
        for i, d in enumerate(self.p.buffer_dtypes):
            const = "" if i in written else "const "  # read-only buffers may go through a read-only cache
            restrict = "" if i in self.p.aliased else " restrict"  # restrict on aliased memory is undefined
            params.append(f"__global {const}{_MEM_TYPE[d.name]}*{restrict} buf{i}")
        params += [f"int var_{name}" for name in self.p.variables]  # run-time sizes and offsets (lazygrad.Variable)
        total = math.prod(self.p.global_size)
        if self.p.local_size > 1:  # a work-group per output point, launched exactly: no work-item may leave
            # early, since every one must reach the barriers of the group's reduce
            head = [f"__kernel void {self.p.name}({', '.join(params)}) {{", "  int gid = (int)get_group_id(0);"]
            head += ["  " + line for line in self.local_declarations]
        else:
            head = [
                f"__kernel void {self.p.name}({', '.join(params)}) {{",
                "  int gid = (int)get_global_id(0);",
                f"  if (gid >= {total}) return;  // the NDRange is rounded up to whole work-groups",
            ]
        preamble = ["#pragma OPENCL EXTENSION cl_khr_fp64 : enable"] if self.uses_double else []
        preamble += [_half_helpers(w) for w in sorted(self.half_widths)]
        preamble += [_HALF_BITS_HELPERS] if self.uses_half_bits else []
        return "\n".join(preamble + head + self.lines + ["}"]) + "\n"

    def render_param(self, u: UOp):
        self.names[u.id] = f"buf{u.arg[0]}"

    def render_const(self, u: UOp):
        self.names[u.id] = _const(u.arg, u.dtype)

    def render_variable(self, u: UOp):
        self.names[u.id] = f"var_{u.arg[0]}"

    def render_endrange(self, u: UOp):
        if u.srcs[0].id in self.loop_ranges:  # a global range is no loop: nothing to close
            self.close_block()

    def render_if(self, u: UOp):
        self.emit(f"if ({self.val(u.srcs[0])}) {{")
        self.depth += 1

    def close_block(self, u: UOp | None = None):
        self.depth -= 1
        self.emit("}")

    def render_acc(self, u: UOp):
        name = f"acc{u.id}"
        self.emit(f"{_type(u.dtype, u.vec)} {name} = {self.splat(_const(u.arg, u.dtype), u.dtype, u.vec)};")
        self.names[u.id] = name

    def render_acc_update(self, u: UOp):
        acc, value = u.srcs
        self.emit(f"{self.val(acc)} = {self.val(value)};")

    def render_load(self, u: UOp):
        self.define(u, self.load_expression(u))

    def render_lanes(self, u: UOp):
        self.define(u, f"({_type(u.dtype, u.vec)})({', '.join(str(i) for i in range(u.vec))})")

    def render_broadcast(self, u: UOp):
        self.define(u, self.splat(self.val(u.srcs[0]), u.dtype, u.vec))

    def render_local_id(self, u: UOp):
        self.define(u, "(int)get_local_id(0)")
        self.local_id = self.val(u)

    def splat(self, scalar: str, d: dt.DType, vec: int) -> str:
        if vec == 1:
            return scalar
        if d == dt.bool_:
            return f"(({_type(d, vec)})({scalar} ? -1 : 0))"
        return f"(({_type(d, vec)})({scalar}))"

    def render_range(self, u: UOp):
        name, size, kind = u.arg
        var = f"{name}_{u.id}"
        self.names[u.id] = var
        if kind == "global":
            sizes = self.p.global_size
            stride = _strides(sizes)[self.global_index]
            value = "gid" if stride == 1 else f"gid / {stride}"
            if self.global_index > 0:  # the outermost index needs no wrap-around: gid < total
                value = f"({value}) % {size}"
            self.global_index += 1
            self.emit(f"int {var} = {value};")
        else:
            self.loop_ranges.add(u.id)
            bound = self.val(u.srcs[0]) if u.srcs else size  # a run-time bound: a Variable's expression
            self.emit(f"for (int {var} = 0; {var} < {bound}; {var}++) {{")
            self.depth += 1

    # --- memory ---------------------------------------------------------------------------------
    def element(self, buf: UOp, index: str, lane_of_vector: bool = False) -> str:
        """One element as a register value (a lane of a bool vector is -1/0, as the vector wants)."""
        name = self.val(buf)
        if buf.dtype == dt.float16:
            return f"vload_half({index}, {name})"
        if buf.dtype == dt.bool_:
            return f"({name}[{index}] != 0 ? -1 : 0)" if lane_of_vector else f"({name}[{index}] != 0)"
        return f"{name}[{index}]"

    def lanewise(self, d: dt.DType, vec: int, lane_values: list) -> str:
        return f"(({_type(d, vec)})({', '.join(lane_values)}))"

    def load_expression(self, u: UOp) -> str:
        buf, index = u.srcs[0], u.srcs[1]
        valid = u.srcs[2] if len(u.srcs) > 2 else None
        zero = _zero(u.dtype)
        if u.vec == 1:
            idx = self.val(index)
            if valid is None:
                return self.element(buf, idx)
            # masked-out elements read index 0, which always exists
            return f"({self.val(valid)} ? {self.element(buf, f'({self.val(valid)} ? {idx} : 0)')} : {zero})"
        # a vector load's lane i reads index + i*stride, or index + offsets[i] when the arg is a tuple
        offsets = u.arg if u.op is IrOp.LOAD and isinstance(u.arg, tuple) else None
        stride = None if offsets or u.op is not IrOp.LOAD else (u.arg or 1)
        if stride == 1 and (valid is None or valid.vec == 1):  # consecutive elements, all valid or none
            value = self.vector_load(buf, self.val(index), u.vec)
            return value if valid is None else f"({self.val(valid)} ? {value} : {self.splat(zero, u.dtype, u.vec)})"
        # one element per lane (a gather, a strided load, lanes that differ in validity); masked lanes touch nothing
        lanes = []
        for i in range(u.vec):
            step = offsets[i] if offsets else (i * stride if stride else 0)
            idx = _lane(self.val(index), i) if u.op is IrOp.GATHER else f"{self.val(index)} + {step}"
            value = self.element(buf, idx, lane_of_vector=True)
            if valid is not None:
                mask = _lane(self.val(valid), i) if valid.vec > 1 else self.val(valid)
                value = f"({mask} ? {value} : 0)"
            lanes.append(value)
        if stride == 1:  # lanes that differ in validity: a plain vector load where every lane is valid
            vector = self.vector_load(buf, self.val(index), u.vec)
            return f"(all({self.val(valid)}) ? {vector} : {self.lanewise(u.dtype, u.vec, lanes)})"
        return self.lanewise(u.dtype, u.vec, lanes)

    def vector_load(self, buf: UOp, index: str, vec: int) -> str:
        name = self.val(buf)
        if buf.dtype == dt.float16:
            return f"vload_half{vec}(0, {name} + {index})"
        if buf.dtype == dt.bool_:
            return f"(vload{vec}(0, {name} + {index}) != (uchar)0)"
        return f"vload{vec}(0, {name} + {index})"

    def render_store(self, u: UOp):
        buf, index, value = u.srcs
        name, idx, v = self.val(buf), self.val(index), self.val(value)
        if value.vec == 1:
            self.store_element(buf, idx, v)
        elif u.op is IrOp.STORE:
            if buf.dtype == dt.float16:
                self.emit(f"vstore_half{value.vec}({v}, 0, {name} + {idx});")
            elif buf.dtype == dt.bool_:
                self.emit(f"vstore{value.vec}(convert_uchar{value.vec}(-{v}), 0, {name} + {idx});")
            else:
                self.emit(f"vstore{value.vec}({v}, 0, {name} + {idx});")
        else:
            for i in range(value.vec):
                lane_value = f"-{_lane(v, i)}" if buf.dtype == dt.bool_ else _lane(v, i)
                self.store_element(buf, _lane(idx, i), lane_value)

    def store_element(self, buf: UOp, index: str, value: str):
        name = self.val(buf)
        if buf.dtype == dt.float16:
            self.emit(f"vstore_half({value}, {index}, {name});")
        elif buf.dtype == dt.bool_:
            self.emit(f"{name}[{index}] = (uchar)({value});")
        else:
            self.emit(f"{name}[{index}] = {value};")

    def render_prefetch(self, u: UOp):
        pass  # a hint left out: OpenCL C's prefetch() takes a pointer, which must stay inside its buffer

    def render_hreduce(self, u: UOp):
        (src,) = u.srcs
        v, name = self.val(src), f"v{u.id}"
        if u.dtype == dt.bool_:  # lanes are -1/0: any lane set
            self.emit(f"bool {name} = ({' | '.join(_lane(v, i) for i in range(src.vec))}) != 0;")
        else:
            self.emit(f"{_type(u.dtype)} {name} = {_lane(v, 0)};")
            for i in range(1, src.vec):
                lane = _lane(v, i)
                combined = f"{name} + {lane}" if u.arg is Op.ADD else _max(name, lane, u.dtype)
                self.emit(f"{name} = {combined};")
        self.names[u.id] = name

    def render_group_reduce(self, u: UOp):
        """The work-group's values combined by halving: at each step the first half of the items adds the
        second half's values to theirs, with a barrier between steps so each reads what the others wrote."""
        (src,) = u.srcs
        combine, size = u.arg
        if size & (size - 1) or self.local_id is None:
            raise NotImplementedError(f"OpenCL renderer: group_reduce of {size} items (a power of two, after local_id)")
        shared, lid, step = f"shared{u.id}", self.local_id, f"step{u.id}"
        is_bool = u.dtype == dt.bool_  # bool has no defined size in memory: uchar 0/1 there
        self.local_declarations.append(f"__local {'uchar' if is_bool else _type(u.dtype)} {shared}[{size}];")
        mine, other = f"{shared}[{lid}]", f"{shared}[{lid} + {step}]"
        if is_bool:
            merged = f"({mine} | {other})"
        else:
            merged = f"({mine} + {other})" if combine is Op.ADD else _max(mine, other, u.dtype)
        self.emit(f"{mine} = {self.val(src)};")
        self.emit("barrier(CLK_LOCAL_MEM_FENCE);")
        self.emit(f"for (int {step} = {size // 2}; {step} > 0; {step} >>= 1) {{")
        self.emit(f"  if ({lid} < {step}) {mine} = {merged};")
        self.emit("  barrier(CLK_LOCAL_MEM_FENCE);")
        self.emit("}")
        self.define(u, f"({shared}[0] != 0)" if is_bool else f"{shared}[0]")

    def render_local(self, u: UOp):
        name = f"local{u.id}"
        self.local_declarations.append(f"__local {_type(u.dtype)} {name}[{u.arg}];")
        self.names[u.id] = name

    def render_local_load(self, u: UOp):
        self.define(u, f"{self.val(u.srcs[0])}[{self.val(u.srcs[1])}]")

    def render_local_store(self, u: UOp):
        array, index, value = (self.val(s) for s in u.srcs)
        self.emit(f"{array}[{index}] = {value};")

    def render_barrier(self, u: UOp):
        self.emit("barrier(CLK_LOCAL_MEM_FENCE);")

    # --- arithmetic (the ALU table is below the class) -------------------------------------------
    def cast_expression(self, u: UOp, value: str) -> str:
        src, dst, vec = u.arg, u.dtype, u.vec
        if vec > 1:
            return self.vector_cast(u, value)
        if dst == dt.bool_:
            return f"({value} != {_zero(src)})"
        if dst == dt.float16:
            if u.id in self.store_only_half_casts:
                return f"(float){value}"
            self.half_widths.add(1)
            return f"round_to_half((float){value})"
        return f"({_REG_TYPE[dst.name]}){value}"

    def vector_cast(self, u: UOp, value: str) -> str:
        src, dst, vec = u.arg, u.dtype, u.vec
        if src == dt.bool_:
            if dst == dt.bool_:
                return value
            value = f"(-{value})"  # -1/0 lanes to 1/0
        if dst == dt.bool_:  # the zero as a vector: OpenCL rejects an int literal beside a vector of narrower ints
            return f"convert_char{vec}({value} != {self.splat(_zero(src), src, vec)})"
        converted = f"convert_{_type(dst, vec)}({value})"
        if dst == dt.float16 and u.id not in self.store_only_half_casts:
            self.half_widths.add(vec)
            return f"round_to_half{vec}({converted})"
        return converted

    def bitcast_expression(self, u: UOp, value: str) -> str:
        src, dst, vec = u.arg, u.dtype, u.vec
        if src != dt.float16 and dst != dt.float16:
            return f"as_{_BITS_TYPE[dst.name]}{vec if vec > 1 else ''}({value})"
        self.uses_half_bits = True
        if vec > 1:  # lane by lane, through the scalar helpers
            lanes = [self.half_bitcast(src, dst, _lane(value, i)) for i in range(vec)]
            return self.lanewise(dst, vec, lanes)
        return self.half_bitcast(src, dst, value)

    @staticmethod
    def half_bitcast(src: dt.DType, dst: dt.DType, value: str) -> str:
        if src == dt.float16:
            return f"as_{_BITS_TYPE[dst.name]}(half_to_bits({value}))"
        return f"bits_to_half(as_short({value}))"


# --- the ALU table: each elementwise primitive as an OpenCL C expression -------------------------------------------
def _operator(symbol: str, floats: bool = False):
    """A C operator. Its semantics are the IR's: / and % truncate, >> is arithmetic on signed types and logical on
    unsigned ones; only + and * take floats."""

    def render(r: _Renderer, u: UOp, s: list) -> str:
        if u.srcs[0].dtype.is_float and not floats:
            raise NotImplementedError(f"OpenCL renderer: {u.op} on {u.srcs[0].dtype.name}")
        return f"({s[0]} {symbol} {s[1]})"

    return render


def _division(symbol: str):
    """/ and % on integers with a divisor of 0 taken as 1 (x / 0 is x, x % 0 is 0), as the LLVM backend does: C's
    division by zero is undefined, and padded positions are computed too, with 0 where a masked load reads."""

    def render(r: _Renderer, u: UOp, s: list) -> str:
        if u.srcs[0].dtype.is_float:
            raise NotImplementedError(f"OpenCL renderer: {u.op} on {u.srcs[0].dtype.name}")
        d = u.srcs[1].dtype
        if u.vec == 1:
            divisor = f"({s[1]} + ({s[1]} == 0))"  # (b == 0) is 1 or 0
        else:  # a lane-wise select (the comparison's lanes are -1 or 0, of the operands' width)
            element = _VECTOR_ELEMENT[d.name]
            divisor = f"select({s[1]}, ({_type(d, u.vec)})(1), {s[1]} == ({element})0)"
        return f"({s[0]} {symbol} {divisor})"

    return render


def _compare(symbol: str):
    def render(r: _Renderer, u: UOp, s: list) -> str:
        if u.vec > 1 and u.srcs[0].dtype == dt.bool_:  # true is -1 in a bool vector: compare as 1/0
            s = [f"(-{x})" for x in s]
        compared = f"({s[0]} {symbol} {s[1]})"
        return compared if u.vec == 1 else f"convert_char{u.vec}{compared}"

    return render


def _where(r: _Renderer, u: UOp, s: list) -> str:
    if u.vec == 1:
        return f"({s[0]} ? {s[1]} : {s[2]})"
    return f"select({s[2]}, {s[1]}, convert_{_mask_type(u.dtype, u.vec)}({s[0]}))"


def _negate(r: _Renderer, u: UOp, s: list) -> str:
    if u.dtype == dt.bool_:
        return f"(!{s[0]})" if u.vec == 1 else f"(~{s[0]})"
    return f"(-{s[0]})"


def _function(name: str):
    """A float function of OpenCL C with the primitive's name."""
    return lambda r, u, s: f"{name}({s[0]})"


_ALU = {
    Op.EXP2: _function("exp2"),
    Op.LOG2: _function("log2"),
    Op.SIN: _function("sin"),
    Op.SQRT: _function("sqrt"),
    Op.RECIP: lambda r, u, s: f"({_const(1.0, u.dtype)} / {s[0]})",
    Op.NEG: _negate,
    Op.CAST: lambda r, u, s: r.cast_expression(u, s[0]),
    Op.BITCAST: lambda r, u, s: r.bitcast_expression(u, s[0]),
    Op.ADD: _operator("+", floats=True),
    Op.MUL: _operator("*", floats=True),
    Op.MAX: lambda r, u, s: _max(s[0], s[1], u.dtype) if u.vec == 1 else _vector_max(s[0], s[1], u.dtype, u.vec),
    Op.CMPLT: _compare("<"),
    Op.CMPNE: _compare("!="),
    Op.IDIV: _division("/"),
    Op.MOD: _division("%"),
    Op.AND: _operator("&"),
    Op.OR: _operator("|"),
    Op.XOR: _operator("^"),
    Op.SHL: _operator("<<"),
    Op.SHR: _operator(">>"),
    Op.WHERE: _where,
}

# every other uop: a method of the renderer
_STRUCTURE = {
    IrOp.PARAM: _Renderer.render_param,
    IrOp.VARIABLE: _Renderer.render_variable,
    IrOp.CONST: _Renderer.render_const,
    IrOp.RANGE: _Renderer.render_range,
    IrOp.ENDRANGE: _Renderer.render_endrange,
    IrOp.IF: _Renderer.render_if,
    IrOp.ENDIF: _Renderer.close_block,
    IrOp.ACC: _Renderer.render_acc,
    IrOp.ACC_UPDATE: _Renderer.render_acc_update,
    IrOp.LOAD: _Renderer.render_load,
    IrOp.STORE: _Renderer.render_store,
    IrOp.GATHER: _Renderer.render_load,
    IrOp.SCATTER: _Renderer.render_store,
    IrOp.LANES: _Renderer.render_lanes,
    IrOp.BROADCAST: _Renderer.render_broadcast,
    IrOp.HREDUCE: _Renderer.render_hreduce,
    IrOp.PREFETCH: _Renderer.render_prefetch,
    IrOp.LOCAL_ID: _Renderer.render_local_id,
    IrOp.GROUP_REDUCE: _Renderer.render_group_reduce,
    IrOp.LOCAL: _Renderer.render_local,
    IrOp.LOCAL_LOAD: _Renderer.render_local_load,
    IrOp.LOCAL_STORE: _Renderer.render_local_store,
    IrOp.BARRIER: _Renderer.render_barrier,
}
_STORES = frozenset({IrOp.STORE, IrOp.SCATTER})


def _max(a: str, b: str, d: dt.DType) -> str:
    if d == dt.bool_:
        return f"({a} || {b})"
    if d.is_float:  # fmax drops NaN; PyTorch's maximum propagates it
        return f"((isnan({a}) || {a} > {b}) ? {a} : {b})"
    return f"({a} > {b} ? {a} : {b})"


def _vector_max(a: str, b: str, d: dt.DType, vec: int) -> str:
    if d == dt.bool_:
        return f"({a} | {b})"
    if d.is_float:  # lane-wise (a is NaN or a > b) ? a : b, with the comparisons' -1/0 masks
        return f"select({b}, {a}, isnan({a}) | ({a} > {b}))"
    return f"max({a}, {b})"


def render_opencl(program: Program) -> str:
    return _Renderer(program).render()


def uses_float64(program: Program) -> bool:
    return any(d == dt.float64 for d in program.buffer_dtypes) or any(
        u.dtype == dt.float64 or ((u.op is Op.CAST or u.op is Op.BITCAST) and u.arg == dt.float64) for u in program.uops
    )


# --- devices ------------------------------------------------------------------------------------
_NVIDIA_OPENCL_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1",
    "/usr/lib64/libnvidia-opencl.so.1",
    "/usr/lib/libnvidia-opencl.so.1",
    "/usr/local/nvidia/lib64/libnvidia-opencl.so.1",
)


def _nvidia_opencl_library() -> str | None:
    for path in _NVIDIA_OPENCL_PATHS:
        if os.path.exists(path):
            return path
    return ctypes.util.find_library("nvidia-opencl")


def _all_devices(cl) -> list:
    """[(platform, device)] over every platform; a platform that fails to list devices is skipped."""
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:  # the ICD loader found no platform at all
        raise RuntimeError(f"no OpenCL platform found ({e}); install a driver, e.g. pocl-opencl-icd") from e
    found = []
    for platform in platforms:
        try:
            found += [(platform, device) for device in platform.get_devices()]
        except cl.Error:
            continue
    if not found:
        raise RuntimeError("OpenCL platforms exist but list no devices")
    return found


def _describe(devices: list) -> str:
    return "; ".join(f"{i}: {d.name} ({p.name})" for i, (p, d) in enumerate(devices))


def _choose_device(cl, devices: list, request: str):
    """By request (an index or a substring of the device name); else the first GPU; else the first device."""
    if request:
        if request.isdigit():
            index = int(request)
            if index >= len(devices):
                raise RuntimeError(
                    f"OpenCL device {index} requested, but there are {len(devices)}: {_describe(devices)}"
                )
            return devices[index]
        matches = [(p, d) for p, d in devices if request.lower() in d.name.lower()]
        if not matches:
            raise RuntimeError(f"no OpenCL device name contains {request!r}; devices: {_describe(devices)}")
        return matches[0]
    gpus = [(p, d) for p, d in devices if d.type & cl.device_type.GPU]
    if gpus:
        return gpus[0]
    nvidia = _nvidia_opencl_library()
    if nvidia:
        warnings.warn(
            f"lazygrad: OpenCL sees no GPU, but NVIDIA's OpenCL driver is installed ({nvidia}); the ICD loader "
            f"does not list it. Fix: mkdir -p /tmp/icd && echo {nvidia} > /tmp/icd/nvidia.icd && "
            "export OCL_ICD_VENDORS=/tmp/icd",
            RuntimeWarning,
            stacklevel=3,
        )
    return devices[0]


# --- compiling and running ----------------------------------------------------------------------
def _local_size(total: int, max_group: int, is_gpu: bool) -> int:
    # GPUs want big groups for occupancy; PoCL runs one group per thread, so small groups spread work across cores
    preferred = 256 if is_gpu else 16
    return max(1, min(preferred, max_group, total))


def _vector_width(device, is_gpu: bool) -> int:
    """float32 lanes the code generator should vectorize to (declared in the backend's Capabilities).

    On a CPU (PoCL) explicit vectors are what fills the SIMD registers. A GPU runs one lane per work-item and
    NVIDIA reports a preferred width of 1, so GPUs get scalar code until measurements show that float4 helps."""
    if is_gpu:
        return 1
    width = device.preferred_vector_width_float
    return width if width in (2, 4, 8, 16) else 1


# what NVIDIA's OpenCL reports for an H200 (and most GPUs allow at least): the GPU profile's limits on a CPU device
_GPU_MAX_WORK_GROUP = 1024
_GPU_LOCAL_MEMORY = 48 << 10


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


class OpenCLKernel:
    def __init__(self, backend: OpenCLBackend, program: Program, source: str, built):
        self.name, self.source, self.program = program.name, source, program.summary()  # (the IR is not kept)
        self.backend, self.built = backend, built
        self.kernel = backend.cl.Kernel(built, program.name)
        total = math.prod(program.global_size)
        info = backend.cl.kernel_work_group_info.WORK_GROUP_SIZE
        max_group = self.max_group = self.kernel.get_work_group_info(info, backend.device)
        if program.local_size > 1:  # one work-group per output point, of exactly the size the kernel was made for
            if program.local_size > max_group:
                raise WorkGroupTooLarge(
                    f"kernel {program.name} needs work-groups of {program.local_size} items; "
                    f"{backend.device_name} allows {max_group} for it",
                    max_group,
                )
            self.local_size, self.global_size = program.local_size, total * program.local_size
        else:
            self.local_size = _local_size(total, max_group, backend.is_gpu)
            self.global_size = -(-total // self.local_size) * self.local_size

    def set_local_size(self, local_size: int) -> None:
        """Launch in work-groups of `local_size` items (at most what the device allows for this kernel): the kernel
        search tries several. Not for a kernel whose work-groups share a reduce (its size is part of its code)."""
        if self.program.local_size > 1:
            raise ValueError(f"kernel {self.name} shares each reduce among {self.program.local_size} work-items")
        total = math.prod(self.program.global_size)
        self.local_size = max(1, min(local_size, self.max_group, total))
        self.global_size = -(-total // self.local_size) * self.local_size

    def _launch(self, kernel, wait: bool) -> float | None:
        cl = self.backend.cl
        event = cl.enqueue_nd_range_kernel(self.backend.queue, kernel, (self.global_size,), (self.local_size,))
        if not wait:
            return None
        event.wait()
        return (event.profile.end - event.profile.start) * 1e-9

    def __call__(self, buffers: list, wait: bool = False, values: tuple = ()) -> float | None:
        if values:
            self.kernel.set_args(*buffers, *[np.int32(v) for v in values])
        else:  # (most launches: no list of values built and unpacked)
            self.kernel.set_args(*buffers)
        return self._launch(self.kernel, wait)

    def bind(self, buffers: list, values: tuple = ()):
        """A launcher with the arguments fixed, `launch(wait) -> seconds or None` (JIT replays). It owns a
        kernel object of its own, so launchers of one kernel with different buffers do not disturb each other.
        `values`: the Variables' values (program.variables order)."""
        kernel = self.backend.cl.Kernel(self.built, self.name)
        kernel.set_args(*buffers, *[np.int32(v) for v in values])

        def launch(wait=False):
            return self._launch(kernel, wait)

        # a JIT replay rebinds its inputs and outputs in place: a new pyopencl Kernel per call would leave garbage
        # in reference cycles
        launch.set_buffer = kernel.set_arg
        first = len(buffers)

        def set_values(new_values):
            for i, v in enumerate(new_values):
                kernel.set_arg(first + i, np.int32(v))

        launch.set_values = set_values
        return launch


class OpenCLBackend:
    name = "opencl"

    def __init__(self, name: str = "opencl"):
        import pyopencl as cl  # imported here so that a missing pyopencl only disables this backend

        self.cl = cl
        self.name = name
        devices = _all_devices(cl)
        request = name.split(":", 1)[1] if ":" in name else config.OPENCL_DEVICE.strip()
        self.platform, self.device = _choose_device(cl, devices, request)
        self.is_gpu = bool(self.device.type & cl.device_type.GPU)
        self.device_name = f"{self.device.name.strip()} ({self.platform.name.strip()})"
        self.supports_float64 = "cl_khr_fp64" in self.device.extensions or bool(self.device.double_fp_config)
        # LAZYGRAD_OPENCL_PROFILE=gpu: the kernels a GPU gets, on any device (to test them on PoCL), within a GPU's
        # limits (PoCL allows bigger work-groups and local memory than GPUs do)
        if config.OPENCL_PROFILE not in ("", "gpu"):
            raise ValueError(f"LAZYGRAD_OPENCL_PROFILE={config.OPENCL_PROFILE!r}: the one profile is 'gpu' (or unset)")
        profiled = config.OPENCL_PROFILE == "gpu" and not self.is_gpu
        gpu_shaped = self.is_gpu or profiled
        max_group = int(self.device.max_work_group_size)
        local_memory = int(self.device.local_mem_size)
        if profiled:
            max_group, local_memory = min(max_group, _GPU_MAX_WORK_GROUP), min(local_memory, _GPU_LOCAL_MEMORY)
        self.capabilities = Capabilities(
            vector_width=_vector_width(self.device, gpu_shaped),
            group_reduce=_power_of_two_at_most(min(256, max_group)) if gpu_shaped else 0,
            local_memory=local_memory,
            max_work_group=max_group,
            compute_units=int(self.device.max_compute_units),
            is_gpu=self.is_gpu,
        )
        self.context = cl.Context(devices=[self.device])
        self.queue = cl.CommandQueue(self.context, self.device, properties=cl.command_queue_properties.PROFILING_ENABLE)
        # IEEE division and square root where the device offers them: OpenCL's default allows 2.5 ulp for a
        # single-precision divide (and NVIDIA uses it), which PyTorch's results do not
        rounded = cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT
        self.build_options = (
            ["-cl-fp32-correctly-rounded-divide-sqrt"] if self.device.single_fp_config & rounded else []
        )
        self.target_id = "|".join(
            [self.device.name, self.device.driver_version, self.platform.version, cl.VERSION_TEXT, *self.build_options]
        )
        self.source_builds = 0  # programs that went through the driver's compiler (not the disk cache)

    def allocate(self, nbytes: int):
        return self.cl.Buffer(self.context, self.cl.mem_flags.READ_WRITE, size=max(nbytes, 1))

    def free(self, handle, nbytes: int) -> None:
        handle.release()

    def copy_in(self, handle, array: np.ndarray) -> None:
        if array.nbytes:  # blocking: the caller may drop the host array as soon as we return
            self.cl.enqueue_copy(self.queue, handle, np.ascontiguousarray(array), is_blocking=True)

    def copy_out(self, handle, array: np.ndarray) -> None:
        if array.nbytes:
            self.cl.enqueue_copy(self.queue, array.reshape(-1), handle, is_blocking=True)

    def copy_between(self, dst, src, nbytes: int, src_offset: int = 0) -> None:
        """A device-side copy of nbytes from src_offset on (the JIT stages inputs sliced from a bigger buffer)."""
        if nbytes:
            self.cl.enqueue_copy(self.queue, dst, src, byte_count=nbytes, src_offset=src_offset)

    def synchronize(self) -> None:
        self.queue.finish()

    def compile_ahead(self, programs: list) -> None:
        pass  # each program is built when `compile` gets it

    def compile(self, program: Program) -> OpenCLKernel:
        if uses_float64(program) and not self.supports_float64:
            # the ops that need doubles, so the message points at the user's computation, not only a kernel name
            ops = sorted({u.op.name.lower() for u in program.uops if isinstance(u.op, Op) and u.dtype == dt.float64})
            what = f"computes {', '.join(ops)} in float64" if ops else "reads or writes float64 buffers"
            raise CompileError(
                f"kernel {program.name} {what}, which {self.device_name} does not support "
                "(no cl_khr_fp64); use float32 tensors on this device"
            )
        source = render_opencl(program)
        key = f"opencl|{self.target_id}|{source}"
        binary = diskcache.get(key)
        built = self._load_binary(binary) if binary is not None else None
        if built is None:
            built = self._build(source, program.name)
            diskcache.put(key, built.get_info(self.cl.program_info.BINARIES)[0])
        return OpenCLKernel(self, program, source, built)

    def _load_binary(self, binary: bytes):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", self.cl.CompilerWarning)
                return self.cl.Program(self.context, [self.device], [binary]).build()
        except self.cl.Error:  # a binary the driver no longer accepts: rebuild from source
            return None

    def _build(self, source: str, name: str):
        self.source_builds += 1
        program = self.cl.Program(self.context, source)
        try:
            with warnings.catch_warnings():  # pyopencl warns on any compiler output; errors are reported below
                warnings.simplefilter("ignore", self.cl.CompilerWarning)
                return program.build(options=self.build_options, devices=[self.device], cache_dir=False)
        except self.cl.Error as e:
            try:
                log = program.get_build_info(self.device, self.cl.program_build_info.LOG)
            except Exception:  # the driver kept no log: pyopencl's message has what there is
                log = str(e)
            raise CompileError(
                compile_failure(f"OpenCL on {self.device_name}", "OpenCL C", "cl", name, source, log, 20)
            ) from e


def create(name: str = "opencl") -> OpenCLBackend:
    return OpenCLBackend(name)

"""Kernel AST -> loop nest -> linear IR.

Steps, in order:
1. Put the reduce axes last and drop size-1 dims, so that output loops enclose reduce loops.
2. Merge adjacent dims that every buffer reads as one (fewer loops, simpler index arithmetic).
3. Choose optimizations (`KernelOptions`): which output dims are upcast (a register tile of
   independent accumulators, unrolled) and which reduce dim is unrolled.
4. Emit UOps: loops, accumulators, loads with index expressions from the ShapeTrackers
   (simplified by lazygrad.symbolic), the elementwise math, stores. Identical UOps within a scope
   are emitted once, so a value loaded for one accumulator is reused by the others.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from lazygrad import dtype as dt
from lazygrad.codegen.ir import Program, UOp
from lazygrad.codegen.kernel_ast import KernelOp
from lazygrad.shape import ShapeTracker, merge_dims_plan, prod
from lazygrad.symbolic import AndNode, DivNode, GeNode, LtNode, ModNode, MulNode, Num, SumNode, Var


@dataclass
class KernelOptions:
    upcast: list = field(default_factory=list)  # [(dim, factor)] over output dims
    unroll: tuple | None = None  # (reduce dim, factor)


@dataclass
class LoopNest:
    """The kernel's iteration space after reordering and merging."""

    shape: tuple  # full shape: output dims, then reduce dims
    n_output: int  # how many leading dims are output dims
    trackers: dict  # id(KernelOp) -> ShapeTracker in this space (output-shaped for epilogue ops)

    @property
    def reduce_dims(self):
        return range(self.n_output, len(self.shape))


def _find_reduce(ast: KernelOp) -> KernelOp | None:
    reduces = [n for n in ast.walk() if n.op == "reduce"]
    assert len(reduces) <= 1, "a kernel holds at most one reduce"
    return reduces[0] if reduces else None


def _tracker(node: KernelOp) -> ShapeTracker:
    return node.arg if node.op == "valid" else node.arg[1]


def build_loop_nest(ast: KernelOp) -> LoopNest:
    reduce = _find_reduce(ast)
    below = set() if reduce is None else {id(n) for n in reduce.srcs[0].walk()}
    nodes = [n for n in ast.walk() if n.op in ("load", "const", "valid", "store")]
    out_shape = _tracker(ast).shape
    if reduce is None:
        full_shape, reduce_axes = out_shape, ()
    else:
        reduce_axes = reduce.arg[1]
        full_shape = next(_tracker(n).shape for n in nodes if id(n) in below)
    ndim = len(full_shape)
    order = [d for d in range(ndim) if d not in reduce_axes] + list(reduce_axes)
    # 1. reduce axes last, size-1 dims gone
    keep = [d for d in order if full_shape[d] != 1]
    n_output = sum(1 for d in keep if d not in reduce_axes)
    shape = tuple(full_shape[d] for d in keep)
    trackers = {}
    for n in nodes:
        st = _tracker(n).permute(tuple(order)) if ndim else _tracker(n)
        own = tuple(st.shape[i] for i, d in enumerate(order) if full_shape[d] != 1)
        trackers[id(n)] = st.reshape(own) if st.shape != own else st
    # 2. merge dims that every tracker reads as one (epilogue trackers seen expanded over reduce dims)
    full_view = {k: (st if st.shape == shape else st.expand(shape)) for k, st in trackers.items()}
    groups = merge_dims_plan(shape, list(full_view.values()), set(range(n_output, len(shape))))
    merged = tuple(prod(shape[d] for d in g) for g in groups)
    if merged != shape:
        new_n_output = sum(1 for g in groups if g[0] < n_output)
        for k, st in trackers.items():
            target = merged if st.shape == shape else merged[:new_n_output] + (1,) * (len(merged) - new_n_output)
            trackers[k] = st.reshape(target)
        shape, n_output = merged, new_n_output
    return LoopNest(shape, n_output, trackers)


def choose_options(nest: LoopNest, ast: KernelOp) -> KernelOptions:
    """Heuristics: upcast output dims into a register tile when the kernel reduces (matmul/conv-like),
    so that each loaded value feeds several accumulators."""
    opts = KernelOptions()
    if nest.n_output == len(nest.shape) or nest.n_output == 0:
        return opts
    budget = 16
    for d in reversed(range(nest.n_output)):
        for f in (4, 2):
            if nest.shape[d] % f == 0 and nest.shape[d] > f and budget // f >= 1:
                opts.upcast.append((d, f))
                budget //= f
                break
        if len(opts.upcast) == 2 or budget < 2:
            break
    last = len(nest.shape) - 1
    if nest.shape[last] % 4 == 0 and nest.shape[last] > 4:
        opts.unroll = (last, 4)
    return opts


class _Emitter:
    """Appends UOps, reusing an identical pure UOp already visible in an enclosing scope."""

    def __init__(self):
        self.uops: list = []
        self.scopes: list = [{}]

    def emit(self, op, dtype, srcs=(), arg=None, pure=True) -> UOp:
        key = (op, dtype, tuple(id(s) for s in srcs), arg) if pure else None
        if key is not None:
            for scope in reversed(self.scopes):
                if key in scope:
                    return scope[key]
        u = UOp(op, dtype, tuple(srcs), arg, len(self.uops))
        self.uops.append(u)
        if key is not None:
            self.scopes[-1][key] = u
        return u

    def open_scope(self):
        self.scopes.append({})

    def close_scope(self):
        self.scopes.pop()


def _compute_dtype(d: dt.DType) -> dt.DType:
    """float16 is stored as half but computed in float32 on every backend."""
    return dt.float32 if d == dt.float16 else d


class Lowerer:
    def __init__(self, ast: KernelOp, buffer_dtypes: tuple, name: str, options: KernelOptions | None = None):
        self.ast, self.buffer_dtypes, self.name = ast, buffer_dtypes, name
        self.nest = build_loop_nest(ast)
        self.opts = options if options is not None else choose_options(self.nest, ast)
        self.e = _Emitter()
        self.reduce = _find_reduce(ast)

    # --- index expressions -----------------------------------------------------------------------
    def _node_uop(self, node, vars_uop: dict) -> UOp:
        e, i32 = self.e, dt.int32
        if isinstance(node, Num):
            return e.emit("const", i32, (), node.value)
        if isinstance(node, Var):
            return vars_uop[node.name]
        if isinstance(node, MulNode):
            return e.emit("mul", i32, (self._node_uop(node.a, vars_uop), e.emit("const", i32, (), node.b)))
        if isinstance(node, DivNode):
            return e.emit("idiv", i32, (self._node_uop(node.a, vars_uop), e.emit("const", i32, (), node.b)))
        if isinstance(node, ModNode):
            return e.emit("mod", i32, (self._node_uop(node.a, vars_uop), e.emit("const", i32, (), node.b)))
        if isinstance(node, SumNode):
            out = self._node_uop(node.terms[0], vars_uop)
            for t in node.terms[1:]:
                out = e.emit("add", i32, (out, self._node_uop(t, vars_uop)))
            return out
        if isinstance(node, LtNode):
            return e.emit("cmplt", dt.bool_, (self._node_uop(node.a, vars_uop), e.emit("const", i32, (), node.b)))
        if isinstance(node, GeNode):  # a >= b  <=>  b-1 < a
            return e.emit("cmplt", dt.bool_, (e.emit("const", i32, (), node.b - 1), self._node_uop(node.a, vars_uop)))
        if isinstance(node, AndNode):
            out = self._as_bool(self._node_uop(node.terms[0], vars_uop))
            for t in node.terms[1:]:
                out = e.emit("and", dt.bool_, (out, self._as_bool(self._node_uop(t, vars_uop))))
            return out
        raise NotImplementedError(f"index node {type(node).__name__}")

    def _as_bool(self, u: UOp) -> UOp:
        if u.dtype == dt.bool_:
            return u
        return self.e.emit("cmpne", dt.bool_, (u, self.e.emit("const", u.dtype, (), 0)))

    # --- values ----------------------------------------------------------------------------------
    def _indexes(self, node: KernelOp, idx_nodes: list):
        st = self.nest.trackers[id(node)]
        idxs = [Num(0) if st.shape[d] == 1 and self.nest.shape[d] != 1 else i for d, i in enumerate(idx_nodes)]
        return st.index_and_valid(idxs)

    def _value(self, node: KernelOp, idx_nodes: list, vars_uop: dict, memo: dict, acc_value: UOp | None) -> UOp:
        key = id(node)
        if key in memo:
            return memo[key]
        e = self.e
        cdt = _compute_dtype(node.dtype) if node.dtype is not None else None
        if node.op == "reduce":
            out = acc_value
        elif node.op == "load":
            index, valid = self._indexes(node, idx_nodes)
            if isinstance(valid, Num) and valid.value == 0:
                out = e.emit("const", cdt, (), _zero(cdt))
            else:
                srcs = [self.params[node.arg[0]], self._node_uop(index, vars_uop)]
                if not (isinstance(valid, Num) and valid.value == 1):
                    srcs.append(self._node_uop(valid, vars_uop))
                out = e.emit("load", node.dtype, tuple(srcs))
                if cdt != node.dtype:
                    out = e.emit("cast", cdt, (out,), node.dtype)
        elif node.op == "const":
            value, _ = node.arg
            _, valid = self._indexes(node, idx_nodes)
            out = e.emit("const", cdt, (), value)
            if not (isinstance(valid, Num) and valid.value == 1):
                zero = e.emit("const", cdt, (), _zero(cdt))
                out = zero if isinstance(valid, Num) else e.emit("where", cdt, (self._node_uop(valid, vars_uop), out, zero))
        elif node.op == "valid":
            _, valid = self._indexes(node, idx_nodes)
            out = e.emit("const", dt.bool_, (), bool(valid.value)) if isinstance(valid, Num) else self._as_bool(
                self._node_uop(valid, vars_uop))
        else:
            srcs = tuple(self._value(s, idx_nodes, vars_uop, memo, acc_value) for s in node.srcs)
            if node.op in ("cast", "bitcast"):
                src_dtype = srcs[0].dtype
                if node.op == "cast" and src_dtype == cdt:
                    out = srcs[0]
                else:
                    out = e.emit(node.op, cdt, srcs, src_dtype)
            else:
                out = e.emit(node.op, cdt, srcs)
        memo[key] = out
        return out

    # --- the loop nest ---------------------------------------------------------------------------
    def lower(self) -> Program:
        e, nest = self.e, self.nest
        self.params = [e.emit("param", d, (), (i, i == 0), pure=False) for i, d in enumerate(self.buffer_dtypes)]
        upcast = dict(self.opts.upcast)
        unroll_dim, unroll = self.opts.unroll or (None, 1)
        # global ranges over output dims (an upcast dim loops over its tiles)
        vars_uop, idx_out = {}, {}
        global_sizes = []
        for d in range(nest.n_output):
            size = nest.shape[d] // upcast.get(d, 1)
            r = e.emit("range", dt.int32, (), (f"g{d}", size, "global"), pure=False)
            vars_uop[f"g{d}"] = r
            global_sizes.append(size)
            idx_out[d] = Var(f"g{d}", 0, size - 1)
        out_combos = list(itertools.product(*[range(upcast[d]) for d in sorted(upcast)]))

        def out_idx(combo):
            idx = []
            for d in range(nest.n_output):
                if d in upcast:
                    idx.append(idx_out[d] * upcast[d] + combo[sorted(upcast).index(d)])
                else:
                    idx.append(idx_out[d])
            return idx

        accs = {}
        if self.reduce is not None:
            red_op = self.reduce.arg[0]
            acc_dtype = _compute_dtype(self.reduce.dtype)
            for combo in out_combos:
                accs[combo] = e.emit("acc", acc_dtype, (), _reduce_identity(red_op, acc_dtype), pure=False)
            ranges = []
            red_idx = []
            for d in nest.reduce_dims:
                size = nest.shape[d] // (unroll if d == unroll_dim else 1)
                e.open_scope()
                r = e.emit("range", dt.int32, (), (f"r{d}", size, "loop"), pure=False)
                vars_uop[f"r{d}"] = r
                ranges.append(r)
                red_idx.append(Var(f"r{d}", 0, size - 1))
            for combo in out_combos:
                for k in range(unroll):
                    idx = out_idx(combo) + [
                        (v * unroll + k) if d == unroll_dim else v for d, v in zip(nest.reduce_dims, red_idx)
                    ]
                    val = self._value(self.reduce.srcs[0], idx, vars_uop, {}, None)
                    alu = "add" if red_op == "sum" else "max"
                    new = e.emit(alu, acc_dtype, (accs[combo], val), pure=False)
                    e.emit("acc_update", None, (accs[combo], new), pure=False)
            for r in reversed(ranges):
                e.emit("endrange", None, (r,), pure=False)
                e.close_scope()
        store_param = self.params[0]
        for combo in out_combos:
            idx = out_idx(combo) + [Num(0) for _ in nest.reduce_dims]
            value = self._value(self.ast.srcs[0], idx, vars_uop, {}, accs.get(combo))
            out_dtype = self.buffer_dtypes[0]
            if value.dtype != out_dtype:
                value = e.emit("cast", out_dtype, (value,), value.dtype)
            index, _ = self._indexes(self.ast, idx)
            e.emit("store", None, (store_param, self._node_uop(index, vars_uop), value), pure=False)
        for u in reversed([u for u in e.uops if u.op == "range" and u.arg[2] == "global"]):
            e.emit("endrange", None, (u,), pure=False)
        return Program(self.name, e.uops, self.buffer_dtypes, tuple(global_sizes))


def _zero(d: dt.DType):
    return False if d == dt.bool_ else (0.0 if d.is_float else 0)


def _reduce_identity(op: str, d: dt.DType):
    if op == "sum":
        return _zero(d)
    if d.is_float:
        return float("-inf")
    if d == dt.bool_:
        return False
    bits = d.itemsize * 8
    return 0 if d.kind == "u" else -(2 ** (bits - 1))


def lower(ast: KernelOp, buffer_dtypes: tuple, name: str, options: KernelOptions | None = None) -> Program:
    return Lowerer(ast, buffer_dtypes, name, options).lower()

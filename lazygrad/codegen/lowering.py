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
from dataclasses import astuple, dataclass, field, replace

from lazygrad import dtype as dt
from lazygrad.codegen import tiling
from lazygrad.codegen.capabilities import SCALAR, Capabilities
from lazygrad.codegen.ir import INDEX_ARITHMETIC, Program, UOp
from lazygrad.codegen.kernel_ast import KernelOp
from lazygrad.ops import AstOp, IrOp, Op, zero
from lazygrad.shape import ShapeTracker, max_prod, merge_dims_plan, prod
from lazygrad.symbolic import AndNode, DivNode, GeNode, LtNode, ModNode, MulNode, Node, Num, SumNode, Var, Variable


@dataclass
class KernelOptions:
    upcast: list = field(default_factory=list)  # [(dim, factor)] over output dims: a register tile
    unroll: tuple | None = None  # (reduce dim, factor)
    vector: tuple | None = None  # (dim, width): that dim's innermost `width` indexes are vector lanes
    # (block, chunk): the reduce runs in chunks of `chunk` along its first dim, for `block` iterations of the
    # outermost output loop at a time, the partial sums kept in the output (cache blocking, CPU only)
    blocking: tuple | None = None
    # work-items that share each output's reduce (GPUs): lanes take every `group`-th element of the innermost
    # reduce dim, then combine their partial results in local memory; one work-group per output
    group: int | None = None
    # (block_m, block_n, block_k, thread_m, thread_n): a matrix product tiled through local memory by work-groups
    # (codegen/tiling.py); it replaces every other option
    local_tile: tuple | None = None
    # bytes ahead that vector loads prefetch where the loop around them walks rows far apart (the innermost reduce
    # loop, or the innermost output loop for the loads after the reduce): `_prefetch_bytes`, CPU only
    prefetch: int | None = None
    # ((dim, lo, hi), ...): loops whose iterations lo..hi read no padding (a convolution's interior): an output loop's
    # body is emitted twice, for those iterations without the validity masks and for the rest with them; the innermost
    # reduce loop is split in three, its middle without them (`interior_bounds`); CPU only
    interior: tuple | None = None
    # why each choice was made, in words (printed at LAZYGRAD_DEBUG>=2); not part of what the record means
    reasons: list = field(default_factory=list, compare=False)

    def describe(self) -> str:
        chosen = [
            f"{name}={value}"
            for name, value in (
                ("lanes", self.vector),
                ("tile", self.upcast),
                ("unroll", self.unroll),
                ("blocking", self.blocking),
                ("group", self.group),
                ("local_tile", self.local_tile),
                ("prefetch", self.prefetch),
                ("interior", self.interior),
            )
            if value
        ]
        head = ", ".join(chosen) or "no optimizations"
        return "\n".join([head, *(f"  - {reason}" for reason in self.reasons)])


@dataclass
class LoopNest:
    """The kernel's iteration space after reordering and merging."""

    shape: tuple  # full shape: output dims, then reduce dims
    n_output: int  # how many leading dims are output dims
    trackers: dict  # id(KernelOp) -> ShapeTracker in this space (output-shaped for epilogue ops)

    @property
    def reduce_dims(self):
        return range(self.n_output, len(self.shape))


_LEAVES_AND_STORES = frozenset({AstOp.LOAD, AstOp.CONST, AstOp.VALID, AstOp.STORE})


def _find_reduce(ast: KernelOp) -> KernelOp | None:
    reduces = {n for n in ast.walk() if n.op is AstOp.REDUCE}  # equal nodes are one reduce, reached twice
    assert len(reduces) <= 1, "a kernel holds at most one reduce"
    return reduces.pop() if reduces else None


def _tracker(node: KernelOp) -> ShapeTracker:
    return node.arg if node.op is AstOp.VALID else node.arg[1]


def stores_of(ast: KernelOp) -> tuple:
    """The store nodes of a kernel: the root itself, or each source of a "sink" root."""
    return ast.srcs if ast.op is AstOp.SINK else (ast,)


_CACHED_ELEMENTS = 1 << 18  # 1 MiB of float32: about what one core's L2 holds


def _elements(st: ShapeTracker) -> int:
    """How many elements a load reads: its buffer's view, not the loop space it is broadcast over."""
    if len(st.views) > 1:
        return max_prod(st.views[0].shape)
    return max_prod(size for size, stride in zip(st.shape, st.views[0].strides) if stride != 0)


def build_loop_nest(ast: KernelOp) -> LoopNest:
    reduce = _find_reduce(ast)
    below = set() if reduce is None else {id(n) for n in reduce.srcs[0].walk()}
    nodes = [n for n in ast.walk() if n.op in _LEAVES_AND_STORES]
    out_shape = _tracker(stores_of(ast)[0]).shape
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
    # 3. output loops that walk the biggest inputs go outermost: each such input then streams through
    # the cache once, while the smaller ones (a weight, say) are re-read from cache by the inner loops
    loads = [n for n in nodes if n.op is AstOp.LOAD]

    def footprint(d):  # inputs that fit in the cache are re-read cheaply: only big ones count
        return sum(
            size
            for n in loads
            if (size := _elements(trackers[id(n)])) > _CACHED_ELEMENTS
            and (len(trackers[id(n)].views) > 1 or trackers[id(n)].views[-1].strides[d] != 0)
        )

    # a symbolic output dim goes after the others: it is a loop inside the kernel (its bound an argument), while the
    # dims before it can be the launch's global ranges
    out_order = sorted(range(n_output), key=lambda d: (isinstance(shape[d], Node), -footprint(d)))
    if out_order != list(range(n_output)):
        perm = tuple(out_order) + tuple(range(n_output, len(shape)))
        trackers = {k: st.permute(perm) for k, st in trackers.items()}
        shape = tuple(shape[d] for d in perm)
    nest = LoopNest(shape, n_output, trackers)
    return _innermost_by_cache_lines(nest, ast) if reduce is None else nest


def _cache_lines_per_step(strides) -> float:
    """Cache lines (16 float32) that accesses with these strides bring in per step of a loop: a stride of 16 or
    more (or an index that is not affine) a new line each step, a smaller one that fraction of a line."""
    return sum(1.0 if s is None else min(abs(s), 16) / 16 for s in strides)


_REORDER_MIN_OUTPUTS = 1 << 16


def _innermost_by_cache_lines(nest: LoopNest, ast: KernelOp) -> LoopNest:
    """An elementwise kernel that no dim gives vector lanes (no dim its store writes contiguously in vectors) runs
    innermost along the dim where its accesses bring in the fewest new cache lines per step, when that saves a
    line or more: col2im over channel-last columns (n, oh, ow, cin, kh, kw), whose nine loads jump a whole pixel
    of columns per output column, runs along the channels (ResNet-18's layer3 at 8x256x14x14, one thread: 6.2 ->
    2.3 ms). Otherwise the order stays the store's, and for small kernels (under 65,536 outputs: 1x3x64x64's col2im
    kernels, all in the cache anyway) too."""
    if nest.n_output < 2 or nest_is_symbolic(nest) or prod(nest.shape) < _REORDER_MIN_OUTPUTS:
        return nest
    loads, store = dim_strides(nest, ast)
    if any(store[d] == 1 and nest.shape[d] % 8 == 0 for d in range(nest.n_output)):
        return nest

    def lines(d):
        return _cache_lines_per_step([ld[d] for ld in loads] + [store[d]])

    last = nest.n_output - 1
    best = min(range(nest.n_output), key=lambda d: (lines(d), d != last))
    if lines(best) > lines(last) - 1:
        return nest
    perm = tuple(d for d in range(nest.n_output) if d != best) + (best,)
    return LoopNest(
        tuple(nest.shape[d] for d in perm), nest.n_output, {k: st.permute(perm) for k, st in nest.trackers.items()}
    )


def options_problem(o: KernelOptions, nest: LoopNest) -> str | None:
    """Why the lowering cannot run these options on this loop nest (None: it can): every factor must divide its
    dim, or the loops would read past the buffers' ends and compute wrong values. Asked of every record before it
    is lowered (`runtime.kernel_options`: the heuristics', and those of `runtime.forced_options`) and of every
    kernel search record (`search._invalid`)."""
    shape = nest.shape
    vdim, width = o.vector or (None, 1)
    if vdim is not None and (width < 2 or shape[vdim] % width):
        return f"vector {o.vector} does not divide d{vdim} of {shape}"
    dims = [d for d, _ in o.upcast]
    if len(set(dims)) != len(dims) or any(d >= nest.n_output for d in dims):
        return f"tile {o.upcast}: dims repeat or are not output dims of {shape}"
    for d, f in o.upcast:
        if f < 2 or shape[d] % (f * (width if d == vdim else 1)):
            return f"tile {o.upcast} does not divide d{d} of {shape}"
    innermost = len(shape) - 1
    if o.unroll:
        d, f = o.unroll
        if d < nest.n_output or d == vdim or f < 2 or shape[d] % f or (o.group and d == innermost):
            return f"unroll {o.unroll} does not fit {shape}"
    if o.group and (nest.n_output == len(shape) or o.vector or o.blocking):
        return f"group {o.group}: needs a reduce, and no lanes or blocking"
    if o.blocking:
        block, chunk = o.blocking
        rdim = nest.n_output
        if rdim >= len(shape):
            return "blocking without a reduce"
        step = (width if vdim == rdim else 1) * (o.unroll[1] if o.unroll and o.unroll[0] == rdim else 1)
        outer = shape[0] // ((width if vdim == 0 else 1) * dict(o.upcast).get(0, 1))
        if chunk < 1 or shape[rdim] % chunk or chunk % step or block < 1 or outer % block:
            return f"blocking {o.blocking} does not divide {shape}"
    if o.local_tile and (o.upcast or o.unroll or o.vector or o.blocking or o.group or o.prefetch):
        return "a local tile takes no other option"
    if o.prefetch is not None and (o.prefetch < 64 or nest.n_output == len(shape) or o.group):
        return f"prefetch {o.prefetch}: needs a reduce loop, a cache line ahead or more, and no groups"
    if o.interior is not None:
        if o.group or o.local_tile or not o.interior:
            return f"interior {o.interior}: needs at least one dim, and no groups or local tile"
        seen = set()
        last = len(shape) - 1
        for d, lo, hi in o.interior:
            peeled = d == last and d >= nest.n_output  # the innermost reduce loop: split in three
            if (
                d in seen
                or not (0 <= d < nest.n_output or peeled)
                or (d == 0 and o.blocking)
                or isinstance(shape[d], Node)
                or (peeled and o.blocking and d == nest.n_output)
            ):
                return (
                    f"interior {o.interior}: d{d} repeats, is neither an output dim nor the innermost reduce dim of "
                    f"{shape}, or is blocked or symbolic"
                )
            seen.add(d)
            loops = _loop_count(d, nest, o)
            if not 0 <= lo <= hi < loops:
                return f"interior {o.interior}: {lo}..{hi} is not inside d{d}'s {loops} iterations"
    return None


def nest_is_symbolic(nest: LoopNest) -> bool:
    """Whether a loop of the nest runs a number of times known only at launch (a Variable's value)."""
    return any(isinstance(s, Node) for s in nest.shape)


def kernel_variable_nodes(nest: LoopNest) -> list:
    """The user's Variables the kernel's views read (sizes and offsets), sorted by name: its int arguments."""
    found = {}
    for st in nest.trackers.values():
        for v in st.views:
            for x in (*v.shape, v.offset):
                if isinstance(x, Node):
                    for var in x.variables():
                        if isinstance(var, Variable):
                            found[var.name] = var
    return [found[name] for name in sorted(found)]


def _lane_stride(expr, var_name: str):
    """The coefficient of a variable in an affine index, 0 if absent, None if it sits inside // or %."""
    terms = expr.terms if isinstance(expr, SumNode) else (expr,)
    coef = 0
    for t in terms:
        if isinstance(t, Var) and t.name == var_name:
            coef += 1
        elif isinstance(t, MulNode) and isinstance(t.a, Var) and t.a.name == var_name:
            coef += t.b
        elif any(v.name == var_name for v in t.variables()):
            return None
    return coef


def lane_offsets(expr, width: int) -> tuple | None:
    """The per-lane offsets of an index that is not affine in `lane` (say base + lane//2), when they are
    constants within two vectors of the lane-0 index; else None."""
    first = expr.substitute({"lane": 0})
    offsets = []
    for lane in range(width):
        delta = expr.substitute({"lane": lane}) - first
        if not isinstance(delta, Num) or not 0 <= delta.value < 2 * width:
            return None
        offsets.append(delta.value)
    return tuple(offsets)


def _indexes_of(nest: LoopNest, ast: KernelOp, op: AstOp) -> list:
    """The index expression of each load (or store) of the kernel, in the loop variables d0, d1, ..."""
    idxs = [Var(f"d{d}", 0, s - 1) for d, s in enumerate(nest.shape)]
    exprs = []
    for n in ast.walk():
        if n.op is op:
            st = nest.trackers[id(n)]
            exprs.append(st.index_and_valid([Num(0) if st.shape[d] == 1 else v for d, v in enumerate(idxs)])[0])
    return exprs


def dim_strides(nest: LoopNest, ast: KernelOp, load_exprs: list | None = None) -> tuple:
    """Per loop dim: the memory stride of each load and of the store (None when not affine)."""
    load_exprs = _indexes_of(nest, ast, AstOp.LOAD) if load_exprs is None else load_exprs
    loads = [[_lane_stride(e, f"d{d}") for d in range(len(nest.shape))] for e in load_exprs]
    store = None
    for e in _indexes_of(nest, ast, AstOp.STORE):  # several stores: a dim is contiguous only if it is for all
        strides = [_lane_stride(e, f"d{d}") for d in range(len(nest.shape))]
        store = strides if store is None else [a if a == b else None for a, b in zip(store, strides)]
    return loads, store


def _shuffled(nest: LoopNest, exprs: list, loads: list, lanes: int) -> set:
    """(load, dim) pairs where the load is not affine along dim, but lanes along it read constant offsets."""
    found = set()
    for i, (expr, strides) in enumerate(zip(exprs, loads)):
        for d, stride in enumerate(strides):
            if stride is None and nest.shape[d] % lanes == 0:
                tiles = Var("tile", 0, nest.shape[d] // lanes - 1)
                lane = expr.substitute({f"d{d}": tiles * lanes + Var("lane", 0, lanes - 1)})
                if lane_offsets(lane, lanes) is not None:
                    found.add((i, d))
    return found


def _load_weights(nest: LoopNest, ast: KernelOp) -> list:
    """Per load (in _indexes_of's order): 1 for a load inside the reduce, or in a kernel without one; 1 / the
    reduce's length for a load outside it, which runs once per output rather than once per reduce step."""
    nodes = ast.walk()
    reduces = [n for n in nodes if n.op is AstOp.REDUCE]  # (equal reduces reached twice: the loads of both)
    if not reduces:
        return [1] * sum(1 for n in nodes if n.op is AstOp.LOAD)
    inner = {id(n) for r in reduces for n in r.walk() if n.op is AstOp.LOAD}
    outside = 1 / max(1, prod(nest.shape[nest.n_output :]))  # (an empty reduce: no step at all)
    return [1 if id(n) in inner else outside for n in nodes if n.op is AstOp.LOAD]


def _load_lane_cost(stride) -> float:
    if stride == 1:
        return 2  # one vector load
    if stride == 0:
        return 0  # one scalar load, broadcast
    if stride in (2, 3, 4):
        return -0.5  # a wider load and a shuffle
    return -2  # a gather


def choose_options(nest: LoopNest, ast: KernelOp, capabilities=None) -> KernelOptions:
    """Heuristics. On a device that can share a reduce among a work-group, a reduce with too few outputs
    to fill the device is split across the group's work-items. Otherwise vector lanes go along a dim that
    memory reads contiguously (an output dim the store writes contiguously, else a reduce dim); then a
    register tile of output dims, so that each loaded value feeds several accumulators; then a small unroll
    of the innermost reduce."""
    capabilities = capabilities or SCALAR
    if nest_is_symbolic(nest):
        return _symbolic_options(nest, ast, capabilities)
    if capabilities.group_reduce:
        product = tiling.product_shape(nest, ast, _find_reduce(ast))
        if product is not None:
            tile, why = tiling.choose_local_tile(nest, product, capabilities)
            if tile is not None:
                return KernelOptions(local_tile=astuple(tile), reasons=[why])
    opts = _tiled_options(nest, ast, capabilities, capabilities.cache_blocking)
    tile = prod(factor for _, factor in opts.upcast)
    items = group_reduce_items(nest, capabilities, tile)
    if items:
        # the tile stays (each loaded value still feeds its accumulators); the innermost reduce dim is now
        # spread over the group, so no unroll of it
        opts.group, opts.unroll, opts.vector, opts.blocking = items, None, None, None
        opts.reasons = [r for r in opts.reasons if r.startswith("tile")]  # what the group replaced goes
        work_items = prod(nest.shape[: nest.n_output]) // tile
        opts.reasons.append(
            f"group: {work_items} work-items (one per tile) would fill {work_items / capabilities.compute_units:.0f} "
            f"of {_ITEMS_PER_COMPUTE_UNIT} per compute unit; {opts.group} share each reduce of "
            f"{prod(nest.shape[nest.n_output :])} instead"
        )
        if work_items < capabilities.compute_units:
            opts.upcast = []  # too few groups to keep every compute unit busy: one output per group
            opts.group = group_reduce_items(nest, capabilities, 1)
            opts.reasons.append(f"no tile: {work_items} tiles are fewer groups than the device has compute units")
    if capabilities.vector_width > 1:  # a CPU (a GPU's work-items would diverge at the borders)
        opts.interior = interior_bounds(nest, ast, opts)
        if opts.interior:
            opts.reasons.append(
                f"interior {opts.interior}: these iterations of these loops read no padding, so they run a copy of "
                "the body without its validity masks"
            )
    return opts


def _symbolic_options(nest: LoopNest, ast: KernelOp, capabilities) -> KernelOptions:
    """The options of a kernel with a run-time size: the heuristics' choice for the nest at the sizes' bounds, less
    whatever would split a symbolic dim (lanes, a tile or an unroll along it) and what needs every size known
    (cache blocking, work-group reduces and local tiles, which also divide their dims into fixed parts). The
    concrete dims keep their lanes and tiles: attention's scores read keys in vectors along the head dim."""
    bounded = LoopNest(tuple(s.vmax if isinstance(s, Node) else s for s in nest.shape), nest.n_output, nest.trackers)
    symbolic = {d for d, s in enumerate(nest.shape) if isinstance(s, Node)}
    opts = _tiled_options(bounded, ast, capabilities, cache_blocking=False)
    kept = KernelOptions(
        upcast=[(d, f) for d, f in opts.upcast if d not in symbolic],
        unroll=opts.unroll if opts.unroll and opts.unroll[0] not in symbolic else None,
        vector=opts.vector if opts.vector and opts.vector[0] not in symbolic else None,
        reasons=list(opts.reasons),
    )
    dims = ", ".join(f"d{d}" for d in sorted(symbolic))
    kept.reasons.append(f"{dims}: a run-time size (a Variable): no lanes, tile or unroll along it; no blocking, groups")
    return kept


def _tiled_options(nest: LoopNest, ast: KernelOp, capabilities, cache_blocking: bool) -> KernelOptions:
    """Lanes, register tile, unroll and cache blocking, as a CPU wants them (sized for its registers and caches)."""
    if len(nest.shape) != nest.n_output + 1:
        # this CPU's registers and caches size only plain products (one reduce dim), where that was measured; the
        # rest (convolutions: several reduce dims) keep the sizes of the AVX-512 machines, which measured faster on an
        # AVX2 Zen 3 too (ResNet-18 at 8x224, one thread: layer2's input gradient 103 ms a step with them, 285 ms
        # with Zen 3's 512 KiB L2 narrowing its tile; layer1's weight gradient 276 ms, 517 ms with 8x2 tiles)
        default = Capabilities()
        capabilities = replace(
            capabilities,
            vector_registers=default.vector_registers,
            l1_bytes=default.l1_bytes,
            l2_bytes=default.l2_bytes,
        )
    vector_width = capabilities.vector_width
    opts = KernelOptions()
    if not nest.shape:
        return opts
    load_exprs = _indexes_of(nest, ast, AstOp.LOAD)
    loads, store = dim_strides(nest, ast, load_exprs)
    width = vector_width
    if width > 1:
        exprs = load_exprs if any(None in ld for ld in loads) else []
        # a load outside the reduce (the epilogue's: an optimizer update fused into a weight gradient) runs once
        # per output, one inside it once per reduce step: its cost counts once per reduce length
        per_step = _load_weights(nest, ast)

        def lane_score(d):
            """What lanes along d cost per element: a contiguous load is cheap, a gather dear, a broadcast
            free, constant per-lane offsets a wider load and a shuffle; a contiguous store is cheap, a
            scatter dear (once per output); a reduce dim adds a combine of the lanes at the end."""
            score = sum(
                per_step[i] * (-0.5 if (i, d) in shuffled else _load_lane_cost(ld[d])) for i, ld in enumerate(loads)
            )
            if d < nest.n_output:
                return score + (1 if store[d] == 1 else 0 if store[d] == 0 else -1)
            return score - 0.5

        for lanes in (width, width // 2):  # half-width vectors where no dim is a multiple of the full width
            shuffled = _shuffled(nest, exprs, loads, lanes) if exprs else set()
            candidates = [
                d
                for d in range(len(nest.shape))
                if nest.shape[d] % lanes == 0
                and all(ld[d] is not None or (i, d) in shuffled for i, ld in enumerate(loads))
                and (d >= nest.n_output or store[d] is not None)
                and (any(ld[d] in (1, 2, 3, 4) for ld in loads) or (d < nest.n_output and store[d] == 1))
            ]
            if nest.n_output == len(nest.shape):  # elementwise: lanes where the store is contiguous, or none
                candidates = [d for d in candidates if store[d] == 1]
            if candidates:
                best = max(candidates, key=lambda d: (lane_score(d), d < nest.n_output))
                gathers = any(
                    ld[best] not in (0, 1, 2, 3, 4) and (i, best) not in shuffled and per_step[i] == 1
                    for i, ld in enumerate(loads)
                )
                if lane_score(best) > 0 or not gathers:  # without gathers, lanes beat scalars anyway
                    opts.vector = (best, lanes)
                    opts.reasons.append(
                        f"lanes: d{best} in vectors of {lanes}, lane cost score {lane_score(best):+.1f}, the best of "
                        f"dims {candidates} (per-load strides along it {[ld[best] for ld in loads]})"
                    )
                    break
        if opts.vector is None:
            opts.reasons.append(f"no lanes: no dim that every load and the store can read in vectors of {width}")
        width = opts.vector[1] if opts.vector else width
    if nest.n_output == len(nest.shape) and opts.vector is None:
        if vector_width > 1:  # a CPU: scalar code, but each loaded cache line used by one iteration
            opts.upcast = _transpose_tile(nest, loads, store)
            if opts.upcast:
                opts.reasons.append(
                    f"tile {opts.upcast}: a dim one load reads contiguously and the store does not, over long "
                    "stored rows (a transposed copy)"
                )
        return opts
    vdim = opts.vector[0] if opts.vector else None
    reducing = nest.n_output < len(nest.shape)
    most = _most_accumulators(nest, capabilities)
    # what the register tile is sized for: registers, a quarter of L2 (float32 elements) for the strip a tile re-reads
    # (half for a reduce over several dims, a convolution's channels and window: ResNet-18's transposed convolutions
    # at 28x28, 128 -> 128, read a strip of 4 vectors over 1152 steps, 288 KiB, and ran 26% faster with it than with
    # 2 vectors, one thread, in the step: 53.9 -> 39.1 ms for three), and whether L2's bandwidth limits the tile (AVX2)
    strip_share = 8 if len(nest.shape) - nest.n_output >= 2 else 16
    sizing = {
        "most_accumulators": most,
        "strip_elements": capabilities.l2_bytes // strip_share,
        "l2_streams": capabilities.vector_registers < 32,
    }
    if reducing:
        opts.upcast = _register_tile(nest, loads, vdim, width, weights=_load_weights(nest, ast), **sizing)
        if opts.upcast:
            opts.reasons.append(
                f"tile {opts.upcast}: the most multiply-adds per load that stays in the cache (at most {most} "
                "accumulators)"
            )
    else:
        # elementwise: a small tile along dims where some load does not move (its value is reused)
        budget = 4
        for d in sorted(
            (d for d in range(nest.n_output) if d != vdim), key=lambda d: (-sum(1 for ld in loads if ld[d] == 0), -d)
        ):
            # all of a small inner dim too (the remainder classes of a col2im: their masks become constants)
            f = next(
                (f for f in (4, 2) if nest.shape[d] % f == 0 and (nest.shape[d] > f or d > 0) and f <= budget), None
            )
            if f is not None:
                opts.upcast.append((d, f))
                budget //= f
            if len(opts.upcast) == 2 or budget < 2:
                break
        if opts.upcast:
            opts.reasons.append(f"tile {opts.upcast}: dims along which some load does not move (its value reused)")
    last = len(nest.shape) - 1
    # a full register tile (16 accumulators) with lanes along an output dim and a long reduce (a matrix product's):
    # each reduce step is a scalar broadcast and a vector load per tile row and column, and unrolled the steps share
    # their index arithmetic (GPT's 2048 x 1024 x 256 products, 4x4 tiles: 8-15% faster, one thread). Not measured
    # on shorter reduces (attention's 128); slower on ResNet's 8-accumulator tiles (r_2304_4_512: 0.41 -> 0.56 ms)
    output_lanes = (
        vdim is not None
        and vdim < nest.n_output
        and nest.shape[last] >= _UNROLLED_MIN_REDUCE
        and prod(f for _, f in opts.upcast) >= 16
    )
    if (
        reducing
        and last != vdim
        and nest.shape[last] % 4 == 0
        and nest.shape[last] > 4
        and (len(opts.upcast) < 2 or output_lanes)
    ):
        opts.unroll = (last, 4)
        opts.reasons.append(
            f"unroll d{last} by 4: the innermost reduce, "
            + ("lanes along an output dim" if output_lanes else "with fewer than two tiled dims")
        )
    if reducing and cache_blocking:
        opts.blocking = _cache_blocking(nest, ast, loads, opts, capabilities)
        if opts.blocking:
            opts.reasons.append(
                f"blocking {opts.blocking}: the reduce in chunks of {opts.blocking[1]} for blocks of "
                f"{opts.blocking[0]} outer iterations, so what each iteration re-reads stays in the cache"
            )
            # a tile reads a chunk's strip now, not the whole reduce's: a wider tile may fit the cache
            chunked = nest.shape[nest.n_output] // opts.blocking[1]
            wider = _register_tile(nest, loads, vdim, width, chunks=chunked, weights=_load_weights(nest, ast), **sizing)
            if wider != opts.upcast:
                trial = KernelOptions(wider, opts.unroll, opts.vector, reasons=list(opts.reasons))
                trial.blocking = _cache_blocking(nest, ast, loads, trial, capabilities)
                if trial.blocking:
                    trial.reasons.append(f"tile {wider}: wider, since a chunk's strip is what the tile re-reads")
                    opts = trial
    if reducing and cache_blocking:
        opts.prefetch = _prefetch_bytes(nest, ast, loads, opts, capabilities)
        if opts.prefetch:
            opts.reasons.append(
                f"prefetch {opts.prefetch} bytes ahead: a tile walks rows {PREFETCH_MIN_STRIDE_BYTES} bytes or more "
                "apart along the innermost reduce, more of them than L1 keeps"
            )
    return opts


# A register tile's vector loads that walk rows 2 KiB or more apart along the innermost reduce loop (a conv's weight
# gradient over its columns: a strip of 64 floats from each of 392-6272 rows, 4.5-18 KiB apart), more rows than L1
# keeps: the CPU's prefetchers follow no stride that long, so each row's lines arrive only when loaded. Prefetched
# about 128 KiB ahead, the loads find them in cache; so do the loads after the reduce (a fused optimizer update's
# parameter and momentum, blocking's partial sums), 128 KiB ahead along the output loop. ResNet-18's weight
# gradients of layers 2, 3 and 4 at 8x3x224x224, alone, one thread (/tmp script): 15.6 -> 13.1, 15.0 -> 12.4,
# 14.3 -> 12.1 ms (64 KiB ahead: 13.7, 12.8, 11.8; 256 KiB: 14.4 for layer 4). Where the rows a tile walks fit L1 (a
# blocked product's chunk: GPT's weight gradients over 2048 tokens), prefetches only cost (8.0 -> 9.6 ms), and so they
# do where each loaded vector feeds one accumulator (a column sum over rows 4 KiB apart, GPT's bias gradients: the
# loop is as much prefetches as adds; 0.80 -> 0.93 ms in the step): not there.
PREFETCH_MIN_STRIDE_BYTES = 2048
_PREFETCH_AHEAD_BYTES = 128 << 10


def _prefetch_bytes(nest: LoopNest, ast: KernelOp, loads: list, opts: KernelOptions, capabilities) -> int | None:
    """How far ahead such loads prefetch (None: no prefetches). Only with lanes along an output dim (the loads are
    the tile's rows), as cache blocking measures the rows one tile walks."""
    vdim = opts.vector[0] if opts.vector else None
    if vdim is None or vdim >= nest.n_output or opts.group:
        return None
    last = len(nest.shape) - 1
    itemsizes = [n.dtype.itemsize for n in ast.walk() if n.op is AstOp.LOAD]
    inside = _load_weights(nest, ast)
    reused = [d for d, f in opts.upcast if d != vdim and f > 1]  # tile dims: a load they do not move feeds several
    strides = [
        ld[last] * size
        for ld, size, weight in zip(loads, itemsizes, inside)
        if weight == 1
        and ld[vdim] == 1
        and ld[last]
        and ld[last] * size >= PREFETCH_MIN_STRIDE_BYTES
        and any(ld[d] == 0 for d in reused)
    ]
    if not strides:
        return None
    steps = prod(nest.shape[nest.n_output :])  # the reduce steps one tile takes, or a chunk's
    if opts.blocking:
        steps = steps // nest.shape[nest.n_output] * opts.blocking[1]
    if steps * _tile_bytes_per_reduce_step(nest, loads, opts) <= _l1_tile_bytes(capabilities):
        return None
    return _PREFETCH_AHEAD_BYTES


_UNROLLED_MIN_REDUCE = 256  # an innermost reduce this long is unrolled by 4 under a two-dim tile with output lanes
_TRANSPOSE_MIN_ROW = 256  # stored rows this long make a transposed copy take a tile along the load's rows


def _transpose_tile(nest: LoopNest, loads: list, store: list) -> list:
    """An elementwise kernel's scalar tile where lanes would gather (a transposed copy): 8 steps along the dim that
    a load reads contiguously and the store does not, so that each iteration reads 8 neighbours of one cache line,
    instead of the loop over a stored row fetching a new line per element. GPT's weight copies (1024x256 and the
    like) in the step: 0.41 -> 0.26 ms. Only over stored rows of 256 or more: over 128 (ResNet's 1152x128 weight
    copy) it was slower in the step (0.38 -> 0.43 ms), though faster alone."""
    if not any(store[d] == 1 and nest.shape[d] >= _TRANSPOSE_MIN_ROW for d in range(nest.n_output)):
        return []
    for d in sorted(range(nest.n_output), key=lambda d: -nest.shape[d]):
        if store[d] != 1 and any(ld[d] == 1 for ld in loads):
            factor = next((f for f in (8, 4, 2) if nest.shape[d] % f == 0 and nest.shape[d] > f), None)
            if factor:
                return [(d, factor)]
    return []


# Output loops whose iterations all read inside a padded input (a convolution's interior: away from the borders by
# the padding) get a copy of the loop body without the padding's validity masks. In a padded convolution's hot loop the
# masks cost as much as the arithmetic: ResNet-18's 3x3 convolution 64 -> 64 at 56x56, batch 8, one thread, 12.0 ms
# as it is, 9.6 ms on an input padded beforehand (a /tmp script).
_INTERIOR_MAX_TRIM = 8  # iterations trimmed off either end of a loop, at most, to find its interior
_INTERIOR_MIN_SHARE = 0.5  # the interior's share of the iterations, at least, for a second copy of the body to pay


def _loop_var(d: int, nest: LoopNest) -> str:
    return f"g{d}" if d < nest.n_output else f"r{d}"


def _loop_count(d: int, nest: LoopNest, opts: KernelOptions) -> int:
    """Iterations of dim d's loop under `opts`' tile, lanes and unroll."""
    vdim, width = opts.vector or (None, 1)
    unrolled = opts.unroll[1] if opts.unroll and opts.unroll[0] == d else 1
    return nest.shape[d] // ((width if d == vdim else 1) * dict(opts.upcast).get(d, 1) * unrolled)


def _validity_terms(nest: LoopNest, leaves: list, bounds: dict, opts: KernelOptions, dim: int) -> int:
    """How many validity conditions of the reads in `leaves` mention dim's loop variable, the loops taking the
    iterations in `bounds` ({dim: (lo, hi)}, else all of them) and every tile offset, lane and unrolled step."""
    idx = []
    for d in range(len(nest.shape)):
        loops = _loop_count(d, nest, opts)
        factor = nest.shape[d] // loops
        lo, hi = bounds.get(d, (0, loops - 1))
        var = Var(_loop_var(d, nest), lo, hi)
        idx.append(var * factor + Var(f"t{d}", 0, factor - 1) if factor > 1 else var)
    name, count = _loop_var(dim, nest), 0
    for node in leaves:
        st = nest.trackers[id(node)]
        _, valid = st.index_and_valid(
            [Num(0) if st.shape[k] == 1 and nest.shape[k] != 1 else i for k, i in enumerate(idx)]
        )
        terms = valid.terms if isinstance(valid, AndNode) else () if isinstance(valid, Num) else (valid,)
        count += sum(1 for t in terms if name in {v.name for v in t.variables()})
    return count


def interior_bounds(nest: LoopNest, ast: KernelOp, opts: KernelOptions) -> tuple | None:
    """((dim, lo, hi), ...): for each output loop (dim's iterations under `opts`' tile and lanes), and for the
    innermost reduce loop, along which the reads inside the reduce are masked, the iterations lo..hi where the
    fewest of those masks remain, as long as the output loops' interiors together keep at least half of their
    iterations; None where no mask goes away, and for kernels without a reduce: a copy of an elementwise body, one
    element, costs its branch per element (ResNet-18's fused elementwise kernels at 8x224 ran up to 80% slower)."""
    reduce = _find_reduce(ast)
    if reduce is None or opts.group or opts.local_tile or nest_is_symbolic(nest) or 0 in nest.shape:
        return None
    leaves = [n for n in reduce.srcs[0].walk() if n.op in (AstOp.LOAD, AstOp.CONST, AstOp.VALID)]
    innermost = len(nest.shape) - 1
    found, share = [], 1.0
    for d in [*range(nest.n_output), innermost]:
        loops = _loop_count(d, nest, opts)
        if loops < 3 or (d == 0 and opts.blocking):
            continue
        if d == innermost and opts.blocking and d == nest.n_output:
            continue
        full = _validity_terms(nest, leaves, {}, opts, d)
        if not full:
            continue
        trims = range(min(_INTERIOR_MAX_TRIM, loops // 4) + 1)
        below = [_validity_terms(nest, leaves, {d: (t, loops - 1)}, opts, d) for t in trims]
        above = [_validity_terms(nest, leaves, {d: (0, loops - 1 - t)}, opts, d) for t in trims]
        lo, hi = below.index(min(below)), loops - 1 - above.index(min(above))
        if _validity_terms(nest, leaves, {d: (lo, hi)}, opts, d) < full:
            found.append((d, lo, hi))
            if d < nest.n_output:
                share *= (hi - lo + 1) / loops
    return tuple(found) if found and share >= _INTERIOR_MIN_SHARE else None


# a work-item per output fills a GPU when there are this many per compute unit (several warps each)
_ITEMS_PER_COMPUTE_UNIT = 256
_MIN_GROUP_REDUCE = 256  # a reduce shorter than this is not worth a work-group and barriers


def group_reduce_items(nest: LoopNest, capabilities, tile: int = 1) -> int | None:
    """Work-items per output tile for a reduce whose tiles alone would leave the device idle: a power of two
    up to the device's limit, no wider than the innermost reduce dim (its lanes read consecutive elements),
    and with room in local memory for every accumulator of the tile."""
    lanes = capabilities.group_reduce
    if not lanes or nest.n_output == len(nest.shape):
        return None
    work_items = prod(nest.shape[: nest.n_output]) // tile
    length = prod(nest.shape[nest.n_output :])
    if length < _MIN_GROUP_REDUCE or work_items >= capabilities.compute_units * _ITEMS_PER_COMPUTE_UNIT:
        return None
    inner = nest.shape[-1]
    while lanes > 32 and (lanes // 2 >= inner or lanes * tile * 4 > capabilities.local_memory // 2):
        lanes //= 2
    return lanes


# Cache blocking's sizes, as shares of the CPU's caches (Capabilities.l1_bytes, l2_bytes): what the inner loops
# re-read per chunk, half of L2; a register tile's rows of one chunk, most of L1 (40 of 48 KiB)
_CHUNK_SHARE_OF_L2 = 2
_L1_TILE_SHARE = 5 / 6


def partial_sum_store(ast: KernelOp) -> KernelOp | None:
    """The store of a kernel that writes its sum as it is: cache blocking keeps partial sums there."""
    reduce = _find_reduce(ast)
    if reduce is None or reduce.arg[0] is not Op.SUM or not reduce.dtype.is_float:
        return None
    holder = next((s for s in stores_of(ast) if s.srcs[0] == reduce), None)
    if holder is None or any(n.op is AstOp.LOAD and n.arg[0] == holder.arg[0] for n in ast.walk()):
        return None  # no such store, or the kernel reads that buffer too
    return holder


def _cache_blocking(nest: LoopNest, ast: KernelOp, loads: list, opts: KernelOptions, capabilities) -> tuple | None:
    """(block, chunk) when the inputs that every iteration of the outermost output loop reads again are
    too big for the cache (a matrix product's second operand): then the reduce goes in chunks small
    enough that those inputs' chunk stays in the cache while a block of outer iterations reuses it.
    The partial sums live in the output that holds the plain sum; other outputs are written at the end."""
    if partial_sum_store(ast) is None:
        return None
    cached = capabilities.l2_bytes // 4  # float32 elements
    chunk_elements = cached // _CHUNK_SHARE_OF_L2
    l1_tile_bytes = _l1_tile_bytes(capabilities)
    sizes = [_elements(nest.trackers[id(n)]) for n in ast.walk() if n.op is AstOp.LOAD]
    reread = sum(n for ld, n in zip(loads, sizes) if ld[0] == 0)  # inputs the outer loop does not move
    if reread <= cached:
        return None
    vdim, width = opts.vector or (None, 1)
    rdim = nest.n_output
    step = (width if vdim == rdim else 1) * (opts.unroll[1] if opts.unroll and opts.unroll[0] == rdim else 1)
    size = nest.shape[rdim]
    chunk = next(
        (c for c in range(size - step, 0, -step) if size % c == 0 and reread * c // size <= chunk_elements),
        None,
    )
    if chunk is None and size > step and size % step == 0 and reread * step // size <= cached:
        # a coarse first reduce dim (a batch of 8 images) whose one step's share fills more than half of L2 but fits
        # it: still far better than re-reading all of it from memory (ResNet-18's stem weight gradient at
        # 8x3x224x224, one thread: 140 -> 37 ms, chunks of one image)
        chunk = step
    if chunk is None:
        return None
    # and short enough that the rows one register tile reads in a chunk stay in L1 for the tiles beside it, which
    # read the same rows of the operand they share (a weight gradient over 2048 tokens: chunks of 512 -> 128, 2x)
    # (per element of the reduce: an unrolled loop step reads `unroll` elements' lines)
    per_element = _tile_bytes_per_reduce_step(nest, loads, opts)
    if per_element:
        chunk = next((c for c in range(chunk, 0, -step) if size % c == 0 and c * per_element <= l1_tile_bytes), chunk)
    # a block of outer iterations shares one read of that chunk, and the block's partial sums stay in the
    # cache too; an even number of blocks, at least four, for the threads to share
    outer = nest.shape[0] // ((width if vdim == 0 else 1) * dict(opts.upcast).get(0, 1))
    outputs_per_outer = prod(nest.shape[: nest.n_output]) // outer
    blocks = [
        b
        for b in range(1, outer // 4 + 1)
        if outer % b == 0 and (outer // b) % 2 == 0 and outputs_per_outer * b <= chunk_elements // 2
    ]
    return (max(blocks), chunk) if blocks else None


def _l1_tile_bytes(capabilities) -> int:
    """What a register tile's rows of one chunk may take of L1 (cache blocking's and the prefetches' measure)."""
    return int(capabilities.l1_bytes * _L1_TILE_SHARE)


def _tile_bytes_per_reduce_step(nest: LoopNest, loads: list, opts: KernelOptions) -> int:
    """The bytes of cache lines one reduce step of a register tile reads (_tile_lines_per_reduce_step)."""
    return int(_tile_lines_per_reduce_step(nest, loads, opts) * 64)


def _tile_lines_per_reduce_step(nest: LoopNest, loads: list, opts: KernelOptions) -> float:
    """Cache lines (16 float32) that one step of the reduce loop reads for a register tile, over the loads that move
    with the reduce; 0 when lanes run along the reduce (the rows are then read contiguously anyway). A load
    contiguous along the reduce (a product's broadcast operand, its rows read along k) reads a new line every 16
    steps, so its lines count a sixteenth each."""
    vdim, width = opts.vector or (None, 1)
    rdim = nest.n_output
    if vdim is not None and vdim >= rdim:
        return 0
    tile = dict(opts.upcast)
    lines = 0
    for ld in loads:
        if not ld[rdim]:
            continue
        count = 1
        for d in range(nest.n_output):
            factor = tile.get(d, 1) * (width if d == vdim else 1)
            if ld[d] and factor > 1:
                count *= -(-factor // 16) if ld[d] == 1 else factor
        lines += count / 16 if ld[rdim] == 1 else count
    return lines


# A convolution's weight gradient (a reduce over batch and pixels: two reduce dims or more, and long) takes up to 24
# accumulators on a device with 16-lane vectors (AVX-512: 32 vector registers, so 24 accumulators leave 8 for the
# loads); the rest keep 16. ResNet-18 at 8x3x224x224, one thread, in the step: the stem's weight gradient 37 -> 25 ms
# (8x3 tile), layer1's four 101 -> 94 ms (4x2x3). Not taken where it did not pay: the same kernels at 1x3x64x64
# (reduces of 64-256: no faster), plain products of one reduce dim (GPT's; layer1's column gradient, reduce 64,
# 20% slower).
_MOST_ACCUMULATORS = 16
_MOST_ACCUMULATORS_WINDOWS = 24
_WINDOWS_MIN_REDUCE = 4096


def _most_accumulators(nest: LoopNest, capabilities) -> int:
    """At most this many accumulators in a register tile. With AVX2's 16 vector registers (declared for plain products
    only, _tiled_options), 8: a product's 4x4 tile spills to the stack in the unrolled inner loop (GPT's 2048x1024x256,
    one thread, Zen 3: 4x2 tile 24.4-24.9 ms, 4x4 25.0-36.7, 4x4 unrolled 30.7-37.5)."""
    if capabilities.vector_registers < 32:
        return _MOST_ACCUMULATORS // 2
    reduce_dims = nest.shape[nest.n_output :]
    windows = len(reduce_dims) >= 2 and prod(reduce_dims) >= _WINDOWS_MIN_REDUCE
    return _MOST_ACCUMULATORS_WINDOWS if windows and capabilities.vector_width >= 16 else _MOST_ACCUMULATORS


def _register_tile(
    nest: LoopNest,
    loads: list,
    vdim: int | None,
    width: int,
    chunks: int = 1,
    weights: list | None = None,
    *,
    most_accumulators: int,
    strip_elements: int,
    l2_streams: bool,
) -> list:
    """The register tile of a reduce: up to three output dims and their factors (along the lane dim, in
    vectors), at most `most_accumulators` accumulators, for the most multiply-adds per load. Per reduce step the tile
    does one multiply-add per accumulator and loads, of each input, one value (or vector) per tile
    position along the dims that input moves with; a scalar load also counts the cache lines it brings
    in that serve it alone (a broadcast operand read across its rows). The strip of the vector input
    that one tile reads (reduce size x tile width) is read again by the next tile of the inner output
    loop: where 4 vectors of it would not stay in the cache, at most 2 (8 x 2 rather than 4 x 4). A strip
    that no other output loop re-reads (a sum over the rows of a matrix: each load is used once) takes 4
    vectors: 4 cache lines of each row per step rather than 2 (GPT's bias gradients, sums of 2048 rows of
    1024, 768 and 256 floats, one thread: 480 -> 340, 370 -> 265, 81 -> 73 us)."""
    reduce_size = prod(nest.shape[nest.n_output :]) // chunks
    reread = vdim is not None and any(
        ld[vdim] != 0 and any(ld[d] == 0 for d in range(nest.n_output) if d != vdim) for ld in loads
    )
    choices = []
    most_strip = 4 if reduce_size * width * 4 <= strip_elements or not reread else 2
    # output dims along which only the vector input moves, past the whole of what its reduce walks (a product's
    # operand copied into panels side by side): a tile along them reads a strip per position, as more vectors along
    # the lanes do. (A step smaller than the walk, such as a window's next column, reads the same strip shifted.)
    widening = set()
    if vdim is not None and vdim < nest.n_output and reread:
        reduce_dims = range(nest.n_output, len(nest.shape))

        def walk(ld) -> int:
            return sum(abs(ld[r]) * (nest.shape[r] - 1) if ld[r] is not None else 1 << 30 for r in reduce_dims) + 1

        for d in range(nest.n_output):
            moving = [ld for ld in loads if ld[d] != 0]
            if (
                d != vdim
                and moving
                and len(moving) < len(loads)
                and all(ld[vdim] != 0 and (ld[d] is None or abs(ld[d]) >= walk(ld)) for ld in moving)
            ):
                widening.add(d)
    for d in range(nest.n_output):
        if d == vdim:
            factors = [f for f in (4, 2) if f <= most_strip and nest.shape[d] % (width * f) == 0]
        else:
            size = nest.shape[d]
            factors = [f for f in (8, 4, 2) if size % f == 0 and size > f]
            if size in (3, 5, 7):  # a kernel's height or width: all of it
                factors.append(size)
            elif size % 7 == 0:  # the rows of a 7x7 or 14x14 feature map
                factors.append(7)
        choices += [(d, f) for f in factors]
    innermost = len(nest.shape) - 1  # a reduce dim

    def lines(ld, tile) -> float:
        """Cache lines a load brings in per reduce step: per tile position along dims with a stride of 16
        floats or more, fewer where positions share a line; new ones each step only if the load moves
        16 floats or more per reduce step (else a line serves 16 steps)."""
        inner = ld[innermost]
        if vdim is not None and ld[vdim] != 0:
            # vector loads use all of their lines, but a strip that moves a row or more per reduce step comes from
            # L2 (a product's second operand: its rows are 4 KiB apart, one L1 set), a line per 16 lanes. On an
            # AVX2 CPU that is the limit: Zen 3's L2 serves 32 bytes a cycle, and its 8 accumulators do 8 vector
            # multiply-adds a step in 4 cycles. GPT's 2048x1024x256, one thread: a 2x4 tile (2 lines a step) ran at
            # 33 GFLOP/s, a 4x2 tile (1 line) at 47. Not counted with 32 registers (AVX-512: the 4x4 tiles were
            # measured best there, with an L2 of 64 bytes a cycle)
            if not l2_streams or ld[vdim] != 1 or (inner is not None and abs(inner) < 16):
                return 0.0
            return prod(f for d, f in tile if ld[d] != 0) * width / 16
        count = 1.0
        for d, f in tile:
            stride = abs(ld[d]) if ld[d] is not None else 1 << 30
            if stride:
                count *= f if stride >= 16 else -(-f * stride // 16)
        return count if inner is None or abs(inner) >= 16 else count / 16

    # a load of the epilogue (after the reduce: attention's mask, a bias) runs once per output, not per reduce step
    weights = weights or [1] * len(loads)

    def per_load(tile) -> float:
        accumulators = prod(f for _, f in tile)
        loaded = sum(w * (prod(f for d, f in tile if ld[d] != 0) + lines(ld, tile)) for w, ld in zip(weights, loads))
        return accumulators / max(loaded, 1)

    def spread(tile) -> int:  # ties go to tiles whose loads stay close in memory (few cache lines)
        return sum(abs(ld[d]) if ld[d] is not None else 1 << 30 for d, _ in tile for ld in loads if ld[d] != 0)

    best, best_key = [], (per_load([]), 1, 0)
    for n in (1, 2, 3):
        for tile in itertools.combinations(choices, n):
            dims = [d for d, _ in tile]
            if len(set(dims)) < n or prod(f for _, f in tile) > most_accumulators:
                continue
            strips = prod(f for d, f in tile if d in widening or d == vdim)
            if widening and strips > 2 and reduce_size * width * strips > strip_elements:
                continue
            key = (per_load(tile), prod(f for _, f in tile), -spread(tile))
            if key > best_key:
                best, best_key = list(tile), key
    return best


class _Emitter:
    """Appends UOps, reusing an identical pure UOp already visible in an enclosing scope."""

    def __init__(self):
        self.uops: list = []
        self.scopes: list = [{}]

    def emit(self, op, dtype, srcs=(), arg=None, pure=True, vec: int = 1) -> UOp:
        key = (op, dtype, tuple(id(s) for s in srcs), arg, vec) if pure else None
        if key is not None:
            for scope in reversed(self.scopes):
                if key in scope:
                    return scope[key]
        u = UOp(op, dtype, tuple(srcs), arg, len(self.uops), vec)
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
    def __init__(
        self,
        ast: KernelOp,
        buffer_dtypes: tuple,
        name: str,
        options: KernelOptions | None = None,
        capabilities=None,
    ):
        self.ast, self.buffer_dtypes, self.name = ast, buffer_dtypes, name
        self.nest = build_loop_nest(ast)
        self.opts = options if options is not None else choose_options(self.nest, ast, capabilities)
        if self.opts.group is not None and self.opts.group < 2:
            self.opts.group = None  # one work-item per output: the plain reduce
        if self.opts.group and (self.opts.unroll or self.opts.vector or self.opts.blocking):
            raise ValueError(f"kernel {name}: a group reduce takes no unroll, lanes or blocking ({self.opts})")
        if self.opts.group and self.opts.group & (self.opts.group - 1):
            raise ValueError(f"kernel {name}: a group reduce of {self.opts.group} items (a power of two)")
        if self.opts.group and _find_reduce(ast) is None:
            raise ValueError(f"kernel {name}: a group reduce needs a reduce")
        self.product = None
        if self.opts.local_tile:
            others = (self.opts.upcast, self.opts.unroll, self.opts.vector, self.opts.blocking, self.opts.group)
            self.product = tiling.product_shape(self.nest, ast, _find_reduce(ast))
            if any(others) or self.product is None:
                raise ValueError(f"kernel {name}: a local tile takes a plain matrix product and no other option")
        holder = partial_sum_store(ast) if self.opts.blocking else None
        if holder is not None and buffer_dtypes[holder.arg[0]] != _compute_dtype(_find_reduce(ast).dtype):
            self.opts.blocking = None  # the partial sums are kept in that output: it must hold them exactly
        self.width = self.opts.vector[1] if self.opts.vector else 1
        self.e = _Emitter()
        self.reduce = _find_reduce(ast)
        self.prefetching = None  # the loop whose walk loads prefetch along, while they are emitted (opts.prefetch)

    # --- emitting with lanes ---------------------------------------------------------------------
    def alu(self, op: Op, dtype, srcs, arg=None) -> UOp:
        """An ALU op; scalar operands of a vector op are broadcast to its lanes. x*1 and x+0 fold away."""
        # a float x + 0 stays: -0.0 + 0.0 is 0.0
        if (op is Op.MUL or (op is Op.ADD and not dtype.is_float)) and len(srcs) == 2:
            unit = 1 if op is Op.MUL else 0
            for keep, other in ((srcs[0], srcs[1]), (srcs[1], srcs[0])):
                if other.op is IrOp.CONST and other.arg == unit and other.dtype == dtype and keep.dtype == dtype:
                    return keep
        vec = max(s.vec for s in srcs)
        srcs = tuple(self.broadcast(s, vec) for s in srcs)
        return self.e.emit(op, dtype, srcs, arg, vec=vec)

    def broadcast(self, u: UOp, vec: int) -> UOp:
        return u if u.vec == vec else self.e.emit(IrOp.BROADCAST, u.dtype, (u,), None, vec=vec)

    def const(self, value, dtype) -> UOp:
        return self.e.emit(IrOp.CONST, dtype, (), value)

    # --- index expressions -----------------------------------------------------------------------
    def _node_uop(self, node, vars_uop: dict) -> UOp:
        i32 = dt.int32
        if isinstance(node, Num):
            return self.const(node.value, i32)
        if isinstance(node, Var):
            return vars_uop[node.name]
        if isinstance(node, MulNode):
            return self.alu(Op.MUL, i32, (self._node_uop(node.a, vars_uop), self.const(node.b, i32)), INDEX_ARITHMETIC)
        if isinstance(node, DivNode):
            return self.alu(Op.IDIV, i32, (self._node_uop(node.a, vars_uop), self.const(node.b, i32)))
        if isinstance(node, ModNode):
            return self.alu(Op.MOD, i32, (self._node_uop(node.a, vars_uop), self.const(node.b, i32)))
        if isinstance(node, SumNode):
            # scalar terms first, so that they are shared by every lane and every use
            terms = sorted(node.terms, key=lambda t: "lane" in {v.name for v in t.variables()})
            out = self._node_uop(terms[0], vars_uop)
            for t in terms[1:]:
                out = self.alu(Op.ADD, i32, (out, self._node_uop(t, vars_uop)), INDEX_ARITHMETIC)
            return out
        if isinstance(node, LtNode):
            return self.alu(Op.CMPLT, dt.bool_, (self._node_uop(node.a, vars_uop), self.const(node.b, i32)))
        if isinstance(node, GeNode):  # a >= b  <=>  b-1 < a
            return self.alu(Op.CMPLT, dt.bool_, (self.const(node.b - 1, i32), self._node_uop(node.a, vars_uop)))
        if isinstance(node, AndNode):
            out = self._as_bool(self._node_uop(node.terms[0], vars_uop))
            for t in node.terms[1:]:
                out = self.alu(Op.AND, dt.bool_, (out, self._as_bool(self._node_uop(t, vars_uop))))
            return out
        raise NotImplementedError(f"index node {type(node).__name__}")

    def _as_bool(self, u: UOp) -> UOp:
        if u.dtype == dt.bool_:
            return u
        return self.alu(Op.CMPNE, dt.bool_, (u, self.const(0, u.dtype)))

    def _memory_access(self, param: UOp, index, valid, vars_uop, is_store: bool = False) -> tuple:
        """(op, arg, srcs, vec) for reading `index`: a scalar load, `vec` consecutive lanes from the lane-0
        index (or every stride-th, or at constant offsets, as arg says), or a gather with one index per lane.
        A store takes the same srcs: IrOp.LOAD stands for a store, IrOp.GATHER for a scatter."""
        has_lane = any(v.name == "lane" for v in index.variables())
        valid_srcs = () if isinstance(valid, Num) and valid.value == 1 else (self._node_uop(valid, vars_uop),)
        if not has_lane:
            if valid_srcs and valid_srcs[0].vec > 1:  # lanes differ only in validity
                return (
                    IrOp.GATHER,
                    None,
                    (param, self.broadcast(self._node_uop(index, vars_uop), self.width), *valid_srcs),
                    self.width,
                )
            return IrOp.LOAD, None, (param, self._node_uop(index, vars_uop), *valid_srcs), 1
        stride = _lane_stride(index, "lane")
        if stride == 1:
            base = self._node_uop(index.substitute({"lane": 0}), vars_uop)
            return IrOp.LOAD, None, (param, base, *valid_srcs), self.width
        if stride in (2, 3, 4) and not is_store:  # a wider contiguous load, every stride-th element kept
            base = self._node_uop(index.substitute({"lane": 0}), vars_uop)
            return IrOp.LOAD, stride, (param, base, *valid_srcs), self.width
        offsets = lane_offsets(index, self.width) if stride is None and not is_store else None
        if offsets is not None:  # constant per-lane offsets (an interleave): a contiguous load and a shuffle
            base = self._node_uop(index.substitute({"lane": 0}), vars_uop)
            return IrOp.LOAD, offsets, (param, base, *valid_srcs), self.width
        return IrOp.GATHER, None, (param, self._node_uop(index, vars_uop), *valid_srcs), self.width

    # --- values ----------------------------------------------------------------------------------
    def _indexes(self, node: KernelOp, idx_nodes: list):
        st = self.nest.trackers[id(node)]
        idxs = [Num(0) if st.shape[d] == 1 and self.nest.shape[d] != 1 else i for d, i in enumerate(idx_nodes)]
        return st.index_and_valid(idxs)

    def _value(self, node: KernelOp, idx_nodes: list, vars_uop: dict, memo: dict, acc_value: UOp | None) -> UOp:
        """The value of `node` at one output point. Its sources are computed first, depth first and in order
        (iteratively: a fused chain may be thousands of ops deep, past Python's recursion limit)."""
        stack = [(node, False)]
        while stack:
            current, sources_done = stack.pop()
            if id(current) in memo:
                continue
            if sources_done or current.op is AstOp.REDUCE or not current.srcs:
                memo[id(current)] = self._node_value(current, idx_nodes, vars_uop, memo, acc_value)
                continue
            stack.append((current, True))
            stack.extend((s, False) for s in reversed(current.srcs) if id(s) not in memo)
        return memo[id(node)]

    def _node_value(self, node: KernelOp, idx_nodes: list, vars_uop: dict, memo: dict, acc_value) -> UOp:
        """The value of one node at one output point, its sources' values in `memo` (a reduce's is `acc_value`)."""
        e = self.e
        cdt = _compute_dtype(node.dtype) if node.dtype is not None else None
        if node.op is AstOp.REDUCE:
            out = acc_value
        elif node.op is AstOp.LOAD:
            index, valid = self._indexes(node, idx_nodes)
            if isinstance(valid, Num) and valid.value == 0:
                out = self.const(zero(cdt), cdt)
            else:
                op, arg, srcs, vec = self._memory_access(self.params[node.arg[0]], index, valid, vars_uop)
                self._prefetch(self.prefetching, op, arg, srcs, vec, index, node.dtype)
                out = e.emit(op, node.dtype, srcs, arg, vec=vec)
                if cdt != node.dtype:
                    out = self.alu(Op.CAST, cdt, (out,), node.dtype)
        elif node.op is AstOp.CONST:
            value, _ = node.arg
            _, valid = self._indexes(node, idx_nodes)
            out = self.const(value, cdt)
            if not (isinstance(valid, Num) and valid.value == 1):
                outside = self.const(zero(cdt), cdt)
                out = (
                    outside
                    if isinstance(valid, Num)
                    else self.alu(Op.WHERE, cdt, (self._node_uop(valid, vars_uop), out, outside))
                )
        elif node.op is AstOp.VALID:
            _, valid = self._indexes(node, idx_nodes)
            out = (
                self.const(bool(valid.value), dt.bool_)
                if isinstance(valid, Num)
                else self._as_bool(self._node_uop(valid, vars_uop))
            )
        else:
            srcs = tuple(memo[id(s)] for s in node.srcs)
            if node.op is Op.CAST or node.op is Op.BITCAST:
                out = self._convert(node, srcs[0])
            else:
                out = self.alu(node.op, cdt, srcs)
                if node.dtype == dt.float16:  # each float16 op rounds its result to half, as PyTorch's do
                    out = self.alu(
                        Op.CAST, dt.float32, (self.alu(Op.CAST, dt.float16, (out,), dt.float32),), dt.float16
                    )
        return out

    def _prefetch(self, loop: str | None, op, arg, srcs: tuple, vec: int, index, dtype) -> None:
        """Before a contiguous vector load (op, arg, srcs, vec as _memory_access gives them): its element opts.prefetch
        bytes ahead (whole iterations of `loop`; None: no prefetch), prefetched where that loop moves it
        PREFETCH_MIN_STRIDE_BYTES or more a step: the load's index, and the offset as the prefetch's arg (no index
        arithmetic: past the buffer's end the sum may leave int32's range)."""
        if loop is None or op is not IrOp.LOAD or vec == 1 or arg is not None or len(srcs) != 2:
            return
        step = _lane_stride(index, loop)
        if step and step * dtype.itemsize >= PREFETCH_MIN_STRIDE_BYTES:
            ahead = -(-self.opts.prefetch // (step * dtype.itemsize))
            self.e.emit(IrOp.PREFETCH, None, srcs, ahead * step)  # (pure: loads the tile shares share one)

    def _convert(self, node: KernelOp, src: UOp) -> UOp:
        """cast/bitcast, with float16 values held as float32: a cast to float16 still rounds to half, and a
        bitcast from or to float16 goes through a real half value."""
        f16, f32 = dt.float16, dt.float32
        if node.op is Op.BITCAST:
            source = node.arg  # the source dtype (Tensor.bitcast records it)
            if source == f16:
                src = self.alu(Op.CAST, f16, (src,), f32)
            out = self.alu(Op.BITCAST, node.dtype, (src,), source)
            return self.alu(Op.CAST, f32, (out,), f16) if node.dtype == f16 else out
        if node.dtype == f16:  # round to half and back, as storing and reloading would
            half = self.alu(Op.CAST, f16, (src,), src.dtype)
            return self.alu(Op.CAST, f32, (half,), f16)
        cdt = _compute_dtype(node.dtype)
        return src if src.dtype == cdt else self.alu(Op.CAST, cdt, (src,), src.dtype)

    # --- the loop nest ---------------------------------------------------------------------------
    def store_outputs(self, selected, idx: list, vars_uop: dict, acc_value) -> None:
        """The stores of one output point (`idx` over the loop nest, reduce dims 0) given the reduce's result."""
        memo: dict = {}  # shared by the stores: a value one output needs is computed once for all
        for store in selected:
            buffer_index = store.arg[0]
            out_dtype = self.buffer_dtypes[buffer_index]
            value = self._value(store.srcs[0], idx, vars_uop, memo, acc_value)
            if value.dtype != out_dtype:
                value = self.alu(Op.CAST, out_dtype, (value,), value.dtype)
            index, _ = self._indexes(store, idx)
            param = self.params[buffer_index]
            op, _, srcs, vec = self._memory_access(param, index, Num(1), vars_uop, is_store=True)
            value = self.broadcast(value, vec)
            self.e.emit(IrOp.STORE if op is IrOp.LOAD else IrOp.SCATTER, None, (*srcs, value), pure=False)

    def emit_params(self, outputs: int) -> None:
        """A param per buffer (the first `outputs` written), in self.params."""
        self.params = [
            self.e.emit(IrOp.PARAM, d, (), (i, i < outputs), pure=False) for i, d in enumerate(self.buffer_dtypes)
        ]

    def lower(self) -> Program:
        if self.product is not None:
            return tiling.lower_tiled(self, self.product, tiling.LocalTile(*self.opts.local_tile))
        e, nest = self.e, self.nest
        stores = stores_of(self.ast)
        self.emit_params(len(stores))
        upcast = dict(self.opts.upcast)
        unroll_dim, unroll = self.opts.unroll or (None, 1)
        vdim, width = self.opts.vector or (None, 1)
        vars_uop = {}
        variables = kernel_variable_nodes(nest)
        for var in variables:  # the run-time values, read by loop bounds and index expressions
            vars_uop[var.name] = e.emit(IrOp.VARIABLE, dt.int32, (), (var.name, var.vmin, var.vmax), pure=False)
        lane = Var("lane", 0, width - 1)
        if width > 1:
            vars_uop["lane"] = e.emit(IrOp.LANES, dt.int32, (), None, vec=width)
        group = self.opts.group
        if group:  # the work-item's place in its work-group: its share of the reduce
            vars_uop["lid"] = e.emit(IrOp.LOCAL_ID, dt.int32, (), group, pure=False)

        def split(d, var, factor):
            """The index of dim d: its loop variable, times the tile, plus a tile offset (and the lane)."""
            if d == vdim:
                return lambda k: var * (width * factor) + k * width + lane
            return lambda k: var * factor + k if factor > 1 else var

        def open_range(name, size, kind):
            if isinstance(size, Node):  # a loop of a run-time number of iterations, at most its bound
                bound = self._node_uop(size, vars_uop)
                vars_uop[name] = e.emit(IrOp.RANGE, dt.int32, (bound,), (name, size.vmax, "loop"), pure=False)
                outer_ranges.append(vars_uop[name])
                return Var(name, 0, size.vmax - 1)
            vars_uop[name] = e.emit(IrOp.RANGE, dt.int32, (), (name, size, kind), pure=False)
            outer_ranges.append(vars_uop[name])
            return Var(name, 0, size - 1)

        # global ranges over output dims (an upcast or vector dim loops over its tiles)
        global_sizes, out_index, outer_ranges = [], {}, []
        block, chunk = self.opts.blocking or (None, None)
        for d in range(nest.n_output):
            factor = (width if d == vdim else 1) * upcast.get(d, 1)
            size = nest.shape[d] // factor
            if d == 0 and block:
                # cache blocking: blocks of the outermost loop (split among threads), then the reduce chunks,
                # then the iterations of the block, each reusing the chunk that the other inputs left in cache
                var = open_range("g0", size // block, "global") * block
                open_range("kc", nest.shape[nest.n_output] // chunk, "loop")
                var = var + open_range("g0i", block, "loop")
                global_sizes.append(size // block)
            else:
                var = open_range(f"g{d}", size, "global")
                if not isinstance(size, Node):  # (a symbolic dim is a loop inside: the launch's size is fixed)
                    global_sizes.append(size)
            out_index[d] = split(d, var, upcast.get(d, 1))

        def emit_body(out_index):
            """The accumulators, reduce loops and stores inside the output loops, `out_index` giving each output dim's
            index expression."""
            tiled = sorted(upcast)
            out_combos = list(itertools.product(*[range(upcast[d]) for d in tiled]))

            def out_idx(combo):
                return [out_index[d](combo[tiled.index(d)] if d in upcast else 0) for d in range(nest.n_output)]

            acc_vec = width if vdim is not None else 1
            accs = {}
            # the loads after the reduce prefetch along the innermost output loop (the next tiles' rows)
            epilogue_prefetch = f"g{nest.n_output - 1}" if self.opts.prefetch and nest.n_output > 1 else None
            if self.reduce is not None:
                red_op = self.reduce.arg[0]
                acc_dtype = _compute_dtype(self.reduce.dtype)
                for combo in out_combos:
                    accs[combo] = e.emit(IrOp.ACC, acc_dtype, (), red_op.identity(acc_dtype), pure=False, vec=acc_vec)
                ranges, red_index = [], {}
                # a reduce over nothing is its identity: no loop at all (loops run at least once)
                empty = any(nest.shape[d] == 0 for d in nest.reduce_dims)
                innermost, ragged = len(nest.shape) - 1, None
                # the innermost reduce loop split in three where its middle iterations read no padding (a convolution's
                # weight gradient over the image's columns): the middle's index expressions know it, so its masks go
                peel = next(((lo, hi) for d, lo, hi in self.opts.interior or () if d == innermost), None)
                for d in [] if empty else [d for d in nest.reduce_dims if not (peel and d == innermost)]:
                    factor = width if d == vdim else (unroll if d == unroll_dim else 1)
                    size = (chunk if block and d == nest.n_output else nest.shape[d]) // factor
                    if group and d == innermost:  # each work-item takes every group-th element
                        size = -(-nest.shape[d] // group)
                    e.open_scope()
                    if isinstance(size, Node):  # a reduce over a run-time number of elements
                        bound = self._node_uop(size, vars_uop)
                        ranges.append(e.emit(IrOp.RANGE, dt.int32, (bound,), (f"r{d}", size.vmax, "loop"), pure=False))
                        var = Var(f"r{d}", 0, size.vmax - 1)
                    else:
                        ranges.append(e.emit(IrOp.RANGE, dt.int32, (), (f"r{d}", size, "loop"), pure=False))
                        var = Var(f"r{d}", 0, size - 1)
                    vars_uop[f"r{d}"] = ranges[-1]
                    if block and d == nest.n_output:  # within the current chunk
                        var = Var("kc", 0, nest.shape[d] // chunk - 1) * size + var
                    if group and d == innermost:
                        var = var * group + Var("lid", 0, group - 1)
                        if nest.shape[d] % group:  # the last round's work-items past the end add nothing
                            ragged = self.alu(
                                Op.CMPLT, dt.bool_, (self._node_uop(var, vars_uop), self.const(nest.shape[d], dt.int32))
                            )
                    red_index[d] = split(d, var, unroll if d == unroll_dim else 1)
                alu = red_op.combine

                def reduce_steps():
                    for combo in [] if empty else out_combos:
                        for k in range(unroll):
                            # the k-th unrolled step moves the unrolled dim only (a lane dim among the reduce dims
                            # stays)
                            idx = out_idx(combo) + [red_index[d](k if d == unroll_dim else 0) for d in nest.reduce_dims]
                            val = self.broadcast(self._value(self.reduce.srcs[0], idx, vars_uop, {}, None), acc_vec)
                            new = e.emit(alu, acc_dtype, (accs[combo], val), pure=False, vec=acc_vec)
                            e.emit(IrOp.ACC_UPDATE, None, (accs[combo], new), pure=False)

                if ragged is not None:
                    e.emit(IrOp.IF, None, (ragged,), pure=False)
                    e.open_scope()
                if peel and not empty:
                    lo, hi = peel
                    name = f"r{innermost}"
                    pieces = (
                        (f"{name}_head", 0, lo),
                        (name, lo, hi - lo + 1),
                        (f"{name}_tail", hi + 1, _loop_count(innermost, nest, self.opts) - 1 - hi),
                    )
                    for piece, start, count in pieces:
                        if count == 0:
                            continue
                        e.open_scope()
                        vars_uop[piece] = e.emit(IrOp.RANGE, dt.int32, (), (piece, count, "loop"), pure=False)
                        var = Var(piece, 0, count - 1) + start
                        red_index[innermost] = split(innermost, var, unroll if innermost == unroll_dim else 1)
                        self.prefetching = name if self.opts.prefetch and piece == name else None
                        reduce_steps()
                        e.emit(IrOp.ENDRANGE, None, (vars_uop[piece],), pure=False)
                        e.close_scope()
                else:
                    if self.opts.prefetch and not empty:
                        self.prefetching = f"r{innermost}"
                    reduce_steps()
                self.prefetching = None
                if ragged is not None:
                    e.close_scope()
                    e.emit(IrOp.ENDIF, None, (), pure=False)
                for r in reversed(ranges):
                    e.emit(IrOp.ENDRANGE, None, (r,), pure=False)
                    e.close_scope()
                if group:  # the work-group's partial results combined through local memory; every item gets it
                    accs = {
                        c: e.emit(IrOp.GROUP_REDUCE, acc_dtype, (a,), (alu, group), pure=False) for c, a in accs.items()
                    }
                if vdim is not None and vdim >= nest.n_output:  # lanes ran along a reduce dim: combine them
                    accs = {c: e.emit(IrOp.HREDUCE, acc_dtype, (a,), alu, pure=False) for c, a in accs.items()}
                if block:  # after the first chunk, add the partial sum that the chunks before left in the output
                    first = self.alu(Op.CMPLT, dt.bool_, (vars_uop["kc"], self.const(1, dt.int32)))
                    store = partial_sum_store(self.ast)
                    for combo in out_combos:
                        index, _ = self._indexes(store, out_idx(combo) + [Num(0) for _ in nest.reduce_dims])
                        op, arg, srcs, vec = self._memory_access(self.params[store.arg[0]], index, Num(1), vars_uop)
                        self._prefetch(epilogue_prefetch, op, arg, srcs, vec, index, acc_dtype)
                        before = e.emit(op, acc_dtype, srcs, arg, vec=vec, pure=False)
                        before = self.alu(Op.WHERE, acc_dtype, (first, self.const(0.0, acc_dtype), before))
                        accs[combo] = self.alu(Op.ADD, acc_dtype, (accs[combo], before))

            def emit_stores(selected):
                self.prefetching = epilogue_prefetch
                for combo in out_combos:
                    idx = out_idx(combo) + [Num(0) for _ in nest.reduce_dims]
                    self.store_outputs(selected, idx, vars_uop, accs.get(combo))
                self.prefetching = None

            if block:  # every chunk stores its partial sum; the other outputs, computed from the sum, after the last
                holder = partial_sum_store(self.ast)
                emit_stores([holder])
                rest = [s for s in stores if s is not holder]
                if rest:
                    chunks = nest.shape[nest.n_output] // chunk
                    last = self.alu(Op.CMPLT, dt.bool_, (self.const(chunks - 2, dt.int32), vars_uop["kc"]))
                    e.emit(IrOp.IF, None, (last,), pure=False)
                    e.open_scope()
                    emit_stores(rest)
                    e.close_scope()
                    e.emit(IrOp.ENDIF, None, (), pure=False)
            elif group:  # one work-item of the group writes the result (a guard, not a return: no barrier is skipped)
                e.emit(
                    IrOp.IF,
                    None,
                    (self.alu(Op.CMPLT, dt.bool_, (vars_uop["lid"], self.const(1, dt.int32))),),
                    pure=False,
                )
                e.open_scope()
                emit_stores(stores)
                e.close_scope()
                e.emit(IrOp.ENDIF, None, (), pure=False)
            else:
                emit_stores(stores)

        interior = [(d, lo, hi) for d, lo, hi in self.opts.interior or () if d < nest.n_output]
        if interior:
            # the iterations that read no padding run a copy of the body whose index expressions know it (the
            # validity masks simplify away); the rest run the body with its masks
            narrowed, inside, outside = dict(out_index), [], []
            for d, lo, hi in interior:
                g = vars_uop[f"g{d}"]
                narrowed[d] = split(d, Var(f"g{d}", lo, hi), upcast.get(d, 1))
                inside += [self.alu(Op.CMPLT, dt.bool_, (self.const(lo - 1, dt.int32), g))]
                inside += [self.alu(Op.CMPLT, dt.bool_, (g, self.const(hi + 1, dt.int32)))]
                outside += [self.alu(Op.CMPLT, dt.bool_, (g, self.const(lo, dt.int32)))]
                outside += [self.alu(Op.CMPLT, dt.bool_, (self.const(hi, dt.int32), g))]
            for index, conditions, combine in ((narrowed, inside, Op.AND), (out_index, outside, Op.OR)):
                condition = conditions[0]
                for c in conditions[1:]:
                    condition = self.alu(combine, dt.bool_, (condition, c))
                e.emit(IrOp.IF, None, (condition,), pure=False)
                e.open_scope()
                emit_body(index)
                e.close_scope()
                e.emit(IrOp.ENDIF, None, (), pure=False)
        else:
            emit_body(out_index)
        for u in reversed(outer_ranges):
            e.emit(IrOp.ENDRANGE, None, (u,), pure=False)
        names = tuple(v.name for v in variables)
        return Program(self.name, e.uops, self.buffer_dtypes, tuple(global_sizes), group or 1, variables=names)


def lower(
    ast: KernelOp, buffer_dtypes: tuple, name: str, options: KernelOptions | None = None, capabilities=None
) -> Program:
    """The linear IR of a kernel: with `options` as given, or as the heuristics choose them for a device of
    these `capabilities` (a backends.Capabilities; None: scalar code)."""
    return Lowerer(ast, buffer_dtypes, name, options, capabilities).lower()

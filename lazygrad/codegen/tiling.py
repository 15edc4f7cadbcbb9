"""Matrix products tiled through local memory, for devices with work-groups (GPUs).

A kernel qualifies when its reduce is a float32 sum of a product `a * b` where `a` depends on some output dims
(M), `b` on others (N), both on the reduce dims (K), and any output dims they share are a batch. That covers
matrix products and the convolutions lowered through them (im2col columns, window views, weight gradients).

One work-group computes a block of `block_m` x `block_n` outputs of one batch index. For each chunk of
`block_k` along K, its work-items copy the chunk of `a` (block_m x block_k) and of `b` (block_n x block_k) into
local memory, consecutive work-items reading consecutive addresses of whichever dim the operand holds
contiguously, then wait at a barrier; each work-item then accumulates its register tile of `thread_m` x
`thread_n` outputs from local memory, and the group waits again before the next chunk overwrites it. Edges that
are not multiples of the tile are clamped on loading (rows past the end read the last row, columns past K add
zero) and guarded on storing. The epilogue (what the kernel computes from the sum) runs per output as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from lazygrad import dtype as dt
from lazygrad.codegen.kernel_ast import KernelOp
from lazygrad.ops import AstOp, IrOp, Op
from lazygrad.shape import prod
from lazygrad.symbolic import Num, Var


@dataclass(frozen=True)
class LocalTile:
    block_m: int
    block_n: int
    block_k: int
    thread_m: int  # outputs per work-item along M (the rows of its register tile)
    thread_n: int

    @property
    def threads(self) -> int:
        return (self.block_m // self.thread_m) * (self.block_n // self.thread_n)

    def local_bytes(self) -> int:
        return 4 * self.block_k * (self.block_m + self.block_n + 2)


# every tile the lowering knows (the kernel search tries each); the heuristics take `PREFERRED`
TILES = (LocalTile(128, 128, 8, 8, 8), LocalTile(64, 64, 16, 4, 4), LocalTile(32, 32, 16, 2, 2))
# Measured on an H200 (tests/gpu/tiles_vs_torch.py, docs/performance.md): 64x64 was the fastest at three of the
# ResNet step's four product shapes (12-19 TFLOP/s), 128x128 only at 4096^3 (by 4%), 32x32 never; a tile whose
# groups do not give every compute unit one is slower than the plain kernel (a weight gradient with 64x147
# outputs and K of 401,408 took 24 ms tiled, 1.8 ms plain).
PREFERRED = (TILES[1], TILES[2])
_MIN_FLOPS = 1 << 21  # smaller products are not worth the barriers: the plain kernel does them


@dataclass(frozen=True)
class ProductShape:
    """Which loop-nest dims are the product's M, N, K and batch, and which AST nodes are its operands."""

    a: KernelOp  # depends on m_dims (and batch, reduce dims)
    b: KernelOp  # depends on n_dims
    m_dims: tuple
    n_dims: tuple
    batch_dims: tuple

    def sizes(self, nest) -> tuple:
        return tuple(prod(nest.shape[d] for d in dims) for dims in (self.batch_dims, self.m_dims, self.n_dims))


def _leaf_dims(nest, leaf: KernelOp) -> set:
    """The loop-nest dims that a load, constant or mask's index or validity depends on."""
    st = nest.trackers[id(leaf)]
    idxs = [Num(0) if st.shape[d] == 1 else Var(f"x{d}", 0, max(0, nest.shape[d] - 1)) for d in range(len(st.shape))]
    index, valid = st.index_and_valid(idxs)
    names = {v.name for v in valid.variables()}
    if leaf.op is AstOp.LOAD:  # a constant or a mask reads no memory: only its validity moves with the dims
        names |= {v.name for v in index.variables()}
    return {int(name[1:]) for name in names}


def _dims_of(nest, node: KernelOp) -> set:
    out: set = set()
    for n in node.walk():
        if n.op in (AstOp.LOAD, AstOp.CONST, AstOp.VALID):
            out |= _leaf_dims(nest, n)
    return out


def product_shape(nest, ast: KernelOp, reduce: KernelOp | None) -> ProductShape | None:
    """The product's structure, or None if the kernel is not one this module tiles."""
    if reduce is None or reduce.arg[0] is not Op.SUM or reduce.dtype != dt.float32:
        return None
    source = reduce.srcs[0]
    if source.op is not Op.MUL or source.dtype != dt.float32 or nest.n_output == 0:
        return None
    if any(n.op is AstOp.REDUCE for s in source.srcs for n in s.walk()):
        return None
    outputs = set(range(nest.n_output))
    a, b = source.srcs
    a_dims, b_dims = _dims_of(nest, a) & outputs, _dims_of(nest, b) & outputs
    m_dims, n_dims = a_dims - b_dims, b_dims - a_dims
    batch = outputs - m_dims - n_dims
    if not m_dims or not n_dims:
        return None
    # N is the operand holding the store's innermost output dim: consecutive work-items store consecutive outputs
    last = nest.n_output - 1
    if last in m_dims:
        a, b, m_dims, n_dims = b, a, n_dims, m_dims
    return ProductShape(a, b, tuple(sorted(m_dims)), tuple(sorted(n_dims)), tuple(sorted(batch)))


def choose_local_tile(nest, product: ProductShape, capabilities) -> tuple[LocalTile | None, str]:
    """(tile, why): the first preferred tile whose work-groups reach every compute unit, or None and the reason."""
    if not capabilities.group_reduce or capabilities.max_work_group < 256:
        return None, "the device has no work-groups of 256"
    batch, m, n = product.sizes(nest)
    k = prod(nest.shape[nest.n_output :])
    if min(m, n) < 16 or k < 8 or 2 * batch * m * n * k < _MIN_FLOPS:
        return None, f"a product of {batch}x{m}x{n}x{k} is too small to tile"
    for tile in PREFERRED:
        groups = batch * -(-m // tile.block_m) * -(-n // tile.block_n)
        if tile.local_bytes() > capabilities.local_memory or tile.threads > capabilities.max_work_group:
            continue
        if groups >= capabilities.compute_units:
            return tile, (
                f"local tile {tile.block_m}x{tile.block_n}x{tile.block_k} ({tile.thread_m}x{tile.thread_n} per "
                f"work-item): {groups} work-groups over a {batch}x{m}x{n} product with K={k}"
            )
    return None, "too few outputs for a work-group on every compute unit, or no tile fits the device's local memory"


def _contiguous_along_k(nest, node: KernelOp, k_dim: int) -> bool:
    """Whether the operand's loads step by one element along the innermost reduce dim (else along its rows)."""
    for leaf in node.walk():
        if leaf.op is not AstOp.LOAD:
            continue
        st = nest.trackers[id(leaf)]
        if st.shape[k_dim] == 1:
            continue
        zero = [Num(0)] * len(st.shape)
        one = list(zero)
        one[k_dim] = Num(1)
        at0, _ = st.index_and_valid(zero)
        at1, _ = st.index_and_valid(one)
        if isinstance(at0, Num) and isinstance(at1, Num) and at1.value - at0.value == 1:
            return True
    return False


def _unravel(x, dims: tuple, nest) -> dict:
    """dim -> index of the flat row-major position x over `dims`."""
    out, inner = {}, 1
    for d in reversed(dims):
        size = nest.shape[d]
        out[d] = (x // inner) % size if inner > 1 else x % size
        inner *= size
    return out


def lower_tiled(lowerer, product: ProductShape, tile: LocalTile):
    """The program of a tiled product: `lowerer` is a codegen.lowering.Lowerer (its emitter, params, index and
    value helpers are shared, so loads, masks, casts and the epilogue are lowered as they are everywhere)."""
    from lazygrad.codegen.ir import Program
    from lazygrad.codegen.lowering import stores_of

    e, nest, i32, f32 = lowerer.e, lowerer.nest, dt.int32, dt.float32
    stores = stores_of(lowerer.ast)
    lowerer.emit_params(len(stores))
    batch_size, m_size, n_size = product.sizes(nest)
    k_dims = tuple(nest.reduce_dims)
    k_size = prod(nest.shape[d] for d in k_dims)
    bm, bn, bk, tm, tn = tile.block_m, tile.block_n, tile.block_k, tile.thread_m, tile.thread_n
    threads, cols = tile.threads, bn // tn  # work-items per group; work-items along N
    vars_uop: dict = {}

    def bind(name: str, uop, upper: int) -> Var:
        vars_uop[name] = uop
        return Var(name, 0, upper)

    def clamped(uop, size: int):
        """(uop clamped to size - 1, uop < size): a position past the end reads the last element"""
        inside = lowerer.alu(Op.CMPLT, dt.bool_, (uop, lowerer.const(size, i32)))
        return lowerer.alu(Op.WHERE, i32, (inside, uop, lowerer.const(size - 1, i32))), inside

    def nest_index(*parts: dict) -> list:
        """The index of every loop-nest dim: the parts' dims, the others 0."""
        index = {d: Num(0) for d in range(len(nest.shape))}
        for part in parts:
            index.update(part)
        return [index[d] for d in range(len(nest.shape))]

    # global ranges: the batch dims, then the blocks along M and N (N fastest: neighbouring groups share a's rows)
    global_sizes, outer = [], []
    batch_index = {}
    for d in product.batch_dims:
        r = e.emit(IrOp.RANGE, i32, (), (f"g{d}", nest.shape[d], "global"), pure=False)
        outer.append(r)
        global_sizes.append(nest.shape[d])
        batch_index[d] = bind(f"g{d}", r, nest.shape[d] - 1)
    blocks_m, blocks_n = -(-m_size // bm), -(-n_size // bn)
    for name, size in (("bm", blocks_m), ("bn", blocks_n)):
        r = e.emit(IrOp.RANGE, i32, (), (name, size, "global"), pure=False)
        outer.append(r)
        global_sizes.append(size)
        bind(name, r, size - 1)
    lid_uop = e.emit(IrOp.LOCAL_ID, i32, (), threads, pure=False)
    lid = bind("lid", lid_uop, threads - 1)
    row = bind("row", lowerer.alu(Op.IDIV, i32, (lid_uop, lowerer.const(cols, i32))), threads // cols - 1)
    col = bind("col", lowerer.alu(Op.MOD, i32, (lid_uop, lowerer.const(cols, i32))), cols - 1)
    block_m0, block_n0 = Var("bm", 0, blocks_m - 1) * bm, Var("bn", 0, blocks_n - 1) * bn

    shared = {
        "a": e.emit(IrOp.LOCAL, f32, (), bk * (bm + 1), pure=False),
        "b": e.emit(IrOp.LOCAL, f32, (), bk * (bn + 1), pure=False),
    }
    accs = {(i, j): e.emit(IrOp.ACC, f32, (), 0.0, pure=False) for i in range(tm) for j in range(tn)}

    chunks = -(-k_size // bk)
    k0_uop = e.emit(IrOp.RANGE, i32, (), ("k0", chunks, "loop"), pure=False)
    e.open_scope()
    k0 = bind("k0", k0_uop, chunks - 1)

    def copy_operand(name, node, dims, size, block, start):
        """The group's work-items copy this chunk of the operand into local memory, element e = lid + t*threads
        of a block x bk tile; consecutive e run along K where the operand is contiguous along K, else along its
        rows."""
        along_k = _contiguous_along_k(nest, node, k_dims[-1])
        for t in range(block * bk // threads):
            flat = lid + t * threads
            r, c = (flat // bk, flat % bk) if along_k else (flat % block, flat // block)
            position, k = start + r, k0 * bk + c
            position_uop = lowerer._node_uop(position, vars_uop)
            if size % block:  # rows past the end read the last row (their outputs are never stored)
                position_uop, _ = clamped(position_uop, size)
            position = bind(f"{name}p{t}", position_uop, size - 1)
            k_uop, k_inside = lowerer._node_uop(k, vars_uop), None
            if k_size % bk:  # columns past K read the last one and add zero
                k_uop, k_inside = clamped(k_uop, k_size)
            k = bind(f"{name}k{t}", k_uop, k_size - 1)
            index = nest_index(batch_index, _unravel(position, dims, nest), _unravel(k, k_dims, nest))
            value = lowerer._value(node, index, vars_uop, {}, None)
            if k_inside is not None:
                value = lowerer.alu(Op.WHERE, f32, (k_inside, value, lowerer.const(0.0, f32)))
            where = lowerer._node_uop(c * (block + 1) + r, vars_uop)
            e.emit(IrOp.LOCAL_STORE, None, (shared[name], where, value), pure=False)

    copy_operand("a", product.a, product.m_dims, m_size, bm, block_m0)
    copy_operand("b", product.b, product.n_dims, n_size, bn, block_n0)
    e.emit(IrOp.BARRIER, None, (), pure=False)
    kk_uop = e.emit(IrOp.RANGE, i32, (), ("kk", bk, "loop"), pure=False)
    e.open_scope()
    kk = bind("kk", kk_uop, bk - 1)
    rows = threads // cols

    def read_local(name: str, width: int, first, step: int, count: int) -> list:
        """This work-item's `count` values of chunk column kk, `step` apart from `first`."""
        return [
            e.emit(
                IrOp.LOCAL_LOAD,
                f32,
                (shared[name], lowerer._node_uop(kk * (width + 1) + first + i * step, vars_uop)),
                pure=False,
            )
            for i in range(count)
        ]

    a_vals, b_vals = read_local("a", bm, row, rows, tm), read_local("b", bn, col, cols, tn)
    for (i, j), acc in accs.items():
        product_value = e.emit(Op.MUL, f32, (a_vals[i], b_vals[j]), pure=False)
        e.emit(IrOp.ACC_UPDATE, None, (acc, e.emit(Op.ADD, f32, (acc, product_value), pure=False)), pure=False)
    e.emit(IrOp.ENDRANGE, None, (kk_uop,), pure=False)
    e.close_scope()
    e.emit(IrOp.BARRIER, None, (), pure=False)  # the next chunk overwrites what this one read
    e.close_scope()
    e.emit(IrOp.ENDRANGE, None, (k0_uop,), pure=False)

    # the epilogue, per output of the register tile; stores guarded where the block passes the end
    for (i, j), acc in accs.items():
        m, n = block_m0 + row + i * rows, block_n0 + col + j * cols
        guards = [
            lowerer.alu(Op.CMPLT, dt.bool_, (lowerer._node_uop(x, vars_uop), lowerer.const(size, i32)))
            for x, size, block in ((m, m_size, bm), (n, n_size, bn))
            if size % block
        ]
        if guards:
            condition = guards[0] if len(guards) == 1 else lowerer.alu(Op.AND, dt.bool_, tuple(guards))
            e.emit(IrOp.IF, None, (condition,), pure=False)
            e.open_scope()
        index = nest_index(batch_index, _unravel(m, product.m_dims, nest), _unravel(n, product.n_dims, nest))
        lowerer.store_outputs(stores, index, vars_uop, acc)
        if guards:
            e.close_scope()
            e.emit(IrOp.ENDIF, None, (), pure=False)
    for r in reversed(outer):
        e.emit(IrOp.ENDRANGE, None, (r,), pure=False)
    return Program(lowerer.name, e.uops, lowerer.buffer_dtypes, tuple(global_sizes), threads)

"""Symbolic autograd: one gradient rule per primitive, written with Tensor ops.

Each rule takes the saved context of one primitive application and the gradient of its output,
and returns the gradients of its inputs (None where an input gets none). Rules build graph; they
run nothing. Because they are written with Tensor operations, a gradient is itself a
differentiable graph, and gradients of gradients work (`create_graph=True`).
"""

from __future__ import annotations

import itertools
import math
from contextlib import ContextDecorator

from lazygrad.graph import LazyBuffer, defers_gc
from lazygrad.ops import DIFFERENTIABLE, Op

_grad_enabled = [True]


def is_grad_enabled() -> bool:
    return _grad_enabled[-1]


class _GradMode(ContextDecorator):
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        _grad_enabled.append(self.enabled)
        return self

    def __exit__(self, *exc):
        _grad_enabled.pop()
        return False


def no_grad() -> _GradMode:
    """Context manager and decorator: operations inside record no gradient graph."""
    return _GradMode(False)


def enable_grad() -> _GradMode:
    return _GradMode(True)


# not a primitive: an op of several primitives with a gradient of its own (Tensor._composite)
COMPOSITE = "composite"


class Context:
    """What backward needs of one primitive application. One per recorded op: slotted (no __dict__, one object
    less for the collector), and built by one call (a dataclass's __init__ and __post_init__ were two)."""

    __slots__ = ("op", "inputs", "arg", "out_shape", "versions")

    def __init__(self, op, inputs: tuple, arg, out_shape: tuple, versions: tuple = ()):
        key = _RULE_KEYS.get(op)  # the member for a name ("add" -> Op.ADD)
        if key is None:
            raise ValueError(f"no gradient rule for {op!r}")
        self.op = key  # an Op, or COMPOSITE
        self.inputs = inputs  # Tensors
        self.arg = arg
        self.out_shape = out_shape
        self.versions = versions  # each input's in-place version when recorded; () once resolved by _topological

    def __repr__(self):
        return f"Context({self.op!r}, {len(self.inputs)} inputs, arg={self.arg!r}, out_shape={self.out_shape})"


# --- the rules ----------------------------------------------------------------------------------
# unary
def _exp2(c, g):
    (x,) = c.inputs
    return (g * x.exp2() * math.log(2),)


def _log2(c, g):
    (x,) = c.inputs
    return (g / (x * math.log(2)),)


def _sin(c, g):
    (x,) = c.inputs
    return (g * x.cos(),)


def _sqrt(c, g):
    (x,) = c.inputs
    return (g / (x.sqrt() * 2),)


def _recip(c, g):
    (x,) = c.inputs
    return (-g * x.reciprocal() * x.reciprocal(),)


def _neg(c, g):
    return (-g,)


def _cast(c, g):
    (x,) = c.inputs
    return (g.cast(x.dtype) if x.dtype.is_float else None,)


# binary
def _add(c, g):
    return g, g


# A rule builds the gradient of an input only when that input wants one: `x * w` with a constant `x` would
# otherwise add `g * w` to every step's graph (built in Python, then dropped by backward unrealized).
def _mul(c, g):
    a, b = c.inputs
    return (_product(g, b) if a.requires_grad else None), (_product(g, a) if b.requires_grad else None)


def _total(a, b):
    """a + b for two gradients of one input, made as a node directly where no gradient of the gradient is wanted
    (see _product)."""
    node, other = a._lazydata, b._lazydata
    if _grad_enabled[-1] or node.shape != other.shape or node.dtype is not other.dtype or node.dtype.kind == "b":
        return a + b
    return type(a)._wrap(LazyBuffer.elementwise(Op.ADD, (node, other)))


def _product(g, x):
    """g * x for a gradient g of x's shape and dtype. Where no gradient of the gradient is wanted (the usual
    backward), the node is made directly: the same node `g * x` makes, without the operator's promotion, broadcasting
    and autograd record between (every eager step's backward multiplies this way, the most frequent rule)."""
    node, other = g._lazydata, x._lazydata
    if _grad_enabled[-1] or node.shape != other.shape or node.dtype is not other.dtype or node.dtype.kind == "b":
        return g * x
    return type(g)._wrap(LazyBuffer.elementwise(Op.MUL, (node, other)))


def _max(c, g):
    # ties split the gradient evenly, as torch.maximum does
    a, b = c.inputs
    a_wins = (a > b).cast(g.dtype) + (a == b).cast(g.dtype) * 0.5
    return (g * a_wins if a.requires_grad else None), (g * (1 - a_wins) if b.requires_grad else None)


# ternary
def _where(c, g):
    cond, x, y = c.inputs
    node, condition = g._lazydata, cond._lazydata
    if not _grad_enabled[-1] and condition.shape == node.shape:
        # (no gradient of the gradient: the nodes of the selects below, directly; relu's gradient in every step)
        zero = LazyBuffer.const(0, node.shape, node.dtype, node.device)
        tensor = type(g)
        return (
            None,
            (tensor._wrap(LazyBuffer.elementwise(Op.WHERE, (condition, node, zero))) if x.requires_grad else None),
            (tensor._wrap(LazyBuffer.elementwise(Op.WHERE, (condition, zero, node))) if y.requires_grad else None),
        )
    zero = g.zeros_like()
    return (
        None,
        (cond._select(g, zero) if x.requires_grad else None),
        (cond._select(zero, g) if y.requires_grad else None),
    )


# reduce
def _sum(c, g):
    (x,) = c.inputs
    if not _grad_enabled[-1] and g.ndim == x.ndim:  # (no gradient of the gradient: expand's view node, directly)
        return (type(g)._wrap(g._lazydata.expand(x.shape)),)
    return (g.expand(x.shape),)


def _rmax(c, g):
    # the gradient is shared evenly by the elements equal to the maximum, as torch.amax does
    (x,) = c.inputs
    axes = c.arg
    out = x._primitive(Op.RMAX, arg=axes).detach()
    hit = (x == out.expand(x.shape)).cast(g.dtype)
    count = hit._primitive(Op.SUM, arg=axes)
    return ((hit / count.expand(x.shape)) * g.expand(x.shape),)


# movement
def _reshape(c, g):
    (x,) = c.inputs
    return (g._movement(Op.RESHAPE, x.shape),)


def _permute(c, g):
    order = c.arg
    inverse = tuple(sorted(range(len(order)), key=lambda i: order[i]))
    return (g._movement(Op.PERMUTE, inverse),)


def _expand(c, g):
    # (broadcast_to records new leading dims as part of the expand: they are summed away, then dropped)
    (x,) = c.inputs
    lead = len(c.out_shape) - len(x.shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, (a, b) in enumerate(zip(x.shape, c.out_shape[lead:])) if a != b)
    if not _grad_enabled[-1]:  # (no gradient of the gradient: the nodes that the tensor ops below make, directly)
        node = g._lazydata.reduce(Op.SUM, axes) if axes else g._lazydata
        return (type(g)._wrap(node.reshape(x.shape)) if lead or axes else g,)
    g = g._primitive(Op.SUM, arg=axes) if axes else g
    return (g._movement(Op.RESHAPE, x.shape) if lead else g,)


def _pad(c, g):
    (x,) = c.inputs
    return (g._movement(Op.SHRINK, tuple((a, a + s) for (a, _), s in zip(c.arg, x.shape))),)


def _shrink(c, g):
    (x,) = c.inputs
    return (g._movement(Op.PAD, tuple((a, s - b) for (a, b), s in zip(c.arg, x.shape))),)


def _flip(c, g):
    return (g._movement(Op.FLIP, c.arg),)


def _window(c, g):
    (x,) = c.inputs
    return (window_transpose(g, x.shape, *c.arg),)


def window_transpose(g, input_shape: tuple, kernel: tuple, stride: tuple, dilation: tuple, crop: tuple = ()):
    """The adjoint of the window view (col2im): each window position k sends its value back to
    x[o*stride + k*dilation]. With stride 1 that is a sum of K*K shifted copies of g. With a stride s,
    input positions fall into s*s classes by their remainders mod s, and each class receives only the
    kernel offsets of its own remainder: per class, a sum of shifted copies with no holes between; the
    classes are then interleaved. (Spreading g out with s-1 zeros between elements instead makes every
    kernel offset a masked read at every position, which no vector lane can load contiguously.)
    `crop`, per spatial dim (start, length), keeps only those input positions (a padding's gradient is
    dropped): the classes are counted from `start`, so that the result needs no shifted cut at the end.

    One composite op: the pieces are built as graph nodes (`_col2im`), one view node per kernel offset and one
    add, not as tensors of four recorded movement ops each (a ResNet-18 step built ~600 tensors here), and the
    gradient is the adjoint's adjoint, the window view of the gradient padded back to the input's positions.
    No closures over g in the nodes: a reference cycle would keep g alive until the garbage collector runs, and
    the scheduler treats a tensor still alive as wanted."""
    n = len(kernel)
    kernel, stride, dilation = tuple(kernel), tuple(stride), tuple(dilation)
    crop = tuple(crop) or tuple((0, size) for size in input_shape[-n:])
    tensor = type(g)

    def forward():
        return tensor._wrap(_col2im(g._lazydata, input_shape[-n:], kernel, stride, dilation, crop))

    def backward(grad):
        lead = grad.ndim - n
        around = tuple((start, size - start - length) for (start, length), size in zip(crop, input_shape[-n:]))
        padded = grad._movement(Op.PAD, ((0, 0),) * lead + around)
        return (padded._movement(Op.WINDOW, (kernel, stride, dilation)),)

    return tensor._composite("window_transpose", (g,), forward, backward)


def col2im(g: LazyBuffer, spatial: tuple, kernel: tuple, stride: tuple, dilation: tuple, crop: tuple = ()):
    """window_transpose's value as a graph node, where no gradient of it is wanted: g a node of shape
    (..., *outs, *kernel), `spatial` the windowed input's last dims."""
    crop = tuple(crop) or tuple((0, size) for size in spatial)
    return _col2im(g, tuple(spatial), tuple(kernel), tuple(stride), tuple(dilation), crop)


def _col2im(g, spatial: tuple, kernel: tuple, stride: tuple, dilation: tuple, crop: tuple):
    """window_transpose's value, on graph nodes (g a LazyBuffer of shape (..., *outs, *kernel), `spatial` the
    windowed input's last dims)."""
    n = len(kernel)
    lead = len(g.shape) - 2 * n
    if stride == kernel and all(d == 1 for d in dilation):
        return _tiles_transpose(g, spatial, kernel, crop)
    quotients = tuple(-(-length // s) for (_, length), s in zip(crop, stride))  # class sizes, rounded up
    starts = tuple(start for start, _ in crop)
    level = {
        r: _class_sum(g, r, kernel, stride, dilation, quotients, lead, starts)
        for r in itertools.product(*[range(s) for s in stride])
    }
    for j in reversed(range(n)):  # interleave the classes of the last dim, then of the one before, ...
        dim, merged, length = lead + j, {}, crop[j][1]
        for prefix in itertools.product(*[range(s) for s in stride[:j]]):
            parts = [level[(*prefix, r)] for r in range(stride[j])]
            out = parts[0] if stride[j] == 1 else _interleave(parts, dim)
            if out.shape[dim] != length:
                out = out.shrink(tuple((0, m) if i != dim else (0, length) for i, m in enumerate(out.shape)))
            merged[prefix] = out
        level = merged
    return level[()]


def _interleave(parts: list, dim: int):
    """Nodes of one shape, interleaved along `dim`: element i of part r goes to i * len(parts) + r (what
    stack(parts, dim + 1).flatten(dim, dim + 1) builds: each part a new dim padded to its place, summed)."""
    shape, count = parts[0].shape, len(parts)
    single = shape[: dim + 1] + (1,) + shape[dim + 1 :]
    total = None
    for r, part in enumerate(parts):
        around = ((0, 0),) * (dim + 1) + ((r, count - r - 1),) + ((0, 0),) * (len(shape) - dim - 1)
        piece = part.moved(((Op.RESHAPE, single), (Op.PAD, around)))
        total = piece if total is None else LazyBuffer.elementwise(Op.ADD, (total, piece))
    return total.reshape(shape[:dim] + (shape[dim] * count,) + shape[dim + 1 :])


def _tiles_transpose(g, spatial: tuple, kernel: tuple, crop: tuple):
    """_col2im when the windows tile the input (stride = kernel, no dilation: non-overlapping pooling, the
    common max_pool2d(2)): each input position is in one window at most, so the gradient is g's windows laid side
    by side again: a permute and a reshape, a pad for the positions no window reaches and a shrink for the crop
    (one view node, where the shifted classes took ~25 for a 2x2 pool)."""
    n = len(kernel)
    lead = len(g.shape) - 2 * n
    outs = g.shape[lead : lead + n]
    order = tuple(range(lead)) + tuple(axis for i in range(n) for axis in (lead + i, lead + n + i))
    tiled = g.shape[:lead] + tuple(o * k for o, k in zip(outs, kernel))
    whole = tuple((0, m) for m in g.shape[:lead])
    return g.moved(
        (
            (Op.PERMUTE, order),
            (Op.RESHAPE, tiled),
            (Op.PAD, whole + tuple((0, size - o * k) for size, o, k in zip(spatial, outs, kernel))),
            (Op.SHRINK, whole + tuple((start, start + length) for start, length in crop)),
        )
    )


def _class_sum(g, remainders: tuple, kernel, stride, dilation, quotients: tuple, lead: int, starts: tuple):
    """The positions y = i - start whose remainder mod stride is `remainders` (per spatial dim), as a node of
    shape (..., *quotients): the sum of the kernel offsets that land there, each shifted into place: one view
    node per offset (a shrink and a reshape take the offset, one pad and one shrink move it into place)."""
    key = (g.shape, remainders, kernel, stride, dilation, quotients, lead, starts)
    pieces = _CLASS_PIECES.get(key)
    if pieces is None:
        pieces = _class_pieces(g.shape, remainders, kernel, stride, dilation, quotients, lead, starts)
        if len(_CLASS_PIECES) >= 4096:
            _CLASS_PIECES.clear()
        _CLASS_PIECES[key] = pieces
    total = None
    for moves in pieces:
        piece = g.moved(moves)
        total = piece if total is None else LazyBuffer.elementwise(Op.ADD, (total, piece))
    if total is None:  # no kernel offset reaches this class
        total = LazyBuffer.const(0, g.shape[:lead] + quotients, g.dtype, g.device)
    return total


# _class_sum's movement ops per (g's shape, class, kernel, stride, dilation, class sizes, lead dims, crop starts): an
# eager step takes the same col2im apart every step (~30 classes of a ResNet-18 step), so the offsets that land in a
# class and their shifts are worked out once
_CLASS_PIECES: dict = {}


def _class_pieces(shape, remainders, kernel, stride, dilation, quotients, lead: int, starts) -> tuple:
    """For each kernel offset that lands in the class, the movement ops that take it out of g (shape `shape`) and
    shift it into place (see _class_sum)."""
    n = len(kernel)
    outer = tuple((0, m) for m in shape[: lead + n])  # the lead and output-position dims, kept whole
    pieces = []
    for ks in itertools.product(*[range(k) for k in kernel]):
        if any((k * d - a) % s != r for k, d, s, r, a in zip(ks, dilation, stride, remainders, starts)):
            continue
        pads, cuts, outs = [], [], shape[lead : lead + n]
        for k, d, s, r, q, a, length in zip(ks, dilation, stride, remainders, quotients, starts, outs):
            shift = (k * d - a - r) // s  # moved `shift` places up (down if negative), cut or zero-filled to q
            pads.append((max(shift, 0), max(q - shift - length, 0)))
            cuts.append((max(-shift, 0), max(-shift, 0) + q))
        pieces.append(
            (
                (Op.SHRINK, outer + tuple((k, k + 1) for k in ks)),  # g[..., *ks]
                (Op.RESHAPE, shape[: lead + n]),
                (Op.PAD, ((0, 0),) * lead + tuple(pads)),
                (Op.SHRINK, outer[:lead] + tuple(cuts)),
            )
        )
    return tuple(pieces)


def _composite(c, g):
    # an op of several primitives with a gradient of its own (Tensor._composite)
    _, backward = c.arg
    return backward(g)


# matmul of one dtype and the same batch dims (tensor_ops.nn._matmul_same_batch): recorded as one op, its gradient
# the nodes that differentiating its primitives one by one makes (reshape, sum, mul, expand, reshape, permute)
MATMUL = "matmul"


def matmul_nodes(x: LazyBuffer, y: LazyBuffer) -> tuple:
    """The product of x (..., n, k) @ y (..., k, m) before its reduce: x as (..., n, 1, k) and y transposed as
    (..., 1, m, k), each expanded to (..., n, m, k), and their elementwise product (the nodes of matmul's general
    path: unsqueeze, transpose, unsqueeze and a broadcasting mul)."""
    nd = len(x.shape)
    swap = tuple(range(nd - 2)) + (nd - 1, nd - 2)
    left = x.reshape(x.shape[:-1] + (1,) + x.shape[-1:])
    right = y.permute(swap)
    right = right.reshape(right.shape[:-2] + (1,) + right.shape[-2:])
    full = x.shape[:-1] + (y.shape[-1], x.shape[-1])
    left, right = left.expand(full), right.expand(full)
    return left, right, LazyBuffer.elementwise(Op.MUL, (left, right))


def _matmul(c, g):
    a, b = c.inputs
    transposed = c.arg[4]  # the product was with b's transpose (linear's x @ weight.T)
    if _grad_enabled[-1]:  # create_graph: the gradient as differentiable matmuls
        right = b.mT if transposed else b
        grad_a = g.matmul(right.mT) if a.requires_grad else None
        grad_b = (g.mT.matmul(a) if transposed else a.mT.matmul(g)) if b.requires_grad else None
        return grad_a, grad_b
    x, w = a._lazydata, b._lazydata
    nd = len(x.shape)
    swap = tuple(range(nd - 2)) + (nd - 1, nd - 2)
    # the expanded operands of the forward product (c.arg), made again only if an input's node is another now
    # (an input updated in place since: c.inputs is then its value as it was, see _resolve_versions)
    if c.arg[0] is x and c.arg[1] is w:
        left, right = c.arg[2:4]
    else:
        left, right = matmul_nodes(x, w.permute(swap) if transposed else w)[:2]
    spread = g._lazydata.reshape(g.shape + (1,)).expand(left.shape)  # the gradient of the reduce over k
    tensor = type(g)
    grad_a = grad_b = None
    if a.requires_grad:  # summed over the m copies of x, back to x's shape
        node = LazyBuffer.elementwise(Op.MUL, (spread, right))
        grad_a = tensor._wrap(node.reduce(Op.SUM, (nd - 1,)).reshape(x.shape))
    if b.requires_grad:  # summed over the n copies of y's transpose, back to y's shape
        node = LazyBuffer.elementwise(Op.MUL, (spread, left)).reduce(Op.SUM, (nd - 2,))
        node = node.reshape(node.shape[:-3] + node.shape[-2:]).permute(swap)
        grad_b = tensor._wrap(node.permute(swap) if transposed else node)  # (as .T's own rule would turn it back)
    return grad_a, grad_b


# effects
def _identity(c, g):
    return (g,)


def _copy(c, g):
    (x,) = c.inputs
    return (g.to(x.device),)


# One rule per differentiable primitive (the op table's `differentiable` column); the others (comparisons,
# integer and bitwise ops, bitcast, sources, assign) have none.
RULES = {
    Op.EXP2: _exp2,
    Op.LOG2: _log2,
    Op.SIN: _sin,
    Op.SQRT: _sqrt,
    Op.RECIP: _recip,
    Op.NEG: _neg,
    Op.CAST: _cast,
    Op.ADD: _add,
    Op.MUL: _mul,
    Op.MAX: _max,
    Op.WHERE: _where,
    Op.SUM: _sum,
    Op.RMAX: _rmax,
    Op.RESHAPE: _reshape,
    Op.PERMUTE: _permute,
    Op.EXPAND: _expand,
    Op.PAD: _pad,
    Op.SHRINK: _shrink,
    Op.FLIP: _flip,
    Op.WINDOW: _window,
    Op.CONTIGUOUS: _identity,
    Op.COPY: _copy,
    COMPOSITE: _composite,
    MATMUL: _matmul,
}


def _check_rules() -> None:
    """The rule table and the op table agree: a rule for each differentiable primitive and for no other."""
    primitives = {op for op in RULES if isinstance(op, Op)}
    if primitives != DIFFERENTIABLE:
        missing, extra = sorted(DIFFERENTIABLE - primitives), sorted(primitives - DIFFERENTIABLE)
        raise RuntimeError(f"gradient rules: missing for {missing}, given for non-differentiable {extra}")


_check_rules()
_RULE_KEYS = {key: key for key in RULES}  # Op members hash and compare as their names


@defers_gc
def backward(root, gradient, retain_graph: bool = False, create_graph: bool = False, inputs=None):
    """Accumulate d(root)/d(leaf) into the .grad of leaves (or return them for `inputs`)."""
    order = _topological(root)
    grads = {id(root): gradient}
    wanted = None if inputs is None else {id(t): t for t in inputs}
    results = {}
    with _GradMode(create_graph):
        for t in reversed(order):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if wanted is not None and id(t) in wanted:
                results[id(t)] = g
            if t._ctx is None:
                if wanted is None and t.requires_grad:
                    t._accumulate_grad(g)
                continue
            if wanted is None and t._retains_grad:
                t._accumulate_grad(g)
            ctx = t._ctx
            input_grads = RULES[ctx.op](ctx, g)
            for inp, ig in zip(ctx.inputs, input_grads):
                if ig is None or not inp.requires_grad:
                    continue
                assert ig._lazydata.shape == inp._lazydata.shape, f"gradient of {ctx.op}: {ig.shape} for {inp.shape}"
                prev = grads.get(id(inp))
                grads[id(inp)] = ig if prev is None else _total(prev, ig)
            if not retain_graph and t._view_of is None:
                # (a view keeps its movement: its source is held anyway, and a view held across steps, as torch's,
                # carries its gradient to the source again)
                t._ctx = None
    return results


def _topological(root) -> list:
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        ctx = t._ctx
        if ctx is not None:
            if ctx.versions:  # (_resolve_versions only for an input updated in place since: almost never)
                for inp, version in zip(ctx.inputs, ctx.versions):
                    if inp._version != version:
                        _resolve_versions(ctx)
                        break
                ctx.versions = ()
            for inp in ctx.inputs:
                if inp.requires_grad and id(inp) not in seen:
                    stack.append((inp, False))
    return order


# the rules that read only their inputs' shapes and dtypes, never their values
_VALUE_FREE = frozenset(
    {Op.NEG, Op.CAST, Op.ADD, Op.SUM, Op.RESHAPE, Op.PERMUTE, Op.EXPAND, Op.PAD, Op.SHRINK, Op.FLIP, Op.WINDOW}
    | {Op.CONTIGUOUS, Op.COPY}
)


def _resolve_versions(ctx: Context) -> None:
    """Inputs updated in place since the op was recorded are replaced by their values back then (snapshots). An
    input whose old value was not kept (a leaf updated in place) may only be one whose value the rule does not read;
    otherwise this is PyTorch's error."""
    if ctx.versions:
        for t, v in zip(ctx.inputs, ctx.versions):
            if t._version != v:  # (almost never: check before building a new tuple)
                ctx.inputs = tuple(_as_of(t, v, ctx) for t, v in zip(ctx.inputs, ctx.versions))
                break
        ctx.versions = ()


def _as_of(t, version: int, ctx: Context):
    old = t._as_of(version)
    if old is not None:
        return old
    if ctx.op in _VALUE_FREE or ctx.op is Op.WHERE and t is not ctx.inputs[0]:  # (where reads its condition only)
        return t  # the gradient needs the shape only, which an in-place update keeps
    raise RuntimeError(
        "one of the variables needed for gradient computation has been modified by an inplace operation: "
        f"[{t.dtype.name}{list(t.shape)}] is at version {t._version}; expected version {version} instead "
        f"(an input of {ctx.op.value if isinstance(ctx.op, Op) else ctx.op}, updated in place after it was recorded, "
        "whose old value was not kept: a leaf, or a view of one)"
    )

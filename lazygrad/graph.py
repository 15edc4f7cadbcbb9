"""The lazy graph: immutable nodes of a small primitive op set.

A `LazyBuffer` is either a *base* (an op over other LazyBuffers, producing a contiguous result of
its shape) or a *view* of a base (a ShapeTracker over the base's contiguous layout, plus the
movement ops that made it, so that views compose by replaying them). Movement ops never copy.

Bases are hash-consed: building the same op over the same sources twice gives the same node, so
common subexpressions are computed once. Realized bases hold a device `Buffer` and drop their
sources, which releases the graph behind them.
"""

from __future__ import annotations

import functools
import gc
import math
import weakref

from lazygrad.dtype import DType

# the op table's group sets are also importable from here, where they were defined before it existed
from lazygrad.ops import (  # noqa: F401
    BINARY,
    COMPARISONS,
    EFFECTS,
    ELEMENTWISE,
    MOVEMENT,
    REDUCE,
    SOURCES,
    TERNARY,
    UNARY,
    Op,
    coerce,
)
from lazygrad.shape import _CONTIGUOUS, ShapeTracker, max_prod

# bases built twice from the same op over the same sources are one node
_HASH_CONSED = ELEMENTWISE | REDUCE | {Op.CONST}


_CONST = Op.CONST  # read once: an Enum class attribute is slow to read in Python 3.11


def defers_gc(fn):
    """`fn` runs with Python's cyclic garbage collector paused (and resumed after, as it was): for the calls that
    build or walk a whole step's graph at once (backward, an optimizer's update, realize).

    The collector runs after every 700 net allocations of container objects. A step's graph is thousands of
    nodes, views and tensors that all live until the step ends, so every young collection during a backward
    traverses them again and promotes them, and the oldest generation's collections then walk the whole heap:
    ~7 ms of a 70 ms eager ResNet-18 step. Paused, the collections wait until the call returns (the next
    allocation after it collects as usual); what dies by reference counting is freed at once either way. A
    collector the user paused stays paused."""

    @functools.wraps(fn)
    def paused(*args, **kwargs):
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused


# the hash-consing table: (device, shape, dtype, op, ids of the sources..., arg) -> a weak reference to the node,
# and back (a WeakValueDictionary, with plain weak references: it costs a third of one per node)
_CONSED: dict = {}
_CONSED_KEYS: dict = {}


def _forget_consed(ref) -> None:
    key = _CONSED_KEYS.pop(ref, None)
    if key is not None:
        # one look-up of the key (a tuple's hash is not cached): taken out, and put back in the rare case that a
        # newer node of the same key has replaced this one (every node of every eager step dies through here)
        current = _CONSED.pop(key, None)
        if current is not ref and current is not None:
            _CONSED[key] = current


class WeakList:
    """The live objects among those added, held weakly: a cheaper WeakSet (one weak reference per add, no
    callbacks). Dead references are dropped when the list has doubled since the last sweep, so a long-lived
    buffer read by a new node every step keeps a list as long as its live readers, not its history."""

    __slots__ = ("refs", "sweep_at")

    def __init__(self):
        self.refs: list = []
        self.sweep_at = 8

    def add(self, obj) -> None:
        self.add_ref(weakref.ref(obj))

    def add_ref(self, ref: weakref.ref) -> None:
        refs = self.refs
        refs.append(ref)
        if len(refs) >= self.sweep_at:
            refs[:] = [r for r in refs if r() is not None]
            self.sweep_at = max(8, 2 * len(refs))

    def __iter__(self):
        for r in self.refs:
            obj = r()
            if obj is not None:
                yield obj

    def any_alive(self, outside: set | frozenset = frozenset()) -> bool:
        """Whether one of the objects is alive (and its id not in `outside`)."""
        for r in self.refs:
            obj = r()
            if obj is not None and id(obj) not in outside:
                return True
        return False

    def __len__(self) -> int:
        return sum(1 for r in self.refs if r() is not None)


# A base's readers and holders are None, one weak reference, or a WeakList once there are two: most bases have one
# reader and one holder, and a WeakList with its list for each was two more objects per op for the garbage collector.
_REF = weakref.ref


def with_ref(refs, ref):
    """Readers or holders (None, a weak reference or a WeakList) with `ref` added."""
    if refs is None:
        return ref
    if type(refs) is WeakList:
        refs.add_ref(ref)
        return refs
    both = WeakList()
    both.refs.append(refs)
    both.add_ref(ref)
    return both


def any_alive(refs, outside: set | frozenset = frozenset()) -> bool:
    """Whether one of the readers or holders `refs` is alive (and its id not in `outside`)."""
    if refs is None:
        return False
    if type(refs) is WeakList:
        return refs.any_alive(outside)
    obj = refs()
    return obj is not None and id(obj) not in outside


def refs_of(refs) -> list:
    """The weak references among readers or holders `refs`."""
    return [] if refs is None else refs.refs if type(refs) is WeakList else [refs]


def _as_weak_list(refs) -> WeakList:
    if type(refs) is WeakList:
        return refs
    out = WeakList()
    if refs is not None:
        out.refs.append(refs)
    return out


class LazyBuffer:
    __slots__ = (
        "device",
        "st",
        "shape",
        "dtype",
        "op",
        "srcs",
        "arg",
        "_base",
        "movement",
        "buffer",
        "_readers",
        "_holders",
        "__weakref__",
        "__dict__",
    )

    def __init__(
        self,
        device: str,
        st: ShapeTracker,
        dtype: DType,
        op: Op,
        srcs: tuple = (),
        arg=None,
        base: LazyBuffer | None = None,
        movement: tuple = (),
    ):
        self.device, self.st, self.shape, self.dtype = device, st, st.views[-1].shape, dtype  # (st.shape, uncalled)
        self.op, self.srcs, self.arg = op, srcs, arg  # op: an Op member, never a name
        self._base = base  # None for a base
        self.movement = movement  # movement ops from the base's shape to this view's shape
        self.buffer = None  # the device Buffer once realized (bases only)
        # the live nodes that read this base: an assign into it must first realize those that are still lazy
        self._readers = None  # see with_ref: None, a weak reference, or a WeakList
        self._holders = None  # the Tensors whose data this base (or a view of it) is: as _readers
        if srcs:
            me = _REF(self)
            for src in srcs:
                base = src if src._base is None else src._base
                if base.op is _CONST:
                    # a constant is never assigned into, so its readers are never asked for; and one constant node
                    # serves every use of its value (_CONST_VIEWS): its list would grow by hundreds every step
                    continue
                readers = base._readers
                if readers is None:  # (the common case, without a call)
                    base._readers = me
                else:
                    base._readers = with_ref(readers, me)

    @property
    def readers(self) -> WeakList:
        self._readers = _as_weak_list(self._readers)
        return self._readers

    def hold(self, tensor) -> None:
        """Note that `tensor`'s data is this node (a base, or a view of one): see `holders`."""
        base = self if self._base is None else self._base
        base._holders = with_ref(base._holders, _REF(tensor))

    @property
    def holders(self) -> WeakList:
        self._holders = _as_weak_list(self._holders)
        return self._holders

    # --- identity ------------------------------------------------------------------------------
    @property
    def base(self) -> LazyBuffer:
        return self if self._base is None else self._base

    @property
    def is_view(self) -> bool:
        return self._base is not None

    @property
    def size(self) -> int:
        """Elements of memory: a symbolic size counts at its bound (what a buffer of this shape is allocated for)."""
        return max_prod(self.shape)

    @property
    def realized(self) -> bool:
        return self.base.buffer is not None

    def __repr__(self):
        kind = f"view of {self.base.op}" if self.is_view else self.op
        return f"<LazyBuffer {kind} {self.shape} {self.dtype.name} {self.device}{' realized' if self.realized else ''}>"

    # --- constructors ----------------------------------------------------------------------------
    @staticmethod
    def new_base(device, shape, dtype, op, srcs=(), arg=None) -> LazyBuffer:
        """A base node, shared with an existing identical one (hash-consing)."""
        key = None
        if op in _HASH_CONSED:
            key = (device, tuple(shape), dtype, op, tuple(map(id, srcs)), const_key(arg) if op is _CONST else arg)
            try:
                hit = _CONSED.get(key)
            except TypeError:  # an arg that cannot be a key: the node is not shared
                key = hit = None
            if hit is not None and (hit := hit()) is not None and hit.srcs == srcs:
                return hit
        node = LazyBuffer(device, ShapeTracker.contiguous(shape), dtype, op, srcs, arg)
        if key is not None:
            ref = weakref.ref(node, _forget_consed)
            _CONSED[key] = ref
            _CONSED_KEYS[ref] = key
        return node

    @staticmethod
    def const(value, shape, dtype, device) -> LazyBuffer:
        value, shape = _normalize_const(value, dtype), tuple(shape)
        key = (const_key(value), shape, dtype, device)
        node = _CONST_VIEWS.get(key)
        if node is None:
            scalar = LazyBuffer.new_base(device, (), dtype, _CONST, (), value)
            node = scalar.reshape((1,) * len(shape)).expand(shape) if shape else scalar
            if len(_CONST_VIEWS) >= _MAX_CONST_VIEWS:
                _CONST_VIEWS.clear()
            _CONST_VIEWS[key] = node
        return node

    @staticmethod
    def from_host(array, device) -> LazyBuffer:
        from lazygrad.dtype import from_numpy_dtype

        return LazyBuffer(
            device, ShapeTracker.contiguous(array.shape), from_numpy_dtype(array.dtype), Op.HOST, (), array
        )

    @staticmethod
    def from_buffer(buffer, shape, dtype, device) -> LazyBuffer:
        node = LazyBuffer(device, ShapeTracker.contiguous(shape), dtype, Op.BUFFER)
        node.buffer = buffer
        return node

    # --- ops -------------------------------------------------------------------------------------
    # The frontend names primitives by Op member or by name ("add"): each method converts once, here.
    def alu(self, op: Op | str, *others: LazyBuffer, arg=None, dtype: DType | None = None) -> LazyBuffer:
        op = coerce(op)
        srcs = (self, *others)
        if op not in ELEMENTWISE:
            raise ValueError(f"alu: {op} is not an elementwise primitive ({op.group.value})")
        if len(srcs) != op.arity:
            raise ValueError(f"alu: {op} takes {op.arity} operands, given {len(srcs)}")
        for s in srcs:
            assert s.shape == self.shape, f"{op}: shapes {[x.shape for x in srcs]} (broadcast before the primitive)"
        if srcs[-1].dtype.kind not in op.kinds:  # the last operand: where's value, a comparison's or cast's input
            raise TypeError(f"{op} does not compute on {srcs[-1].dtype.name} (the op table's kinds: {op.kinds})")
        if dtype is None:
            dtype = op.result_dtype(self.dtype, srcs[-1].dtype, arg)
        return LazyBuffer.new_base(self.device, self.shape, dtype, op, srcs, arg)

    @staticmethod
    def elementwise(op: Op, srcs: tuple, arg=None, dtype: DType | None = None) -> LazyBuffer:
        """`alu` for the frontend's door (Tensor._primitive), in one call: `op` is already an Op member, and the
        node is looked up or built here, not through new_base. The checks alu makes stay (they are what catch a
        frontend bug); only the calls between them go. Every tensor op of an eager step comes through here."""
        first, last = srcs[0], srcs[-1]
        shape = first.shape
        row = _ELEMENTWISE_ROWS.get(op)  # (arity, kinds, dtype rule): the op table's row, read once
        if row is None or row[0] != len(srcs) or last.dtype.kind not in row[1]:
            return first.alu(op, *srcs[1:], arg=arg, dtype=dtype)  # (for its error)
        for s in srcs:
            if s.shape != shape:
                return first.alu(op, *srcs[1:], arg=arg, dtype=dtype)
        if dtype is None:
            if row[2] is None:
                return first.alu(op, *srcs[1:], arg=arg, dtype=dtype)  # (for its error)
            dtype = row[2](first.dtype, last.dtype, arg)
        device = first.device
        key = (device, shape, dtype, op, tuple(map(id, srcs)), arg)
        try:
            hit = _CONSED.get(key)
        except TypeError:  # an arg that cannot be a key: the node is not shared
            return LazyBuffer(device, ShapeTracker.contiguous(shape), dtype, op, srcs, arg)
        if hit is not None and (hit := hit()) is not None and hit.srcs == srcs:
            return hit
        st = _CONTIGUOUS.get(shape)
        node = LazyBuffer(device, st if st is not None else ShapeTracker.contiguous(shape), dtype, op, srcs, arg)
        ref = weakref.ref(node, _forget_consed)
        _CONSED[key] = ref
        _CONSED_KEYS[ref] = key
        return node

    def reduce(self, op: Op | str, axes: tuple) -> LazyBuffer:
        if type(op) is not Op:
            op = coerce(op)
        if op not in REDUCE:
            raise ValueError(f"reduce: {op} is not a reduce ({op.group.value})")
        if self.dtype.kind not in op.combine.kinds:
            raise TypeError(f"{op} does not compute on {self.dtype.name} ({op.combine} does not)")
        shape = self.shape
        if type(axes) is not tuple:
            axes = tuple(axes)
        try:  # an eager step reduces the same few shapes every step: the axes and result shape are remembered
            axes, new_shape = _REDUCED[(shape, axes)]
        except KeyError:
            key = (shape, axes)
            axes = tuple(sorted(a for a in axes if shape[a] != 1))
            new_shape = tuple(1 if i in axes else s for i, s in enumerate(shape))
            if len(_REDUCED) >= _MAX_REDUCED:
                _REDUCED.clear()
            _REDUCED[key] = (axes, new_shape)
        if not axes:
            return self
        return LazyBuffer.new_base(self.device, new_shape, self.dtype, op, (self,), axes)

    def _view(self, op: Op, arg) -> LazyBuffer:
        """This node seen through the movement op `op`."""
        new_st = _moved(self.st, op, arg)
        if new_st is self.st:  # _moved hands back the very tracker when the move changes nothing
            return self
        base = self if self._base is None else self._base
        if new_st.shape == base.shape and new_st.contiguous_view and base.st.contiguous_view:
            return base
        return LazyBuffer(self.device, new_st, self.dtype, Op.VIEW, base=base, movement=self.movement + ((op, arg),))

    def moved(self, moves: tuple) -> LazyBuffer:
        """This node seen through several movement ops `((op, arg), ...)` as one view node, where calling them one
        by one makes a node per op: the same tracker and the same movement list (a move that changes nothing is
        left out, a view back to its whole base is the base), so the schedule, its structure key and the kernels
        cannot tell the difference. For rules that move many pieces (conv2d's input gradient)."""
        base = self if self._base is None else self._base
        st, movement = self.st, self.movement
        for op, arg in moves:
            new_st = _moved(st, op, arg)
            if new_st is st:
                continue
            if new_st.shape == base.shape and new_st.contiguous_view and base.st.contiguous_view:
                st, movement = base.st, ()
            else:
                st, movement = new_st, movement + ((op, arg),)
        if st is self.st:
            return self
        if not movement:
            return base
        return LazyBuffer(self.device, st, self.dtype, Op.VIEW, base=base, movement=movement)

    def broadcast(self, padded: tuple, shape: tuple) -> LazyBuffer:
        """reshape(padded).expand(shape) as one node: broadcasting to more dims (`padded` is this shape with ones in
        front) never uses the reshape's own node."""
        st = _moved(_moved(self.st, Op.RESHAPE, padded), Op.EXPAND, shape)
        base = self if self._base is None else self._base
        movement = self.movement + ((Op.RESHAPE, padded), (Op.EXPAND, shape))
        return LazyBuffer(self.device, st, self.dtype, Op.VIEW, base=base, movement=movement)

    def reshape(self, shape):
        shape = tuple(shape)
        return self if shape == self.shape else self._view(Op.RESHAPE, shape)

    def permute(self, order):
        order = tuple(order)
        return self if order == tuple(range(len(order))) else self._view(Op.PERMUTE, order)

    def expand(self, shape):
        shape = tuple(shape)
        return self if shape == self.shape else self._view(Op.EXPAND, shape)

    def pad(self, arg):
        arg = tuple(arg)
        return self if arg == ((0, 0),) * len(arg) else self._view(Op.PAD, arg)

    def shrink(self, arg):
        arg = tuple(arg)
        # (built in C, not a generator per call: pooling and slicing shrink often)
        return self if arg == tuple(zip(_ZEROS, self.shape)) else self._view(Op.SHRINK, arg)

    def flip(self, axes):
        axes = tuple(a for a in axes if self.shape[a] > 1)
        return self if not axes else self._view(Op.FLIP, axes)

    def window(self, arg):
        return self._view(Op.WINDOW, arg)

    def move(self, op: Op | str, arg) -> LazyBuffer:
        """The movement primitive `op` applied to this node (a view; nothing is copied)."""
        op = coerce(op)
        if op not in MOVEMENT:
            raise ValueError(f"move: {op} is not a movement primitive ({op.group.value})")
        return getattr(self, op.value)(arg)

    def contiguous(self) -> LazyBuffer:
        """A base of its own with this view's values laid out in order."""
        if self._base is None and self.op is not _CONST:
            return self
        return LazyBuffer(self.device, ShapeTracker.contiguous(self.shape), self.dtype, Op.CONTIGUOUS, (self,))

    def own_copy(self) -> LazyBuffer:
        """A new base with these values that no other node shares (not hash-consed): memory that an owner
        may later overwrite in place."""
        return LazyBuffer(self.device, ShapeTracker.contiguous(self.shape), self.dtype, Op.CONTIGUOUS, (self,))

    def copy_to(self, device: str) -> LazyBuffer:
        if device == self.device:
            return self
        src = self if not self.is_view else self.contiguous()
        return LazyBuffer(device, ShapeTracker.contiguous(self.shape), self.dtype, Op.COPY, (src,))

    def assign(self, value: LazyBuffer) -> LazyBuffer:
        """The result of writing `value` into this (realized) base's memory."""
        assert not self.is_view and value.shape == self.shape and value.dtype == self.dtype
        return LazyBuffer(self.device, ShapeTracker.contiguous(self.shape), self.dtype, Op.ASSIGN, (value,), self)

    def assign_view(self, value: LazyBuffer, st: ShapeTracker) -> LazyBuffer:
        """The result of writing `value` into the elements of this (realized) base that the view `st` sees, and only
        those: its kernel stores through the view (`write_view`), so its work is the view's size, not the base's
        (one slot of a key/value cache, at a position that is a Variable)."""
        assert not self.is_view and value.shape == st.shape and value.dtype == self.dtype
        node = LazyBuffer(self.device, ShapeTracker.contiguous(self.shape), self.dtype, Op.ASSIGN, (value,), self)
        node.write_view = st
        return node


# an elementwise op's row of the op table as LazyBuffer.elementwise reads it: (arity, dtype kinds, result dtype rule)
_ELEMENTWISE_ROWS = {op: (op.arity, op.kinds, op.dtype_rule.rule) for op in ELEMENTWISE}

_ZEROS = (0,) * 64  # the starts of a shrink that changes nothing (no tensor has more dims)

# (constant, shape, dtype, device) -> the constant's node seen in that shape. Nodes are immutable and a constant
# is never realized in place, so one node serves every use: a scalar operand (`x * 0.5`) costs a look-up, not a
# base and two views per op
_CONST_VIEWS: dict = {}
_MAX_CONST_VIEWS = 4096

# (shape, axes asked for) -> (the axes reduced, in order, without size-1 dims; the result's shape)
_REDUCED: dict = {}
_MAX_REDUCED = 4096

# (id of a tracker, movement op, arg) -> (the tracker, the tracker the move gives): a training loop moves the same
# few views every step. Keyed by id (a tracker's own hash is a Python call on every move); the entry holds the tracker,
# so that its id is not reused while the entry exists
_MOVES: dict = {}
_MAX_MOVES = 65536


def _moved(st: ShapeTracker, op: Op, arg) -> ShapeTracker:
    key = (id(st), op, arg)
    try:
        entry = _MOVES.get(key)
    except TypeError:  # an arg that cannot be a key (a list inside): computed each time
        moved = getattr(st, op.value)(arg)
        return st if moved == st else moved
    if entry is None:
        moved = getattr(st, op.value)(arg)
        if moved == st:
            moved = st  # so that callers tell "no change" by identity
        if len(_MOVES) >= _MAX_MOVES:
            _MOVES.clear()
        _MOVES[key] = (st, moved)
        return moved
    return entry[1]


def const_key(value):
    """A value as a key: 0.0 and -0.0 compare equal but are different constants (1 / x tells them apart)."""
    if value == 0 and isinstance(value, float):
        return (value, math.copysign(1.0, value))
    return value


def _normalize_const(value, dtype: DType):
    if dtype.kind == "b":
        return bool(value)
    if dtype.is_int:
        return int(value)
    return float(value)

"""Tensor: the user's API, with PyTorch's names and semantics.

This module is Tensor's core: construction, the two doors to the graph, realization, the autograd surface and
the in-place/version machinery. The ops are grouped by concern in lazygrad.tensor_ops (elementwise, reduce,
movement, creation, nn), one mixin class each, which Tensor inherits.

Every op is composed of the primitives of lazygrad.graph through two doors: `_primitive` (elementwise and
reduce ops, recorded for autograd) and `_movement` (views). Nothing computes until `numpy()`, `item()`,
`tolist()` or `realize()`.
"""

from __future__ import annotations

import weakref

import numpy as np

from lazygrad import autograd, runtime, tensor_ops
from lazygrad import dtype as dt
from lazygrad.device import canonical_device, device_of, is_device_name
from lazygrad.dtype import DType
from lazygrad.graph import LazyBuffer, WeakList, with_ref
from lazygrad.ops import REDUCE, Op
from lazygrad.shape import describe_symbolic, prod
from lazygrad.symbolic import VARIABLES_MADE, Node
from lazygrad.tensor_ops.arrange import ArrangeOps, IndexingOps
from lazygrad.tensor_ops.creation import CreationOps, manual_seed
from lazygrad.tensor_ops.elementwise import ElementwiseOps
from lazygrad.tensor_ops.math import MathOps
from lazygrad.tensor_ops.movement import MovementOps
from lazygrad.tensor_ops.nn import NNOps
from lazygrad.tensor_ops.reduce import MaxMin, ReduceOps

__all__ = ["MaxMin", "Tensor", "manual_seed", "realize"]

_CAST, _BUFFER = Op.CAST, Op.BUFFER  # read once: an Enum class attribute is slow to read in Python 3.11

# the "movement op" of a view made by detach() or .data: the same memory, seen whole, outside autograd
ALIAS = "alias"

# While the JIT captures a step (runtime.CAPTURES): the tensors that left their realized buffer for one of their own
# (a second in-place update in one step, see Tensor._store), with that buffer's node. The JIT writes their final
# values back into those buffers (write_back_moved), so that every replay updates the memory the tensors hold.
_MOVED_OFF: list = []


def write_back_moved() -> list:
    """Each tensor that left its buffer during the capture assigns its value back into it; returns those tensors."""
    moved, written = list(_MOVED_OFF), []
    _MOVED_OFF.clear()
    for ref, node in moved:
        t = ref()
        if t is not None and t._lazydata.base is not node:
            before = t._lazydata.base
            t.lazydata = node.assign(t._lazydata.contiguous())
            t._refresh_views(before)
            written.append(t)
    return written


class Tensor(ElementwiseOps, ReduceOps, MovementOps, CreationOps, NNOps, MathOps, ArrangeOps, IndexingOps):
    # _view_of is a slot, not a class default: a default overridden per view gave each view tensor a __dict__
    __slots__ = (
        "_lazydata",
        "requires_grad",
        "grad",
        "_ctx",
        "_retains_grad",
        "_view_of",
        "__weakref__",
        "__dict__",
    )

    @property
    def lazydata(self) -> LazyBuffer:
        return self._lazydata

    @lazydata.setter
    def lazydata(self, lb: LazyBuffer) -> None:
        # the base remembers the tensors that hold it: an assign must not leave them to be computed later
        # from overwritten memory (see schedule.Scheduler)
        self._lazydata = lb
        lb.hold(self)

    __array_priority__ = 1000  # numpy defers to our reflected operators
    # in-place updates under autograd: the count of them, and the tensor as it was before each (see _inplace)
    _version = 0
    _snapshots: dict | None = None
    # _view_of: (source tensor, movement op, arg) of a view made by _movement (op ALIAS for detach() and .data),
    # else None. The views of a tensor are found when it is updated in place, among the holders of its node's base
    # (_refresh_views): making a view costs nothing more than the view

    def __init__(self, data, dtype=None, device=None, requires_grad: bool = False):
        dtype = dt.to_dtype(dtype) if dtype is not None else None
        device_arg, device = device, canonical_device(device)
        if isinstance(data, LazyBuffer):
            lb = data if dtype is None or data.dtype == dtype else data.alu(Op.CAST, dtype=dtype, arg=dtype)
        elif isinstance(data, Tensor):
            lb = data.lazydata
            if dtype is not None and lb.dtype != dtype:
                lb = lb.alu(Op.CAST, dtype=dtype, arg=dtype)
            if device_arg is not None and device != lb.device:
                lb = lb.copy_to(device)
        else:
            if isinstance(data, (bool, int, float)) and not isinstance(data, np.generic):
                d = dtype or dt.python_type_dtype(data)
                lb = LazyBuffer.const(data, (), d, device)
            else:
                if not isinstance(data, np.ndarray):
                    data = _to_numpy_nested(data, dtype)
                if dtype is not None:
                    target = dtype.np
                elif data.dtype == np.float64:
                    # the default float, as torch.Tensor (the legacy constructor) does; lazygrad.tensor, from_numpy
                    # and as_tensor keep float64 (they pass the array's dtype)
                    target = dt.default_float.np
                else:
                    target = None
                # one copy (as torch.tensor), converted on the way: the upload is lazy, so later writes to `data` must
                # not show through; np.array also keeps 0-d arrays 0-d, where np.ascontiguousarray would make them 1-d
                data = np.array(data, dtype=target, copy=True, order="C")
                lb = LazyBuffer.from_host(data, device)
        self.lazydata = lb
        self.grad: Tensor | None = None
        self._ctx: autograd.Context | None = None
        self._retains_grad = False
        self._view_of = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # --- the two doors to the graph -----------------------------------------------------------------
    def _primitive(self, op: str, *others: Tensor, arg=None, dtype: DType | None = None) -> Tensor:
        lb = self._lazydata
        # the sources without a comprehension for the common one and two operands (Python 3.11 calls one per op)
        if not others:
            srcs = (lb,)
        elif len(others) == 1:
            srcs = (lb, others[0]._lazydata)
        else:
            srcs = (lb, *[t._lazydata for t in others])
        device = lb.device
        for src in srcs:
            if src.device is not device and src.device != device:
                devices = sorted({t.device for t in (self, *others)})
                raise RuntimeError(f"Expected all tensors to be on the same device, but found {devices} ({op})")
        if type(op) is Op and op not in REDUCE:
            out = LazyBuffer.elementwise(op, srcs, arg, dtype)
        elif op in REDUCE:
            out = lb.reduce(op, arg)
        else:
            out = lb.alu(op, *srcs[1:], arg=arg, dtype=dtype)
        return self._record(Tensor._wrap(out), op, (self, *others), arg)

    def _movement(self, op: str, arg) -> Tensor:
        lb = getattr(self._lazydata, op)(arg)
        if lb is self._lazydata:
            return self
        out = self._record(Tensor._wrap(lb), op, (self,), arg)
        out._view_of = (self, op, arg)  # so that an in-place update of the view writes through (_inplace)
        return out

    @staticmethod
    def _wrap(lb: LazyBuffer) -> Tensor:
        """Tensor(lb) for the graph's own results: what __init__ does for a LazyBuffer, without its checks (this
        runs for every op the frontend builds)."""
        out = Tensor.__new__(Tensor)
        out._lazydata = lb  # the lazydata setter's work (LazyBuffer.hold), without its two calls
        base = lb if lb._base is None else lb._base
        holders = base._holders
        base._holders = weakref.ref(out) if holders is None else with_ref(holders, weakref.ref(out))
        out.grad, out._ctx, out._retains_grad, out.requires_grad, out._view_of = None, None, False, False, None
        return out

    @staticmethod
    def _scalar_operand(lb: LazyBuffer) -> Tensor:
        """_wrap for a Python scalar made a constant operand of one op (`x * 2.0`): not noted among the holders of
        the constant's node. Holders are asked for views to remake after an in-place update and for lazy values
        still wanted; this tensor is no view and never updated, and a constant is never stale, while the one
        shared node of each constant would otherwise collect a weak reference per use."""
        out = Tensor.__new__(Tensor)
        out._lazydata = lb
        out.grad, out._ctx, out._retains_grad, out.requires_grad, out._view_of = None, None, False, False, None
        return out

    @staticmethod
    def _record(out: Tensor, op: str, inputs: tuple, arg) -> Tensor:
        for t in inputs:
            if t.requires_grad:
                break
        else:
            return out
        if autograd._grad_enabled[-1] and op in autograd.RULES:  # (is_grad_enabled(), without the call)
            if op is not _CAST or out._lazydata.dtype.is_float:
                out.requires_grad = True
                # (the versions of one or two inputs without a comprehension: Python 3.11 calls one per op)
                if len(inputs) == 1:
                    versions = (inputs[0]._version,)
                elif len(inputs) == 2:
                    versions = (inputs[0]._version, inputs[1]._version)
                else:
                    versions = tuple([t._version for t in inputs])
                out._ctx = autograd.Context(op, inputs, arg, out._lazydata.shape, versions)
        return out

    # --- properties ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self._lazydata.shape

    @property
    def dtype(self) -> DType:
        return self._lazydata.dtype

    @property
    def device(self) -> str:
        return device_of(self._lazydata.device)  # a lazygrad.device: torch.device's counterpart, and a str

    @property
    def ndim(self) -> int:
        return len(self._lazydata.shape)

    def dim(self) -> int:
        return self.ndim

    def numel(self) -> int:
        return prod(self.shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[self._dim(dim)]

    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def is_leaf(self) -> bool:
        return self._ctx is None

    def __format__(self, spec: str) -> str:
        # torch: a 0-d tensor formats as its Python number (f"{loss:.4f}"); any other tensor only with an empty spec
        if self.ndim == 0 and spec:
            return format(self.item(), spec)
        return object.__format__(self, spec)

    def __repr__(self):
        if self.lazydata.realized and not self.lazydata.is_view:
            body = np.array2string(runtime.to_numpy(self.lazydata), separator=", ", threshold=50)
        else:
            body = f"<lazy {self.lazydata.base.op if self.lazydata.is_view else self.lazydata.op}>"
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({body}, shape={self.shape}, dtype={self.dtype.name}, device='{self.device}'{grad})"

    def __hash__(self):
        return id(self)

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        if self.numel() != 1:
            raise RuntimeError(f"Boolean value of Tensor with {self.numel()} values is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.is_float or self.numel() != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    # --- getting values -----------------------------------------------------------------------------
    def realize(self) -> Tensor:
        realize(self)
        return self

    def numpy(self) -> np.ndarray:
        return runtime.to_numpy(self.lazydata)

    def item(self):
        if self.numel() != 1:
            raise RuntimeError(f"a Tensor with {self.numel()} elements cannot be converted to Scalar")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out.astype(dtype) if dtype is not None else out

    # --- autograd surface ---------------------------------------------------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and not (self.dtype.is_float):
            raise RuntimeError(f"only Tensors of floating point dtype can require gradients (got {self.dtype.name})")
        if not requires_grad and self._ctx is not None:
            raise RuntimeError("you can only change requires_grad flags of leaf variables")
        self.requires_grad = requires_grad
        return self

    def detach(self) -> Tensor:
        """This tensor's memory outside autograd (torch's): in-place updates of either are seen by the other."""
        alias = Tensor._wrap(self._lazydata)
        alias._view_of = (self, ALIAS, None)
        return alias

    @property
    def data(self) -> Tensor:
        """The same memory outside autograd (torch's .data), as detach()."""
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        # torch's `param.data = t`: the tensor takes t's values (and shape), its autograd identity stays
        lb = value.lazydata if isinstance(value, Tensor) else Tensor(value, device=self.device).lazydata
        if lb is not self.lazydata:  # `p.data -= x` sets back what the in-place update already wrote
            self.lazydata = lb

    def detach_(self) -> Tensor:
        self._ctx, self.requires_grad = None, False
        return self

    def retain_grad(self) -> None:
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        self._retains_grad = True

    def _as_of(self, version: int) -> Tensor | None:
        """This tensor as it was at `version` (itself, or the snapshot an in-place update left); None where its
        value then was not kept (a leaf's, see _update)."""
        return self if version == self._version else (self._snapshots or {}).get(version)

    def _accumulate_grad(self, g: Tensor):
        # a tensor of its own (a rule may hand one gradient to two inputs): detach() without __init__'s checks
        g = g if autograd._grad_enabled[-1] else Tensor._wrap(g._lazydata)
        self.grad = g if self.grad is None else self.grad + g

    def backward(
        self, gradient: Tensor | None = None, retain_graph: bool = False, create_graph: bool = False, inputs=None
    ) -> None:
        """Adds the gradient graph and accumulates into the .grad of leaves; runs nothing."""
        if not self.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        if gradient is None:
            if self.numel() != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs (got shape {self.shape})")
            gradient = Tensor.ones_like(self)
        elif gradient.shape != self.shape:
            raise RuntimeError(f"gradient of shape {gradient.shape} does not match the output's shape {self.shape}")
        if inputs is not None:
            for t, g in autograd.backward(self, gradient, retain_graph or create_graph, create_graph, inputs).items():
                next(x for x in inputs if id(x) == t)._accumulate_grad(g)
            return
        autograd.backward(self, gradient, retain_graph or create_graph, create_graph)

    @staticmethod
    def _composite(name: str, inputs: tuple, forward, backward) -> Tensor:
        """An op built of primitives whose gradient is given by `backward(grad) -> grads of inputs`, written
        with Tensor ops (so that it is differentiable again), instead of differentiating its primitives."""
        with autograd.no_grad():
            out = forward()
        return Tensor._record(out, autograd.COMPOSITE, inputs, (name, backward))

    # --- device and memory --------------------------------------------------------------------------
    def cpu(self) -> Tensor:
        """torch's `.cpu()`: this tensor on the host CPU's device ("cpu" is the llvm backend)."""
        return self.to("cpu")

    def to(self, *args, dtype=None, device=None) -> Tensor:
        for a in args:
            if isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif isinstance(a, DType) or (isinstance(a, str) and not is_device_name(a)):
                dtype = a
            elif isinstance(a, str):
                device = a
            else:
                dtype = a
        out = self
        if dtype is not None:
            out = out.cast(dtype)
        if device is not None:
            device = canonical_device(device)
            if device != out.device:
                out = Tensor._record(Tensor(out.lazydata.copy_to(device)), Op.COPY, (out,), None)
        return out

    def contiguous(self) -> Tensor:
        lb = self.lazydata.contiguous()
        return self if lb is self.lazydata else self._record(Tensor(lb), Op.CONTIGUOUS, (self,), None)

    def clone(self) -> Tensor:
        return self.contiguous() if self.lazydata.is_view else self * 1 if self.dtype != dt.bool_ else self | False

    # --- in-place updates ---------------------------------------------------------------------------
    # An in-place op computes its result out of place, then stores it. A tensor and the views made of it (by
    # movement ops, detach() and .data) share memory as in PyTorch: an update of a view is placed into its source
    # (and so on up to the root, the tensor that is no view), stored there, and every live view of the root is then
    # made again from the root's new value (_refresh_views).
    def assign(self, value) -> Tensor:
        """Writes value into this tensor's memory (lazily). The optimizer's and BatchNorm's way to update."""
        if not isinstance(value, Tensor):
            value = Tensor.full(self.shape, value, self.dtype, self.device)
        if value.device != self.device:
            value = value.to(self.device)
        if value.shape != self.shape:
            value = value.broadcast_to(self.shape)
        if value.dtype != self.dtype:
            value = value.cast(self.dtype)
        if value.lazydata is self.lazydata:
            return self
        if VARIABLES_MADE[0] and _symbolic_view(self):
            return self._assign_symbolic_view(value)
        if self._view_of is not None:
            with autograd.no_grad():  # assign is outside autograd
                return self._write_through(value)
        before = self._lazydata.base
        self._store(value.lazydata)
        self._refresh_views(before)
        return self

    def _assign_node(self, lb: LazyBuffer) -> Tensor:
        """assign() of a graph node already of this tensor's shape, dtype and device (an optimizer's update, built on
        nodes), without assign()'s conversions of a value, which cost more than the rest for each parameter."""
        target = self._lazydata
        if (
            lb.shape != target.shape
            or lb.dtype is not target.dtype
            or lb.device != target.device
            or self._view_of is not None
            or VARIABLES_MADE[0]
        ):
            return self.assign(Tensor._wrap(lb))
        if lb is not target:
            before = target if target._base is None else target._base
            self._store(lb)
            self._refresh_views(before)
        return self

    def _assign_symbolic_view(self, value: Tensor) -> Tensor:
        """An assign into a view whose offset or size is a Variable's (`cache[:, :, pos:pos + 1].assign(k)`): the
        kernel stores through the view into the root's memory, writing only the view's elements (the general
        write-through of _write_through would place the value into the root's shape, and a symbolic view cannot be
        padded back to it)."""
        root = self
        while root._view_of is not None:
            source, op, _ = root._view_of
            if op not in (Op.SHRINK, Op.RESHAPE, Op.PERMUTE):  # views where each element is one place in memory
                raise NotImplementedError(
                    f"assign into a symbolic view made by {op}: only slices, reshapes and permutes are written through"
                )
            root = source
        if (root.requires_grad or value.requires_grad) and autograd.is_grad_enabled():
            raise NotImplementedError("assign into a symbolic view under autograd: use lazygrad.no_grad()")
        target = root._lazydata
        if target._base is not None or target.buffer is None:
            # lazy, or an update pending (a second write in one graph): the store goes into memory that holds the
            # tensor's current value, so that value is computed first (a sync, and under the JIT a captured kernel)
            realize(root)
            target = root._lazydata
        if target._base is not None or target.buffer is None or self._lazydata.base is not target:
            raise RuntimeError(
                f"assign into the symbolic view {describe_symbolic(self.shape)} of a tensor of shape {root.shape}: the "
                "tensor is itself a view of another tensor's memory (assign into that tensor's view instead)"
            )
        root._version += 1
        root.lazydata = target.assign_view(value._lazydata, self._lazydata.st)
        root._refresh_views(target)
        return self

    def _store(self, lb: LazyBuffer) -> None:
        # a new version without a snapshot: a graph that saved the old value raises at backward, as in PyTorch
        # (a leaf keeps no old values: an optimizer updates parameters every step)
        self._version += 1
        target = self._lazydata
        if target._base is None and target.op is _BUFFER and target.buffer is not None:  # (realized, no view)
            self.lazydata = target.assign(lb.contiguous())
        else:
            if runtime.CAPTURES and target.op is Op.ASSIGN and not target.is_view:
                # a second update in one step gets a buffer of its own (the scheduler orders one assign per buffer):
                # the JIT writes it back into the first one's buffer (write_back_moved)
                _MOVED_OFF.append((weakref.ref(self), target.arg))
            # no memory of its own yet (lazy, a constant, or a view of another tensor's): it gets a buffer of its
            # own, which later assigns overwrite in place, so the buffer stays the same from step to step
            self.lazydata = lb.own_copy()

    def _inplace(self, result: Tensor) -> Tensor:
        if self.requires_grad and self._ctx is None and autograd._grad_enabled[-1]:  # (a leaf, under autograd)
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        if result._lazydata.shape != self._lazydata.shape:
            raise RuntimeError(f"output with shape {self.shape} doesn't match the broadcast shape {result.shape}")
        if result._lazydata.dtype is not self._lazydata.dtype:
            result = result.cast(self.dtype)
        if VARIABLES_MADE[0] and _symbolic_view(self):  # (x[:, pos] = v, x[:, :n].add_(1): through the view)
            return self._assign_symbolic_view(result)
        if self._view_of is not None:
            return self._write_through(result)
        before = self._lazydata.base
        self._update(result)
        self._refresh_views(before)
        return self

    def _update(self, result: Tensor, detached: bool = False) -> None:
        """Stores result as this tensor's new value; under autograd it becomes the tensor's graph."""
        if not detached and autograd._grad_enabled[-1] and result.requires_grad:  # (is_grad_enabled())
            self._snapshot()
            self.lazydata, self._ctx, self.requires_grad = result.lazydata, result._ctx, True
            return
        if self._ctx is not None:
            # updated outside autograd (no_grad, detach): its graph stays, and its old value too, for the graphs that
            # read it, so the new value goes to new memory (an assign would overwrite the old one)
            self._snapshot()
            self.lazydata = result.lazydata
            return
        self._store(result._lazydata)

    def _snapshot(self) -> None:
        """Graphs recorded so far hold this object as an input, meaning its value now: keep that value as a
        snapshot they find by version (Tensor._as_of), before the value changes."""
        before = Tensor._wrap(self._lazydata)
        before._ctx, before.requires_grad = self._ctx, self.requires_grad
        self._snapshots = {**(self._snapshots or {}), self._version: before}
        self._version += 1

    def _write_through(self, result: Tensor) -> Tensor:
        """An in-place update of a view: placed into its source, and so on up to the root, which stores it."""
        view, value, alias = self, result, None
        while view._view_of is not None:
            source, op, arg = view._view_of
            if op == ALIAS:  # detach(), .data: the same memory, outside autograd
                if alias is None:
                    alias = (view, value)  # where the update's graph stops (torch's non-differentiable view)
                value = value.detach()
            else:
                value = _place_into(source, value, op, arg)
            view = source
        graph_root, graph_value = alias if alias is not None else (view, value)
        if graph_root.requires_grad and graph_root.is_leaf and autograd.is_grad_enabled():
            raise RuntimeError(
                f"a view of a leaf Variable that requires grad is being used in an in-place operation "
                f"(a view of shape {self.shape} of a leaf of shape {graph_root.shape})."
            )
        before = view._lazydata.base
        if alias is not None:
            # the memory is the root's, the graph the alias's: the root's autograd is not touched (as in torch)
            if autograd.is_grad_enabled() and graph_value.requires_grad:
                graph_root._snapshot()
                graph_root._ctx, graph_root.requires_grad = graph_value._ctx, True
            view._update(value, detached=True)
        else:
            view._update(value)
        view._refresh_views(before)
        return self

    def _refresh_views(self, before: LazyBuffer) -> None:
        """Every live view of this tensor (and of those views, ...) made again from its new value. Its views are
        tensors whose node has the base `before` (this tensor's node's base until the update: a view's node is a
        view of its source's base), so they are among that base's holders; their chains of sources tell which."""
        holders = before._holders
        if holders is None:
            return
        # the views' old values are kept (snapshots) where the root has a graph: a leaf's views, like the leaf itself,
        # keep none (an optimizer updates parameters every step, and their views would pile up snapshots)
        keep_old_values = self._ctx is not None
        pending = []
        # (None, one weak reference or a WeakList: graph.with_ref) (not WeakList's generator: this runs for every
        # update, and mostly finds none)
        for ref in holders.refs if type(holders) is WeakList else (holders,):
            t = ref()
            if t is not None and t._view_of is not None:
                pending.append(t)
        remade = {id(self)}
        while pending:  # sources before their views: each round remakes the views whose source is remade
            rest = []
            for view in pending:
                source, op, arg = view._view_of
                if id(source) in remade:
                    view._remake(source, op, arg, keep_old_values)
                    remade.add(id(view))
                else:
                    rest.append(view)
            if len(rest) == len(pending):  # the others are views of other tensors that share this base
                return
            pending = rest

    def _remake(self, source: Tensor, op, arg, keep_old_value: bool) -> None:
        """This view made again from its source's new value: a new version (with a snapshot of the old value for
        the graphs that read it) where it is part of a graph, as an in-place update of it would make."""
        if keep_old_value and self._ctx is not None:
            self._snapshot()
        else:
            self._version += 1  # (as its root's: a graph that saved the old value raises at backward)
        if op == ALIAS:  # the same memory; its graph, if an update gave it one, stays (a non-differentiable view's)
            self.lazydata = source._lazydata
            return
        self.lazydata = getattr(source._lazydata, op)(arg)
        if source.requires_grad and (autograd.is_grad_enabled() or self.requires_grad):  # (not if made under no_grad)
            self._ctx = autograd.Context(op, (source,), arg, self.shape, (source._version,))
            self.requires_grad = True

    def add_(self, other, alpha=1):
        return self._inplace(self.add(other, alpha=alpha))

    def sub_(self, other, alpha=1):
        return self._inplace(self.sub(other, alpha=alpha))

    def mul_(self, other):
        return self._inplace(self.mul(other))

    def div_(self, other):
        return self._inplace(self.div(other))

    def pow_(self, other):
        return self._inplace(self.pow(other))

    def clamp_(self, min=None, max=None):
        return self._inplace(self.clamp(min, max))

    def relu_(self):
        return self._inplace(self.relu())

    def neg_(self):
        return self._inplace(self.neg())

    def sqrt_(self):
        return self._inplace(self.sqrt())

    def exp_(self):
        return self._inplace(self.exp())

    def abs_(self):
        return self._inplace(self.abs())

    # as a function of the old value with gradient 0 (torch's): a plain constant would keep the old grad_fn
    def zero_(self):
        return self._inplace(self._zero_gradient(self.zeros_like()))

    def fill_(self, value):
        return self._inplace(self._zero_gradient(self.full_like(value)))

    def copy_(self, src):
        src = src if isinstance(src, Tensor) else Tensor(src)
        value = src.to(self.device).cast(self.dtype).broadcast_to(self.shape)
        if self.requires_grad:  # torch's CopyBackwards: the old value stays in the graph with a zero gradient
            value = Tensor.full(self.shape, True, dt.bool_, self.device)._select(value, self)
        return self._inplace(value)

    def uniform_(self, a=0.0, b=1.0):
        return self._inplace(Tensor.uniform(*self.shape, low=a, high=b, dtype=self.dtype, device=self.device))

    def normal_(self, mean=0.0, std=1.0):
        return self._inplace(Tensor.normal(*self.shape, mean=mean, std=std, dtype=self.dtype, device=self.device))

    def masked_fill_(self, mask, value):
        return self._inplace(self.masked_fill(mask, value))

    __iadd__ = add_
    __isub__ = sub_
    __imul__ = mul_
    __itruediv__ = div_

    # --- dims ---------------------------------------------------------------------------------------
    def _dim(self, d: int, ndim: int | None = None) -> int:
        n = self.ndim if ndim is None else ndim
        lo, hi = (-n, n - 1) if n > 0 else (-1, 0)
        if not lo <= d <= hi:
            raise IndexError(f"Dimension out of range (expected to be in range of [{lo}, {hi}], but got {d})")
        return d % n if n > 0 else 0

    def _axes(self, dim) -> tuple:
        if dim is None:
            return tuple(range(self.ndim))
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        axes = tuple(sorted({self._dim(d) for d in dims}))
        return axes if self.ndim else ()  # a 0-d tensor accepts dim 0 or -1, and has nothing to reduce


def _symbolic_view(t: Tensor) -> bool:
    """Whether t is a view made with a Variable (a symbolic offset or size somewhere along its chain of views, even
    where its own view does not show it: a slice of a broadcast constant has no offset)."""
    if t._lazydata.st.symbolic:
        return True
    while t._view_of is not None:
        t, op, arg = t._view_of
        if op == Op.SHRINK and any(isinstance(a, Node) or isinstance(b, Node) for a, b in arg):
            return True
        if op == Op.RESHAPE and any(isinstance(s, Node) for s in arg):
            return True
    return False


def _place_into(source: Tensor, value: Tensor, op, arg) -> Tensor:
    """source with `value` written where the view `source.<op>(arg)` sees it: the inverse of one movement op."""
    if op == Op.SHRINK:
        inverse = tuple((lo, size - hi) for (lo, hi), size in zip(arg, source.shape))
        region = Tensor.full(value.shape, True, dt.bool_, value.device)._movement(Op.PAD, inverse)
        return region._select(value._movement(Op.PAD, inverse), source)
    if op == Op.PAD:  # (a strided slice pads to a multiple of its step: the padding is no element of source)
        return value._movement(Op.SHRINK, tuple((lo, lo + size) for (lo, _), size in zip(arg, source.shape)))
    if op == Op.PERMUTE:
        return value._movement(Op.PERMUTE, tuple(sorted(range(len(arg)), key=lambda i: arg[i])))
    if op == Op.RESHAPE:
        return value._movement(Op.RESHAPE, source.shape)
    if op == Op.FLIP:
        return value._movement(Op.FLIP, arg)
    if op == Op.WINDOW and _windows_are_disjoint(*arg):
        region = Tensor.full(value.shape, True, dt.bool_, value.device)
        return _place_windows(region, source, arg)._select(_place_windows(value, source, arg), source)
    # expand, overlapping windows: several elements of the view are one element of source
    raise RuntimeError(
        "unsupported operation: more than one element of the written-to tensor refers to a single memory "
        f"location (an in-place update of a {op.value if isinstance(op, Op) else op} view of shape {value.shape} "
        f"of a tensor of shape {source.shape}); clone() the view first"
    )


def _windows_are_disjoint(kernel: tuple, stride: tuple, dilation: tuple) -> bool:
    return all(d == 1 and s >= k for k, s, d in zip(kernel, stride, dilation))


def _place_windows(windows: Tensor, source: Tensor, arg) -> Tensor:
    """Disjoint windows (..., o1..on, k1..kn) back at their places in source's shape (zero between and after):
    each window dim next to its position dim, padded from k to the stride, merged, then cut or padded to size."""
    kernel, stride, _ = arg
    n, lead = len(kernel), source.ndim - len(kernel)
    order = tuple(range(lead)) + tuple(i for j in range(n) for i in (lead + j, lead + n + j))
    x = windows._movement(Op.PERMUTE, order)
    x = x._movement(Op.PAD, ((0, 0),) * lead + tuple(p for k, s in zip(kernel, stride) for p in ((0, 0), (0, s - k))))
    counts = windows.shape[lead : lead + n]
    x = x._movement(Op.RESHAPE, source.shape[:lead] + tuple(o * s for o, s in zip(counts, stride)))
    spans = [(0, min(o * s, size)) for o, s, size in zip(counts, stride, source.shape[lead:])]
    x = x._movement(Op.SHRINK, tuple((0, size) for size in source.shape[:lead]) + tuple(spans))
    return x._movement(
        Op.PAD, ((0, 0),) * lead + tuple((0, size - hi) for (_, hi), size in zip(spans, source.shape[lead:]))
    )


def _to_numpy_nested(data, dtype) -> np.ndarray:
    def flatten(x):
        if isinstance(x, Tensor):
            return x.numpy()
        if isinstance(x, (list, tuple)):
            return [flatten(y) for y in x]
        return x

    arr = np.array(flatten(data))
    if arr.dtype == object:
        raise TypeError(f"cannot make a tensor from {type(data).__name__} with ragged or non-numeric content")
    if dtype is None and arr.dtype == np.int64 or arr.dtype == np.int32 and dtype is None:
        arr = arr.astype(np.int64)
    return arr


def realize(*tensors: Tensor) -> None:
    """Computes several tensors in one schedule (so their kernels can share work)."""
    const = Op.CONST  # read once: an Enum class attribute is slow to read in Python 3.11
    for t in tensors:
        if t._lazydata.base.op is const:
            # a constant is one shared node: the tensor gets memory of its own, which it may later overwrite; a
            # view's root gets it, and its views are views of that memory
            root = t
            while root._view_of is not None:
                root = root._view_of[0]
            if root._lazydata.base.op is const:
                before = root._lazydata.base
                root.lazydata = root._lazydata.contiguous()
                root._refresh_views(before)
            if t._lazydata.base.op is const:
                t.lazydata = t._lazydata.contiguous()
    runtime.realize([t.lazydata for t in tensors])


# the op groups build Tensors (constants, results); the class exists only now, built from them
tensor_ops.bind_tensor_class(Tensor)

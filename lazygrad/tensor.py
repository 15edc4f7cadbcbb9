"""Tensor: the user's API, with PyTorch's names and semantics.

Every method is composed of the primitives of lazygrad.graph through two doors: `_primitive`
(elementwise and reduce ops, recorded for autograd) and `_movement` (views). Nothing computes
until `numpy()`, `item()`, `tolist()` or `realize()`.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Sequence

import numpy as np

from lazygrad import autograd, random, runtime
from lazygrad import dtype as dt
from lazygrad.device import canonical_device
from lazygrad.dtype import DType
from lazygrad.graph import LazyBuffer
from lazygrad.shape import prod

MaxMin = namedtuple("MaxMin", ["values", "indices"])


def manual_seed(seed: int) -> None:
    random.manual_seed(seed)  # the device generator (lazygrad/random.py)


def _flatten_shape(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise RuntimeError(f"negative dimension in shape {shape}")
    return shape


def _broadcast_shape(*shapes) -> tuple:
    ndim = max(len(s) for s in shapes)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    out = []
    for d in range(ndim):
        sizes = {p[d] for p in padded if p[d] != 1}
        if len(sizes) > 1:
            a, b = sorted(sizes)[:2]
            raise RuntimeError(
                f"The size of tensor a ({padded[0][d]}) must match the size of tensor b ({padded[1][d]}) at "
                f"non-singleton dimension {d}: shapes {tuple(shapes[0])} and {tuple(shapes[1])} do not broadcast"
            )
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


class Tensor:
    __slots__ = ("_lazydata", "requires_grad", "grad", "_ctx", "_retains_grad", "__weakref__", "__dict__")

    @property
    def lazydata(self) -> LazyBuffer:
        return self._lazydata

    @lazydata.setter
    def lazydata(self, lb: LazyBuffer) -> None:
        # the base remembers the tensors that hold it: an assign must not leave them to be computed later
        # from overwritten memory (see schedule.Scheduler)
        self._lazydata = lb
        lb.base.holders.add(self)

    __array_priority__ = 1000  # numpy defers to our reflected operators
    # in-place updates under autograd: the count of them, and the tensor as it was before each (see _inplace)
    _version = 0
    _snapshots: dict | None = None
    _view_of: tuple | None = None  # (source tensor, movement op, arg) of a view made by _movement

    def __init__(self, data, dtype=None, device=None, requires_grad: bool = False):
        dtype = dt.to_dtype(dtype) if dtype is not None else None
        device_arg, device = device, canonical_device(device)
        if isinstance(data, LazyBuffer):
            lb = data if dtype is None or data.dtype == dtype else data.alu("cast", dtype=dtype, arg=dtype)
        elif isinstance(data, Tensor):
            lb = data.lazydata
            if dtype is not None and lb.dtype != dtype:
                lb = lb.alu("cast", dtype=dtype, arg=dtype)
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
                    data = data.astype(dtype.np)
                elif data.dtype == np.float64:
                    data = data.astype(np.float32)  # PyTorch's default float, as torch.tensor does
                # a copy (as torch.tensor): the upload is lazy, so later writes to `data` must not show through;
                # np.array also keeps 0-d arrays 0-d, where np.ascontiguousarray would make them 1-d
                data = np.array(data, copy=True, order="C")
                lb = LazyBuffer.from_host(data, device)
        self.lazydata = lb
        self.grad: Tensor | None = None
        self._ctx: autograd.Context | None = None
        self._retains_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # --- the two doors to the graph --------------------------------------------------------------
    def _primitive(self, op: str, *others: Tensor, arg=None, dtype: DType | None = None) -> Tensor:
        srcs = (self, *others)
        devices = {t.device for t in srcs}
        if len(devices) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found {sorted(devices)} ({op})")
        if op in ("sum", "rmax"):
            lb = self.lazydata.reduce(op, arg)
        else:
            lb = self.lazydata.alu(op, *(t.lazydata for t in others), arg=arg, dtype=dtype)
        return self._record(Tensor(lb), op, srcs, arg)

    def _movement(self, op: str, arg) -> Tensor:
        lb = getattr(self.lazydata, op)(arg)
        if lb is self.lazydata:
            return self
        out = self._record(Tensor(lb), op, (self,), arg)
        out._view_of = (self, op, arg)  # so that an in-place update of the view writes through (_inplace)
        return out

    @staticmethod
    def _record(out: Tensor, op: str, inputs: tuple, arg) -> Tensor:
        if autograd.is_grad_enabled() and any(t.requires_grad for t in inputs) and op in autograd.RULES:
            if op != "cast" or out.dtype.is_float:
                out.requires_grad = True
                out._ctx = autograd.Context(op, inputs, arg, out.shape, tuple(t._version for t in inputs))
        return out

    # --- properties --------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.lazydata.shape

    @property
    def dtype(self) -> DType:
        return self.lazydata.dtype

    @property
    def device(self) -> str:
        return self.lazydata.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

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

    @property
    def T(self) -> Tensor:
        return self.permute(*reversed(range(self.ndim)))

    @property
    def mT(self) -> Tensor:
        return self.transpose(-2, -1)

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

    # --- getting values ----------------------------------------------------------------------------
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

    # --- autograd surface -------------------------------------------------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and not (self.dtype.is_float):
            raise RuntimeError(f"only Tensors of floating point dtype can require gradients (got {self.dtype.name})")
        if not requires_grad and self._ctx is not None:
            raise RuntimeError("you can only change requires_grad flags of leaf variables")
        self.requires_grad = requires_grad
        return self

    def detach(self) -> Tensor:
        return Tensor(self.lazydata)

    def detach_(self) -> Tensor:
        self._ctx, self.requires_grad = None, False
        return self

    def retain_grad(self) -> None:
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        self._retains_grad = True

    def _as_of(self, version: int) -> Tensor:
        """This tensor as it was at `version` (itself, or the snapshot an in-place update left)."""
        return self if version == self._version else self._snapshots[version]

    def _accumulate_grad(self, g: Tensor):
        g = g if autograd.is_grad_enabled() else g.detach()
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

    # --- creation ----------------------------------------------------------------------------------
    @staticmethod
    def full(shape, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
        shape = _flatten_shape(shape if isinstance(shape, (tuple, list)) else (shape,))
        dtype = dt.to_dtype(dtype) if dtype is not None else dt.python_type_dtype(fill_value)
        t = Tensor(LazyBuffer.const(fill_value, shape, dtype, canonical_device(device)))
        return t.requires_grad_() if requires_grad else t

    @staticmethod
    def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.full(_flatten_shape(shape), 0.0, dtype or dt.default_float, device, requires_grad)

    @staticmethod
    def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.full(_flatten_shape(shape), 1.0, dtype or dt.default_float, device, requires_grad)

    @staticmethod
    def empty(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.zeros(*shape, dtype=dtype, device=device, requires_grad=requires_grad)

    # random numbers are kernels of the device generator (lazygrad/random.py)
    @staticmethod
    def rand(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
        return random.rand(*shape, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def randn(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
        return random.randn(*shape, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def randint(low, high=None, size=(), dtype=None, device=None) -> Tensor:
        low, high = (0, low) if high is None else (low, high)
        return random.randint(low, high, size if isinstance(size, (tuple, list)) else (size,), dtype, device)

    @staticmethod
    def uniform(*shape, low=0.0, high=1.0, dtype=None, device=None, requires_grad=False) -> Tensor:
        return random.uniform(*shape, low=low, high=high, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def normal(*shape, mean=0.0, std=1.0, dtype=None, device=None, requires_grad=False) -> Tensor:
        return random.normal(*shape, mean=mean, std=std, dtype=dtype, device=device, requires_grad=requires_grad)

    @staticmethod
    def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False) -> Tensor:
        if end is None:
            start, end = 0, start
        is_float = any(isinstance(v, float) for v in (start, end, step))
        dtype = dt.to_dtype(dtype) if dtype is not None else (dt.default_float if is_float else dt.int64)
        t = Tensor(np.arange(start, end, step).astype(dtype.np), device=device)
        return t.requires_grad_() if requires_grad else t

    @staticmethod
    def linspace(start, end, steps: int, dtype=None, device=None) -> Tensor:
        dtype = dt.to_dtype(dtype) if dtype is not None else dt.default_float
        return Tensor(np.linspace(start, end, steps).astype(dtype.np), device=device)

    @staticmethod
    def eye(n: int, m: int | None = None, dtype=None, device=None) -> Tensor:
        dtype = dt.to_dtype(dtype) if dtype is not None else dt.default_float
        return Tensor(np.eye(n, m if m is not None else n).astype(dtype.np), device=device)

    def full_like(self, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.full(self.shape, fill_value, dtype or self.dtype, device or self.device, requires_grad)

    def zeros_like(self, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self.full_like(0, dtype, device, requires_grad)

    def ones_like(self, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self.full_like(1, dtype, device, requires_grad)

    def empty_like(self, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self.zeros_like(dtype, device, requires_grad)

    def rand_like(self, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.rand(
            *self.shape, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad
        )

    def randn_like(self, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.randn(
            *self.shape, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad
        )

    # --- dtype and device --------------------------------------------------------------------------
    def cast(self, dtype) -> Tensor:
        dtype = dt.to_dtype(dtype)
        return self if dtype == self.dtype else self._primitive("cast", arg=dtype, dtype=dtype)

    def bitcast(self, dtype) -> Tensor:
        dtype = dt.to_dtype(dtype)
        if dtype.itemsize != self.dtype.itemsize:
            raise RuntimeError(f"bitcast needs dtypes of the same size: {self.dtype.name} -> {dtype.name}")
        return self if dtype == self.dtype else self._primitive("bitcast", arg=self.dtype, dtype=dtype)

    def to(self, *args, dtype=None, device=None) -> Tensor:
        for a in args:
            if isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif isinstance(a, DType) or (isinstance(a, str) and a.split(":")[0].lower() not in _DEVICE_NAMES):
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
                out = Tensor._record(Tensor(out.lazydata.copy_to(device)), "copy", (out,), None)
        return out

    def float(self) -> Tensor:
        return self.cast(dt.float32)

    def half(self) -> Tensor:
        return self.cast(dt.float16)

    def double(self) -> Tensor:
        return self.cast(dt.float64)

    def int(self) -> Tensor:
        return self.cast(dt.int32)

    def long(self) -> Tensor:
        return self.cast(dt.int64)

    def bool(self) -> Tensor:
        return self.cast(dt.bool_)

    def byte(self) -> Tensor:
        return self.cast(dt.uint8)

    def type(self, dtype) -> Tensor:
        return self.cast(dtype)

    def contiguous(self) -> Tensor:
        lb = self.lazydata.contiguous()
        return self if lb is self.lazydata else self._record(Tensor(lb), "contiguous", (self,), None)

    def clone(self) -> Tensor:
        return self.contiguous() if self.lazydata.is_view else self * 1 if self.dtype != dt.bool_ else self | False

    # --- broadcasting and operands ------------------------------------------------------------
    def _operand(self, other, reverse=False) -> tuple:
        """Both operands as tensors of one dtype and one shape (PyTorch promotion and broadcasting)."""
        if isinstance(other, Tensor):
            d = _result_dtype(self, other)
            x, y = self.cast(d), other.cast(d)
        else:
            if isinstance(other, np.ndarray):
                return self._operand(Tensor(other, device=self.device), reverse)
            if not isinstance(other, (bool, int, float)):
                raise TypeError(f"unsupported operand type {type(other).__name__} for a Tensor op")
            d = dt.scalar_dtype(other, self.dtype)
            x, y = self.cast(d), Tensor.full((), other, d, self.device)
        if x.shape != y.shape:
            shape = _broadcast_shape(x.shape, y.shape)
            x, y = x.broadcast_to(shape), y.broadcast_to(shape)
        return (y, x) if reverse else (x, y)

    def broadcast_to(self, shape) -> Tensor:
        shape = tuple(shape)
        if self.shape == shape:
            return self
        if len(shape) < self.ndim:
            raise RuntimeError(f"cannot broadcast shape {self.shape} to {shape}: fewer dimensions")
        x = self.reshape((1,) * (len(shape) - self.ndim) + self.shape) if len(shape) != self.ndim else self
        for s, n in zip(x.shape, shape):
            if s != n and s != 1:
                raise RuntimeError(
                    f"The expanded size of the tensor ({n}) must match the existing size ({s}) at a "
                    f"non-singleton dimension: cannot broadcast {self.shape} to {shape}"
                )
        return x._movement("expand", shape)

    # --- elementwise ----------------------------------------------------------------------------
    def add(self, other, alpha=1) -> Tensor:
        if alpha != 1:
            other = other * alpha
        x, y = self._operand(other)
        if x.dtype == dt.bool_:
            return x | y
        return x._primitive("add", y)

    def sub(self, other, alpha=1) -> Tensor:
        if self.dtype == dt.bool_ and (
            isinstance(other, bool) or (isinstance(other, Tensor) and other.dtype == dt.bool_)
        ):
            raise RuntimeError("Subtraction, the `-` operator, with two bool tensors is not supported")
        x, y = self._operand(other)
        return x.add(-y if alpha == 1 else -(y * alpha))

    def mul(self, other) -> Tensor:
        x, y = self._operand(other)
        if x.dtype == dt.bool_:
            return x & y
        return x._primitive("mul", y)

    def div(self, other, rounding_mode: str | None = None) -> Tensor:
        x, y = self._operand(other)
        if rounding_mode == "floor":
            return x.floor_divide(y)
        if rounding_mode == "trunc":
            return x._primitive("idiv", y) if x.dtype.is_int else (x / y).trunc()
        if not x.dtype.is_float:
            x, y = x.cast(dt.default_float), y.cast(dt.default_float)
        return x._primitive("mul", y._primitive("recip"))

    def floor_divide(self, other) -> Tensor:
        x, y = self._operand(other)
        if x.dtype.is_float:
            return (x / y).floor()
        q = x._primitive("idiv", y)
        # C division truncates; Python/PyTorch floor when the signs differ and it is inexact
        inexact = x._primitive("mod", y)._primitive("cmpne", y.zeros_like())
        signs_differ = (x < 0) ^ (y < 0)
        return q - (inexact & signs_differ).cast(q.dtype)

    def remainder(self, other) -> Tensor:
        x, y = self._operand(other)
        if x.dtype.is_float:
            return x - (x / y).floor() * y
        r = x._primitive("mod", y)
        fix = r._primitive("cmpne", r.zeros_like()) & ((r < 0) ^ (y < 0))
        return r + fix.cast(r.dtype) * y

    def fmod(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive("mod", y) if x.dtype.is_int else x - (x / y).trunc() * y

    def pow(self, exponent) -> Tensor:
        if not isinstance(exponent, Tensor):
            if exponent == 2:
                return self * self
            if exponent == 1:
                return self * 1
            if exponent == 0.5:
                return self.sqrt()
            if exponent == -1:
                return self.reciprocal()
            if exponent == 0:
                return self._zero_gradient(self.ones_like(dtype=dt.scalar_dtype(exponent, self.dtype)))
            if isinstance(exponent, int) and 0 < exponent <= 8:
                out = self
                for _ in range(exponent - 1):
                    out = out * self
                return out
            if isinstance(exponent, int) and exponent > 0 and not self.dtype.is_float:
                # square and multiply: exact, and wrapping around on overflow as PyTorch's integer pow
                out, square = None, self
                while exponent:
                    if exponent & 1:
                        out = square if out is None else out * square
                    exponent >>= 1
                    square = square * square if exponent else square
                return out
        x, y = self._operand(exponent)
        if not x.dtype.is_float:
            out_dtype = x.dtype
            x, y = x.cast(dt.default_float), y.cast(dt.default_float)
            r = x.pow(y)
            return (r + (r < 0).where(-0.5, 0.5)).cast(out_dtype)  # round half away from zero, then cast
        # |x|**y, then the sign for negative bases with odd integer exponents; NaN for non-integers
        y_int = y == y.trunc()
        y_odd = y_int & ((y / 2).trunc() * 2 != y)
        zero = x == 0
        # log2(0) = -inf would make the gradient 0 * inf = NaN: take the logarithm of a safe base and give
        # x == 0 its value (0, or inf for negative y) through a where, which carries no gradient but for y == 1
        safe = zero.where(x.ones_like(), x)
        magnitude = (y * safe.abs().log2()).exp2()
        nan = Tensor.full((), float("nan"), x.dtype, x.device)  # a constant: no NaN flows into the gradient
        fractional = (safe == float("-inf")).where(magnitude, nan)  # (-inf)**2.5 is inf, (-8)**(1/3) is NaN
        signed = (safe < 0).where(y_odd.where(-magnitude, y_int.where(magnitude, fractional)), magnitude)
        inf = Tensor.full((), float("inf"), x.dtype, x.device)
        negative_zero = x.detach().reciprocal() < 0
        at_zero = (y > 0).where(x.zeros_like().detach(), (y_odd & negative_zero).where(-inf, inf))
        signed = zero.where((y == 1).where(x, at_zero), signed)
        # x**0 is 1 for every x; only where the formula fails (0, inf, NaN), so the gradient of y stays log(x)
        formula_fails = zero | (x != x) | (x.abs() == float("inf"))
        return ((y == 0) & formula_fails).where(x.ones_like(), signed)

    def neg(self) -> Tensor:
        if self.dtype == dt.bool_:
            raise RuntimeError("Negation, the `-` operator, on a bool tensor is not supported; use ~ or logical_not")
        return self._primitive("neg")

    def reciprocal(self) -> Tensor:
        x = self if self.dtype.is_float else self.cast(dt.default_float)
        return x._primitive("recip")

    def exp2(self) -> Tensor:
        return self._float()._primitive("exp2")

    def log2(self) -> Tensor:
        return self._float()._primitive("log2")

    def exp(self) -> Tensor:
        return (self._float() * (1 / math.log(2))).exp2()

    def log(self) -> Tensor:
        return self.log2() * math.log(2)

    def log10(self) -> Tensor:
        return self.log2() * math.log10(2)

    def log1p(self) -> Tensor:
        return (self + 1).log()

    def expm1(self) -> Tensor:
        return self.exp() - 1

    def sqrt(self) -> Tensor:
        return self._float()._primitive("sqrt")

    def rsqrt(self) -> Tensor:
        return self.sqrt().reciprocal()

    def square(self) -> Tensor:
        return self * self

    def sin(self) -> Tensor:
        return self._float()._primitive("sin")

    def cos(self) -> Tensor:
        return (math.pi / 2 - self._float()).sin()

    def tan(self) -> Tensor:
        return self.sin() / self.cos()

    def _float(self) -> Tensor:
        return self if self.dtype.is_float else self.cast(dt.default_float)

    def _exp_of_minus_abs(self) -> tuple:
        """(x >= 0, exp(-|x|)): an exponential that cannot overflow, so no branch of a where built on it
        holds an inf whose gradient turns into NaN. -|x| is taken by a where, not abs(), so that its
        gradient at 0 is -1 (abs() splits the kink into 0)."""
        x = self._float()
        positive = x >= 0
        return positive, positive.where(-x, x).exp()

    def sigmoid(self) -> Tensor:
        # 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: stable, in value and in gradient, for any x
        positive, e = self._exp_of_minus_abs()
        return positive.where(1.0, e) / (1 + e)

    def tanh(self) -> Tensor:
        return 2 * (2 * self._float()).sigmoid() - 1

    def relu(self) -> Tensor:
        # where(x <= 0, 0, x) keeps NaN and gives gradient 0 at 0, as PyTorch does
        return self.le(0).where(self.zeros_like(), self)

    def relu6(self) -> Tensor:
        return self.clamp(0, 6)

    def leaky_relu(self, negative_slope: float = 0.01) -> Tensor:
        return (self > 0).where(self, self * negative_slope)

    def elu(self, alpha: float = 1.0) -> Tensor:
        return (self > 0).where(self, alpha * self.expm1())

    def erf(self) -> Tensor:
        # Abramowitz & Stegun 7.1.26 refined: |error| < 1.5e-7
        x = self._float()
        t = 1 / (1 + 0.3275911 * x.abs())
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        return x.sign() * (1 - poly * (-x * x).exp())

    def gelu(self, approximate: str = "none") -> Tensor:
        if approximate == "tanh":
            return 0.5 * self * (1 + (math.sqrt(2 / math.pi) * (self + 0.044715 * self * self * self)).tanh())
        return 0.5 * self * (1 + (self * (1 / math.sqrt(2))).erf())

    def silu(self) -> Tensor:
        return self * self.sigmoid()

    def softplus(self, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
        scaled = self._float() * beta
        # log(1 + e^s) = max(s, 0) + log(1 + e^-|s|): no overflow in any branch
        positive, e = scaled._exp_of_minus_abs()
        stable = (positive.where(scaled, 0.0) + (1 + e).log()) / beta
        return (scaled > threshold).where(self, stable)

    def mish(self) -> Tensor:
        return self * self.softplus().tanh()

    def hardtanh(self, min_val=-1.0, max_val=1.0) -> Tensor:
        return self.clamp(min_val, max_val)

    def abs(self) -> Tensor:
        if self.dtype == dt.bool_:
            return self
        return self._primitive("max", self._primitive("neg"))

    def sign(self) -> Tensor:
        if self.dtype == dt.bool_:
            return self
        # NaN has sign 0, as in PyTorch (neither comparison holds)
        return self._zero_gradient((self > 0).cast(self.dtype) - (self < 0).cast(self.dtype))

    def trunc(self) -> Tensor:
        if not self.dtype.is_float:
            return self
        # values of at least 2**52 are integers already (and would overflow int64 on the way)
        big = self.abs() >= 2.0**52  # also inf; NaN fails every comparison and goes through the cast
        as_int = self.cast(dt.int64).cast(self.dtype)
        nan_or_big = big | (self != self)
        return self._zero_gradient(nan_or_big.where(self, as_int))

    def _zero_gradient(self, value: Tensor) -> Tensor:
        """`value`, as a function of self whose gradient is zero (as PyTorch's for sign, floor, round...).

        A where that always picks the detached value: its gradient to self is exactly 0, and unlike
        `value + 0 * self` it cannot turn an inf in self into NaN."""
        if not self.requires_grad:
            return value
        always = Tensor.full(self.shape, True, dt.bool_, self.device)
        return always._primitive("where", value.detach(), self)

    def floor(self) -> Tensor:
        t = self.trunc()
        return t - (t > self).cast(self.dtype) if self.dtype.is_float else self

    def ceil(self) -> Tensor:
        t = self.trunc()
        return t + (t < self).cast(self.dtype) if self.dtype.is_float else self

    def round(self, decimals: int = 0) -> Tensor:
        if not self.dtype.is_float:
            return self
        if decimals:
            scale = 10.0**decimals
            return (self * scale).round() / scale
        r = (self + 0.5).floor()
        # halfway cases round to even
        tie = (r - self) == 0.5
        odd = (r / 2).floor() * 2 != r
        return (tie & odd).where(r - 1, r)

    def frac(self) -> Tensor:
        return self - self.trunc()

    def clamp(self, min=None, max=None) -> Tensor:
        if min is None and max is None:
            raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
        out = self
        if min is not None:
            lo = min if isinstance(min, Tensor) else Tensor.full((), min, dt.scalar_dtype(min, self.dtype), self.device)
            out = (out < lo).where(lo.cast(dt.promote(out.dtype, lo.dtype)), out)
        if max is not None:
            hi = max if isinstance(max, Tensor) else Tensor.full((), max, dt.scalar_dtype(max, self.dtype), self.device)
            out = (out > hi).where(hi.cast(dt.promote(out.dtype, hi.dtype)), out)
        return out

    clip = clamp

    def maximum(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive("max", y)

    def minimum(self, other) -> Tensor:
        x, y = self._operand(other)
        if x.dtype == dt.bool_:
            return x & y
        return x._reverse_order()._primitive("max", y._reverse_order())._reverse_order()

    def _reverse_order(self) -> Tensor:
        """An order-reversing bijection (for min from max): -x for floats, ~x for integers."""
        if self.dtype.is_float:
            return -self
        if self.dtype == dt.bool_:
            return self.logical_not()
        return self ^ -1 if self.dtype.kind == "i" else self ^ ((1 << (8 * self.dtype.itemsize)) - 1)

    def where(self, x, y) -> Tensor:
        """torch.where(self, x, y): x where self is true."""
        cond = self if self.dtype == dt.bool_ else self.bool()
        if not isinstance(x, Tensor) and not isinstance(y, Tensor):
            d = (
                dt.python_type_dtype(x)
                if type(x) is type(y)
                else dt.promote(dt.python_type_dtype(x), dt.python_type_dtype(y))
            )
            x = Tensor.full((), x, d, self.device)
        if isinstance(x, Tensor):
            x, y = x._operand(y)
        else:
            y, x = y._operand(x)
        shape = _broadcast_shape(cond.shape, x.shape)
        cond, x, y = cond.broadcast_to(shape), x.broadcast_to(shape), y.broadcast_to(shape)
        return cond._primitive("where", x, y)

    def masked_fill(self, mask: Tensor, value) -> Tensor:
        return mask.where(
            Tensor.full((), value, dt.scalar_dtype(value, self.dtype), self.device).cast(self.dtype), self
        )

    def lerp(self, end, weight) -> Tensor:
        return self + (end - self) * weight

    # comparisons (NaN-correct: every comparison with NaN is false except !=)
    def eq(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive("cmpne", y).logical_not()

    def ne(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive("cmpne", y)

    def lt(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive("cmplt", y)

    def gt(self, other) -> Tensor:
        x, y = self._operand(other)
        return y._primitive("cmplt", x)

    def le(self, other) -> Tensor:
        return self.lt(other) | self.eq(other)

    def ge(self, other) -> Tensor:
        return self.gt(other) | self.eq(other)

    def isnan(self) -> Tensor:
        return self != self

    def isinf(self) -> Tensor:
        return self.abs() == float("inf") if self.dtype.is_float else self.zeros_like(dtype=dt.bool_)

    def isfinite(self) -> Tensor:
        return (self == self) & ~self.isinf()

    def allclose(self, other, rtol=1e-5, atol=1e-8) -> bool:
        return bool(((self - other).abs() <= atol + rtol * other.abs()).all().item())

    # logical and bitwise
    def _bitwise(self, op: str, other) -> Tensor:
        x, y = self._operand(other)
        if x.dtype.is_float:
            # NotImplementedError, as PyTorch's; it is a RuntimeError too
            raise NotImplementedError(f"bitwise {op} is only for integer and bool tensors, got {x.dtype.name}")
        return x._primitive(op, y)

    def bitwise_and(self, other) -> Tensor:
        return self._bitwise("and", other)

    def bitwise_or(self, other) -> Tensor:
        return self._bitwise("or", other)

    def bitwise_xor(self, other) -> Tensor:
        return self._bitwise("xor", other)

    def bitwise_not(self) -> Tensor:
        if self.dtype.is_float:
            raise TypeError(f"~ (bitwise_not) is only for integer and bool tensors, got {self.dtype.name}")
        return self ^ (True if self.dtype == dt.bool_ else -1)

    def bitwise_left_shift(self, other) -> Tensor:
        return self._bitwise("shl", other)

    def bitwise_right_shift(self, other) -> Tensor:
        return self._bitwise("shr", other)

    def logical_not(self) -> Tensor:
        return self.bool()._primitive("xor", Tensor.full(self.shape, True, dt.bool_, self.device))

    def logical_and(self, other) -> Tensor:
        return self.bool() & (other.bool() if isinstance(other, Tensor) else bool(other))

    def logical_or(self, other) -> Tensor:
        return self.bool() | (other.bool() if isinstance(other, Tensor) else bool(other))

    def logical_xor(self, other) -> Tensor:
        return self.bool() ^ (other.bool() if isinstance(other, Tensor) else bool(other))

    # operators
    __add__ = add
    __sub__ = sub
    __mul__ = mul
    __truediv__ = div
    __floordiv__ = floor_divide
    __mod__ = remainder
    __pow__ = pow
    __matmul__ = lambda self, other: self.matmul(other)  # noqa: E731
    __neg__ = neg
    __abs__ = abs
    __invert__ = bitwise_not
    __and__ = bitwise_and
    __or__ = bitwise_or
    __xor__ = bitwise_xor
    __lshift__ = bitwise_left_shift
    __rshift__ = bitwise_right_shift
    __lt__ = lt
    __gt__ = gt
    __le__ = le
    __ge__ = ge
    __eq__ = eq  # type: ignore[assignment]
    __ne__ = ne  # type: ignore[assignment]

    def __radd__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.add(y)

    def __rsub__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.sub(y)

    def __rmul__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.mul(y)

    def __rtruediv__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.div(y)

    def __rfloordiv__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.floor_divide(y)

    def __rmod__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.remainder(y)

    def __rpow__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.pow(y)

    def __rand__(self, other):
        return self.bitwise_and(other)

    def __ror__(self, other):
        return self.bitwise_or(other)

    def __rxor__(self, other):
        return self.bitwise_xor(other)

    def __rmatmul__(self, other):
        return Tensor(other, device=self.device).matmul(self)

    # in-place forms: compute out of place, then assign
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
        target = self.lazydata
        if target.realized and not target.is_view and target.op == "buffer":
            self.lazydata = target.assign(value.lazydata.contiguous())
        else:
            # no memory of its own yet (lazy, a constant, or a view of another tensor's): it gets a buffer of its
            # own, which later assigns overwrite in place, so the buffer stays the same from step to step
            self.lazydata = value.lazydata.own_copy()
        return self

    def _inplace(self, result: Tensor, through_view: bool = False) -> Tensor:
        if self.requires_grad and self.is_leaf and autograd.is_grad_enabled():
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        if result.shape != self.shape:
            raise RuntimeError(f"output with shape {self.shape} doesn't match the broadcast shape {result.shape}")
        result = result.cast(self.dtype)
        if self._view_of is not None:
            return self._write_through(result)
        if autograd.is_grad_enabled() and result.requires_grad:
            # Graphs recorded so far (the result's own among them) hold this object as an input, meaning its
            # value before the update: keep that value as a snapshot they find by version (Tensor._as_of).
            before = Tensor.__new__(Tensor)
            before.lazydata, before.grad, before._ctx = self.lazydata, None, self._ctx
            before.requires_grad, before._retains_grad = self.requires_grad, False
            self._snapshots = {**(self._snapshots or {}), self._version: before}
            self._version += 1
            self.lazydata, self._ctx, self.requires_grad = result.lazydata, result._ctx, True
            return self
        if through_view:
            # the update reads this tensor through a view while writing it: into a new buffer, not this one
            self.lazydata = result.lazydata
            return self
        return self.assign(result)

    def _write_through(self, result: Tensor) -> Tensor:
        """An in-place update of a view updates the tensor it views (and so on up), as in PyTorch."""
        source, op, arg = self._view_of
        if op == "expand":
            raise RuntimeError(
                "unsupported operation: more than one element of the written-to tensor refers to a "
                f"single memory location (an in-place update of an expanded view of {source.shape})"
            )
        if op == "shrink":
            inverse = tuple((lo, size - hi) for (lo, hi), size in zip(arg, source.shape))
            region = Tensor.full(self.shape, True, dt.bool_, self.device)._movement("pad", inverse)
            updated = region.where(result._movement("pad", inverse), source)
        elif op == "pad":
            updated = result._movement("shrink", tuple((lo, lo + size) for (lo, _), size in zip(arg, source.shape)))
        elif op == "permute":
            updated = result._movement("permute", tuple(sorted(range(len(arg)), key=lambda i: arg[i])))
        elif op == "reshape":
            updated = result._movement("reshape", source.shape)
        else:  # flip
            updated = result._movement(op, arg)
        source._inplace(updated, through_view=True)
        if autograd.is_grad_enabled() and result.requires_grad:
            self._view_of = None  # from now on an intermediate of the graph, like any in-place result
            return self._inplace(result)
        self.lazydata = getattr(source.lazydata, op)(arg)  # a view of the updated source again
        return self

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

    def zero_(self):
        return self._inplace(self.zeros_like())

    def fill_(self, value):
        return self._inplace(self.full_like(value))

    def copy_(self, src):
        src = src if isinstance(src, Tensor) else Tensor(src)
        return self._inplace(src.to(self.device).cast(self.dtype).broadcast_to(self.shape))

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

    # --- reductions -----------------------------------------------------------------------------
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
        return tuple(sorted({self._dim(d) for d in dims}))

    def _reduce(self, op: str, dim, keepdim: bool) -> Tensor:
        axes = self._axes(dim) if self.ndim else ()
        for a in axes:
            if self.shape[a] == 0 and op == "rmax":
                raise IndexError(f"max(): Expected reduction dim {a} to have non-zero size (shape {self.shape})")
        x = self
        if op == "sum" and any(self.shape[a] == 0 for a in axes):
            # a sum over nothing is 0: pad each empty axis with one zero, so no kernel reduces an empty range
            x = x._movement("pad", tuple((0, 1 if i in axes and s == 0 else 0) for i, s in enumerate(x.shape)))
        if len(axes) == x.ndim and x.numel() >= _SPLIT_REDUCE:
            out = x._split_reduce(op).reshape((1,) * x.ndim)
        else:
            out = x._primitive(op, arg=axes) if any(x.shape[a] != 1 for a in axes) else x
        if keepdim or not self.shape:
            return out
        return out.reshape(tuple(s for i, s in enumerate(self.shape) if i not in axes))

    def _split_reduce(self, op: str) -> Tensor:
        """A big reduction to one value in two: 1024 partial results, then their reduction; the input is
        padded with the reduction's identity to a multiple of 1024. On a GPU one work-item would do all the
        work; and a float sum of a million values in one running total loses ~1e-5 of its value (in 1024
        partial sums, ~1e-7)."""
        flat = self.reshape(-1)
        parts = _SPLIT_PARTS
        length = -(-flat.shape[0] // parts)
        if length * parts != flat.shape[0]:
            identity = 0
            if op == "rmax":
                identity = float("-inf") if self.dtype.is_float else int(np.iinfo(self.dtype.np).min)
            flat = flat.pad((0, length * parts - flat.shape[0]), value=identity)
        return flat.reshape(parts, length)._primitive(op, arg=(1,))._primitive(op, arg=(0,))

    def sum(self, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
        x = self
        if dtype is not None:
            x = x.cast(dtype)
        elif not x.dtype.is_float:
            x = x.cast(dt.int64)
        return x._reduce("sum", dim, keepdim)

    def mean(self, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
        if dtype is not None:
            return self.cast(dtype).mean(dim, keepdim)
        if not self.dtype.is_float:
            raise RuntimeError(
                f"mean(): could not infer output dtype. Input dtype must be floating point, got {self.dtype.name}"
            )
        count = prod(self.shape[a] for a in self._axes(dim))
        return self.sum(dim, keepdim) * (1 / count if count else float("nan"))

    def _max_reduce(self, dim, keepdim) -> Tensor:
        if self.dtype == dt.bool_:
            return self.cast(dt.uint8)._reduce("rmax", dim, keepdim).cast(dt.bool_)
        return self._reduce("rmax", dim, keepdim)

    def amax(self, dim=None, keepdim: bool = False) -> Tensor:
        return self._max_reduce(() if dim == () else dim, keepdim)

    def amin(self, dim=None, keepdim: bool = False) -> Tensor:
        return self._reverse_order().amax(dim, keepdim)._reverse_order()

    def max(self, dim=None, keepdim: bool = False):
        if isinstance(dim, Tensor):
            return self.maximum(dim)
        if dim is None:
            return self._max_reduce(None, False)
        indices = self.argmax(dim, keepdim)
        return MaxMin(self._value_at(indices, dim, keepdim, self._max_reduce(dim, keepdim)), indices)

    def _value_at(self, indices: Tensor, dim: int, keepdim: bool, values: Tensor) -> Tensor:
        """`values` (the max or min along dim) such that the gradient goes to the element at `indices` only,
        as PyTorch's max(dim) and min(dim) do (amax and amin share it among ties instead)."""
        if not (self.requires_grad and autograd.is_grad_enabled()):
            return values
        d = self._dim(dim)
        n = self.shape[d]
        idx = indices if keepdim else indices.unsqueeze(d)
        positions = Tensor.arange(n, device=self.device).reshape([n if i == d else 1 for i in range(self.ndim)])
        return (idx == positions).where(self, 0.0).sum(d, keepdim)

    def min(self, dim=None, keepdim: bool = False):
        if isinstance(dim, Tensor):
            return self.minimum(dim)
        if dim is None:
            return self.amin()
        indices = self.argmin(dim, keepdim)
        return MaxMin(self._value_at(indices, dim, keepdim, self.amin(dim, keepdim)), indices)

    def argmax(self, dim=None, keepdim: bool = False) -> Tensor:
        if dim is None:
            return self.reshape(-1).argmax(0)
        d = self._dim(dim)
        n = self.shape[d]
        hit = self == self.amax(d, keepdim=True)
        if self.dtype.is_float:
            hit = hit | (self != self)  # NaN is the maximum, as in PyTorch
        # the first index that holds the maximum: largest of (n - index) over hits
        countdown = Tensor.arange(n, 0, -1, dtype=dt.int64, device=self.device).reshape(
            [n if i == d else 1 for i in range(self.ndim)]
        )
        return (n - (hit.cast(dt.int64) * countdown).amax(d, keepdim)).cast(dt.int64)

    def argmin(self, dim=None, keepdim: bool = False) -> Tensor:
        return self._reverse_order().argmax(dim, keepdim)

    def prod(self, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
        x = self.cast(dtype) if dtype is not None else (self if self.dtype.is_float else self.cast(dt.int64))
        if dim is None:
            out = x.reshape(-1).prod(0)
            return out.reshape((1,) * self.ndim) if keepdim else out
        d = x._dim(dim)
        # a tree of multiplications: exact for integers, differentiable for floats
        x = x.transpose(d, -1) if x.ndim else x.reshape(1)
        while x.shape[-1] > 1:
            n = x.shape[-1]
            if n % 2:
                x = x.pad((0, 1), value=1)
            x = x.reshape(*x.shape[:-1], (n + 1) // 2, 2)
            x = x[..., 0] * x[..., 1]
        if x.shape[-1] == 0:
            x = x.pad((0, 1), value=1)
        x = x.transpose(d, -1) if self.ndim else x.reshape(())
        return x if keepdim or not self.ndim else x.squeeze(d)

    def var(self, dim=None, keepdim: bool = False, correction=None, unbiased=None) -> Tensor:
        if correction is None:
            correction = 1 if unbiased is None or unbiased else 0
        n = prod(self.shape[a] for a in self._axes(dim))
        centered = self - self.mean(dim, keepdim=True)
        return (centered * centered).sum(dim, keepdim) / max(n - correction, 0)

    def std(self, dim=None, keepdim: bool = False, correction=None, unbiased=None) -> Tensor:
        return self.var(dim, keepdim, correction, unbiased).sqrt()

    def var_mean(self, dim=None, keepdim=False, correction=None, unbiased=None):
        return self.var(dim, keepdim, correction, unbiased), self.mean(dim, keepdim)

    def any(self, dim=None, keepdim: bool = False) -> Tensor:
        if self.ndim and any(self.shape[a] == 0 for a in self._axes(dim)):
            # nothing is true in an empty range (rmax would refuse it)
            return self.bool().sum(dim, keepdim) != 0
        return self.bool()._max_reduce(dim, keepdim)

    def all(self, dim=None, keepdim: bool = False) -> Tensor:
        return self.bool().logical_not().any(dim, keepdim).logical_not()

    def logsumexp(self, dim=None, keepdim: bool = False) -> Tensor:
        m = self.amax(dim, keepdim=True).detach()
        m = (m.abs() == float("inf")).where(m.zeros_like(), m)  # all -inf rows stay -inf, without NaN
        out = (self - m).exp().sum(dim, keepdim=True).log() + m
        return out if keepdim else out.squeeze(self._axes(dim)) if self.ndim else out

    def softmax(self, dim: int = -1, dtype=None) -> Tensor:
        x = self.cast(dtype) if dtype is not None else self._float()
        e = (x - x.amax(dim, keepdim=True).detach()).exp()
        return e / e.sum(dim, keepdim=True)

    def log_softmax(self, dim: int = -1, dtype=None) -> Tensor:
        x = self.cast(dtype) if dtype is not None else self._float()
        shifted = x - x.amax(dim, keepdim=True).detach()
        return shifted - shifted.exp().sum(dim, keepdim=True).log()

    def cumsum(self, dim: int = 0) -> Tensor:
        d = self._dim(dim)
        n = self.shape[d]
        x = self.transpose(d, -1)
        # row i sums the first i+1 elements: a padded sliding window, reduced
        padded = x.pad((n - 1, 0))
        windows = padded.unsqueeze(-2).expand(*x.shape[:-1], n, 2 * n - 1)
        windows = windows.reshape(*x.shape[:-1], n * (2 * n - 1)).pad((0, n))
        windows = windows.reshape(*x.shape[:-1], n, 2 * n)[..., n:]
        return windows.sum(-1).transpose(d, -1)

    # --- movement -------------------------------------------------------------------------------
    def reshape(self, *shape) -> Tensor:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        shape = [int(s) for s in shape]
        if shape.count(-1) > 1:
            raise RuntimeError("only one dimension can be inferred")
        if -1 in shape:
            known = prod(s for s in shape if s != -1)
            if known == 0 or self.numel() % known:
                raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {self.numel()}")
            shape[shape.index(-1)] = self.numel() // known
        if prod(shape) != self.numel() or any(s < 0 for s in shape):
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {self.numel()}")
        out = self._movement("reshape", tuple(shape))
        if out is not self and len(out.lazydata.st.views) > len(self.lazydata.st.views):
            out._view_of = None  # not expressible with strides: PyTorch copies, so an update does not write back
        return out

    def view(self, *shape) -> Tensor:
        if (
            len(shape) == 1
            and isinstance(shape[0], (DType, str))
            or (len(shape) == 1 and not isinstance(shape[0], (int, tuple, list)))
        ):
            return self.bitcast(shape[0])
        return self.reshape(*shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        if self.ndim == 0:
            return self.reshape(1)
        s, e = self._dim(start_dim), self._dim(end_dim)
        return self.reshape(self.shape[:s] + (prod(self.shape[s : e + 1]),) + self.shape[e + 1 :])

    def unflatten(self, dim: int, sizes) -> Tensor:
        d = self._dim(dim)
        return self.reshape(self.shape[:d] + tuple(sizes) + self.shape[d + 1 :])

    def squeeze(self, dim=None) -> Tensor:
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        axes = self._axes(dim) if self.ndim else ()
        return self.reshape(tuple(s for i, s in enumerate(self.shape) if not (i in axes and s == 1)))

    def unsqueeze(self, dim: int) -> Tensor:
        d = self._dim(dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def permute(self, *dims) -> Tensor:
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        order = tuple(self._dim(d) for d in dims)
        if sorted(order) != list(range(self.ndim)):
            raise RuntimeError(
                f"permute(sparse_coo): number of dimensions in the tensor input does not match the "
                f"length of the desired ordering of dimensions: dims {tuple(dims)} for shape {self.shape}"
            )
        return self._movement("permute", order)

    def transpose(self, dim0: int, dim1: int) -> Tensor:
        if self.ndim < 2 and dim0 in (0, -1) and dim1 in (0, -1):
            return self
        order = list(range(self.ndim))
        a, b = self._dim(dim0), self._dim(dim1)
        order[a], order[b] = order[b], order[a]
        return self.permute(order)

    def t(self) -> Tensor:
        if self.ndim > 2:
            raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is {self.ndim}D")
        return self.transpose(0, 1) if self.ndim == 2 else self

    swapaxes = transpose

    def expand(self, *sizes) -> Tensor:
        sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
        if len(sizes) < self.ndim:
            raise RuntimeError(
                f"expand: the number of sizes provided ({len(sizes)}) must be greater or equal to the "
                f"number of dimensions in the tensor ({self.ndim})"
            )
        lead = len(sizes) - self.ndim
        shape = tuple(s if s != -1 else self.shape[i - lead] for i, s in enumerate(sizes))
        return self.broadcast_to(shape)

    def expand_as(self, other: Tensor) -> Tensor:
        return self.expand(other.shape)

    def flip(self, *dims) -> Tensor:
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return _not_a_view(self, self._movement("flip", tuple(self._dim(d) for d in dims)))  # torch.flip copies

    def shrink(self, arg) -> Tensor:
        return self._movement("shrink", tuple(arg))

    def pad(self, pad, mode: str = "constant", value=0.0) -> Tensor:
        """torch.nn.functional.pad: pairs (left, right) from the last dim backwards; negative pads crop."""
        if mode != "constant":
            raise NotImplementedError(f"pad mode {mode!r}: only 'constant' is supported")
        if len(pad) % 2 or len(pad) // 2 > self.ndim:
            raise RuntimeError(
                f"Padding length must be divisible by 2 and at most 2*ndim, got {len(pad)} for shape {self.shape}"
            )
        pairs = [(0, 0)] * (self.ndim - len(pad) // 2) + [(pad[i], pad[i + 1]) for i in range(len(pad) - 2, -1, -2)]
        x = self
        crop = [(max(0, -a), s - max(0, -b)) for (a, b), s in zip(pairs, self.shape)]
        x = x.shrink(crop) if any(c != (0, s) for c, s in zip(crop, self.shape)) else x
        grow = tuple((max(0, a), max(0, b)) for a, b in pairs)
        if all(g == (0, 0) for g in grow):
            return _not_a_view(self, x)
        out = x._movement("pad", grow)
        if value != 0:
            mask = Tensor.full(x.shape, True, dt.bool_, self.device)._movement("pad", grow)
            out = mask.where(out, Tensor.full((), value, dt.scalar_dtype(value, out.dtype), self.device))
        return _not_a_view(self, out)  # F.pad makes a new tensor

    def __getitem__(self, index) -> Tensor:
        if isinstance(index, Tensor) or (isinstance(index, (list, np.ndarray))):
            return self._gather_index(index)
        index = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, (Tensor, list, np.ndarray)) for i in index):
            raise NotImplementedError("indexing with several tensor indices is not supported; use one tensor index")
        n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
        if n_real > self.ndim:
            raise IndexError(f"too many indices for tensor of dimension {self.ndim}")
        if sum(1 for i in index if i is Ellipsis) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (self.ndim - n_real) + index[at + 1 :]
        else:
            index = index + (slice(None),) * (self.ndim - n_real)
        x, dim, new_shape_ops = self, 0, []
        shrink, flips, strides, squeeze, unsqueeze = [], [], [], [], []
        out_dim = 0
        for i in index:
            if i is None:
                unsqueeze.append(out_dim)
                out_dim += 1
                continue
            size = self.shape[dim]
            if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
                j = int(i)
                if not -size <= j < size:
                    raise IndexError(f"index {j} is out of bounds for dimension {dim} with size {size}")
                j %= size
                shrink.append((j, j + 1))
                strides.append(1)
                squeeze.append(dim)
            elif isinstance(i, slice):
                start, stop, step = i.indices(size)
                if step == 0:
                    raise ValueError("slice step cannot be zero")
                if step > 0:
                    n = max(0, (stop - start + step - 1) // step)
                    shrink.append((start, start + max(0, (n - 1) * step + 1) if n else start))
                else:
                    n = max(0, (start - stop - step - 1) // -step)
                    lo = start - (n - 1) * -step if n else start
                    shrink.append((lo, start + 1) if n else (start, start))
                    flips.append(dim)
                strides.append(abs(step))
                out_dim += 1
            else:
                raise IndexError(f"unsupported index {i!r} of type {type(i).__name__}")
            dim += 1
        del new_shape_ops
        x = x.shrink(shrink) if any(s != (0, n) for s, n in zip(shrink, self.shape)) else x
        if flips:
            x = x._movement("flip", tuple(flips))  # a negative step is a view, as in numpy
        if any(s != 1 for s in strides):
            # every step-th element: pad to a multiple of step, split the dim, keep the first of each group
            for d, s in enumerate(strides):
                if s == 1:
                    continue
                n = x.shape[d]
                padded = math.ceil(n / s) * s
                if padded != n:  # a view (not pad(), which copies): the result of indexing is a view
                    x = x._movement("pad", tuple((0, padded - n) if i == d else (0, 0) for i in range(x.ndim)))
                x = x._movement("reshape", x.shape[:d] + (padded // s, s) + x.shape[d + 1 :])
                x = x.shrink([(0, k) if j != d + 1 else (0, 1) for j, k in enumerate(x.shape)])
                x = x._movement("reshape", x.shape[: d + 1] + x.shape[d + 2 :])
        # reshapes through _movement: whatever the strides, the result of basic indexing is a view
        if squeeze:
            x = x._movement("reshape", tuple(s for d, s in enumerate(x.shape) if d not in squeeze))
        for d in unsqueeze:
            x = x._movement("reshape", x.shape[:d] + (1,) + x.shape[d:])
        return x

    def __setitem__(self, index, value) -> None:
        """x[index] = value: an in-place copy into the view x[index] (basic indexing only)."""
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, (Tensor, list, np.ndarray)) for i in parts):
            raise NotImplementedError("assignment through a tensor index is not supported; use where() instead")
        self[index].copy_(value)

    def _gather_index(self, index) -> Tensor:
        """x[idx] with an integer (or bool mask) tensor on the first dim: a one-hot reduce."""
        idx = index if isinstance(index, Tensor) else Tensor(np.asarray(index), device=self.device)
        if idx.dtype == dt.bool_:
            raise NotImplementedError("boolean-mask indexing has a data-dependent shape; use where() instead")
        n = self.shape[0]
        idx = (idx < 0).where(idx + n, idx)
        one_hot = idx.unsqueeze(-1) == Tensor.arange(n, device=self.device)
        one_hot = one_hot.reshape(one_hot.shape + (1,) * (self.ndim - 1)).cast(self.dtype)
        return (one_hot * self).sum(idx.ndim)

    def gather(self, dim: int, index: Tensor) -> Tensor:
        d = self._dim(dim)
        n = self.shape[d]
        x = self.shrink([(0, s) if i == d else (0, index.shape[i]) for i, s in enumerate(self.shape)])
        one_hot = index.unsqueeze(-1) == Tensor.arange(n, device=self.device)
        return (one_hot.cast(self.dtype) * x.unsqueeze(d).transpose(d, -1)).sum(-1)

    def one_hot(self, num_classes: int = -1) -> Tensor:
        n = num_classes if num_classes > 0 else int(self.max().item()) + 1
        return (self.unsqueeze(-1) == Tensor.arange(n, device=self.device)).cast(dt.int64)

    def split(self, split_size, dim: int = 0) -> tuple:
        d = self._dim(dim)
        n = self.shape[d]
        sizes = (
            [split_size] * (n // split_size) + ([n % split_size] if n % split_size else [])
            if isinstance(split_size, int)
            else list(split_size)
        )
        if sum(sizes) != n:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {n} (dim {d}), got {sizes}")
        out, at = [], 0
        for s in sizes:
            out.append(self.shrink([(at, at + s) if i == d else (0, k) for i, k in enumerate(self.shape)]))
            at += s
        return tuple(out)

    def chunk(self, chunks: int, dim: int = 0) -> tuple:
        n = self.shape[self._dim(dim)]
        return self.split(max(1, math.ceil(n / chunks)), dim)

    def unbind(self, dim: int = 0) -> tuple:
        return tuple(t.squeeze(dim) for t in self.split(1, dim))

    def repeat(self, *sizes) -> Tensor:
        sizes = sizes[0] if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
        if len(sizes) < self.ndim:
            raise RuntimeError(
                "Number of dimensions of repeat dims can not be smaller than number of dimensions of tensor"
            )
        x = self.reshape((1,) * (len(sizes) - self.ndim) + self.shape)
        expanded = x.reshape(tuple(v for s in x.shape for v in (1, s)))
        expanded = expanded.expand(tuple(v for r, s in zip(sizes, x.shape) for v in (r, s)))
        return _not_a_view(self, expanded.reshape(tuple(r * s for r, s in zip(sizes, x.shape))))

    def repeat_interleave(self, repeats: int, dim=None) -> Tensor:
        x = self.reshape(-1) if dim is None else self
        d = 0 if dim is None else x._dim(dim)
        y = x.unsqueeze(d + 1)
        y = y.expand(y.shape[: d + 1] + (repeats,) + y.shape[d + 2 :])
        return y.flatten(d, d + 1)

    @staticmethod
    def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
        tensors = [t for t in tensors if not (t.ndim == 1 and t.shape[0] == 0)] or list(tensors[:1])
        first = tensors[0]
        d = first._dim(dim)
        for t in tensors:
            if t.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != d):
                raise RuntimeError(
                    f"Sizes of tensors must match except in dimension {d}: got {first.shape} and {t.shape}"
                )
        dtype = first.dtype
        for t in tensors[1:]:
            dtype = dt.promote(dtype, t.dtype)
        total = sum(t.shape[d] for t in tensors)
        out, at = None, 0
        for t in tensors:
            pads = [(0, 0)] * t.ndim
            pads[d] = (at, total - at - t.shape[d])
            piece = t.cast(dtype)._movement("pad", tuple(pads))
            out = piece if out is None else (out | piece if dtype == dt.bool_ else out + piece)
            at += t.shape[d]
        return out

    @staticmethod
    def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
        first = tensors[0]
        for t in tensors:
            if t.shape != first.shape:
                raise RuntimeError(f"stack expects each tensor to be equal size, but got {first.shape} and {t.shape}")
        d = first._dim(dim, first.ndim + 1)
        return Tensor.cat([t.unsqueeze(d) for t in tensors], d)

    def tril(self, diagonal: int = 0) -> Tensor:
        r = Tensor.arange(self.shape[-2], device=self.device).unsqueeze(-1)
        c = Tensor.arange(self.shape[-1], device=self.device).unsqueeze(0)
        return (c - r <= diagonal).where(self, self.zeros_like())

    def triu(self, diagonal: int = 0) -> Tensor:
        r = Tensor.arange(self.shape[-2], device=self.device).unsqueeze(-1)
        c = Tensor.arange(self.shape[-1], device=self.device).unsqueeze(0)
        return (c - r >= diagonal).where(self, self.zeros_like())

    # --- linear algebra and neural-network ops ------------------------------------------------------
    def matmul(self, other: Tensor) -> Tensor:
        a, b = self, other if isinstance(other, Tensor) else Tensor(other, device=self.device)
        if a.ndim == 0 or b.ndim == 0:
            raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are {a.ndim}D and {b.ndim}D")
        a2 = a.unsqueeze(0) if a.ndim == 1 else a
        b2 = b.unsqueeze(-1) if b.ndim == 1 else b
        if a2.shape[-1] != b2.shape[-2]:
            raise RuntimeError(
                f"mat1 and mat2 shapes cannot be multiplied ({'x'.join(map(str, a2.shape[-2:]))} and "
                f"{'x'.join(map(str, b2.shape[-2:]))}): inner dimensions {a2.shape[-1]} and {b2.shape[-2]} differ"
            )
        d = dt.promote(a.dtype, b.dtype)
        a2, b2 = a2.cast(d), b2.cast(d)
        # (..., n, 1, k) * (..., 1, m, k) summed over k: a view-only product, one reduce kernel
        prod_ = a2.unsqueeze(-2) * b2.transpose(-1, -2).unsqueeze(-3)
        out = prod_.sum(-1)
        if not d.is_float:
            out = out.cast(d)
        if a.ndim == 1:
            out = out.squeeze(-2)
        if b.ndim == 1:
            out = out.squeeze(-1)
        return out

    def mm(self, other):
        return self.matmul(other)

    def dot(self, other):
        return (self * other).sum()

    def linear(self, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        out = self.matmul(weight.T) if weight.ndim == 2 else self * weight
        return out + bias if bias is not None else out

    def _pool(self, kernel: tuple, stride: tuple, dilation: tuple) -> Tensor:
        """Sliding windows as a view: (..., *spatial) -> (..., *out_spatial, *kernel). Never a copy."""
        n_sp = len(kernel)
        spatial = self.shape[-n_sp:]
        out = [(i - d * (k - 1) - 1) // s + 1 for i, k, s, d in zip(spatial, kernel, stride, dilation)]
        if any(o <= 0 for o in out):
            raise RuntimeError(f"kernel {kernel} with dilation {dilation} is larger than the input {spatial}")
        return self._movement("window", (tuple(kernel), tuple(stride), tuple(dilation)))

    def conv2d(
        self, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1
    ) -> Tensor:
        if self.ndim != 4 or weight.ndim != 4:
            raise RuntimeError(f"conv2d expects 4D input and weight, got input {self.shape} and weight {weight.shape}")
        n, cin, h, w = self.shape
        cout, cin_g, kh, kw = weight.shape
        if cin != cin_g * groups:
            raise RuntimeError(
                f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                f"{list(self.shape)} to have {cin_g * groups} channels, but got {cin} channels instead"
            )
        if cout % groups:
            raise RuntimeError(f"out_channels ({cout}) must be divisible by groups ({groups})")
        stride, dilation = _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                padding = tuple(d * (k - 1) // 2 for d, k in zip(dilation, (kh, kw)))
            else:
                raise ValueError(f"padding {padding!r}: expected 'valid', 'same' or ints")
        padding = _pair(padding)
        g, cout_g = groups, cout // groups
        x_in, w_in = self, weight

        def windows_of(x: Tensor) -> Tensor:  # (n, groups, cin_g, oh, ow, kh, kw), a view of the padded input
            x = x.pad((padding[1], padding[1], padding[0], padding[0]))
            win = x._pool((kh, kw), stride, dilation)
            return win.reshape(n, g, cin_g, *win.shape[2:])

        columns = []  # the window columns, when forward copies them out; the weight gradient reuses them

        def forward() -> Tensor:
            win = windows_of(x_in)
            oh, ow = win.shape[3:5]
            plain_weight = w_in.lazydata.st.contiguous_view and w_in.lazydata.size == w_in.lazydata.base.size
            if ow % 8 and plain_weight:
                # rows not a multiple of 8 give vector lanes no contiguous output row. Copy the windows out as
                # columns (n, g, oh, ow, cin_g*kh*kw), small here, so that the reduce runs along memory that
                # both the columns and the weight hold contiguously (a matrix product)
                cols = win.permute(0, 1, 3, 4, 2, 5, 6).contiguous()
                columns.append(cols)
                out = (cols.unsqueeze(2) * w_in.reshape(1, g, cout_g, 1, 1, cin_g, kh, kw)).sum((5, 6, 7))
            elif ow % 16 and cout_g % 16 == 0:
                # a weight seen through a view (the flipped one of the input gradient): copy it channel-last,
                # so that vector lanes run over output channels instead
                wt = w_in.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
                out = (win.unsqueeze(2) * wt.reshape(1, g, cout_g, cin_g, 1, 1, kh, kw)).sum((3, 6, 7))
            else:
                out = (win.unsqueeze(2) * w_in.reshape(1, g, cout_g, cin_g, 1, 1, kh, kw)).sum((3, 6, 7))
            return out.reshape(n, cout, oh, ow)

        def backward(grad: Tensor) -> tuple:
            # the gradient as two convolutions (what PyTorch does too), rather than the autograd of the
            # window view: both are ordinary reduce kernels that the code generator vectorizes
            oh, ow = grad.shape[2:]
            grad_x = grad_w = None
            if x_in.requires_grad:
                grad_x = _conv2d_input_grad(grad, w_in, (h, w), stride, padding, dilation, groups)
            if w_in.requires_grad and columns and not autograd.is_grad_enabled():
                # output lanes along cin_g*kh*kw, contiguous in both (the columns carry no graph: with
                # create_graph the windows below keep the weight gradient differentiable in x)
                gg = grad.reshape(n, g, cout_g, oh, ow, 1, 1, 1)
                grad_w = (gg * columns[0].detach().unsqueeze(2)).sum((0, 3, 4)).reshape(cout, cin_g, kh, kw)
            elif w_in.requires_grad:
                win = windows_of(x_in).unsqueeze(2)  # (n, g, 1, cin_g, oh, ow, kh, kw)
                gg = grad.reshape(n, g, cout_g, 1, oh, ow, 1, 1)
                grad_w = (gg * win).sum((0, 4, 5)).reshape(cout, cin_g, kh, kw)
            return grad_x, grad_w

        out = Tensor._composite("conv2d", (x_in, w_in), forward, backward)
        return out + bias.reshape(1, -1, 1, 1) if bias is not None else out

    @staticmethod
    def _composite(name: str, inputs: tuple, forward, backward) -> Tensor:
        """An op built of primitives whose gradient is given by `backward(grad) -> grads of inputs`, written
        with Tensor ops (so that it is differentiable again), instead of differentiating its primitives."""
        with autograd.no_grad():
            out = forward()
        return Tensor._record(out, "composite", inputs, (name, backward))

    def conv1d(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
        out = self.unsqueeze(-2).conv2d(weight.unsqueeze(-2), bias, (1, stride), (0, padding), (1, dilation), groups)
        return out.squeeze(-2)

    def max_pool2d(
        self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
    ) -> Tensor:
        if ceil_mode or return_indices:
            raise NotImplementedError("max_pool2d: ceil_mode and return_indices are not supported")
        k = _pair(kernel_size)
        s = _pair(stride if stride is not None else kernel_size)
        p = _pair(padding)
        d = _pair(dilation)
        x_in = self

        def windows() -> Tensor:  # (..., oh, ow, kh, kw), a view of the input padded with -inf
            x = x_in.pad((p[1], p[1], p[0], p[0]), value=float("-inf")) if any(p) else x_in
            return x._pool(k, s, d)

        def forward() -> Tensor:
            return windows().amax((-2, -1))

        def backward(grad: Tensor) -> tuple:
            # as PyTorch: each window's gradient goes to its first maximal element (a NaN counts as one),
            # found by a reduce over the window; then back to the input positions (col2im)
            win = windows().detach()
            best = forward().detach().unsqueeze(-1).unsqueeze(-1)
            hit = (win == best) | (win != win)
            rank = Tensor.arange(k[0] * k[1], 0, -1, dtype=dt.float32, device=self.device).reshape(k)
            first = hit.where(rank, 0.0).amax((-2, -1), keepdim=True)  # the rank of the first hit
            spread = (rank == first).where(grad.unsqueeze(-1).unsqueeze(-1), 0.0)
            padded = tuple(size + 2 * pad for size, pad in zip(x_in.shape[-2:], p))
            crop = tuple(zip(p, x_in.shape[-2:]))  # the padding's positions get no gradient
            return (autograd.window_transpose(spread, (*x_in.shape[:-2], *padded), k, s, d, crop),)

        return Tensor._composite("max_pool2d", (x_in,), forward, backward)

    def avg_pool2d(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
    ) -> Tensor:
        if ceil_mode:
            raise NotImplementedError("avg_pool2d: ceil_mode is not supported")
        k = _pair(kernel_size)
        s = _pair(stride if stride is not None else kernel_size)
        p = _pair(padding)
        x = self.pad((p[1], p[1], p[0], p[0])) if any(p) else self
        sums = x._pool(k, s, (1, 1)).sum((-2, -1))
        if divisor_override:
            return sums / divisor_override
        if count_include_pad or not any(p):
            return sums / (k[0] * k[1])
        ones = self.ones_like(dtype=self.dtype)[:1, :1].pad((p[1], p[1], p[0], p[0]))
        counts = ones._pool(k, s, (1, 1)).sum((-2, -1))
        return sums / counts

    def adaptive_avg_pool2d(self, output_size) -> Tensor:
        oh, ow = _pair(output_size)
        h, w = self.shape[-2:]
        if h % oh or w % ow:
            raise NotImplementedError(f"adaptive_avg_pool2d from {(h, w)} to {(oh, ow)}: sizes must divide evenly")
        return self.avg_pool2d((h // oh, w // ow))

    def dropout(self, p: float = 0.5, training: bool = True) -> Tensor:
        if not training or p == 0:
            return self
        if p == 1:
            return self * 0
        keep = Tensor.rand(*self.shape, device=self.device) >= p
        return keep.where(self / (1 - p), self.zeros_like())

    def scaled_dot_product_attention(self, key, value, attn_mask=None, is_causal=False) -> Tensor:
        scores = self @ key.transpose(-2, -1) / math.sqrt(self.shape[-1])
        if is_causal:
            scores = scores.masked_fill(Tensor.ones(scores.shape[-2:], dtype=dt.bool_).triu(1), float("-inf"))
        if attn_mask is not None:
            scores = scores + attn_mask if attn_mask.dtype != dt.bool_ else attn_mask.where(scores, float("-inf"))
        return scores.softmax(-1) @ value


def _conv2d_input_grad(grad: Tensor, weight: Tensor, input_hw: tuple, stride, padding, dilation, groups) -> Tensor:
    """d(conv2d)/d(input): the output gradient, spread out by the stride and fully padded, convolved
    with the spatially flipped weight whose in/out channels are swapped per group."""
    cout, cin_g, kh, kw = weight.shape
    g = groups
    plain_weight = weight.lazydata.st.contiguous_view and weight.lazydata.size == weight.lazydata.base.size
    if groups == 1 and input_hw[1] % 16 and plain_weight:
        # narrow feature maps: the gradient of the window columns is a matrix product along memory the
        # weight holds contiguously (output lanes over cin*kh*kw), then the columns go back to their
        # input positions (col2im, one elementwise kernel)
        n, _, oh, ow = grad.shape
        if (oh * ow) % 16 == 0:
            # columns (n, cin, kh, kw, oh, ow): vector lanes run over the output pixels in the product, and
            # the col2im below reads each kernel offset's rows contiguously
            per_pixel = grad.reshape(n, cout, 1, 1, 1, oh, ow)
            cols = (per_pixel * weight.reshape(1, cout, cin_g, kh, kw, 1, 1)).sum(1).permute(0, 1, 4, 5, 2, 3)
        else:
            # few output pixels: lanes over cin*kh*kw instead, columns (n, oh, ow, cin, kh, kw)
            per_pixel = grad.permute(0, 2, 3, 1).reshape(n, oh, ow, cout, 1, 1, 1)
            cols = (per_pixel * weight.reshape(1, 1, 1, cout, cin_g, kh, kw)).sum(3).permute(0, 3, 1, 2, 4, 5)
        padded_hw = tuple(size + 2 * p for size, p in zip(input_hw, padding))
        crop = tuple(zip(padding, input_hw))  # the padding's positions get no gradient
        return autograd.window_transpose(cols, (n, cin_g, *padded_hw), (kh, kw), stride, dilation, crop)
    for axis, (s, o) in enumerate(zip(stride, grad.shape[2:])):
        if s > 1:  # s-1 zeros after each element, none after the last
            dim = 2 + axis
            pads = [0, 0] * (grad.ndim - dim - 1) + [0, s - 1]
            grad = grad.unsqueeze(dim + 1).pad(pads).flatten(dim, dim + 1)
            grad = grad.shrink([(0, m) if i != dim else (0, (o - 1) * s + 1) for i, m in enumerate(grad.shape)])
    if any(s > 1 for s in stride):
        grad = grad.contiguous()  # one small copy, so that the convolution below reads plain rows
    pads = []
    for size, k, s, p, d in reversed(list(zip(input_hw, (kh, kw), stride, padding, dilation))):
        before = (k - 1) * d - p
        leftover = (size + 2 * p - (k - 1) * d - 1) % s  # input rows the strided windows never reached
        pads += [before, before + leftover]
    grad = grad.pad(pads)
    flipped = weight.reshape(g, cout // g, cin_g, kh, kw).transpose(1, 2).reshape(g * cin_g, cout // g, kh, kw)
    return grad.conv2d(flipped.flip(2, 3), dilation=dilation, groups=g)


def _result_dtype(a: Tensor, b: Tensor) -> DType:
    """PyTorch's promotion of two tensors: a zero-dim tensor beside a dimensioned one counts only when it is of a
    higher category (bool < integer < float), like a Python scalar, but with its own dtype."""
    if (a.ndim == 0) == (b.ndim == 0):
        return dt.promote(a.dtype, b.dtype)
    dim, zero = (b.dtype, a.dtype) if a.ndim == 0 else (a.dtype, b.dtype)
    if dim.is_float:
        return dim
    if dim == dt.bool_ or zero.is_float:
        return dt.promote(dim, zero)
    return dim


# a reduction of this many elements or more to a single value runs in two kernels (Tensor._split_reduce)
_SPLIT_REDUCE = 1 << 16
_SPLIT_PARTS = 1024  # the partial results of such a reduction


_DEVICE_NAMES = ("llvm", "opencl", "cpu", "gpu", "cuda", "clang")


def _not_a_view(source: Tensor, out: Tensor) -> Tensor:
    """`out`, built with movement ops from `source`, as a tensor of its own (an op PyTorch answers with a copy):
    an in-place update of it does not write back into `source`."""
    if out is not source:
        out._view_of = None
    return out


def _pair(x) -> tuple:
    return (x, x) if isinstance(x, int) else tuple(x)


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
    for t in tensors:
        if t.lazydata.base.op == "const":
            # a constant is one shared node: the tensor gets memory of its own, which it may later overwrite
            t.lazydata = t.lazydata.contiguous()
    runtime.realize([t.lazydata for t in tensors])

"""Elementwise ops: dtype conversions, arithmetic with PyTorch's promotion and broadcasting, math functions,
activations, comparisons, bitwise and logical ops, and the Python operators."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lazygrad import dtype as dt
from lazygrad.dtype import DType
from lazygrad.graph import LazyBuffer
from lazygrad.ops import Op

if TYPE_CHECKING:
    from lazygrad.tensor import Tensor
# at run time `Tensor` is the finished class, bound in by lazygrad.tensor (tensor_ops.bind_tensor_class)


def _broadcast_shape(*shapes) -> tuple:
    # an eager step broadcasts the same few pairs of shapes every step: remembered (a scalar parameter times a
    # vector paid ~3 us here per op)
    try:
        return _BROADCAST_SHAPES[shapes]
    except (KeyError, TypeError):  # (TypeError: a list among the shapes)
        pass
    out = _broadcast_shape_of(shapes)
    if len(_BROADCAST_SHAPES) >= 4096:
        _BROADCAST_SHAPES.clear()
    _BROADCAST_SHAPES[tuple(map(tuple, shapes))] = out
    return out


_BROADCAST_SHAPES: dict = {}


def _broadcast_shape_of(shapes: tuple) -> tuple:
    ndim = max(len(s) for s in shapes)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    out = []
    for d in range(ndim):
        sizes = {p[d] for p in padded if p[d] != 1}
        if len(sizes) > 1:
            raise RuntimeError(
                f"The size of tensor a ({padded[0][d]}) must match the size of tensor b ({padded[1][d]}) at "
                f"non-singleton dimension {d}: shapes {tuple(shapes[0])} and {tuple(shapes[1])} do not broadcast"
            )
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _result_dtype(a: Tensor, b: Tensor) -> DType:
    """PyTorch's promotion of two tensors: a zero-dim tensor beside a dimensioned one counts only when it is of a
    higher category (bool < integer < float), like a Python scalar, but with its own dtype."""
    if a.dtype is b.dtype:  # (what the rules below give for one dtype, without their calls)
        return a.dtype
    if (a.ndim == 0) == (b.ndim == 0):
        return dt.promote(a.dtype, b.dtype)
    dim, zero = (b.dtype, a.dtype) if a.ndim == 0 else (a.dtype, b.dtype)
    if dim.is_float:
        return dim
    if dim == dt.bool_ or zero.is_float:
        return dt.promote(dim, zero)
    return dim


def _erfc_tail(x: Tensor) -> tuple:
    """(x < 0, erfc(|x|)) of a float tensor, by Abramowitz & Stegun 7.1.26 refined (|error| < 1.5e-7):
    erfc(|x|) = poly(1 / (1 + p|x|)) * exp(-x*x). The normal cdf takes its sign from the comparison, in a select,
    instead of sign() and |x| as a maximum: those were 11 of the ~55 vector operations of GELU's kernel (sign as two
    compares, two conversions and a subtraction; a float maximum, which LLVM gives NaN and signed-zero fix-ups), and
    GELU's forward over (2048, 1024) took 1.46 -> 1.31 ms (one thread)."""
    negative = x < 0
    magnitude = (-x).where(negative, x)  # |x|: -0 stays -0, which the polynomial reads as 0
    t = 1 / (1 + 0.3275911 * magnitude)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return negative, poly * (-x * x).exp()


def _normal_cdf(x: Tensor) -> Tensor:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, as erfc(|z|) / 2 below 0 and 1 - erfc(|z|) / 2 above (z = x / sqrt 2): the
    same value without erf's sign. A composite with the exact derivative, the density exp(-z * z) / sqrt(2 pi), whose
    exponential is the same node as the one inside (GELU's gradient computes it once for both)."""

    def forward() -> Tensor:
        negative, tail = _erfc_tail(x * (1 / math.sqrt(2)))
        half_tail = 0.5 * tail
        return half_tail.where(negative, 1 - half_tail)

    def backward(grad: Tensor) -> tuple:
        z = x * (1 / math.sqrt(2))
        return (grad * (-z * z).exp() * (1 / math.sqrt(2 * math.pi)),)

    return type(x)._composite("normal_cdf", (x,), forward, backward)


class ElementwiseOps:
    __slots__ = ()

    def cast(self, dtype) -> Tensor:
        dtype = dt.to_dtype(dtype)
        return self if dtype == self.dtype else self._primitive(Op.CAST, arg=dtype, dtype=dtype)

    def bitcast(self, dtype) -> Tensor:
        dtype = dt.to_dtype(dtype)
        if dtype.itemsize != self.dtype.itemsize:
            raise RuntimeError(f"bitcast needs dtypes of the same size: {self.dtype.name} -> {dtype.name}")
        return self if dtype == self.dtype else self._primitive(Op.BITCAST, arg=self.dtype, dtype=dtype)

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

    def _operand(self, other, reverse=False) -> tuple:
        """Both operands as tensors of one dtype and one shape (PyTorch promotion and broadcasting)."""
        if isinstance(other, Tensor):
            mine, theirs = self._lazydata, other._lazydata
            if mine.dtype is theirs.dtype and mine.shape == theirs.shape:
                # the common case of eager steps: nothing to promote or broadcast, so no casts or views to try
                return (other, self) if reverse else (self, other)
            if mine.dtype is theirs.dtype:
                x, y = self, other  # (only the shapes differ: no casts to try)
            else:
                d = _result_dtype(self, other)
                x, y = self.cast(d), other.cast(d)
        else:
            if isinstance(other, np.ndarray):
                return self._operand(Tensor(other, device=self.device), reverse)
            if not isinstance(other, (bool, int, float)):
                raise TypeError(f"unsupported operand type {type(other).__name__} for a Tensor op")
            d = dt.scalar_dtype(other, self.dtype)
            x = self.cast(d)
            # the scalar as a constant node already of x's shape (what full(()) then broadcast_to builds), without
            # the two intermediate tensors: a constant needs no gradient and is never written in place
            # (the node's device name, not Tensor.device's object: comparing that str subclass to the name is a
            # Python call on every op that reads the constant)
            y = Tensor._scalar_operand(LazyBuffer.const(other, x.shape, d, x._lazydata.device))
            return (y, x) if reverse else (x, y)
        if x.shape != y.shape:
            shape = _broadcast_shape(x.shape, y.shape)  # (raises where they do not broadcast)
            if x._lazydata.shape != shape:
                x = x._broadcast_valid(shape)
            if y._lazydata.shape != shape:
                y = y._broadcast_valid(shape)
        return (y, x) if reverse else (x, y)

    def add(self, other, alpha=1) -> Tensor:
        if alpha != 1:
            other = other * alpha
        x, y = self._operand(other)
        if x._lazydata.dtype is dt.bool_:
            return x | y
        return x._primitive(Op.ADD, y)

    def sub(self, other, alpha=1) -> Tensor:
        if self.dtype == dt.bool_ and (
            isinstance(other, bool) or (isinstance(other, Tensor) and other.dtype == dt.bool_)
        ):
            raise RuntimeError("Subtraction, the `-` operator, with two bool tensors is not supported")
        x, y = self._operand(other)
        if alpha == 1:  # (x + -y, as add would build it: one dtype and shape now, and no bool left)
            return x._primitive(Op.ADD, y._primitive(Op.NEG))
        return x.add(-(y * alpha))

    def mul(self, other) -> Tensor:
        x, y = self._operand(other)
        if x._lazydata.dtype is dt.bool_:
            return x & y
        return x._primitive(Op.MUL, y)

    def div(self, other, rounding_mode: str | None = None) -> Tensor:
        x, y = self._operand(other)
        if rounding_mode == "floor":
            return x.floor_divide(y)
        if rounding_mode == "trunc":
            return x._primitive(Op.IDIV, y) if x.dtype.is_int else (x / y).trunc()
        if not x.dtype.is_float:
            x, y = x.cast(dt.default_float), y.cast(dt.default_float)
        return x._primitive(Op.MUL, y._primitive(Op.RECIP))

    def floor_divide(self, other) -> Tensor:
        x, y = self._operand(other)
        if x.dtype.is_float:
            return (x / y).floor()
        q = x._primitive(Op.IDIV, y)
        # C division truncates; Python/PyTorch floor when the signs differ and it is inexact
        inexact = x._primitive(Op.MOD, y)._primitive(Op.CMPNE, y.zeros_like())
        signs_differ = (x < 0) ^ (y < 0)
        return q - (inexact & signs_differ).cast(q.dtype)

    def remainder(self, other) -> Tensor:
        x, y = self._operand(other)
        if x.dtype.is_float:
            return x - (x / y).floor() * y
        r = x._primitive(Op.MOD, y)
        fix = r._primitive(Op.CMPNE, r.zeros_like()) & ((r < 0) ^ (y < 0))
        return r + fix.cast(r.dtype) * y

    def fmod(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive(Op.MOD, y) if x.dtype.is_int else x - (x / y).trunc() * y

    def pow(self, exponent) -> Tensor:
        if not isinstance(exponent, Tensor):
            if isinstance(exponent, int) and exponent < 0 and not self.dtype.is_float:
                raise RuntimeError(
                    f"Integers to negative integer powers are not allowed ({self.dtype} tensor ** {exponent})"
                )
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
        if x.dtype.is_int:
            return x._integer_pow(y)
        if not x.dtype.is_float:
            out_dtype = x.dtype
            x, y = x.cast(dt.default_float), y.cast(dt.default_float)
            r = x.pow(y)
            return (r + (r < 0)._select(-0.5, 0.5)).cast(out_dtype)  # round half away from zero, then cast
        # |x|**y, then the sign for negative bases with odd integer exponents; NaN for non-integers
        y_int = y == y.trunc()
        y_odd = y_int & ((y / 2).trunc() * 2 != y)
        zero = x == 0
        # log2(0) = -inf would make the gradient 0 * inf = NaN: take the logarithm of a safe base and give
        # x == 0 its value (0, or inf for negative y) through a where, which carries no gradient but for y == 1
        safe = zero._select(x.ones_like(), x)
        magnitude = (y * safe.abs().log2()).exp2()
        nan = Tensor.full((), float("nan"), x.dtype, x.device)  # a constant: no NaN flows into the gradient
        fractional = (safe == float("-inf"))._select(magnitude, nan)  # (-inf)**2.5 is inf, (-8)**(1/3) is NaN
        signed = (safe < 0)._select(y_odd._select(-magnitude, y_int._select(magnitude, fractional)), magnitude)
        inf = Tensor.full((), float("inf"), x.dtype, x.device)
        negative_zero = x.detach().reciprocal() < 0
        at_zero = (y > 0)._select(x.zeros_like().detach(), (y_odd & negative_zero)._select(-inf, inf))
        signed = zero._select((y == 1)._select(x, at_zero), signed)
        # x**0 is 1 for every x; only where the formula fails (0, inf, NaN), so the gradient of y stays log(x)
        formula_fails = zero | (x != x) | (x.abs() == float("inf"))
        return ((y == 0) & formula_fails)._select(x.ones_like(), signed)

    def _integer_pow(self, exponent: Tensor) -> Tensor:
        """self ** exponent for integer tensors, exact as torch's: square and multiply over every bit of the
        exponent (a fixed loop: no read of the exponent's values), wrapping around on overflow; a negative
        exponent gives 1 for a base of 1, +-1 for -1, and 0 for any other base (torch's integer rule)."""
        positive = exponent.maximum(exponent.zeros_like())
        out, square = self.ones_like(), self
        bits = self.dtype.itemsize * 8 - (self.dtype.kind == "i")  # a signed exponent's sign bit: the case below
        for bit in range(bits):
            odd = (positive >> bit) & 1
            out = (odd != 0)._select(out * square, out)
            square = square * square
        one, minus_one = self == 1, self == -1
        negative = one._select(self.ones_like(), minus_one._select(((exponent & 1) != 0)._select(self, -self), 0))
        return (exponent < 0)._select(negative, out)

    def neg(self) -> Tensor:
        if self.dtype == dt.bool_:
            raise RuntimeError("Negation, the `-` operator, on a bool tensor is not supported; use ~ or logical_not")
        return self._primitive(Op.NEG)

    def reciprocal(self) -> Tensor:
        x = self if self.dtype.is_float else self.cast(dt.default_float)
        return x._primitive(Op.RECIP)

    def exp2(self) -> Tensor:
        return self._float()._primitive(Op.EXP2)

    def log2(self) -> Tensor:
        return self._float()._primitive(Op.LOG2)

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
        return self._float()._primitive(Op.SQRT)

    def rsqrt(self) -> Tensor:
        return self.sqrt().reciprocal()

    def square(self) -> Tensor:
        x = self.cast(dt.int64) if self.dtype == dt.bool_ else self  # as torch: pow(bool, 2) is int64
        return x * x

    def sin(self) -> Tensor:
        return self._float()._primitive(Op.SIN)

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
        return positive, positive._select(-x, x).exp()

    def sigmoid(self) -> Tensor:
        # 1 / (1 + e^-x) for x >= 0, e^x / (1 + e^x) below: stable, in value and in gradient, for any x
        positive, e = self._exp_of_minus_abs()
        return positive._select(1.0, e) / (1 + e)

    def tanh(self) -> Tensor:
        return 2 * (2 * self._float()).sigmoid() - 1

    def relu(self) -> Tensor:
        # where(x <= 0, 0, x) keeps NaN and gives gradient 0 at 0, as PyTorch does
        x = self._lazydata
        if not x.dtype.is_float:
            return self.le(0)._select(self.zeros_like(), self)
        # the nodes that le(0), zeros_like() and _select make (x < 0 | !(x != 0), then the where), built directly: a
        # layer's activation in every eager step, seven tensors through promotion and broadcasting otherwise
        zero = LazyBuffer.const(0, x.shape, x.dtype, x.device)
        true = LazyBuffer.const(True, x.shape, dt.bool_, x.device)
        below = LazyBuffer.elementwise(Op.CMPLT, (x, zero))
        equal = LazyBuffer.elementwise(Op.XOR, (LazyBuffer.elementwise(Op.CMPNE, (x, zero)), true))
        condition = LazyBuffer.elementwise(Op.OR, (below, equal))
        out = Tensor._wrap(LazyBuffer.elementwise(Op.WHERE, (condition, zero, x)))
        if self.requires_grad:  # recorded as _select records it: where's rule reads the condition
            inputs = (Tensor._wrap(condition), Tensor._scalar_operand(zero), self)
            return Tensor._record(out, Op.WHERE, inputs, None)
        return out

    def relu6(self) -> Tensor:
        return self.clamp(0, 6)

    def leaky_relu(self, negative_slope: float = 0.01) -> Tensor:
        return (self > 0)._select(self, self * negative_slope)

    def elu(self, alpha: float = 1.0) -> Tensor:
        return (self > 0)._select(self, alpha * self.expm1())

    def erf(self) -> Tensor:
        x = self._float()

        def forward() -> Tensor:
            # float32-accurate (within ~2 ulp of torch's over the whole float range), not the erfc form 1 - erfc(|x|)
            # of _erfc_tail, which loses all relative accuracy near 0 (erf(1e-6) was 24% off): an odd polynomial
            # below |x| = 0.9277 and 1 - exp(polynomial) above, both computed, one selected (N. Juffa's erff
            # coefficients, each branch within 1 ulp in float32); no division
            magnitude, square = x.abs(), x * x
            r = (magnitude * -1.72853470e-5 + 3.83197126e-4) * square + (magnitude * -3.88396438e-3 + 2.42546219e-2)
            for c in (-1.06777877e-1, -6.34846687e-1, -1.28717512e-1):
                r = r * magnitude + c
            large = 1 - (r * magnitude + magnitude * -1.0).exp()
            large = (-large).where(x < 0, large)
            small = square * -5.96761703e-4 + 4.99119423e-3
            for c in (-2.67681349e-2, 1.12819925e-1, -3.76125336e-1, 1.28379166e-1):
                small = small * square + c
            return large.where(magnitude > 0.927734375, small * x + x)

        def backward(grad: Tensor) -> tuple:
            # the exact derivative, 2/sqrt(pi) exp(-x^2): the polynomial's own is longer and, through |x|, wrong at 0
            # in the second derivative; exp(-x * x) is the forward's node, computed once where both are needed
            return (grad * (-x * x).exp() * (2 / math.sqrt(math.pi)),)

        return type(self)._composite("erf", (x,), forward, backward)

    def gelu(self, approximate: str = "none") -> Tensor:
        # a composite with the closed-form derivative: differentiating erf's polynomial (or tanh's sigmoid) instead
        # gives a gradient several times longer, which is the epilogue of the MLP's largest backward product
        x = self

        def forward() -> Tensor:
            if approximate == "tanh":
                return 0.5 * x * (1 + (math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)).tanh())
            return x * _normal_cdf(x)

        def backward(grad: Tensor) -> tuple:
            if approximate == "tanh":
                k = math.sqrt(2 / math.pi)
                t = (k * (x + 0.044715 * x * x * x)).tanh()
                # d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2)
                slope = 0.5 * (1 + t) + (0.5 * k) * x * (1 - t * t) * (1 + (3 * 0.044715) * x * x)
            else:
                # Phi(x) + x phi(x): the normal distribution's cdf and density; the density is written as erf's own
                # exp(-z * z) of z = x / sqrt(2), so that the kernel computes that exponential once for both
                z = x * (1 / math.sqrt(2))
                slope = _normal_cdf(x) + x * (-z * z).exp() * (1 / math.sqrt(2 * math.pi))
            return (grad * slope,)

        return type(self)._composite("gelu", (x,), forward, backward)

    def silu(self) -> Tensor:
        return self * self.sigmoid()

    def softplus(self, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
        scaled = self._float() * beta
        # log(1 + e^s) = max(s, 0) + log(1 + e^-|s|): no overflow in any branch
        positive, e = scaled._exp_of_minus_abs()
        stable = (positive._select(scaled, 0.0) + (1 + e).log()) / beta
        return (scaled > threshold)._select(self, stable)

    def mish(self) -> Tensor:
        return self * self.softplus().tanh()

    def hardtanh(self, min_val=-1.0, max_val=1.0) -> Tensor:
        return self.clamp(min_val, max_val)

    def abs(self) -> Tensor:
        if self.dtype == dt.bool_:
            return self
        return self._primitive(Op.MAX, self._primitive(Op.NEG))

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
        return self._zero_gradient(nan_or_big._select(self, as_int))

    def _zero_gradient(self, value: Tensor) -> Tensor:
        """`value`, as a function of self whose gradient is zero (as PyTorch's for sign, floor, round...).

        A where that always picks the detached value: its gradient to self is exactly 0, and unlike
        `value + 0 * self` it cannot turn an inf in self into NaN."""
        if not self.requires_grad:
            return value
        always = Tensor.full(self.shape, True, dt.bool_, self.device)
        return always._primitive(Op.WHERE, value.detach(), self)

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
        return (tie & odd)._select(r - 1, r)

    def frac(self) -> Tensor:
        return self - self.trunc()

    def clamp(self, min=None, max=None) -> Tensor:
        if min is None and max is None:
            raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
        out = self
        if min is not None:
            lo = min if isinstance(min, Tensor) else Tensor.full((), min, dt.scalar_dtype(min, self.dtype), self.device)
            out = (out < lo)._select(lo.cast(dt.promote(out.dtype, lo.dtype)), out)
        if max is not None:
            hi = max if isinstance(max, Tensor) else Tensor.full((), max, dt.scalar_dtype(max, self.dtype), self.device)
            out = (out > hi)._select(hi.cast(dt.promote(out.dtype, hi.dtype)), out)
        return out

    clip = clamp

    def maximum(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive(Op.MAX, y)

    def minimum(self, other) -> Tensor:
        x, y = self._operand(other)
        if x.dtype == dt.bool_:
            return x & y
        return x._reverse_order()._primitive(Op.MAX, y._reverse_order())._reverse_order()

    def _reverse_order(self) -> Tensor:
        """An order-reversing bijection (for min from max): -x for floats, ~x for integers."""
        if self.dtype.is_float:
            return -self
        if self.dtype == dt.bool_:
            return self.logical_not()
        return self ^ -1 if self.dtype.kind == "i" else self ^ ((1 << (8 * self.dtype.itemsize)) - 1)

    def where(self, condition, y) -> Tensor:
        """torch's Tensor.where: self where condition is true, else y (torch.where(condition, self, y)). lazygrad's
        own code writes condition._select(x, y), the condition first."""
        if not isinstance(condition, Tensor) or condition.dtype != dt.bool_:
            got = condition.dtype.name if isinstance(condition, Tensor) else type(condition).__name__
            raise TypeError(f"where expected condition to be a boolean tensor, but got {got}: x.where(condition, y)")
        return condition._select(self, y)

    def _select(self, x, y) -> Tensor:
        """torch.where(self, x, y): x where self (the condition) is true, else y."""
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
        return cond._primitive(Op.WHERE, x, y)

    def masked_fill(self, mask: Tensor, value) -> Tensor:
        if isinstance(value, Tensor):  # torch takes a 0-d tensor too (its gradient is the sum over the filled places)
            if value.ndim != 0:
                raise RuntimeError(f"masked_fill takes a 0-d value tensor, got one of shape {value.shape}")
            return mask._select(value.cast(self.dtype), self)
        return mask._select(
            Tensor.full((), value, dt.scalar_dtype(value, self.dtype), self.device).cast(self.dtype), self
        )

    def lerp(self, end, weight) -> Tensor:
        return self + (end - self) * weight

    # comparisons (NaN-correct: every comparison with NaN is false except !=)
    def eq(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive(Op.CMPNE, y).logical_not()

    def ne(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive(Op.CMPNE, y)

    def lt(self, other) -> Tensor:
        x, y = self._operand(other)
        return x._primitive(Op.CMPLT, y)

    def gt(self, other) -> Tensor:
        x, y = self._operand(other)
        return y._primitive(Op.CMPLT, x)

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
        return self._bitwise(Op.AND, other)

    def bitwise_or(self, other) -> Tensor:
        return self._bitwise(Op.OR, other)

    def bitwise_xor(self, other) -> Tensor:
        return self._bitwise(Op.XOR, other)

    def bitwise_not(self) -> Tensor:
        if self.dtype.is_float:
            raise TypeError(f"~ (bitwise_not) is only for integer and bool tensors, got {self.dtype.name}")
        return self ^ (True if self.dtype == dt.bool_ else -1)

    def bitwise_left_shift(self, other) -> Tensor:
        return self._bitwise(Op.SHL, other)

    def bitwise_right_shift(self, other) -> Tensor:
        return self._bitwise(Op.SHR, other)

    def logical_not(self) -> Tensor:
        x = self.bool()
        # (the constant's node as full() makes it, without full()'s argument handling: eq() and le() come here)
        true = Tensor._scalar_operand(LazyBuffer.const(True, x.shape, dt.bool_, x._lazydata.device))
        return x._primitive(Op.XOR, true)

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
        # (one dtype and shape now: add's own operand check would find nothing to do)
        return x | y if x._lazydata.dtype is dt.bool_ else x._primitive(Op.ADD, y)

    def __rsub__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.sub(y)

    def __rmul__(self, other):
        x, y = self._operand(other, reverse=True)
        return x & y if x._lazydata.dtype is dt.bool_ else x._primitive(Op.MUL, y)  # (as __radd__)

    def __rtruediv__(self, other):
        x, y = self._operand(other, reverse=True)
        return x.div(y)

    __rdiv__ = __rtruediv__  # torch's name of the reflected division

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

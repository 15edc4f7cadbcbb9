"""Elementwise math and reductions beyond the core groups: inverse trigonometric and hyperbolic functions, atan2,
hypot, erfc, logit, xlogy, copysign, logaddexp, addcmul/addcdiv, fmax/fmin, nan_to_num, isclose; nansum,
nanmean, count_nonzero, aminmax, cumprod. Each is composed of the other ops, so autograd comes from theirs.
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import TYPE_CHECKING

import numpy as np

from lazygrad import dtype as dt

if TYPE_CHECKING:
    from lazygrad.tensor import Tensor
# at run time `Tensor` is the finished class, bound in by lazygrad.tensor (tensor_ops.bind_tensor_class)

MinMax = namedtuple("MinMax", ["min", "max"])


class MathOps:
    __slots__ = ()

    # --- inverse trigonometric and hyperbolic ------------------------------------------------------
    def _magnitude_and_sign(self) -> tuple:
        """(|x|, x < 0) with |x| taken by a where, so that its gradient at 0 is 1, not abs()'s 0: odd
        functions built on it keep their slope at the origin."""
        x = self._float()
        negative = x < 0
        return negative._select(-x, x), negative

    def atan(self) -> Tensor:
        # Cephes atanf: reduce |x| to [0, tan(pi/8)] around 0, pi/4 or pi/2, then a degree-9 odd polynomial
        # (relative error about 1e-7 in float32)
        a, negative = self._magnitude_and_sign()
        big, mid = a > 2.414213562373095, a > 0.4142135623730950
        safe = big._select(a, 1.0)  # -1/a is only taken where a is big: no inf (nor its NaN gradient) elsewhere
        t = big._select(-1 / safe, mid._select((a - 1) / (a + 1), a))
        z = t * t
        poly = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z
        y = big._select(math.pi / 2, mid._select(math.pi / 4, 0.0)) + poly * t + t
        return negative._select(-y, y)

    def atan2(self, other) -> Tensor:
        """atan2(self, other): the angle of the point (other, self), in (-pi, pi]."""
        y, x = self._float()._operand(other)
        ay, ax = y.abs(), x.abs()
        big, small = ay.maximum(ax), ay.minimum(ax)
        angle = (small / (big == 0)._select(1.0, big)).atan()  # in [0, pi/4]; atan2(0, 0) = 0
        angle = (ay > ax)._select(math.pi / 2 - angle, angle)
        angle = (x < 0)._select(math.pi - angle, angle)
        return (y < 0)._select(-angle, angle)

    arctan2 = atan2

    def asin(self) -> Tensor:
        x = self._float()
        out = x.atan2(((1 - x) * (1 + x)).sqrt())
        return (x.abs() > 1)._select(float("nan"), out)

    def acos(self) -> Tensor:
        x = self._float()
        out = ((1 - x) * (1 + x)).sqrt().atan2(x)
        return (x.abs() > 1)._select(float("nan"), out)

    def sinh(self) -> Tensor:
        x = self._float()
        return (x.exp() - (-x).exp()) * 0.5

    def cosh(self) -> Tensor:
        x = self._float()
        return (x.exp() + (-x).exp()) * 0.5

    def asinh(self) -> Tensor:
        a, negative = self._magnitude_and_sign()
        y = (a + (a * a + 1).sqrt()).log()
        return negative._select(-y, y)

    def acosh(self) -> Tensor:
        x = self._float()
        return (x + ((x - 1) * (x + 1)).sqrt()).log()

    def atanh(self) -> Tensor:
        x = self._float()
        return ((1 + x) / (1 - x)).log() * 0.5

    arcsin, arccos, arctan, arcsinh, arccosh, arctanh = asin, acos, atan, asinh, acosh, atanh

    def deg2rad(self) -> Tensor:
        return self._float() * (math.pi / 180)

    def rad2deg(self) -> Tensor:
        return self._float() * (180 / math.pi)

    def sinc(self) -> Tensor:
        x = self._float() * math.pi
        zero = x == 0
        return zero._select(1.0, x.sin() / zero._select(1.0, x))

    # --- other elementwise math --------------------------------------------------------------------
    def hypot(self, other) -> Tensor:
        x, y = self._operand(other)
        return (x * x + y * y).sqrt()

    def erfc(self) -> Tensor:
        return 1 - self.erf()

    def logit(self, eps=None) -> Tensor:
        x = self._float()
        if eps is not None:
            x = x.clamp(eps, 1 - eps)
        return (x / (1 - x)).log()

    def xlogy(self, other) -> Tensor:
        x, y = self._float()._operand(other)
        return ((x == 0) & (y == y))._select(0.0, x * y.log())  # 0 * log(0) is 0, NaN stays NaN

    def copysign(self, other) -> Tensor:
        x, y = self._float()._operand(other)
        negative = (y < 0) | ((y == 0) & (y.reciprocal() < 0))  # -0.0 is negative
        a = (x < 0)._select(-x, x)
        return negative._select(-a, a)

    def logaddexp(self, other) -> Tensor:
        a, b = self._float()._operand(other)
        m = a.maximum(b)
        same = a == b  # also both inf: log(e^inf + e^inf) is inf, where the formula gives NaN
        return same._select(a + math.log(2), m + (-(a - b).abs()).exp().log1p())

    def logaddexp2(self, other) -> Tensor:
        a, b = self._float()._operand(other)
        m = a.maximum(b)
        same = a == b
        return same._select(a + 1, m + ((-(a - b).abs()).exp2() + 1).log2())

    def addcmul(self, tensor1, tensor2, value=1) -> Tensor:
        return self + value * tensor1 * tensor2

    def addcdiv(self, tensor1, tensor2, value=1) -> Tensor:
        return self + value * tensor1 / tensor2

    def clamp_min(self, min) -> Tensor:
        return self.clamp(min=min)

    def clamp_max(self, max) -> Tensor:
        return self.clamp(max=max)

    def fmax(self, other) -> Tensor:
        a, b = self._operand(other)
        return a.isnan()._select(b, b.isnan()._select(a, a.maximum(b)))

    def fmin(self, other) -> Tensor:
        a, b = self._operand(other)
        return a.isnan()._select(b, b.isnan()._select(a, a.minimum(b)))

    def true_divide(self, other) -> Tensor:
        return self.div(other)

    def rsub(self, other, alpha=1) -> Tensor:
        x, y = self._operand(other)
        return y - alpha * x

    def positive(self) -> Tensor:
        return self

    def signbit(self) -> Tensor:
        if not self.dtype.is_float:
            return self < 0
        return (self < 0) | ((self == 0) & (self.reciprocal() < 0))

    def isposinf(self) -> Tensor:
        return self == float("inf") if self.dtype.is_float else self.zeros_like(dtype=dt.bool_)

    def isneginf(self) -> Tensor:
        return self == float("-inf") if self.dtype.is_float else self.zeros_like(dtype=dt.bool_)

    def heaviside(self, values) -> Tensor:
        x, v = self._operand(values)
        return (x == 0)._select(v, (x > 0).cast(v.dtype))

    def nan_to_num(self, nan: float = 0.0, posinf=None, neginf=None) -> Tensor:
        if not self.dtype.is_float:
            return self
        largest = float(np.finfo(self.dtype.np).max)
        out = self.isnan()._select(nan, self)
        out = (out == float("inf"))._select(largest if posinf is None else posinf, out)
        return (out == float("-inf"))._select(-largest if neginf is None else neginf, out)

    def isclose(self, other, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> Tensor:
        a, b = self._operand(other)
        if not a.dtype.is_float:
            return a == b
        close = (a - b).abs() <= atol + rtol * b.abs()
        close = close | (a == b)  # equal infinities
        return close | (a.isnan() & b.isnan()) if equal_nan else close

    # --- reductions --------------------------------------------------------------------------------
    def nansum(self, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
        x = self.isnan()._select(0.0, self) if self.dtype.is_float else self
        return x.sum(dim, keepdim, dtype=dtype)

    def nanmean(self, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
        x = self.cast(dtype) if dtype is not None else self
        present = x.isnan().logical_not()
        return x.nansum(dim, keepdim) / present.sum(dim, keepdim).cast(x.dtype)

    def count_nonzero(self, dim=None) -> Tensor:
        return (self != 0).sum(dim)

    def aminmax(self, *, dim=None, keepdim: bool = False):
        return MinMax(self.amin(dim, keepdim), self.amax(dim, keepdim))

    def cumprod(self, dim: int = 0, dtype=None) -> Tensor:
        if dtype is not None:
            return self.cast(dtype).cumprod(dim)
        if not self.dtype.is_float and self.dtype != dt.int64:
            return self.cast(dt.int64).cumprod(dim)
        if not self.ndim:
            self._dim(dim)
            return self * 1
        d = self._dim(dim)
        n = self.shape[d]
        if n == 0:  # no windows to multiply: the empty result, in the input's graph
            return self * 1
        x = self.transpose(d, -1)
        # row i multiplies the first i+1 elements: the sliding window of cumsum, padded with ones
        padded = x.pad((n - 1, 0), value=1)
        windows = padded.unsqueeze(-2).expand(*x.shape[:-1], n, 2 * n - 1)
        windows = windows.reshape(*x.shape[:-1], n * (2 * n - 1)).pad((0, n), value=1)
        windows = windows.reshape(*x.shape[:-1], n, 2 * n)[..., :n]
        return windows.prod(-1).transpose(d, -1)

    # --- scans as a masked reduce: row i of an (n, n) lower triangle holds the elements j <= i -------
    def _prefixes(self, dim: int, fill) -> tuple:
        """(x moved to the last dim and widened to (..., n, n) with fill where j > i, the mask j <= i)."""
        d = self._dim(dim)
        x = self.transpose(d, -1)
        n = x.shape[-1]
        earlier = Tensor.arange(n, device=self.device).reshape(1, n) <= Tensor.arange(n, device=self.device).reshape(
            n, 1
        )
        return earlier._select(x.unsqueeze(-2), fill), earlier

    def logcumsumexp(self, dim: int) -> Tensor:
        """log(cumsum(exp(x))) along dim, each prefix a stable logsumexp (no underflow where the values differ
        widely, as a shifted cumsum would have)."""
        if not self.ndim:
            self._dim(dim)
            return self._float() * 1
        x = self._float()
        prefixes, _ = x._prefixes(dim, float("-inf"))
        return prefixes.logsumexp(-1).transpose(self._dim(dim), -1)

    def cummax(self, dim: int):
        return self._cumulative_extreme(dim, largest=True)

    def cummin(self, dim: int):
        return self._cumulative_extreme(dim, largest=False)

    def _cumulative_extreme(self, dim: int, largest: bool):
        """(values, indices): the running max (min) along dim, the index of its last occurrence (as torch)."""
        if not self.ndim:
            self._dim(dim)
            return Extreme(self.clone(), Tensor.zeros((), dtype=dt.int64, device=self.device))
        d = self._dim(dim)
        fill = dt.lowest(self.dtype) if largest else -dt.lowest(self.dtype) if self.dtype.is_float else None
        if fill is None:  # an integer min: the dtype's largest value
            fill = int(np.iinfo(self.dtype.np).max) if self.dtype != dt.bool_ else True
        prefixes, earlier = self._prefixes(d, fill)
        values = prefixes.amax(-1) if largest else prefixes.amin(-1)
        n = prefixes.shape[-1]
        positions = Tensor.arange(n, device=self.device)
        hit = earlier & (prefixes == values.unsqueeze(-1))
        indices = hit._select(positions, -1).amax(-1)
        return Extreme(values.transpose(d, -1), indices.transpose(d, -1).cast(dt.int64))

    # --- norms -----------------------------------------------------------------------------------------
    def norm(self, p="fro", dim=None, keepdim: bool = False, dtype=None) -> Tensor:
        """torch.norm: the vector p-norm over dim (all elements by default); 'fro' is the 2-norm."""
        if isinstance(p, str) and p != "fro":
            raise NotImplementedError(f"norm: p={p!r} (the nuclear norm is a singular-value decomposition)")
        p = 2.0 if p in ("fro", None) else p
        x = self.cast(dtype) if dtype is not None else self._float()
        dims = tuple(range(x.ndim)) if dim is None else dim
        size = x.abs()
        if p == math.inf:
            return size.amax(dims, keepdim)
        if p == -math.inf:
            return size.amin(dims, keepdim)
        if p == 0:  # the count of nonzeros; in the input's graph with a zero gradient, as torch
            never = Tensor.full(size.shape, False, dt.bool_, size.device)
            return (size != 0).cast(x.dtype).sum(dims, keepdim) + never._select(size, 0.0).sum(dims, keepdim)
        if p == 1:
            return size.sum(dims, keepdim)
        if p == 2:
            return (x * x).sum(dims, keepdim).sqrt()
        return size.pow(p).sum(dims, keepdim).pow(1.0 / p)

    def dist(self, other, p: float = 2) -> Tensor:
        return (self - other).norm(p)

    def renorm(self, p: float, dim: int, maxnorm: float) -> Tensor:
        """Each slice along dim whose p-norm exceeds maxnorm scaled down to norm maxnorm (torch's 1e-7 guard)."""
        d = self._dim(dim)
        others = tuple(i for i in range(self.ndim) if i != d)
        norms = self.norm(p, others, keepdim=True) if others else self.abs()  # torch differentiates the norm too
        factor = (norms > maxnorm)._select(maxnorm / (norms + 1e-7), 1.0)
        return self * factor

    def ldexp(self, other) -> Tensor:
        """self * 2 ** other, in floating point."""
        other = other if isinstance(other, Tensor) else Tensor(other, device=self.device)
        return self._float() * other._float().exp2()

    def float_power(self, exponent) -> Tensor:
        """pow computed in float64 (torch's float_power), whatever the inputs' dtypes."""
        base = self.cast(dt.float64)
        exponent = exponent.cast(dt.float64) if isinstance(exponent, Tensor) else float(exponent)
        return base.pow(exponent)


Extreme = namedtuple("Extreme", ["values", "indices"])

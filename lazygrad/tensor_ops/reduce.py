"""Reductions: sum, mean, max/min and their arg forms, prod, var/std, any/all, logsumexp, softmax, cumsum, topk."""

from __future__ import annotations

import math
from collections import namedtuple
from typing import TYPE_CHECKING

from lazygrad import autograd
from lazygrad import dtype as dt
from lazygrad.codegen import layout
from lazygrad.graph import LazyBuffer
from lazygrad.ops import Op
from lazygrad.shape import describe_symbolic, prod, symbolic_dims
from lazygrad.symbolic import Node

if TYPE_CHECKING:
    from lazygrad.tensor import Tensor
# at run time `Tensor` is the finished class, bound in by lazygrad.tensor (tensor_ops.bind_tensor_class)

MaxMin = namedtuple("MaxMin", ["values", "indices"])


# (shape, dim as given, keepdim) -> (the axes reduced, whether any is longer than 1, the shape kept or None):
# ReduceOps._reduce's checked plan for a reduction that is not split and has no empty or symbolic dim
_REDUCE_PLANS: dict = {}


def _plain_dims(dim) -> bool:
    """Whether `dim` (as a reduction is given it) is None, an int or a tuple of ints: a key that means what it says."""
    if dim is None or type(dim) is int:
        return True
    return type(dim) is tuple and all(type(d) is int for d in dim)


def log_softmax_nodes(x: LazyBuffer, axis: int) -> LazyBuffer:
    """log_softmax of a float node over one of its several axes, on graph nodes: the nodes that ReduceOps.log_softmax
    makes with tensor ops, call for call (x - max, then minus log(sum(exp))), for callers that record no gradient."""
    shape, axes = x.shape, (axis,)
    peak = x.reduce(Op.RMAX, axes).expand(shape)
    shifted = LazyBuffer.elementwise(Op.ADD, (x, LazyBuffer.elementwise(Op.NEG, (peak,))))
    scaled = LazyBuffer.elementwise(Op.MUL, (shifted, LazyBuffer.const(1 / math.log(2), shape, x.dtype, x.device)))
    total = LazyBuffer.elementwise(Op.EXP2, (scaled,)).reduce(Op.SUM, axes)
    log_total = LazyBuffer.elementwise(Op.LOG2, (total,))
    log_total = LazyBuffer.elementwise(
        Op.MUL, (log_total, LazyBuffer.const(math.log(2), total.shape, x.dtype, x.device))
    )
    return LazyBuffer.elementwise(Op.ADD, (shifted, LazyBuffer.elementwise(Op.NEG, (log_total.expand(shape),))))


class ReduceOps:
    __slots__ = ()

    def _reduce(self, op: str, dim, keepdim: bool) -> Tensor:
        shape = self._lazydata.shape
        try:  # an eager step makes the same few reductions every step: their checked axes are remembered
            plan = _REDUCE_PLANS.get((shape, dim, keepdim))
        except TypeError:  # (a list of dims)
            plan = None
        if plan is not None:
            axes, reduces, kept = plan
            out = self._primitive(op, arg=axes) if reduces else self
            return out if kept is None else out._movement(Op.RESHAPE, kept)
        axes = self._axes(dim)
        x = self
        if 0 in shape:  # (checked only then: every eager step reduces)
            for a in axes:
                if shape[a] == 0 and op == Op.RMAX:
                    raise IndexError(f"max(): Expected reduction dim {a} to have non-zero size (shape {shape})")
            if op == Op.SUM and any(shape[a] == 0 for a in axes):
                # a sum over nothing is 0: pad each empty axis with one zero, so no kernel reduces an empty range
                x = x._movement(Op.PAD, tuple((0, 1 if i in axes and s == 0 else 0) for i, s in enumerate(shape)))
        # (a symbolic size is not split: its parts would have symbolic sizes of their own)
        parts = layout.split_reduce_parts(x.numel()) if len(axes) == len(shape) and not symbolic_dims(shape) else 1
        if parts > 1:
            out = x._split_reduce(op, parts).reshape((1,) * len(shape))
        else:
            out = x._primitive(op, arg=axes) if any(x.shape[a] != 1 for a in axes) else x
        # dropping the reduced ones: a valid reshape of a dense result, without reshape()'s checks
        kept = None if keepdim or not shape else tuple(s for i, s in enumerate(shape) if i not in axes)
        if parts == 1 and 0 not in shape and not symbolic_dims(shape) and _plain_dims(dim):
            if len(_REDUCE_PLANS) >= 4096:
                _REDUCE_PLANS.clear()
            _REDUCE_PLANS[(shape, dim, keepdim)] = (axes, any(shape[a] != 1 for a in axes), kept)
        return out if kept is None else out._movement(Op.RESHAPE, kept)

    def _split_reduce(self, op: str, parts: int) -> Tensor:
        """A big reduction to one value in two: `parts` partial results, then their reduction; the input is
        padded with the reduction's identity to a multiple of `parts`. (Why: codegen.layout.split_reduce_parts.)"""
        flat = self.reshape(-1)
        length = -(-flat.shape[0] // parts)
        if length * parts != flat.shape[0]:
            identity = dt.zero(self.dtype) if op == Op.SUM else dt.lowest(self.dtype)
            flat = flat.pad((0, length * parts - flat.shape[0]), value=identity)
        return flat.reshape(parts, length)._primitive(op, arg=(1,))._primitive(op, arg=(0,))

    def sum(self, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
        x = self
        if dtype is not None:
            x = x.cast(dtype)
        elif not x.dtype.is_float:
            x = x.cast(dt.int64)
        return x._reduce(Op.SUM, dim, keepdim)

    def mean(self, dim=None, keepdim: bool = False, dtype=None) -> Tensor:
        if dtype is not None:
            return self.cast(dtype).mean(dim, keepdim)
        if not self.dtype.is_float:
            raise RuntimeError(
                f"mean(): could not infer output dtype. Input dtype must be floating point, got {self.dtype.name}"
            )
        count = prod(self.shape[a] for a in self._axes(dim))
        if isinstance(count, Node):
            raise NotImplementedError(
                f"mean over a symbolic size {count} (shape {describe_symbolic(self.shape)}): the count is known "
                "only in kernels; divide the sum by it yourself"
            )
        return self.sum(dim, keepdim) * (1 / count if count else float("nan"))

    def _max_reduce(self, dim, keepdim) -> Tensor:
        if self.dtype == dt.bool_:
            return self.cast(dt.uint8)._reduce(Op.RMAX, dim, keepdim).cast(dt.bool_)
        return self._reduce(Op.RMAX, dim, keepdim)

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
        if not (self.requires_grad and autograd.is_grad_enabled()) or not self.ndim:
            return values
        d = self._dim(dim)
        n = self.shape[d]
        idx = indices if keepdim else indices.unsqueeze(d)
        positions = Tensor.arange(n, device=self.device).reshape([n if i == d else 1 for i in range(self.ndim)])
        return (idx == positions)._select(self, 0.0).sum(d, keepdim)

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
        if not self.ndim:  # a 0-d tensor's only element is at index 0
            return Tensor.zeros((), dtype=dt.int64, device=self.device)
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

    def var(self, dim=None, unbiased=None, keepdim: bool = False, *, correction=None) -> Tensor:
        """PyTorch's overloads: var(unbiased: bool), var(dim, unbiased, keepdim), var(dim, *, correction, keepdim)."""
        if isinstance(dim, bool):
            dim, unbiased = None, dim  # var(True): a bool is torch's `unbiased`, never a dim
        if correction is None:
            correction = 1 if unbiased is None or unbiased else 0
        n = prod(self.shape[a] for a in self._axes(dim))
        centered = self - self.mean(dim, keepdim=True)
        return (centered * centered).sum(dim, keepdim) / max(n - correction, 0)

    def std(self, dim=None, unbiased=None, keepdim: bool = False, *, correction=None) -> Tensor:
        return self.var(dim, unbiased, keepdim, correction=correction).sqrt()

    def var_mean(self, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
        if isinstance(dim, bool):
            dim, unbiased = None, dim
        return self.var(dim, unbiased, keepdim, correction=correction), self.mean(dim, keepdim)

    def std_mean(self, dim=None, unbiased=None, keepdim: bool = False, *, correction=None):
        if isinstance(dim, bool):
            dim, unbiased = None, dim
        return self.std(dim, unbiased, keepdim, correction=correction), self.mean(dim, keepdim)

    def any(self, dim=None, keepdim: bool = False) -> Tensor:
        if self.ndim and any(self.shape[a] == 0 for a in self._axes(dim)):
            # nothing is true in an empty range (rmax would refuse it)
            return self.bool().sum(dim, keepdim) != 0
        return self.bool()._max_reduce(dim, keepdim)

    def all(self, dim=None, keepdim: bool = False) -> Tensor:
        return self.bool().logical_not().any(dim, keepdim).logical_not()

    def logsumexp(self, dim=None, keepdim: bool = False) -> Tensor:
        if not self.dtype.is_float:
            return self._float().logsumexp(dim, keepdim)
        m = self.amax(dim, keepdim=True).detach()
        m = (m.abs() == float("inf"))._select(m.zeros_like(), m)  # all -inf rows stay -inf, without NaN
        out = (self - m).exp().sum(dim, keepdim=True).log() + m
        return out if keepdim else out.squeeze(self._axes(dim)) if self.ndim else out

    def softmax(self, dim: int = -1, dtype=None) -> Tensor:
        x = self.cast(dtype) if dtype is not None else self._float()
        if x.numel() == 0:  # nothing to normalize (amax of an empty dim would raise): the empty result
            return x * 1
        e = (x - x.amax(dim, keepdim=True).detach()).exp()
        return e / e.sum(dim, keepdim=True)

    def log_softmax(self, dim: int = -1, dtype=None) -> Tensor:
        x = self.cast(dtype) if dtype is not None else self._float()
        if x.numel() == 0:  # nothing to normalize (amax of an empty dim would raise): the empty result
            return x * 1
        if x.ndim > 1 and not (x.requires_grad and autograd.is_grad_enabled()) and not symbolic_dims(x.shape):
            # nothing recorded (a composite's forward, no_grad): the same nodes, without a tensor per op
            return Tensor._wrap(log_softmax_nodes(x._lazydata, x._dim(dim)))
        shifted = x - x.amax(dim, keepdim=True).detach()
        return shifted - shifted.exp().sum(dim, keepdim=True).log()

    def cumsum(self, dim: int = 0, dtype=None) -> Tensor:
        if dtype is not None:
            return self.cast(dtype).cumsum(dim)
        if not self.dtype.is_float and self.dtype != dt.int64:
            return self.cast(dt.int64).cumsum(dim)  # as torch: integer and bool running sums are int64
        if not self.ndim:
            self._dim(dim)
            return self
        d = self._dim(dim)
        n = self.shape[d]
        x = self.transpose(d, -1)
        # row i sums the first i+1 elements: the row masked by a lower triangle, reduced
        index = Tensor.arange(n, device=self.device)
        upto = (index.unsqueeze(0) <= index.unsqueeze(1)).cast(x.dtype)  # [i, j]: j <= i
        return (x.unsqueeze(-2) * upto).sum(-1).transpose(d, -1)

    # ---- issue 16 (transformer workload): topk ----

    def topk(self, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
        """The k largest (or smallest) values along dim and their indices, in order, as torch.topk. Each element's
        rank is the number of elements that come before it (larger, or equal and at a lower index, so ties keep
        index order; NaN is the largest, as torch), an (n x n) comparison: exact and differentiable, meant for dims
        of up to a few thousand (a vocabulary of characters or tokens when sampling), not for sorting large dims."""
        if not self.ndim:  # a 0-d input: the same on one element (dim 0 or -1, as torch)
            if dim not in (0, -1):
                raise IndexError(f"topk: dimension out of range (expected to be in range of [-1, 0], but got {dim})")
            values, indices = self.reshape(1).topk(k, 0, largest, sorted)
            return MaxMin(values.reshape(()), indices.reshape(())) if k == 1 else MaxMin(values, indices)
        d = self._dim(dim)
        n = self.shape[d]
        if not 0 <= k <= n:
            raise RuntimeError(f"topk: k ({k}) is out of range for dimension {d} of size {n} (shape {self.shape})")
        x = self.transpose(d, -1)
        rank, index = x._ranks(descending=largest)
        picks = rank.unsqueeze(-1) == Tensor.arange(k, device=self.device)  # (..., n, k)
        # where, not a product with a one-hot: inf * 0 and NaN * 0 would be NaN
        values = picks._select(x.unsqueeze(-1), Tensor.zeros((), dtype=x.dtype, device=self.device)).sum(-2)
        indices = picks._select(index.unsqueeze(-1), 0).sum(-2)
        values = values.cast(self.dtype)
        return MaxMin(values.transpose(d, -1), indices.transpose(d, -1))

    def sort(self, dim: int = -1, descending: bool = False, *, stable: bool = False):
        """(values, indices) along dim in order, as torch.sort: NaN counts as the largest value, equal elements keep
        their index order (a stable sort, which torch's stable=False allows too). Each element's rank is the number
        of elements that come before it, an (n x n) comparison like topk's: exact and differentiable, for dims of
        up to a few thousand."""
        if not self.ndim:
            return MaxMin(self.clone(), Tensor.zeros((), dtype=dt.int64, device=self.device))
        d = self._dim(dim)
        x = self.transpose(d, -1)
        rank, index = x._ranks(descending)
        picks = rank.unsqueeze(-1) == index  # (..., n elements, n positions)
        # where, not a product with a one-hot: inf * 0 and NaN * 0 would be NaN
        values = picks._select(x.unsqueeze(-1), Tensor.zeros((), dtype=x.dtype, device=self.device)).sum(-2)
        indices = picks._select(index.unsqueeze(-1), 0).sum(-2)
        return MaxMin(values.cast(self.dtype).transpose(d, -1), indices.transpose(d, -1))

    def _ranks(self, descending: bool) -> tuple:
        """(each element's position in the sorted last dim, arange(n)): the number of elements that come before it,
        larger (descending) or smaller, or equal at a lower index (stable). NaN counts as the largest value."""
        n = self.shape[-1]
        key = self.cast(dt.uint8) if self.dtype == dt.bool_ else self
        mine, other = key.unsqueeze(-1), key.unsqueeze(-2)  # (..., n, 1) against (..., 1, n)
        before = other > mine if descending else other < mine  # [.., i, j]: element j comes before element i
        same = other == mine
        if key.dtype.is_float:  # NaN is the largest: first when descending, last otherwise
            nan_mine, nan_other = mine.isnan(), other.isnan()
            before = before | ((nan_other & ~nan_mine) if descending else (nan_mine & ~nan_other))
            same = same | (nan_mine & nan_other)
        index = Tensor.arange(n, device=self.device)
        earlier = index.unsqueeze(0) < index.unsqueeze(1)  # [i, j]: j has a lower index than i
        return (before | (same & earlier)).sum(-1), index  # the ranks: a permutation of 0..n-1

    def argsort(self, dim: int = -1, descending: bool = False, stable: bool = False) -> Tensor:
        return self.sort(dim, descending, stable=stable).indices

    def msort(self) -> Tensor:
        return self.sort(0).values

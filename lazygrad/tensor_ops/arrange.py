"""Shape and selection ops composed of views and the core ops: diagonal, diag, trace, roll, movedim, narrow,
select, tile, the stacks (hstack, vstack, dstack, column_stack), atleast_Nd, fliplr/flipud, rot90, index_select,
scatter/scatter_add, the *_as and new_* forms; and the products outer, mv, bmm, addmm, addmv, baddbmm, addr, kron.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lazygrad import dtype as dt
from lazygrad.ops import Op
from lazygrad.shape import prod
from lazygrad.tensor_ops.bounds import check_indices
from lazygrad.tensor_ops.creation import integer_linspace_points

if TYPE_CHECKING:
    from lazygrad.tensor import Tensor
# at run time `Tensor` is the finished class, bound in by lazygrad.tensor (tensor_ops.bind_tensor_class)


class ArrangeOps:
    __slots__ = ()

    # --- diagonals ----------------------------------------------------------------------------------
    def diagonal(self, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Tensor:
        d1, d2 = self._dim(dim1), self._dim(dim2)
        if d1 == d2:
            raise RuntimeError(f"diagonal dimensions cannot be identical {dim1}, {dim2}")
        rest = [i for i in range(self.ndim) if i not in (d1, d2)]
        x = self.permute(*rest, d1, d2)
        rows, cols = x.shape[-2], x.shape[-1]
        # the offset-th diagonal starts at (max(-offset, 0), max(offset, 0))
        x = x[..., max(-offset, 0) :, max(offset, 0) :]
        n = max(0, min(x.shape[-2], x.shape[-1]))
        batch = x.shape[:-2]
        if n == 0:
            return Tensor.zeros(*batch, 0, dtype=self.dtype, device=self.device)
        x = x[..., :n, :n]
        # a row of n+1 elements per step: flatten, pad by n, and every (n+1)-th element is on the diagonal. Movement
        # primitives, not reshape() and pad() (which copy where PyTorch would): the diagonal is a view, as torch's
        flat = x._movement(Op.RESHAPE, (*batch, n * n))._movement(Op.PAD, ((0, 0),) * len(batch) + ((0, n),))
        del rows, cols
        return flat._movement(Op.RESHAPE, (*batch, n, n + 1))[..., 0]

    def diag(self, diagonal: int = 0) -> Tensor:
        if self.ndim == 2:
            return self.diagonal(diagonal)
        if self.ndim != 1:
            raise RuntimeError(f"diag(): Supports 1D or 2D tensors. Got {self.ndim}D (shape {self.shape})")
        n, k = self.shape[0], abs(diagonal)
        size = n + k
        eye = Tensor.eye(n, dtype=dt.bool_, device=self.device)
        square = eye._select(self.unsqueeze(0), Tensor.zeros((), dtype=self.dtype, device=self.device))
        # place the n x n block so its diagonal is the `diagonal`-th of the size x size result
        top, left = max(-diagonal, 0), max(diagonal, 0)
        return square.pad((left, size - n - left, top, size - n - top))

    def diag_embed(self, offset: int = 0, dim1: int = -2, dim2: int = -1) -> Tensor:
        """The last dim of self as the offset-th diagonal of new (dim1, dim2) matrices, zero elsewhere."""
        n = self.shape[-1] if self.ndim else 1
        size, k = n + abs(offset), abs(offset)
        eye = Tensor.eye(n, dtype=dt.bool_, device=self.device)
        square = eye._select(self.unsqueeze(-2), Tensor.zeros((), dtype=self.dtype, device=self.device))
        top, left = max(-offset, 0), max(offset, 0)
        out = square.pad((left, size - n - left, top, size - n - top))  # (..., size, size), rows then columns
        del k
        rank = out.ndim
        d1, d2 = dim1 % rank, dim2 % rank
        if d1 == d2:
            raise RuntimeError(f"diag_embed: dim1 and dim2 cannot be identical ({dim1}, {dim2})")
        rest = iter(range(rank - 2))
        order = [rank - 2 if i == d1 else rank - 1 if i == d2 else next(rest) for i in range(rank)]
        return out.permute(*order)

    def diagflat(self, offset: int = 0) -> Tensor:
        return self.flatten().diag(offset)

    def trace(self) -> Tensor:
        if self.ndim != 2:
            raise RuntimeError(f"trace: expected a matrix, but got tensor with dim {self.ndim}")
        return self.diagonal().sum()

    # --- moving and selecting -----------------------------------------------------------------------
    def roll(self, shifts, dims=None) -> Tensor:
        if dims is None:
            return self.flatten().roll(shifts, 0).reshape(self.shape)
        shifts = shifts if isinstance(shifts, (tuple, list)) else (shifts,)
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        if len(shifts) != len(dims):
            raise RuntimeError(f"shifts and dimensions must align. shifts: {len(shifts)}, dims:{len(dims)}")
        x = self
        for shift, dim in zip(shifts, dims):
            d = x._dim(dim)
            n = x.shape[d]
            if n == 0:
                continue
            s = shift % n
            if s:
                head, tail = x.split([n - s, s], d)
                x = Tensor.cat([tail, head], d)
        return x.clone() if x is self else x

    def movedim(self, source, destination) -> Tensor:
        source = [self._dim(s) for s in (source if isinstance(source, (tuple, list)) else (source,))]
        destination = [
            self._dim(d) for d in (destination if isinstance(destination, (tuple, list)) else (destination,))
        ]
        order = [None] * self.ndim
        for s, d in zip(source, destination):
            order[d] = s
        rest = iter(i for i in range(self.ndim) if i not in source)
        return self.permute(*[o if o is not None else next(rest) for o in order])

    moveaxis = movedim

    def narrow(self, dim: int, start, length: int) -> Tensor:
        d = self._dim(dim)
        start = int(start) % self.shape[d] if int(start) < 0 else int(start)
        return self.shrink([(start, start + length) if i == d else (0, s) for i, s in enumerate(self.shape)])

    def unfold(self, dimension: int, size: int, step: int) -> Tensor:
        """Windows of `size` elements every `step` along `dimension`, as torch.Tensor.unfold: that dim becomes the
        window count and a last dim of `size` is added. A view (the window primitive along the last dim), as
        torch's: in-place updates of it reach its base where its windows do not overlap (step >= size)."""
        if step <= 0:
            raise RuntimeError(f"unfold: step must be positive, got {step}")
        x = self.reshape(1) if self.ndim == 0 else self  # torch treats a 0-d tensor as one element along dim 0
        d = x._dim(dimension)
        length = x.shape[d]
        if not 0 <= size <= length:
            raise RuntimeError(f"unfold: size {size} does not fit dimension {d} of size {length} (shape {self.shape})")
        if size == 0:  # empty windows: nothing to view
            shape = x.shape[:d] + ((length - size) // step + 1,) + x.shape[d + 1 :] + (0,)
            return Tensor.full(shape, 0, self.dtype, self.device)
        windows = x.movedim(d, -1)._movement(Op.WINDOW, ((size,), (step,), (1,)))  # (..., count, size)
        windows = windows.movedim(-2, d)  # (..., count at d, ..., size)
        return windows.reshape(size) if self.ndim == 0 else windows

    def select(self, dim: int, index: int) -> Tensor:
        d = self._dim(dim)
        return self[(slice(None),) * d + (index,)]

    def narrow_copy(self, dim: int, start, length: int) -> Tensor:
        return self.narrow(dim, start, length).clone()

    def split_with_sizes(self, split_sizes, dim: int = 0) -> tuple:
        return self.split(list(split_sizes), dim)

    def unsafe_split(self, split_size, dim: int = 0) -> tuple:
        return self.split(split_size, dim)  # torch's unsafe forms skip a view check that lazygrad has no need of

    def unsafe_chunk(self, chunks: int, dim: int = 0) -> tuple:
        return self.chunk(chunks, dim)

    def tensor_split(self, indices_or_sections, dim: int = 0) -> tuple:
        """Split at the given indices, or into n parts whose sizes differ by at most one (the first larger)."""
        d = self._dim(dim)
        n = self.shape[d]
        if isinstance(indices_or_sections, Tensor):
            indices_or_sections = indices_or_sections.tolist()
        if isinstance(indices_or_sections, int):
            sections = indices_or_sections
            if sections <= 0:
                raise RuntimeError(f"tensor_split: number of sections must be larger than 0, got {sections}")
            sizes = [n // sections + (1 if i < n % sections else 0) for i in range(sections)]
            bounds = [sum(sizes[:i]) for i in range(sections + 1)]
        else:
            bounds = [0, *indices_or_sections, n]
        out = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            start, end = min(max(start, 0), n), min(max(end, 0), n)
            out.append(self.narrow(d, start, max(end - start, 0)))
        return tuple(out)

    def hsplit(self, sections) -> tuple:
        if self.ndim < 1:
            raise RuntimeError("torch.hsplit requires a tensor with at least 1 dimension, but got a 0-d tensor")
        return self._split_evenly(sections, 1 if self.ndim > 1 else 0, "hsplit")

    def vsplit(self, sections) -> tuple:
        if self.ndim < 2:
            raise RuntimeError(f"torch.vsplit requires a tensor with at least 2 dimensions, got shape {self.shape}")
        return self._split_evenly(sections, 0, "vsplit")

    def dsplit(self, sections) -> tuple:
        if self.ndim < 3:
            raise RuntimeError(f"torch.dsplit requires a tensor with at least 3 dimensions, got shape {self.shape}")
        return self._split_evenly(sections, 2, "dsplit")

    def _split_evenly(self, sections, dim: int, name: str) -> tuple:
        if isinstance(sections, int) and self.shape[dim] % sections:
            raise RuntimeError(
                f"torch.{name} attempted to split along dimension {dim} of shape {self.shape} "
                f"into {sections} equal parts"
            )
        return self.tensor_split(sections, dim)

    def diff(self, n: int = 1, dim: int = -1, prepend=None, append=None) -> Tensor:
        """The n-th forward difference along dim, after prepend and append are concatenated."""
        d = self._dim(dim)
        if n == 0:  # torch: the input itself, prepend and append ignored
            return self.clone()
        x = self
        if prepend is not None or append is not None:
            parts = [
                t if t.ndim else t.reshape([1 if i == d else s for i, s in enumerate(self.shape)])
                for t in (prepend, self, append)
                if t is not None
            ]
            x = Tensor.cat(parts, dim=d)
        for _ in range(n):
            length = x.shape[d]
            if length == 0:
                break
            later, earlier = x.narrow(d, 1, length - 1), x.narrow(d, 0, length - 1)
            x = later.logical_xor(earlier) if x.dtype == dt.bool_ else later - earlier
        return x

    def take(self, index: Tensor) -> Tensor:
        """The elements of the flattened input at these indices (negative from the end), in index's shape."""
        check_indices(index, self.numel(), "take", None, negative=True)
        return self.reshape(-1)._gather_index(index)

    def sum_to_size(self, *size) -> Tensor:
        """Sums over the dims that broadcasting self from `size` would have expanded."""
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        lead = self.ndim - len(size)
        dims = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(size) if s == 1 and self.shape[lead + i] != 1)
        if not size:  # torch's sum_to: an empty size is a full sum (a bool input comes back as int64)
            return self.sum()
        if not dims:  # nothing to sum: torch returns the input itself (a bool input stays bool)
            return self
        return self.sum(dims, keepdim=True).reshape(size)

    def vdot(self, other: Tensor) -> Tensor:
        if self.ndim != 1 or other.ndim != 1:
            raise RuntimeError(f"1D tensors expected, but got {self.ndim}D and {other.ndim}D tensors")
        return (self * other).sum()

    def cross(self, other: Tensor, dim=None) -> Tensor:
        """The cross product of 3-vectors along dim (torch.cross's default: the first dim of size 3)."""
        a, b = self, other
        if a.shape != b.shape:
            shape = np.broadcast_shapes(a.shape, b.shape)
            a, b = a.expand(*shape), b.expand(*shape)
        d = next((i for i, s in enumerate(a.shape) if s == 3), None) if dim is None else a._dim(dim)
        if d is None or a.shape[d] != 3:
            raise RuntimeError(f"cross: no dimension of size 3 in input of shapes {self.shape} and {other.shape}")
        a0, a1, a2 = a.unbind(d)
        b0, b1, b2 = b.unbind(d)
        return Tensor.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=d)

    def equal(self, other: Tensor) -> bool:
        """True when both have the same shape and elements (a Python bool, read on the host)."""
        return self.shape == other.shape and bool((self == other).all().item())

    def _index_along(self, dim: int, index: Tensor, source: Tensor, op: str) -> tuple:
        """(the sum of source's slices sent to self's positions index along dim, where any was sent)."""
        d = self._dim(dim)
        check_indices(index, self.shape[d], op, d, negative=False)
        index = index.reshape(-1) if index.ndim else index.reshape(1)
        source = source if source.ndim else source.reshape(1)
        full = index.reshape([-1 if i == d else 1 for i in range(source.ndim)]).expand(*source.shape)
        return self._scatter_one_hot(d, full, source)

    def index_add(self, dim: int, index: Tensor, source: Tensor, *, alpha=1) -> Tensor:
        """self with source's slices added at positions index along dim (repeated indices accumulate)."""
        if not self.ndim:
            return self + alpha * source.reshape(())
        added, _ = self._index_along(dim, index, source, "index_add")
        return self + added * alpha if alpha != 1 else self + added

    def index_copy(self, dim: int, index: Tensor, source: Tensor) -> Tensor:
        """self with its slices at positions index along dim replaced by source's (indices must be unique)."""
        if not self.ndim:
            return source.reshape(()).cast(self.dtype)
        copied, hit = self._index_along(dim, index, source, "index_copy")
        return hit._select(copied, self)

    def index_fill(self, dim: int, index: Tensor, value) -> Tensor:
        """self with its slices at positions index along dim set to value."""
        d = self._dim(dim) if self.ndim else 0
        n = self.shape[d] if self.ndim else 1
        check_indices(index, n, "index_fill", d, negative=True)
        index = (index < 0)._select(index + n, index)  # negative indices count from the end, as in torch
        chosen = (index.reshape(-1, 1) == Tensor.arange(n, device=self.device).reshape(1, n)).any(0)
        chosen = chosen.reshape([-1 if i == d else 1 for i in range(self.ndim)]) if self.ndim else chosen.reshape(())
        value = value.reshape(()) if isinstance(value, Tensor) else value
        fill = value.cast(self.dtype) if isinstance(value, Tensor) else Tensor.full((), value, self.dtype, self.device)
        return chosen._select(fill, self)

    def char(self) -> Tensor:
        return self.cast(dt.int8)

    def short(self) -> Tensor:
        return self.cast(dt.int16)

    def tile(self, dims) -> Tensor:
        dims = tuple(dims)
        return self.repeat((1,) * (self.ndim - len(dims)) + dims) if self.ndim >= len(dims) else self.repeat(dims)

    def fliplr(self) -> Tensor:
        return self.flip(1)

    def flipud(self) -> Tensor:
        return self.flip(0)

    def rot90(self, k: int = 1, dims=(0, 1)) -> Tensor:
        d0, d1 = dims
        k %= 4
        if k == 1:
            return self.flip(d1).transpose(d0, d1)
        if k == 2:
            return self.flip((d0, d1))
        if k == 3:
            return self.transpose(d0, d1).flip(d1)
        return self.clone()  # a copy in the input's dtype (a bool stays bool)

    def ravel(self) -> Tensor:
        return self.reshape(-1)

    def view_as(self, other: Tensor) -> Tensor:
        return self.view(other.shape)

    def reshape_as(self, other: Tensor) -> Tensor:
        return self.reshape(other.shape)

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        d = self._dim(dim)
        if index.ndim > 1:
            raise IndexError(f"index_select(): Index is supposed to be a vector, got shape {index.shape}")
        check_indices(index, self.shape[d] if self.ndim else 1, "index_select", d, negative=False)
        if not self.ndim:
            return self.clone()
        return self.transpose(0, d)._gather_index(index.reshape(-1)).transpose(0, d)

    def _scatter_one_hot(self, dim: int, index: Tensor, src) -> Tensor:
        """Per position of self along dim, the sum of the src values whose index points there (and where any)."""
        if self.dtype == dt.bool_:  # the one-hot product is arithmetic
            contribution, hit = self.cast(dt.uint8)._scatter_one_hot(dim, index, src)
            return contribution.cast(dt.bool_), hit
        d = self._dim(dim)
        n = self.shape[d]
        if not isinstance(src, Tensor):
            src = Tensor.full(index.shape, src, self.dtype, self.device)
        src = src.shrink([(0, s) for s in index.shape]).cast(self.dtype)
        # one_hot[..., j] (a new last axis): index points at position j of self's dim d
        one_hot = index.unsqueeze(-1) == Tensor.arange(n, device=self.device)
        contribution = (one_hot.cast(self.dtype) * src.unsqueeze(-1)).sum(d)  # index's dim d reduced
        hit = one_hot.cast(dt.int64).sum(d) > 0
        # the reduced axis is gone and the positions are last: move them back to dim d, pad to self's shape
        contribution, hit = contribution.movedim(-1, d), hit.movedim(-1, d)
        pads = [(0, s - c) for s, c in zip(self.shape, contribution.shape)]
        flat = [p for pair in reversed(pads) for p in pair]
        return contribution.pad(flat), hit.pad(flat, value=False)

    def scatter_add(self, dim: int, index: Tensor, src: Tensor) -> Tensor:
        if not self.ndim:  # a 0-d self: the same on one element
            self._dim(dim)
            return self.reshape(1).scatter_add(0, index.reshape(-1), src.reshape(-1)).reshape(())
        d = self._dim(dim) if self.ndim else 0
        check_indices(index, self.shape[d] if self.ndim else 1, "scatter_add", d, negative=False)
        contribution, _ = self._scatter_one_hot(dim, index, src)
        return self | contribution if self.dtype == dt.bool_ else self + contribution

    def scatter(self, dim: int, index: Tensor, src=None, value=None, reduce=None) -> Tensor:
        """scatter with unique indices (with duplicates, torch leaves which write wins unspecified); reduce="add"
        or "multiply" combines each write with self's value (and with the other writes to the same position)."""
        src = value if src is None else src
        if reduce not in (None, "add", "multiply"):
            raise RuntimeError(f"scatter: reduce argument must be either add or multiply, got {reduce!r}")
        if not isinstance(src, Tensor):
            src = Tensor.full(index.shape, src, self.dtype, self.device)
        if not self.ndim:  # a 0-d self: the same on one element
            self._dim(dim)
            return self.reshape(1).scatter(0, index.reshape(-1), src.reshape(-1), reduce=reduce).reshape(())
        if reduce == "add":
            return self.scatter_add(dim, index, src)
        if reduce == "multiply":
            return self.scatter_reduce(dim, index, src, "prod")
        d = self._dim(dim) if self.ndim else 0
        check_indices(index, self.shape[d] if self.ndim else 1, "scatter", d, negative=False)
        contribution, hit = self._scatter_one_hot(dim, index, src)
        return hit._select(contribution, self)

    def scatter_reduce(self, dim: int, index: Tensor, src: Tensor, reduce: str, *, include_self: bool = True):
        """self with src's values reduced into the positions index names along dim (torch.scatter_reduce):
        reduce is "sum", "prod", "mean", "amax" or "amin"; include_self counts self's value as one of them.
        Positions no index names keep self's value. Integer "mean" rounds down, as torch."""
        if reduce not in ("sum", "prod", "mean", "amax", "amin"):
            raise RuntimeError(f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce}")
        if index.ndim != self.ndim and not (index.ndim <= 1 and self.ndim <= 1):
            raise RuntimeError(
                f"Index tensor must have the same number of dimensions as self (self {self.shape}, index {index.shape})"
            )
        if not self.ndim:
            flat = self.reshape(1)
            return flat.scatter_reduce(0, index.reshape(-1), src.reshape(-1), reduce, include_self=include_self)[0]
        d = self._dim(dim)
        n = self.shape[d]
        check_indices(index, n, "scatter_reduce", d, negative=False)
        src = src.shrink([(0, s) for s in index.shape]).cast(self.dtype)
        # one_hot[..., j] (a new last axis): index points at position j of dim d; reduced over index's dim d
        one_hot = index.unsqueeze(-1) == Tensor.arange(n, device=self.device)
        count = one_hot.cast(dt.int64).sum(d)
        values = src.unsqueeze(-1)
        if reduce in ("sum", "mean"):
            reduced = one_hot._select(values, Tensor.zeros((), dtype=self.dtype, device=self.device)).sum(d)
        elif reduce == "prod":
            reduced = one_hot._select(values, Tensor.ones((), dtype=self.dtype, device=self.device)).prod(d)
        else:
            identity = dt.lowest(self.dtype) if reduce == "amax" else _highest(self.dtype)
            filler = Tensor.full((), identity, self.dtype, self.device)
            reduced = one_hot._select(values, filler)
            reduced = reduced.amax(d) if reduce == "amax" else reduced.amin(d)
        # back to self's layout: positions last -> dim d; self's region that the index covers
        reduced, count = reduced.movedim(-1, d), count.movedim(-1, d)
        region = self.shrink([(0, n) if i == d else (0, s) for i, s in enumerate(index.shape)])
        if include_self:
            if reduce == "sum":
                reduced = region + reduced
            elif reduce == "prod":
                reduced = region * reduced
            elif reduce == "mean":
                reduced, count = region + reduced, count + 1
            else:
                reduced = region.maximum(reduced) if reduce == "amax" else region.minimum(reduced)
        # padded to self's shape before the mean divides (written so while LLVM miscompiled an integer division
        # under a pad; the backends now define division by zero, tests/test_ops.py)
        pads = [p for size, have in reversed(list(zip(self.shape, reduced.shape))) for p in (0, size - have)]
        reduced, count = reduced.pad(pads), count.pad(pads)
        if reduce == "mean":
            divisor = count.maximum(1).cast(self.dtype)
            reduced = reduced / divisor if self.dtype.is_float else reduced.div(divisor, rounding_mode="floor")
        hit = count > (1 if include_self and reduce == "mean" else 0)
        return hit._select(reduced.cast(self.dtype), self)

    # --- new tensors like this one ------------------------------------------------------------------
    def new_zeros(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.zeros(*size, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    def new_ones(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.ones(*size, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    def new_empty(self, *size, dtype=None, device=None, requires_grad=False) -> Tensor:
        return self.new_zeros(*size, dtype=dtype, device=device, requires_grad=requires_grad)

    def new_full(self, size, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.full(size, fill_value, dtype or self.dtype, device or self.device, requires_grad)

    def new_tensor(self, data, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor(data, dtype=dtype or self.dtype, device=device or self.device, requires_grad=requires_grad)

    # --- products -----------------------------------------------------------------------------------
    def outer(self, vec2: Tensor) -> Tensor:
        return self.unsqueeze(-1) * vec2.unsqueeze(0)

    ger = outer

    def mv(self, vec: Tensor) -> Tensor:
        return self.matmul(vec)

    def bmm(self, mat2: Tensor) -> Tensor:
        if self.ndim != 3 or mat2.ndim != 3:
            raise RuntimeError(f"batch1 and batch2 must be 3D tensors, got {self.shape} and {mat2.shape}")
        return self.matmul(mat2)

    def addmm(self, mat1: Tensor, mat2: Tensor, *, beta=1, alpha=1) -> Tensor:
        return _scaled_sum(self, mat1.mm(mat2), beta, alpha)

    def addmv(self, mat: Tensor, vec: Tensor, *, beta=1, alpha=1) -> Tensor:
        return _scaled_sum(self, mat.mv(vec), beta, alpha)

    def baddbmm(self, batch1: Tensor, batch2: Tensor, *, beta=1, alpha=1) -> Tensor:
        return _scaled_sum(self, batch1.bmm(batch2), beta, alpha)

    def addbmm(self, batch1: Tensor, batch2: Tensor, *, beta=1, alpha=1) -> Tensor:
        return _scaled_sum(self, batch1.bmm(batch2).sum(0), beta, alpha)

    def addr(self, vec1: Tensor, vec2: Tensor, *, beta=1, alpha=1) -> Tensor:
        if not self.dtype.is_float:  # torch's rule for addr alone (addmm and the others truncate instead)
            for name, scalar in (("beta", beta), ("alpha", alpha)):
                if isinstance(scalar, float):
                    raise RuntimeError(
                        f"addr: for integral input tensors ({self.dtype}), argument {name} must not be a floating "
                        f"point number (got {scalar})"
                    )
        return _scaled_sum(self, vec1.outer(vec2), beta, alpha)

    def inner(self, other: Tensor) -> Tensor:
        if not self.ndim or not other.ndim:
            return self * other
        return (self.reshape(*self.shape, *(1,) * (other.ndim - 1)) * other.movedim(-1, 0)).sum(self.ndim - 1)

    def kron(self, other: Tensor) -> Tensor:
        n = max(self.ndim, other.ndim)
        a = self.reshape((1,) * (n - self.ndim) + self.shape)
        b = other.reshape((1,) * (n - other.ndim) + other.shape)
        # a[i] * b[j] at (i, j) interleaved, then each pair of axes merged
        out = a.reshape(tuple(v for s in a.shape for v in (s, 1))) * b.reshape(
            tuple(v for s in b.shape for v in (1, s))
        )
        return out.reshape(tuple(sa * sb for sa, sb in zip(a.shape, b.shape)))


def _scaled_sum(input: Tensor, product: Tensor, beta, alpha) -> Tensor:
    """beta * input + alpha * product, as torch's addmm family: the scalars take the result's dtype (truncated
    toward zero for integers, so an int64 result stays int64; truth values for bool, where + is `or`)."""
    if product.dtype == dt.bool_:
        scaled = product if alpha else product.zeros_like()
        return scaled if not beta else input.logical_or(scaled)
    if not product.dtype.is_float:
        beta, alpha = int(beta), int(alpha)
    scaled = product if alpha == 1 else product * alpha
    if beta == 0:  # input is ignored, NaN and inf included (torch's rule)
        return scaled
    return (input if beta == 1 else input * beta) + scaled


def stack_functions() -> dict:
    """hstack, vstack, dstack, column_stack, atleast_1d/2d/3d, broadcast_tensors, meshgrid: functions of
    several tensors, exported by lazygrad (torch.hstack...)."""

    def atleast_1d(*tensors):
        out = [t.reshape(1) if t.ndim == 0 else t for t in _flat(tensors)]
        return out[0] if len(out) == 1 else tuple(out)

    def atleast_2d(*tensors):
        out = [t.reshape((1,) * (2 - t.ndim) + t.shape) if t.ndim < 2 else t for t in _flat(tensors)]
        return out[0] if len(out) == 1 else tuple(out)

    def atleast_3d(*tensors):
        out = []
        for t in _flat(tensors):
            out.append(t.reshape(1, 1, 1) if t.ndim == 0 else t.reshape(1, -1, 1) if t.ndim == 1 else
                       t.unsqueeze(-1) if t.ndim == 2 else t)  # fmt: skip
        return out[0] if len(out) == 1 else tuple(out)

    def hstack(tensors: Sequence[Tensor]) -> Tensor:
        tensors = [atleast_1d(t) for t in tensors]
        return Tensor.cat(tensors, 0 if tensors[0].ndim == 1 else 1)

    def vstack(tensors: Sequence[Tensor]) -> Tensor:
        return Tensor.cat([atleast_2d(t) for t in tensors], 0)

    def dstack(tensors: Sequence[Tensor]) -> Tensor:
        return Tensor.cat([atleast_3d(t) for t in tensors], 2)

    def column_stack(tensors: Sequence[Tensor]) -> Tensor:
        return Tensor.cat([t.reshape(-1, 1) if t.ndim <= 1 else t for t in tensors], 1)

    def broadcast_tensors(*tensors):
        from lazygrad.tensor_ops.elementwise import _broadcast_shape

        shape = _broadcast_shape(*(t.shape for t in tensors))
        return tuple(t.broadcast_to(shape) for t in tensors)

    def meshgrid(*tensors, indexing: str = "ij"):
        tensors = _flat(tensors)
        if indexing not in ("ij", "xy"):
            raise ValueError(f"meshgrid: indexing must be 'ij' or 'xy', got {indexing!r}")
        swap = indexing == "xy" and len(tensors) >= 2
        if swap:
            tensors = [tensors[1], tensors[0], *tensors[2:]]
        shape = tuple(t.numel() for t in tensors)
        grids = [
            t.reshape([-1 if i == k else 1 for i in range(len(tensors))]).expand(shape) for k, t in enumerate(tensors)
        ]
        if swap:  # as torch: the ij grids of the swapped inputs, the first two grids swapped back (no transpose)
            grids[0], grids[1] = grids[1], grids[0]
        return tuple(grids)

    names = (atleast_1d, atleast_2d, atleast_3d, hstack, vstack, dstack, column_stack, broadcast_tensors, meshgrid)
    return {f.__name__: f for f in names} | {"row_stack": vstack}


def _flat(tensors) -> list:
    return list(tensors[0]) if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)) else list(tensors)


class IndexingOps:
    """Advanced indexing with data-dependent or several index tensors: x[mask], x[rows, cols], x[idx] = v,
    nonzero. Boolean masks and nonzero read their values on the host (the result's shape depends on them)."""

    __slots__ = ()

    def nonzero(self, *, as_tuple: bool = False):
        positions = np.argwhere(self.numpy())  # realizes: the count of nonzeros is the result's shape
        if as_tuple and not self.ndim:  # torch: a 0-d tensor's positions as those of one element
            return self.reshape(1).nonzero(as_tuple=True)
        if as_tuple:
            return tuple(Tensor(positions[:, d].copy(), dtype=dt.int64, device=self.device) for d in range(self.ndim))
        return Tensor(positions.astype(np.int64), dtype=dt.int64, device=self.device)

    def argwhere(self) -> Tensor:
        return self.nonzero()

    def masked_select(self, mask: Tensor) -> Tensor:
        from lazygrad.tensor_ops.elementwise import _broadcast_shape

        shape = _broadcast_shape(self.shape, mask.shape) or (1,)  # a 0-d pair selects from one element, as torch
        return self.broadcast_to(shape)[mask.broadcast_to(shape)]

    def _linear_index(self, indices: tuple) -> Tensor:
        """The index tensors (ints, lists, arrays, tensors, bool masks) applied to the leading dims, as one int64
        tensor of positions into those dims flattened, in the index tensors' broadcast shape."""
        from lazygrad.tensor_ops.elementwise import _broadcast_shape

        parts, dim = [], 0
        for index in indices:
            values = index.numpy() if isinstance(index, Tensor) and index.dtype == dt.bool_ else index
            if isinstance(values, (list, np.ndarray, bool, np.bool_)) and np.asarray(values).dtype == np.bool_:
                mask = np.asarray(values)
                parts += self._mask_indices(mask, dim)
                dim += mask.ndim
                continue
            if not isinstance(index, Tensor):
                index = Tensor(np.asarray(index, dtype=np.int64), dtype=dt.int64, device=self.device)
            if index.dtype.is_float:
                raise IndexError(
                    f"tensors used as indices must be long, int, byte or bool tensors, got {index.dtype.name}"
                )
            if dim < self.ndim:
                check_indices(index, self.shape[dim], "index", dim, negative=True)
            parts.append(index.cast(dt.int64))
            dim += 1
        if dim > self.ndim:
            raise IndexError(f"too many indices for tensor of dimension {self.ndim} (shape {self.shape})")
        shape = _broadcast_shape(*(p.shape for p in parts))
        linear, stride = None, 1
        for d in range(len(parts) - 1, -1, -1):
            size = self.shape[d]
            part = (parts[d] < 0)._select(parts[d] + size, parts[d]).broadcast_to(shape)
            linear = part * stride if linear is None else linear + part * stride
            stride *= size
        return linear

    def _mask_indices(self, mask: np.ndarray, dim: int) -> list:
        """A bool mask over this tensor's dims from `dim` on, as one int64 index tensor per dim (its nonzeros)."""
        if mask.shape != self.shape[dim : dim + mask.ndim]:
            raise IndexError(
                f"The shape of the mask {mask.shape} at index {dim} does not match the shape of the "
                f"indexed tensor {self.shape}"
            )
        return [Tensor(p.astype(np.int64), dtype=dt.int64, device=self.device) for p in np.nonzero(mask)]

    def _index_mixed(self, index: tuple) -> Tensor:
        """x[...] with tensor (list, array, bool mask) indices mixed with slices, None and ...: numpy's (and
        torch's) advanced indexing. The basic part first, each tensor-indexed dim kept whole; then those dims are
        gathered together. Their broadcast shape takes the place of the first of them when they are adjacent in
        the index, else it goes first (x[:, idx] keeps the dims in place; x[idx, :, idx2] puts them in front).
        Integers are basic indices here, as torch's (numpy would count them as 0-d index tensors)."""
        if sum(1 for i in index if i is Ellipsis) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        dims = [0 if i is None or i is Ellipsis else np.ndim(_host(i)) if _is_mask(i) else 1 for i in index]
        if sum(dims) > self.ndim:
            raise IndexError(f"too many indices for tensor of dimension {self.ndim} (shape {self.shape})")
        fill = (slice(None),) * (self.ndim - sum(dims))
        at = next((k for k, i in enumerate(index) if i is Ellipsis), len(index))  # not .index(): Tensor's ==
        index = index[:at] + fill + index[at + 1 :]
        entries, dim = [], 0  # None, slices, ints and int64 index tensors (a mask: its nonzeros, one per dim)
        for i in index:
            if i is None:
                entries.append(i)
                continue
            if isinstance(i, (slice, int, np.integer)):
                entries.append(i)
            elif _is_mask(i):
                mask = _host(i)
                entries += self._mask_indices(mask, dim)
                dim += mask.ndim
                continue
            elif isinstance(i, Tensor):
                entries.append(i)
            else:
                entries.append(Tensor(np.asarray(i, dtype=np.int64), dtype=dt.int64, device=self.device))
            dim += 1
        basic = self[tuple(slice(None) if isinstance(e, Tensor) else e for e in entries)]
        # every entry but an int is one dim of `basic` (None a new one, a slice or a tensor-indexed one kept whole)
        entries = [e for e in entries if not isinstance(e, (int, np.integer))]
        tensor_dims = [k for k, e in enumerate(entries) if isinstance(e, Tensor)]
        others = [d for d in range(basic.ndim) if d not in tensor_dims]
        gathered = basic.permute(tensor_dims + others)._index_with_tensors(tuple(entries[k] for k in tensor_dims))
        first = tensor_dims[0]
        if tensor_dims != list(range(first, first + len(tensor_dims))):
            return gathered  # not adjacent: the broadcast dims first
        n = gathered.ndim - len(others)  # the broadcast dims: moved to where the first tensor-indexed dim was
        return gathered.permute(list(range(n, n + first)) + list(range(n)) + list(range(n + first, gathered.ndim)))

    def _index_with_tensors(self, indices: tuple) -> Tensor:
        linear = self._linear_index(indices)
        lead = self._lead_dims(indices)
        flat = self.reshape(prod(self.shape[:lead]), *self.shape[lead:])
        return flat._gather_index(linear)

    def _lead_dims(self, indices: tuple) -> int:
        return sum(np.ndim(i.numpy() if isinstance(i, Tensor) else i) if _is_mask(i) else 1 for i in indices)

    def _put(self, indices: tuple, values, accumulate: bool) -> Tensor:
        """This tensor with `values` written (or added) at the positions the index tensors name."""
        indices = indices if isinstance(indices, tuple) else (indices,)
        linear = self._linear_index(indices)
        lead = self._lead_dims(indices)
        positions = prod(self.shape[:lead])
        rest = self.shape[lead:]
        flat = self.reshape(positions, *rest)
        values = values if isinstance(values, Tensor) else Tensor.full((), values, self.dtype, self.device)
        values = values.cast(self.dtype).broadcast_to(linear.shape + rest).reshape(linear.numel(), *rest)
        # hits[p, k]: write k lands on position p
        hits = Tensor.arange(positions, device=self.device).unsqueeze(-1) == linear.reshape(1, -1)
        hits = hits.reshape(positions, linear.numel(), *(1,) * len(rest))
        zero = Tensor.zeros((), dtype=self.dtype, device=self.device)
        written = hits._select(values.unsqueeze(0), zero).sum(1).cast(self.dtype)
        if accumulate:
            out = flat | written if self.dtype == dt.bool_ else flat + written
        else:
            # a position written twice gets the sum: torch leaves it unspecified
            out = hits.any(1)._select(written, flat)
        return out.reshape(self.shape)

    def index_put(self, indices, values, accumulate: bool = False) -> Tensor:
        return self._put(tuple(indices), values, accumulate)

    def index_put_(self, indices, values, accumulate: bool = False) -> Tensor:
        return self._inplace(self._put(tuple(indices), values, accumulate))


def _highest(d: dt.DType):
    """The greatest value of d: the identity of a min."""
    if d.is_float:
        return float("inf")
    if d == dt.bool_:
        return True
    bits = d.itemsize * 8
    return (1 << bits) - 1 if d.kind == "u" else (1 << (bits - 1)) - 1


def _host(index) -> np.ndarray:
    return index.numpy() if isinstance(index, Tensor) else np.asarray(index)


def _is_mask(index) -> bool:
    if isinstance(index, Tensor):
        return index.dtype == dt.bool_
    return np.asarray(index).dtype == np.bool_


def copy_and_construction_functions() -> dict:
    """torch's function-only forms exported by lazygrad: the *_copy forms of views (the view as a new tensor),
    fill, scalar_tensor, logspace, tril/triu_indices, cartesian_prod, block_diag, the trapezoid rules."""

    def copy_of(view):
        def copy(input, *args, **kwargs):
            out = view(input, *args, **kwargs)
            return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()

        copy.__name__ = copy.__qualname__ = f"{view.__name__}_copy"
        copy.__doc__ = f"torch.{copy.__name__}: Tensor.{view.__name__} as a new tensor."
        return copy

    views = (Tensor.expand, Tensor.permute, Tensor.t, Tensor.transpose, Tensor.unsqueeze, Tensor.squeeze,
             Tensor.view, Tensor.unbind, Tensor.diagonal, Tensor.split_with_sizes)  # fmt: skip
    functions = {f"{view.__name__}_copy": copy_of(view) for view in views}
    functions["alias_copy"] = lambda input: input.clone()

    def constant_pad_nd(input, pad, value=0):
        return input.pad(tuple(pad), "constant", value)

    def fill(input, value):
        """A tensor of input's shape and dtype filled with value; as torch, it stays in input's graph (with a
        zero gradient): a where that never takes input, so no NaN of input reaches the gradient."""
        value = value.item() if isinstance(value, Tensor) else value
        never = Tensor.full(input.shape, False, dt.bool_, input.device)
        return never._select(input, Tensor.full((), value, input.dtype, input.device))

    def scalar_tensor(s, *, dtype=None, device=None, requires_grad: bool = False):
        out = Tensor.full((), s, dtype or dt.python_type_dtype(s), device)
        return out.requires_grad_(True) if requires_grad else out

    def logspace(start, end, steps: int, base: float = 10.0, *, dtype=None, device=None, requires_grad=False):
        """base ** linspace(start, end, steps), computed in float64 on the host as torch rounds it."""
        dtype = dt.to_dtype(dtype) if dtype is not None else dt.default_float
        if dtype.is_float:
            exponents = np.linspace(float(start), float(end), steps, dtype=np.float64)
            values = np.power(float(base), exponents)
        else:  # torch's integer kernel: exponents from truncated bounds, the powers truncated toward zero
            values = np.trunc(np.power(float(base), integer_linspace_points(start, end, steps)))
        out = Tensor(values.astype(dtype.np), dtype=dtype, device=device)
        return out.requires_grad_(True) if requires_grad else out

    def tril_indices(row: int, col: int, offset: int = 0, *, dtype=None, device=None):
        rows, cols = np.tril_indices(row, offset, col)
        return Tensor(np.stack([rows, cols]).astype((dtype or dt.int64).np), device=device)

    def triu_indices(row: int, col: int, offset: int = 0, *, dtype=None, device=None):
        rows, cols = np.triu_indices(row, offset, col)
        return Tensor(np.stack([rows, cols]).astype((dtype or dt.int64).np), device=device)

    def cartesian_prod(*tensors):
        if len(tensors) == 1:
            return tensors[0].clone()
        grids = functions_of_several["meshgrid"](*tensors, indexing="ij")
        return Tensor.stack([g.reshape(-1) for g in grids], dim=1)

    def block_diag(*tensors):
        """The tensors (0-d, 1-d as a row, or 2-d) as blocks along the diagonal of one matrix, zero elsewhere."""
        blocks = [t.reshape(1, 1) if t.ndim == 0 else t.reshape(1, -1) if t.ndim == 1 else t for t in tensors]
        if any(b.ndim != 2 for b in blocks):
            raise RuntimeError(f"torch.block_diag: inputs must have 2 or fewer dims, got {[t.shape for t in tensors]}")
        result_dtype = blocks[0].dtype
        for b in blocks[1:]:
            result_dtype = dt.promote(result_dtype, b.dtype)
        width, left, rows = sum(b.shape[1] for b in blocks), 0, []
        for b in blocks:
            rows.append(b.cast(result_dtype).pad((left, width - left - b.shape[1], 0, 0)))
            left += b.shape[1]
        return Tensor.cat(rows, dim=0)

    def _trapezoid_terms(y, x=None, *, dx=None, dim: int = -1):
        d = y._dim(dim)
        n = y.shape[d]
        average = (y.narrow(d, 1, n - 1) + y.narrow(d, 0, n - 1)) / 2 if n else y
        if x is not None and isinstance(x, Tensor):
            spacing = x.diff(dim=-1 if x.ndim == 1 else dim)
            if x.ndim == 1:
                spacing = spacing.reshape([-1 if i == d else 1 for i in range(y.ndim)])
            return average * spacing, d
        step = dx if dx is not None else (x if x is not None else 1)
        return average * step, d

    def trapezoid(y, x=None, *, dx=None, dim: int = -1):
        terms, d = _trapezoid_terms(y, x, dx=dx, dim=dim)
        return terms.sum(d)

    def trapz(y, x=None, *, dx=None, dim: int = -1):
        return trapezoid(y, x, dx=dx, dim=dim)

    def cumulative_trapezoid(y, x=None, *, dx=None, dim: int = -1):
        terms, d = _trapezoid_terms(y, x, dx=dx, dim=dim)
        return terms.cumsum(d)

    functions_of_several = stack_functions()
    for function in (constant_pad_nd, fill, scalar_tensor, logspace, tril_indices, triu_indices, cartesian_prod,
                     block_diag, trapezoid, trapz, cumulative_trapezoid):  # fmt: skip
        functions[function.__name__] = function
    return functions

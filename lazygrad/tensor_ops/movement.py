"""Movement ops: views (reshape, permute, expand, pad, shrink, flip), indexing, joining and splitting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lazygrad import autograd
from lazygrad import dtype as dt
from lazygrad.dtype import DType
from lazygrad.ops import Op
from lazygrad.shape import describe_symbolic, prod, symbolic_dims
from lazygrad.symbolic import VARIABLES_MADE, Node, Num, to_node, upper_bound
from lazygrad.tensor_ops.bounds import check_indices

if TYPE_CHECKING:
    from lazygrad.tensor import Tensor
# at run time `Tensor` is the finished class, bound in by lazygrad.tensor (tensor_ops.bind_tensor_class)


def _not_a_view(source: Tensor, out: Tensor) -> Tensor:
    """`out`, built with movement ops from `source`, as a tensor of its own (an op PyTorch answers with a copy):
    an in-place update of it does not write back into `source`."""
    if out is not source:
        out._view_of = None
    return out


# (shape, the shape asked for, as given: ints, -1 for one) -> the checked shape (MovementOps.reshape)
_RESHAPES: dict = {}


class MovementOps:
    __slots__ = ()

    @property
    def T(self) -> Tensor:
        return self.permute(*reversed(range(self.ndim)))

    @property
    def mT(self) -> Tensor:
        return self.transpose(-2, -1)

    @property
    def H(self) -> Tensor:  # the conjugate transpose: the transpose, for real numbers
        if self.ndim not in (0, 2):
            raise RuntimeError(f"tensor.H is only supported on matrices (2-D tensors), got shape {self.shape}")
        return self.T

    @property
    def mH(self) -> Tensor:
        return self.mT

    def broadcast_to(self, shape) -> Tensor:
        shape = tuple(shape)
        if self.shape == shape:
            return self
        if len(shape) < self.ndim:
            raise RuntimeError(f"cannot broadcast shape {self.shape} to {shape}: fewer dimensions")
        padded = (1,) * (len(shape) - self.ndim) + self.shape
        for s, n in zip(padded, shape):
            if s != n and s != 1:
                raise RuntimeError(
                    f"The expanded size of the tensor ({n}) must match the existing size ({s}) at a "
                    f"non-singleton dimension: cannot broadcast {self.shape} to {shape}"
                )
        return self._broadcast_valid(shape)

    def _broadcast_valid(self, shape: tuple) -> Tensor:
        """broadcast_to a different shape known to be valid (the operand broadcasting of every binary op)."""
        if len(shape) == len(self._lazydata.shape):
            return self._movement(Op.EXPAND, shape)
        padded = (1,) * (len(shape) - len(self._lazydata.shape)) + self._lazydata.shape
        # new leading dims: one tensor op, not a reshape's and an expand's (a scalar operand of each eager step takes
        # this path): two views of one node, recorded as an EXPAND whose gradient sums the new dims away
        out = self._record(self._wrap(self._lazydata.broadcast(padded, shape)), Op.EXPAND, (self,), shape)
        out._view_of = (self, Op.EXPAND, shape)  # (an in-place update of it is refused, as of any expanded view)
        return out

    def reshape(self, *shape) -> Tensor:
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if VARIABLES_MADE[0] and (symbolic_dims(self.shape) or any(isinstance(s, Node) for s in shape)):
            return self._symbolic_reshape(tuple(shape))
        try:  # an eager step asks for the same few reshapes every step: the checked shape is remembered
            known = _RESHAPES.get((self._lazydata.shape, shape))
        except TypeError:  # (a list: not remembered)
            known = None
        if known is not None:
            return self._reshaped(known)
        asked = (self._lazydata.shape, shape)
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
        shape = tuple(shape)
        if type(asked[1]) is tuple and all(type(s) is int for s in asked[1]):
            if len(_RESHAPES) >= 4096:
                _RESHAPES.clear()
            _RESHAPES[asked] = shape
        return self._reshaped(shape)

    def _reshaped(self, shape: tuple) -> Tensor:
        """reshape to a checked shape of ints."""
        out = self._movement(Op.RESHAPE, shape)
        if out is not self and len(out._lazydata.st.views) > len(self._lazydata.st.views):
            out._view_of = None  # not expressible with strides: PyTorch copies, so an update does not write back
        return out

    def _symbolic_reshape(self, shape: tuple) -> Tensor:
        """A reshape of a tensor with a symbolic size: only dims of size 1 may come or go (-1 stands for the
        symbolic dim)."""
        requested = shape
        if shape.count(-1) == 1 and len(symbolic_dims(self.shape)) == 1:
            (symbolic,) = [s for s in self.shape if isinstance(s, Node)]
            shape = tuple(symbolic if s == -1 else s for s in shape)
        if [s for s in shape if s != 1] != [s for s in self.shape if s != 1]:
            raise NotImplementedError(
                f"reshape of shape {describe_symbolic(self.shape)} to {requested}: a tensor with a symbolic size can "
                "only gain or lose dims of size 1 (merging or splitting a symbolic dim is not supported)"
            )
        return self._movement(Op.RESHAPE, tuple(shape))

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
        return self._movement(Op.PERMUTE, order)

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

    def flip(self, *args, dims=None) -> Tensor:
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args if dims is None else dims
        dims = (dims,) if isinstance(dims, int) else dims
        return _not_a_view(self, self._movement(Op.FLIP, tuple(self._dim(d) for d in dims)))  # torch.flip copies

    def shrink(self, arg) -> Tensor:
        return self._movement(Op.SHRINK, tuple(arg))

    def pad(self, pad, mode: str = "constant", value=0.0) -> Tensor:
        """torch.nn.functional.pad: pairs (left, right) from the last dim backwards; negative pads crop. Modes
        'reflect', 'replicate' and 'circular' read the border from the input (views and a cat, never a gather)."""
        if len(pad) % 2 or len(pad) // 2 > self.ndim:
            raise RuntimeError(
                f"Padding length must be divisible by 2 and at most 2*ndim, got {len(pad)} for shape {self.shape}"
            )
        pairs = [(0, 0)] * (self.ndim - len(pad) // 2) + [(pad[i], pad[i + 1]) for i in range(len(pad) - 2, -1, -2)]
        if mode in ("reflect", "replicate", "circular"):
            if not 1 <= len(pad) // 2 <= 3 or self.ndim - len(pad) // 2 not in (1, 2):  # torch's rule
                raise NotImplementedError(
                    f"{mode} padding of {len(pad) // 2} dims of a {self.ndim}-d input {self.shape}: non-constant "
                    "padding pads the last 1, 2 or 3 dims of an input with 1 or 2 more (batch, channel)"
                )
            return _not_a_view(self, _pad_from_input(self, pairs, mode))
        if mode != "constant":
            raise NotImplementedError(f"pad mode {mode!r}: expected 'constant', 'reflect', 'replicate' or 'circular'")
        x = self
        crop = [(max(0, -a), s - max(0, -b)) for (a, b), s in zip(pairs, self.shape)]
        x = x.shrink(crop) if any(c != (0, s) for c, s in zip(crop, self.shape)) else x
        grow = tuple((max(0, a), max(0, b)) for a, b in pairs)
        if all(g == (0, 0) for g in grow):
            return _not_a_view(self, x)
        out = x._movement(Op.PAD, grow)
        # the fill takes the input's dtype, as torch's fill_ (1.7 pads an int64 tensor with 1, a bool with True)
        value = value if self.dtype.is_float else bool(value) if self.dtype == dt.bool_ else int(value)
        if value != 0:
            mask = Tensor.full(x.shape, True, dt.bool_, self.device)._movement(Op.PAD, grow)
            out = mask._select(out, Tensor.full((), value, out.dtype, self.device))
        return _not_a_view(self, out)  # F.pad makes a new tensor

    def __getitem__(self, index) -> Tensor:
        if isinstance(index, list) and any(isinstance(i, (list, tuple, Tensor, np.ndarray, slice)) for i in index):
            index = tuple(index)  # torch (and numpy's old rule): a list of sequences is a tuple of indices
        if isinstance(index, Tensor) or (isinstance(index, (list, np.ndarray))):
            if isinstance(index, Tensor) and index.dtype == dt.bool_ or np.asarray(index).dtype == np.bool_:
                return self._index_with_tensors((index,))  # a mask: its nonzeros, read on the host
            if not self.ndim:
                raise IndexError("invalid index of a 0-dim tensor: a tensor index needs a dimension to index")
            check_indices(index, self.shape[0], "index", 0, negative=True)
            return self._gather_index(index)
        index = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, (Tensor, list, np.ndarray)) for i in index):
            if all(isinstance(i, (Tensor, list, np.ndarray, int, np.integer)) for i in index):
                return self._index_with_tensors(index)  # several index tensors on the leading dims, broadcast
            return self._index_mixed(index)  # with slices, None or ...: numpy's rules
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
        if VARIABLES_MADE[0] and (any(_is_symbolic_index(i) for i in index) or symbolic_dims(self.shape)):
            return self._symbolic_index(index)
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
            x = x._movement(Op.FLIP, tuple(flips))  # a negative step is a view, as in numpy
        if any(s != 1 for s in strides):
            # every step-th element: pad to a multiple of step, split the dim, keep the first of each group
            for d, s in enumerate(strides):
                if s == 1:
                    continue
                n = x.shape[d]
                padded = math.ceil(n / s) * s
                if padded != n:  # a view (not pad(), which copies): the result of indexing is a view
                    x = x._movement(Op.PAD, tuple((0, padded - n) if i == d else (0, 0) for i in range(x.ndim)))
                x = x._movement(Op.RESHAPE, x.shape[:d] + (padded // s, s) + x.shape[d + 1 :])
                x = x.shrink([(0, k) if j != d + 1 else (0, 1) for j, k in enumerate(x.shape)])
                x = x._movement(Op.RESHAPE, x.shape[: d + 1] + x.shape[d + 2 :])
        # reshapes through _movement: whatever the strides, the result of basic indexing is a view
        if squeeze:
            x = x._movement(Op.RESHAPE, tuple(s for d, s in enumerate(x.shape) if d not in squeeze))
        for d in unsqueeze:
            x = x._movement(Op.RESHAPE, x.shape[:d] + (1,) + x.shape[d:])
        return x

    def _symbolic_index(self, index: tuple) -> Tensor:
        """Basic indexing where a start, stop or index is a Variable's expression (or a dim is symbolic): a view
        with a symbolic offset or size. Steps, None and negative indexes are not taken with Variables; a slice of
        a symbolic dim must take all of it."""
        if self.requires_grad and autograd.is_grad_enabled():
            raise NotImplementedError(
                f"backward through a view with a Variable (index {index} of shape {describe_symbolic(self.shape)}) "
                "is not supported: index it under lazygrad.no_grad() or detach() it"
            )
        shrink, squeeze, dim = [], [], 0
        for i in index:
            if i is None:
                raise NotImplementedError(f"None in an index with Variables ({index}) of shape {self.shape}")
            size = self.shape[dim]
            if isinstance(i, slice):
                if i.step not in (None, 1):
                    raise NotImplementedError(f"a step {i.step} in an index with Variables ({index})")
                start = 0 if i.start is None else i.start
                stop = size if i.stop is None else i.stop
            elif _is_symbolic_index(i) or (isinstance(i, (int, np.integer)) and not isinstance(i, bool)):
                start = i if isinstance(i, Node) else _symbolic_bound(i, size, dim)  # (-1: the last)
                stop = start + 1
                squeeze.append(dim)
            else:
                raise IndexError(f"unsupported index {i!r} of type {type(i).__name__} beside a Variable")
            if isinstance(size, Node) and (start, stop) != (0, size):
                raise NotImplementedError(
                    f"index {i!r} of the symbolic dim {dim} of shape {describe_symbolic(self.shape)}: only a whole "
                    "symbolic dim (:) is taken"
                )
            start, stop = _symbolic_bound(start, size, dim), _symbolic_bound(stop, size, dim)
            extent = to_node(stop) - to_node(start)
            if extent.vmin < 1 or to_node(start).vmin < 0 or to_node(stop).vmax > upper_bound(size):
                raise IndexError(
                    f"index {i!r} of dim {dim} (size {size}) of shape {describe_symbolic(self.shape)}: for every value "
                    f"of its Variables the slice must lie within the dim and hold at least one element "
                    f"(start in [{to_node(start).vmin}, {to_node(start).vmax}], stop in [{to_node(stop).vmin}, "
                    f"{to_node(stop).vmax}])"
                )
            shrink.append((start, stop))
            dim += 1
        x = self._movement(Op.SHRINK, tuple(shrink))
        if squeeze:
            x = x._movement(Op.RESHAPE, tuple(s for d, s in enumerate(x.shape) if d not in squeeze))
        return x

    def __setitem__(self, index, value) -> None:
        """x[index] = value: an in-place copy into the view x[index] (basic indexing), or a write through the
        positions that advanced indexing names."""
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, (Tensor, list, np.ndarray)) for i in parts):
            if all(isinstance(i, (Tensor, list, np.ndarray, int, np.integer)) for i in parts):
                self.index_put_(parts, value)  # index_put_: tensors, lists and bool masks on the leading dims
                return
            # tensor indices mixed with slices, None or ...: the flat positions that x[index] reads (advanced
            # indexing of the positions themselves, so the semantics are getitem's), written through
            positions = Tensor.arange(self.numel(), dtype=dt.int64, device=self.device).reshape(self.shape)[index]
            if not isinstance(value, Tensor):
                value = Tensor.full((), value, self.dtype, self.device)
            if positions.shape != value.shape and not _broadcasts_to(value.shape, positions.shape):
                raise RuntimeError(
                    f"shape mismatch: value tensor of shape {value.shape} cannot be broadcast to indexing result "
                    f"of shape {positions.shape}"
                )
            written = self.reshape(-1)._put(
                (positions.reshape(-1),), value.cast(self.dtype).broadcast_to(positions.shape).reshape(-1), False
            )
            self._inplace(written.reshape(self.shape))
            return
        self[index].copy_(value)

    def _gather_index(self, index) -> Tensor:
        """x[idx] with an integer (or bool mask) tensor on the first dim: a one-hot reduce."""
        if self.dtype == dt.bool_:  # the one-hot product is arithmetic
            return self.cast(dt.uint8)._gather_index(index).cast(dt.bool_)
        idx = index if isinstance(index, Tensor) else Tensor(np.asarray(index), device=self.device)
        if idx.dtype == dt.bool_:
            raise NotImplementedError("boolean-mask indexing has a data-dependent shape; use where() instead")
        n = self.shape[0]
        idx = (idx < 0)._select(idx + n, idx)
        one_hot = idx.unsqueeze(-1) == Tensor.arange(n, device=self.device)
        one_hot = one_hot.reshape(one_hot.shape + (1,) * (self.ndim - 1)).cast(self.dtype)
        return (one_hot * self).sum(idx.ndim)

    def gather(self, dim: int, index: Tensor) -> Tensor:
        """out[i][j][k] = self[index[i][j][k]][j][k] (for dim 0): a one-hot of the index along a new last axis,
        times the input with its `dim` moved last, summed over that axis. An index outside [0, size) is an
        IndexError (read on the host: tensor_ops/bounds.py)."""
        d = self._dim(dim)
        if not (index.dtype.is_float or index.dtype == dt.bool_):
            check_indices(index, self.shape[d] if self.ndim else 1, "gather", d, negative=False)
            if index.numel() == 0:  # torch checks no shapes for an empty index: the empty result, in self's graph
                return self.reshape(-1).narrow(0, 0, 0).reshape(index.shape).clone()
        return self._gather(d, index)

    def _gather(self, dim: int, index: Tensor) -> Tensor:
        """gather without the bounds check (take_along_dim checks before it wraps negative indices)."""
        d = self._dim(dim)
        if index.dtype.is_float or index.dtype == dt.bool_:
            raise RuntimeError(f"gather(): Expected dtype int64 for index, got {index.dtype.name}")
        if index.ndim != self.ndim and not (index.ndim <= 1 and self.ndim <= 1):
            raise RuntimeError(
                f"Index tensor must have the same number of dimensions as input tensor "
                f"(input {self.shape}, index {index.shape})"
            )
        if self.dtype == dt.bool_:  # the one-hot product is arithmetic
            return self.cast(dt.uint8)._gather(d, index).cast(dt.bool_)
        if not self.ndim:
            return self.reshape(index.shape) if index.ndim else self
        index = index.reshape(index.shape or (1,))
        for i, (a, b) in enumerate(zip(index.shape, self.shape)):
            if i != d and a > b:
                raise RuntimeError(
                    f"Size does not match at dimension {i} expected index {index.shape} to be smaller than "
                    f"self {self.shape} apart from dimension {d}"
                )
        n = self.shape[d]
        x = self.shrink([(0, s) if i == d else (0, index.shape[i]) for i, s in enumerate(self.shape)])
        # the input's dim d moved last, a size-1 axis in its place (broadcast against the index's dim d)
        x = x.permute([i for i in range(self.ndim) if i != d] + [d]).unsqueeze(d)
        one_hot = index.unsqueeze(-1) == Tensor.arange(n, device=self.device)
        return (one_hot.cast(self.dtype) * x).sum(-1)

    def take_along_dim(self, indices: Tensor, dim=None) -> Tensor:
        """gather along dim, with indices broadcast against self; negative indices count from the end (torch)."""
        if dim is None:
            return self.reshape(-1).take_along_dim(indices.reshape(-1), 0)
        d = self._dim(dim)
        check_indices(indices, self.shape[d], "take_along_dim", d, negative=True)
        indices = (indices < 0)._select(indices + self.shape[d], indices)
        shape = tuple(max(a, b) if i != d else b for i, (a, b) in enumerate(zip(self.shape, indices.shape)))
        x = self.expand(tuple(s if i != d else self.shape[d] for i, s in enumerate(shape)))
        return x._gather(d, indices.expand(shape))

    def one_hot(self, num_classes: int = -1) -> Tensor:
        """int64 one-hot encoding along a new last dim. num_classes=-1 reads max()+1, which computes the input."""
        n = num_classes if num_classes >= 0 else int(self.max().item()) + 1
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

    def repeat_interleave(self, repeats, dim=None, *, output_size=None) -> Tensor:
        """Each element (or slice along dim) repeated: `repeats` times, or repeats[i] times for element i when
        repeats is a 1-d tensor (read on the host: the counts are the result's shape)."""
        x = self.reshape(-1) if dim is None else self
        d = 0 if dim is None else x._dim(dim)
        if isinstance(repeats, Tensor) and repeats.numel() == 1:
            repeats = int(repeats.item())
        if isinstance(repeats, Tensor):
            counts = repeats.numpy()
            if repeats.ndim != 1 or counts.shape[0] != x.shape[d]:
                raise RuntimeError(
                    f"repeat_interleave: repeats must have the same size as input along dim {d}: repeats "
                    f"{repeats.shape}, input {self.shape}"
                )
            if (counts < 0).any():
                raise RuntimeError("repeat_interleave: repeats can not be negative")
            positions = np.repeat(np.arange(x.shape[d]), counts).tolist()
            if output_size is not None and output_size != len(positions):
                raise RuntimeError(
                    f"repeat_interleave: output_size {output_size} != the sum of repeats {len(positions)}"
                )
            if not positions:
                return x.narrow(d, 0, 0) * 1
            return _not_a_view(self, take_positions(x, d, positions))
        if output_size is not None and output_size != repeats * x.shape[d]:
            raise RuntimeError(f"repeat_interleave: output_size {output_size} != {repeats} * {x.shape[d]}")
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
            piece = t.cast(dtype)._movement(Op.PAD, tuple(pads))
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
        return (c - r <= diagonal)._select(self, self.zeros_like())

    def triu(self, diagonal: int = 0) -> Tensor:
        r = Tensor.arange(self.shape[-2], device=self.device).unsqueeze(-1)
        c = Tensor.arange(self.shape[-1], device=self.device).unsqueeze(0)
        return (c - r >= diagonal)._select(self, self.zeros_like())


def _source_index(j: int, size: int, mode: str) -> int:
    """The input position that a padded position j (in input coordinates: negative is left of it) reads."""
    if mode == "replicate":
        return min(max(j, 0), size - 1)
    if mode == "circular":
        return j % size
    period = 2 * (size - 1)  # reflect: mirrored about the first and last elements, which are not repeated
    j = j % period if period else 0
    return j if j < size else period - j


def _pad_from_input(x: Tensor, pairs: list, mode: str) -> Tensor:
    """Non-constant padding, one dim at a time: the output's source positions, taken by take_positions."""
    for dim, ((left, right), size) in enumerate(zip(pairs, x.shape)):
        if (left, right) == (0, 0):
            continue
        if mode == "circular" and min(left, right) < 0:  # torch crops first, then wraps what is left
            x = x.narrow(dim, max(0, -left), size - max(0, -left) - max(0, -right))
            left, right, size = max(0, left), max(0, right), x.shape[dim]
        limit = {"reflect": size - 1, "circular": size}.get(mode)  # replicate repeats the border: no limit
        if size == 0 or limit is not None and max(left, right) > limit:
            raise RuntimeError(
                f"{mode} padding ({left}, {right}) of dim {dim} of size {size} (input shape {x.shape}): a non-empty "
                f"dim is needed{'' if limit is None else f', and each pad at most {limit}'}"
            )
        sources = [_source_index(j, size, mode) for j in range(-left, size + right)]
        if not sources:
            raise RuntimeError(f"{mode} padding ({left}, {right}) leaves dim {dim} of shape {x.shape} empty")
        x = take_positions(x, dim, sources)
    return x


def take_positions(x: Tensor, dim: int, positions: list) -> Tensor:
    """x's elements at these (static, in-range) positions along dim, as views: runs of slices (a run that steps
    backwards is a flipped slice, one that repeats an element an expanded one), concatenated. Exact, with the
    views' own gradients (a one-hot gather would multiply every element, and a NaN or inf would spread)."""
    size = x.shape[dim]
    if positions == list(range(size)):
        return x
    repeat = len(positions) // size if size else 0
    if repeat > 1 and positions == [p // repeat for p in range(len(positions))]:  # nearest upsampling by an integer
        wide = x.unsqueeze(dim + 1).expand(*[repeat if d == dim + 1 else -1 for d in range(x.ndim + 1)])
        return wide.flatten(dim, dim + 1)
    runs, i = [], 0  # maximal runs of a constant step (-1, 0 or +1): (first position, last position, count)
    while i < len(positions):
        j = i + 1
        step = positions[j] - positions[i] if j < len(positions) else 0
        while j < len(positions) and step in (-1, 0, 1) and positions[j] - positions[j - 1] == step:
            j += 1
        runs.append((positions[i], positions[j - 1], j - i))
        i = j
    pieces = []
    for first, last, count in runs:
        low, high = min(first, last), max(first, last)
        piece = x.narrow(dim, low, high - low + 1)
        if first == last and count > 1:
            piece = piece.expand(*[count if d == dim else -1 for d in range(x.ndim)])
        elif first > last:
            piece = piece.flip(dim)
        pieces.append(piece)
    return pieces[0] if len(pieces) == 1 else Tensor.cat(pieces, dim=dim)


def _is_symbolic_index(i) -> bool:
    return isinstance(i, Node) or (
        isinstance(i, slice) and (isinstance(i.start, Node) or isinstance(i.stop, Node) or isinstance(i.step, Node))
    )


def _symbolic_bound(value, size, dim: int):
    """A slice bound beside a Variable: a Variable's expression as it is, an int (negative from the end) as an int."""
    if isinstance(value, Node):
        return value.value if isinstance(value, Num) else value
    value = int(value)
    if value < 0:
        if isinstance(size, Node):
            raise NotImplementedError(f"a negative index {value} of the symbolic dim {dim}")
        value += size
    return value


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether a tensor of `shape` broadcasts to `target` (numpy's rule, aligned at the last dim)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))

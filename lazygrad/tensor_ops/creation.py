"""Creation ops: constants, random tensors, ranges, and their *_like forms (static methods of Tensor)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lazygrad import dtype as dt
from lazygrad import random
from lazygrad.device import canonical_device
from lazygrad.graph import LazyBuffer
from lazygrad.shape import shape_from_args
from lazygrad.symbolic import Node

if TYPE_CHECKING:
    from lazygrad.tensor import Tensor
# at run time `Tensor` is the finished class, bound in by lazygrad.tensor (tensor_ops.bind_tensor_class)


def integer_linspace_points(start, end, steps: int) -> np.ndarray:
    """The float64 points of torch's linspace kernel for an integer dtype: start and end truncated to integers
    first, a float64 step, the first half counted from start and the second from end (so end is exact). The
    caller truncates them (linspace) or raises a base to them (logspace)."""
    start, end = (int(v.item() if hasattr(v, "item") else v) for v in (start, end))
    if steps < 0:
        raise RuntimeError(f"number of steps must be non-negative, got {steps}")
    if steps == 1:  # torch fills with start
        return np.full(1, float(start))
    step = (end - start) / (steps - 1)
    index = np.arange(steps, dtype=np.float64)
    return np.where(index < steps // 2, start + step * index, end - step * (steps - 1 - index))


def _numpy_float_dtype(data):
    """The float dtype that torch.tensor keeps from numpy data (an ndarray or numpy scalar), else None: a Python
    float or a list of them takes the default dtype instead."""
    if isinstance(data, (np.ndarray, np.generic)) and data.dtype.kind == "f":
        return dt.from_numpy_dtype(data.dtype)
    return None


def tensor(data, dtype=None, device=None, requires_grad: bool = False) -> Tensor:
    """torch.tensor: a copy of data. numpy data keeps its dtype (float64 stays float64, as in torch); Python
    floats take the default dtype (set_default_dtype). `Tensor(data)` is torch.Tensor: floats become the default."""
    if dtype is None:
        dtype = _numpy_float_dtype(data)
    if isinstance(data, Tensor):
        data = data.detach()
    return Tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)


def from_numpy(array: np.ndarray) -> Tensor:
    """torch.from_numpy: a tensor of the array's dtype. Unlike torch it copies (the upload is lazy), so later writes
    to the array do not show in the tensor."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected np.ndarray (got {type(array).__name__})")
    return Tensor(array, dtype=dt.from_numpy_dtype(array.dtype))


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """torch.as_tensor: data itself when it is already a tensor of that dtype and device, else as tensor()."""
    if isinstance(data, Tensor):
        same_dtype = dtype is None or dt.to_dtype(dtype) == data.dtype
        same_device = device is None or canonical_device(device) == data.device
        return data if same_dtype and same_device else data.to(device=device, dtype=dtype)
    return tensor(data, dtype=dtype, device=device)


def manual_seed(seed: int) -> None:
    random.manual_seed(seed)  # the device generator (lazygrad/random.py)


# (start, end, step, dtype, device, shape) -> a realized arange (Tensor._index_constant)
_INDEX_CONSTANTS: dict = {}


class CreationOps:
    __slots__ = ()

    @staticmethod
    def full(shape, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
        shape = shape_from_args(shape if isinstance(shape, (tuple, list)) else (shape,))
        dtype = dt.to_dtype(dtype) if dtype is not None else dt.python_type_dtype(fill_value)
        t = Tensor(LazyBuffer.const(fill_value, shape, dtype, canonical_device(device)))
        return t.requires_grad_() if requires_grad else t

    @staticmethod
    def zeros(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.full(shape_from_args(shape), 0.0, dtype or dt.default_float, device, requires_grad)

    @staticmethod
    def ones(*shape, dtype=None, device=None, requires_grad=False) -> Tensor:
        return Tensor.full(shape_from_args(shape), 1.0, dtype or dt.default_float, device, requires_grad)

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
    def randint(low, high=None, size=(), dtype=None, device=None, requires_grad=False) -> Tensor:
        if isinstance(high, (tuple, list)):  # torch's randint(high, size)
            low, high, size = 0, low, high
        low, high = (0, low) if high is None else (low, high)
        if requires_grad:
            raise RuntimeError("randint(): only Tensors of floating point dtype can require gradients")
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
        if any(isinstance(v, Node) for v in (start, end, step)):  # (argmax, cumsum... of a symbolic dim come here)
            raise NotImplementedError(
                f"arange({start}, {end}, {step}) with a Variable: its values are uploaded from the host, so its size "
                "must be known there (argmax, cumsum, topk and sorting over a symbolic dim are not supported)"
            )
        is_float = any(isinstance(v, float) for v in (start, end, step))
        dtype = dt.to_dtype(dtype) if dtype is not None else (dt.default_float if is_float else dt.int64)
        if not dtype.is_float:  # torch casts the bounds and the step to an integer dtype first
            start, end, step = int(start), int(end), int(step)
        if step == 0:
            raise RuntimeError(f"arange: step must be nonzero (start {start}, end {end}, dtype {dtype})")
        t = Tensor(np.arange(start, end, step).astype(dtype.np), dtype=dtype, device=device)
        return t.requires_grad_() if requires_grad else t

    @staticmethod
    def _index_constant(start: int, end: int, step: int, dtype, device, shape: tuple) -> Tensor:
        """arange(start, end, step) in `shape`, realized once per arguments and shared: the index patterns the
        library's own rules compare against every step (max_pool2d's window ranks, cross_entropy's classes). An
        arange is host data, uploaded anew each time; these are never written in place, nor handed to the user."""
        device = canonical_device(device)
        key = (start, end, step, dtype, device, shape)
        found = _INDEX_CONSTANTS.get(key)
        if found is None:
            found = Tensor.arange(start, end, step, dtype=dtype, device=device).reshape(shape).realize()
            if len(_INDEX_CONSTANTS) >= 256:
                _INDEX_CONSTANTS.clear()
            _INDEX_CONSTANTS[key] = found
        return found

    @staticmethod
    def linspace(start, end, steps: int, dtype=None, device=None) -> Tensor:
        dtype = dt.to_dtype(dtype) if dtype is not None else dt.default_float
        if not dtype.is_float:  # torch's integer kernel: truncated bounds, points truncated toward zero
            points = np.trunc(integer_linspace_points(start, end, steps))
            return Tensor(points.astype(dtype.np), dtype=dtype, device=device)
        return Tensor(np.linspace(start, end, steps).astype(dtype.np), dtype=dtype, device=device)

    @staticmethod
    def eye(n: int, m: int | None = None, dtype=None, device=None, requires_grad=False) -> Tensor:
        dtype = dt.to_dtype(dtype) if dtype is not None else dt.default_float
        t = Tensor(np.eye(n, m if m is not None else n).astype(dtype.np), dtype=dtype, device=device)
        return t.requires_grad_() if requires_grad else t

    def full_like(self, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
        if dtype is None and device is None and not requires_grad and type(fill_value) in (int, float, bool):
            # (relu's and the gradient rules' zeros, backward's ones: full's result, without its argument handling)
            return Tensor._wrap(LazyBuffer.const(fill_value, self.shape, self._lazydata.dtype, self._lazydata.device))
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

    # ---- issue 16 (transformer workload): multinomial ----

    def multinomial(self, num_samples: int, replacement: bool = False) -> Tensor:
        """Indices drawn from the rows of self (unnormalized, non-negative weights; (n,) or (m, n)), as
        torch.multinomial. With replacement, each draw counts the entries of the row's cumulative distribution below
        a uniform number. Without, the Gumbel-top-k trick: the k largest log(weight) + Gumbel noise are a draw of k
        distinct indices with exactly the sequential probabilities."""
        if self.ndim not in (1, 2):
            raise RuntimeError(f"multinomial: prob_dist must be 1 or 2 dim, got shape {self.shape}")
        n = self.shape[-1]
        if not replacement and num_samples > n:
            raise RuntimeError(f"multinomial: cannot sample {num_samples} > {n} categories without replacement")
        if num_samples <= 0:
            raise RuntimeError(f"multinomial: num_samples must be positive, got {num_samples}")
        rows = self if self.ndim == 2 else self.unsqueeze(0)
        weights = rows.cast(dt.float32) if not rows.dtype.is_float else rows
        if replacement or num_samples == 1:
            cdf = weights.cumsum(-1)
            cdf = cdf / cdf[:, -1:]
            draws = Tensor.rand(rows.shape[0], num_samples, 1, device=self.device)
            # entries of the cdf below the draw; the last is 1, so the count stays below n even if rounding lifts u
            out = (cdf.unsqueeze(1)[..., :-1] <= draws).sum(-1).cast(dt.int64)
        else:
            gumbel = -(-Tensor.rand(*rows.shape, device=self.device).clamp(1e-20, 1.0).log()).log()
            out = (weights.log() + gumbel).topk(num_samples, -1).indices
        return out if self.ndim == 2 else out.squeeze(0)

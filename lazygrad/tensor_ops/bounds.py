"""Index bounds: an index outside its dimension raises IndexError at the call, as torch does, instead of selecting
nothing (the one-hot products that implement gather, scatter and indexing match no position for it).

The check reads the index's values on the host. An index made from host data and not uploaded yet (token ids and
targets from `lazygrad.tensor(array)`, a DataLoader batch) is read from that data, at no device cost; one that is
a device buffer costs one read of it, which waits for the device's queue; an index that is still lazy is realized
first, so the call waits for the device there (docs/usage.md says so). A jitted step (lazygrad.jit) checks on the
calls that run its Python body, not on replays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lazygrad.ops import Op

if TYPE_CHECKING:
    from lazygrad.tensor import Tensor
# at run time `Tensor` is the finished class, bound in by lazygrad.tensor (tensor_ops.bind_tensor_class)


def host_values(index) -> np.ndarray:
    """The index's values on the host: a tensor is read (realized first when lazy), anything else taken as is.

    A tensor made from host data and not uploaded yet (`lazygrad.tensor(array)`, a DataLoader batch), or an in-order
    view of one, is read from that data: checking it costs no upload, no device read and no wait."""
    if not isinstance(index, Tensor):
        return np.asarray(index)
    lazy = index.lazydata
    base = lazy.base
    # not realized: nothing can have written to its memory since the array was handed over
    if base.op is Op.HOST and base.buffer is None and lazy.st.contiguous_view and lazy.st.size == base.arg.size:
        return base.arg.reshape(lazy.shape)
    return index.numpy()


def check_indices(index, size: int, op: str, dim: int | None, negative: bool, ignore: int | None = None) -> None:
    """Raise IndexError naming op, dim, its size and the first bad index when an index is outside [-size, size)
    (negative indices count from the end) or [0, size) (negative=False). `ignore` is a value that is allowed
    anyway (cross_entropy's ignore_index); dim None means the flattened tensor (take)."""
    values = host_values(index)
    if values.size == 0 or values.dtype.kind not in "iu":
        return
    low = -size if negative else 0
    bad = (values < low) | (values >= size)
    if ignore is not None:
        bad &= values != ignore
    if bad.any():
        first = int(values[bad].flat[0])
        where = f"a tensor of {size} elements" if dim is None else f"dimension {dim} with size {size}"
        allowed = f"[{low}, {size})" if size else "none: the dimension is empty"
        raise IndexError(f"{op}(): index {first} is out of bounds for {where} (valid indices: {allowed})")

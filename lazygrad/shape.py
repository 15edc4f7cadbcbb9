"""Views: how a tensor's shape maps onto memory, without copying.

A `View` is (shape, strides, offset, mask): element idx lives at offset + sum(idx*strides) when
every idx[d] is inside mask[d], and reads as 0 otherwise (that is how padding costs nothing).
A `ShapeTracker` is a stack of views; a reshape that one view cannot express pushes a new view,
which indexes the previous view's shape as if it were contiguous.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

from lazygrad.symbolic import (
    VARIABLES_MADE,
    Node,
    Num,
    all_of,
    ge,
    is_symbolic,
    lt,
    sum_of,
    to_node,
    unbind_node,
    upper_bound,
)


def prod(xs) -> int:
    """The product of sizes; a symbolic size (a Node) makes it an expression."""
    return functools.reduce(operator.mul, xs, 1)


def max_prod(xs) -> int:
    """The product of sizes, each symbolic one at its bound: the elements a buffer of that shape is allocated for."""
    return functools.reduce(operator.mul, (upper_bound(x) for x in xs), 1)


def _dim_size(s):
    """A dim's size as a View holds it: an int, or an expression of Variables (one that folded to a number is an
    int)."""
    if isinstance(s, Node):
        return s.value if isinstance(s, Num) else s
    return int(s)


def symbolic_dims(shape: tuple) -> list:
    """The positions of a shape's symbolic sizes."""
    return [d for d, s in enumerate(shape) if isinstance(s, Node)]


def describe_symbolic(shape: tuple) -> str:
    """A shape with its symbolic sizes and their variables' bounds, for error messages."""
    names = sorted({f"{v.name} in [{v.vmin}, {v.vmax}]" for s in shape if isinstance(s, Node) for v in s.variables()})
    return f"{tuple(shape)} (symbolic: {', '.join(names)})" if names else str(tuple(shape))


def shape_from_args(shape) -> tuple:
    """A shape given as torch takes it, `f(2, 3)` or `f((2, 3))`, as a tuple of ints; a negative size is refused."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = tuple(_dim_size(s) for s in shape)  # (a Variable's expression stays one: a symbolic size)
    if any(not isinstance(s, Node) and s < 0 for s in shape):
        raise RuntimeError(f"negative dimension in shape {shape}")
    return shape


@functools.lru_cache(maxsize=4096)  # a handful of shapes recur in every step of a training loop
def contiguous_strides(shape: tuple) -> tuple:
    # a symbolic size is laid out at its bound: a buffer of symbolic shape is allocated for the largest value, and
    # its strides stay plain ints
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc if s != 1 else 0)
        acc *= upper_bound(s)
    return tuple(reversed(strides))


@dataclass(frozen=True)
class View:
    shape: tuple
    strides: tuple
    offset: int = 0
    mask: tuple | None = None  # ((start, end), ...) per dim, or None when every element is real

    def __hash__(self):  # cached: views are keys of the graph's movement cache, looked up on every view made
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.shape, self.strides, self.offset, self.mask))
            object.__setattr__(self, "_hash", cached)
        return cached

    @staticmethod
    def create(shape, strides=None, offset=0, mask=None) -> View:
        shape = tuple(s if type(s) is int else _dim_size(s) for s in shape)  # (ints, the common case, as they are)
        strides = (
            contiguous_strides(shape)
            if strides is None
            else tuple(0 if s == 1 else st for s, st in zip(shape, strides))
        )
        if mask is not None:
            if any(is_symbolic(a) or is_symbolic(b) for a, b in mask):
                raise NotImplementedError(f"a masked (padded) view with symbolic bounds {mask} of shape {shape}")
            mask = tuple((int(a), int(b)) for a, b in mask)
            if any(b <= a for a, b in mask):  # nothing is real: everything reads 0
                return View(shape, (0,) * len(shape), 0, tuple((0, 0) for _ in shape))
            if all(m == (0, s) for m, s in zip(mask, shape)):
                mask = None
        return View(shape, tuple(strides), _dim_size(offset), mask)

    @property
    def contiguous(self) -> bool:
        return self.offset == 0 and self.mask is None and self.strides == contiguous_strides(self.shape)

    # --- movement ------------------------------------------------------------------------------
    def permute(self, order) -> View:
        return View.create(
            [self.shape[i] for i in order],
            [self.strides[i] for i in order],
            self.offset,
            None if self.mask is None else [self.mask[i] for i in order],
        )

    def expand(self, new_shape) -> View:
        mask = None
        if self.mask is not None:
            mask = [
                m if s == ns else ((0, ns) if m != (0, 0) else (0, 0))
                for m, s, ns in zip(self.mask, self.shape, new_shape)
            ]
        return View.create(
            new_shape,
            [st if s == ns else 0 for st, s, ns in zip(self.strides, self.shape, new_shape)],
            self.offset,
            mask,
        )

    def shrink(self, arg) -> View:
        if self.mask is not None and any(is_symbolic(a) or is_symbolic(b) for a, b in arg):
            raise NotImplementedError(f"a symbolic slice {arg} of a padded view of shape {self.shape}")
        offset = self.offset + sum(a * st for (a, _), st in zip(arg, self.strides))
        mask = None
        if self.mask is not None:
            mask = [(max(0, ms - a), max(0, min(me, b) - a)) for (ms, me), (a, b) in zip(self.mask, arg)]
        return View.create([b - a for a, b in arg], self.strides, offset, mask)

    def pad(self, arg) -> View:
        """arg: ((before, after), ...) per dim; new elements read as 0."""
        if all(a == 0 and b == 0 for a, b in arg):
            return self
        if VARIABLES_MADE[0] and (symbolic_dims(self.shape) or any(is_symbolic(a) or is_symbolic(b) for a, b in arg)):
            raise NotImplementedError(f"pad {arg} of a view of symbolic shape {describe_symbolic(self.shape)}")
        old_mask = self.mask or tuple((0, s) for s in self.shape)
        mask = [(ms + a, me + a) for (ms, me), (a, _) in zip(old_mask, arg)]
        offset = self.offset - sum(a * st for (a, _), st in zip(arg, self.strides))
        return View.create([s + a + b for s, (a, b) in zip(self.shape, arg)], self.strides, offset, mask)

    def flip(self, axes) -> View:
        strides, offset, mask = list(self.strides), self.offset, list(self.mask) if self.mask else None
        if any(isinstance(self.shape[ax], Node) for ax in axes):
            raise NotImplementedError(f"flip of a symbolic dim of shape {describe_symbolic(self.shape)}")
        for ax in axes:
            offset += (self.shape[ax] - 1) * strides[ax]
            strides[ax] = -strides[ax]
            if mask is not None:
                ms, me = mask[ax]
                mask[ax] = (self.shape[ax] - me, self.shape[ax] - ms)
        return View.create(self.shape, strides, offset, mask)

    def reshape(self, new_shape) -> View | None:
        """The same elements in a new shape, or None when one view cannot say it."""
        new_shape = tuple(new_shape)
        if new_shape == self.shape:
            return self
        if (
            VARIABLES_MADE[0]
            and (symbolic_dims(self.shape) or symbolic_dims(new_shape))
            and [s for s in self.shape if s != 1] != [s for s in new_shape if s != 1]
        ):
            # a symbolic dim's elements are laid out at its bound: merging or splitting it would move them
            raise NotImplementedError(
                f"reshape of {describe_symbolic(self.shape)} to {describe_symbolic(new_shape)}: a view with a symbolic "
                "size can only gain or lose dims of size 1"
            )
        if self.contiguous:
            return View.create(new_shape)
        if 0 in self.shape or 0 in new_shape:
            return View.create(new_shape)
        # only size-1 dims added or removed: keep strides and mask of the real dims
        if [s for s in self.shape if s != 1] == [s for s in new_shape if s != 1]:
            real = [
                (st, m) for s, st, m in zip(self.shape, self.strides, self.mask or [None] * len(self.shape)) if s != 1
            ]
            if self.mask is not None and any(m != (0, 1) for s, m in zip(self.shape, self.mask) if s == 1):
                return None
            it = iter(real)
            strides, mask = [], []
            for s in new_shape:
                st, m = (0, (0, 1)) if s == 1 else next(it)
                strides.append(st)
                mask.append(m)
            return View.create(new_shape, strides, self.offset, mask if self.mask is not None else None)
        if self.mask is not None:
            return self._reshape_masked(new_shape)
        return self._reshape_strided(new_shape)

    def _reshape_strided(self, new_shape) -> View | None:
        # numpy's no-copy reshape: group old and new dims into runs of equal size, each run must be
        # contiguous within itself in the old strides
        old = [(s, st) for s, st in zip(self.shape, self.strides) if s != 1]
        strides, i = [], 0
        new_real = [s for s in new_shape if s != 1]
        j = 0
        out_strides = []
        while i < len(old) or j < len(new_real):
            if i >= len(old) or j >= len(new_real):
                return None
            osz, nsz = old[i][0], new_real[j]
            oi, nj = [i], [j]
            while osz != nsz:
                if osz < nsz:
                    i += 1
                    if i >= len(old):
                        return None
                    osz *= old[i][0]
                    oi.append(i)
                else:
                    j += 1
                    if j >= len(new_real):
                        return None
                    nsz *= new_real[j]
                    nj.append(j)
            for a, b in zip(oi, oi[1:]):  # old run must be mergeable
                if old[a][1] != old[b][1] * old[b][0]:
                    return None
            last_stride = old[oi[-1]][1]
            run = []
            for k in reversed(nj):
                run.append(last_stride)
                last_stride *= new_real[k]
            out_strides.extend(reversed(run))
            i += 1
            j += 1
        it = iter(out_strides)
        strides = [0 if s == 1 else next(it) for s in new_shape]
        return View.create(new_shape, strides, self.offset)

    def _reshape_masked(self, new_shape) -> View | None:
        # split or merge dims where the mask only limits the outermost dim of a run
        unmasked = View.create(self.shape, self.strides, self.offset).reshape(new_shape)
        if unmasked is None:
            return None
        # map the mask when the reshape only splits dims that are fully real, or merges trailing real dims
        old, new = list(self.shape), list(new_shape)
        mask_out = []
        i = j = 0
        while i < len(old) and j < len(new):
            if old[i] == new[j]:
                mask_out.append(self.mask[i])
                i += 1
                j += 1
                continue
            if old[i] > new[j]:  # split old dim i into several new dims: only when fully real
                if self.mask[i] != (0, old[i]):
                    return None
                acc = 1
                while acc < old[i] and j < len(new):
                    acc *= new[j]
                    mask_out.append((0, new[j]))
                    j += 1
                if acc != old[i]:
                    return None
                i += 1
            else:
                return None
        if i != len(old) or j != len(new):
            return None
        return View.create(new_shape, unmasked.strides, unmasked.offset, mask_out)

    # --- indexing --------------------------------------------------------------------------------
    def index_and_valid(self, idxs: list) -> tuple[Node, Node]:
        expr = sum_of([to_node(i) * st for i, st in zip(idxs, self.strides) if st != 0] + [to_node(self.offset)])
        valid = []
        if self.mask is not None:
            for i, (ms, me), s in zip(idxs, self.mask, self.shape):
                i = to_node(i)
                if ms > 0:
                    valid.append(ge(i, ms))
                if me < s:
                    valid.append(lt(i, me))
        return expr, all_of(valid)


_CONTIGUOUS: dict = {}  # shape -> its contiguous ShapeTracker (immutable, so shared)


@dataclass(frozen=True)
class ShapeTracker:
    views: tuple  # of View; the last one is the shape seen by the user

    def __hash__(self):  # cached, as View's
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(self.views)
            object.__setattr__(self, "_hash", cached)
        return cached

    @staticmethod
    def contiguous(shape) -> ShapeTracker:
        shape = tuple(shape)
        tracker = _CONTIGUOUS.get(shape)
        if tracker is None:
            tracker = ShapeTracker((View.create(shape),))
            if len(_CONTIGUOUS) < 4096:  # every new base of a training loop's few shapes: built once
                _CONTIGUOUS[shape] = tracker
        return tracker

    @property
    def shape(self) -> tuple:
        return self.views[-1].shape

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def symbolic(self) -> bool:
        """Whether a size, offset or index of these views depends on a Variable (cached: asked for every leaf of
        every kernel)."""
        cached = self.__dict__.get("_symbolic")
        if cached is None:
            cached = any(isinstance(v.offset, Node) or any(isinstance(s, Node) for s in v.shape) for v in self.views)
            object.__setattr__(self, "_symbolic", cached)
        return cached

    def unbind(self) -> tuple:
        """(these views with every bound Variable unbound, {name: value} of the bindings): the tracker a kernel
        holds, so that the kernel is the same for every value."""
        if not self.symbolic:
            return self, {}
        values, views = {}, []
        for v in self.views:
            shape = []
            for s in v.shape:
                s, found = unbind_node(s)
                shape.append(s)
                values.update(found)
            offset, found = unbind_node(v.offset)
            values.update(found)
            views.append(View(tuple(shape), v.strides, offset, v.mask))
        return ShapeTracker(tuple(views)), values

    @property
    def contiguous_view(self) -> bool:
        """True when reading through this tracker is reading memory in order."""
        return len(self.views) == 1 and self.views[-1].contiguous

    def _with_last(self, view: View) -> ShapeTracker:
        return ShapeTracker(self.views[:-1] + (view,))

    def permute(self, order):
        return self._with_last(self.views[-1].permute(order))

    def expand(self, shape):
        return self._with_last(self.views[-1].expand(shape))

    def shrink(self, arg):
        return self._with_last(self.views[-1].shrink(arg))

    def pad(self, arg):
        return self._with_last(self.views[-1].pad(arg))

    def flip(self, axes):
        return self._with_last(self.views[-1].flip(axes))

    def window(self, arg):
        """Sliding windows over the last n dims: (..., i) -> (..., o, k) reading x[o*stride + k*dilation].
        arg: (kernel, stride, dilation), tuples of n ints."""
        kernel, stride, dilation = arg
        n = len(kernel)
        last = self.views[-1]
        lead = last.shape[:-n]
        outs = tuple((i - d * (k - 1) - 1) // s + 1 for i, k, s, d in zip(last.shape[-n:], kernel, stride, dilation))
        if last.mask is None:  # the windows are one more strided view of the same memory
            views, strides, offset = self.views[:-1], last.strides, last.offset
        else:  # index the masked view as if contiguous, in a view of its own
            views, strides, offset = self.views, contiguous_strides(last.shape), 0
        sp = strides[-n:]
        new = View.create(
            lead + outs + tuple(kernel),
            strides[:-n] + tuple(st * s for st, s in zip(sp, stride)) + tuple(st * d for st, d in zip(sp, dilation)),
            offset,
        )
        return ShapeTracker(views + (new,))

    def reshape(self, shape):
        new = self.views[-1].reshape(shape)
        if new is not None:
            return self._with_last(new)
        return ShapeTracker(self.views + (View.create(shape),))

    def apply(self, movement_ops) -> ShapeTracker:
        st = self
        for op, arg in movement_ops:
            st = getattr(st, op)(arg)
        return st

    def index_and_valid(self, idxs: list) -> tuple[Node, Node]:
        """Memory index and validity (0/1) for the element at idxs of the last view."""
        expr, valid = self.views[-1].index_and_valid(idxs)
        conditions = [valid]
        for view in reversed(self.views[:-1]):
            # the flat position in the previous view, unravelled into its shape
            idxs, acc = [], 1
            for s in reversed(view.shape):
                idxs.append((expr // acc) % s if s != 1 else Num(0))
                acc *= s
            expr, valid = view.index_and_valid(list(reversed(idxs)))
            conditions.append(valid)
        return expr, all_of(conditions)


def merge_dims_plan(shape: tuple, trackers: list, reduce_axes: set = frozenset()) -> list:
    """Groups of adjacent dims that every tracker reads as one dim (fewer loops, simpler indexes).

    Only single-view, unmasked trackers merge; reduce and output dims never mix."""
    if not shape:
        return []
    groups = [[0]]
    for d in range(1, len(shape)):
        prev = groups[-1][-1]
        # a symbolic dim stays a loop of its own: its bound is a kernel argument
        ok = (prev in reduce_axes) == (d in reduce_axes) and not isinstance(shape[prev], Node)
        ok = (
            ok
            and not isinstance(shape[d], Node)
            and all(
                len(t.views) == 1
                and t.views[0].mask is None
                and t.views[0].strides[prev] == t.views[0].strides[d] * shape[d]
                for t in trackers
            )
        )
        if ok:
            groups[-1].append(d)
        else:
            groups.append([d])
    return groups

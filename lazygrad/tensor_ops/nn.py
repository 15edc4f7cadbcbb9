"""Neural-network ops: matmul and linear, conv2d, pooling, dropout, attention. nn.functional calls these."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lazygrad import autograd
from lazygrad import dtype as dt
from lazygrad.codegen import layout
from lazygrad.graph import LazyBuffer
from lazygrad.ops import ELEMENTWISE, Op
from lazygrad.shape import max_prod, symbolic_dims
from lazygrad.symbolic import VARIABLES_MADE
from lazygrad.tensor_ops.elementwise import _broadcast_shape

if TYPE_CHECKING:
    from lazygrad.tensor import Tensor
# at run time `Tensor` is the finished class, bound in by lazygrad.tensor (tensor_ops.bind_tensor_class)


def as_pair(value) -> tuple:
    """An int, a 1-tuple or a pair of ints (kernel size, stride, padding, dilation) as a pair."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    return (value, value) if isinstance(value, int) else tuple(value)


def ceil_mode_extra(spatial: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> tuple:
    """The padding beyond the right/bottom edge that ceil_mode adds per spatial dim: as PyTorch, the output
    size rounds up, but a last window that would start in the right padding is dropped."""
    extra = []
    for size, k, s, p, d in zip(spatial, kernel, stride, padding, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        out = -(-span // s) + 1
        if (out - 1) * s >= size + p:
            out -= 1
        extra.append(max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p)))
    return tuple(extra)


class NNOps:
    __slots__ = ()

    __matmul__ = lambda self, other: self.matmul(other)  # noqa: E731

    def __rmatmul__(self, other):
        other = other if isinstance(other, Tensor) else Tensor(other, device=self.device)  # keeps its autograd
        return other.matmul(self)

    def matmul(self, other: Tensor) -> Tensor:
        a, b = self, other if isinstance(other, Tensor) else Tensor(other, device=self.device)
        out = a._matmul_same_batch(b)
        if out is not None:
            return out
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

    def _matmul_same_batch(self, other: Tensor, transposed: bool = False) -> Tensor | None:
        """matmul of two float tensors of one dtype, >= 2 dims and the same batch dims (a layer's product, and each
        product of its gradient): the very nodes the general path below makes (the same kernels), built on graph
        nodes and recorded as one op (autograd.MATMUL), where the general path makes eight tensors, each with its
        promotion, broadcasting and autograd record. `transposed`: the product with other's transpose, of two
        matrices (linear's `x @ weight.T`: the transpose's node as `.T` makes it, without a tensor of its own). None
        where it does not apply (the general path then)."""
        x, y = self._lazydata, other._lazydata
        if transposed:
            if len(x.shape) != 2 or len(y.shape) != 2:
                return None
            y = y.permute((1, 0))
        shape_x, shape_y = x.shape, y.shape
        nd = len(shape_x)
        if (
            nd < 2
            or len(shape_y) != nd
            or x.dtype is not y.dtype
            or not x.dtype.is_float
            or shape_x[-1] != shape_y[-2]
            or shape_x[:-2] != shape_y[:-2]
            or (x.device is not y.device and x.device != y.device)
            or (VARIABLES_MADE[0] and (symbolic_dims(shape_x) or symbolic_dims(shape_y)))
        ):
            return None
        left, right, product = autograd.matmul_nodes(x, y)
        out = Tensor._wrap(product.reduce(Op.SUM, (nd,)).reshape(shape_x[:-1] + shape_y[-1:]))
        return Tensor._record(out, autograd.MATMUL, (self, other), (x, other._lazydata, left, right, transposed))

    def mm(self, other):
        return self.matmul(other)

    def dot(self, other):
        return (self * other).sum()

    def linear(self, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if weight.ndim != 2:
            out = self * weight
        elif self._transposes_weight(weight):
            out = self._linear_transposed_weight(weight)
        else:
            out = self._matmul_same_batch(weight, transposed=True)
            if out is None:
                out = self.matmul(weight.T)
        return out + bias if bias is not None else out

    def _transposes_weight(self, weight: Tensor) -> bool:
        rows = math.prod(self.shape[:-1])
        return (
            self.ndim >= 2
            and self.dtype == weight.dtype
            and self.dtype.is_float
            and self.shape[-1] == weight.shape[1]
            and layout.linear_weight_transposed(self.device, rows, _is_plain_buffer(weight))
        )

    def _linear_transposed_weight(self, weight: Tensor) -> Tensor:
        """x @ weight.T through a transposed copy of the weight (in, out), so that the product's vector lanes run
        along the output features (codegen.layout.linear_weight_transposed). The gradients read the weight and
        the input as they are: the input's gradient as `grad @ weight`, lanes along the input features of the
        weight's rows (through the copy it would read the copy transposed, lanes along the reduce again)."""
        x_in, w_in = self, weight
        stored = []  # x_in as the products read it (rows padded where that is free), for the weight gradient

        def forward() -> Tensor:
            x = _rows_padded_where_free(x_in)
            stored.append(x)
            return _product_through_panels(x, w_in.T).reshape(*x_in.shape[:-1], w_in.shape[0])

        def backward(grad: Tensor) -> tuple:
            grad_x = _product_through_panels(grad, w_in) if x_in.requires_grad else None
            grad_w = None
            if w_in.requires_grad:
                rows = grad.reshape(-1, grad.shape[-1])
                # (with create_graph, x_in itself: the stored rows carry no graph)
                x = stored[0].detach() if stored and not autograd.is_grad_enabled() else x_in
                grad_w = rows.T.matmul(x.reshape(-1, x.shape[-1]))
            return grad_x, grad_w

        return Tensor._composite("linear", (x_in, w_in), forward, backward)

    def _pool(self, kernel: tuple, stride: tuple, dilation: tuple) -> Tensor:
        """Sliding windows as a view: (..., *spatial) -> (..., *out_spatial, *kernel). Never a copy."""
        _check_windows(self.shape[-len(kernel) :], kernel, stride, dilation)
        return self._movement(Op.WINDOW, (tuple(kernel), tuple(stride), tuple(dilation)))

    def conv2d(
        self, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1
    ) -> Tensor:
        if self.ndim == 3 and weight.ndim == 4:  # unbatched (C, H, W), as torch
            return self.unsqueeze(0).conv2d(weight, bias, stride, padding, dilation, groups).squeeze(0)
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
        stride, dilation = as_pair(stride), as_pair(dilation)
        x_in, w_in = self, weight
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                if stride != (1, 1):
                    raise RuntimeError("padding='same' is not supported for strided convolutions")
                # as PyTorch: an odd total padding puts the extra pixel on the right/bottom
                totals = [d * (k - 1) for d, k in zip(dilation, (kh, kw))]
                (top, left), (bottom, right) = [t // 2 for t in totals], [t - t // 2 for t in totals]
                if (bottom, right) != (top, left):
                    x_in = x_in.pad((left, right, top, bottom))
                    n, cin, h, w = x_in.shape
                    top, left = 0, 0
                padding = (top, left)
            else:
                raise RuntimeError(f"Invalid padding string: {padding!r} (expected 'valid', 'same' or ints)")
        padding = as_pair(padding)
        g, cout_g = groups, cout // groups

        def windows_of(x: Tensor) -> Tensor:  # (n, groups, cin_g, oh, ow, kh, kw), a view of the padded input
            x = x.pad((padding[1], padding[1], padding[0], padding[0]))
            win = x._pool((kh, kw), stride, dilation)
            return win.reshape(n, g, cin_g, *win.shape[2:])

        def window_nodes(source: LazyBuffer | None = None) -> LazyBuffer:  # windows_of(x_in), on nodes
            source = x_in._lazydata if source is None else source
            win = source.pad(((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
            _check_windows(win.shape[2:], (kh, kw), stride, dilation)
            win = win.window(((kh, kw), stride, dilation))
            return win.reshape((n, g, cin_g, *win.shape[2:]))

        columns = []  # the window columns, when forward copies them out; the weight gradient reuses them

        def forward() -> Tensor:
            if _conv_forward_on_nodes(x_in, w_in):
                return Tensor._wrap(forward_nodes())
            win = windows_of(x_in)
            oh, ow = win.shape[3:5]
            chosen = layout.conv_layout(x_in.device, ow, cout_g, _is_plain_buffer(w_in), stride[1] > 1)
            if chosen is layout.ConvLayout.COLUMNS:
                # the windows copied out as columns (n, g, oh, ow, cin_g*kh*kw), small where this is chosen
                cols = win.permute(0, 1, 3, 4, 2, 5, 6).contiguous()
                columns.append(cols)
                if layout.columns_weight_transposed(x_in.device, n * oh * ow, g):
                    return _columns_times_transposed_weight(cols, w_in)
                out = (cols.unsqueeze(2) * w_in.reshape(1, g, cout_g, 1, 1, cin_g, kh, kw)).sum((5, 6, 7))
            elif chosen is layout.ConvLayout.CHANNEL_LAST_WEIGHT:
                # copied channel-last (a weight seen through a view, such as the input gradient's flipped one, or a
                # strided conv's), so that lanes run over the output channels
                wt = w_in.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
                out = (win.unsqueeze(2) * wt.reshape(1, g, cout_g, cin_g, 1, 1, kh, kw)).sum((3, 6, 7))
            else:
                out = (win.unsqueeze(2) * w_in.reshape(1, g, cout_g, cin_g, 1, 1, kh, kw)).sum((3, 6, 7))
            return out.reshape(n, cout, oh, ow)

        def forward_nodes() -> LazyBuffer:
            # forward's nodes, call for call as its tensor ops make them, without a tensor per op (never recorded)
            win = window_nodes()
            oh, ow = win.shape[3:5]
            weight = w_in._lazydata
            chosen = layout.conv_layout(x_in.device, ow, cout_g, _is_plain_buffer(w_in), stride[1] > 1)
            if chosen is layout.ConvLayout.COLUMNS:
                cols = win.permute((0, 1, 3, 4, 2, 5, 6)).contiguous()
                columns.append(Tensor._wrap(cols))
                if layout.columns_weight_transposed(x_in.device, n * oh * ow, g):
                    return _columns_times_transposed_weight(columns[-1], Tensor._wrap(weight))._lazydata
                cols = cols.reshape(cols.shape[:2] + (1,) + cols.shape[2:])
                out = _product_sum(cols, weight.reshape((1, g, cout_g, 1, 1, cin_g, kh, kw)), (5, 6, 7))
            else:
                if chosen is layout.ConvLayout.CHANNEL_LAST_WEIGHT:
                    weight = weight.permute((1, 2, 3, 0)).contiguous().permute((3, 0, 1, 2))
                win = win.reshape(win.shape[:2] + (1,) + win.shape[2:])
                out = _product_sum(win, weight.reshape((1, g, cout_g, cin_g, 1, 1, kh, kw)), (3, 6, 7))
            return out.reshape((n, cout, oh, ow))

        def backward(grad: Tensor) -> tuple:
            # the gradient as two convolutions (what PyTorch does too), rather than the autograd of the
            # window view: both are ordinary reduce kernels that the code generator vectorizes
            oh, ow = grad.shape[2:]
            grad_x = grad_w = None
            if x_in.requires_grad:
                grad_x = _conv2d_input_grad(grad, w_in, (h, w), stride, padding, dilation, groups)
            # partial sums over `parts` slices of the batch, then their sum (codegen.layout says why)
            parts = layout.weight_grad_batch_parts(grad.device, n, (cout_g * g, cin_g * kh * kw), n * oh * ow)
            if w_in.requires_grad and not autograd.is_grad_enabled() and _conv_forward_on_nodes(x_in, w_in):
                if grad.dtype is x_in.dtype:
                    return grad_x, Tensor._wrap(weight_grad_nodes(grad._lazydata, parts))
            if w_in.requires_grad and columns and not autograd.is_grad_enabled():
                # output lanes along cin_g*kh*kw, contiguous in both (the columns carry no graph: with
                # create_graph the windows below keep the weight gradient differentiable in x)
                gg = grad.reshape(parts, n // parts, g, cout_g, oh, ow, 1, 1, 1)
                cols = columns[0].detach().reshape(parts, n // parts, *columns[0].shape[1:]).unsqueeze(3)
                grad_w = (gg * cols).sum((1, 4, 5)).sum(0).reshape(cout, cin_g, kh, kw)
            elif (
                w_in.requires_grad
                and g == 1
                and layout.weight_grad_channel_last(grad.device, stride, cout, grad.numel())
            ):
                rows = grad.permute(0, 2, 3, 1).contiguous().reshape(n, oh, ow, cout, 1, 1, 1)
                win = windows_of(x_in).permute(0, 3, 4, 1, 2, 5, 6)  # (n, oh, ow, 1, cin, kh, kw)
                grad_w = (rows * win).sum((0, 1, 2)).reshape(cout, cin_g, kh, kw)
            elif w_in.requires_grad:
                source = x_in
                if layout.weight_grad_input_channel_last(grad.device, stride, g, cin, ow, n * oh * ow):
                    source = x_in.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # stored (n, h, w, cin)
                win = windows_of(source).unsqueeze(2)  # (n, g, 1, cin_g, oh, ow, kh, kw)
                win = win.reshape(parts, n // parts, *win.shape[1:])
                gg = grad.reshape(parts, n // parts, g, cout_g, 1, oh, ow, 1, 1)
                grad_w = (gg * win).sum((1, 5, 6)).sum(0).reshape(cout, cin_g, kh, kw)
            return grad_x, grad_w

        def weight_grad_nodes(grad: LazyBuffer, parts: int) -> LazyBuffer:
            # backward's weight gradient on nodes, call for call as its tensor ops below make them (each branch)
            oh, ow = grad.shape[2:]
            if columns:
                gg = grad.reshape((parts, n // parts, g, cout_g, oh, ow, 1, 1, 1))
                cols = columns[0]._lazydata
                cols = cols.reshape((parts, n // parts, *cols.shape[1:]))
                cols = cols.reshape(cols.shape[:3] + (1,) + cols.shape[3:])
                out = _sum_nodes(_product_sum(gg, cols, (1, 4, 5)), (0,))
            elif g == 1 and layout.weight_grad_channel_last(x_in.device, stride, cout, max_prod(grad.shape)):
                rows = grad.permute((0, 2, 3, 1)).contiguous().reshape((n, oh, ow, cout, 1, 1, 1))
                out = _product_sum(rows, window_nodes().permute((0, 3, 4, 1, 2, 5, 6)), (0, 1, 2))
            else:
                source = None
                if layout.weight_grad_input_channel_last(x_in.device, stride, g, cin, ow, n * oh * ow):
                    source = x_in._lazydata.permute((0, 2, 3, 1)).contiguous().permute((0, 3, 1, 2))
                win = window_nodes(source)
                win = win.reshape(win.shape[:2] + (1,) + win.shape[2:])
                win = win.reshape((parts, n // parts, *win.shape[1:]))
                gg = grad.reshape((parts, n // parts, g, cout_g, 1, oh, ow, 1, 1))
                out = _sum_nodes(_product_sum(gg, win, (1, 5, 6)), (0,))
            return out.reshape((cout, cin_g, kh, kw))

        out = Tensor._composite("conv2d", (x_in, w_in), forward, backward)
        return out + bias.reshape(1, -1, 1, 1) if bias is not None else out

    def conv1d(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
        single = lambda v: v[0] if isinstance(v, (tuple, list)) else v  # noqa: E731 (torch takes (n,) too)
        padding = padding if isinstance(padding, str) else (0, single(padding))
        stride, dilation = (1, single(stride)), (1, single(dilation))
        return self.unsqueeze(-2).conv2d(weight.unsqueeze(-2), bias, stride, padding, dilation, groups).squeeze(-2)

    def conv_transpose2d(
        self, weight: Tensor, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1, dilation=1
    ) -> Tensor:
        """The adjoint of conv2d in its input (what conv2d's input gradient computes): weight (C_in, C_out /
        groups, kh, kw); output size (H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1."""
        if self.ndim == 3 and weight.ndim == 4:  # unbatched (C, H, W), as torch
            out = self.unsqueeze(0).conv_transpose2d(weight, bias, stride, padding, output_padding, groups, dilation)
            return out.squeeze(0)
        if self.ndim != 4 or weight.ndim != 4 or self.shape[1] != weight.shape[0] or weight.shape[0] % groups:
            raise RuntimeError(
                f"conv_transpose2d expects input (N, C_in, H, W) and weight (C_in, C_out / groups, kh, kw) with "
                f"C_in divisible by groups={groups}; got input {self.shape} and weight {weight.shape}"
            )
        s, p, d = as_pair(stride), as_pair(padding), as_pair(dilation)
        extra = as_pair(output_padding)
        if any(e >= max(st, di) for e, st, di in zip(extra, s, d)):
            raise RuntimeError(f"output_padding {extra} must be smaller than either stride {s} or dilation {d}")
        out_hw = tuple(
            (size - 1) * st - 2 * pad + di * (k - 1) + e + 1
            for size, st, pad, di, k, e in zip(self.shape[2:], s, p, d, weight.shape[2:], extra)
        )
        # the full output (no padding: every position some window reaches), then cut by the padding on both
        # sides and extended by output_padding: rows past the last window's reach are zeros
        full_hw = tuple(
            (size - 1) * st + di * (k - 1) + 1 for size, st, di, k in zip(self.shape[2:], s, d, weight.shape[2:])
        )
        full = _conv2d_input_grad(self, weight, full_hw, s, (0, 0), d, groups)
        after = tuple(size - (f - pad) for size, f, pad in zip(out_hw, full_hw, p))
        out = full.pad((-p[1], after[1], -p[0], after[0])) if any(p) or any(after) else full
        return out + bias.reshape(1, -1, 1, 1) if bias is not None else out

    def conv_transpose1d(
        self, weight: Tensor, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1, dilation=1
    ) -> Tensor:
        single = lambda v: v[0] if isinstance(v, (tuple, list)) else v  # noqa: E731 (torch takes (n,) too)
        neutral = (1, 0, 0, 1)  # the height's stride, padding, output_padding and dilation
        pairs = [(n, single(v)) for n, v in zip(neutral, (stride, padding, output_padding, dilation))]
        stride, padding, output_padding, dilation = pairs
        out = self.unsqueeze(-2).conv_transpose2d(
            weight.unsqueeze(-2), bias, stride, padding, output_padding, groups, dilation
        )
        return out.squeeze(-2)

    def max_pool1d(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        """max_pool2d over a height of 1: its flat indices are then the positions along the length."""
        k, s = as_pair(kernel_size)[0], as_pair(stride or kernel_size)[0]
        p, d = as_pair(padding)[0], as_pair(dilation)[0]
        out = self.unsqueeze(-2).max_pool2d((1, k), (1, s), (0, p), (1, d), ceil_mode, return_indices)
        return (out[0].squeeze(-2), out[1].squeeze(-2)) if return_indices else out.squeeze(-2)

    def avg_pool1d(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> Tensor:
        k, s, p = as_pair(kernel_size)[0], as_pair(stride or kernel_size)[0], as_pair(padding)[0]
        return self.unsqueeze(-2).avg_pool2d((1, k), (1, s), (0, p), ceil_mode, count_include_pad).squeeze(-2)

    def max_pool2d(
        self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
    ) -> Tensor:
        k = as_pair(kernel_size)
        s = as_pair(stride if stride else kernel_size)  # torch: None or () is the kernel size
        p = as_pair(padding)
        d = as_pair(dilation)
        if any(2 * pad > size for pad, size in zip(p, k)):
            raise RuntimeError(f"max_pool2d: padding {p} should be at most half of the kernel size {k}")
        extra = ceil_mode_extra(self.shape[-2:], k, s, p, d) if ceil_mode else (0, 0)
        x_in = self

        def windows() -> Tensor:  # (..., oh, ow, kh, kw), a view of the input padded with max's identity (-inf)
            pads = (p[1], p[1] + extra[1], p[0], p[0] + extra[0])
            x = x_in.pad(pads, value=dt.lowest(x_in.dtype)) if any(pads) else x_in
            return x._pool(k, s, d)

        # forward's windows and maxima, as tensors of their nodes: not detach(), whose alias refers to its source, and
        # the output refers to this closure through its autograd record (a reference cycle)
        saved = []

        def forward() -> Tensor:
            win = windows()
            out = win.amax((-2, -1))
            saved.append((Tensor._wrap(win.lazydata), Tensor._wrap(out.lazydata)))
            return out

        def backward(grad: Tensor) -> tuple:
            # as PyTorch: each window's gradient goes to its first maximal element (a NaN counts as one),
            # found by a reduce over the window; then back to the input positions (col2im). The windows and maxima
            # are forward's (no gradient flows through the choice, under create_graph too)
            win, best = saved[0]
            rank = Tensor._index_constant(k[0] * k[1], 0, -1, dt.float32, self.device, k)
            padded = tuple(size + 2 * pad + e for size, pad, e in zip(x_in.shape[-2:], p, extra))
            crop = tuple(zip(p, x_in.shape[-2:]))  # the padding's positions get no gradient
            if not autograd.is_grad_enabled():  # (no gradient of the gradient: the same nodes, without tensors)
                spread = _max_pool_spread(win._lazydata, best._lazydata, rank._lazydata, grad._lazydata)
                input_hw = (*x_in.shape[:-2], *padded)[-2:]
                return (Tensor._wrap(autograd.col2im(spread, input_hw, k, s, d, crop)),)
            best = best.unsqueeze(-1).unsqueeze(-1)
            hit = (win == best) | (win != win)
            first = hit._select(rank, 0.0).amax((-2, -1), keepdim=True)  # the rank of the first hit
            spread = (rank == first)._select(grad.unsqueeze(-1).unsqueeze(-1), 0.0)
            return (autograd.window_transpose(spread, (*x_in.shape[:-2], *padded), k, s, d, crop),)

        out = Tensor._composite("max_pool2d", (x_in,), forward, backward)
        if not return_indices:
            return out
        # each window's first maximal element (a NaN counts as one), as its flat position h * W + w in the input
        height, width = self.shape[-2:]
        positions = Tensor.arange(height * width, dtype=dt.float32, device=self.device).reshape(height, width)
        position_windows = positions.pad((p[1], p[1] + extra[1], p[0], p[0] + extra[0]), value=-1.0)._pool(k, s, d)
        win = windows().detach()
        hit = (win == out.detach().unsqueeze(-1).unsqueeze(-1)) | (win != win)
        rank = Tensor.arange(k[0] * k[1], 0, -1, dtype=dt.float32, device=self.device).reshape(k)
        ranks = hit._select(rank, 0.0)
        first = ranks == ranks.amax((-2, -1), keepdim=True)
        indices = first._select(position_windows, 0.0).sum((-2, -1))
        return out, indices.cast(dt.int64)

    def avg_pool2d(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
    ) -> Tensor:
        k = as_pair(kernel_size)
        s = as_pair(stride if stride else kernel_size)  # torch: None or () is the kernel size
        p = as_pair(padding)
        if any(2 * pad > size for pad, size in zip(p, k)):
            raise RuntimeError(f"avg_pool2d: padding {p} should be at most half of the kernel size {k}")
        height, width = self.shape[-2:]
        extra = ceil_mode_extra((height, width), k, s, p, (1, 1)) if ceil_mode else (0, 0)
        pads = (p[1], p[1] + extra[1], p[0], p[0] + extra[0])
        x = self.pad(pads) if any(pads) else self
        sums = x._pool(k, s, (1, 1)).sum((-2, -1))
        if not self.dtype.is_float:  # torch: an integer average truncates to the input's dtype
            return sums._average(self, k, s, p, extra, count_include_pad, divisor_override).trunc().cast(self.dtype)
        return sums._average(self, k, s, p, extra, count_include_pad, divisor_override)

    def _average(self, input: Tensor, k, s, p, extra, count_include_pad, divisor_override) -> Tensor:
        """avg_pool2d's window sums (self) divided as PyTorch divides them."""
        sums, (height, width) = self, input.shape[-2:]
        pads = (p[1], p[1] + extra[1], p[0], p[0] + extra[0])
        if divisor_override is not None:
            if divisor_override == 0:
                raise RuntimeError("avg_pool2d: divisor must be not zero")
            return sums / divisor_override
        if (count_include_pad or not any(p)) and not any(extra):
            return sums / (k[0] * k[1])
        # as PyTorch: a window counts the padding (count_include_pad) but never ceil_mode's extra cells
        counted = (height + 2 * p[0], width + 2 * p[1]) if count_include_pad else (height, width)
        around = (extra[1], extra[0]) if count_include_pad else (0, 0)
        ones = Tensor.ones(*counted, dtype=dt.float32, device=self.device)
        ones = ones.pad(pads if not count_include_pad else (0, around[0], 0, around[1]))
        counts = ones._pool(k, s, (1, 1)).sum((-2, -1))
        return sums / counts

    def adaptive_avg_pool2d(self, output_size) -> Tensor:
        """PyTorch's adaptive windows: output cell i averages input [floor(i*n/out), ceil((i+1)*n/out)) per dim;
        None in output_size keeps that dim's size."""
        height, width = self.shape[-2:]
        out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
        out_h, out_w = out_h or height, out_w or width
        if (out_h, out_w) == (1, 1):
            return self.mean((-2, -1), keepdim=True)
        if height % out_h == 0 and width % out_w == 0:
            kernel = (height // out_h, width // out_w)
            return self.avg_pool2d(kernel, stride=kernel)
        # the average of a rectangle is the average over rows of the averages over columns: one dim at a time
        return self._adaptive_avg_pool_dim(self.ndim - 2, out_h)._adaptive_avg_pool_dim(self.ndim - 1, out_w)

    def adaptive_max_pool2d(self, output_size, return_indices: bool = False):
        """PyTorch's adaptive windows (see adaptive_avg_pool2d), each cell's maximum; its indices are flat
        positions h * W + w in the input."""
        height, width = self.shape[-2:]
        out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
        out_h, out_w = out_h or height, out_w or width
        if height % out_h == 0 and width % out_w == 0:
            kernel = (height // out_h, width // out_w)
            return self.max_pool2d(kernel, kernel, return_indices=return_indices)
        rows = [((i * height) // out_h, -(-(i + 1) * height // out_h)) for i in range(out_h)]
        columns = [((j * width) // out_w, -(-(j + 1) * width // out_w)) for j in range(out_w)]
        values, indices = [], []
        for top, bottom in rows:
            for left, right in columns:
                cell = self[..., top:bottom, left:right].flatten(-2)
                values.append(cell.amax(-1))
                if return_indices:  # the cell's first maximum, mapped back to the input's flat position
                    local = cell.detach().argmax(-1)
                    indices.append((top + local // (right - left)) * width + left + local % (right - left))
        shape = (*self.shape[:-2], out_h, out_w)
        out = Tensor.stack(values, dim=-1).reshape(shape)
        return (out, Tensor.stack(indices, dim=-1).reshape(shape).cast(dt.int64)) if return_indices else out

    def _adaptive_avg_pool_dim(self, dim: int, out_size: int) -> Tensor:
        in_size = self.shape[dim]
        if in_size == out_size:
            return self
        if out_size == 1:
            return self.mean(dim, keepdim=True)
        cells = []
        for i in range(out_size):
            start, end = (i * in_size) // out_size, -(-(i + 1) * in_size // out_size)
            index = [slice(None)] * self.ndim
            index[dim] = slice(start, end)
            cells.append(self[tuple(index)].mean(dim, keepdim=True))
        return Tensor.cat(cells, dim=dim)

    def dropout(self, p: float = 0.5, training: bool = True) -> Tensor:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
        if not training or p == 0:
            return self
        if p == 1:
            return self * 0
        keep = (Tensor.rand(*self.shape, device=self.device) >= p).cast(self.dtype)
        # a product, as PyTorch's: a dropped inf or NaN gives NaN
        return self * keep * (1.0 / (1.0 - p))

    def scaled_dot_product_attention(
        self, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False, scale=None
    ) -> Tensor:
        """softmax(q @ k^T * scale + mask) @ v, as F.scaled_dot_product_attention: (..., L, E) queries against
        (..., S, E) keys and (..., S, Ev) values. A bool mask keeps where True; a float mask is added; is_causal keeps
        key j <= query i (the top-left aligned lower triangle, as torch). Dropout acts on the attention weights."""
        if key.shape[-1] != self.shape[-1] or key.shape[-2] != value.shape[-2]:
            raise RuntimeError(
                f"scaled_dot_product_attention: query {self.shape}, key {key.shape} and value {value.shape} "
                "need query and key to share the last dim and key and value the sequence dim (-2)"
            )
        if is_causal and attn_mask is not None:
            raise RuntimeError("scaled_dot_product_attention: pass either attn_mask or is_causal, not both (as torch)")
        scale = 1 / math.sqrt(self.shape[-1]) if scale is None else scale
        if is_causal and value.ndim == 4 and layout.causal_query_blocks(self.device, self.shape, key.shape) > 1:
            blocks = layout.causal_query_blocks(self.device, self.shape, key.shape)
            return self._causal_attention_in_blocks(key, value, blocks, dropout_p, scale)
        scores = (self * scale) @ key.transpose(-2, -1)
        if is_causal:
            above = Tensor.ones(scores.shape[-2:], dtype=dt.bool_, device=self.device).triu(1)
            scores = scores.masked_fill(above, float("-inf"))
        if attn_mask is not None:
            scores = scores + attn_mask if attn_mask.dtype != dt.bool_ else attn_mask._select(scores, float("-inf"))
        weights = scores.softmax(-1)
        if dropout_p > 0.0:
            weights = weights.dropout(dropout_p, True)
        if weights.ndim != 4 or value.ndim != 4:
            return weights @ value
        # heads in dim 1 (batch, heads, L, S): the product is stored (batch, L, heads, Ev) and returned as a view, so
        # that merging the heads afterwards (transpose(1, 2).reshape(batch, L, heads * Ev)) reads plain rows and the
        # output projection after it is an ordinary product (reading through the transpose, it ran 4x slower)
        merged = (weights.permute(0, 2, 1, 3).unsqueeze(-1) * value.unsqueeze(1)).sum(3)
        return merged.permute(0, 2, 1, 3)

    def _causal_attention_in_blocks(self, key, value, blocks: int, dropout_p: float, scale: float) -> Tensor:
        """Causal attention computed for `blocks` consecutive blocks of queries, each against only the keys it can see
        (block i: the first (i + 1) / blocks of them): the products skip most of the masked triangle (2 blocks: 3/4
        of the work, 4: 5/8), the softmax of each block's rows is the whole softmax of those rows, and the blocks'
        results are concatenated along the queries. The same values as one block, up to the products' rounding."""
        length = self.shape[-2]
        size = length // blocks
        outputs = []
        for i in range(blocks):
            seen = (i + 1) * size  # keys 0 .. seen-1
            query = self[..., i * size : seen, :]
            # query i * size + r keeps key j where j <= i * size + r: the lower triangle shifted right by i * size
            hidden = Tensor.ones((size, seen), dtype=dt.bool_, device=self.device).triu(i * size + 1)
            scores = ((query * scale) @ key[..., :seen, :].transpose(-2, -1)).masked_fill(hidden, float("-inf"))
            weights = scores.softmax(-1)
            if dropout_p > 0.0:
                weights = weights.dropout(dropout_p, True)
            part = value[..., :seen, :]
            merged = (weights.permute(0, 2, 1, 3).unsqueeze(-1) * part.unsqueeze(1)).sum(3)
            outputs.append(merged)
        # (batch, L, heads, Ev) as one buffer, returned as a view (as the single block does)
        return Tensor.cat(outputs, dim=1).contiguous().permute(0, 2, 1, 3)


def _conv_forward_on_nodes(x: Tensor, weight: Tensor) -> bool:
    """Whether conv2d's forward builds its nodes directly (one float dtype, no symbolic size)."""
    return x.dtype is weight.dtype and x.dtype.is_float and not symbolic_dims(x.shape)


def _check_windows(spatial: tuple, kernel: tuple, stride: tuple, dilation: tuple) -> None:
    """Sliding windows of `kernel` fit at least once into `spatial`."""
    out = [(i - d * (k - 1) - 1) // s + 1 for i, k, s, d in zip(spatial, kernel, stride, dilation)]
    if any(o <= 0 for o in out):
        raise RuntimeError(f"kernel {kernel} with dilation {dilation} is larger than the input {spatial}")


def _sum_nodes(x: LazyBuffer, axes: tuple) -> LazyBuffer:
    """x.sum(axes) of a float node over some (not all) of its axes: the reduce, the reduced dims dropped."""
    return x.reduce(Op.SUM, axes).reshape(tuple(size for i, size in enumerate(x.shape) if i not in axes))


def _product_sum(x: LazyBuffer, y: LazyBuffer, axes: tuple) -> LazyBuffer:
    """(x * y).sum(axes) for two float nodes of one dtype and rank that broadcast against each other: the nodes the
    tensor ops make (each operand expanded, their product, the reduce, the reduced dims dropped)."""
    shape = _broadcast_shape(x.shape, y.shape)
    product = LazyBuffer.elementwise(Op.MUL, (x.expand(shape), y.expand(shape)))
    return product.reduce(Op.SUM, axes).reshape(tuple(size for i, size in enumerate(shape) if i not in axes))


def _max_pool_spread(win, best, rank, grad):
    """max_pool2d's gradient before col2im, on graph nodes: each window's gradient at its first maximal element (a
    NaN counts as one), zero elsewhere. The very nodes that the tensor ops of max_pool2d's backward make
    (`(win == best) | (win != win)`, the first hit's rank by a where and a max, then a where of the gradient), call
    for call, so that the kernels are the same; without a tensor, promotion and broadcasting per op (a pooling
    layer's backward made ~19 tensors every step)."""
    full = win.shape
    lead = (1,) * (len(full) - len(rank.shape))
    best = best.reshape(best.shape + (1,)).reshape(best.shape + (1, 1))
    true = LazyBuffer.const(True, full, dt.bool_, win.device)
    equal = LazyBuffer.elementwise(Op.XOR, (LazyBuffer.elementwise(Op.CMPNE, (win, best.expand(full))), true))
    hit = LazyBuffer.elementwise(Op.OR, (equal, LazyBuffer.elementwise(Op.CMPNE, (win, win))))
    zero_ranks = LazyBuffer.const(0.0, rank.shape, rank.dtype, rank.device).broadcast(lead + rank.shape, full)
    ranks = LazyBuffer.elementwise(Op.WHERE, (hit, rank.broadcast(lead + rank.shape, full), zero_ranks))
    first = ranks.reduce(Op.RMAX, (len(full) - 2, len(full) - 1))  # the rank of the first hit
    chosen = LazyBuffer.elementwise(Op.CMPNE, (rank.broadcast(lead + rank.shape, full), first.expand(full)))
    chosen = LazyBuffer.elementwise(Op.XOR, (chosen, true))
    grad = grad.reshape(grad.shape + (1,)).reshape(grad.shape + (1, 1))
    zero = LazyBuffer.const(0.0, grad.shape, grad.dtype, grad.device).expand(full)
    return LazyBuffer.elementwise(Op.WHERE, (chosen, grad.expand(full), zero))


def _conv2d_input_grad(grad: Tensor, weight: Tensor, input_hw: tuple, stride, padding, dilation, groups) -> Tensor:
    """d(conv2d)/d(input): the output gradient, spread out by the stride and fully padded, convolved
    with the spatially flipped weight whose in/out channels are swapped per group."""
    cout, cin_g, kh, kw = weight.shape
    g = groups
    n, _, oh, ow = grad.shape
    strided = any(s > 1 for s in stride)
    chosen = layout.conv_input_grad_layout(grad.device, groups, input_hw[1], oh * ow, _is_plain_buffer(weight), strided)
    if (
        chosen is not layout.InputGradLayout.TRANSPOSED_CONV
        and not autograd.is_grad_enabled()
        and grad.dtype is weight.dtype
        and _conv_forward_on_nodes(grad, weight)
    ):
        # (no gradient of the gradient: the nodes of the tensor ops below, call for call, without tensors)
        node, kernel = grad._lazydata, weight._lazydata
        if _input_grad_through_panels(grad, weight, g):
            cols = _input_grad_columns_through_panels(grad, weight)._lazydata
        elif chosen is layout.InputGradLayout.COLUMNS_OVER_PIXELS:
            per_pixel = node.reshape((n, cout, 1, 1, 1, oh, ow))
            cols = _product_sum(per_pixel, kernel.reshape((1, cout, cin_g, kh, kw, 1, 1)), (1,))
            cols = cols.permute((0, 1, 4, 5, 2, 3))
        else:
            per_pixel = node.permute((0, 2, 3, 1)).reshape((n, oh, ow, cout, 1, 1, 1))
            cols = _product_sum(per_pixel, kernel.reshape((1, 1, 1, cout, cin_g, kh, kw)), (3,))
            cols = cols.permute((0, 3, 1, 2, 4, 5))
        padded_hw = tuple(size + 2 * p for size, p in zip(input_hw, padding))
        return Tensor._wrap(autograd.col2im(cols, padded_hw, (kh, kw), stride, dilation, tuple(zip(padding, input_hw))))
    if chosen is not layout.InputGradLayout.TRANSPOSED_CONV:
        # the gradient of the window columns is a matrix product along memory the weight holds contiguously,
        # then the columns go back to their input positions (col2im, one elementwise kernel)
        if _input_grad_through_panels(grad, weight, g):
            cols = _input_grad_columns_through_panels(grad, weight)
        elif chosen is layout.InputGradLayout.COLUMNS_OVER_PIXELS:
            # columns (n, cin, kh, kw, oh, ow): lanes over the output pixels
            per_pixel = grad.reshape(n, cout, 1, 1, 1, oh, ow)
            cols = (per_pixel * weight.reshape(1, cout, cin_g, kh, kw, 1, 1)).sum(1).permute(0, 1, 4, 5, 2, 3)
        else:
            # columns (n, oh, ow, cin, kh, kw): lanes over cin*kh*kw
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


def _input_grad_through_panels(grad: Tensor, weight: Tensor, groups: int) -> bool:
    """Whether a conv's input gradient through columns multiplies the output gradient, channel-last, with the
    weight in panels (where the forward would take the weight transposed, and panels apply: read as stored, rows of
    cin*kh*kw apart, its product ran slower than the columns' own layouts)."""
    n, cout, oh, ow = grad.shape
    columns = math.prod(weight.shape[1:])
    return layout.columns_weight_transposed(grad.device, n * oh * ow, groups) and bool(
        layout.product_panel_width(grad.device, columns, grad.dtype.itemsize)
    )


def _input_grad_columns_through_panels(grad: Tensor, weight: Tensor) -> Tensor:
    """The gradient of a single-group conv's columns, (n, cin, oh, ow, kh, kw) as col2im reads them: the output
    gradient copied channel-last (n*oh*ow, cout) times the weight (cout, cin*kh*kw) in panels, lanes along
    cin*kh*kw (ResNet-18's layer 4 at 8x3x224x224, one thread, alone: 24.3 ms read as stored, 14.9 through panels
    with their copy; the columns' own product 20.3 ms in the step)."""
    n, cout, oh, ow = grad.shape
    _, cin, kh, kw = weight.shape
    rows = grad.permute(0, 2, 3, 1).contiguous().reshape(n * oh * ow, cout)
    cols = _product_through_panels(rows, weight.reshape(cout, cin * kh * kw))
    return cols.reshape(n, oh, ow, cin, kh, kw).permute(0, 3, 1, 2, 4, 5)


def _product_through_panels(a: Tensor, b: Tensor) -> Tensor:
    """a (..., k) @ b (k, n) for a linear layer's products and a conv's through columns, b made contiguous first:
    as it is, or, where codegen.layout.product_panel_width says so, copied into panels (n / width, k, width), each
    the strip of columns one register tile reads along the reduce, contiguous (the same values, summed in the same
    order)."""
    k, n = b.shape
    width = layout.product_panel_width(a.device, n, a.dtype.itemsize)
    if not width:
        return a.matmul(b.contiguous())
    panels = b.reshape(k, n // width, width).permute(1, 0, 2).contiguous()  # stored (n / width, k, width)
    products = a.reshape(-1, 1, 1, k) * panels.permute(0, 2, 1).unsqueeze(0)  # (rows, n / width, width, k)
    return products.sum(-1).reshape(*a.shape[:-1], n)


def _rows_padded_where_free(x: Tensor) -> Tensor:
    """x (..., n) as (rows, n), stored with padded rows (codegen.layout.padded_row_length) where an elementwise
    kernel is still to compute it, so that it writes the padding too; else x's rows as they are."""
    n = x.shape[-1]
    flat = x.reshape(-1, n)
    stride = layout.padded_row_length(x.device, n, x.dtype.itemsize)
    node = x._lazydata
    if stride == n or node.realized or node.is_view or node.op not in ELEMENTWISE or symbolic_dims(flat.shape):
        return flat
    return flat.pad((0, stride - n)).contiguous()[:, :n]


def _columns_times_transposed_weight(cols: Tensor, weight: Tensor) -> Tensor:
    """A single-group conv's output from its columns (n, 1, oh, ow, cin, kh, kw): their product with the weight
    transposed (or in panels), lanes along the output channels (codegen.layout.columns_weight_transposed), then
    moved back to (n, cout, oh, ow)."""
    n, _, oh, ow = cols.shape[:4]
    k, cout = math.prod(cols.shape[4:]), weight.shape[0]
    out = _product_through_panels(cols.reshape(n * oh * ow, k), weight.reshape(cout, k).T)
    return out.reshape(n, oh, ow, cout).permute(0, 3, 1, 2).contiguous()


def _is_plain_buffer(t: Tensor) -> bool:
    """Whether t reads a whole buffer as it is laid out (not a flipped, permuted or partial view of it)."""
    return t.lazydata.st.contiguous_view and t.lazydata.size == t.lazydata.base.size

"""Resampling and rearranging of images: interpolate (nearest, nearest-exact, linear/bilinear/trilinear, bicubic,
area), pixel_shuffle/pixel_unshuffle, unfold (im2col) and fold (col2im). nn.functional exports these.

interpolate is separable: one spatial dim at a time, each output position a weighted sum of a few input
positions ("taps": 1 for nearest, 2 for linear, 4 for cubic). The positions and weights are computed on the host
with PyTorch's formulas in float32 (as its CPU kernels do, so boundary cases round the same way); each tap is
taken as views (take_positions), so the result and its gradient are compositions of views, products and sums.
"""

from __future__ import annotations

import math

import numpy as np

from lazygrad import autograd
from lazygrad.tensor import Tensor
from lazygrad.tensor_ops.movement import take_positions
from lazygrad.tensor_ops.nn import as_pair

_MODE_DIMS = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}  # modes tied to a number of spatial dims
_CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def interpolate(
    input: Tensor,
    size=None,
    scale_factor=None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> Tensor:
    spatial = input.ndim - 2
    if spatial < 1:
        raise ValueError(f"interpolate expects (N, C, spatial...) input, got shape {input.shape}")
    if mode not in ("nearest", "nearest-exact", "area", *_MODE_DIMS):
        raise NotImplementedError(f"interpolate mode {mode!r}")
    if mode in _MODE_DIMS and _MODE_DIMS[mode] != spatial:
        raise NotImplementedError(f"Got {input.ndim}D input, but {mode} mode needs {_MODE_DIMS[mode] + 2}D input")
    if antialias:
        raise NotImplementedError("interpolate: antialias=True is not supported")
    if align_corners is not None and mode not in ("linear", "bilinear", "bicubic", "trilinear"):
        raise ValueError(
            "align_corners option can only be set with the interpolating modes: linear | bilinear | bicubic | trilinear"
        )
    in_sizes = input.shape[2:]
    if (size is None) == (scale_factor is None):
        raise ValueError("only one of size or scale_factor should be defined")
    if size is not None:
        out_sizes = (size,) * spatial if isinstance(size, int) else tuple(size)
        scales = (None,) * spatial
    else:
        factors = (scale_factor,) * spatial if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
        out_sizes = tuple(math.floor(n * f) for n, f in zip(in_sizes, factors))
        scales = (None,) * spatial if recompute_scale_factor else factors  # recomputed: in / out, as with a size
    if len(out_sizes) != spatial:
        raise ValueError(f"size {out_sizes} should have {spatial} elements for input shape {input.shape}")
    if mode == "area":  # an adaptive average: each output cell the mean of its window
        out = input
        for dim, n in zip(range(2, input.ndim), out_sizes):
            out = out._adaptive_avg_pool_dim(dim, n)
        return out
    out = input
    for dim, n_in, n_out, scale in zip(range(2, input.ndim), in_sizes, out_sizes, scales):
        if n_in == n_out and (scale in (None, 1) or mode == "nearest"):  # torch's identity too
            continue
        taps = _taps(mode, n_in, n_out, scale, bool(align_corners))
        out = _weighted_taps(out, dim, taps)
    return out if out is not input else input.clone()


def _scale(n_in: int, n_out: int, scale, align_corners: bool) -> np.float32:
    """area_pixel_compute_scale: the step in input coordinates per output position."""
    if align_corners:
        return np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    return np.float32(1.0 / scale) if scale is not None and scale > 0 else np.float32(n_in) / np.float32(n_out)


def _taps(mode: str, n_in: int, n_out: int, scale, align_corners: bool) -> list[tuple[list, list | None]]:
    """Per tap, the input position of each output position and its weight (None: weight 1)."""
    step = _scale(n_in, n_out, scale, align_corners)
    out = np.arange(n_out, dtype=np.float32)
    if mode == "nearest":
        if n_out == 2 * n_in:  # torch's shortcut, whatever the scale
            return [([j // 2 for j in range(n_out)], None)]
        return [(np.minimum(np.floor(out * step).astype(np.int64), n_in - 1).tolist(), None)]
    if mode == "nearest-exact":
        positions = np.floor((out + np.float32(0.5)) * step).astype(np.int64)
        return [(np.minimum(positions, n_in - 1).tolist(), None)]
    source = out * step if align_corners else step * (out + np.float32(0.5)) - np.float32(0.5)
    if mode == "bicubic":
        first = np.floor(source)
        t = (source - first).astype(np.float32)
        first = first.astype(np.int64)
        a = np.float32(_CUBIC_A)
        near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # noqa: E731 (|x| <= 1)
        far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # noqa: E731 (1 < |x| < 2)
        weights = [far(t + 1), near(t), near(1 - t), far(2 - t)]
        return [(np.clip(first - 1 + k, 0, n_in - 1).tolist(), weights[k].tolist()) for k in range(4)]
    source = np.maximum(source, np.float32(0))  # linear: a source left of the first element reads it
    low = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    frac = np.clip(source - low, 0, 1).astype(np.float32)
    high = np.minimum(low + 1, n_in - 1)
    return [(low.tolist(), (1 - frac).tolist()), (high.tolist(), frac.tolist())]


def _weighted_taps(x: Tensor, dim: int, taps: list) -> Tensor:
    total = None
    for positions, weights in taps:
        taken = take_positions(x, dim, positions)
        if weights is not None:
            shape = [len(weights) if d == dim else 1 for d in range(x.ndim)]
            taken = taken * Tensor(np.asarray(weights, dtype=np.float32).reshape(shape), device=x.device)
        total = taken if total is None else total + taken
    return total


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """(*, C * r^2, H, W) -> (*, C, H * r, W * r)."""
    r, (*lead, channels, height, width) = upscale_factor, input.shape
    if input.ndim < 3 or channels % (r * r):
        raise RuntimeError(f"pixel_shuffle expects (*, C * {r}^2, H, W) input, got shape {input.shape}")
    x = input.reshape(*lead, channels // (r * r), r, r, height, width)
    n = len(lead)
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*lead, channels // (r * r), height * r, width * r)


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """(*, C, H * r, W * r) -> (*, C * r^2, H, W)."""
    r, (*lead, channels, height, width) = downscale_factor, input.shape
    if input.ndim < 3 or height % r or width % r:
        raise RuntimeError(f"pixel_unshuffle expects (*, C, H * {r}, W * {r}) input, got shape {input.shape}")
    x = input.reshape(*lead, channels, height // r, r, width // r, r)
    n = len(lead)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*lead, channels * r * r, height // r, width // r)


def unfold(input: Tensor, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """im2col: (N, C, H, W) -> (N, C * kh * kw, L), each column one sliding window (a view, then a copy)."""
    if input.ndim == 3:
        return unfold(input.unsqueeze(0), kernel_size, dilation, padding, stride).squeeze(0)
    if input.ndim != 4:
        raise RuntimeError(f"unfold expects (N, C, H, W) or (C, H, W) input, got shape {input.shape}")
    k, d, p, s = as_pair(kernel_size), as_pair(dilation), as_pair(padding), as_pair(stride)
    n, c = input.shape[:2]
    windows = input.pad((p[1], p[1], p[0], p[0]))._pool(k, s, d)  # (N, C, oh, ow, kh, kw)
    blocks = windows.shape[2] * windows.shape[3]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(n, c * k[0] * k[1], blocks)


def fold(input: Tensor, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """col2im, the adjoint of unfold: (N, C * kh * kw, L) -> (N, C, H, W), overlapping windows summed."""
    if input.ndim == 2:
        return fold(input.unsqueeze(0), output_size, kernel_size, dilation, padding, stride).squeeze(0)
    size, k, d = as_pair(output_size), as_pair(kernel_size), as_pair(dilation)
    p, s = as_pair(padding), as_pair(stride)
    blocks = [(size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
    n, columns, length = input.shape if input.ndim == 3 else (None, None, None)
    if input.ndim != 3 or columns % (k[0] * k[1]) or length != blocks[0] * blocks[1]:
        raise RuntimeError(
            f"fold expects (N, C * {k[0]} * {k[1]}, {blocks[0] * blocks[1]}) input for output_size {size}, "
            f"kernel {k}, dilation {d}, padding {p}, stride {s}; got shape {input.shape}"
        )
    c = columns // (k[0] * k[1])
    windows = input.reshape(n, c, k[0], k[1], *blocks).permute(0, 1, 4, 5, 2, 3)
    padded = (n, c, size[0] + 2 * p[0], size[1] + 2 * p[1])
    return autograd.window_transpose(windows, padded, k, s, d, crop=((p[0], size[0]), (p[1], size[1])))


def upsample_nearest(input: Tensor, size=None, scale_factor=None) -> Tensor:
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input: Tensor, size=None, scale_factor=None) -> Tensor:
    """torch's deprecated form: bilinear with align_corners=True."""
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)

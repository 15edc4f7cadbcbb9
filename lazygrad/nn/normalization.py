"""Normalizations of torch.nn.functional beside batch_norm and layer_norm: group_norm, instance_norm, rms_norm,
local_response_norm, composed of Tensor ops with PyTorch's formulas. nn.functional exports them."""

from __future__ import annotations

import math

import numpy as np

import lazygrad
from lazygrad.tensor import Tensor


def _normalized(x: Tensor, dims: tuple, eps: float) -> Tensor:
    """(x - mean) / sqrt(biased var + eps) over dims."""
    centered = x - x.mean(dims, keepdim=True)
    return centered * ((centered * centered).mean(dims, keepdim=True) + eps).rsqrt()


def _channel_affine(x: Tensor, weight, bias) -> Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x = x * weight.reshape(shape) if weight is not None else x
    return x + bias.reshape(shape) if bias is not None else x


def group_norm(input: Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalize each sample's channels in num_groups groups (over the group's channels and the spatial dims)."""
    n, channels = input.shape[:2]
    if channels % num_groups:
        raise RuntimeError(f"group_norm: {channels} channels of input {input.shape} are not divisible by {num_groups}")
    # the group's size spelled out: reshape cannot infer -1 when the batch is empty
    grouped = input.reshape(n, num_groups, channels // num_groups * math.prod(input.shape[2:]))
    return _channel_affine(_normalized(grouped, (2,), eps).reshape(input.shape), weight, bias)


def instance_norm(
    input: Tensor,
    running_mean=None,
    running_var=None,
    weight=None,
    bias=None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize each (sample, channel) over its spatial dims. With running statistics they are updated as
    torch does (the mean over the batch of the instances' mean and unbiased variance), or used instead of the
    input's when use_input_stats is False."""
    spatial = tuple(range(2, input.ndim))
    channel_shape = (1, -1) + (1,) * len(spatial)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: use_input_stats=False needs running_mean and running_var")
        scale = (running_var.reshape(channel_shape) + eps).rsqrt()
        return _channel_affine((input - running_mean.reshape(channel_shape)) * scale, weight, bias)
    if running_mean is not None and running_var is not None:
        count = 1
        for d in spatial:
            count *= input.shape[d]
        with lazygrad.no_grad():
            x = input.detach()
            mean = x.mean(spatial)
            var = ((x - mean.reshape(*mean.shape, *(1,) * len(spatial))) ** 2).sum(spatial) / max(count - 1, 1)
            running_mean.assign(running_mean * (1 - momentum) + mean.mean(0) * momentum)
            running_var.assign(running_var * (1 - momentum) + var.mean(0) * momentum)
    return _channel_affine(_normalized(input, spatial, eps), weight, bias)


def rms_norm(input: Tensor, normalized_shape, weight=None, eps: float | None = None) -> Tensor:
    """input / sqrt(mean(input^2) + eps) over the trailing normalized_shape dims; eps defaults to the dtype's
    machine epsilon (as torch)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(shape) :]) != shape:
        raise RuntimeError(f"rms_norm: normalized_shape {shape} is not the trailing shape of input {input.shape}")
    if eps is None:
        eps = float(np.finfo(input.dtype.np).eps)
    dims = tuple(range(input.ndim - len(shape), input.ndim))
    out = input * ((input * input).mean(dims, keepdim=True) + eps).rsqrt()
    return out * weight if weight is not None else out


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """input / (k + alpha * mean of input^2 over `size` neighbouring channels) ** beta; the window is padded with
    zeros (size // 2 before, (size - 1) // 2 after) and always divided by size, as torch."""
    if input.ndim < 3:
        raise ValueError(f"local_response_norm expects input of 3 or more dims, got shape {input.shape}")
    if input.numel() == 0:  # torch returns an empty input itself (an int64 one stays int64)
        return input
    channels = input.shape[1]
    squares = input * input
    pads = [(0, 0)] * input.ndim
    pads[1] = (size // 2, (size - 1) // 2)
    padded = squares.pad([p for pair in reversed(pads) for p in pair])
    window = None
    for offset in range(size):
        piece = padded.narrow(1, offset, channels)
        window = piece if window is None else window + piece
    return input / (window * (alpha / size) + k) ** beta

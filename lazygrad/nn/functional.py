"""torch.nn.functional's layer and loss functions, composed from Tensor methods (so autograd and fusion come free)."""

from __future__ import annotations

import math

import lazygrad
from lazygrad.dtype import int64
from lazygrad.tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


# ---- activations ----


def relu(input: Tensor) -> Tensor:
    return input.relu()


def softmax(input: Tensor, dim: int) -> Tensor:
    return input.softmax(dim)


def log_softmax(input: Tensor, dim: int) -> Tensor:
    return input.log_softmax(dim)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot encoding along a new last dim. num_classes=-1 reads max()+1, which computes the input."""
    if num_classes < 0:
        num_classes = int(tensor.max().item()) + 1
    classes = lazygrad.arange(num_classes, device=tensor.device)
    return (tensor.unsqueeze(-1) == classes).cast(int64)


# ---- layers ----


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return input.linear(weight, bias)


def conv2d(input: Tensor, weight: Tensor, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    if padding == "valid":
        padding = 0
    elif padding == "same":
        if _pair(stride) != (1, 1):
            raise ValueError("padding='same' needs stride 1")
        # PyTorch puts the odd pixel of padding on the right/bottom
        totals = [d * (k - 1) for d, k in zip(_pair(dilation), weight.shape[2:])]
        (top, left), (bottom, right) = [t // 2 for t in totals], [t - t // 2 for t in totals]
        if (top, left) != (bottom, right):
            input = input.pad((left, right, top, bottom))
            top, left = 0, 0
        padding = (top, left)
    return input.conv2d(weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if ceil_mode or return_indices:
        raise NotImplementedError("max_pool2d: ceil_mode and return_indices are not supported")
    return input.max_pool2d(kernel_size, stride=stride, padding=padding, dilation=dilation)


def avg_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    if ceil_mode:
        raise NotImplementedError("avg_pool2d: ceil_mode is not supported")
    if divisor_override is not None:
        window = math.prod(_pair(kernel_size))
        total = input.avg_pool2d(kernel_size, stride=stride, padding=padding, count_include_pad=True) * window
        return total / divisor_override
    return input.avg_pool2d(kernel_size, stride=stride, padding=padding, count_include_pad=count_include_pad)


def _adaptive_avg_pool_1d(input: Tensor, dim: int, out_size: int) -> Tensor:
    """PyTorch's adaptive windows along one dim: cell i averages [floor(i*n/out), ceil((i+1)*n/out))."""
    in_size = input.shape[dim]
    if in_size == out_size:
        return input
    if out_size == 1:
        return input.mean(dim, keepdim=True)
    cells = []
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -(-(i + 1) * in_size // out_size)
        index = [slice(None)] * input.ndim
        index[dim] = slice(start, end)
        cells.append(input[tuple(index)].mean(dim, keepdim=True))
    return lazygrad.cat(cells, dim=dim)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    height, width = input.shape[-2:]
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    out_h, out_w = out_h or height, out_w or width  # None keeps the input size
    if (out_h, out_w) == (1, 1):
        return input.mean((-2, -1), keepdim=True)
    if height % out_h == 0 and width % out_w == 0:
        kernel = (height // out_h, width // out_w)
        return input.avg_pool2d(kernel, stride=kernel)
    # average of a rectangle = average over rows of the averages over columns: pool one dim at a time
    return _adaptive_avg_pool_1d(_adaptive_avg_pool_1d(input, input.ndim - 2, out_h), input.ndim - 1, out_w)


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize over every dim but the channel dim 1. In training the batch statistics are used and the running
    statistics (if given) get a lazy in-place update with the unbiased variance, as in PyTorch."""
    channels = input.shape[1]
    reduce_dims = (0, *range(2, input.ndim))
    channel_shape = (1, channels) + (1,) * (input.ndim - 2)
    if training:
        count = input.numel() // channels
        if count <= 1:
            raise ValueError(f"batch_norm needs more than 1 value per channel when training, got input {input.shape}")
        mean = input.mean(reduce_dims, keepdim=True)
        centered = input - mean
        var = (centered * centered).mean(reduce_dims, keepdim=True)
        if running_mean is not None and running_var is not None:
            _update_running_stats(running_mean, running_var, mean, var, momentum, count)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in eval mode needs running_mean and running_var")
        centered = input - running_mean.reshape(channel_shape)
        var = running_var.reshape(channel_shape)
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight.reshape(channel_shape)
    output = centered * scale
    return output if bias is None else output + bias.reshape(channel_shape)


def _update_running_stats(running_mean, running_var, mean, var, momentum, count: int) -> None:
    from lazygrad.nn.module import note_buffer_update

    with lazygrad.no_grad():
        mean, unbiased_var = mean.detach().flatten(), var.detach().flatten() * (count / (count - 1))
        running_mean.assign(running_mean * (1 - momentum) + mean * momentum)
        running_var.assign(running_var * (1 - momentum) + unbiased_var * momentum)
    note_buffer_update(running_mean)
    note_buffer_update(running_var)


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0
    keep = (lazygrad.rand(*input.shape, device=input.device) >= p).cast(input.dtype)
    return input * keep * (1.0 / (1.0 - p))


# ---- losses ----


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    diff = input - target
    return _reduce(diff * diff, reduction)


def _class_mask(target: Tensor, input: Tensor) -> Tensor:
    """float one-hot of class-index targets (N, d...) laid out like input (N, C, d...)."""
    classes = lazygrad.arange(input.shape[1], device=input.device).reshape((1, -1) + (1,) * (input.ndim - 2))
    return (target.unsqueeze(1) == classes).cast(input.dtype)


def _channel_view(weight: Tensor, input: Tensor) -> Tensor:
    return weight.reshape((1, -1) + (1,) * (input.ndim - 2))


def _batched(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Unbatched input (C,) becomes (1, C); class-index targets () become (1,), probability targets (C,) (1, C)."""
    if input.ndim == 1:
        return input.unsqueeze(0), target.unsqueeze(0), True
    return input, target, False


def nll_loss(
    input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean"
) -> Tensor:
    """input: log-probabilities (N, C, d...), target: class indices (N, d...)."""
    input, target, unbatched = _batched(input, target)
    loss, weight_sum = _weighted_nll(input, target, weight, ignore_index)
    if reduction == "mean":
        return loss.sum() / weight_sum
    loss = _reduce(loss, reduction)
    return loss[0] if unbatched and reduction == "none" else loss


def _weighted_nll(input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Per-element -weight[target] * input[target] (0 where ignored), and the total weight of non-ignored targets."""
    mask = _class_mask(target, input)
    if weight is not None:
        mask = mask * _channel_view(weight, input)
    # an ignore_index outside [0, C) matches no class, so the mask row is already all zero; test it anyway for the
    # weight sum, and because ignore_index may name a real class
    mask = mask * (target != ignore_index).cast(input.dtype).unsqueeze(1)
    return -(input * mask).sum(1), mask.sum()


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """input: logits (N, C, d...); target: class indices (N, d...) or class probabilities shaped like input.
    Follows PyTorch's formulas, including how label smoothing and class weights enter the mean."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    input, target, unbatched = _batched(input, target)
    log_probs = input.log_softmax(1)
    num_classes = input.shape[1]
    if target.dtype.is_float:
        loss = _probability_target_loss(log_probs, target, weight, reduction, label_smoothing)
    else:
        loss = _class_target_loss(log_probs, target, weight, ignore_index, reduction, label_smoothing, num_classes)
    return loss[0] if unbatched and reduction == "none" else loss


def _probability_target_loss(log_probs, target, weight, reduction, label_smoothing) -> Tensor:
    if tuple(target.shape) != tuple(log_probs.shape):
        raise ValueError(f"probability targets must be shaped like the input {log_probs.shape}, got {target.shape}")
    num_classes = log_probs.shape[1]
    if label_smoothing > 0.0:
        target = target * (1 - label_smoothing) + label_smoothing / num_classes
    weighted = log_probs * target
    if weight is not None:
        weighted = weighted * _channel_view(weight, log_probs)
    loss = -weighted.sum(1)
    if reduction == "mean":
        return loss.sum() / (log_probs.numel() // num_classes)  # PyTorch divides by N*d..., whatever the weights
    return _reduce(loss, reduction)


def _class_target_loss(log_probs, target, weight, ignore_index, reduction, label_smoothing, num_classes) -> Tensor:
    expected = (log_probs.shape[0], *log_probs.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"class-index targets need shape {expected} for input {log_probs.shape}, got {target.shape}")
    nll, weight_sum = _weighted_nll(log_probs, target, weight, ignore_index)
    nll = nll.sum() / weight_sum if reduction == "mean" else _reduce(nll, reduction)
    if label_smoothing <= 0.0:
        return nll
    # the smoothing term: -sum over classes of (weighted) log-probabilities, zero where the target is ignored
    smooth = log_probs if weight is None else log_probs * _channel_view(weight, log_probs)
    smooth = -smooth.sum(1) * (target != ignore_index).cast(log_probs.dtype)
    smooth = smooth.sum() / weight_sum if reduction == "mean" else _reduce(smooth, reduction)
    return nll * (1 - label_smoothing) + smooth * (label_smoothing / num_classes)

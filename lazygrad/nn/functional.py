"""torch.nn.functional's layer and loss functions. The layers call the Tensor method of the same name (one
implementation of each op, in lazygrad.tensor_ops); batch norm and the losses are composed here."""

from __future__ import annotations

import math

import numpy as np

import lazygrad
from lazygrad.graph import LazyBuffer
from lazygrad.nn.losses import (  # noqa: F401
    _REDUCTIONS,
    _reduce,
    cosine_embedding_loss,
    gaussian_nll_loss,
    hinge_embedding_loss,
    kl_div,
    margin_ranking_loss,
    multi_margin_loss,
    multilabel_soft_margin_loss,
    pairwise_distance,
    poisson_nll_loss,
    soft_margin_loss,
    triplet_margin_loss,
    triplet_margin_with_distance_loss,
)
from lazygrad.nn.normalization import group_norm, instance_norm, local_response_norm, rms_norm  # noqa: F401
from lazygrad.nn.resample import (  # noqa: F401
    fold,
    interpolate,
    pixel_shuffle,
    pixel_unshuffle,
    unfold,
    upsample_bilinear,
    upsample_nearest,
)
from lazygrad.ops import Op
from lazygrad.shape import symbolic_dims
from lazygrad.tensor import Tensor
from lazygrad.tensor_ops.bounds import check_indices

# ---- activations ----


def relu(input: Tensor) -> Tensor:
    return input.relu()


def softmax(input: Tensor, dim: int) -> Tensor:
    return input.softmax(dim)


def log_softmax(input: Tensor, dim: int) -> Tensor:
    return input.log_softmax(dim)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    return tensor.one_hot(num_classes)


# ---- layers ----


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return input.linear(weight, bias)


def conv2d(input: Tensor, weight: Tensor, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    return input.conv2d(weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return input.max_pool2d(kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def avg_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    return input.avg_pool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    return input.adaptive_avg_pool2d(output_size)


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
    channel_shape = (1, channels) + (1,) * (input.ndim - 2)
    if training:
        count = input.numel() // channels
        if count <= 1:
            raise ValueError(f"batch_norm needs more than 1 value per channel when training, got input {input.shape}")
        return _batch_norm_training(input, running_mean, running_var, weight, bias, momentum, eps, count)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm in eval mode needs running_mean and running_var")
    centered = input - running_mean.reshape(channel_shape)
    scale = (running_var.reshape(channel_shape) + eps).rsqrt()
    if weight is not None:
        scale = scale * weight.reshape(channel_shape)
    output = centered * scale
    return output if bias is None else output + bias.reshape(channel_shape)


def _batch_norm_training(input, running_mean, running_var, weight, bias, momentum, eps: float, count: int) -> Tensor:
    """batch_norm on the batch's statistics: one composite op with PyTorch's closed-form gradient. Differentiating
    its ~15 primitives built ~35 tensors of gradient graph per layer in every eager step (a ResNet-18 step has 20
    layers); this builds ~15."""
    reduce_dims = (0, *range(2, input.ndim))
    channel_shape = (1, input.shape[1]) + (1,) * (input.ndim - 2)
    inputs = tuple(t for t in (input, weight, bias) if t is not None)
    saved: list = []
    on_nodes = _batch_norm_on_nodes(input, running_mean, running_var, weight, bias, momentum)

    def statistics(x: Tensor, w: Tensor | None) -> tuple:
        mean = x.mean(reduce_dims, keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(reduce_dims, keepdim=True)
        invstd = (var + eps).rsqrt()
        scale = invstd if w is None else invstd * w.reshape(channel_shape)
        return mean, centered, var, invstd, scale

    def forward() -> Tensor:
        if on_nodes:
            return _batch_norm_nodes(input, running_mean, running_var, weight, bias, momentum, eps, count, saved)
        mean, centered, var, invstd, scale = statistics(input, weight)
        if running_mean is not None and running_var is not None:
            _update_running_stats(running_mean, running_var, mean, var, momentum, count)
        saved.extend((centered, invstd, scale))
        output = centered * scale
        return output if bias is None else output + bias.reshape(channel_shape)

    def backward(grad: Tensor) -> tuple:
        # with xhat = centered * invstd: d bias = sum(g), d weight = sum(g * xhat),
        # d input = scale * (g - sum(g) / count - xhat * sum(g * xhat) / count)
        if lazygrad.is_grad_enabled():  # create_graph: the saved values carry no graph, so they are made again
            _, centered, _, invstd, scale = statistics(input, weight)
        elif on_nodes and grad.dtype is input.dtype:
            return _batch_norm_grad_nodes(grad, input, weight, bias, count, *saved)
        else:
            centered, invstd, scale = saved
        grad_sum = grad.sum(reduce_dims, keepdim=True)
        grad_xhat_sum = (grad * centered).sum(reduce_dims, keepdim=True) * invstd
        grads = []
        if input.requires_grad:
            correction = centered * (invstd * grad_xhat_sum * (1 / count))
            grads.append((grad - grad_sum * (1 / count) - correction) * scale)
        else:
            grads.append(None)
        if weight is not None:
            grads.append(grad_xhat_sum.reshape(weight.shape) if weight.requires_grad else None)
        if bias is not None:
            grads.append(grad_sum.reshape(bias.shape) if bias.requires_grad else None)
        return tuple(grads)

    return Tensor._composite("batch_norm", inputs, forward, backward)


def _batch_norm_on_nodes(input, running_mean, running_var, weight, bias, momentum) -> bool:
    """Whether training batch_norm builds its nodes directly (_batch_norm_nodes): one float dtype for the input and
    every tensor beside it, a Python number for the momentum."""
    dtype = input.dtype
    if not dtype.is_float or type(momentum) not in (int, float) or symbolic_dims(input.shape):
        return False
    return all(t is None or t.dtype is dtype for t in (running_mean, running_var, weight, bias))


def _batch_norm_nodes(input, running_mean, running_var, weight, bias, momentum, eps, count: int, saved: list):
    """Training batch_norm's forward (statistics, running statistics, output) on graph nodes: the nodes that its
    tensor ops make, call for call (mean() as a sum times 1/count, x - mean as x + -mean, rsqrt as sqrt then
    reciprocal), without a tensor, promotion and broadcasting per op (~40 tensors per layer and step otherwise).
    Saves (centered, invstd, scale) as the tensor ops do."""
    x = input._lazydata
    shape, dtype, device = x.shape, x.dtype, x.device
    axes, channels = (0, *range(2, len(shape))), shape[1]
    channel_shape = (1, channels) + (1,) * (len(shape) - 2)

    def times(node, number):  # node * number, the scalar a constant of node's shape
        return LazyBuffer.elementwise(Op.MUL, (node, LazyBuffer.const(number, node.shape, dtype, device)))

    mean = times(x.reduce(Op.SUM, axes), 1 / count)
    centered = LazyBuffer.elementwise(Op.ADD, (x, LazyBuffer.elementwise(Op.NEG, (mean.expand(shape),))))
    var = times(LazyBuffer.elementwise(Op.MUL, (centered, centered)).reduce(Op.SUM, axes), 1 / count)
    shifted = LazyBuffer.elementwise(Op.ADD, (var, LazyBuffer.const(eps, var.shape, dtype, device)))
    invstd = LazyBuffer.elementwise(Op.RECIP, (LazyBuffer.elementwise(Op.SQRT, (shifted,)),))
    scale = invstd
    if weight is not None:
        scale = LazyBuffer.elementwise(Op.MUL, (invstd, weight._lazydata.reshape(channel_shape)))
    if running_mean is not None and running_var is not None:  # as _update_running_stats
        from lazygrad.nn.module import note_buffer_update

        unbiased = times(var.reshape((channels,)), count / (count - 1))
        for running, batch in ((running_mean, mean.reshape((channels,))), (running_var, unbiased)):
            kept = times(running._lazydata, 1 - momentum)
            running._assign_node(LazyBuffer.elementwise(Op.ADD, (kept, times(batch, momentum))))
            note_buffer_update(running)
    saved.extend(Tensor._wrap(node) for node in (centered, invstd, scale))
    output = LazyBuffer.elementwise(Op.MUL, (centered, scale.expand(shape)))
    if bias is not None:
        output = LazyBuffer.elementwise(Op.ADD, (output, bias._lazydata.reshape(channel_shape).expand(shape)))
    return Tensor._wrap(output)


def _batch_norm_grad_nodes(grad, input, weight, bias, count: int, centered, invstd, scale) -> tuple:
    """Training batch_norm's gradients on nodes (no gradient of the gradient wanted): the nodes of the composite's
    backward tensor ops, call for call."""
    g, centered, invstd, scale = grad._lazydata, centered._lazydata, invstd._lazydata, scale._lazydata
    shape, dtype, device = g.shape, g.dtype, g.device
    axes = (0, *range(2, len(shape)))

    def times(node, number):
        return LazyBuffer.elementwise(Op.MUL, (node, LazyBuffer.const(number, node.shape, dtype, device)))

    grad_sum = g.reduce(Op.SUM, axes)
    grad_xhat_sum = LazyBuffer.elementwise(Op.MUL, (g, centered)).reduce(Op.SUM, axes)
    grad_xhat_sum = LazyBuffer.elementwise(Op.MUL, (grad_xhat_sum, invstd))
    grads = []
    if input.requires_grad:
        inner = times(LazyBuffer.elementwise(Op.MUL, (invstd, grad_xhat_sum)), 1 / count)
        correction = LazyBuffer.elementwise(Op.MUL, (centered, inner.expand(shape)))
        mean_grad = times(grad_sum, 1 / count).expand(shape)
        out = LazyBuffer.elementwise(Op.ADD, (g, LazyBuffer.elementwise(Op.NEG, (mean_grad,))))
        out = LazyBuffer.elementwise(Op.ADD, (out, LazyBuffer.elementwise(Op.NEG, (correction,))))
        grads.append(Tensor._wrap(LazyBuffer.elementwise(Op.MUL, (out, scale.expand(shape)))))
    else:
        grads.append(None)
    if weight is not None:
        grads.append(Tensor._wrap(grad_xhat_sum.reshape(weight.shape)) if weight.requires_grad else None)
    if bias is not None:
        grads.append(Tensor._wrap(grad_sum.reshape(bias.shape)) if bias.requires_grad else None)
    return tuple(grads)


def _update_running_stats(running_mean, running_var, mean, var, momentum, count: int) -> None:
    from lazygrad.nn.module import note_buffer_update

    with lazygrad.no_grad():  # (records no graph, so the statistics need no detach() first)
        mean, unbiased_var = mean.flatten(), var.flatten() * (count / (count - 1))
        running_mean.assign(running_mean * (1 - momentum) + mean * momentum)
        running_var.assign(running_var * (1 - momentum) + unbiased_var * momentum)
    note_buffer_update(running_mean)
    note_buffer_update(running_var)


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    return input.dropout(p, training)


# ---- losses ----


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    diff = input - target
    return _reduce(diff * diff, reduction)


def _class_mask(target: Tensor, input: Tensor) -> Tensor:
    """float one-hot of class-index targets (N, d...) laid out like input (N, C, d...)."""
    shape = (1, input.shape[1]) + (1,) * (input.ndim - 2)
    classes = Tensor._index_constant(0, input.shape[1], 1, lazygrad.int64, input.device, shape)
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


def _weighted_nll(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, op: str = "nll_loss"
) -> tuple[Tensor, Tensor]:
    """Per-element -weight[target] * input[target] (0 where ignored), and the total weight of non-ignored targets."""
    check_indices(target, input.shape[1], op, 1, negative=False, ignore=ignore_index)  # torch: IndexError
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
    if not target.dtype.is_float and weight is None and label_smoothing <= 0.0:
        loss = _class_cross_entropy(input, target, ignore_index, reduction)
        return loss[0] if unbatched and reduction == "none" else loss
    log_probs = input.log_softmax(1)
    num_classes = input.shape[1]
    if target.dtype.is_float:
        loss = _probability_target_loss(log_probs, target, weight, reduction, label_smoothing)
    else:
        loss = _class_target_loss(log_probs, target, weight, ignore_index, reduction, label_smoothing, num_classes)
    return loss[0] if unbatched and reduction == "none" else loss


def _class_cross_entropy(input: Tensor, target: Tensor, ignore_index: int, reduction: str) -> Tensor:
    """cross_entropy with class-index targets, no class weights and no smoothing (a classifier's loss): one
    composite op with the closed-form gradient, (softmax(input) - one_hot(target)) times the loss's gradient, zero
    where the target is ignored. Differentiating its log_softmax and masked sum built twice the tensors."""
    _check_class_targets(input, target)
    saved: list = []
    on_nodes = _class_nll_on_nodes(input, target, reduction)

    def forward() -> Tensor:
        log_probs = input.log_softmax(1)
        check_indices(target, input.shape[1], "cross_entropy", 1, negative=False, ignore=ignore_index)
        if on_nodes:
            return _mean_class_nll_nodes(log_probs, target, ignore_index, saved)
        valid = (target != ignore_index).cast(log_probs.dtype).unsqueeze(1)  # (see _weighted_nll)
        picked = _class_mask(target, log_probs) * valid
        weight_sum = picked.sum()
        saved.extend((log_probs, valid, picked, weight_sum))
        nll = -(log_probs * picked).sum(1)
        return nll.sum() / weight_sum if reduction == "mean" else _reduce(nll, reduction)

    def backward(grad: Tensor) -> tuple:
        log_probs, valid, picked, weight_sum = saved
        if lazygrad.is_grad_enabled():  # create_graph: the saved log-probabilities carry no graph
            log_probs = input.log_softmax(1)
        elif on_nodes and grad.dtype is weight_sum.dtype:
            return (_mean_class_nll_grad_nodes(grad, log_probs, valid, picked, weight_sum),)
        scale = grad / weight_sum if reduction == "mean" else grad.unsqueeze(1) if reduction == "none" else grad
        return ((log_probs.exp() * valid - picked) * scale,)

    return Tensor._composite("cross_entropy", (input,), forward, backward)


def _class_nll_on_nodes(input: Tensor, target: Tensor, reduction: str) -> bool:
    """Whether _class_cross_entropy builds its nodes directly (_mean_class_nll_nodes): a classifier's loss, (N, C)
    logits and int64 classes, averaged."""
    return reduction == "mean" and input.ndim == 2 and input.dtype.is_float and target.dtype is lazygrad.int64


def _mean_class_nll_nodes(log_probs: Tensor, target: Tensor, ignore_index: int, saved: list) -> Tensor:
    """_class_cross_entropy's forward after log_softmax, for (N, C) log-probabilities, int64 targets and the mean:
    the nodes its tensor ops make, call for call (the valid rows, the one-hot mask, the picked log-probabilities),
    without a tensor, promotion and broadcasting per op; saves what backward reads, as the tensor ops do."""
    node, labels = log_probs._lazydata, target._lazydata
    (n, classes), dtype, device = node.shape, node.dtype, node.device
    listed = LazyBuffer.elementwise(Op.CMPNE, (labels, LazyBuffer.const(ignore_index, (n,), labels.dtype, device)))
    valid = LazyBuffer.elementwise(Op.CAST, (listed,), dtype, dtype).reshape((n, 1))
    class_index = Tensor._index_constant(0, classes, 1, labels.dtype, device, (1, classes))._lazydata
    other = LazyBuffer.elementwise(
        Op.CMPNE, (labels.reshape((n, 1)).expand((n, classes)), class_index.expand((n, classes)))
    )
    one_hot = LazyBuffer.elementwise(Op.XOR, (other, LazyBuffer.const(True, (n, classes), lazygrad.bool, device)))
    one_hot = LazyBuffer.elementwise(Op.CAST, (one_hot,), dtype, dtype)
    picked = Tensor._wrap(LazyBuffer.elementwise(Op.MUL, (one_hot, valid.expand((n, classes)))))
    weight_sum = picked.sum()
    saved.extend((log_probs, Tensor._wrap(valid), picked, weight_sum))
    nll = LazyBuffer.elementwise(Op.MUL, (node, picked._lazydata)).reduce(Op.SUM, (1,)).reshape((n,))
    return Tensor._wrap(LazyBuffer.elementwise(Op.NEG, (nll,))).sum() / weight_sum


def _mean_class_nll_grad_nodes(grad: Tensor, log_probs: Tensor, valid: Tensor, picked: Tensor, weight_sum: Tensor):
    """(softmax - one_hot) * valid * grad / weight_sum, the mean class cross-entropy's input gradient, on nodes:
    the nodes of `(log_probs.exp() * valid - picked) * (grad / weight_sum)`, call for call."""
    node = log_probs._lazydata
    shape, dtype, device = node.shape, node.dtype, node.device
    scale = LazyBuffer.elementwise(Op.MUL, (grad._lazydata, LazyBuffer.elementwise(Op.RECIP, (weight_sum._lazydata,))))
    scaled = LazyBuffer.elementwise(Op.MUL, (node, LazyBuffer.const(1 / math.log(2), shape, dtype, device)))
    probs = LazyBuffer.elementwise(Op.MUL, (LazyBuffer.elementwise(Op.EXP2, (scaled,)), valid._lazydata.expand(shape)))
    diff = LazyBuffer.elementwise(Op.ADD, (probs, LazyBuffer.elementwise(Op.NEG, (picked._lazydata,))))
    return Tensor._wrap(LazyBuffer.elementwise(Op.MUL, (diff, scale.broadcast((1,) * len(shape), shape))))


def _check_class_targets(input: Tensor, target: Tensor) -> None:
    expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"class-index targets need shape {expected} for input {input.shape}, got {target.shape}")


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
    _check_class_targets(log_probs, target)
    nll, weight_sum = _weighted_nll(log_probs, target, weight, ignore_index, "cross_entropy")
    nll = nll.sum() / weight_sum if reduction == "mean" else _reduce(nll, reduction)
    if label_smoothing <= 0.0:
        return nll
    # the smoothing term: -sum over classes of (weighted) log-probabilities, zero where the target is ignored
    smooth = log_probs if weight is None else log_probs * _channel_view(weight, log_probs)
    smooth = -smooth.sum(1) * (target != ignore_index).cast(log_probs.dtype)
    smooth = smooth.sum() / weight_sum if reduction == "mean" else _reduce(smooth, reduction)
    return nll * (1 - label_smoothing) + smooth * (label_smoothing / num_classes)


# ---- issue 16 (transformer workload): embedding, layer_norm, gelu, attention ----


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Rows of weight (num_embeddings, dim) picked by the integer tensor input (any shape): a one-hot product, so
    the gradient of each row is the sum over its uses. The padding_idx row gets no gradient, as in torch."""
    if input.dtype.is_float:
        raise RuntimeError(f"embedding: indices must be an integer tensor, got {input.dtype} of shape {input.shape}")
    if weight.ndim != 2:
        raise RuntimeError(f"embedding: weight must be 2-d (num_embeddings, embedding_dim), got {weight.shape}")
    check_indices(input, weight.shape[0], "embedding", 0, negative=False)
    if padding_idx is not None:
        padding_idx %= weight.shape[0]
        is_padding = (lazygrad.arange(weight.shape[0], device=weight.device) == padding_idx).unsqueeze(-1)
        weight = is_padding._select(weight.detach(), weight)
    return weight._gather_index(input)  # checked above: weight[input] would read the indices again


def layer_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize over the last len(normalized_shape) dims with the biased variance, then scale and shift."""
    normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[input.ndim - len(normalized_shape) :]) != normalized_shape:
        raise RuntimeError(f"layer_norm: input {input.shape} does not end in normalized_shape {normalized_shape}")
    dims = tuple(range(input.ndim - len(normalized_shape), input.ndim))
    mean = input.mean(dims, keepdim=True)
    centered = input - mean
    output = centered * ((centered * centered).mean(dims, keepdim=True) + eps).rsqrt()
    if weight is not None:
        output = output * weight
    return output if bias is None else output + bias


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return input.gelu(approximate)


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> Tensor:
    return query.scaled_dot_product_attention(key, value, attn_mask, dropout_p, is_causal, scale)


# ---- more of torch.nn.functional, composed of Tensor ops (issue 15); tests/test_opinfo.py checks each ----


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    return input.elu(alpha)


def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    return (input > 0)._select(input, alpha * (input / alpha).expm1())


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    return 1.0507009873554804934193349852946 * input.elu(1.6732632423543772848170429916717)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    return input.leaky_relu(negative_slope)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    return input.relu6()


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    return input.silu()


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    return input.mish()


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    return input.softplus(beta, threshold)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    if not input.dtype.is_float:  # torch keeps an integer input's dtype
        return input.clamp(int(min_val), int(max_val))
    return input.hardtanh(min_val, max_val)


def sigmoid(input: Tensor) -> Tensor:
    return input.sigmoid()


def tanh(input: Tensor) -> Tensor:
    return input.tanh()


def logsigmoid(input: Tensor) -> Tensor:
    return -(-input).softplus()


def softsign(input: Tensor) -> Tensor:
    return input / (1 + input.abs())


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    return (input / 6 + 0.5).clamp(0, 1)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    return input * (input + 3).clamp(0, 6) / 6


def tanhshrink(input: Tensor) -> Tensor:
    return input - input.tanh()


def softshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    return (input > lambd)._select(input - lambd, (input < -lambd)._select(input + lambd, 0.0))


def hardshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    return ((input > lambd) | (input < -lambd))._select(input, 0.0)


def threshold(input: Tensor, threshold: float, value: float, inplace: bool = False) -> Tensor:
    return (input > threshold)._select(input, value)


def softmin(input: Tensor, dim: int, dtype=None) -> Tensor:
    return (-input).softmax(dim, dtype)


def glu(input: Tensor, dim: int = -1) -> Tensor:
    a, b = input.chunk(2, dim)
    return a * b.sigmoid()


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    return _reduce((input - target).abs(), reduction)


def smooth_l1_loss(input: Tensor, target: Tensor, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    diff = (input - target).abs()
    if beta == 0:
        return _reduce(diff, reduction)
    return _reduce((diff < beta)._select(0.5 * diff * diff / beta, diff - 0.5 * beta), reduction)


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    diff = (input - target).abs()
    return _reduce((diff < delta)._select(0.5 * diff * diff, delta * (diff - 0.5 * delta)), reduction)


def binary_cross_entropy(input: Tensor, target: Tensor, weight=None, reduction: str = "mean") -> Tensor:
    # torch clamps the logarithms at -100, so that 0 and 1 give a finite loss
    loss = -(target * input.log().clamp(min=-100) + (1 - target) * (1 - input).log().clamp(min=-100))
    return _reduce(loss if weight is None else loss * weight, reduction)


def binary_cross_entropy_with_logits(
    input: Tensor, target: Tensor, weight=None, reduction: str = "mean", pos_weight=None
) -> Tensor:
    log_sigmoid, log_one_minus = logsigmoid(input), logsigmoid(-input)
    positive = target * log_sigmoid if pos_weight is None else pos_weight * target * log_sigmoid
    loss = -(positive + (1 - target) * log_one_minus)
    return _reduce(loss if weight is None else loss * weight, reduction)


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    from lazygrad.nn.losses import vector_norm

    return input / vector_norm(input, p, dim, keepdim=True).clamp(min=eps)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    # torch: the inputs broadcast first (a norm over a broadcast dim counts each copy), then the dot product over
    # the product of the norms, each norm clamped at eps
    x1, x2 = lazygrad.broadcast_tensors(x1, x2)
    n1 = (x1 * x1).sum(dim).sqrt().clamp(min=eps)
    n2 = (x2 * x2).sum(dim).sqrt().clamp(min=eps)
    return (x1 * x2).sum(dim) / (n1 * n2)


def conv1d(input: Tensor, weight: Tensor, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    return input.conv1d(weight, bias, stride, padding, dilation, groups)


def max_pool1d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    return input.max_pool1d(kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def avg_pool1d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True) -> Tensor:
    return input.avg_pool1d(kernel_size, stride, padding, ceil_mode, count_include_pad)


def _one(size):
    return size[0] if isinstance(size, (tuple, list)) else size


def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    return input.unsqueeze(-2).adaptive_avg_pool2d((1, _one(output_size))).squeeze(-2)


def adaptive_max_pool1d(input: Tensor, output_size, return_indices: bool = False):
    out = input.unsqueeze(-2).adaptive_max_pool2d((1, _one(output_size)), return_indices)
    return (out[0].squeeze(-2), out[1].squeeze(-2)) if return_indices else out.squeeze(-2)


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    return input.adaptive_max_pool2d(output_size, return_indices)


def pad(input: Tensor, pad, mode: str = "constant", value: float | None = None) -> Tensor:
    return input.pad(pad, mode, 0.0 if value is None else value)


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """max(0, x) + weight * min(0, x), one weight per channel (dim 1) or one for all."""
    if weight.numel() > 1:
        if input.ndim < 2 or input.shape[1] != weight.numel():
            raise RuntimeError(f"prelu: {weight.numel()} weights for input {input.shape} (one per channel, dim 1)")
        weight = weight.reshape((1, -1) + (1,) * (input.ndim - 2))
    else:
        weight = weight.reshape(())  # the output keeps the input's shape (a 0-d input stays 0-d)
    return (input > 0)._select(input, weight * input)


def bilinear(input1: Tensor, input2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """out[..., o] = sum_ij input1[..., i] * weight[o, i, j] * input2[..., j] + bias[o]."""
    out = (input1.unsqueeze(-2).unsqueeze(-1) * weight * input2.unsqueeze(-2).unsqueeze(-2)).sum((-2, -1))
    return out + bias if bias is not None else out


def channel_shuffle(input: Tensor, groups: int) -> Tensor:
    """(N, g * c, *) -> the channels of each group interleaved: (N, g, c, *) transposed to (N, c, g, *)."""
    n, channels, *rest = input.shape
    if channels % groups:
        raise RuntimeError(f"channel_shuffle: {channels} channels of input {input.shape} not divisible by {groups}")
    return input.reshape(n, groups, channels // groups, *rest).transpose(1, 2).reshape(input.shape)


def conv_transpose1d(
    input: Tensor, weight: Tensor, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    return input.conv_transpose1d(weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(
    input: Tensor, weight: Tensor, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1
):
    return input.conv_transpose2d(weight, bias, stride, padding, output_padding, groups, dilation)


def _feature_mask_shape(input: Tensor, batched_ndim: int) -> tuple:
    """A mask with one value per (sample, channel): the spatial dims of size 1 (unbatched input: per channel)."""
    if input.ndim == batched_ndim:
        return (*input.shape[:2], *(1,) * (input.ndim - 2))
    return (input.shape[0], *(1,) * (input.ndim - 1))


def _dropout_with_mask(input: Tensor, p: float, training: bool, mask_shape: tuple, alpha: bool) -> Tensor:
    """Dropout whose mask has mask_shape (broadcast over the rest); alpha: SELU's alpha dropout, which keeps the
    mean and variance of a SELU activation (dropped values become -alpha * scale, then an affine correction)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return input
    if p == 1:  # as torch: a product with zero, so an inf or NaN gives NaN
        return input * 0.0
    keep = (Tensor.rand(*mask_shape, device=input.device) >= p).cast(input.dtype)
    if not alpha:
        return input * keep * (1.0 / (1.0 - p))
    selu_alpha = 1.7580993408473766  # torch's alpha * scale of SELU
    a = 1.0 / ((selu_alpha * selu_alpha * p + 1) * (1 - p)) ** 0.5
    b = (keep - 1) * (selu_alpha * a) + selu_alpha * a * p
    return input * (keep * a) + b


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    return _dropout_with_mask(input, p, training, _feature_mask_shape(input, 4), alpha=False)


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    return _dropout_with_mask(input, p, training, _feature_mask_shape(input, 5), alpha=False)


def alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False) -> Tensor:
    return _dropout_with_mask(input, p, training, input.shape, alpha=True)


def feature_alpha_dropout(input: Tensor, p: float = 0.5, training: bool = False, inplace: bool = False) -> Tensor:
    return _dropout_with_mask(input, p, training, (*input.shape[:2], *(1,) * (input.ndim - 2)), alpha=True)


def pdist(input: Tensor, p: float = 2.0) -> Tensor:
    """The p-norm distances between the rows of an (N, M) input, for each pair i < j in row-major order."""
    if input.ndim != 2:
        raise RuntimeError(f"pdist only supports 2D tensors, got shape {input.shape}")
    from lazygrad.nn.losses import vector_norm
    from lazygrad.tensor_ops.movement import take_positions

    first, second = np.triu_indices(input.shape[0], 1)
    if len(first) == 0:
        return input.reshape(-1).narrow(0, 0, 0) * 1  # empty, and in input's graph as torch's
    difference = take_positions(input, 0, first.tolist()) - take_positions(input, 0, second.tolist())
    return vector_norm(difference, p, -1)

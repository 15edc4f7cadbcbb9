"""The less common losses of torch.nn.functional (KL divergence, the margin and embedding losses, Poisson and
Gaussian NLL) and the distances they use, composed of Tensor ops with PyTorch's formulas. nn.functional exports
them; the common losses (mse, nll, cross_entropy, bce...) are in nn/functional.py."""

from __future__ import annotations

import math

from lazygrad.tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def vector_norm(x: Tensor, p: float, dim: int, keepdim: bool = False) -> Tensor:
    """The p-norm along dim, as torch.linalg.vector_norm (p = inf, -inf, 0 and negative p included)."""
    size = x.abs()
    if p == math.inf:
        return size.amax(dim, keepdim=keepdim)
    if p == -math.inf:
        return size.amin(dim, keepdim=keepdim)
    if p == 0:
        # the count of nonzeros; plus zeros computed from x, so the result is in x's graph (gradient 0) as torch's
        zeros = size.isnan()._select(0.0, size).clamp(max=0)
        return (size != 0).cast(x.dtype).sum(dim, keepdim=keepdim) + zeros.sum(dim, keepdim=keepdim)
    if p == 2:
        return (x * x).sum(dim, keepdim=keepdim).sqrt()
    if p == 1:
        return size.sum(dim, keepdim=keepdim)
    return size.pow(p).sum(dim, keepdim=keepdim).pow(1 / p)


def pairwise_distance(x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False) -> Tensor:
    """The p-norm of x1 - x2 + eps along the last dim (torch adds eps before the norm)."""
    return vector_norm(x1 - x2 + eps, p, -1, keepdim)


def kl_div(input: Tensor, target: Tensor, size_average=None, reduce=None, reduction="mean", log_target=False):
    """KL(target || exp(input)) pointwise: target * (log target - input), 0 where target is 0."""
    if size_average is not None or reduce is not None:
        raise NotImplementedError("kl_div: size_average and reduce are deprecated in torch; use reduction")
    loss = target.exp() * (target - input) if log_target else target.xlogy(target) - target * input
    if reduction == "batchmean":  # the mathematically correct KL divergence per sample
        return loss.sum() / (input.shape[0] if input.ndim else 1)
    return _reduce(loss, reduction)


def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0.0, reduction="mean"):
    return _reduce((-target * (input1 - input2) + margin).clamp(min=0), reduction)


def hinge_embedding_loss(input: Tensor, target: Tensor, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """input where target is 1, max(0, margin - input) where it is -1 (torch: both terms where neither)."""
    hinge = (target != 1)._select((margin - input).clamp(min=0), 0.0)
    return _reduce(hinge + (target != -1)._select(input, 0.0), reduction)


def soft_margin_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    return _reduce((-target * input).softplus(), reduction)  # log(1 + exp(-y x)), stable for large |y x|


def multilabel_soft_margin_loss(input: Tensor, target: Tensor, weight=None, reduction: str = "mean") -> Tensor:
    """Per sample, the mean over classes of the binary cross entropy of sigmoid(input)."""
    log_sigmoid, log_one_minus_sigmoid = -(-input).softplus(), -input.softplus()
    loss = -(target * log_sigmoid + (1 - target) * log_one_minus_sigmoid)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss.mean(-1), reduction)


def cosine_embedding_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0.0, reduction="mean"):
    """1 - cos where target is 1, max(0, cos - margin) where it is -1; cos with torch's 1e-12 in each norm."""
    dim = 1 if input1.ndim == 2 else 0
    dot = (input1 * input2).sum(dim)
    cos = dot / (((input1 * input1).sum(dim) + 1e-12) * ((input2 * input2).sum(dim) + 1e-12)).sqrt()
    loss = (target == 1)._select(1 - cos, 0.0) + (target == -1)._select((cos - margin).clamp(min=0), 0.0)
    return _reduce(loss, reduction)


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    size_average=None,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    if size_average is not None or reduce is not None:
        raise NotImplementedError("triplet_margin_loss: size_average and reduce are deprecated in torch")
    distance = lambda a, b: pairwise_distance(a, b, p, eps)  # noqa: E731
    return triplet_margin_with_distance_loss(
        anchor, positive, negative, distance_function=distance, margin=margin, swap=swap, reduction=reduction
    )


def triplet_margin_with_distance_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    distance_function=None,
    margin=1.0,
    swap=False,
    reduction="mean",
) -> Tensor:
    distance = distance_function if distance_function is not None else pairwise_distance
    to_positive, to_negative = distance(anchor, positive), distance(anchor, negative)
    if swap:  # the harder negative: the one nearer to either the anchor or the positive
        to_negative = to_negative.minimum(distance(positive, negative))
    return _reduce((margin + to_positive - to_negative).clamp(min=0), reduction)


def multi_margin_loss(
    input: Tensor, target: Tensor, p: int = 1, margin: float = 1.0, weight=None, reduction: str = "mean"
) -> Tensor:
    """Per sample, the mean over classes i != y of max(0, margin - x[y] + x[i]) ** p (times weight[y])."""
    if p not in (1, 2):
        raise ValueError(f"multi_margin_loss: only p == 1 and p == 2 are supported, got {p}")
    x = input.reshape(1, -1) if input.ndim <= 1 else input
    y = target.reshape(-1)
    classes = x.shape[1]
    chosen = Tensor.arange(classes, device=x.device).reshape(1, -1) == y.reshape(-1, 1)
    correct = chosen._select(x, 0.0).sum(1, keepdim=True)
    terms = (margin - correct + x).clamp(min=0)
    terms = terms * terms if p == 2 else terms
    if weight is not None:
        terms = terms * weight[y].reshape(-1, 1)
    loss = chosen._select(0.0, terms).sum(1) / classes
    loss = loss.reshape(()) if input.ndim <= 1 else loss
    return _reduce(loss, reduction)


def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    size_average=None,
    eps: float = 1e-8,
    reduce=None,
    reduction: str = "mean",
) -> Tensor:
    if size_average is not None or reduce is not None:
        raise NotImplementedError("poisson_nll_loss: size_average and reduce are deprecated in torch")
    loss = input.exp() - target * input if log_input else input - target * (input + eps).log()
    if full:  # Stirling's approximation of log(target!), where target > 1
        stirling = target * target.log() - target + 0.5 * (2 * math.pi * target).log()
        loss = loss + (target > 1)._select(stirling, 0.0)
    return _reduce(loss, reduction)


def gaussian_nll_loss(
    input: Tensor, target: Tensor, var, full: bool = False, eps: float = 1e-6, reduction: str = "mean"
) -> Tensor:
    """0.5 * (log var + (input - target)^2 / var), var clamped at eps without the clamp's gradient (as torch)."""
    if not isinstance(var, Tensor):
        var = Tensor.full(input.shape, float(var), input.dtype, input.device)
    if var.shape != input.shape:
        if input.shape[:-1] == var.shape:  # one variance per sample of a vector-valued input
            var = var.unsqueeze(-1)
        elif not (input.shape[:-1] == var.shape[:-1] and var.shape[-1] == 1):  # a homoscedastic last dim
            raise ValueError(f"gaussian_nll_loss: var of shape {var.shape} does not fit input {input.shape}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    var = var + (var.clamp(min=eps) - var).detach()  # torch clamps var in place under no_grad
    loss = 0.5 * (var.log() + (input - target) ** 2 / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _reduce(loss, reduction)

"""torch.nn.utils: gradient clipping."""

from __future__ import annotations

from collections.abc import Iterable

import lazygrad
from lazygrad.tensor import Tensor


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach=None,
) -> Tensor:
    """Scale every gradient by min(1, max_norm / (total_norm + 1e-6)), where total_norm is the norm of all gradients
    together, and return total_norm, as torch. Lazy: the scaled gradients are new graph nodes (assigned to .grad), so
    the clipping fuses into the optimizer's update and nothing is read to the host (unless error_if_nonfinite)."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return lazygrad.tensor(0.0)
    with lazygrad.no_grad():
        if norm_type == float("inf"):
            norms = [g.abs().max() for g in grads]
            total = Tensor.stack(norms).max()
        else:
            sums = [(g.abs() ** norm_type).sum() for g in grads] if norm_type != 2.0 else [(g * g).sum() for g in grads]
            total = Tensor.stack(sums).sum() ** (1.0 / norm_type)
        if error_if_nonfinite and not bool(total.isfinite().item()):
            raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite")
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * scale.cast(p.grad.dtype)
    return total

"""Tensor's ops, grouped by concern: one mixin class per module, which lazygrad.tensor.Tensor inherits.

- elementwise: dtype conversions, arithmetic with PyTorch's promotion and broadcasting, math, activations,
  comparisons, bitwise and logical ops, the operators
- reduce: sum, mean, max/min and their arg forms, prod, var/std, any/all, softmax, cumsum, topk
- movement: views (reshape, permute, expand, pad, shrink, flip), indexing, cat/stack, split
- creation: full/zeros/ones, random tensors, arange/linspace/eye, the *_like forms, multinomial
- nn: matmul, linear, conv2d, pooling, dropout, attention
- math: inverse trigonometric and hyperbolic functions, atan2, hypot, logaddexp, isclose..., nansum, cumprod
- arrange: diagonal, diag, roll, movedim, narrow, tile, index_select, scatter, the stacks, outer/bmm/addmm...

Every op reaches the graph through the core's two doors (`Tensor._primitive`, `Tensor._movement`).
`Tensor.method` is the mixin's function, docstring and all; nn.functional calls these methods, so each op
has one implementation.
"""

import functools
import inspect

from lazygrad.tensor_ops import arrange, bounds, creation, elementwise, math, movement, nn, reduce

_MODULES = (arrange, bounds, creation, elementwise, math, movement, nn, reduce)


def bind_tensor_class(tensor_class: type) -> None:
    """The op groups build Tensors (constants, results, other operands), but Tensor is made from them, so it
    does not exist when they are imported: lazygrad.tensor hands each module the finished class."""
    for module in _MODULES:
        module.Tensor = tensor_class
    accept_axis_for_dim(tensor_class)


def accept_axis_for_dim(tensor_class: type) -> None:
    """torch accepts `axis` wherever an op takes `dim` (numpy's spelling): every public method with a `dim`
    parameter gets that alias, on the class itself, so the function forms and nn.functional see it too."""
    for name in dir(tensor_class):
        static = inspect.getattr_static(tensor_class, name)
        if name.startswith("_") or not inspect.isfunction(static):
            continue
        if "dim" not in inspect.signature(static).parameters or getattr(static, "accepts_axis", False):
            continue
        setattr(tensor_class, name, _with_axis_alias(static))


def _with_axis_alias(method):
    @functools.wraps(method)
    def with_axis(*args, **kwargs):
        if "axis" in kwargs:
            if "dim" in kwargs:
                raise TypeError(f"{method.__name__}() got both 'dim' and its alias 'axis'")
            kwargs["dim"] = kwargs.pop("axis")
        return method(*args, **kwargs)

    with_axis.accepts_axis = True
    return with_axis

"""Tensor's ops, grouped by concern: one mixin class per module, which lazygrad.tensor.Tensor inherits.

- elementwise: dtype conversions, arithmetic with PyTorch's promotion and broadcasting, math, activations,
  comparisons, bitwise and logical ops, the operators
- reduce: sum, mean, max/min and their arg forms, prod, var/std, any/all, softmax, cumsum, topk
- movement: views (reshape, permute, expand, pad, shrink, flip), indexing, cat/stack, split
- creation: full/zeros/ones, random tensors, arange/linspace/eye, the *_like forms, multinomial
- nn: matmul, linear, conv2d, pooling, dropout, attention

Every op reaches the graph through the core's two doors (`Tensor._primitive`, `Tensor._movement`).
`Tensor.method` is the mixin's function, docstring and all; nn.functional calls these methods, so each op
has one implementation.
"""

from lazygrad.tensor_ops import creation, elementwise, movement, nn, reduce

_MODULES = (creation, elementwise, movement, nn, reduce)


def bind_tensor_class(tensor_class: type) -> None:
    """The op groups build Tensors (constants, results, other operands), but Tensor is made from them, so it
    does not exist when they are imported: lazygrad.tensor hands each module the finished class."""
    for module in _MODULES:
        module.Tensor = tensor_class

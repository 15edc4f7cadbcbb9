"""Activation modules with torch.nn's names and constructor arguments: each applies the nn.functional function of
its name with the arguments it was built with. `inplace` is accepted for compatibility: a lazy graph makes it
meaningless (the result is a new tensor either way)."""

from __future__ import annotations

from lazygrad.nn import functional as F
from lazygrad.nn.module import Module
from lazygrad.tensor import Tensor


class _Activation(Module):
    """Calls nn.functional.<function>(input, **self.arguments); extra_repr lists the arguments as torch's."""

    function = ""

    def __init__(self, **arguments):
        super().__init__()
        self.inplace = arguments.pop("inplace", False)
        self.arguments = arguments

    def forward(self, input: Tensor) -> Tensor:
        return getattr(F, self.function)(input, **self.arguments)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.arguments.items())


class _InplaceOnly(_Activation):
    """An activation whose one argument is torch's `inplace` (positional, as in torch: nn.SiLU(True))."""

    def __init__(self, inplace: bool = False):
        super().__init__(inplace=inplace)


class Tanh(_Activation):
    function = "tanh"


class Sigmoid(_Activation):
    function = "sigmoid"


class LogSigmoid(_Activation):
    function = "logsigmoid"


class Softsign(_Activation):
    function = "softsign"


class Tanhshrink(_Activation):
    function = "tanhshrink"


class SiLU(_InplaceOnly):
    function = "silu"


class Mish(_InplaceOnly):
    function = "mish"


class ReLU6(_InplaceOnly):
    function = "relu6"


class SELU(_InplaceOnly):
    function = "selu"


class Hardswish(_InplaceOnly):
    function = "hardswish"


class Hardsigmoid(_InplaceOnly):
    function = "hardsigmoid"


class LeakyReLU(_Activation):
    function = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__(negative_slope=negative_slope, inplace=inplace)


class ELU(_Activation):
    function = "elu"

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__(alpha=alpha, inplace=inplace)


class CELU(_Activation):
    function = "celu"

    def __init__(self, alpha: float = 1.0, inplace: bool = False):
        super().__init__(alpha=alpha, inplace=inplace)


class Softplus(_Activation):
    function = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__(beta=beta, threshold=threshold)


class Hardtanh(_Activation):
    function = "hardtanh"

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        super().__init__(min_val=min_val, max_val=max_val, inplace=inplace)


class Threshold(_Activation):
    function = "threshold"

    def __init__(self, threshold: float, value: float, inplace: bool = False):
        super().__init__(threshold=threshold, value=value, inplace=inplace)


class _Shrink(_Activation):
    def __init__(self, lambd: float = 0.5):
        super().__init__(lambd=lambd)

    def extra_repr(self) -> str:
        return f"{self.arguments['lambd']}"  # torch prints the bare number


class Hardshrink(_Shrink):
    function = "hardshrink"


class Softshrink(_Shrink):
    function = "softshrink"


class GLU(_Activation):
    function = "glu"

    def __init__(self, dim: int = -1):
        super().__init__(dim=dim)


def _implicit_softmax_dim(ndim: int) -> int:
    """torch's choice when Softmax is built without dim (with a deprecation warning there): 0 for 0-, 1- and 3-d
    inputs, else 1."""
    return 0 if ndim in (0, 1, 3) else 1


class _SoftmaxLike(_Activation):
    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, input: Tensor) -> Tensor:
        dim = self.dim if self.dim is not None else _implicit_softmax_dim(input.ndim)
        return getattr(F, self.function)(input, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_SoftmaxLike):
    function = "softmax"


class LogSoftmax(_SoftmaxLike):
    function = "log_softmax"


class Softmin(_SoftmaxLike):
    function = "softmin"


ACTIVATIONS = [
    Tanh, Sigmoid, LogSigmoid, Softsign, Tanhshrink, SiLU, Mish, ReLU6, SELU, Hardswish, Hardsigmoid, LeakyReLU, ELU,
    CELU, Softplus, Hardtanh, Threshold, Hardshrink, Softshrink, GLU, Softmax, LogSoftmax, Softmin,
]  # fmt: skip

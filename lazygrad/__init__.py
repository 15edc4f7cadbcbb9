"""lazygrad: a lazy tensor compiler with PyTorch's API.

Operations build a graph; nothing runs until a value is needed. Then the graph is fused into
kernels, compiled to OpenCL C or LLVM IR, cached and run.
"""

from lazygrad import config as _config
from lazygrad import cuda, viz
from lazygrad import dtype as dtypes
from lazygrad.autograd import enable_grad, is_grad_enabled, no_grad
from lazygrad.device import Device, device  # the class (torch.device) shadows the submodule
from lazygrad.dtype import (
    DType,
    bool_,
    float16,
    float32,
    float64,
    get_default_dtype,
    int8,
    int16,
    int32,
    int64,
    set_default_dtype,
    uint8,
)
from lazygrad.jit import jit
from lazygrad.runtime import profile
from lazygrad.symbolic import Variable as Variable  # a run-time size or offset: one compiled kernel for every value
from lazygrad.tensor import Tensor, manual_seed, realize
from lazygrad.tensor_ops import arrange as _arrange
from lazygrad.tensor_ops.creation import as_tensor, from_numpy, tensor

bool = bool_  # noqa: A001 (torch.bool)
float = float32  # noqa: A001
half = float16
double = float64
int = int32  # noqa: A001
long = int64

zeros, ones, full, empty = Tensor.zeros, Tensor.ones, Tensor.full, Tensor.empty
arange, linspace, eye = Tensor.arange, Tensor.linspace, Tensor.eye
rand, randn, randint = Tensor.rand, Tensor.randn, Tensor.randint
zeros_like, ones_like, full_like, empty_like = Tensor.zeros_like, Tensor.ones_like, Tensor.full_like, Tensor.empty_like
rand_like, randn_like = Tensor.rand_like, Tensor.randn_like
cat, stack = Tensor.cat, Tensor.stack


def where(condition, input=None, other=None):
    """torch.where(condition, input, other); torch.where(condition) is condition.nonzero(as_tuple=True)."""
    if input is None and other is None:
        return condition.nonzero(as_tuple=True)
    return condition._select(input, other)


maximum, minimum = Tensor.maximum, Tensor.minimum
matmul = Tensor.matmul

# torch's function forms of Tensor methods (torch.sum(x, 1) is x.sum(1)): the method itself, self as first argument
FUNCTION_FORMS = """
    abs abs_ acos acosh add addbmm addcdiv addcmul addmm addmv addr all allclose amax amin aminmax any arccos
    arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin argwhere asin asinh atan atan2 atanh baddbmm
    bitwise_and bitwise_left_shift bitwise_not bitwise_or bitwise_right_shift bitwise_xor bmm broadcast_to ceil
    chunk clamp clamp_ clamp_max clamp_min clip clone conv1d conv2d copysign cos cosh count_nonzero cumprod
    cumsum deg2rad detach detach_ diag diagonal div dot dropout eq erf erfc exp exp2 exp_ expm1 fill_ flatten
    flip fliplr flipud floor floor_divide fmax fmin fmod frac gather ge ger gt heaviside hypot index_put
    index_put_ index_select inner isclose isfinite isinf isnan isneginf isposinf kron le lerp log log10 log1p
    log2 log_softmax logaddexp logaddexp2 logical_and logical_not logical_or logical_xor logit logsumexp lt
    masked_select max max_pool2d mean min mm moveaxis movedim mul mv nan_to_num nanmean nansum narrow ne neg
    neg_ nonzero numel outer permute positive pow prod rad2deg ravel reciprocal relu relu_ remainder
    repeat_interleave reshape roll rot90 round rsqrt rsub scatter scatter_add select sigmoid sign signbit sin
    sinc sinh softmax split sqrt sqrt_ square squeeze std std_mean sub sum swapaxes t take_along_dim tan tanh
    tile trace transpose true_divide trunc unbind unflatten unsqueeze var var_mean xlogy zero_
    diag_embed diagflat narrow_copy split_with_sizes unsafe_split unsafe_chunk tensor_split hsplit vsplit dsplit
    diff take vdot cross equal logcumsumexp cummax cummin norm dist renorm ldexp float_power index_add index_copy
    index_fill tril triu topk masked_fill multinomial sort argsort msort scatter_reduce
""".split()
globals().update({name: getattr(Tensor, name) for name in FUNCTION_FORMS})
# functions of several tensors (torch.hstack, torch.meshgrid...)
globals().update(_arrange.stack_functions())
# torch's function-only forms (the *_copy views, fill, logspace, tril_indices, block_diag, trapezoid...)
globals().update(_arrange.copy_and_construction_functions())


def grad(outputs, inputs, grad_outputs=None, create_graph: bool = False, retain_graph=None):
    """d(outputs)/d(inputs) as new tensors, leaving every .grad untouched (torch.autograd.grad)."""
    from lazygrad import autograd

    single = isinstance(inputs, Tensor)
    inputs = [inputs] if single else list(inputs)
    out = outputs if isinstance(outputs, Tensor) else outputs[0]
    g = grad_outputs if grad_outputs is not None else Tensor.ones_like(out)
    if not out.requires_grad:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
    keep = create_graph if retain_graph is None else retain_graph
    found = autograd.backward(out, g, retain_graph=keep, create_graph=create_graph, inputs=inputs)
    result = []
    for t in inputs:
        if id(t) not in found:
            raise RuntimeError("One of the differentiated Tensors appears to not have been used in the graph.")
        result.append(found[id(t)])
    return tuple(result)


def _lazy_attr(name):
    import importlib

    return importlib.import_module(f"lazygrad.{name}")


def __getattr__(name):
    if name in ("nn", "optim", "models", "serialization", "hub", "backends", "utils"):
        return _lazy_attr(name)
    if name == "Generator":
        return _lazy_attr("utils.data").Generator
    if name in ("load", "save"):
        return getattr(_lazy_attr("serialization"), name)
    raise AttributeError(f"module 'lazygrad' has no attribute {name!r}")


__all__ = [
    "Tensor",
    "tensor",
    "from_numpy",
    "as_tensor",
    "set_default_dtype",
    "get_default_dtype",
    "Device",
    "device",
    "DType",
    "dtypes",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "profile",
    "realize",
    "manual_seed",
    "grad",
    "jit",
    "viz",
    "cuda",
    "bool_",
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
]

if _config.VIZ:
    viz.capture_whole_program(_config.VIZ)

"""Runs PyTorch's OpInfo samples (torch.testing._internal.common_methods_invocations.op_db) through lazygrad.

Which lazygrad callable stands for an OpInfo: its Tensor method when the OpInfo has a method variant and Tensor
has that name, else the function of the same name in `lazygrad` (or `lazygrad.nn.functional` for
`nn.functional.*` names). Samples are converted input by input (torch tensors to lazygrad tensors of the same
values, dtype and requires_grad; torch dtypes to lazygrad dtypes), run on both sides and compared: shapes,
dtypes, values; then, for ops with autograd, the gradients of every input that requires one, with the loss
sum(output * fixed random projection) so every output element matters.
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import torch
from helpers import GRAD_ATOL, GRAD_RTOL, TORCH_TO_LAZYGRAD, assert_same
from torch.testing._internal.common_methods_invocations import op_db

import lazygrad
import lazygrad.nn.functional as F

OP_DB = op_db
TOP_LEVEL_NAMES = sorted({info.name for info in OP_DB if "." not in info.name})
FUNCTIONAL_NAMES = sorted({info.name for info in OP_DB if info.name.startswith("nn.functional.")})
OTHER_NAMES = sorted({info.name for info in OP_DB} - set(TOP_LEVEL_NAMES) - set(FUNCTIONAL_NAMES))

# float32 values of op_db's samples reach ~9 and pass through several ops: float32 rounding, not tolerance abuse
RTOL, ATOL = 1e-4, 1e-5


class Unsupported(Exception):
    """A sample lazygrad cannot take as given (a torch-only argument type): the sample's skip, with its reason."""


def op_id(info) -> str:
    return info.name + (f".{info.variant_test_name}" if info.variant_test_name else "")


# OpInfos whose op is an in-place method applied to a clone of the input (op_db's lambdas do the same)
IN_PLACE_ON_A_CLONE = {"normal.in_place": "normal_", "uniform": "uniform_", "zero_": "zero_"}

# OpInfos whose op takes its arguments in another order than the function (op_db's lambdas reorder them too)
REORDERED = {"nn.functional.embedding": lambda weight, indices, **kwargs: F.embedding(indices, weight, **kwargs)}


def _topk_outputs(input, out, k, dim=-1, *rest, **kwargs):
    """topk's indices of tied values are unspecified (torch's CPU order depends on the kernel it takes): compare
    the values, and the input's elements at the indices, which must be those values. A 0-d input has one element
    and no tie (and torch's take_along_dim takes no 0-d input): its index is compared as it is."""
    if not out.indices.ndim:
        return out.values, out.indices
    if isinstance(input, torch.Tensor):
        return out.values, torch.take_along_dim(input, out.indices, dim)
    return out.values, input.take_along_dim(out.indices, dim)


# OpInfos whose outputs are compared through a function of (input, output, *args, **kwargs) on both sides
COMPARED_THROUGH = {"topk": _topk_outputs}


def lazygrad_callable(info):
    """The lazygrad function for an OpInfo, called as fn(input, *args, **kwargs); None if lazygrad has none."""
    name = info.name
    if op_id(info) in REORDERED:
        return REORDERED[op_id(info)]
    if op_id(info) in IN_PLACE_ON_A_CLONE:
        method = IN_PLACE_ON_A_CLONE[op_id(info)]
        if not hasattr(lazygrad.Tensor, method):
            return None
        return lambda x, *args, **kwargs: getattr(x.clone(), method)(*args, **kwargs)
    if name.startswith("nn.functional."):
        fn = getattr(F, name.removeprefix("nn.functional."), None)
        return fn if callable(fn) else None
    if "." in name:
        return None
    function = getattr(lazygrad, name, None)
    # a static method of Tensor (a creation function: Tensor.normal(*shape)) is not a method of the input
    is_method = hasattr(lazygrad.Tensor, name) and not isinstance(
        inspect.getattr_static(lazygrad.Tensor, name), staticmethod
    )
    if is_method and (info.method_variant is not None or not callable(function)):
        attr = getattr(lazygrad.Tensor, name)
        if isinstance(attr, property):
            return lambda x: getattr(x, name)
        return lambda x, *args, **kwargs: getattr(x, name)(*args, **kwargs)
    return function if callable(function) else None


def to_lazygrad(value):
    """A sample's argument as lazygrad takes it: tensors by value (same dtype, requires_grad), dtypes mapped."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in TORCH_TO_LAZYGRAD:
            raise Unsupported(f"a {value.dtype} tensor argument")
        array = value.detach().cpu().numpy().copy()
        out = lazygrad.Tensor(array, dtype=TORCH_TO_LAZYGRAD[value.dtype])
        return out.requires_grad_(True) if value.requires_grad else out
    if isinstance(value, torch.dtype):
        if value not in TORCH_TO_LAZYGRAD:
            raise Unsupported(f"dtype {value}")
        return TORCH_TO_LAZYGRAD[value]
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, (list, tuple)):
        converted = [to_lazygrad(v) for v in value]
        return converted if isinstance(value, list) else tuple(converted)
    if isinstance(value, dict):
        return {k: to_lazygrad(v) for k, v in value.items()}
    if isinstance(value, torch.nn.PairwiseDistance):  # a distance_function argument: the same distance
        return lambda x1, x2: F.pairwise_distance(x1, x2, value.norm, value.eps, value.keepdim)
    if isinstance(value, (torch.memory_format, torch.layout, torch.device, torch.Generator)):
        raise Unsupported(f"a {type(value).__name__} argument")
    return value


def leaves(value) -> list:
    """The tensors in a (nested) argument, in order."""
    if isinstance(value, (torch.Tensor, lazygrad.Tensor)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in leaves(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in leaves(v)]
    return []


def samples(info, dtype: torch.dtype, limit: int | None, requires_grad: bool, extra=()) -> list:
    """The first `limit` samples of the OpInfo for this dtype (op_db orders them from plain to exotic), and up to
    the largest index in `extra` (the caller picks those by index)."""
    generator = info.sample_inputs("cpu", dtype, requires_grad=requires_grad)
    if limit is None:
        return list(generator)
    return list(itertools.islice(generator, max(limit, max(extra, default=-1) + 1)))


def compare_outputs(actual, expected, name: str, rtol: float = RTOL, values: bool = True) -> None:
    if isinstance(expected, torch.Tensor):
        if values:
            assert_same(actual, expected, rtol, ATOL, name=name)
        else:  # shape and dtype only
            assert_same(actual.zeros_like(), torch.zeros_like(expected), name=name)
    elif isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)), f"{name}: expected a sequence, got {type(actual).__name__}"
        assert len(actual) == len(expected), f"{name}: {len(actual)} results, torch has {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            compare_outputs(a, e, f"{name}[{i}]", rtol, values)
    else:  # a Python number or bool (item, allclose, equal...)
        assert type(actual) is type(expected) or isinstance(actual, (int, float, bool)), (
            f"{name}: {type(actual).__name__} != {type(expected).__name__}"
        )
        np.testing.assert_allclose(float(actual), float(expected), rtol, ATOL, err_msg=name)


def check_sample(info, fn, sample, with_grad: bool, name: str, rtol: float | None = None, values: bool = True) -> None:
    """One sample forward (and backward when with_grad) on both sides, compared (values=False: shapes and dtypes
    only, for random and uninitialized results)."""
    rtol = RTOL if rtol is None else rtol
    args_torch = (sample.input, *sample.args)
    args = to_lazygrad(args_torch)
    kwargs = to_lazygrad(sample.kwargs)
    expected = info(*args_torch, **sample.kwargs)
    actual = fn(*args, **kwargs)
    through = COMPARED_THROUGH.get(op_id(info))
    if through is not None:
        expected = through(args_torch[0], expected, *args_torch[1:], **sample.kwargs)
        actual = through(args[0], actual, *args[1:], **kwargs)
    compare_outputs(actual, expected, name, rtol, values)
    if not with_grad or not values:
        return
    outputs_torch = [t for t in leaves(expected) if t.requires_grad]
    if not outputs_torch:
        return
    outputs = [a for a, e in zip(leaves(actual), leaves(expected)) if e.requires_grad]
    loss_torch, loss = 0, 0
    for i, (a, e) in enumerate(zip(outputs, outputs_torch)):
        projection = np.random.default_rng(i).uniform(-1, 1, size=tuple(e.shape)).astype(np.float32)
        loss_torch = loss_torch + (e * torch.tensor(projection)).sum()
        loss = loss + (a * lazygrad.Tensor(projection)).sum()
    inputs_torch = [t for t in leaves(args_torch) if t.requires_grad]
    if not inputs_torch:  # a creation function asked for a result that requires grad: no input to compare
        return
    inputs = [t for t in leaves(args) if t.requires_grad]
    grads_torch = torch.autograd.grad(loss_torch, inputs_torch, allow_unused=True)
    assert loss.requires_grad, f"{name}: the output does not require grad, torch's does"
    loss.backward()
    for i, (t, g) in enumerate(zip(inputs, grads_torch)):
        if g is None or (t.grad is None and not g.any()):  # no gradient and an all-zero one are the same
            assert t.grad is None or not np.any(t.grad.numpy()), f"{name}: grad of input {i}: torch gives none"
            continue
        assert t.grad is not None, f"{name}: grad of input {i}: lazygrad gives none"
        assert_same(t.grad, g, max(GRAD_RTOL, rtol), GRAD_ATOL, name=f"{name}: grad of input {i}")

"""Mistakes are caught while the graph is built, with PyTorch's exception types and messages that name the
shapes and dtypes involved; nothing runs, and the session keeps working afterwards."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import rand

import lazygrad
from lazygrad import Tensor


def raises_like_torch(fn, *arrays, match=None):
    """fn raises the same exception type on lazygrad as on torch (and names `match`), running no kernel."""
    torch_inputs = [torch.tensor(a) for a in arrays]
    inputs = [Tensor(a) for a in arrays]
    with pytest.raises(Exception) as torch_error:
        fn(*torch_inputs)
    with lazygrad.profile() as p:
        with pytest.raises(torch_error.type, match=match) as error:
            fn(*inputs)
    assert p.kernels == 0, "the error came after running kernels"
    return error.value


def test_broadcasting_mismatch_is_a_runtime_error_naming_the_shapes():
    error = raises_like_torch(lambda a, b: a + b, rand(2, 3), rand(4))
    assert "(2, 3)" in str(error) and "(4,)" in str(error)


def test_broadcasting_mismatch_in_comparison_and_where():
    raises_like_torch(lambda a, b: a < b, rand(2, 3), rand(2))
    raises_like_torch(
        lambda c, a, b: (lazygrad if isinstance(a, Tensor) else torch).where(c, a, b),
        rand(3, dtype=np.bool_),
        rand(3),
        rand(2),
    )


def test_matmul_inner_dimension_mismatch_names_both_shapes():
    error = raises_like_torch(lambda a, b: a @ b, rand(2, 3), rand(4, 2))
    assert "2x3" in str(error) and "4x2" in str(error)


def test_batched_matmul_inner_dimension_mismatch():
    raises_like_torch(lambda a, b: a @ b, rand(5, 2, 3), rand(5, 4, 2))


def test_matmul_of_a_zero_dim_tensor():
    raises_like_torch(lambda a, b: a @ b, rand(2, 3), np.float32(1.0))


def test_invalid_reshape_names_the_shape_and_size():
    error = raises_like_torch(lambda a: a.reshape(4, 2), rand(2, 3))
    assert "[4, 2]" in str(error) and "6" in str(error)


def test_reshape_with_two_inferred_dims():
    raises_like_torch(lambda a: a.reshape(-1, -1), rand(2, 3), match="one dimension")


def test_expand_to_an_incompatible_size():
    raises_like_torch(lambda a: a.expand(3, 3), rand(2, 3))


@pytest.mark.parametrize(
    "op",
    [
        lambda a: a.sum(2),
        lambda a: a.mean(-3),
        lambda a: a.max(2),
        lambda a: a.softmax(2),
        lambda a: a.transpose(0, 2),
        lambda a: a.unsqueeze(3),
        lambda a: a.squeeze(2),
        lambda a: a.flip(2),
        lambda a: a.argmax(5),
        lambda a: a.size(2),
        lambda a: a.flatten(3),
    ],
    ids=["sum", "mean", "max", "softmax", "transpose", "unsqueeze", "squeeze", "flip", "argmax", "size", "flatten"],
)
def test_out_of_range_dim_is_an_index_error_naming_the_range(op):
    error = raises_like_torch(op, rand(2, 3))
    assert "[-2, 1]" in str(error) or "[-3, 2]" in str(error)


@pytest.mark.parametrize("index", [2, -3, (0, 3), (slice(None), 5)], ids=str)
def test_out_of_range_index_is_an_index_error(index):
    error = raises_like_torch(lambda a: a[index], rand(2, 3))
    assert "out of bounds" in str(error)


def test_too_many_indices():
    raises_like_torch(lambda a: a[0, 0, 0], rand(2, 3), match="too many indices")


@pytest.mark.parametrize(
    "op", [lambda a: a & a, lambda a: a | 1, lambda a: a ^ a, lambda a: a << 1], ids=["and", "or", "xor", "shift"]
)
def test_bitwise_op_on_floats_is_refused_naming_the_dtype(op):
    error = raises_like_torch(op, rand(2, 3))
    assert isinstance(error, RuntimeError)
    assert "float" in str(error).lower()


def test_bitwise_not_on_floats_is_a_type_error():
    raises_like_torch(lambda a: ~a, rand(2, 3))


def test_bool_subtraction_and_negation():
    raises_like_torch(lambda a, b: a - b, rand(3, dtype=np.bool_), rand(3, dtype=np.bool_), match="Subtraction")
    raises_like_torch(lambda a: -a, rand(3, dtype=np.bool_), match="Negation")


def test_cat_and_stack_of_mismatched_shapes():
    cat = lambda a, b: (lazygrad if isinstance(a, Tensor) else torch).cat([a, b])  # noqa: E731
    stack = lambda a, b: (lazygrad if isinstance(a, Tensor) else torch).stack([a, b])  # noqa: E731
    raises_like_torch(cat, rand(2, 3), rand(2, 4))
    raises_like_torch(stack, rand(2, 3), rand(2, 4))


def test_conv2d_channel_mismatch_names_the_shapes():
    conv = lambda x, w: x.conv2d(w) if isinstance(x, Tensor) else F.conv2d(x, w)  # noqa: E731
    error = raises_like_torch(conv, rand(1, 3, 5, 5), rand(2, 4, 3, 3))
    assert re.search(r"4 channels", str(error)) and "3 channels" in str(error)


def test_permute_with_repeated_dims():
    raises_like_torch(lambda a: a.permute(0, 0), rand(2, 3))


def test_backward_on_a_non_scalar_without_gradient():
    a = Tensor(rand(2, 3), requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        a.exp().backward()


def test_backward_on_a_tensor_that_does_not_require_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(rand(2, 3)).sum().backward()


def test_backward_with_a_gradient_of_the_wrong_shape():
    a = Tensor(rand(2, 3), requires_grad=True)
    with pytest.raises(RuntimeError):
        (a * 2).backward(Tensor(rand(3, 2)))


@pytest.mark.parametrize(
    "op",
    [
        lambda a: a.add_(1),
        lambda a: a.mul_(2),
        lambda a: a.zero_(),
        lambda a: a.copy_(torch.zeros(2) if isinstance(a, torch.Tensor) else lazygrad.zeros(2)),
    ],
    ids=["add_", "mul_", "zero_", "copy_"],
)
def test_inplace_on_a_leaf_requiring_grad(op):
    a, ta = Tensor(rand(2), requires_grad=True), torch.tensor(rand(2), requires_grad=True)
    with pytest.raises(RuntimeError):
        op(ta)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        op(a)


def test_inplace_on_a_leaf_is_allowed_under_no_grad():
    a = Tensor(rand(2), requires_grad=True)
    with lazygrad.no_grad():
        a.add_(1)
    np.testing.assert_allclose(a.numpy(), rand(2) + 1, rtol=1e-6)
    assert a.requires_grad


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(RuntimeError, match="floating point"):
        Tensor(np.array([1, 2]), requires_grad=True)


def test_item_of_a_tensor_with_many_elements():
    raises_like_torch(lambda a: a.item(), rand(3), match="3 elements")


def test_mean_of_an_integer_tensor_names_the_dtype():
    error = raises_like_torch(lambda a: a.mean(), np.array([1, 2, 3]))
    assert "int64" in str(error) or "Long" in str(error)


def test_the_session_keeps_working_after_errors():
    a = Tensor(rand(2, 3))
    for bad in (lambda: a + Tensor(rand(4)), lambda: a @ a, lambda: a.reshape(5), lambda: a.sum(3), lambda: a[9]):
        with pytest.raises((RuntimeError, IndexError)):
            bad()
    out = (a @ a.T).relu().sum(1)
    np.testing.assert_allclose(out.numpy(), np.maximum(rand(2, 3) @ rand(2, 3).T, 0).sum(1), rtol=1e-5)
    w = Tensor(rand(3), requires_grad=True)
    with pytest.raises(RuntimeError):
        (a * w).backward()
    (a * w).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), rand(2, 3).sum(0), rtol=1e-5)


def test_errors_inside_no_grad_leave_grad_mode_enabled():
    with pytest.raises(RuntimeError):
        with lazygrad.no_grad():
            Tensor(rand(2)) + Tensor(rand(3))
    assert lazygrad.is_grad_enabled()

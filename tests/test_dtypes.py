"""Type promotion against torch.result_type: tensor-tensor pairs, tensor-scalar combinations, zero-dim tensors
(which promote like scalars unless they are of a higher category), and the dtype of each kind of op's result."""

import itertools

import numpy as np
import pytest
import torch
from helpers import LAZYGRAD_TO_TORCH, TORCH_TO_LAZYGRAD, rand

import lazygrad
from lazygrad import Tensor

DTYPES = [
    lazygrad.bool_,
    lazygrad.uint8,
    lazygrad.int8,
    lazygrad.int16,
    lazygrad.int32,
    lazygrad.int64,
    lazygrad.float16,
    lazygrad.float32,
    lazygrad.float64,
]
SCALARS = [True, 3, -2, 2.5]
# most tests here only read the dtype of a graph that is never run: they do not depend on the backend
only_dtypes = pytest.mark.backend_independent


def ones(shape, dtype) -> tuple:
    return lazygrad.ones(shape, dtype=dtype), torch.ones(shape, dtype=LAZYGRAD_TO_TORCH[dtype])


def name(d) -> str:
    return d.name


@only_dtypes
@pytest.mark.parametrize("a, b", list(itertools.product(DTYPES, DTYPES)), ids=lambda d: d.name)
def test_tensor_tensor_promotion(a, b):
    (x, tx), (y, ty) = ones((2,), a), ones((2,), b)
    assert LAZYGRAD_TO_TORCH[(x + y).dtype] == torch.result_type(tx, ty)


@only_dtypes
@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
def test_tensor_scalar_promotion(dtype, scalar):
    x, tx = ones((2,), dtype)
    expected = torch.result_type(tx, scalar)
    assert LAZYGRAD_TO_TORCH[(x * scalar).dtype] == expected
    assert LAZYGRAD_TO_TORCH[(scalar * x).dtype] == expected


@only_dtypes
@pytest.mark.parametrize("a, b", list(itertools.product(DTYPES, DTYPES)), ids=lambda d: d.name)
def test_zero_dim_tensor_promotes_like_a_scalar(a, b):
    (x, tx), (y, ty) = ones((2,), a), ones((), b)
    expected = torch.result_type(tx, ty)
    assert LAZYGRAD_TO_TORCH[(x * y).dtype] == expected
    assert LAZYGRAD_TO_TORCH[(y * x).dtype] == expected


@only_dtypes
@pytest.mark.parametrize("a, b", list(itertools.product(DTYPES, DTYPES)), ids=lambda d: d.name)
def test_two_zero_dim_tensors_promote_as_tensors(a, b):
    (x, tx), (y, ty) = ones((), a), ones((), b)
    assert LAZYGRAD_TO_TORCH[(x * y).dtype] == torch.result_type(tx, ty)


@only_dtypes
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
def test_true_division_gives_a_float(dtype):
    x, tx = ones((2,), dtype)
    assert LAZYGRAD_TO_TORCH[(x / x).dtype] == (tx / tx).dtype
    assert LAZYGRAD_TO_TORCH[(x / 2).dtype] == (tx / 2).dtype


@only_dtypes
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
def test_comparisons_give_bool(dtype):
    x, _ = ones((2,), dtype)
    for result in (x < x, x == 1, x != 2.5, x >= x):
        assert result.dtype == lazygrad.bool_


@only_dtypes
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
def test_reductions_result_dtype(dtype):
    x, tx = ones((2, 3), dtype)
    assert LAZYGRAD_TO_TORCH[x.sum().dtype] == tx.sum().dtype
    assert LAZYGRAD_TO_TORCH[x.prod(1).dtype] == tx.prod(1).dtype
    assert LAZYGRAD_TO_TORCH[x.amax(1).dtype] == tx.amax(1).dtype
    assert x.argmax(1).dtype == lazygrad.int64


@only_dtypes
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
def test_unary_float_functions_promote_integers_to_the_default_float(dtype):
    x, tx = ones((2,), dtype)
    for fn in (lambda t: t.exp(), lambda t: t.sqrt(), lambda t: t.sigmoid(), lambda t: t.sin()):
        assert LAZYGRAD_TO_TORCH[fn(x).dtype] == fn(tx).dtype


@only_dtypes
@pytest.mark.parametrize("dtype", DTYPES, ids=name)
def test_abs_neg_keep_the_dtype(dtype):
    x, tx = ones((2,), dtype)
    if dtype == lazygrad.bool_:
        pytest.skip("torch has no abs or neg for bool")
    assert LAZYGRAD_TO_TORCH[x.abs().dtype] == tx.abs().dtype
    assert LAZYGRAD_TO_TORCH[(-x).dtype] == (-tx).dtype


@only_dtypes
@pytest.mark.parametrize(
    "a, b",
    [
        (lazygrad.int32, lazygrad.float16),
        (lazygrad.bool_, lazygrad.int64),
        (lazygrad.uint8, lazygrad.int8),
        (lazygrad.float16, lazygrad.float32),
    ],
    ids=str,
)
def test_where_promotes_its_branches(a, b):
    cond = Tensor(np.array([True, False]))
    (x, tx), (y, ty) = ones((2,), a), ones((2,), b)
    assert LAZYGRAD_TO_TORCH[cond.where(x, y).dtype] == torch.where(torch.tensor([True, False]), tx, ty).dtype


@only_dtypes
@pytest.mark.parametrize(
    "a, b",
    [(lazygrad.int32, lazygrad.float16), (lazygrad.uint8, lazygrad.int8), (lazygrad.bool_, lazygrad.int32)],
    ids=str,
)
def test_cat_promotes(a, b):
    (x, tx), (y, ty) = ones((2,), a), ones((3,), b)
    assert LAZYGRAD_TO_TORCH[lazygrad.cat([x, y]).dtype] == torch.cat([tx, ty]).dtype


def test_promoted_values_are_exact():
    small = np.array([-3, 100, 7], dtype=np.int8)
    unsigned = np.array([200, 5, 255], dtype=np.uint8)
    out = Tensor(small) + Tensor(unsigned)
    expected = torch.tensor(small) + torch.tensor(unsigned)
    assert LAZYGRAD_TO_TORCH[out.dtype] == expected.dtype
    np.testing.assert_array_equal(out.numpy(), expected.numpy())


def test_int_tensor_plus_float_scalar_gives_float32_values():
    out = Tensor(rand(3, dtype=np.int64, low=-5, high=5)) + 0.5
    assert out.dtype == lazygrad.float32
    np.testing.assert_array_equal(out.numpy(), rand(3, dtype=np.int64, low=-5, high=5) + np.float32(0.5))


@only_dtypes
def test_dtype_mapping_is_complete():
    assert set(TORCH_TO_LAZYGRAD.values()) == set(DTYPES)


@only_dtypes
@pytest.mark.parametrize("spelling", ["float32", "torch.float32", "float", np.float32, float])
def test_dtype_spellings_are_accepted(spelling):
    assert lazygrad.zeros(1, dtype=spelling).dtype == lazygrad.float32


@only_dtypes
def test_torch_dtype_is_accepted():
    assert lazygrad.zeros(1, dtype=torch.int32).dtype == lazygrad.int32
    assert Tensor(rand(2)).to(torch.float16).dtype == lazygrad.float16

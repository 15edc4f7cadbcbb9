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
    assert LAZYGRAD_TO_TORCH[lazygrad.where(cond, x, y).dtype] == torch.where(torch.tensor([True, False]), tx, ty).dtype


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


# ---- float64 kept as torch keeps it; the default dtype ----

FLOAT64_SOURCES = {
    "float64_array": lambda: np.linspace(-1.0, 1.0, 6).reshape(2, 3),
    "float32_array": lambda: np.linspace(-1.0, 1.0, 6, dtype=np.float32),
    "float64_scalar": lambda: np.float64(2.5),
    "python_floats": lambda: [[0.5, 1.5], [2.5, -1.0]],
    "python_float": lambda: 1.25,
}
CONSTRUCTORS = {  # lazygrad's constructor, torch's
    "tensor": (lazygrad.tensor, torch.tensor),
    "as_tensor": (lazygrad.as_tensor, torch.as_tensor),
    "Tensor": (lazygrad.Tensor, torch.Tensor),  # the legacy constructor: floats become the default dtype
}


@only_dtypes
@pytest.mark.parametrize("source", FLOAT64_SOURCES)
@pytest.mark.parametrize("constructor", CONSTRUCTORS)
def test_constructors_keep_float64_as_torch(constructor, source):
    ours, theirs = CONSTRUCTORS[constructor]
    data = FLOAT64_SOURCES[source]()
    if constructor == "Tensor" and not isinstance(data, (np.ndarray, list)):
        pytest.skip("torch.Tensor(number) makes an uninitialized tensor of that size, not a 0-d tensor")
    assert LAZYGRAD_TO_TORCH[ours(data).dtype] == theirs(data).dtype


@only_dtypes
@pytest.mark.parametrize("np_dtype", [np.float64, np.float32, np.float16, np.int64, np.int32, np.uint8, np.bool_])
def test_from_numpy_keeps_the_arrays_dtype(np_dtype):
    array = rand(2, 2, dtype=np_dtype, low=0, high=5)
    assert LAZYGRAD_TO_TORCH[lazygrad.from_numpy(array).dtype] == torch.from_numpy(array).dtype


def test_float64_is_computed_in_double_precision_forward_and_backward():
    values = np.linspace(0.1, 2.0, 7)
    ours = lazygrad.tensor(values, requires_grad=True)
    theirs = torch.tensor(values, requires_grad=True)
    ours_out, theirs_out = (ours.exp() * ours.sin()).sum(), (theirs.exp() * theirs.sin()).sum()
    ours_out.backward(), theirs_out.backward()
    assert ours_out.dtype == lazygrad.float64
    np.testing.assert_allclose(ours_out.item(), theirs_out.item(), rtol=1e-13)
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-13)


def test_as_tensor_of_a_tensor_is_that_tensor_unless_converted():
    t = lazygrad.ones(3)
    assert lazygrad.as_tensor(t) is t
    assert lazygrad.as_tensor(t, dtype=lazygrad.float64).dtype == lazygrad.float64


@pytest.fixture
def default_float64():
    """torch's and lazygrad's default dtype set to float64 for one test, and restored."""
    torch.set_default_dtype(torch.float64)
    lazygrad.set_default_dtype(lazygrad.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(torch.float32)
        lazygrad.set_default_dtype(lazygrad.float32)


DEFAULT_DTYPE_MAKERS = {
    "tensor_of_floats": lambda m: m.tensor([1.5, 2.0]),
    "Tensor_of_float64": lambda m: m.Tensor(np.ones(2)),
    "zeros": lambda m: m.zeros(2),
    "rand": lambda m: m.rand(2),
    "arange_float": lambda m: m.arange(0.5, 2.0),
    "int_plus_float": lambda m: m.ones(2, dtype=m.int64) + 0.5,
    "int_mean_of_float": lambda m: m.tensor([1, 2]).float() * 1.0,
}


@only_dtypes
@pytest.mark.parametrize("maker", DEFAULT_DTYPE_MAKERS)
def test_set_default_dtype_float64_as_torch(default_float64, maker):
    assert lazygrad.get_default_dtype() == lazygrad.float64 and torch.get_default_dtype() == torch.float64
    make = DEFAULT_DTYPE_MAKERS[maker]
    assert LAZYGRAD_TO_TORCH[make(lazygrad).dtype] == make(torch).dtype


@only_dtypes
def test_set_default_dtype_refuses_integers_as_torch():
    with pytest.raises(TypeError, match="floating"):
        torch.set_default_dtype(torch.int64)
    with pytest.raises(TypeError, match="floating"):
        lazygrad.set_default_dtype(lazygrad.int64)
    assert lazygrad.get_default_dtype() == lazygrad.float32


@pytest.mark.parametrize("float64_operand", ["dimensioned", "zero_dim"])
def test_mixed_float32_float64_promotes_as_torch(float64_operand):
    shape = (3,) if float64_operand == "dimensioned" else ()
    wide = np.full(shape, 1 / 3)
    narrow = np.linspace(0.0, 1.0, 3, dtype=np.float32)
    ours = lazygrad.tensor(narrow) + lazygrad.tensor(wide)
    theirs = torch.tensor(narrow) + torch.tensor(wide)
    assert LAZYGRAD_TO_TORCH[ours.dtype] == theirs.dtype
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize("optimizer", ["SGD", "Adam"])
def test_optimizers_update_float64_parameters_in_double_precision_as_torch(optimizer):
    torch.manual_seed(0)
    reference = torch.nn.Linear(3, 2).double()
    ours = lazygrad.nn.Linear(3, 2).double()
    ours.load_state_dict({k: lazygrad.tensor(v.detach().numpy()) for k, v in reference.state_dict().items()})
    kwargs = {"lr": 0.1, "momentum": 0.9} if optimizer == "SGD" else {"lr": 0.01}
    ours_opt = getattr(lazygrad.optim, optimizer)(ours.parameters(), **kwargs)
    reference_opt = getattr(torch.optim, optimizer)(reference.parameters(), **kwargs)
    x = np.linspace(-1.0, 1.0, 12).reshape(4, 3)
    for _ in range(3):
        for model, opt, data in ((ours, ours_opt, lazygrad.tensor(x)), (reference, reference_opt, torch.tensor(x))):
            opt.zero_grad()
            (model(data) ** 2).mean().backward()
            opt.step()
    assert ours.weight.dtype == lazygrad.float64
    # far inside float32's 1e-7; Adam's bias correction 1 - beta**step is a series good to ~1e-11 (optim/__init__.py)
    np.testing.assert_allclose(ours.weight.numpy(), reference.weight.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_a_float64_checkpoint_loads_as_float64(tmp_path):
    values = torch.linspace(0, 1, 5, dtype=torch.float64) / 3
    torch.save({"w": values}, tmp_path / "w.pt")
    loaded = lazygrad.load(tmp_path / "w.pt")["w"]
    assert loaded.dtype == lazygrad.float64
    np.testing.assert_array_equal(loaded.numpy(), values.numpy())


def test_float64_on_an_opencl_device_without_doubles_names_the_ops(backend, monkeypatch):
    if backend != "opencl":
        pytest.skip("an OpenCL device's fp64 support is what is checked")
    from lazygrad import backends

    monkeypatch.setattr(backends.get("opencl"), "supports_float64", False)
    x = lazygrad.tensor(np.linspace(0.0, 1.0, 7))  # float64, kept from numpy
    with pytest.raises(RuntimeError, match=r"computes .*exp2.* in float64, which .* does not support"):
        (x.exp2() * 3.25 + 0.5).sum().item()

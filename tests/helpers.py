"""Shared comparison helpers: run the same code on lazygrad and on PyTorch (the specification) and compare.

`check_forward(fn, *arrays)` builds a lazygrad tensor and a torch tensor from each numpy array, applies `fn` to
each set, and compares shape, dtype and values. `check_grad` does the same and also compares the gradient of
every float input, with a random projection of the output as the loss so every output element matters.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import lazygrad

RTOL, ATOL = 1e-5, 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-3, 1e-4

LAZYGRAD_TO_TORCH = {
    lazygrad.bool_: torch.bool,
    lazygrad.uint8: torch.uint8,
    lazygrad.int8: torch.int8,
    lazygrad.int16: torch.int16,
    lazygrad.int32: torch.int32,
    lazygrad.int64: torch.int64,
    lazygrad.float16: torch.float16,
    lazygrad.float32: torch.float32,
    lazygrad.float64: torch.float64,
}
TORCH_TO_LAZYGRAD = {v: k for k, v in LAZYGRAD_TO_TORCH.items()}


def rand(*shape, dtype=np.float32, low=-2.0, high=2.0, seed: int = 0) -> np.ndarray:
    """Random values of a numpy dtype: uniform floats in [low, high), integers in [low, high), bools half true."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(int(low), int(high), size=shape).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)


def positive(*shape, low=0.1, high=3.0, seed: int = 0) -> np.ndarray:
    return rand(*shape, low=low, high=high, seed=seed)


def to_numpy(value) -> np.ndarray:
    if isinstance(value, lazygrad.Tensor):
        return value.numpy()
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()
    return np.asarray(value)


def assert_same(actual, expected, rtol: float = RTOL, atol: float = ATOL, check_dtype: bool = True, name: str = ""):
    """A lazygrad result equals a torch (or numpy) result: shape, dtype (torch's) and values, NaN where NaN."""
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)), f"{name}: expected a sequence, got {type(actual).__name__}"
        assert len(actual) == len(expected), f"{name}: {len(actual)} results, expected {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, rtol, atol, check_dtype, f"{name}[{i}]")
        return
    assert isinstance(actual, lazygrad.Tensor), f"{name}: expected a lazygrad.Tensor, got {type(actual).__name__}"
    if isinstance(expected, torch.Tensor):
        assert tuple(actual.shape) == tuple(expected.shape), f"{name}: shape {actual.shape} != {tuple(expected.shape)}"
        if check_dtype:
            assert LAZYGRAD_TO_TORCH[actual.dtype] == expected.dtype, (
                f"{name}: dtype {actual.dtype} != {expected.dtype}"
            )
    got, want = to_numpy(actual), to_numpy(expected)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    if want.dtype == np.bool_ or want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:
        np.testing.assert_allclose(
            got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True, err_msg=name
        )


def tensors(arrays, requires_grad: bool = False) -> tuple[list, list]:
    """The same inputs as lazygrad tensors and as torch tensors (float ones requiring grad if asked)."""
    lg, th = [], []
    for a in arrays:
        a = np.asarray(a)
        wants_grad = requires_grad and a.dtype.kind == "f"
        lg.append(lazygrad.Tensor(a.copy(), requires_grad=wants_grad))
        th.append(torch.tensor(a.copy(), requires_grad=wants_grad))
    return lg, th


def check_forward(fn, *arrays, rtol: float = RTOL, atol: float = ATOL, check_dtype: bool = True, torch_fn=None):
    """fn on lazygrad tensors equals fn (or torch_fn) on torch tensors made from the same arrays."""
    lg, th = tensors(arrays)
    expected = (torch_fn or fn)(*th)
    actual = fn(*lg)
    assert_same(actual, expected, rtol, atol, check_dtype)
    return actual


def check_grad(fn, *arrays, rtol: float = GRAD_RTOL, atol: float = GRAD_ATOL, torch_fn=None, seed: int = 1):
    """Outputs and the gradients of every float input agree with torch (loss = sum(output * fixed random))."""
    lg, th = tensors(arrays, requires_grad=True)
    expected = (torch_fn or fn)(*th)
    actual = fn(*lg)
    assert_same(actual, expected, rtol, atol)
    projection = rand(*expected.shape, seed=seed)
    (expected * torch.tensor(projection)).sum().backward()
    (actual * lazygrad.Tensor(projection)).sum().backward()
    for i, (a, e) in enumerate(zip(lg, th)):
        if not e.requires_grad:
            continue
        if e.grad is None:
            assert a.grad is None or not np.any(a.grad.numpy()), f"input {i}: torch gives no gradient"
            continue
        assert a.grad is not None, f"input {i}: no gradient"
        assert_same(a.grad, e.grad, rtol, atol, name=f"grad of input {i}")


class ProgramBuilder:
    """A linear IR program written by hand (tests of renderers and the verifier): uops numbered in order."""

    def __init__(self):
        self.uops: list = []

    def __call__(self, op, dtype, srcs=(), arg=None, vec: int = 1):
        from lazygrad.codegen.ir import UOp

        u = UOp(op, dtype, tuple(srcs), arg, len(self.uops), vec)
        self.uops.append(u)
        return u


def opencl_backend_or_skip():
    """The opencl backend for tests of GPU-shaped kernels: skipped with the reason where OpenCL is missing, a
    failure under CI (CI installs PoCL, so a missing backend there is a broken set-up, not a skip)."""
    from lazygrad import backends

    try:
        return backends.get("opencl")
    except backends.BackendUnavailable as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"opencl unavailable under CI: {e}")
        pytest.skip(f"opencl unavailable: {str(e).splitlines()[0]}")

"""When the toolchain or the device fails, the user gets an error that says what failed and what to look at.

- A kernel the backend's compiler rejects raises an error that names the kernel and points to a file
  holding its source.
- A failed device allocation frees the buffer pool and tries once more; if that fails too, the user
  gets a MemoryError that says how much was asked for, on which device. Other allocation errors are
  reported as such, never disguised as out-of-memory.
- After either failure lazygrad keeps working.
"""

from __future__ import annotations

import importlib
import os
import re
import tempfile

import numpy as np
import pytest

import lazygrad
from lazygrad import backends, runtime
from lazygrad import dtype as dt
from lazygrad.codegen.ir import Program, UOp
from lazygrad.ops import IrOp, Op


def broken_program(name: str) -> Program:
    """out[i] = bitcast<float32>(in[i]) with in int16: a size mismatch that no compiler accepts."""
    out = UOp(IrOp.PARAM, dt.float32, (), (0, True), 0)
    inp = UOp(IrOp.PARAM, dt.int16, (), (1, False), 1)
    index = UOp(IrOp.RANGE, dt.int32, (), ("g0", 4, "global"), 2)
    load = UOp(IrOp.LOAD, dt.int16, (inp, index), None, 3)
    cast = UOp(Op.BITCAST, dt.float32, (load,), dt.int16, 4)
    store = UOp(IrOp.STORE, None, (out, index, cast), None, 5)
    end = UOp(IrOp.ENDRANGE, None, (index,), None, 6)
    return Program(name, [out, inp, index, load, cast, store, end], (dt.float32, dt.int16), (4,))


def compile_error(backend: str, name: str) -> str:
    with pytest.raises(RuntimeError) as info:
        backends.get(backend).compile(broken_program(name))
    return str(info.value)


# --- compile failures -------------------------------------------------------------------------------


def test_a_kernel_that_fails_to_compile_is_named_in_the_error(backend):
    assert "e_4_fails_to_compile" in compile_error(backend, "e_4_fails_to_compile")


def test_a_kernel_that_fails_to_compile_has_its_source_saved_to_a_file_named_in_the_error(backend):
    message = compile_error(backend, "e_4_source_in_a_file")

    paths = re.findall(r"(/\S*lazygrad-failed-e_4_source_in_a_file\.\w+)", message)
    assert paths, f"no file named in: {message}"
    assert os.path.dirname(paths[0]) == tempfile.gettempdir(), "the file belongs in the temporary directory"
    with open(paths[0]) as f:
        source = f.read()
    # the kernel's own source: LLVM IR with its bitcast, or OpenCL C with its as_float
    assert "e_4_source_in_a_file" in source and ("bitcast" in source or "as_float" in source)


def test_a_compile_error_quotes_the_compiler(backend):
    message = compile_error(backend, "e_4_quoted")
    assert re.search(r"error|invalid", message, re.IGNORECASE), message


def test_a_compile_failure_during_realize_reaches_the_user_and_lazygrad_recovers(backend, monkeypatch):
    module = importlib.import_module(f"lazygrad.backends.{backend}")
    render = getattr(module, f"render_{backend}")
    monkeypatch.setattr(
        module, f"render_{backend}", lambda program, **options: render(program, **options) + "\nnot a valid line\n"
    )
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    x = lazygrad.tensor(np.arange(6, dtype=np.float32))
    y = x * 7 + 0.25

    with pytest.raises(RuntimeError, match=r"kernel e_\w+"):
        y.numpy()

    monkeypatch.setattr(module, f"render_{backend}", render)
    np.testing.assert_allclose(y.numpy(), np.arange(6) * 7 + 0.25)


# --- failed allocations -----------------------------------------------------------------------------


class FailingAllocator:
    """Stands in for a backend's allocate: raises `error` for the first `times` calls, then allocates."""

    def __init__(self, allocate, error: Exception, times: int | None):
        self.allocate, self.error, self.times, self.calls = allocate, error, times, 0

    def __call__(self, nbytes: int):
        self.calls += 1
        if self.times is None or self.calls <= self.times:
            raise self.error
        return self.allocate(nbytes)


@pytest.fixture
def fail_allocations(backend, monkeypatch):
    """fail_allocations(error, times=None): the backend's allocations raise `error` (`times` times, or always)."""
    device = backends.get(backend)
    runtime.POOL.release_all()  # no pooled buffer may stand in for the allocations under test

    def install(error: Exception, times: int | None = None) -> FailingAllocator:
        fake = FailingAllocator(device.allocate, error, times)
        monkeypatch.setattr(device, "allocate", fake)
        return fake

    return install


def fill_the_pool(backend: str) -> int:
    """Put a freed buffer in the pool; return the bytes it holds now."""
    buffer = runtime.Buffer(backend, 1000, dt.float32)
    del buffer
    assert runtime.POOL.bytes_held >= 4000
    return runtime.POOL.bytes_held


def test_a_failed_allocation_frees_the_pool_and_succeeds_on_the_retry(backend, fail_allocations):
    fill_the_pool(backend)
    allocator = fail_allocations(MemoryError("device out of memory"), times=1)

    buffer = runtime.Buffer(backend, 1234, dt.float32)

    assert allocator.calls == 2
    assert runtime.POOL.bytes_held == 0
    assert buffer.nbytes == 1234 * 4


def test_a_device_out_of_memory_error_is_recognised_like_python_s(backend, fail_allocations):
    fill_the_pool(backend)
    allocator = fail_allocations(RuntimeError("clCreateBuffer failed: MEM_OBJECT_ALLOCATION_FAILURE"), times=1)

    runtime.Buffer(backend, 1235, dt.float32)

    assert allocator.calls == 2 and runtime.POOL.bytes_held == 0


def test_running_out_of_memory_for_good_is_a_memory_error_naming_device_and_size(backend, fail_allocations):
    x = lazygrad.tensor(np.ones(5000, dtype=np.float32)).realize()
    allocator = fail_allocations(MemoryError())

    with pytest.raises(MemoryError) as info:
        (x * 3).numpy()

    message = str(info.value)
    assert f"out of memory on {backend}" in message and "20000 bytes" in message, message
    assert "after freeing the buffer pool" in message
    assert allocator.calls == 2, "it should retry exactly once"


def test_an_allocation_error_that_is_not_about_memory_is_not_called_out_of_memory(backend, fail_allocations):
    held = fill_the_pool(backend)
    fail_allocations(RuntimeError("create_buffer failed: INVALID_BUFFER_SIZE"))

    size = next(n for n in range(1236, 2000) if (backend, 4 * n) not in runtime.POOL.free)  # not a pool hit
    with pytest.raises(RuntimeError) as info:
        runtime.Buffer(backend, size, dt.float32)

    assert not isinstance(info.value, MemoryError)
    message = str(info.value)
    assert f"{4 * size} bytes" in message and backend in message and "INVALID_BUFFER_SIZE" in message, message
    assert runtime.POOL.bytes_held == held, "the pool was emptied for nothing"


def test_lazygrad_computes_again_after_running_out_of_memory(backend, monkeypatch, fail_allocations):
    x = lazygrad.tensor(np.arange(7, dtype=np.float32)).realize()
    y = x * 2 - 1
    fail_allocations(MemoryError())
    with pytest.raises(MemoryError):
        y.numpy()

    monkeypatch.undo()

    np.testing.assert_allclose(y.numpy(), np.arange(7) * 2 - 1)


# --- a backend that is not there --------------------------------------------------------------------


@pytest.mark.backend_independent
def test_a_tensor_on_a_backend_that_does_not_exist_fails_naming_the_real_backends():
    x = lazygrad.tensor([1.0, 2.0], device="metal")

    with pytest.raises(backends.BackendUnavailable, match=r"unknown backend 'metal'.*llvm"):
        x.numpy()


@pytest.mark.backend_independent
@pytest.mark.parametrize("alias", ["gpu", "cuda"])
def test_tensor_to_accepts_the_device_aliases_lazygrad_knows(alias):
    assert lazygrad.tensor([1.0], device="llvm").to(alias).device == "opencl"

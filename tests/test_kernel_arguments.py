"""What a kernel's rendered signature promises its compiler about its arguments.

An assign's kernel can be launched with one buffer as both its output (the target) and an input (it reads the
target's old value): those arguments must not be declared `restrict` (OpenCL C) or `noalias` (LLVM), which would
let the compiler assume that no store changes what the other argument reads.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import lazygrad
from lazygrad import Tensor, runtime


def compiled_sources() -> list:
    return [entry.kernel.source for entry in runtime._kernel_cache.values()]


def promises_no_alias(source: str, backend: str) -> list:
    """Per buffer argument, whether the signature says no other argument shares its memory."""
    if backend == "llvm":
        header = next(line for line in source.splitlines() if line.startswith("define void"))
        return ["noalias" in param for param in re.findall(r"ptr[^,]*%buf\d+", header)]
    header = next(line for line in source.splitlines() if line.startswith("__kernel void"))
    return ["restrict" in param for param in re.findall(r"__global[^,]*buf\d+", header)]


def test_an_assign_reading_its_target_does_not_declare_its_buffers_unaliased(backend, monkeypatch):
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    start = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = Tensor(start.copy()).realize()
    x.assign(x * 2 + 1).realize()
    np.testing.assert_array_equal(x.numpy(), start * 2 + 1)
    (source,) = [s for s in compiled_sources() if len(promises_no_alias(s, backend)) == 2]
    assert promises_no_alias(source, backend) == [False, False], source


def test_a_kernel_with_its_own_output_keeps_its_promise(backend, monkeypatch):
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    start = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = (Tensor(start) * 2 + 1).numpy()
    np.testing.assert_array_equal(y, start * 2 + 1)
    (source,) = compiled_sources()
    assert promises_no_alias(source, backend) == [True, True], source


def scheduled_kernels(*tensors) -> list:
    """The kernel items that realizing `tensors` would run, scheduled but neither allocated nor launched."""
    from lazygrad.schedule import ItemKind, Scheduler

    items = Scheduler([t.lazydata for t in tensors]).schedule()
    return [item for item in items if item.kind is ItemKind.KERNEL]


def test_a_buffer_past_32_bit_indexes_is_refused_before_anything_runs(backend):
    huge = 2**31 + 64  # one past the last index a 32-bit int reaches, in int8: 2 GiB that is never allocated
    (item,) = scheduled_kernels(Tensor.ones(huge, dtype=lazygrad.int8) + 1)
    with pytest.raises(RuntimeError, match=r"buffer 0 holds 2147483712 int8 elements .*32-bit"):
        runtime.get_kernel(item.ast, (lazygrad.int8,), backend, (huge,))


def test_a_loop_past_32_bit_counters_is_refused(backend):
    # a sum along a broadcast row: no buffer is big, but the reduce's loop runs past 2**31
    (item,) = scheduled_kernels(Tensor.ones(2, 1, dtype=lazygrad.float32).expand(2, 2**31 + 64).sum(axis=1))
    buffers = (*item.outputs, *item.inputs)
    dtypes, sizes = tuple(b.dtype for b in buffers), tuple(b.size for b in buffers)
    with pytest.raises(RuntimeError, match=r"loops of \(2, 2147483712\) iterations"):
        runtime.get_kernel(item.ast, dtypes, backend, sizes)

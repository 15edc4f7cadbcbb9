"""The LLVM backend's compile workers (backends/llvm.py CompilePool, backends/llvm_worker.py): processes that compile
a plan's new kernels side by side, since llvmlite's global lock keeps threads from compiling in parallel.

- A worker's object code is byte for byte the in-process compiler's, so the disk cache cannot tell them apart.
- A realization with many new kernels has them compiled by the workers, with the right values.
- Nothing is lost when a worker cannot answer: IR that LLVM refuses, a worker that died, a forked child; replies
  nobody asks for any more are not kept.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import lazygrad
from lazygrad import backends, runtime
from lazygrad.backends import llvm as llvm_backend

pytestmark = pytest.mark.backend_independent


def new_kernels(count: int):
    """`count` reductions no process compiled before (constants drawn now), and their values computed by numpy."""
    data = np.random.default_rng().standard_normal((8, 16)).astype(np.float32)
    x = lazygrad.Tensor(data, device="llvm")
    scales = np.random.default_rng().uniform(1.0, 2.0, count).astype(np.float32)
    outs = [(x * float(s) + 1.0).sum(i % 2) for i, s in enumerate(scales)]
    expected = [(data * s + np.float32(1.0)).sum(i % 2) for i, s in enumerate(scales)]
    return outs, expected


def compiled_sources(count: int) -> list:
    outs, _ = new_kernels(count)
    lazygrad.realize(*outs)
    return [e.kernel.source for e in list(runtime._kernel_cache.values())[-count:]]


@pytest.fixture
def pool(llvm):
    compiler = llvm.compiler
    pool = llvm_backend.CompilePool(compiler.cpu, compiler.features, 1)
    assert pool.usable(llvm_backend.COMPILE_POOL_MIN_BATCH)
    yield pool
    pool.close()


def test_workers_make_the_in_process_object_code(llvm, pool):
    sources = compiled_sources(3)
    for source in sources:
        pool.submit(source)
    for source in sources:
        assert pool.result(source) == llvm.compiler.object_code(source, "k")


def test_a_batch_of_new_kernels_is_compiled_by_the_workers(llvm, monkeypatch):
    monkeypatch.setattr(llvm._compile_pool, "size", max(llvm._compile_pool.size, 1))
    served = []
    result = llvm_backend.CompilePool.result
    monkeypatch.setattr(
        llvm_backend.CompilePool, "result", lambda self, source: served.append(result(self, source)) or served[-1]
    )
    outs, expected = new_kernels(llvm_backend.COMPILE_POOL_MIN_BATCH + 2)
    lazygrad.realize(*outs)
    for out, want in zip(outs, expected):
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    assert sum(obj is not None for obj in served) >= len(outs), "the new kernels were compiled one by one"


def test_ir_that_llvm_refuses_comes_back_to_be_compiled_here(llvm, pool):
    pool.submit("this is not LLVM IR")
    assert pool.result("this is not LLVM IR") is None  # compiled in-process, where CompileError names the kernel
    with pytest.raises(backends.CompileError):
        llvm.compiler.object_code("this is not LLVM IR", "k")
    source = compiled_sources(1)[0]
    pool.submit(source)
    assert pool.result(source) == llvm.compiler.object_code(source, "k")  # the worker lives on


def test_a_dead_worker_costs_a_warning_not_a_kernel(llvm, pool):
    (source,) = compiled_sources(1)
    worker = pool.workers[0]
    os.kill(worker.process.pid, signal.SIGSTOP)  # it cannot answer what it is given now
    pool.submit(source)
    os.kill(worker.process.pid, signal.SIGKILL)
    with pytest.warns(UserWarning, match="compile worker ended or stopped answering"):
        assert pool.result(source) is None
    assert not pool.usable(100)  # no worker left: kernels compile one by one
    pool.submit(source)
    assert pool.result(source) is None


def test_a_worker_that_answers_nothing_is_stopped_not_waited_for(llvm, pool, monkeypatch):
    monkeypatch.setattr(llvm_backend, "COMPILE_WORKER_TIMEOUT", 0.5)
    (source,) = compiled_sources(1)
    worker = pool.workers[0]
    os.kill(worker.process.pid, signal.SIGSTOP)  # alive, and silent
    pool.submit(source)
    with pytest.warns(UserWarning, match="compile worker ended or stopped answering"):
        assert pool.result(source) is None
    assert worker.process.wait(timeout=10) == -signal.SIGKILL
    assert not pool.usable(100)


def test_a_forked_child_neither_uses_nor_stops_its_parents_workers(pool):
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what it sees, close the pool as its exit would, and leave at once
        usable = pool.usable(100)
        pool.close()
        os.write(write, b"1" if usable else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"0", "a forked child would write into its parent's pipes"
    os.waitpid(child, 0)
    os.close(read)
    assert all(w.process.poll() is None for w in pool.workers), "the child's exit stopped its parent's workers"
    source = compiled_sources(1)[0]
    pool.submit(source)
    assert pool.result(source) is not None


def test_replies_nobody_asks_for_are_dropped(pool):
    sources = compiled_sources(3)
    for source in sources:
        pool.submit(source)
    pool.new_batch()
    worker = pool.workers[0]
    deadline = time.monotonic() + 60
    while worker.answered < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.answered == 3
    assert worker.replies == {} and worker.unwanted == set() and pool.jobs == {}

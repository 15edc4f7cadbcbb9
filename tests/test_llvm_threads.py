"""How the LLVM backend splits a kernel among its threads (backends/llvm.py): the outermost loop in pieces that the
calling thread and the native pool's workers claim, when the kernel executes enough operations and, timed alone
over its first launches, runs long enough to pay for sharing it.

- A vectorized, tiled kernel is judged by the operations it executes, not its loop iterations (a 1M-element
  softmax exp has only 16K iterations of 4 rows x 16 lanes); a tiny one is never split; a candidate is split
  only once timed, and only if it ran long enough alone.
- Split into pieces that do not divide the outer loop evenly, claimed by whichever thread is free, a kernel gives
  the same values, bit for bit, as on one thread; so do two Python threads launching split kernels at once (one
  shares the workers, the other runs its kernel alone).
- exp2 under the float range is 0, and its subnormal results are exact.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lazygrad
from lazygrad.backends import llvm as llvm_backend

pytestmark = pytest.mark.backend_independent


def softmax_exp(values: np.ndarray) -> np.ndarray:
    """exp(x - rowmax): an elementwise kernel (after the max's), vectorized along the rows."""
    x = lazygrad.Tensor(values, device="llvm")
    return (x - x.max(-1, keepdim=True).values).exp().numpy()


def run_with_threads(llvm, monkeypatch, threads: int, fn, *args):
    """fn(*args) with the backend running kernels on `threads` threads; (result, launches shared with the pool)."""
    pool = llvm.native_pool()
    before = pool.split_launches
    with monkeypatch.context() as m:
        m.setattr(llvm, "threads", threads)
        result = fn(*args)
    return result, pool.split_launches - before


def launches_with_threads(llvm, monkeypatch, threads: int, fn, *args) -> int:
    """Shares given to the pool over enough launches of fn(*args) for its kernels to be timed and decided."""
    return sum(
        run_with_threads(llvm, monkeypatch, threads, fn, *args)[1] for _ in range(llvm_backend.TIMED_LAUNCHES + 1)
    )


def split_from(monkeypatch, seconds: float) -> None:
    """Split every candidate that ran at least `seconds` alone, in eager launches and JIT replays alike."""
    monkeypatch.setattr(llvm_backend, "PARALLEL_MIN_SECONDS", seconds)
    monkeypatch.setattr(llvm_backend, "EAGER_PARALLEL_MIN_SECONDS", seconds)
    monkeypatch.setattr(llvm_backend, "EAGER_SPINNING_PARALLEL_MIN_SECONDS", seconds)


def test_a_big_vectorized_kernel_is_split_once_timed_and_a_tiny_one_never(llvm, monkeypatch):
    rng = np.random.default_rng(0)
    big = rng.standard_normal((1001, 160)).astype(np.float32)  # ~10K loop iterations of 16 lanes
    split_from(monkeypatch, 0.0)  # any time alone is long enough
    assert launches_with_threads(llvm, monkeypatch, 2, softmax_exp, big) >= 1
    tiny = rng.standard_normal((7, 9)).astype(np.float32)
    assert launches_with_threads(llvm, monkeypatch, 2, softmax_exp, tiny) == 0
    split_from(monkeypatch, 1e9)  # no kernel runs that long alone
    assert launches_with_threads(llvm, monkeypatch, 2, softmax_exp, big) == 0


def column_sums(values: np.ndarray) -> np.ndarray:
    return lazygrad.Tensor(values, device="llvm").sum(0).numpy()


def test_a_memory_bound_kernel_of_few_operations_is_split_by_the_bytes_it_reads(llvm, monkeypatch):
    """A sum over 2048 rows of 256 floats executes ~65K vector operations, under PARALLEL_MIN_OPERATIONS, but reads
    2 MiB: a candidate by its bytes, split once timed, with the values of one thread. A matrix-vector product over 1
    MiB of weights (GPT's generation: splitting those made it slower) is not."""
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((2048, 256)).astype(np.float32)
    alone, _ = run_with_threads(llvm, monkeypatch, 1, column_sums, rows)
    split_from(monkeypatch, 0.0)
    assert launches_with_threads(llvm, monkeypatch, 2, column_sums, rows) >= 1
    split, shares = run_with_threads(llvm, monkeypatch, 2, column_sums, rows)
    assert shares == 1
    np.testing.assert_array_equal(split, alone)
    np.testing.assert_allclose(alone, rows.astype(np.float64).sum(0), rtol=1e-4, atol=1e-3)
    weights, vector = rng.standard_normal((1024, 256)).astype(np.float32), rng.standard_normal(256).astype(np.float32)

    def matvec(w, v):
        return (lazygrad.Tensor(w, device="llvm") @ lazygrad.Tensor(v, device="llvm")).numpy()

    assert launches_with_threads(llvm, monkeypatch, 2, matvec, weights, vector) == 0


@pytest.mark.parametrize("threads", [2, 3])
def test_uneven_shares_give_the_values_of_one_thread(llvm, monkeypatch, threads):
    rng = np.random.default_rng(1)
    values = rng.standard_normal((1001, 160)).astype(np.float32)
    values[::7, 5:] = -np.inf  # masked entries: exp gives exactly 0
    alone, _ = run_with_threads(llvm, monkeypatch, 1, softmax_exp, values)
    split_from(monkeypatch, 0.0)
    launches_with_threads(llvm, monkeypatch, threads, softmax_exp, values)  # timed: split from now on
    split, shares = run_with_threads(llvm, monkeypatch, threads, softmax_exp, values)
    assert shares >= 1  # the launch was shared with the pool's workers
    np.testing.assert_array_equal(split, alone)
    expected = np.exp(values.astype(np.float64) - values.max(-1, keepdims=True))
    np.testing.assert_allclose(alone, expected, rtol=1e-5, atol=1e-30)


def test_a_jit_replay_splits_kernels_that_an_eager_launch_runs_alone(llvm, monkeypatch):
    """Between eager launches the workers fall asleep, so an eager launch splits only longer kernels."""
    values = np.random.default_rng(3).standard_normal((1001, 160)).astype(np.float32)
    monkeypatch.setattr(llvm_backend, "PARALLEL_MIN_SECONDS", 0.0)
    monkeypatch.setattr(llvm_backend, "EAGER_PARALLEL_MIN_SECONDS", 1e9)
    monkeypatch.setattr(llvm, "workers_spinning", lambda: False)
    assert launches_with_threads(llvm, monkeypatch, 2, softmax_exp, values) == 0
    x = lazygrad.Tensor(values, device="llvm")
    replayed = lazygrad.jit(lambda t: (t - t.max(-1, keepdim=True).values).exp())
    shared = sum(run_with_threads(llvm, monkeypatch, 2, lambda: replayed(x).numpy())[1] for _ in range(4))
    assert shared >= 1


def test_an_eager_launch_splits_a_shorter_kernel_only_while_the_workers_spin(llvm, monkeypatch):
    """Waking sleeping workers costs more than a short kernel gains; sharing it with spinning ones does not."""
    values = np.random.default_rng(4).standard_normal((1001, 160)).astype(np.float32)
    monkeypatch.setattr(llvm_backend, "EAGER_PARALLEL_MIN_SECONDS", 1e9)  # no kernel is long enough to wake them
    monkeypatch.setattr(llvm_backend, "EAGER_SPINNING_PARALLEL_MIN_SECONDS", 0.0)
    monkeypatch.setattr(llvm, "workers_spinning", lambda: False)
    alone = launches_with_threads(llvm, monkeypatch, 2, softmax_exp, values)
    monkeypatch.setattr(llvm, "workers_spinning", lambda: True)
    result, shared = run_with_threads(llvm, monkeypatch, 2, softmax_exp, values)
    assert (alone, shared >= 1) == (0, True)
    np.testing.assert_array_equal(result, run_with_threads(llvm, monkeypatch, 1, softmax_exp, values)[0])


def test_two_python_threads_launching_split_kernels_at_once_get_the_values_of_one(llvm, monkeypatch):
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((1001 + 16 * i, 160)).astype(np.float32) for i in range(2)]
    split_from(monkeypatch, 0.0)
    monkeypatch.setattr(llvm, "threads", 2)
    alone = [softmax_exp(values) for values in inputs for _ in range(llvm_backend.TIMED_LAUNCHES + 1)][::4]
    results: dict = {}

    def launch_many(index: int) -> None:
        results[index] = [softmax_exp(inputs[index]) for _ in range(20)]

    threads = [threading.Thread(target=launch_many, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, expected in enumerate(alone):
        for result in results[index]:
            np.testing.assert_array_equal(result, expected)


def test_exp2_below_the_float_range_is_zero_and_subnormals_stay_exact(llvm):
    """Inputs under -151 (a masked softmax's -inf) give 0 without computing an underflow (which costs a microcode
    assist per lane); those whose result is subnormal still get it, correctly rounded as numpy does."""
    values = np.array(
        [-np.inf, -1e30, -200.0, -151.5, -151.0, -150.5, -150.0, -149.2, -149.0, -140.3, -126.5, -0.5, np.nan] * 3,
        dtype=np.float32,
    )  # 39 values: the vectorized loop and its scalar remainder both see them
    ours = lazygrad.Tensor(values, device="llvm").exp2().numpy()
    expected = np.exp2(values.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(ours, expected)


def test_a_split_kernel_reads_its_variables_values_from_the_pools_arguments(llvm, monkeypatch):
    """A kernel with a run-time size (lazygrad.Variable) gets the value in the pool's argument array too, and a JIT
    replay with another value updates it there (a stale value would sum the wrong number of columns)."""
    values = np.random.default_rng(4).standard_normal((1024, 64)).astype(np.float32)
    x = lazygrad.Tensor(values, device="llvm").realize()
    length = lazygrad.Variable("columns", 1, 64)
    split_from(monkeypatch, 0.0)
    monkeypatch.setattr(llvm, "threads", 2)

    def sum_columns(t, n):
        return t[:, :n].sum(1).numpy()

    for columns in (64, 40):  # eager: timed alone, then split
        for _ in range(llvm_backend.TIMED_LAUNCHES + 1):
            total, shares = run_with_threads(llvm, monkeypatch, 2, sum_columns, x, length.bind(columns))
        np.testing.assert_allclose(total, values[:, :columns].sum(1), rtol=1e-5, atol=1e-5)
    assert shares >= 1
    summed = lazygrad.jit(lambda t, n: t[:, :n].sum(1))
    for columns in (64, 33, 64, 17, 5):
        total = summed(x, length.bind(columns)).numpy()
        np.testing.assert_allclose(total, values[:, :columns].sum(1), rtol=1e-5, atol=1e-5)

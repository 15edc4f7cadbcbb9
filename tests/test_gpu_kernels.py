"""GPU-shaped kernels, proven on whatever OpenCL device is here (PoCL on a CPU in CI).

A reduce with too few outputs to fill a GPU runs as one work-group per output: each work-item sums every
group-th element of the innermost reduce dim, then the group combines its partial results in local memory
(`group_reduce`, with barriers). The heuristics choose this only where the device declares it
(`Capabilities.group_reduce`: GPUs, or LAZYGRAD_OPENCL_PROFILE=gpu); here the options are forced with
`runtime.forced_options`, so the same kernels run on PoCL.

- sums and maxes over lengths 1 to 2^20 with groups of 2 to 1024 items, against numpy;
- NaN and -inf, integers, float16 and bool against torch;
- several reduce dims, padded views, epilogues after the reduce;
- no group kernel returns early (every work-item must reach the barriers);
- the heuristics' choice for GPU and CPU capabilities;
- a small convnet step (conv, BatchNorm, pooling, cross-entropy; values and gradients) under a GPU profile.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import opencl_backend_or_skip

import lazygrad
from lazygrad import Tensor, backends, runtime
from lazygrad.codegen.capabilities import Capabilities
from lazygrad.codegen.lowering import KernelOptions, LoopNest, group_reduce_items

pytestmark = pytest.mark.backend_independent


@pytest.fixture
def opencl():
    return opencl_backend_or_skip()


def grouped(items: int):
    """Options that put `items` work-items on every reduce (elementwise kernels keep the heuristics')."""

    def choose(name: str, nest: LoopNest):
        return KernelOptions(group=items) if nest.n_output < len(nest.shape) else None

    return runtime.forced_options(choose)


def group_kernel_sources() -> list:
    return [
        entry.kernel.source
        for entry in runtime._kernel_cache.values()
        if getattr(entry.kernel, "program", None) is not None and entry.kernel.program.local_size > 1
    ]


CASES = [(1, 2), (1, 1024), (15, 16), (15, 256), (16, 16), (16, 1024), (17, 2), (17, 16)]
CASES += [(1000, 256), (1000, 1024), (1 << 20, 4), (1 << 20, 256)]


@pytest.mark.parametrize("length,items", CASES, ids=[f"{n}-by-{g}" for n, g in CASES])
def test_group_sum_and_max_match_numpy(opencl, length, items):
    x = np.random.default_rng(length + items).standard_normal((3, length)).astype(np.float32)
    with grouped(items):
        t = Tensor(x, device="opencl")
        try:
            total, largest = t.sum(1).numpy(), t.max(1).values.numpy()
        except backends.CompileError as e:  # said plainly, before anything runs: e.g. 1024 on NVIDIA's OpenCL
            if "work-groups of" not in str(e):
                raise
            pytest.skip(f"this device takes fewer work-items for this kernel: {e}")
        sources = group_kernel_sources()
    np.testing.assert_allclose(total, x.astype(np.float64).sum(1), rtol=1e-5, atol=1e-4 * np.sqrt(length))
    np.testing.assert_array_equal(largest, x.max(1))
    # (a reduce over one element is no reduce: the graph drops it)
    assert len(sources) == (2 if length > 1 else 0), "both reduces should have run as work-group reductions"


def test_group_max_propagates_nan_and_keeps_minus_inf(opencl):
    x = np.random.default_rng(0).standard_normal((4, 700)).astype(np.float32)
    x[0, 333] = np.nan  # NaN in one work-item's share: the maximum is NaN, as in torch
    x[1, :] = -np.inf
    x[2, 699] = np.inf
    x[3, 0] = np.nan
    with grouped(64):
        got = Tensor(x, device="opencl").max(1).values.numpy()
    np.testing.assert_array_equal(got, torch.tensor(x).max(1).values.numpy())


def test_group_reduce_of_integers_float16_and_bool(opencl):
    rng = np.random.default_rng(1)
    ints = rng.integers(-1000, 1000, (5, 777)).astype(np.int32)
    halves = rng.uniform(-1, 1, (5, 777)).astype(np.float16)
    with grouped(128):
        int_sum = Tensor(ints, device="opencl").sum(1).numpy()
        int_max = Tensor(ints, device="opencl").max(1).values.numpy()
        half_sum = Tensor(halves, device="opencl").sum(1).numpy()
        any_big = (Tensor(ints, device="opencl") > 995).any(1).numpy()
    np.testing.assert_array_equal(int_sum, torch.tensor(ints).sum(1).numpy())
    np.testing.assert_array_equal(int_max, ints.max(1))
    assert half_sum.dtype == np.float16
    np.testing.assert_allclose(half_sum, torch.tensor(halves).sum(1).numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(any_big, (ints > 995).any(1))


def test_group_reduce_over_several_dims_of_a_padded_view_with_an_epilogue(opencl):
    x = np.random.default_rng(2).standard_normal((6, 3, 37)).astype(np.float32)
    with grouped(32):
        t = Tensor(x, device="opencl")
        mean = t.mean((0, 2)).numpy()
        spread = ((t - t.mean((0, 2), keepdim=True)) ** 2).sum((0, 2)).sqrt().numpy()
        padded_sum = t.pad((2, 3), value=1.0).sum((0, 2)).numpy()
    np.testing.assert_allclose(mean, x.mean((0, 2)), rtol=1e-5, atol=1e-6)
    want = np.sqrt(((x - x.mean((0, 2), keepdims=True)) ** 2).sum((0, 2)))
    np.testing.assert_allclose(spread, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(padded_sum, x.sum((0, 2)) + 6 * 5, rtol=1e-5, atol=1e-4)


def test_group_reduce_with_a_register_tile_matches_numpy(opencl):
    """Each work-item keeps a 2x3 tile of accumulators over its share of the reduce; the group combines
    each accumulator in local memory (a matrix product's shape, as a GPU gets weight gradients)."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((8, 1001)).astype(np.float32), rng.standard_normal((1001, 6)).astype(np.float32)

    def choose(name, nest):
        return KernelOptions(upcast=[(0, 2), (1, 3)], group=64) if nest.shape == (8, 6, 1001) else None

    with runtime.forced_options(choose):
        got = (Tensor(a, device="opencl") @ Tensor(b, device="opencl")).numpy()
        sources = group_kernel_sources()
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    assert len(sources) == 1 and sources[0].count("barrier(") >= 6  # one combine per accumulator


def test_no_group_kernel_returns_before_a_barrier(opencl):
    x = np.random.default_rng(3).standard_normal((7, 300)).astype(np.float32)
    with grouped(256):
        (Tensor(x, device="opencl").exp().sum(1) * 2).numpy()
        sources = group_kernel_sources()
    assert sources
    for source in sources:
        assert "barrier(" in source
        assert "return" not in source, f"a work-item that returns early skips the group's barriers:\n{source}"


def nest(outputs: tuple, reduce: tuple) -> LoopNest:
    return LoopNest(outputs + reduce, len(outputs), {})


GPU = Capabilities(group_reduce=256, local_memory=49152, max_work_group=1024, compute_units=132, is_gpu=True)


def test_heuristics_give_few_long_reduces_to_work_groups():
    # BatchNorm's statistics at 32x64x112x112: 64 outputs, each a sum of 401,408 elements
    assert group_reduce_items(nest((64,), (32, 12544)), GPU) == 256
    # a reduce along a short innermost dim gets a narrower group
    assert group_reduce_items(nest((64,), (4096, 56)), GPU) == 64


def test_heuristics_keep_one_work_item_per_output_where_outputs_fill_the_device():
    assert group_reduce_items(nest((512, 512), (4608,)), GPU) is None  # a matrix product
    assert group_reduce_items(nest((64,), (100,)), GPU) is None  # too short to share
    assert group_reduce_items(nest((64, 64), ()), GPU) is None  # no reduce


def test_cpus_never_get_work_group_reductions():
    cpu = Capabilities(vector_width=16, cache_blocking=True)
    assert group_reduce_items(nest((64,), (32, 12544)), cpu) is None


def test_a_convnet_step_under_a_gpu_profile_matches_torch(opencl, monkeypatch):
    """The kernels a GPU gets (scalar code, work-group reductions wherever outputs are few) on this device."""
    profile = dataclasses.replace(opencl.capabilities, vector_width=1, group_reduce=64, compute_units=1)
    monkeypatch.setattr(opencl, "capabilities", profile)
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    rng = np.random.default_rng(4)
    image = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    weight = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    fc = (rng.standard_normal((5, 8 * 6 * 6)) * 0.1).astype(np.float32)
    labels = np.array([0, 3, 1, 4])

    def step(lib, fn, tensor, device):
        w = tensor(weight, requires_grad=True, **device)
        f = tensor(fc, requires_grad=True, **device)
        x = fn.conv2d(tensor(image, **device), w, padding=1)
        x = fn.batch_norm(x, None, None, training=True).relu()
        x = fn.max_pool2d(x, 2)
        loss = fn.cross_entropy(fn.linear(x.reshape(4, -1), f), tensor(labels, **device))
        loss.backward()
        return [loss.detach().numpy(), w.grad.numpy(), f.grad.numpy()]

    got = step(lazygrad, lazygrad.nn.functional, lazygrad.tensor, {"device": "opencl"})
    want = step(torch, torch.nn.functional, torch.tensor, {})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    grouped_kernels = [e for e in runtime._kernel_cache.values() if e.kernel.program.local_size > 1]
    assert len(grouped_kernels) >= 3, "BatchNorm's statistics and gradients should have used work-groups"

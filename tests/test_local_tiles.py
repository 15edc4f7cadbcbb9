"""Matrix products tiled through local memory (lazygrad/codegen/tiling.py), proven on whatever OpenCL device is
here (PoCL on a CPU in CI) and on the reference interpreter.

A GPU gets them from the heuristics (`Capabilities.group_reduce`: a device with work-groups); here the tiles are
forced with `runtime.forced_options`, so the same kernels run on PoCL:

- products whose sizes are not multiples of the tile (clamped loads, guarded stores), for every tile the lowering
  knows, against numpy; a batched product; an epilogue after the sum;
- a convolution's forward and both gradients against torch (window views with padding masks, weight gradients
  reducing over batch and pixels, the input gradient's transposed convolution);
- the reference interpreter runs the same programs (local arrays per work-group, barriers);
- the verifier refuses a barrier inside an if, and local access of the wrong kind;
- the heuristics' choice for GPU and CPU capabilities; a kernel the device cannot run in work-groups of 256 is
  lowered again without the tile.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import ProgramBuilder, opencl_backend_or_skip

import lazygrad
from lazygrad import Tensor, backends, runtime
from lazygrad import dtype as dt
from lazygrad.codegen import tiling
from lazygrad.codegen.capabilities import Capabilities
from lazygrad.codegen.ir import Program
from lazygrad.codegen.lowering import KernelOptions, build_loop_nest, choose_options
from lazygrad.codegen.verify import IRError, verify
from lazygrad.ops import IrOp, Op

pytestmark = pytest.mark.backend_independent

TILES = [dataclasses.astuple(t) for t in tiling.TILES]


@pytest.fixture
def opencl():
    return opencl_backend_or_skip()


def tiled(tile: tuple):
    """Every product the tiling module can take runs with `tile`; other kernels keep the heuristics'."""

    def choose(name, nest):
        return None if nest.n_output == len(nest.shape) else KernelOptions(local_tile=tile)

    return runtime.forced_options(choose)


def tiled_programs() -> list:
    return [e.kernel.program for e in runtime._kernel_cache.values() if e.kernel.program.local_size > 1]


@pytest.mark.parametrize("device", ["opencl", "reference"])
@pytest.mark.parametrize("tile", TILES, ids=["x".join(map(str, t[:3])) for t in TILES])
def test_products_that_are_not_tile_multiples_match_numpy(request, device, tile):
    if device == "opencl":
        request.getfixturevalue("opencl")
    rng = np.random.default_rng(sum(tile))
    # (m, k, n): ragged in every direction, smaller than a tile, and K shorter than one chunk
    shapes = [(37, 45, 70), (5, 3, 130)] if device == "opencl" else [(37, 45, 70)]
    for m, k, n in shapes:
        a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        with tiled(tile):
            got = (Tensor(a, device=device) @ Tensor(b, device=device) + Tensor(bias, device=device)).relu().numpy()
            assert len(tiled_programs()) == 1, "the product should have run as a tiled kernel"
        want = np.maximum(a.astype(np.float64) @ b + bias, 0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{m}x{k}x{n}")


def test_a_batched_product_with_an_operand_contiguous_along_its_rows(opencl):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 40, 33)).astype(np.float32)  # read transposed: contiguous along M, not K
    b = rng.standard_normal((3, 40, 50)).astype(np.float32)
    with tiled(TILES[1]):
        got = (Tensor(a, device="opencl").transpose(1, 2) @ Tensor(b, device="opencl")).numpy()
        assert len(tiled_programs()) == 1
    np.testing.assert_allclose(got, np.swapaxes(a, 1, 2).astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


def test_a_convolution_and_its_gradients_match_torch(opencl):
    rng = np.random.default_rng(2)
    image = rng.standard_normal((3, 5, 9, 9)).astype(np.float32)
    weight = (rng.standard_normal((6, 5, 3, 3)) * 0.3).astype(np.float32)

    def step(lib, tensor, device):
        x = tensor(image, requires_grad=True, **device)
        w = tensor(weight, requires_grad=True, **device)
        out = lib.nn.functional.conv2d(x, w, padding=1, stride=2)
        (out * out).sum().backward()
        return [out.detach().numpy(), x.grad.numpy(), w.grad.numpy()]

    with tiled(TILES[2]):
        got = step(lazygrad, lazygrad.tensor, {"device": "opencl"})
        assert len(tiled_programs()) >= 3, "the forward and both gradients should have been tiled products"
    want = step(torch, torch.tensor, {})
    for g, w, what in zip(got, want, ["output", "input gradient", "weight gradient"]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=what)


def test_the_heuristics_tile_big_products_on_a_gpu_only(monkeypatch):
    gpu = Capabilities(group_reduce=256, local_memory=49152, max_work_group=1024, compute_units=132, is_gpu=True)
    cpu = Capabilities(vector_width=16, cache_blocking=True)
    asts = []

    class Recorded(Exception):
        pass

    def recording(ast, *args, **kwargs):  # the product's kernel as the reference device gets it, never run
        asts.append(ast)
        raise Recorded

    monkeypatch.setattr(runtime, "get_kernel", recording)
    a, b = np.ones((2048, 512), np.float32), np.ones((512, 1024), np.float32)
    with pytest.raises(Recorded):
        (Tensor(a, device="reference") @ Tensor(b, device="reference")).numpy()
    (ast,) = asts
    nest = build_loop_nest(ast)
    chosen = choose_options(nest, ast, gpu)
    # 32 x 16 groups of 64x64 fill 132 compute units; 16 x 8 of 128x128 would leave some idle
    assert chosen.local_tile == TILES[1], chosen.describe()
    assert choose_options(nest, ast, cpu).local_tile is None
    few = dataclasses.replace(gpu, max_work_group=128)  # a device without work-groups of 256
    assert choose_options(nest, ast, few).local_tile is None


def test_a_kernel_the_device_runs_in_smaller_groups_is_lowered_again_without_the_tile(opencl, monkeypatch):
    profile = dataclasses.replace(opencl.capabilities, vector_width=1, group_reduce=256, max_work_group=256)
    monkeypatch.setattr(opencl, "capabilities", profile)
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    compile_program = opencl.compile

    def compile_allowing_128(program):  # as NVIDIA's OpenCL does for a kernel that needs many registers
        if program.local_size > 128:
            raise backends.WorkGroupTooLarge(f"kernel {program.name} needs work-groups of {program.local_size}", 128)
        return compile_program(program)

    monkeypatch.setattr(opencl, "compile", compile_allowing_128)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((256, 96)).astype(np.float32), rng.standard_normal((96, 160)).astype(np.float32)
    got = (Tensor(a, device="opencl") @ Tensor(b, device="opencl")).numpy()
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    assert all(e.kernel.program.local_size <= 128 for e in runtime._kernel_cache.values())


# --- the verifier ---------------------------------------------------------------------------------------------
def _local_program(body) -> Program:
    b = ProgramBuilder()
    out = b(IrOp.PARAM, dt.float32, (), (0, True))
    g = b(IrOp.RANGE, dt.int32, (), ("g0", 2, "global"))
    lid = b(IrOp.LOCAL_ID, dt.int32, (), 4)
    shared = b(IrOp.LOCAL, dt.float32, (), 4)
    value = body(b, shared, lid)
    index = b(Op.ADD, dt.int32, (b(Op.MUL, dt.int32, (g, b(IrOp.CONST, dt.int32, (), 4))), lid))
    b(IrOp.STORE, None, (out, index, value))
    b(IrOp.ENDRANGE, None, (g,))
    return Program("hand_made", b.uops, (dt.float32,), (2,), 4)


def _reversed_through_local_memory(b, shared, lid):
    """Each work-item stores its id, the group waits, each reads its mirror's: values crossing work-items."""
    b(IrOp.LOCAL_STORE, None, (shared, lid, b(Op.CAST, dt.float32, (lid,), dt.int32)))
    b(IrOp.BARRIER, None, ())
    mirror = b(Op.ADD, dt.int32, (b(Op.NEG, dt.int32, (lid,)), b(IrOp.CONST, dt.int32, (), 3)))
    return b(IrOp.LOCAL_LOAD, dt.float32, (shared, mirror))


def test_local_memory_crosses_work_items_on_the_reference():
    from lazygrad.backends import reference

    program = _local_program(_reversed_through_local_memory)
    verify(program)
    memory = [np.zeros(32, np.uint8)]
    reference.run(program, memory)
    np.testing.assert_array_equal(memory[0].view(np.float32), [3, 2, 1, 0, 3, 2, 1, 0])


def _barrier_inside_an_if(b, shared, lid):
    b(IrOp.IF, None, (b(Op.CMPLT, dt.bool_, (lid, b(IrOp.CONST, dt.int32, (), 2))),))
    b(IrOp.BARRIER, None, ())
    b(IrOp.ENDIF, None, ())
    return b(IrOp.CONST, dt.float32, (), 0.0)


def _local_load_of_another_dtype(b, shared, lid):
    return b(Op.CAST, dt.float32, (b(IrOp.LOCAL_LOAD, dt.int32, (shared, lid)),), dt.int32)


def _local_store_through_a_param(b, shared, lid):
    out = next(u for u in b.uops if u.op is IrOp.PARAM)
    b(IrOp.LOCAL_STORE, None, (out, lid, b(IrOp.CONST, dt.float32, (), 0.0)))
    return b(IrOp.CONST, dt.float32, (), 0.0)


@pytest.mark.parametrize(
    "body,message",
    [
        (_barrier_inside_an_if, "barrier inside an if"),
        (_local_load_of_another_dtype, "moves scalars of the local array's float32"),
        (_local_store_through_a_param, "goes through a local array, not param"),
    ],
    ids=["barrier-inside-an-if", "local-load-of-another-dtype", "local-store-through-a-param"],
)
def test_the_verifier_refuses_misused_local_memory(body, message):
    with pytest.raises(IRError, match=message):
        verify(_local_program(body))


def test_a_weight_gradient_summed_over_slices_of_the_batch_matches_torch(opencl, monkeypatch):
    """On a device with many compute units, a weight gradient with few outputs is computed as partial sums over
    slices of the batch (codegen.layout.weight_grad_batch_parts), then summed: same values as one reduce."""
    from lazygrad.codegen import layout

    profile = dataclasses.replace(
        opencl.capabilities, vector_width=1, group_reduce=256, max_work_group=256, compute_units=132
    )
    monkeypatch.setattr(opencl, "capabilities", profile)
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    assert layout.weight_grad_batch_parts("opencl", 8, (6, 45), 8 * 32 * 32) == 4
    rng = np.random.default_rng(6)
    image = rng.standard_normal((8, 5, 32, 32)).astype(np.float32)
    weight = (rng.standard_normal((6, 5, 3, 3)) * 0.3).astype(np.float32)

    def weight_grad(lib, tensor, device):
        w = tensor(weight, requires_grad=True, **device)
        lib.nn.functional.conv2d(tensor(image, **device), w, padding=1).square().sum().backward()
        return w.grad.numpy()

    got = weight_grad(lazygrad, lazygrad.tensor, {"device": "opencl"})
    np.testing.assert_allclose(got, weight_grad(torch, torch.tensor, {}), rtol=1e-4, atol=1e-3)


def test_the_gpu_profile_declares_a_gpus_limits_and_refuses_other_names(opencl, monkeypatch):
    from lazygrad import config
    from lazygrad.backends import opencl as opencl_module

    monkeypatch.setattr(config, "OPENCL_PROFILE", "gpu")
    caps = opencl_module.OpenCLBackend().capabilities
    assert (caps.vector_width, caps.group_reduce) == (1, 256)
    assert caps.max_work_group <= 1024 and caps.local_memory <= 48 << 10
    monkeypatch.setattr(config, "OPENCL_PROFILE", "gpux")
    with pytest.raises(ValueError, match="LAZYGRAD_OPENCL_PROFILE='gpux': the one profile is 'gpu'"):
        opencl_module.OpenCLBackend()

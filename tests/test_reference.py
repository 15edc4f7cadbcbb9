"""The reference backend (backends/reference.py) as the executable specification of the IR, and the IR verifier.

- LLVM and OpenCL (also with the kernels a GPU gets) agree with the reference kernel by kernel on random graphs:
  every kernel a random program launches is run again on the reference, on copies of the same input buffers,
  and every buffer it leaves is compared;
- work-group programs (forced with `runtime.forced_options`) on the reference agree with numpy;
- a CI-sized selection of ops on the reference against numpy (the op, autograd and fusion test files run on it
  with `--backend reference`);
- the verifier rejects a hand-made program for each of its rules, and accepts what the lowering produces (the
  runtime verifies every program it compiles, so every test that runs kernels checks that too).
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from helpers import ProgramBuilder as _Builder
from test_fuzz import Draws, generate
from test_fuzz import run as run_fuzz_program

import lazygrad
from lazygrad import Tensor, backends, runtime
from lazygrad import dtype as dt
from lazygrad.backends import reference
from lazygrad.codegen.ir import Program, UOp
from lazygrad.codegen.lowering import KernelOptions
from lazygrad.codegen.verify import IRError, verify
from lazygrad.ops import IrOp, Op


# --- every kernel of random graphs, on a backend and on the reference ------------------------------------------------
class _ComparedKernel:
    """A backend's kernel that, at each launch, also runs its program on the reference with copies of the buffers
    it was given, and compares every buffer afterwards."""

    def __init__(self, kernel, program, device, dtypes: tuple, sizes: tuple, compared: list):
        self.kernel, self.device, self.dtypes, self.sizes, self.compared = kernel, device, dtypes, sizes, compared
        self.name, self.source, self.program = kernel.name, kernel.source, program

    def read(self, handles: list) -> list:
        arrays = [np.empty(size, dtype=d.np) for d, size in zip(self.dtypes, self.sizes)]
        for handle, array in zip(handles, arrays):
            self.device.copy_out(handle, array)
        return arrays

    def __call__(self, handles: list, wait: bool = False):
        before = self.read(handles)
        seconds = self.kernel(handles, wait)
        after = self.read(handles)
        memory = [np.frombuffer(a.tobytes() or b"\0", dtype=np.uint8).copy() for a in before]
        reference.run(self.program, memory)
        for i, (d, size, got) in enumerate(zip(self.dtypes, self.sizes, after)):
            want = memory[i][: size * d.itemsize].view(d.np)
            what = f"kernel {self.name}, buffer {i} ({d.name}), against the reference\n{self.program.dump()}"
            if d.is_float:
                finite = want[np.isfinite(want)].astype(np.float64)
                scale = float(np.abs(finite).max()) if finite.size else 1.0
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * (1 + scale), equal_nan=True, err_msg=what)
            else:
                np.testing.assert_array_equal(got, want, err_msg=what)
        self.compared.append(self.name)
        return seconds


def _compare_kernels_with_the_reference(monkeypatch, device_name: str, programs: int, seed: int) -> list:
    """Run random programs (values and gradients) on a device, each kernel checked against the reference."""
    device = backends.get(device_name)
    compared: list = []
    original = runtime.get_kernel

    def get_kernel(ast, buffer_dtypes, device_string, sizes, aliased=frozenset()):
        entry = original(ast, buffer_dtypes, device_string, sizes, aliased)
        # the compiled kernel keeps no IR (Program.summary): the program it was compiled from, lowered again
        program = runtime._lowered(ast, buffer_dtypes, entry.kernel.name, device.capabilities)
        kernel = _ComparedKernel(entry.kernel, program, device, buffer_dtypes, sizes, compared)
        return runtime.CompiledEntry(kernel, entry.flops, entry.bytes)

    monkeypatch.setattr(runtime, "get_kernel", get_kernel)
    rng = random.Random(seed)
    for _ in range(programs):
        program = generate(Draws.from_random(rng))
        try:
            run_fuzz_program(program, "lazygrad")
        except AssertionError as e:
            raise AssertionError(f"{e}\nin the random program:\n{program.source()}") from None
    return compared


def _not_on_the_reference_itself(backend: str):
    if backend == "reference":
        pytest.skip("compares a backend with the reference: the reference against itself says nothing")


PROGRAMS = {"llvm": 40, "opencl": 15}  # PoCL compiles a kernel in ~10x LLVM's time


def test_every_kernel_of_random_graphs_matches_the_reference(backend, monkeypatch):
    _not_on_the_reference_itself(backend)
    compared = _compare_kernels_with_the_reference(monkeypatch, backend, PROGRAMS.get(backend, 15), seed=11)
    assert len(compared) >= PROGRAMS.get(backend, 15)


@pytest.mark.backend_independent
def test_every_kernel_a_gpu_gets_matches_the_reference(monkeypatch):
    """The OpenCL backend with a GPU's capabilities (scalar code, work-group reductions wherever outputs are few)."""
    try:
        opencl = backends.get("opencl")
    except backends.BackendUnavailable as e:
        pytest.skip(f"opencl unavailable: {str(e).splitlines()[0]}")
    profile = dataclasses.replace(opencl.capabilities, vector_width=1, group_reduce=64, compute_units=1)
    monkeypatch.setattr(opencl, "capabilities", profile)
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    monkeypatch.setattr(lazygrad.Device, "DEFAULT", "opencl")
    compared = _compare_kernels_with_the_reference(monkeypatch, "opencl", 12, seed=12)
    assert compared


# --- work-groups on the reference -------------------------------------------------------------------------------
def grouped(items: int):
    """Options that put `items` work-items on every reduce (elementwise kernels keep the heuristics')."""
    return runtime.forced_options(
        lambda name, nest: KernelOptions(group=items) if nest.n_output < len(nest.shape) else None
    )


def _group_programs() -> list:
    return [e.kernel.program for e in runtime._kernel_cache.values() if e.kernel.program.local_size > 1]


@pytest.mark.backend_independent
@pytest.mark.parametrize("length,items", [(15, 16), (17, 2), (1000, 64), (4096, 256)])
def test_work_group_sums_and_maxes_on_the_reference_match_numpy(length, items):
    x = np.random.default_rng(length).standard_normal((3, length)).astype(np.float32)
    with grouped(items):
        t = Tensor(x, device="reference")
        total, largest = t.sum(1).numpy(), t.max(1).values.numpy()
        assert len(_group_programs()) == 2
    np.testing.assert_allclose(total, x.astype(np.float64).sum(1), rtol=1e-5, atol=1e-4 * np.sqrt(length))
    np.testing.assert_array_equal(largest, x.max(1))


@pytest.mark.backend_independent
def test_work_group_reduces_on_the_reference_of_nan_integers_float16_and_bool():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 300)).astype(np.float32)
    x[0, 123], x[1, :] = np.nan, -np.inf
    ints = rng.integers(-1000, 1000, (5, 777)).astype(np.int32)
    halves = rng.uniform(-1, 1, (5, 777)).astype(np.float16)
    with grouped(32):
        nan_max = Tensor(x, device="reference").max(1).values.numpy()
        int_sum = Tensor(ints, device="reference").sum(1).numpy()
        half_sum = Tensor(halves, device="reference").sum(1).numpy()
        any_big = (Tensor(ints, device="reference") > 995).any(1).numpy()
    np.testing.assert_array_equal(nan_max, torch.tensor(x).max(1).values.numpy())
    np.testing.assert_array_equal(int_sum, ints.sum(1))
    np.testing.assert_allclose(half_sum, torch.tensor(halves).sum(1).numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(any_big, (ints > 995).any(1))


@pytest.mark.backend_independent
def test_a_work_group_register_tile_on_the_reference_matches_numpy():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((8, 301)).astype(np.float32), rng.standard_normal((301, 6)).astype(np.float32)

    def choose(name, nest):
        return KernelOptions(upcast=[(0, 2), (1, 3)], group=16) if nest.shape == (8, 6, 301) else None

    with runtime.forced_options(choose):
        got = (Tensor(a, device="reference") @ Tensor(b, device="reference")).numpy()
        assert len(_group_programs()) == 1
    np.testing.assert_allclose(got, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


# --- a CI-sized selection on the reference ------------------------------------------------------------------------
@pytest.mark.backend_independent
def test_a_convnet_step_on_the_reference_matches_torch():
    """Conv, BatchNorm, pooling, cross-entropy and their gradients: vectors, tiles, work-group reduces."""
    rng = np.random.default_rng(4)
    image = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    weight = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    fc = (rng.standard_normal((5, 4 * 4 * 4)) * 0.1).astype(np.float32)
    labels = np.array([0, 3])

    def step(lib, fn, tensor, device):
        w = tensor(weight, requires_grad=True, **device)
        f = tensor(fc, requires_grad=True, **device)
        x = fn.conv2d(tensor(image, **device), w, padding=1)
        x = fn.max_pool2d(fn.batch_norm(x, None, None, training=True).relu(), 2)
        loss = fn.cross_entropy(fn.linear(x.reshape(2, -1), f), tensor(labels, **device))
        loss.backward()
        return [loss.detach().numpy(), w.grad.numpy(), f.grad.numpy()]

    got = step(lazygrad, lazygrad.nn.functional, lazygrad.tensor, {"device": "reference"})
    want = step(torch, torch.nn.functional, torch.tensor, {})
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.backend_independent
def test_the_reference_divides_shifts_and_wraps_integers_as_c_does():
    a = np.array([7, -7, 7, -7, -(2**31), 2**31 - 1], np.int32)
    b = np.array([2, 2, -2, -2, 1, 1], np.int32)
    x, y = Tensor(a, device="reference"), Tensor(b, device="reference")
    quotient = x._primitive(Op.IDIV, y).numpy()
    remainder = x._primitive(Op.MOD, y).numpy()
    np.testing.assert_array_equal(quotient, [3, -3, -3, 3, -(2**31), 2**31 - 1])  # toward zero
    np.testing.assert_array_equal(remainder, [1, -1, 1, -1, 0, 0])  # the sign of the dividend
    np.testing.assert_array_equal((x + 1).numpy()[-1], -(2**31))  # int32 wraps
    np.testing.assert_array_equal((x >> 1).numpy(), a >> 1)  # arithmetic shift


# --- the verifier -------------------------------------------------------------------------------------------------


def _program(body, local_size: int = 1, global_size: tuple = (4,)) -> Program:
    """out[g] = body(b, out, data, g) for g in range(4): the body returns the value to store (or None)."""
    b = _Builder()
    out = b(IrOp.PARAM, dt.float32, (), (0, True))
    data = b(IrOp.PARAM, dt.float32, (), (1, False))
    g = b(IrOp.RANGE, dt.int32, (), ("g0", 4, "global"))
    value = body(b, out, data, g)
    if value is not None:
        b(IrOp.STORE, None, (out, g, value))
    b(IrOp.ENDRANGE, None, (g,))
    return Program("hand_made", b.uops, (dt.float32, dt.float32), global_size, local_size)


def _load(b, data, g):
    return b(IrOp.LOAD, dt.float32, (data, g))


def _unknown_op(b, out, data, g):
    return b(Op.SUM, dt.float32, (_load(b, data, g),))


def _wrong_arity(b, out, data, g):
    return b(Op.ADD, dt.float32, (_load(b, data, g),))


def _source_defined_later(b, out, data, g):
    later = UOp(IrOp.CONST, dt.float32, (), 1.0, 99)
    return b(Op.ADD, dt.float32, (_load(b, data, g), later))


def _source_from_a_closed_loop(b, out, data, g):
    loop = b(IrOp.RANGE, dt.int32, (), ("r0", 2, "loop"))
    inside = _load(b, data, g)
    b(IrOp.ENDRANGE, None, (loop,))
    return inside


def _wrong_result_dtype(b, out, data, g):
    x = _load(b, data, g)
    b(Op.ADD, dt.int32, (x, x))


def _comparison_not_bool(b, out, data, g):
    x = _load(b, data, g)
    return b(Op.CMPLT, dt.float32, (x, x))


def _kind_the_row_refuses(b, out, data, g):
    x = _load(b, data, g)
    return b(Op.SHL, dt.float32, (x, x))


def _operands_of_two_dtypes(b, out, data, g):
    return b(Op.ADD, dt.float32, (_load(b, data, g), b(IrOp.CONST, dt.float64, (), 1.0)))


def _cast_without_its_source_dtype(b, out, data, g):
    return b(Op.CAST, dt.float32, (b(Op.CAST, dt.int32, (_load(b, data, g),), "float32"),), dt.int32)


def _bitcast_between_sizes(b, out, data, g):
    return b(Op.BITCAST, dt.float32, (b(IrOp.CONST, dt.int16, (), 1),), dt.int16)


def _where_on_a_float_condition(b, out, data, g):
    x = _load(b, data, g)
    return b(Op.WHERE, dt.float32, (x, x, x))


def _load_not_through_a_param(b, out, data, g):
    return b(IrOp.LOAD, dt.float32, (g, g))


def _float_index(b, out, data, g):
    return b(IrOp.LOAD, dt.float32, (data, b(IrOp.CONST, dt.float32, (), 0.0)))


def _load_of_another_dtype(b, out, data, g):
    return b(Op.CAST, dt.float32, (b(IrOp.LOAD, dt.int32, (data, g)),), dt.int32)


def _operands_of_two_vecs(b, out, data, g):
    x = _load(b, data, g)
    b(Op.ADD, dt.float32, (x, b(IrOp.BROADCAST, dt.float32, (x,), None, 4)), None, 4)


def _range_never_closed(b, out, data, g):
    b(IrOp.RANGE, dt.int32, (), ("r0", 2, "loop"))
    return _load(b, data, g)


def _endif_without_if(b, out, data, g):
    b(IrOp.ENDIF, None, ())


def _blocks_crossed(b, out, data, g):
    loop = b(IrOp.RANGE, dt.int32, (), ("r0", 2, "loop"))
    b(IrOp.IF, None, (b(IrOp.CONST, dt.bool_, (), True),))
    b(IrOp.ENDRANGE, None, (loop,))
    b(IrOp.ENDIF, None, ())


def _local_id_without_work_groups(b, out, data, g):
    b(IrOp.LOCAL_ID, dt.int32, (), 1)


def _group_reduce_inside_an_if(b, out, data, g):
    b(IrOp.LOCAL_ID, dt.int32, (), 4)
    b(IrOp.IF, None, (b(IrOp.CONST, dt.bool_, (), True),))
    b(IrOp.GROUP_REDUCE, dt.float32, (_load(b, data, g),), (Op.ADD, 4))
    b(IrOp.ENDIF, None, ())


def _store_to_an_input(b, out, data, g):
    b(IrOp.STORE, None, (data, g, _load(b, data, g)))


def _hreduce_with_another_op(b, out, data, g):
    vector = b(IrOp.BROADCAST, dt.float32, (_load(b, data, g),), None, 4)
    return b(IrOp.HREDUCE, dt.float32, (vector,), Op.MUL)


def _empty_loop(b, out, data, g):
    loop = b(IrOp.RANGE, dt.int32, (), ("r0", 0, "loop"))
    b(IrOp.ENDRANGE, None, (loop,))


def _if_on_a_float(b, out, data, g):
    b(IrOp.IF, None, (_load(b, data, g),))
    b(IrOp.ENDIF, None, ())


def _acc_update_of_a_load(b, out, data, g):
    x = _load(b, data, g)
    b(IrOp.ACC_UPDATE, None, (x, x))


def _param_of_no_buffer(b, out, data, g):
    b(IrOp.PARAM, dt.float32, (), (2, False))


def _scatter_with_a_scalar_index(b, out, data, g):
    b(IrOp.SCATTER, None, (out, g, b(IrOp.BROADCAST, dt.float32, (_load(b, data, g),), None, 4)))


def _variable_the_program_does_not_take(b, out, data, g):
    b(IrOp.VARIABLE, dt.int32, (), ("n", 1, 4))  # the program's `variables` is empty


def _loop_bound_of_a_float(b, out, data, g):
    loop = b(IrOp.RANGE, dt.int32, (_load(b, data, g),), ("r0", 4, "loop"))
    b(IrOp.ENDRANGE, None, (loop,))


def _group_reduce_of_another_size(b, out, data, g):
    b(IrOp.LOCAL_ID, dt.int32, (), 4)
    return b(IrOp.GROUP_REDUCE, dt.float32, (_load(b, data, g),), (Op.ADD, 8))


BAD = [
    (_unknown_op, {}, "neither an IrOp nor an elementwise Op"),
    (_wrong_arity, {}, "add takes 2 sources, not 1"),
    (_source_defined_later, {}, "not defined earlier"),
    (_source_from_a_closed_loop, {}, "not defined earlier in an open block"),
    (_wrong_result_dtype, {}, r"add's result is float32 \(the dtype of its first operand\)"),
    (_comparison_not_bool, {}, "cmplt's result is bool"),
    (_kind_the_row_refuses, {}, "shl does not compute on float32"),
    (_operands_of_two_dtypes, {}, "operands of add must have one dtype"),
    (_cast_without_its_source_dtype, {}, "cast's arg must be its source's dtype"),
    (_bitcast_between_sizes, {}, "bitcast between dtypes of different sizes"),
    (_where_on_a_float_condition, {}, "where's condition must be bool"),
    (_load_not_through_a_param, {}, "load goes through a param, not range"),
    (_float_index, {}, "an index must be int32, not float32"),
    (_load_of_another_dtype, {}, "load of lazygrad.int32 through a param of float32"),
    (_operands_of_two_vecs, {}, "operands of add must have its vec 4"),
    (_range_never_closed, {}, "closes .* but the innermost open block is"),
    (_endif_without_if, {}, "endif without an open if"),
    (_blocks_crossed, {}, "closes .* but the innermost open block is"),
    (_local_id_without_work_groups, {}, "local_id needs work-groups, but the program's local_size is 1"),
    (_group_reduce_inside_an_if, {"local_size": 4}, "group_reduce inside an if"),
    (_store_to_an_input, {}, "stores to buffer 1, which is not an output"),
    (_hreduce_with_another_op, {}, "hreduce combines with Op.ADD or Op.MAX"),
    (_empty_loop, {}, "a range's size must be a positive int"),
    (_if_on_a_float, {}, "an if's condition is a scalar bool"),
    (_acc_update_of_a_load, {}, "acc_update writes an acc, not load"),
    (_param_of_no_buffer, {}, "buffer 2 does not exist"),
    (_scatter_with_a_scalar_index, {}, "scatter's index has 4 lane"),
    (_group_reduce_of_another_size, {"local_size": 4}, "group_reduce over 8 items in work-groups of 4"),
    (_variable_the_program_does_not_take, {}, r"a variable's arg is \(name, min, max\)"),
    (_loop_bound_of_a_float, {}, "a range's bound must be int32, not float32"),
    (lambda b, out, data, g: _load(b, data, g), {"global_size": (5,)}, "global_size is \\(5,\\)"),
]


@pytest.mark.backend_independent
@pytest.mark.parametrize("body,program_args,message", BAD, ids=[body.__name__.strip("_") for body, _, _ in BAD])
def test_the_verifier_rejects_a_program_that_breaks_a_rule(body, program_args, message):
    program = _program(body, **program_args)
    with pytest.raises(IRError, match=message) as raised:
        verify(program)
    assert "kernel hand_made: uop" in str(raised.value) or "global_size" in message


@pytest.mark.backend_independent
def test_the_verifier_accepts_a_well_formed_program_and_the_reference_runs_it():
    program = _program(lambda b, out, data, g: b(Op.MUL, dt.float32, (_load(b, data, g), _load(b, data, g))))
    verify(program)
    memory = [np.zeros(16, np.uint8), np.arange(4, dtype=np.float32).view(np.uint8).copy()]
    reference.run(program, memory)
    np.testing.assert_array_equal(memory[0].view(np.float32), [0, 1, 4, 9])


@pytest.mark.backend_independent
def test_the_runtime_verifies_every_program_it_compiles(monkeypatch):
    verified = []
    monkeypatch.setattr(runtime, "verify", lambda program: verified.append(program.name))
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    x = Tensor(np.ones((4, 5), np.float32), device="reference")
    (x.exp() + 1).sum(1).numpy()
    assert len(verified) >= 1


@pytest.mark.backend_independent
def test_the_reference_refuses_a_load_outside_its_buffer():
    program = _program(lambda b, out, data, g: b(IrOp.LOAD, dt.float32, (data, b(Op.ADD, dt.int32, (g, g)))))
    memory = [np.zeros(16, np.uint8), np.zeros(16, np.uint8)]
    with pytest.raises(IndexError, match="reaches elements 0..6 of buffer 1, which has 4"):
        reference.run(program, memory)

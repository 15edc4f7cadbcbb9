"""Eager steps reuse the schedule of a graph of the same structure (runtime.realize, Scheduler.structure).

A graph whose structure was seen before (same ops, shapes, dtypes, views, constants; other buffers) runs the plan
made for the first one: no scheduling, no kernel look-up. The structure key must never confuse two different
graphs: each fuzzed pair below differs in one op, shape, dtype, view, constant or buffer, and both give numpy's
values, in either order.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

import lazygrad
from lazygrad import runtime


def _counts() -> tuple:
    return runtime.schedule_counts["made"], runtime.schedule_counts["reused"]


# --- a small family of graphs, run on lazygrad and numpy alike --------------------------------------------
@dataclasses.dataclass(frozen=True)
class Spec:
    """out = reduce(unary(binary(view_a(x), view_b(y or x)) * const)), optionally on transposed inputs."""

    shape: tuple = (4, 6)
    dtype: str = "float32"
    view_a: str = "id"
    view_b: str = "id"
    binary: str = "add"
    const: float = 2.0
    unary: str = "id"
    reduce: str = "none"
    transposed: bool = False
    same_buffer: bool = False  # y is x itself (one buffer read twice) instead of a second buffer


CHOICES = {
    "shape": [(4, 6), (6, 4), (3, 8)],
    "dtype": ["float32", "int32"],
    "view_a": ["id", "flip0", "flip1", "pad_front", "pad_back"],
    "view_b": ["id", "flip0", "flip1", "pad_front", "pad_back"],
    "binary": ["add", "mul", "max", "sub"],
    "const": [2.0, 3.0, -1.0],
    "unary": ["id", "neg", "abs"],
    "reduce": ["none", "sum0", "sum1", "max0"],
    "transposed": [False, True],
    "same_buffer": [False, True],
}


def _view(v, name: str, numpy: bool):
    """A shape-keeping view: identity, a flip, or the rows shifted by one with zeros padded in."""
    if name == "id":
        return v
    if name in ("flip0", "flip1"):
        axis = int(name[-1])
        return np.flip(v, axis) if numpy else v.flip(axis)
    if name == "pad_front":  # rows 0..n-2 moved down one, a row of zeros on top
        return np.pad(v[:-1], ((1, 0), (0, 0))) if numpy else v[:-1].pad((0, 0, 1, 0))
    assert name == "pad_back"
    return np.pad(v[1:], ((0, 1), (0, 0))) if numpy else v[1:].pad((0, 0, 0, 1))


def _run(spec: Spec, x, y, numpy: bool):
    if spec.transposed:
        x, y = x.T, y.T
    y = x if spec.same_buffer else y
    a, b = _view(x, spec.view_a, numpy), _view(y, spec.view_b, numpy)
    if spec.binary == "add":
        v = a + b
    elif spec.binary == "mul":
        v = a * b
    elif spec.binary == "sub":
        v = a - b
    else:
        v = np.maximum(a, b) if numpy else a.maximum(b)
    c = spec.const if spec.dtype == "float32" else int(spec.const)
    v = v * (np.asarray(c, dtype=spec.dtype) if numpy else c)
    if spec.unary == "neg":
        v = -v
    elif spec.unary == "abs":
        v = abs(v)
    if spec.reduce == "sum0":
        v = v.sum(0)
    elif spec.reduce == "sum1":
        v = v.sum(1)
    elif spec.reduce == "max0":
        v = v.max(0) if numpy else v.amax(0)
    return v


def _inputs(spec: Spec, seed: int):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(spec.shape) * 4).astype(spec.dtype)
    y = (rng.standard_normal(spec.shape) * 4).astype(spec.dtype)
    return x, y


def _check(spec: Spec, seed: int) -> None:
    x, y = _inputs(spec, seed)
    expected = _run(spec, x.astype(np.float64) if spec.dtype == "float32" else x, y, numpy=True)
    got = _run(spec, lazygrad.tensor(x).realize(), lazygrad.tensor(y).realize(), numpy=False).numpy()
    assert got.shape == expected.shape, spec
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4, err_msg=str(spec))


def _fuzzed_pairs(count: int, seed: int) -> list:
    rng = random.Random(seed)
    pairs = []
    fields = list(CHOICES)
    while len(pairs) < count:
        spec = Spec(**{f: rng.choice(CHOICES[f]) for f in fields})
        field = fields[len(pairs) % len(fields)]  # every kind of difference, in turn
        other = rng.choice([c for c in CHOICES[field] if c != getattr(spec, field)])
        pairs.append((spec, dataclasses.replace(spec, **{field: other})))
    return pairs


@pytest.mark.parametrize("first,second", _fuzzed_pairs(10, seed=19), ids=lambda s: "")
def test_graphs_differing_in_one_thing_give_their_own_values(first, second):
    _check(first, seed=1)
    made, reused = _counts()
    _check(first, seed=2)  # the same structure on other data: the first's plan
    assert _counts() == (made, reused + 3), "the second run of one structure (two uploads, one graph) is not reused"
    _check(second, seed=3)
    _check(first, seed=4)
    _check(second, seed=5)


def test_zero_and_negative_zero_constants_are_different_graphs():
    x = lazygrad.tensor(np.array([1.0, 2.0], dtype=np.float32))
    assert ((1 / (x * 0.0)).numpy() == np.inf).all()
    assert ((1 / (x * -0.0)).numpy() == -np.inf).all()
    assert ((1 / (x * 0.0)).numpy() == np.inf).all()


# --- an eager training loop: "Learning PyTorch with examples", the polynomial fit ------------------------
def _polynomial_fit(lib, steps: int, coefficients, learning_rate=1e-6, on_step=None) -> list:
    """The tutorial's loop, written once for torch and lazygrad (the same names)."""
    x = lib.linspace(-math.pi, math.pi, 2000)
    y = x.sin()
    a, b, c, d = (lib.tensor(v, requires_grad=True) for v in coefficients)
    losses = []
    for step in range(steps):
        y_pred = a + b * x + c * x**2 + d * x**3
        loss = (y_pred - y).pow(2).sum()
        losses.append(loss.item())
        loss.backward()
        with lib.no_grad():
            for p in (a, b, c, d):
                p -= learning_rate * p.grad
                p.grad = None
        if on_step is not None:
            on_step(step)
    return losses


COEFFICIENTS = (0.3, -0.2, 0.1, 0.05)


def test_polynomial_fit_matches_torch_and_reuses_its_schedules():
    torch = pytest.importorskip("torch")
    compiled, made = [], []

    def on_step(step):
        if step in (2, 49):  # the first steps differ: no update yet, then the first update of fresh uploads
            compiled.append(profile.compiled)
            made.append(runtime.schedule_counts["made"])

    with lazygrad.profile(timed=False) as profile:
        losses = _polynomial_fit(lazygrad, 50, COEFFICIENTS, on_step=on_step)
    expected = _polynomial_fit(torch, 50, COEFFICIENTS)
    np.testing.assert_allclose(losses, expected, rtol=2e-4)
    assert compiled[0] == compiled[1], "kernels were compiled after the third step"
    assert made[0] == made[1], "steps after the third were scheduled again instead of reusing their plan"


def test_plans_and_compiled_kernels_keep_no_kernel_asts_or_linear_ir():
    """What a plan and the kernel cache keep is what a launch needs: no kernel AST (KernelOps and their views)
    and no linear IR (UOps), which the garbage collector would otherwise walk at every full collection. The
    kernels are found again after the plans are dropped, and give the same values."""
    from lazygrad.codegen.ir import UOp
    from lazygrad.codegen.kernel_ast import KernelOp

    x = lazygrad.tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    before, plans_before = len(runtime._kernel_cache), set(runtime._plans)
    first = ((x * 3.0).exp2().sum(1) + 1.0).numpy()
    steps = [step for key, plan in runtime._plans.items() if key not in plans_before for step in plan]
    assert steps and all(step.ast is None for step in steps), "a plan kept a kernel AST after its kernel was found"
    entries = list(runtime._kernel_cache.items())[before:]
    assert entries, "the graph compiled no new kernel: the check below would check nothing"
    for key, entry in entries:
        assert not any(isinstance(part, KernelOp) for part in key), "the kernel cache is keyed by an AST"
        if entry.kernel.program is not None and lazygrad.Device.DEFAULT != "reference":  # (it interprets the IR)
            assert not any(isinstance(u, UOp) for u in entry.kernel.program.uops), "a compiled kernel kept its IR"
    with runtime.forced_options(lambda name, nest: None):  # drops the plans: the kernels are looked up again
        again = ((x * 3.0).exp2().sum(1) + 1.0).numpy()
    np.testing.assert_allclose(first, np.exp2(np.arange(12).reshape(3, 4) * 3.0).sum(1) + 1.0, rtol=1e-6)
    np.testing.assert_array_equal(again, first)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.backend_independent  # once, on the default backend: 10,000 steps take a while
def test_memory_stays_flat_over_ten_thousand_eager_steps():
    """RSS, device memory, the graph's node cache and the plans stay where they were after warm-up, over
    10,000 steps of the polynomial fit (RSS: the process's own count, no walk over Python's objects)."""
    marks = {}

    def on_step(step):
        if step in (1000, 9999):
            marks[step] = (
                _resident_bytes(),
                runtime.Buffer.live_bytes,
                runtime.POOL.bytes_held,
                len(runtime._plans),
                len(lazygrad.graph._CONSED),
            )

    losses = _polynomial_fit(lazygrad, 10_000, COEFFICIENTS, on_step=on_step)
    assert losses[-1] < losses[0]
    (rss_before, *state_before), (rss_after, *state_after) = marks[1000], marks[9999]
    assert state_after == state_before, "device memory, the pool, the plans or the node cache grew"
    assert rss_after - rss_before < 2 * 2**20, f"RSS grew {(rss_after - rss_before) / 2**20:.1f} MiB in 9,000 steps"


@pytest.mark.backend_independent  # the LLVM backend's own bookkeeping, whichever backend the run tests
def test_llvm_launch_addresses_are_the_buffers_own():
    """An LLVM launch takes each buffer's address from a table filled at allocation (numpy's .ctypes.data is
    slow): it must give numpy's address for a buffer it allocated, for an array it did not, for a freed one, and
    for a new array that reuses the id of an allocated one that died."""
    from lazygrad import backends

    llvm = backends.get("llvm")
    handle = llvm.allocate(100)
    assert llvm.address(handle) == handle.ctypes.data and llvm.address(handle) % 64 == 0
    foreign = np.zeros(16, np.uint8)
    assert llvm.address(foreign) == foreign.ctypes.data
    llvm.free(handle, 100)
    assert llvm.address(handle) == handle.ctypes.data
    dead = llvm.allocate(8)
    dead_id = id(dead)
    del dead  # dropped without free: its entry stays, and CPython soon gives its id to a new array
    reused = 0
    for _ in range(100):
        other = np.zeros(8, np.uint8)
        reused += id(other) == dead_id
        assert llvm.address(other) == other.ctypes.data
    print(f"{reused} of 100 new arrays had the dead buffer's id")


def test_shared_constant_nodes_keep_their_value_shape_and_dtype():
    """Equal constants share one node per (value, shape, dtype, device): constants that differ in any of these
    (0.0 and -0.0 included) must still give their own values."""
    x = lazygrad.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    cases = {
        "float 1.0": (lazygrad.full((2, 3), 1.0), np.ones((2, 3), np.float32)),
        "int 1": (lazygrad.full((2, 3), 1), np.ones((2, 3), np.int64)),
        "other shape": (lazygrad.full((3, 2), 1.0), np.ones((3, 2), np.float32)),
        "x * 1.0 + x * 2.0": (x * 1.0 + x * 2.0, np.arange(6, dtype=np.float32).reshape(2, 3) * 3),
        "1 / -0.0": (1 / lazygrad.full((2, 3), -0.0), np.full((2, 3), -np.inf, np.float32)),
        "1 / 0.0": (1 / lazygrad.full((2, 3), 0.0), np.full((2, 3), np.inf, np.float32)),
    }
    for name, (tensor, expected) in cases.items():
        assert tensor.dtype.np == expected.dtype, name
        np.testing.assert_array_equal(tensor.numpy(), expected, err_msg=name)


def test_values_held_from_before_an_update_keep_the_old_values_when_the_schedule_adds_them():
    """A value a tensor holds, computed from a buffer an update overwrites, is added to the update's schedule
    (the stale-reader rule); the scheduler walks only what it adds, beside nodes already collected. Run twice: the
    second step reuses the first one's plan."""
    start = np.array([1.0, -2.0, 3.0], np.float32)
    w = lazygrad.tensor(start).realize()
    expected = start.copy()
    for _ in range(2):
        shared = w * 2  # read by the update and by the held values
        held_sum = (shared + w).sum()  # reads w itself and `shared`: not part of the update's graph
        held_exp = (w - 1).exp()
        w.sub_(shared * 0.25)
        np.testing.assert_allclose(w.numpy(), expected - expected * 2 * 0.25, rtol=1e-6)
        np.testing.assert_allclose(held_sum.item(), (expected * 3).sum(), rtol=1e-6)
        np.testing.assert_allclose(held_exp.numpy(), np.exp(expected - 1), rtol=1e-6)
        expected = expected - expected * 2 * 0.25


@pytest.mark.backend_independent  # builds graphs only: nothing runs
def test_the_frontends_elementwise_path_builds_the_node_alu_builds_and_refuses_what_alu_refuses():
    from lazygrad.graph import LazyBuffer
    from lazygrad.ops import Op

    x, y = lazygrad.Tensor.ones(3, 4).lazydata, lazygrad.Tensor.zeros(3, 4).lazydata
    # one hash-consed node whichever door builds it, with alu's result dtype
    assert LazyBuffer.elementwise(Op.ADD, (x, y)) is x.alu(Op.ADD, y)
    assert LazyBuffer.elementwise(Op.CMPLT, (x, y)) is x.alu(Op.CMPLT, y)
    assert LazyBuffer.elementwise(Op.CMPLT, (x, y)).dtype is lazygrad.bool
    cast = LazyBuffer.elementwise(Op.CAST, (x,), arg=lazygrad.int32, dtype=lazygrad.int32)
    assert cast is x.alu(Op.CAST, arg=lazygrad.int32, dtype=lazygrad.int32) and cast.dtype is lazygrad.int32
    with pytest.raises(AssertionError, match=r"\(3, 4\)"):  # operands of two shapes: broadcasting comes first
        LazyBuffer.elementwise(Op.ADD, (x, lazygrad.Tensor.ones(4).lazydata))
    with pytest.raises(ValueError, match="takes 2 operands"):
        LazyBuffer.elementwise(Op.ADD, (x,))
    with pytest.raises(TypeError, match="does not compute on float32"):
        LazyBuffer.elementwise(Op.XOR, (x, y))


@pytest.mark.backend_independent  # builds graphs only: nothing runs
def test_several_moves_as_one_view_node_are_the_moves_one_by_one():
    from lazygrad.ops import Op

    x = (lazygrad.Tensor.ones(2, 3, 4) + lazygrad.Tensor.rand(2, 3, 4)).lazydata  # a base
    chains = [
        ((Op.SHRINK, ((0, 2), (1, 2), (0, 4))), (Op.RESHAPE, (2, 4)), (Op.PAD, ((0, 0), (1, 2)))),
        ((Op.PERMUTE, (2, 0, 1)), (Op.PAD, ((0, 0),) * 3), (Op.RESHAPE, (4, 6))),  # a pad that changes nothing
        ((Op.RESHAPE, (6, 4)), (Op.RESHAPE, (2, 3, 4))),  # back to the whole base
        ((Op.PAD, ((0, 0), (0, 0), (0, 0))),),  # nothing at all
    ]
    for chain in chains:
        one_by_one = x
        for op, arg in chain:
            one_by_one = one_by_one.move(op, arg)
        together = x.moved(chain)
        assert together.st == one_by_one.st and together.movement == one_by_one.movement, chain
        assert together.base is x and (together is x) == (one_by_one is x)

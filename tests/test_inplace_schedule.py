"""In-place updates through values held from before them: the scheduler's order of assigns (schedule.py).

PyTorch runs every line when it is written, so a value computed before `b.add_(1)` keeps b's old values and one
computed after sees the new ones. lazygrad computes them later, in one schedule: each kernel that reads a
buffer's old value must run before the assign that overwrites it, and each that reads the new one after. Fusion
and the multi-output merges must not put an old and a new read into one kernel that would then have to run both
before and after the assign. Every case is compared with numpy, on buffers realized before the sequence (assigns)
and on lazy ones (fresh buffers instead of assigns). All tensors have shape (4,), so the kernels are shared.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import lazygrad
from lazygrad import runtime
from lazygrad.schedule import Scheduler

SHAPE = (4,)


def _start(values: list, realized: bool) -> list:
    tensors = [lazygrad.Tensor(np.array(v, dtype=np.float32)) for v in values]
    if realized:
        for t in tensors:
            t.realize()
    return tensors


def _values(seed: int, count: int) -> list:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2, 2, SHAPE).astype(np.float32) for _ in range(count)]


def _held_value_sequence(a, b):
    """The sequence that used to raise "schedule has a cycle": a value held from before b's update is added
    into a, after a value reading a's old and b's new values was taken."""
    t = b * 1
    b.add_(1)
    mixed = a + b
    a.add_(t)
    return t, mixed


@pytest.mark.parametrize("realized", [True, False], ids=["realized", "lazy"])
def test_a_held_value_read_across_two_updates_keeps_pytorchs_values(realized):
    an, bn = _values(0, 2)
    a, b = _start([an, bn], realized)
    t, mixed = _held_value_sequence(a, b)
    np.testing.assert_allclose(a.numpy(), an + bn, rtol=1e-6)  # a realized first: t and mixed come along
    np.testing.assert_allclose(mixed.numpy(), an + (bn + 1), rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), bn + 1, rtol=1e-6)
    np.testing.assert_allclose(t.numpy(), bn, rtol=1e-6)


def test_a_value_no_tensor_holds_any_more_is_computed_before_the_update_it_precedes():
    """Without a tensor holding t, it would be fused into a's update, which must wait for `mixed`, which waits for
    b's update, which must wait for every read of b's old values: t gets a buffer of its own ("assign-order")."""
    an, bn = _values(1, 2)
    a, b = _start([an, bn], True)
    t, mixed = _held_value_sequence(a, b)
    del t
    scheduler = Scheduler([a.lazydata])
    scheduler.schedule()
    assert "assign-order" in scheduler.realize.values(), scheduler.realize
    np.testing.assert_allclose(a.numpy(), an + bn, rtol=1e-6)
    np.testing.assert_allclose(mixed.numpy(), an + (bn + 1), rtol=1e-6)


def test_the_same_structure_runs_its_plan_again_with_other_values():
    """runtime.realize reuses the plan of an equal structure: the second run must take its own buffers' values."""
    results = []
    for seed in (2, 3):
        an, bn = _values(seed, 2)
        a, b = _start([an, bn], True)
        t, mixed = _held_value_sequence(a, b)
        del t
        before = runtime.schedule_counts["reused"]
        got_a = a.numpy()
        results.append(runtime.schedule_counts["reused"] - before)
        np.testing.assert_allclose(got_a, an + bn, rtol=1e-6)
        np.testing.assert_allclose(mixed.numpy(), an + (bn + 1), rtol=1e-6)
        np.testing.assert_allclose(b.numpy(), bn + 1, rtol=1e-6)
    assert results[1] >= 1, "the second sequence should have reused the first one's plan"


def test_a_kernel_reading_one_buffer_both_before_and_after_its_update_is_a_clear_error():
    """A tensor made of x's node (not a view of x, which would follow the update) still names the old buffer after
    x's update, so `stale + x` reads the old and the new values of one buffer in one kernel: no order is right, and
    the error says so instead of giving a wrong value."""
    x = lazygrad.Tensor(np.arange(4, dtype=np.float32)).realize()
    alias = lazygrad.Tensor(x.lazydata)
    x.add_(1)
    with pytest.raises(RuntimeError, match=r"schedule has a cycle.*assign into float32\[4\]"):
        (alias + x).numpy()


def test_a_value_reading_old_data_through_a_node_of_the_first_pass_is_kept_from_before_the_update():
    """Scheduler finds stale values in passes: `old_sum` reads w's buffer directly, so the first pass makes it a
    target; the second pass collects its sources, among them `tripled`, which reads w's old data only through
    `doubled`, a node the first pass collected (as a source of the update). `tripled` is held by a tensor, so it
    must be computed now, from the old data: the second pass must know that `doubled` reads old data."""
    (wn,) = _values(4, 1)
    (w,) = _start([wn], True)
    doubled = w * 2.0
    tripled = doubled * 3.0
    old_sum = w + tripled
    w.assign(doubled + 10.0)
    del doubled  # held only through the graph: not a target of its own
    scheduler = Scheduler([w.lazydata])
    assert any(n is tripled.lazydata.base for n in scheduler.targets), "tripled was not made a target"
    w.realize()
    np.testing.assert_allclose(w.numpy(), wn * 2 + 10, rtol=1e-6)
    np.testing.assert_allclose(tripled.numpy(), wn * 6, rtol=1e-6)
    np.testing.assert_allclose(old_sum.numpy(), wn + wn * 6, rtol=1e-6)


# --- a fuzzer: random in-place sequences against numpy ---------------------------------------------------
N_TENSORS = 3


def _random_program(rng: random.Random, length: int) -> list:
    """Steps: ("hold", source, const) takes a value, ("update", kind, target, source, flip) updates a tensor
    in place, ("realize", tensor or held index) realizes something now. A source is ("tensor", i), ("held", j)
    or ("sum", i, j) (tensor i plus held j: an old and a new value read together)."""
    steps, held = [], 0

    def source():
        choice = rng.random()
        if held and choice < 0.4:
            return ("held", rng.randrange(held))
        if held and choice < 0.6:
            return ("sum", rng.randrange(N_TENSORS), rng.randrange(held))
        return ("tensor", rng.randrange(N_TENSORS))

    for _ in range(length):
        roll = rng.random()
        if roll < 0.3:
            steps.append(("hold", source(), rng.choice([1.0, 2.0, -0.5])))
            held += 1
        elif roll < 0.85:
            kind = rng.choice(["add_", "mul_", "copy_"])
            steps.append(("update", kind, rng.randrange(N_TENSORS), source(), rng.random() < 0.25))
        else:
            steps.append(("realize", rng.choice(["tensor", "held"]) if held else "tensor"))
            steps[-1] += (rng.randrange(N_TENSORS if steps[-1][1] == "tensor" else held),)
    return steps


def _run(program: list, start: list, lib) -> list:
    """The program on lazygrad tensors (lib=lazygrad) or numpy arrays (lib=np), returning every tensor and
    every held value at the end."""
    if lib is np:
        tensors = [v.copy() for v in start]
    else:
        tensors = start
    held = []

    def value(src):
        if src[0] == "tensor":
            return tensors[src[1]]
        if src[0] == "held":
            return held[src[1]]
        return tensors[src[1]] + held[src[2]]

    for step in program:
        if step[0] == "hold":
            held.append(value(step[1]) * step[2])
        elif step[0] == "update":
            _, kind, target, src, flip = step
            operand = value(src)
            if flip:
                operand = np.flip(operand, 0) if lib is np else operand.flip(0)
            if lib is np:  # numpy updates in place too; copy first where the operand may alias the target
                operand = np.array(operand)
                if kind == "add_":
                    tensors[target] += operand
                elif kind == "mul_":
                    tensors[target] *= operand
                else:
                    tensors[target][...] = operand
            else:
                getattr(tensors[target], kind)(operand)
        elif lib is not np:
            (tensors if step[1] == "tensor" else held)[step[2]].realize()
    return [*tensors, *held]


@pytest.mark.parametrize("realized", [True, False], ids=["realized", "lazy"])
def test_random_in_place_sequences_match_numpy(realized):
    rng = random.Random(19)
    for case in range(12):
        program = _random_program(rng, 8)
        start_values = _values(100 + case, N_TENSORS)
        expected = _run(program, start_values, np)
        got = _run(program, _start(start_values, realized), lazygrad)
        for index, (g, e) in enumerate(zip(got, expected)):
            np.testing.assert_allclose(
                g.numpy(), e, rtol=1e-5, atol=1e-6, err_msg=f"case {case}, value {index}, program {program}"
            )

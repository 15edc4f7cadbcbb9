"""Fusion, counted: how many kernels a computation launches once its inputs are realized.

`lazygrad.profile()` counts kernel launches (`kernels`) and host transfers (`copies`; reading a result back
is one). Each test states the kernel budget of one pattern and checks the values too.
"""

import math
import sys

import numpy as np
import pytest
from helpers import rand

import lazygrad
from lazygrad import Tensor, runtime, schedule


def realized(*arrays):
    tensors = [Tensor(a) for a in arrays]
    lazygrad.realize(*tensors)
    return tensors


def run_counted(fn):
    """fn()'s result as numpy, and the profile of computing it."""
    with lazygrad.profile() as p:
        out = fn()
        values = out.numpy()
    return values, p


def test_elementwise_then_reduce_then_elementwise_is_one_kernel():
    a, b, c = rand(4, 5, seed=1), rand(4, 5, seed=2), rand(4, 5, seed=3)
    ta, tb, tc = realized(a, b, c)
    values, p = run_counted(lambda: ((ta + tb) * tc).sum(1).exp())
    assert p.kernels == 1
    np.testing.assert_allclose(values, np.exp(((a + b) * c).sum(1)), rtol=1e-5)


def test_matmul_of_a_transposed_input_is_one_kernel_without_a_copy():
    a, b = rand(5, 4, seed=1), rand(5, 3, seed=2)
    ta, tb = realized(a, b)
    values, p = run_counted(lambda: ta.T @ tb)
    assert p.kernels == 1
    assert p.copies == 1  # the read-back only: the transpose is a view, never materialized
    np.testing.assert_allclose(values, a.T @ b, rtol=1e-5, atol=1e-6)


def test_chain_of_ten_elementwise_ops_is_one_kernel():
    (ta,) = realized(rand(3, 7))

    def chain():
        x = ta
        for op in (
            lambda x: x * 1.5,
            lambda x: x + 0.25,
            lambda x: x.exp(),
            lambda x: x.sqrt(),
            lambda x: x - 1,
            lambda x: x.relu(),
            lambda x: x.sin(),
            lambda x: x.maximum(0.1),
            lambda x: x.log(),
            lambda x: -x,
        ):
            x = op(x)
        return x

    values, p = run_counted(chain)
    assert p.kernels == 1
    x = rand(3, 7)
    expected = -np.log(np.maximum(np.sin(np.maximum(np.sqrt(np.exp(x * 1.5 + 0.25)) - 1, 0)), 0.1))
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)


def test_a_chain_deeper_than_pythons_recursion_limit_is_cut_into_kernels_of_one_program():
    # `y = y * a + b` in a loop: 3,000 chained ops, past Python's default recursion limit, which the scheduler and
    # the code generator once reached (RecursionError) by walking a kernel recursively; and a kernel that deep took
    # LLVM many seconds to compile: the chain is cut into kernels _MAX_FUSED_DEPTH deep, all one program
    steps = sys.getrecursionlimit() + 500
    data = rand(5, seed=4)
    (x,) = realized(data)
    x.requires_grad = True

    def chain():
        y = x
        for _ in range(steps):
            y = y * 1.0005 + 0.001
        return y

    compiled = len(runtime._kernel_cache)
    values, p = run_counted(chain)
    assert p.kernels == math.ceil(2 * steps / schedule._MAX_FUSED_DEPTH)
    assert len(runtime._kernel_cache) - compiled <= 3  # the first piece, the pieces in between, the last
    expected = data.astype(np.float64)
    for _ in range(steps):
        expected = expected * 1.0005 + 0.001
    # float32 rounding of 3,000 ops (and OpenCL's contraction of each multiply-add into one fma) adds up to ~2e-4
    np.testing.assert_allclose(values, expected, rtol=2e-3)
    chain().sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(5, 1.0005**steps), rtol=1e-4)


def test_a_long_chain_of_in_place_updates_is_split_into_kernels_of_bounded_size():
    # each fold of an update into the kernel reading it built the grown kernel again: 400 updates took 100 s
    data = rand(6, seed=5)
    (x,) = realized(data)
    updates = 800
    with lazygrad.profile() as p:
        for _ in range(updates // 2):
            x.mul_(0.75).add_(1.0)
        values = x.numpy()
    expected = data.astype(np.float64)
    for _ in range(updates // 2):
        expected = expected * 0.75 + 1.0
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    assert updates / schedule._MAX_KERNEL_OUTPUTS <= p.kernels < updates / 4


@pytest.mark.parametrize(
    "view",
    [
        lambda x: x.permute(1, 0),
        lambda x: x[1:, ::2],
        lambda x: x.pad((1, 2, 0, 1)),
        lambda x: x.flip(0),
        lambda x: x.reshape(2, 10).T,
        lambda x: x[None].expand(3, 4, 5),
        lambda x: x.T[1:3].pad((1, 1)),
    ],
    ids=["permute", "slice", "pad", "flip", "reshape_T", "expand", "slice_pad"],
)
def test_a_view_consumed_by_elementwise_work_costs_no_kernel(view):
    data = rand(4, 5)
    (ta,) = realized(data)
    values, p = run_counted(lambda: (view(ta) * 2 + 1).exp())
    assert p.kernels == 1
    expected = np.exp(view(Tensor(data)).numpy() * 2 + 1)
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_views_of_two_inputs_fuse_into_one_kernel():
    a, b = rand(4, 5, seed=1), rand(5, 4, seed=2)
    ta, tb = realized(a, b)
    values, p = run_counted(lambda: (ta[:, 1:] * tb.T[:, :-1]).sum())
    assert p.kernels == 1
    np.testing.assert_allclose(values, (a[:, 1:] * b.T[:, :-1]).sum(), rtol=1e-5)


def test_reading_back_a_realized_tensor_runs_no_kernel():
    (ta,) = realized(rand(3, 3))
    values, p = run_counted(lambda: ta)
    assert p.kernels == 0 and p.copies == 1
    np.testing.assert_array_equal(values, rand(3, 3))


def test_conv2d_with_relu_is_one_kernel():
    x, w = rand(2, 3, 16, 16, seed=1), rand(4, 3, 3, 3, seed=2)
    tx, tw = realized(x, w)
    _, p = run_counted(lambda: tx.conv2d(tw, padding=1).relu())
    assert p.kernels == 1


def test_conv2d_on_a_narrow_feature_map_copies_its_windows_out_once():
    # rows narrower than a vector: the windows are copied out as columns, then one matrix-product kernel
    x, w = rand(2, 3, 6, 6, seed=1), rand(4, 3, 3, 3, seed=2)
    tx, tw = realized(x, w)
    _, p = run_counted(lambda: tx.conv2d(tw, padding=1).relu())
    assert p.kernels == 2


def test_backward_does_no_work():
    x, w = realized(rand(8, 5, seed=1), rand(5, 3, seed=2))
    w.requires_grad_()
    loss = (x @ w).relu().log_softmax(-1).mean()
    with lazygrad.profile() as p:
        loss.backward()
    assert p.kernels == 0 and p.copies == 0 and p.compiled == 0
    assert w.grad is not None and w.grad.shape == (5, 3)


def test_building_a_graph_does_no_work():
    (ta,) = realized(rand(4, 4))
    with lazygrad.profile() as p:
        out = (ta @ ta.T).softmax(-1).max(0).values + ta.mean()
    assert p.kernels == 0 and p.copies == 0 and p.compiled == 0
    assert out.shape == (4,)


def test_the_same_kernel_is_compiled_once():
    a, b = realized(rand(6, 7, seed=1), rand(6, 7, seed=2))
    run_counted(lambda: (a * 3.5 - b).tanh())
    _, p = run_counted(lambda: (b * 3.5 - a).tanh())
    assert p.kernels == 1 and p.compiled == 0


def test_shared_subexpressions_are_scheduled_and_lowered_once():
    # was: each shared subexpression was walked once per path to it (exponential in the DAG's depth)
    (x,) = realized(np.array([0.1, 0.2], dtype=np.float32))
    y, expected = x, np.array([0.1, 0.2], dtype=np.float32)
    for _ in range(9):
        y, expected = y * y + y, expected * expected + expected
    from lazygrad.codegen import lowering

    visits = {"ast": 0, "lowering": 0}

    def counted(cls, name, key):
        real = getattr(cls, name)

        def wrapper(*args, **kwargs):
            visits[key] += 1
            return real(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        # each node met is asked once whether it is a leaf, and computed once
        mp.setattr(schedule.Scheduler, "_leaf_ast", counted(schedule.Scheduler, "_leaf_ast", "ast"))
        mp.setattr(lowering.Lowerer, "_node_value", counted(lowering.Lowerer, "_node_value", "lowering"))
        values, p = run_counted(lambda: y)
    assert p.kernels == 1
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    # 9 rounds of 2 ops: a walk per node is ~20 visits; a walk per path would be ~2**9
    assert visits["ast"] < 60 and visits["lowering"] < 200, visits


def test_a_reduce_read_through_two_views_is_not_folded_into_its_reader():
    # the reader needs the sum at (i, j) and at (i, 3 - j): one accumulator per output cannot give both
    g, x = rand(2, 3, 4, seed=1), rand(3, 4, seed=2)
    tg, tx = realized(g, x)
    s = tg.sum(0)
    values, _ = run_counted(lambda: s.flip(1) * tx.flip(1) + (s.flip(1) * tx).flip(1))
    sn = g.sum(0)
    np.testing.assert_allclose(values, sn[:, ::-1] * x[:, ::-1] + (sn[:, ::-1] * x)[:, ::-1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows, kernels", [(256, 3), (8, 2)])
def test_a_long_elementwise_kernel_over_many_elements_is_not_computed_in_a_product_it_reads(rows, kernels):
    # GELU of a product that another kernel reads too (as the backward reads GELU's input): with 65,536 outputs or
    # more it gets a vectorized kernel of its own; a small one is computed in the product's loop, as an extra output
    a, b = rand(rows, 64, seed=1), rand(64, 256, seed=2)
    ta, tb = realized(a, b)
    with lazygrad.profile() as p:
        product = ta @ tb
        activated, column_sums = product.gelu(), product.sum(0)
        lazygrad.realize(activated, column_sums)
    assert p.kernels == kernels
    expected = a.astype(np.float64) @ b
    np.testing.assert_allclose(column_sums.numpy(), expected.sum(0), rtol=1e-4, atol=1e-3)
    gelu = 0.5 * expected * (1 + np.vectorize(math.erf)(expected / math.sqrt(2)))
    np.testing.assert_allclose(activated.numpy(), gelu, rtol=1e-4, atol=1e-5)

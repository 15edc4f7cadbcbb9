"""The code generator's choices, checked by their values.

- Cache blocking (LLVM only) splits a matrix product's reduce into chunks and keeps the partial sums in
  the output that holds the plain sum; outputs computed from the sum (an optimizer's update fused into
  the weight gradient's kernel) are written after the last chunk. Each test also asserts, on LLVM, that
  the kernel it is about was blocked, so that it tests what it says; on OpenCL it checks the values.
- An optimizer update fused into a weight gradient does not take its lanes (the update's loads run once per output).
- Products with a full tile of output lanes unroll a long reduce by 4 (LLVM: the loop's trip count says so),
  and a blocked one keeps its L1-sized chunks; a transposed copy over long rows takes a scalar tile.
- Index arithmetic: the simplifier against plain integer arithmetic, and the constant per-lane offsets
  that let an interleave load vectors.
- Rows that do not fill the vectors, big reductions to one value (split in two kernels), and the
  profiler's FLOP count.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import lazygrad
from lazygrad import Tensor, runtime
from lazygrad.codegen import layout
from lazygrad.codegen.lowering import KernelOptions
from lazygrad.ops import IrOp

torch = pytest.importorskip("torch")


@pytest.fixture
def lowered_programs(monkeypatch):
    """The programs lowered while the test runs (a fresh kernel cache, so every kernel is looked up)."""
    programs = []
    lowered = runtime._lowered

    def recording(*args, **kwargs):
        program = lowered(*args, **kwargs)
        programs.append(program)
        return program

    monkeypatch.setattr(runtime, "_kernel_cache", {})
    monkeypatch.setattr(runtime, "_lowered", recording)
    return programs


def blocked(programs) -> list:
    return [p.name for p in programs if any(u.op is IrOp.RANGE and u.arg[0] == "kc" for u in p.uops)]


def test_blocked_matrix_product_matches_numpy(lowered_programs, backend):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((392, 4608)).astype(np.float32)
    b = rng.standard_normal((512, 4608)).astype(np.float32)
    got = (Tensor(a) @ Tensor(b).T).numpy()
    want = a.astype(np.float64) @ b.T.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    if backend == "llvm":
        assert blocked(lowered_programs), "expected the product to be cache-blocked"


def test_blocked_weight_gradient_with_fused_sgd_update(lowered_programs, backend):
    # a conv layer's weight gradient as a product of columns, the momentum update fused into its kernel
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1568, 2304)).astype(np.float32)
    gy = rng.standard_normal((1568, 256)).astype(np.float32)
    w0 = rng.standard_normal((2304, 256)).astype(np.float32) * 0.01
    w = Tensor(w0, requires_grad=True)
    opt = lazygrad.optim.SGD([w], lr=0.01, momentum=0.9)
    for _ in range(2):
        ((Tensor(x) @ w) * Tensor(gy)).sum().backward()
        opt.step()
        opt.zero_grad()
    grad = x.astype(np.float64).T @ gy.astype(np.float64)  # the same each step: the loss is linear in w
    buf = grad
    want = w0 - 0.01 * buf
    buf = 0.9 * buf + grad
    want = want - 0.01 * buf
    np.testing.assert_allclose(w.numpy(), want, rtol=1e-4, atol=1e-4)
    if backend == "llvm":
        assert blocked(lowered_programs), "expected the weight gradient to be cache-blocked"


def test_strided_conv_weight_gradient_blocked_one_image_at_a_time_with_a_wide_tile(lowered_programs, backend):
    # a stem-like 7x7 stride-2 conv: the input (2 x 150K floats) is read again by every output-channel tile, and
    # one image's share (150K) is more than the usual chunk allows but fits the cache: chunks of one image; and a
    # long reduce over batch and pixels (a conv's weight gradient) takes a 24-accumulator tile on 16-lane vectors
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    gy = rng.standard_normal((2, 32, 112, 112)).astype(np.float32)
    w = Tensor(rng.standard_normal((32, 3, 7, 7)).astype(np.float32), requires_grad=True)
    Tensor(x).conv2d(w, stride=2, padding=3).backward(Tensor(gy))
    tw = torch.tensor(w.numpy(), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64), tw, stride=2, padding=3).backward(
        torch.tensor(gy, dtype=torch.float64)
    )
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-4, atol=2e-3)
    if backend == "llvm" and layout.vector_width("llvm") >= 16:
        program = next(p for p in lowered_programs if p.name.startswith("r_32_3_7_7_2_112_112"))
        chunks = next(u.arg[1] for u in program.uops if u.op is IrOp.RANGE and u.arg[0] == "kc")
        assert chunks == 2, "expected the weight gradient blocked in chunks of one image"
        assert sum(u.op is IrOp.ACC for u in program.uops) == 24


def test_col2im_over_channel_last_columns_runs_along_the_channels(lowered_programs, backend):
    # a 14x14 conv's input gradient: columns (n, oh, ow, cin, kh, kw) put back by col2im, whose nine loads would
    # each jump a whole pixel of columns per output column: its loop runs innermost along the channels instead
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((4, 128, 14, 14)).astype(np.float32), requires_grad=True)
    w = rng.standard_normal((16, 128, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((4, 16, 14, 14)).astype(np.float32)
    x.conv2d(Tensor(w), padding=1).backward(Tensor(gy))
    tx = torch.tensor(x.numpy(), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(tx, torch.tensor(w, dtype=torch.float64), padding=1).backward(
        torch.tensor(gy, dtype=torch.float64)
    )
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-3)
    names = [p.name for p in lowered_programs]
    assert any(name.startswith("e_4_14_14_128_") for name in names), names


def reduce_steps(program) -> list:
    """The trip counts of a program's reduce loops (the "r..." ranges)."""
    return [u.arg[1] for u in program.uops if u.op is IrOp.RANGE and u.arg[0].startswith("r")]


def test_products_with_output_lanes_unroll_their_long_reduce_and_keep_l1_sized_chunks(
    lowered_programs, backend, monkeypatch
):
    # a weight gradient over 2048 tokens (cache-blocked) and a 256-long product, both with a 4x4 tile of output
    # lanes: the reduce unrolled by 4; the blocked one still in chunks of 128 (an unrolled step reads 4 elements'
    # rows, so chunks are not allowed 4x longer). On an AVX-512 CPU whatever this host is (AVX2's 16 registers take
    # 8-accumulator tiles, which are not unrolled: test_register_tiles_and_cache_blocks_are_sized_for_the_cpu)
    from lazygrad import backends
    from lazygrad.codegen.capabilities import Capabilities

    if backend == "llvm":
        monkeypatch.setattr(backends.get("llvm"), "capabilities", Capabilities(vector_width=16, cache_blocking=True))
    rng = np.random.default_rng(2)
    grad, x = rng.standard_normal((2048, 512)).astype(np.float32), rng.standard_normal((2048, 256)).astype(np.float32)
    a, w = rng.standard_normal((512, 256)).astype(np.float32), rng.standard_normal((256, 128)).astype(np.float32)
    weight_grad = (Tensor(grad).T @ Tensor(x)).numpy()
    product = (Tensor(a) @ Tensor(w)).numpy()
    np.testing.assert_allclose(weight_grad, grad.T.astype(np.float64) @ x, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(product, a.astype(np.float64) @ w, rtol=1e-4, atol=1e-4)
    if backend == "llvm":
        blocked_program, plain = lowered_programs
        assert blocked(lowered_programs) == [blocked_program.name]
        chunks = next(u.arg[1] for u in blocked_program.uops if u.op is IrOp.RANGE and u.arg[0] == "kc")
        assert (chunks, reduce_steps(blocked_program)) == (2048 // 128, [128 // 4])
        assert reduce_steps(plain) == [256 // 4]


def test_a_transposed_copy_with_long_rows_takes_a_tile_along_the_rows_it_reads(lowered_programs, backend):
    # lanes would gather; scalar code reads 8 neighbours of one source row per iteration (8 stores) instead
    rng = np.random.default_rng(3)
    for shape, stores in (((512, 256), 8), ((128, 512), 1)):  # stored rows of 512, then of 128: too short
        w = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(Tensor(w).T.contiguous().numpy(), w.T)
        if backend == "llvm":
            program = lowered_programs[-1]
            assert sum(u.op is IrOp.STORE for u in program.uops) == stores, program.name


def test_blocked_product_with_lanes_along_the_reduce(lowered_programs, backend):
    # both inputs contiguous along the reduce: vector lanes run there and combine at the end of each chunk
    rng = np.random.default_rng(2)
    a = rng.standard_normal((8, 49, 2304)).astype(np.float32)
    w = rng.standard_normal((512, 2304)).astype(np.float32)
    got = (Tensor(a).reshape(8, 49, 1, 2304) * Tensor(w).reshape(1, 1, 512, 2304)).sum(3).numpy()
    want = np.einsum("npk,ck->npc", a.astype(np.float64), w.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    if backend == "llvm":
        assert blocked(lowered_programs), "expected the product to be cache-blocked"


# --- index arithmetic ------------------------------------------------------------------------------


@pytest.mark.backend_independent
def test_index_simplification_agrees_with_integer_arithmetic():
    """Random sums of variables times constants, divided and taken modulo by constants, simplified, then
    evaluated at every point of their variables' ranges: each must equal the plain integer result."""
    from itertools import product

    from lazygrad.symbolic import Var

    rng = np.random.default_rng(0)
    for _ in range(300):
        names = ["a", "b", "c"][: rng.integers(1, 4)]
        ranges = {n: int(rng.integers(1, 9)) for n in names}
        coefs = {n: int(rng.choice([1, 2, 3, 4, 7, 8, 16, 56, 112])) for n in names}
        const = int(rng.integers(0, 40))
        divisor = int(rng.choice([2, 3, 4, 8, 16, 56, 112, 224]))
        expr = sum((Var(n, 0, ranges[n] - 1) * coefs[n] for n in names), const)
        quotient, remainder = expr // divisor, expr % divisor
        for values in product(*[range(ranges[n]) for n in names]):
            point = dict(zip(names, values))
            plain = sum(coefs[n] * point[n] for n in names) + const
            assert quotient.substitute(point).value == plain // divisor, (expr.render(), divisor, point)
            assert remainder.substitute(point).value == plain % divisor, (expr.render(), divisor, point)


@pytest.mark.backend_independent
def test_a_row_split_by_lanes_simplifies_to_constant_lane_offsets():
    # x = 16*tile + lane inside a 112-wide row of a (56, 2)-interleaved dim: lanes never cross the row
    from lazygrad.codegen.lowering import lane_offsets
    from lazygrad.symbolic import Var

    row, tile, lane = Var("row", 0, 111), Var("tile", 0, 6), Var("lane", 0, 15)
    x = tile * 16 + lane
    index = ((row * 112 + x) // 224) * 56 + x // 2
    assert lane_offsets(index, 16) == tuple(i // 2 for i in range(16))


# --- rows that do not fill the vectors -----------------------------------------------------------------


@pytest.mark.parametrize("size", [20, 28, 56, 100])
def test_reductions_over_rows_that_do_not_fill_the_vectors(size):
    # half-width lanes (56), scalars (20, 100), and values like exp(0) = 1 that padding must not add
    rng = np.random.default_rng(size)
    x = rng.standard_normal((37, size)).astype(np.float32) - 3
    y = rng.standard_normal((37, size)).astype(np.float32)
    tx, ty = Tensor(x), Tensor(y)
    np.testing.assert_allclose(tx.sum(1).numpy(), x.sum(1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(tx.max(1).values.numpy(), x.max(1), rtol=0, atol=0)
    np.testing.assert_allclose((tx * ty).sum(1).exp().numpy(), np.exp((x * y).sum(1)), rtol=1e-4)
    np.testing.assert_allclose(tx.exp().sum(1).numpy(), np.exp(x).sum(1), rtol=1e-5)


# --- big reductions to one value ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1 << 16, 1000003])
def test_big_reductions_to_one_value(n):
    # in two kernels (1024 partial results, then theirs), padded with the identity: parallel, and accurate
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    t = Tensor(x)
    with lazygrad.profile(timed=False) as p:
        total = t.sum().numpy()
    np.testing.assert_allclose(total, x.astype(np.float64).sum(), rtol=1e-5, atol=1e-3)
    assert p.kernels == 2
    assert t.max().item() == x.max() and t.min().item() == x.min()
    np.testing.assert_allclose(t.reshape(-1, 1).mean().item(), x.astype(np.float64).mean(), rtol=1e-4, atol=1e-6)
    ints = rng.integers(-1000, 1000, n).astype(np.int32)
    assert Tensor(ints).sum().item() == ints.sum() and Tensor(ints).max().item() == ints.max()
    w = Tensor(x, requires_grad=True)
    w.max().backward()
    grad = w.grad.numpy()
    assert grad.sum() == 1 and grad[x.argmax()] == 1


# --- the profiler's cost estimate --------------------------------------------------------------------


def test_profiler_counts_a_products_flops_and_its_epilogue_once_per_output():
    a, b = Tensor(np.ones((32, 48), np.float32)).realize(), Tensor(np.ones((48, 40), np.float32)).realize()
    with lazygrad.profile() as plain:
        (a @ b).realize()
    with lazygrad.profile() as epilogue:
        ((a @ b) * 2 + 1).realize()  # two more ops per output, not per multiply-add
    assert [k.flops for k in plain.launches] == [2 * 32 * 48 * 40]
    assert [k.flops for k in epilogue.launches] == [2 * 32 * 48 * 40 + 2 * 32 * 40]


# --- option records: printed with their reasons, replayed by hand ------------------------------------------------
def test_debug_prints_each_kernels_option_record_with_reasons(backend):
    code = (
        "import numpy as np, lazygrad as lg\n"
        "a = lg.tensor(np.ones((64, 96), np.float32)); b = lg.tensor(np.ones((96, 48), np.float32))\n"
        "print((a @ b).numpy().sum())\n"
    )
    env = dict(os.environ, LAZYGRAD_DEBUG="2", LAZYGRAD_BACKEND=backend, LAZYGRAD_CACHE_DIR="off")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    blocks = done.stdout.split("--- options of ")[1:]
    assert blocks, done.stdout[-2000:]
    product = next(b for b in blocks if b.startswith("r_64_48_96"))
    assert "tile=" in product.splitlines()[0]  # the record
    assert "\n  - tile" in product  # and why
    assert float(done.stdout.strip().splitlines()[-1]) == 64 * 48 * 96


@pytest.mark.parametrize(
    "options",
    [
        KernelOptions(upcast=[(0, 6)]),  # 6 does not divide 20
        KernelOptions(unroll=(2, 7)),  # nor 7 the reduce of 30
        KernelOptions(vector=(1, 4)),  # nor 4 the 14 columns
    ],
    ids=["tile", "unroll", "lanes"],
)
def test_options_that_do_not_fit_a_kernels_loops_are_refused(options):
    # a factor that does not divide its dim once lowered and ran, reading past the loops' ends: wrong values
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((20, 30)).astype(np.float32), rng.standard_normal((30, 14)).astype(np.float32)
    ta, tb = Tensor(a).realize(), Tensor(b).realize()
    with runtime.forced_options(lambda name, nest: options if nest.shape == (20, 14, 30) else None):
        with pytest.raises(ValueError, match=r"r_20_14_30\w* .* do not fit its loops: .* (divide|fit)"):
            (ta @ tb).numpy()


def test_a_kernel_replays_with_options_written_by_hand(lowered_programs, backend):
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((32, 200)).astype(np.float32), rng.standard_normal((200, 24)).astype(np.float32)
    heuristic = (Tensor(a) @ Tensor(b)).numpy()
    by_hand = KernelOptions(upcast=[(0, 2), (1, 3)], unroll=(2, 4), reasons=["written by hand"])
    chosen = []

    def choose(name, nest):
        if nest.shape != (32, 24, 200):
            return None
        chosen.append(name)
        return by_hand

    lowered_programs.clear()
    with runtime.forced_options(choose):
        replayed = (Tensor(a) @ Tensor(b)).numpy()
        assert runtime.kernel_options(_only_kernel_ast(a, b), chosen[0], None) is by_hand
    np.testing.assert_allclose(replayed, heuristic, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(replayed, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)
    (program,) = [p for p in lowered_programs if p.name == chosen[0]]
    assert sum(1 for u in program.uops if u.op is IrOp.ACC) == 6  # the 2x3 tile, as written
    assert "written by hand" in by_hand.describe() and "tile=[(0, 2), (1, 3)]" in by_hand.describe()


def _only_kernel_ast(a, b):
    """The kernel AST of a @ b (one kernel), as the scheduler hands it to the code generator."""
    from lazygrad.schedule import create_schedule

    items = create_schedule([(Tensor(a) @ Tensor(b)).lazydata])
    return next(item.ast for item in items if item.ast is not None)


def test_a_fused_optimizer_update_does_not_take_the_lanes_from_its_weight_gradient(lowered_programs, backend):
    # a strided conv's weight gradient (lanes over its output channels, the output gradient copied channel-last)
    # with SGD's momentum update fused in: the update's loads of the weight and its momentum, strided along the
    # channels, run once per output, not per step of the 1024-long reduce, and must not cost the reduce its lanes
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)  # rows of 32: the window view, no columns
    w0 = rng.standard_normal((16, 3, 7, 7)).astype(np.float32)
    projection = rng.standard_normal((1, 16, 32, 32)).astype(np.float32)
    results = []
    for lib in (torch, lazygrad):
        w = lib.tensor(w0, requires_grad=True)
        opt = (torch.optim if lib is torch else lazygrad.optim).SGD([w], lr=0.01, momentum=0.9, weight_decay=0.1)
        for _ in range(2):
            out = (torch.nn.functional if lib is torch else lazygrad.nn.functional).conv2d(
                lib.tensor(x), w, stride=2, padding=3
            )
            (out * lib.tensor(projection)).sum().backward()
            opt.step()
            opt.zero_grad()
        results.append(w.detach().numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-4, atol=1e-5 * np.abs(results[0]).max())
    if backend == "llvm":
        fused = [p for p in lowered_programs if p.name.startswith("r_16_3_7_7_") and len(p.buffer_dtypes) > 3]
        assert fused and all(any(u.vec > 1 for u in p.uops) for p in fused), [p.name for p in fused]


# --- a register tile's sums across lanes, combined as one tree (backends/llvm.py) ------------------------------------


@pytest.mark.parametrize("tile", [[(0, 4), (1, 4)], [(0, 3)]], ids=["16_accumulators", "3_accumulators"])
def test_a_tile_of_sums_and_maxima_along_lanes_matches_numpy(lowered_programs, backend, tile):
    # lanes along a reduce of 64 (attention's scores): each of the tile's accumulators is combined across its lanes
    # at the end; the LLVM renderer combines runs of them as one tree (16: one run; 3: a run of 2, then 1 alone)
    rng = np.random.default_rng(11)
    a = rng.standard_normal((12, 64)).astype(np.float32)
    b = rng.standard_normal((8, 64)).astype(np.float32)
    a[1, 5], a[2, :] = np.nan, -np.inf  # a NaN propagates through a maximum; a row of -inf stays -inf
    options = KernelOptions(vector=(2, 16), upcast=list(tile), reasons=["a tile of lane reductions"])
    chosen = []

    def choose(name, nest):
        if nest.shape != (12, 8, 64):
            return None
        chosen.append(name)
        return options

    with runtime.forced_options(choose):
        products = Tensor(a).reshape(12, 1, 64) * Tensor(b).reshape(1, 8, 64)
        sums, maxima = products.sum(2).numpy(), products.amax(2).numpy()
    assert len(set(chosen)) == 2, chosen  # the sum's kernel and the maximum's, both with the tile
    want = a.astype(np.float64)[:, None, :] * b.astype(np.float64)[None, :, :]
    finite = np.isfinite(want).all(axis=2)
    np.testing.assert_allclose(sums[finite], want.sum(2)[finite], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.isnan(maxima), np.isnan(want.max(2)))
    np.testing.assert_allclose(maxima, want.max(2).astype(np.float32), rtol=1e-6)  # NaN where NaN, -inf rows too


@pytest.mark.backend_independent
def test_llvm_renders_a_tile_of_lane_sums_as_one_tree():
    from lazygrad import dtype as dt
    from lazygrad.backends.llvm import render_llvm
    from lazygrad.codegen.lowering import build_loop_nest, lower

    a, b = np.ones((16, 64), np.float32), np.ones((16, 64), np.float32)
    ast = _only_kernel_ast(a, b.T)  # lanes along the 64-long reduce: both rows contiguous there
    nest = build_loop_nest(ast)
    options = KernelOptions(vector=(2, 16), upcast=[(0, 4), (1, 4)])
    program = lower(ast, (dt.float32,) * 3, "r_tile_of_lane_sums", options)
    assert nest.shape == (16, 16, 64) and sum(u.op is IrOp.HREDUCE for u in program.uops) == 16
    source = render_llvm(program, task=False)
    # one tree for the 16 sums: 8 + 4 + 2 + 1 pairs, each one add, and no reduction intrinsic per accumulator
    assert "llvm.vector.reduce" not in source
    assert source.count("fadd reassoc <16 x float>") == 15 and source.count("extractelement") >= 16


@pytest.mark.backend_independent
def test_a_register_tile_counts_an_epilogue_load_once_per_output_not_per_reduce_step():
    # attention's scores over heads, then a (queries, keys) mask read after the reduce. Counted once per reduce step,
    # the mask's loads outweighed the inputs' and the tile went along batch and heads, where neither input is reused
    from lazygrad.codegen.capabilities import Capabilities
    from lazygrad.codegen.lowering import build_loop_nest, choose_options
    from lazygrad.schedule import create_schedule

    rng = np.random.default_rng(12)
    q, k = (Tensor(rng.standard_normal((2, 4, 64, 64)).astype(np.float32)) for _ in range(2))
    hidden = Tensor(np.triu(np.ones((64, 64), dtype=bool), 1))
    scores = (q @ k.transpose(-2, -1)).masked_fill(hidden, float("-inf"))
    (ast,) = [item.ast for item in create_schedule([scores.lazydata]) if item.ast is not None]
    nest = build_loop_nest(ast)
    # an AVX-512 CPU (16 lanes, 32 registers, its caches) whatever this machine is (the answer would otherwise depend
    # on the host: 8 lanes and 16 registers on AVX2)
    sixteen_lanes = Capabilities(vector_width=16, cache_blocking=True)
    options = choose_options(nest, ast, sixteen_lanes)
    # (batch and heads merge into one dim: the inputs and the mask read them as one)
    assert nest.shape == (8, 64, 64, 64) and options.vector == (3, 16), options.describe()  # lanes along the reduce
    assert options.upcast == [(1, 4), (2, 4)], options.describe()  # 4 queries x 4 keys: each load feeds 4 sums


def _product_options(capabilities, m: int = 2048, k: int = 256, n: int = 1024):
    """The heuristics' options for an (m, k) @ (k, n) float32 product (GPT's MLP at batch 16 x 128) on a CPU with
    these capabilities."""
    from lazygrad.codegen.lowering import build_loop_nest, choose_options
    from lazygrad.schedule import create_schedule

    a, b = Tensor(np.ones((m, k), np.float32)), Tensor(np.ones((k, n), np.float32))
    (ast,) = [item.ast for item in create_schedule([(a @ b).lazydata]) if item.ast is not None]
    nest = build_loop_nest(ast)
    assert nest.shape == (m, n, k)
    return choose_options(nest, ast, capabilities)


@pytest.mark.backend_independent
def test_cache_blocks_count_a_row_read_along_the_reduce_as_one_line_per_16_steps():
    # (2048, 1024) @ (1024, 1024) on AVX-512: B (4 MiB) goes in chunks. The tile's 4 rows of A are read along the
    # reduce, a new cache line every 16 steps, so a chunk's rows for one tile are 4 lines of B and a quarter line of A
    # per step: chunks of 128 fit L1 (counted as 4 lines of A per step, they were cut to 64: 131 -> 150 GFLOP/s alone,
    # one thread, through panels)
    from lazygrad.codegen.capabilities import Capabilities

    options = _product_options(Capabilities(vector_width=16, cache_blocking=True), k=1024)
    assert options.upcast == [(0, 4), (1, 4)] and options.blocking == (16, 128), options.describe()


@pytest.mark.backend_independent
def test_a_product_through_panels_keeps_its_register_tile_inside_one_panel():
    # (1024, 2048) @ (2048, 3072) with the second operand in panels (48, 2048, 64): the loop nest puts the panels'
    # loops outermost (the bigger input), and a tile across 4 panels read 4 strips of 2048 rows that no cache kept
    # for the next rows (145 -> 314 ms alone, one thread); within a panel, 4 vectors along its 64 columns
    from lazygrad.codegen.capabilities import Capabilities
    from lazygrad.codegen.lowering import build_loop_nest, choose_options
    from lazygrad.schedule import create_schedule

    x = Tensor(np.ones((1024, 2048), np.float32))
    panels = Tensor(np.ones((48, 2048, 64), np.float32))
    product = (x.reshape(1024, 1, 1, 2048) * panels.permute(0, 2, 1).unsqueeze(0)).sum(-1)
    (ast,) = [item.ast for item in create_schedule([product.lazydata]) if item.ast is not None]
    nest = build_loop_nest(ast)
    options = choose_options(nest, ast, Capabilities(vector_width=16, cache_blocking=True))
    assert nest.shape == (48, 64, 1024, 2048) and options.vector == (1, 16), options.describe()
    assert options.upcast == [(1, 4), (2, 4)], options.describe()


@pytest.mark.backend_independent
def test_register_tiles_and_cache_blocks_are_sized_for_the_cpu():
    from lazygrad.codegen.capabilities import Capabilities

    # AVX-512 (32 vector registers, 1 MiB L2): 16 accumulators; B (1 MiB) fits L2, so no blocking
    avx512 = _product_options(Capabilities(vector_width=16, cache_blocking=True))
    assert avx512.vector == (1, 16) and avx512.upcast == [(0, 4), (1, 4)] and avx512.blocking is None, avx512.describe()
    # AVX2 (16 registers, Zen 3's 512 KiB L2): 16 accumulators spill to the stack, so 8; B no longer fits L2, so
    # the reduce goes in chunks; the tile takes one line of B per reduce step (4 rows x 2 vectors), not two
    avx2 = Capabilities(vector_width=8, cache_blocking=True, vector_registers=16, l1_bytes=32 << 10, l2_bytes=512 << 10)
    options = _product_options(avx2)
    assert options.vector == (1, 8) and options.upcast == [(0, 4), (1, 2)], options.describe()
    assert options.blocking is not None and 256 % options.blocking[1] == 0, options.describe()
    # a kernel with several reduce dims (a direct convolution: channels and a 3x3 window) keeps the AVX-512 machines'
    # sizes, which measured faster for ResNet-18's convolutions on Zen 3 too
    from lazygrad.codegen.lowering import build_loop_nest, choose_options
    from lazygrad.schedule import create_schedule

    # (the weight read transposed, so that channels and window do not merge into one reduce dim)
    x = Tensor(np.ones((64, 1, 128, 9), np.float32))
    w = Tensor(np.ones((128, 9, 128), np.float32)).permute(0, 2, 1).reshape(1, 128, 128, 9)
    items = [item.ast for item in create_schedule([(x * w).sum((2, 3)).lazydata]) if item.ast is not None]
    nests = [(build_loop_nest(ast), ast) for ast in items]
    convolutions = [(nest, ast) for nest, ast in nests if len(nest.shape) - nest.n_output >= 2]
    assert convolutions, [nest.shape for nest, _ in nests]
    for nest, ast in convolutions:
        want = choose_options(nest, ast, Capabilities(vector_width=8, cache_blocking=True))
        assert choose_options(nest, ast, avx2) == want, (nest.shape, want.describe())
    # and the values are right with those options, on this host
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2048, 256), dtype=np.float32), rng.standard_normal((256, 1024), dtype=np.float32)
    with runtime.forced_options(lambda name, nest: options if nest.shape == (2048, 1024, 256) else None):
        got = (Tensor(a, device="llvm") @ Tensor(b, device="llvm")).numpy()
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-3)


@pytest.mark.backend_independent
def test_host_cache_sizes_reads_linux_sysfs_and_skips_what_it_does_not_understand(tmp_path):
    from lazygrad.backends.llvm import host_cache_sizes

    def index(n, level, kind, size):
        folder = tmp_path / f"index{n}"
        folder.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            if text is not None:
                (folder / name).write_text(f"{text}\n")

    index(0, "1", "Data", "32K")
    index(1, "1", "Instruction", "64K")  # not data: left out
    index(2, "2", "Unified", "512K")
    index(3, "3", "Unified", "32M")
    index(4, "x", "Data", "48K")  # garbage level
    index(5, "4", "Unified", "12Q")  # unknown unit
    index(6, "5", "Unified", None)  # no size file
    index(7, "6", "Unified", "0K")  # nothing
    assert host_cache_sizes(str(tmp_path)) == {1: 32 << 10, 2: 512 << 10, 3: 32 << 20}
    assert host_cache_sizes(str(tmp_path / "missing")) == {}


@pytest.mark.backend_independent
def test_llvm_capabilities_cap_the_host_caches_and_count_registers(monkeypatch):
    from lazygrad.backends import llvm
    from lazygrad.codegen.capabilities import Capabilities

    default = Capabilities()
    host = llvm._LLVMCompiler("host")
    # a host with bigger caches than the heuristics were measured with gets the measured sizes; a smaller one its own
    monkeypatch.setattr(llvm, "host_cache_sizes", lambda: {1: 1 << 20, 2: 8 << 20})
    assert host.caches() == (default.l1_bytes, default.l2_bytes)
    monkeypatch.setattr(llvm, "host_cache_sizes", lambda: {1: 32 << 10, 2: 512 << 10})
    assert host.caches() == (32 << 10, 512 << 10)
    monkeypatch.setattr(llvm, "host_cache_sizes", lambda: {})  # sysfs silent: the defaults
    assert host.caches() == (default.l1_bytes, default.l2_bytes)
    # a named CPU (LAZYGRAD_LLVM_CPU) is not this machine: its caches are unknown, so the defaults
    named = llvm._LLVMCompiler("haswell")
    assert named.caches() == (default.l1_bytes, default.l2_bytes)
    assert named.vector_registers() == 16 and llvm._LLVMCompiler("skylake-avx512").vector_registers() == 32


def test_index_arithmetic_is_marked_and_rendered_nsw_while_int32_values_wrap(lowered_programs, backend):
    """An address's adds and multiplies carry INDEX_ARITHMETIC (LLVM: `nsw`, so it widens indexes once per loop and
    folds constant offsets into addressing); arithmetic on int32 values stays plain, and wraps as PyTorch's does."""
    from lazygrad import dtype as dt
    from lazygrad.backends.llvm import render_llvm
    from lazygrad.codegen.ir import INDEX_ARITHMETIC
    from lazygrad.ops import Op

    rng = np.random.default_rng(0)
    x = rng.integers(-(2**31), 2**31, (6, 40), dtype=np.int64).astype(np.int32)
    y = rng.integers(-(2**31), 2**31, (40, 6), dtype=np.int64).astype(np.int32)
    got = (Tensor(x)[::2, 1:] * 3 + Tensor(y).T[1::2, :-1] + (2**31 - 1)).numpy()
    want = (torch.tensor(x)[::2, 1:] * 3 + torch.tensor(y).T[1::2, :-1] + (2**31 - 1)).numpy()
    np.testing.assert_array_equal(got, want)  # it overflows: wrapped, as in torch
    (program,) = [p for p in lowered_programs if p.buffer_dtypes[0] == dt.int32]

    def reads_memory(u) -> bool:
        return u.op in (IrOp.LOAD, IrOp.GATHER) or any(reads_memory(s) for s in u.srcs if s.op is not IrOp.PARAM)

    arithmetic = [u for u in program.uops if u.op in (Op.ADD, Op.MUL)]
    marked = [u for u in arithmetic if u.arg == INDEX_ARITHMETIC]
    assert marked and all(u.dtype == dt.int32 and not reads_memory(u) for u in marked)
    assert all(reads_memory(u) for u in arithmetic if u.arg != INDEX_ARITHMETIC)  # the values' adds and multiplies
    assert any(u.arg != INDEX_ARITHMETIC for u in arithmetic)
    source = render_llvm(program, task=False)
    assert source.count(" nsw ") >= len(marked)  # (and the loop counters')
    assert "add i32" in source or "add <" in source  # the values' add, without nsw


@pytest.mark.backend_independent
def test_the_index_mark_survives_the_program_cache_and_is_checked():
    from lazygrad import dtype as dt
    from lazygrad.codegen import serialize, verify
    from lazygrad.codegen.ir import INDEX_ARITHMETIC, Program, UOp
    from lazygrad.ops import Op

    def program(arg, dtype=dt.int32):
        param = UOp(IrOp.PARAM, dt.float32, (), (0, True), 0)
        g0 = UOp(IrOp.RANGE, dt.int32, (), ("g0", 4, "global"), 1)
        two = UOp(IrOp.CONST, dtype, (), 2, 2)
        index = UOp(Op.MUL, dtype, (g0 if dtype == dt.int32 else two, two), arg, 3)
        one = UOp(IrOp.CONST, dt.float32, (), 1.0, 4)
        uops = [param, g0, two, index, one, UOp(IrOp.STORE, None, (param, index, one), None, 5)]
        uops.append(UOp(IrOp.ENDRANGE, None, (g0,), None, 6))
        return Program("k", uops, (dt.float32,), (4,))

    back = serialize.decode_program(serialize.encode_program(program(INDEX_ARITHMETIC)))
    assert back.uops[3].arg == INDEX_ARITHMETIC
    verify.verify(program(INDEX_ARITHMETIC))
    with pytest.raises(serialize.ProgramFormatError):  # an add or mul takes no other arg
        serialize.decode_program(serialize.encode_program(program("wrap")))
    with pytest.raises(verify.IRError, match="only an int32 add or mul computes an index"):
        verify.verify(program(INDEX_ARITHMETIC, dt.float32))


@pytest.mark.backend_independent
def test_a_sum_over_rows_reads_four_lines_of_each_row_per_step():
    """Nothing re-reads a column sum's strip, so its tile takes 4 vectors (4 cache lines of each row a step) however
    long the reduce; a product's B strip, re-read by the next row tile, keeps the cache's limit."""
    from lazygrad.codegen.capabilities import Capabilities
    from lazygrad.codegen.lowering import build_loop_nest, choose_options
    from lazygrad.schedule import create_schedule

    avx512 = Capabilities(vector_width=16, cache_blocking=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 1024), dtype=np.float32)
    (ast,) = [item.ast for item in create_schedule([Tensor(x).sum(0).lazydata]) if item.ast is not None]
    nest = build_loop_nest(ast)
    assert nest.shape == (1024, 2048)
    options = choose_options(nest, ast, avx512)
    assert options.vector == (0, 16) and options.upcast == [(0, 4)], options.describe()
    with runtime.forced_options(lambda name, n: options if n.shape == (1024, 2048) else None):
        got = Tensor(x, device="llvm").sum(0).numpy()
    np.testing.assert_allclose(got, x.astype(np.float64).sum(0), rtol=1e-4, atol=1e-3)
    # a product whose B strip (4 vectors x a 16384-long reduce) outgrows the cache keeps at most 2 vectors
    product = _product_options(Capabilities(vector_width=16), m=512, k=16384, n=256)
    assert dict(product.upcast).get(1, 1) <= 2, product.describe()


# --- prefetches ---------------------------------------------------------------------------------------------------
def _weight_gradient(rows: int, columns: int, channels: int = 64):
    """dW (channels, columns) of a conv's weight gradient over its columns (8 images of rows / 8 pixels each), as
    ResNet-18 builds it: tensors of ones (its nodes and kernels are what is checked)."""
    grad = Tensor(np.ones((8, channels, rows // 8), np.float32))
    cols = Tensor(np.ones((8, rows // 8, columns), np.float32))
    return (grad.reshape(8, channels, rows // 8, 1) * cols.reshape(8, 1, rows // 8, columns)).sum((0, 2))


def _heuristic_options(t: Tensor):
    from lazygrad.codegen.capabilities import Capabilities
    from lazygrad.codegen.lowering import build_loop_nest, choose_options
    from lazygrad.schedule import create_schedule

    (ast,) = [item.ast for item in create_schedule([t.lazydata]) if item.ast is not None]
    return choose_options(build_loop_nest(ast), ast, Capabilities(vector_width=16, cache_blocking=True))


@pytest.mark.backend_independent
def test_a_tile_walking_rows_far_apart_beyond_l1_prefetches_them():
    # ResNet-18's layer-4 weight gradient: the tile's 4 vectors read down 392 rows 18 KiB apart, each vector feeding
    # 4 accumulators: prefetched 128 KiB ahead
    options = _heuristic_options(_weight_gradient(392, 4608))
    assert options.vector == (0, 16) and options.prefetch == 128 << 10, options.describe()
    # rows 1 KiB apart: the CPU's own prefetchers follow them
    assert _heuristic_options(_weight_gradient(392, 256)).prefetch is None
    # a column sum over rows 4 KiB apart: each vector feeds one accumulator (prefetches would double the loop)
    assert _heuristic_options(Tensor(np.ones((2048, 1024), np.float32)).sum(0)).prefetch is None
    # a blocked product whose chunk of rows fits L1 (GPT's weight gradients over 2048 tokens, rows 4 KiB apart)
    x, dy = Tensor(np.ones((2048, 1024), np.float32)), Tensor(np.ones((2048, 256), np.float32))
    blocked_product = _heuristic_options(dy.T @ x)
    assert blocked_product.blocking and blocked_product.prefetch is None, blocked_product.describe()


def test_prefetched_loads_give_the_same_values(lowered_programs, backend):
    # forced: prefetches one line and 1 MiB ahead (far past the end of the columns) for a weight gradient with an
    # optimizer-style epilogue, in the loop order of ResNet-18's (columns outermost)
    rng = np.random.default_rng(5)
    g, cols, w = (rng.standard_normal(s).astype(np.float32) for s in ((8, 64, 49), (8, 49, 4608), (64, 4608)))
    want = np.einsum("ncp,npk->ck", g.astype(np.float64), cols.astype(np.float64)) * 0.5 + w
    for ahead in (64, 1 << 20):
        options = KernelOptions(upcast=[(0, 4), (1, 4)], vector=(0, 16), prefetch=ahead)
        lowered_programs.clear()
        with runtime.forced_options(lambda name, nest, o=options: o if nest.shape == (4608, 64, 8, 49) else None):
            grad = Tensor(g).reshape(8, 64, 49, 1) * Tensor(cols).reshape(8, 1, 49, 4608)
            got = (grad.sum((0, 2)) * 0.5 + Tensor(w)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        prefetches = [u for p in lowered_programs for u in p.uops if u.op is IrOp.PREFETCH]
        # in the reduce, the tile's 4 vectors of a row of columns (rows 18 KiB apart); after it, w's 4 x 4 vectors,
        # whose rows the output loop moves 4 at a time (72 KiB): whole steps of each loop, ahead by `ahead` or more
        reduce_step, output_step = 4608, 4 * 4608
        want_offsets = {-(-ahead // (reduce_step * 4)) * reduce_step, -(-ahead // (output_step * 4)) * output_step}
        assert len(prefetches) == 4 + 16, [p.dump() for p in lowered_programs]
        assert {u.arg for u in prefetches} == want_offsets, {u.arg for u in prefetches}


@pytest.mark.backend_independent
def test_a_prefetch_is_checked_and_stored_like_the_other_uops():
    from lazygrad import dtype as dt
    from lazygrad.codegen import serialize, verify
    from lazygrad.codegen.ir import Program, UOp

    def program(arg, through_param=True):
        param = UOp(IrOp.PARAM, dt.float32, (), (0, True), 0)
        g0 = UOp(IrOp.RANGE, dt.int32, (), ("g0", 4, "global"), 1)
        target = param if through_param else g0
        uops = [param, g0, UOp(IrOp.PREFETCH, None, (target, g0), arg, 2)]
        uops += [UOp(IrOp.STORE, None, (param, g0, UOp(IrOp.CONST, dt.float32, (), 1.0, 3)), None, 4)]
        uops.insert(3, uops[3].srcs[2])
        uops.append(UOp(IrOp.ENDRANGE, None, (g0,), None, 5))
        for i, u in enumerate(uops):
            u.id = i
        return Program("k", uops, (dt.float32,), (4,))

    verify.verify(program(1 << 40))  # an offset past anything: a hint
    assert serialize.decode_program(serialize.encode_program(program(4096))).uops[2].arg == 4096
    with pytest.raises(verify.IRError, match="an int offset"):
        verify.verify(program(None))
    with pytest.raises(verify.IRError, match="through a param"):
        verify.verify(program(16, through_param=False))


# --- interior copies: a padded loop's iterations that read no padding run without validity masks ------------------
def _kernel_options(t: Tensor, capabilities=None) -> list:
    """[(loop nest, the heuristics' options)] of the kernels that realize `t` (its nodes only: nothing runs), on a
    16-lane CPU unless `capabilities` say otherwise."""
    from lazygrad.codegen.capabilities import Capabilities
    from lazygrad.codegen.lowering import build_loop_nest, choose_options
    from lazygrad.schedule import create_schedule

    capabilities = capabilities or Capabilities(vector_width=16, cache_blocking=True)
    nests = [(build_loop_nest(item.ast), item.ast) for item in create_schedule([t.lazydata]) if item.ast is not None]
    return [(nest, choose_options(nest, ast, capabilities)) for nest, ast in nests]


def _padded_convolution(batch=8, channels=64, size=56):
    """ResNet-18's layer-1 convolution (3x3, padding 1) and its weight's gradient, of tensors of ones."""
    import lazygrad.nn.functional as F

    x = Tensor(np.ones((batch, channels, size, size), np.float32))
    w = Tensor(np.ones((channels, channels, 3, 3), np.float32), requires_grad=True)
    out = F.conv2d(x, w, padding=1)
    out.sum().backward()
    return out, w.grad


@pytest.mark.backend_independent
def test_a_padded_convolution_runs_its_interior_without_masks():
    from lazygrad.codegen.capabilities import Capabilities

    out, grad = _padded_convolution()
    # the forward: rows 1..54 of 56 and column tiles 1..12 of 14 (4 columns a tile) read no padding
    ((nest, options),) = [(n, o) for n, o in _kernel_options(out) if len(n.shape) > n.n_output]
    assert options.interior == ((2, 1, 54), (3, 1, 12)), (nest.shape, options.describe())
    # the weight's gradient: its innermost reduce loop (the image's columns) split in three, the middle 1..54 unmasked
    reduces = [(n, o) for n, o in _kernel_options(grad) if n.shape[n.n_output :] == (8, 56, 56)]
    assert [o.interior for _, o in reduces] == [((6, 1, 54),)], [(n.shape, o.describe()) for n, o in reduces]
    # no padding, nothing to version; a GPU (no lanes: work-items would diverge at the borders) does not either
    import lazygrad.nn.functional as F

    unpadded = F.conv2d(Tensor(np.ones((8, 64, 58, 58), np.float32)), Tensor(np.ones((64, 64, 3, 3), np.float32)))
    assert all(o.interior is None for _, o in _kernel_options(unpadded))
    gpu = Capabilities(vector_width=1, group_reduce=256, compute_units=132)
    assert all(o.interior is None for _, o in _kernel_options(out, gpu))
    # an elementwise kernel (the padded copy of an input) keeps its masks: a copy of a one-element body costs more
    padded = Tensor(np.ones((8, 64, 56, 56), np.float32)).pad((1, 1, 1, 1)) * 2
    assert all(o.interior is None for _, o in _kernel_options(padded))


@pytest.mark.parametrize(
    "stride, padding, dilation, size",
    [(1, 1, 1, 24), (2, 3, 1, 28), (1, 2, 2, 24), (2, 1, 1, 32)],
    ids=["pad1", "stride2-pad3", "dilation2-pad2", "stride2-pad1"],
)
def test_padded_convolutions_with_interior_copies_match_torch(
    lowered_programs, backend, stride, padding, dilation, size
):
    # sizes whose output rows (16 or 24) take the windows' direct convolution (conv_layout), not columns
    import lazygrad.nn.functional as F

    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 16, size, size)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    tx, tw = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    out = F.conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation)
    (out * out).sum().backward()
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    want = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation)
    (want * want).sum().backward()
    np.testing.assert_allclose(out.numpy(), want.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tx.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(tw.grad.numpy(), wt.grad.numpy(), rtol=1e-4, atol=1e-3)
    if backend in ("llvm", "opencl"):  # CPUs with lanes: some kernel took an interior copy, so that it is tested
        versioned = [p.name for p in lowered_programs if any(u.op is IrOp.IF for u in p.uops)]
        peeled = [p.name for p in lowered_programs if any(u.op is IrOp.RANGE and "_head" in u.arg[0] for u in p.uops)]
        assert versioned or peeled, [p.name for p in lowered_programs]


def test_any_interior_bounds_give_the_same_values(backend):
    # forced: interiors that are too wide (iterations that do read padding, so their masks must stay), too narrow,
    # one iteration, and a peel whose head or tail is empty, all on one padded convolution (rows of 16: the windows'
    # direct convolution) and its weight's gradient
    import lazygrad.nn.functional as F

    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 16, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    xt, wt = torch.tensor(x), torch.tensor(w, requires_grad=True)
    want = torch.nn.functional.conv2d(xt, wt, padding=1)
    want.backward(torch.ones_like(want))
    for lo, hi in [(0, 15), (2, 8), (5, 5), (0, 14), (1, 15)]:
        forced = []

        def choose(name, nest, lo=lo, hi=hi, forced=forced):
            if nest.shape == (2, 16, 16, 16, 16, 3, 3):  # the forward, no tile or lanes: rows and columns narrowed
                forced.append("forward")
                return KernelOptions(interior=((2, lo, hi), (3, lo, hi)))
            if nest.shape[nest.n_output :] == (2, 16, 16):  # the weight's gradient: its innermost loop peeled
                forced.append("weight gradient")
                return KernelOptions(interior=((len(nest.shape) - 1, lo, hi),))
            return None

        with runtime.forced_options(choose):
            tw = Tensor(w, requires_grad=True)
            out = F.conv2d(Tensor(x), tw, padding=1)
            out.sum().backward()
            np.testing.assert_allclose(out.numpy(), want.detach().numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{lo}..{hi}")
            np.testing.assert_allclose(tw.grad.numpy(), wt.grad.numpy(), rtol=1e-4, atol=1e-3, err_msg=f"{lo}..{hi}")
        assert sorted(forced) == ["forward", "weight gradient"], forced
    # the weight gradient's peel in steps of an unroll by 4 (4 iterations) and of lanes of 8 (2 iterations)
    for extra, lo, hi in [({"unroll": (6, 4)}, 1, 2), ({"unroll": (6, 4)}, 0, 3), ({"vector": (6, 8)}, 1, 1)]:
        peeled = []

        def choose_peel(name, nest, extra=extra, lo=lo, hi=hi, peeled=peeled):
            if nest.shape[nest.n_output :] == (2, 16, 16):
                peeled.append(name)
                return KernelOptions(interior=((6, lo, hi),), **extra)
            return None

        with runtime.forced_options(choose_peel):
            tw = Tensor(w, requires_grad=True)
            F.conv2d(Tensor(x), tw, padding=1).sum().backward()
            np.testing.assert_allclose(tw.grad.numpy(), wt.grad.numpy(), rtol=1e-4, atol=1e-3, err_msg=str(extra))
        assert peeled, "the weight gradient's kernel was not forced"


@pytest.mark.backend_independent
def test_interior_options_that_do_not_fit_their_loops_are_refused():
    from lazygrad.codegen.lowering import LoopNest, options_problem

    nest = LoopNest((8, 56, 56, 64, 3, 9), 4, {})
    assert options_problem(KernelOptions(interior=((1, 1, 54), (2, 0, 55))), nest) is None
    assert options_problem(KernelOptions(interior=((5, 1, 7),)), nest) is None  # the innermost reduce loop, peeled
    # unrolled by 3, or in lanes of 3: 3 iterations
    assert options_problem(KernelOptions(interior=((5, 1, 1),), unroll=(5, 3)), nest) is None
    assert "not inside" in options_problem(KernelOptions(interior=((5, 1, 3),), vector=(5, 3)), nest)
    assert "not inside" in options_problem(KernelOptions(interior=((1, 1, 56),)), nest)
    assert "not inside" in options_problem(KernelOptions(interior=((1, 5, 4),)), nest)
    # with 16 lanes along d3, its loop has 4 iterations
    assert "not inside" in options_problem(KernelOptions(vector=(3, 16), interior=((3, 1, 4),)), nest)
    for wrong in [
        KernelOptions(interior=((4, 1, 1),)),  # a reduce loop, not the innermost
        KernelOptions(interior=((6, 1, 5),)),  # past the loops
        KernelOptions(interior=((1, 1, 5), (1, 1, 5))),  # repeated
        KernelOptions(interior=((0, 1, 5),), blocking=(2, 3)),  # blocking's outer loop
        KernelOptions(interior=((1, 1, 5),), group=64),
        KernelOptions(interior=()),
    ]:
        assert options_problem(wrong, nest) is not None, wrong


@pytest.mark.backend_independent
def test_a_convolution_reads_4_vectors_of_its_weight_where_their_strip_fits_half_of_l2():
    # ResNet-18's layer-2 input gradients at 8x3x224x224 (a 128 -> 128 3x3 convolution at 28x28 over the flipped
    # weight, copied channel-last): lanes along the output channels, and a strip of 4 vectors over 128 x 3 x 3 reduce
    # steps (288 KiB) beside 4 output columns; with 2 vectors (over 2 rows) it ran 26% slower in the step
    x = Tensor(np.ones((8, 128, 28, 28), np.float32))
    w = Tensor(np.ones((128, 128, 3, 3), np.float32)).flip(2, 3)  # a view: the channel-last copy's layout
    from lazygrad.codegen.capabilities import Capabilities
    from lazygrad.codegen.lowering import build_loop_nest, choose_options
    from lazygrad.schedule import create_schedule

    asts = [item.ast for item in create_schedule([x.conv2d(w, padding=1).lazydata]) if item.ast is not None]
    nests = [(build_loop_nest(ast), ast) for ast in asts]
    ((nest, ast),) = [(n, a) for n, a in nests if n.shape == (8, 128, 28, 28, 128, 3, 3)]
    options = choose_options(nest, ast, Capabilities(vector_width=16, cache_blocking=True))
    assert options.vector == (1, 16) and options.upcast == [(1, 4), (3, 4)], options.describe()

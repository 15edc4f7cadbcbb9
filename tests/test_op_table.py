"""The op tables (lazygrad/ops.py) as a specification.

- The primitive set: every primitive has exactly one row, in one group; the graph's group sets are the table's.
- Each row holds what the compiler needs: arity, result dtype, a reduce's identity and combining op.
- The three vocabularies (graph, kernel AST, linear IR) are distinct: no word means two things.
- The frontend's names are converted once, at the graph's door; an unknown name is an error there.
- Every differentiable primitive has one gradient rule, and no other primitive has one.
- Every backend renders every elementwise primitive on every dtype kind its row accepts, and every IR op:
  small hand-written programs are compiled and run, and their results compared with numpy.
- The compiler compares ops by member, never by name (read from its source).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import ProgramBuilder as _Builder

from lazygrad import autograd, backends, graph
from lazygrad import dtype as dt
from lazygrad.codegen.ir import Program
from lazygrad.graph import LazyBuffer
from lazygrad.ops import (
    COMPARISONS,
    DIFFERENTIABLE,
    EFFECTS,
    ELEMENTWISE,
    MOVEMENT,
    REDUCE,
    SOURCES,
    AstOp,
    DtypeRule,
    Group,
    IrOp,
    Op,
)

ROOT = Path(__file__).resolve().parents[1]

# DESIGN.md's primitive set, plus host (data waiting to be uploaded), neg, rmax (the reduce's name for max),
# window (sliding windows as a view) and view (a node that is a base seen through movement ops)
PRIMITIVES = {
    Group.SOURCE: "buffer const host",
    Group.UNARY: "exp2 log2 sin sqrt recip neg cast bitcast",
    Group.BINARY: "add mul max cmplt cmpne idiv mod and or xor shl shr",
    Group.TERNARY: "where",
    Group.REDUCE: "sum rmax",
    Group.MOVEMENT: "reshape permute expand pad shrink flip window",
    Group.EFFECT: "assign contiguous copy",
    Group.VIEW: "view",
}


# --- the table ---------------------------------------------------------------------------------------------------
@pytest.mark.backend_independent
def test_every_primitive_has_exactly_one_row_in_its_group():
    names = [op.value for op in Op]
    assert len(names) == len(set(names)) == len(Op.__members__)  # no aliases, no repeated name
    assert {group: " ".join(op.value for op in Op if op.group is group) for group in Group} == PRIMITIVES
    assert all(op.name == op.value.upper() for op in Op)


@pytest.mark.backend_independent
def test_the_graphs_group_sets_are_the_tables():
    sets = {
        "SOURCES": {Group.SOURCE},
        "UNARY": {Group.UNARY},
        "BINARY": {Group.BINARY},
        "TERNARY": {Group.TERNARY},
        "ELEMENTWISE": {Group.UNARY, Group.BINARY, Group.TERNARY},
        "REDUCE": {Group.REDUCE},
        "MOVEMENT": {Group.MOVEMENT},
        "EFFECTS": {Group.EFFECT},
    }
    for name, groups in sets.items():
        assert getattr(graph, name) == {op for op in Op if op.group in groups}, name
    disjoint = [SOURCES, ELEMENTWISE, REDUCE, MOVEMENT, EFFECTS, {Op.VIEW}]
    assert sum(len(g) for g in disjoint) == len(Op) and set().union(*disjoint) == set(Op)
    assert COMPARISONS == {Op.CMPLT, Op.CMPNE} == graph.COMPARISONS


@pytest.mark.backend_independent
def test_an_elementwise_primitives_arity_is_its_groups():
    arity = {Group.UNARY: 1, Group.BINARY: 2, Group.TERNARY: 3}
    assert all(op.arity == arity[op.group] for op in ELEMENTWISE)
    assert all(op.kinds and set(op.kinds) <= set("buif") for op in ELEMENTWISE)


def _node(dtype, shape=(4,)):
    return LazyBuffer.const(0, shape, dtype, "llvm").contiguous()


@pytest.mark.backend_independent
def test_result_dtypes_follow_each_rows_rule():
    x, flag = _node(dt.int16), _node(dt.bool_)
    assert x.alu(Op.ADD, x).dtype == dt.int16  # SAME
    assert x.alu(Op.CMPLT, x).dtype == dt.bool_ and Op.CMPLT.dtype_rule is DtypeRule.BOOL
    assert flag.alu(Op.WHERE, x, x).dtype == dt.int16  # VALUE: the value operands', not the condition's
    assert x.alu(Op.CAST, arg=dt.float16).dtype == dt.float16  # ARG
    assert x.alu(Op.BITCAST, arg=dt.int16, dtype=dt.float16).dtype == dt.float16  # GIVEN: the caller names it
    with pytest.raises(ValueError, match="bitcast"):
        x.alu(Op.BITCAST, arg=dt.int16)


@pytest.mark.backend_independent
def test_a_reduce_row_names_its_identity_and_combining_op():
    assert (Op.SUM.combine, Op.RMAX.combine) == (Op.ADD, Op.MAX)
    assert [Op.SUM.identity(d) for d in (dt.bool_, dt.int32, dt.float32)] == [False, 0, 0.0]
    assert [Op.RMAX.identity(d) for d in (dt.bool_, dt.uint8, dt.int8, dt.int64)] == [False, 0, -128, -(2**63)]
    assert Op.RMAX.identity(dt.float16) == -math.inf
    assert all(op.identity is None and op.combine is None for op in Op if op not in REDUCE)


@pytest.mark.backend_independent
def test_the_three_vocabularies_are_distinct():
    for name in ("CONST", "LOAD", "STORE"):
        members = [getattr(table, name) for table in (Op, AstOp, IrOp) if name in table.__members__]
        assert len(members) >= 2
        assert all(a != b for i, a in enumerate(members) for b in members[i + 1 :])
    assert not any(member == member.value for table in (AstOp, IrOp) for member in table)  # and never a string


# --- the frontend's names --------------------------------------------------------------------------------------
@pytest.mark.backend_independent
def test_names_from_the_frontend_become_members_at_the_graphs_door():
    x = _node(dt.float32, (2, 3))
    assert x.alu("add", x).op is Op.ADD
    assert x.reduce("sum", (1,)).op is Op.SUM
    view = x.reshape((3, 2)).permute((1, 0)).move("flip", (0,))
    assert [op for op, _ in view.movement] == [Op.RESHAPE, Op.PERMUTE, Op.FLIP]
    assert x.copy_to("opencl").op is Op.COPY and x.contiguous().op is Op.CONTIGUOUS
    assert autograd.Context("mul", (), None, ()).op is Op.MUL


@pytest.mark.backend_independent
def test_an_unknown_op_name_raises_where_it_is_given():
    x = _node(dt.float32)
    with pytest.raises(ValueError, match="unknown primitive 'fma'"):
        Op.coerce("fma")
    with pytest.raises(ValueError, match="unknown primitive 'fma'"):
        x.alu("fma", x, x)
    with pytest.raises(ValueError, match="unknown primitive"):
        Op.coerce(IrOp.LOAD)  # another vocabulary's member is no primitive
    with pytest.raises(ValueError, match="not an elementwise primitive"):
        x.alu("sum")
    with pytest.raises(ValueError, match="not a reduce"):
        x.reduce("add", (0,))
    with pytest.raises(ValueError, match="not a movement primitive"):
        x.move("exp2", None)
    with pytest.raises(ValueError, match="takes 2 operands"):
        x.alu(Op.MUL, x, x)


@pytest.mark.backend_independent
def test_a_primitive_on_a_dtype_kind_its_row_does_not_accept_raises_when_built():
    flags, floats = _node(dt.bool_), _node(dt.float32)
    with pytest.raises(TypeError, match="add does not compute on bool"):
        flags.alu(Op.ADD, flags)  # LLVM's add of i1 would be an xor
    with pytest.raises(TypeError, match="shl does not compute on float32"):
        floats.alu(Op.SHL, floats)
    with pytest.raises(TypeError, match="sum does not compute on bool"):
        flags.reduce(Op.SUM, (0,))
    assert flags.alu(Op.WHERE, floats, floats).dtype == dt.float32  # where's kind is its values'


# --- gradients -------------------------------------------------------------------------------------------------
@pytest.mark.backend_independent
def test_every_differentiable_primitive_has_one_gradient_rule():
    rules = {op for op in autograd.RULES if isinstance(op, Op)}
    assert rules == DIFFERENTIABLE
    assert not rules & (COMPARISONS | {Op.IDIV, Op.MOD, Op.AND, Op.OR, Op.XOR, Op.SHL, Op.SHR, Op.BITCAST})
    assert set(autograd.RULES) - rules == {autograd.COMPOSITE, autograd.MATMUL}  # the two recorded non-primitives


# --- every backend: every elementwise primitive on every dtype kind its row accepts ------------------------------
KIND_DTYPE = {"b": dt.bool_, "u": dt.uint8, "i": dt.int32, "f": dt.float32}
N = 8  # elements per buffer


def _operands(kind: str) -> dict:
    """Inputs that avoid undefined behaviour: nonzero divisors, shift counts below the width, small ints."""
    rng = np.random.default_rng(ord(kind))
    if kind == "b":
        a, b = np.array([0, 0, 1, 1, 0, 1, 0, 1], bool), np.array([0, 1, 0, 1, 1, 1, 0, 0], bool)
    elif kind == "u":
        a, b = rng.integers(0, 256, N).astype(np.uint8), rng.integers(1, 256, N).astype(np.uint8)
    elif kind == "i":
        a = rng.integers(-60, 60, N).astype(np.int32)
        b = (rng.integers(1, 8, N) * rng.choice([-1, 1], N)).astype(np.int32)  # both signs: C truncation
    else:
        a, b = rng.uniform(0.1, 4, N).astype(np.float32), rng.uniform(-4, 4, N).astype(np.float32)
        a[1], a[2], b[3] = -1.5, np.nan, np.nan  # a negative log2/sqrt argument, NaN through max and compares
    shift = rng.integers(0, 7, N).astype(a.dtype)
    cond = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    return {"a": a, "b": b, "shift": shift, "cond": cond}


def _truncated(a, b):
    return (np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)).astype(a.dtype)


# the numpy meaning of each elementwise primitive (cast and bitcast: below), and the operands it takes
REFERENCE = {
    Op.EXP2: (np.exp2, "a"),
    Op.LOG2: (np.log2, "a"),
    Op.SIN: (np.sin, "a"),
    Op.SQRT: (np.sqrt, "a"),
    Op.RECIP: (np.reciprocal, "a"),
    Op.NEG: (np.negative, "a"),
    Op.ADD: (np.add, "a b"),
    Op.MUL: (np.multiply, "a b"),
    Op.MAX: (np.maximum, "a b"),
    Op.CMPLT: (np.less, "a b"),
    Op.CMPNE: (np.not_equal, "a b"),
    Op.IDIV: (_truncated, "a b"),
    Op.MOD: (lambda a, b: (a - _truncated(a, b) * b).astype(a.dtype), "a b"),
    Op.AND: (np.bitwise_and, "a b"),
    Op.OR: (np.bitwise_or, "a b"),
    Op.XOR: (np.bitwise_xor, "a b"),
    Op.SHL: (np.left_shift, "a shift"),
    Op.SHR: (np.right_shift, "a shift"),
    Op.WHERE: (np.where, "cond a b"),
}


def _run(backend: str, name: str, build, outputs: list, inputs: list, global_size: tuple, variables=None) -> list:
    """Compile and run a hand-written program: `build(b, params)` emits its body. Outputs hold N elements, each
    starting as all-ones bytes; inputs are (dtype, values); variables: {name: value} of its int arguments."""
    b, device = _Builder(), backends.get(backend)
    params = [b(IrOp.PARAM, d, (), (i, i < len(outputs))) for i, (d, _) in enumerate(outputs + inputs)]
    build(b, params)
    variables = variables or {}
    program = Program(name, b.uops, tuple(d for d, _ in outputs + inputs), global_size, variables=tuple(variables))
    kernel = device.compile(program)
    arrays = [np.full(N * d.itemsize, 255, np.uint8) for d, _ in outputs]
    arrays += [np.ascontiguousarray(values, dtype=d.np) for d, values in inputs]
    handles = [device.allocate(a.nbytes) for a in arrays]
    for handle, array in zip(handles, arrays):
        device.copy_in(handle, array)
    kernel(handles, wait=True, values=tuple(variables.values()))
    results = []
    for (d, _), handle in zip(outputs, handles):
        results.append(np.empty(N, dtype=d.np))
        device.copy_out(handle, results[-1])
    for handle, array in zip(handles, arrays):
        device.free(handle, array.nbytes)
    return results


def _elementwise_program(backend: str, ops: list, dtype: dt.DType, data: dict, vec: int, name: str) -> list:
    names = ["a", "b", "shift", "cond"]
    inputs = [(dtype, data["a"]), (dtype, data["b"]), (dtype, data["shift"]), (dt.bool_, data["cond"])]
    outputs = [(op.result_dtype(dtype, dtype), None) for op in ops]

    def build(b, params):
        gid = b(IrOp.RANGE, dt.int32, (), ("g0", N // vec, "global"))
        index = b(Op.MUL, dt.int32, (gid, b(IrOp.CONST, dt.int32, (), vec))) if vec > 1 else gid
        loaded = {
            n: b(IrOp.LOAD, d, (params[len(ops) + i], index), None, vec)
            for i, (n, (d, _)) in enumerate(zip(names, inputs))
        }
        for i, op in enumerate(ops):
            value = b(op, outputs[i][0], tuple(loaded[n] for n in REFERENCE[op][1].split()), None, vec)
            b(IrOp.STORE, None, (params[i], index, value))
        b(IrOp.ENDRANGE, None, (gid,))

    return _run(backend, name, build, outputs, inputs, (N // vec,))


@pytest.mark.parametrize("vec", [1, 4])
@pytest.mark.parametrize("kind", list(KIND_DTYPE))
def test_both_renderers_render_every_elementwise_primitive_on_each_dtype_kind_it_accepts(backend, kind, vec):
    ops = [op for op in ELEMENTWISE if kind in op.kinds and op not in (Op.CAST, Op.BITCAST)]
    assert set(REFERENCE) | {Op.CAST, Op.BITCAST} == ELEMENTWISE  # a new primitive needs its reference here
    dtype, data = KIND_DTYPE[kind], _operands(kind)
    results = _elementwise_program(backend, ops, dtype, data, vec, f"op_table_{kind}_x{vec}")
    for op, result in zip(ops, results):
        function, operands = REFERENCE[op]
        with np.errstate(all="ignore"):
            expected = function(*(data[n] for n in operands.split()))
        if kind == "f" and op not in COMPARISONS:
            np.testing.assert_allclose(result, expected, rtol=2e-6, err_msg=f"{op} on {dtype.name}")
        else:
            np.testing.assert_array_equal(result, expected, err_msg=f"{op} on {dtype.name}")


CAST_DTYPES = (dt.bool_, dt.uint8, dt.int32, dt.int64, dt.float16, dt.float32)


@pytest.mark.parametrize("vec", [1, 4])
def test_both_renderers_cast_between_every_pair_of_dtype_kinds(backend, vec):
    # values every dtype holds exactly enough for numpy's cast to be the specification (no float -> int overflow)
    values = np.array([0.0, 1.0, 2.5, 7.75, 100.25, 0.5, 3.0, 42.0])
    inputs = [(d, values.astype(d.np)) for d in CAST_DTYPES]
    # every pair of distinct dtypes (the code generator never casts a value to its own dtype)
    pairs = [(s, d) for s in range(len(CAST_DTYPES)) for d in range(len(CAST_DTYPES)) if s != d]
    outputs = [(CAST_DTYPES[d], None) for _, d in pairs]

    def build(b, params):
        gid = b(IrOp.RANGE, dt.int32, (), ("g0", N // vec, "global"))
        index = b(Op.MUL, dt.int32, (gid, b(IrOp.CONST, dt.int32, (), vec))) if vec > 1 else gid
        loads = [b(IrOp.LOAD, d, (params[len(outputs) + i], index), None, vec) for i, d in enumerate(CAST_DTYPES)]
        for i, (s, d) in enumerate(pairs):
            value = b(Op.CAST, CAST_DTYPES[d], (loads[s],), CAST_DTYPES[s], vec)
            b(IrOp.STORE, None, (params[i], index, value))
        b(IrOp.ENDRANGE, None, (gid,))

    results = _run(backend, f"op_table_casts_x{vec}", build, outputs, inputs, (N // vec,))
    for (s, d), result in zip(pairs, results):
        source, target = CAST_DTYPES[s], CAST_DTYPES[d]
        expected = inputs[s][1].astype(target.np)
        np.testing.assert_array_equal(result, expected, err_msg=f"cast {source.name} -> {target.name}")


@pytest.mark.parametrize("vec", [1, 4])
def test_both_renderers_bitcast_between_dtypes_of_one_size(backend, vec):
    values = {
        dt.int32: np.array([1, -1, 1065353216, 0, 7, -7, 2**30, -(2**31)], np.int32),
        dt.float32: np.array([1.0, -2.5, np.inf, 0.1, 0.0, -0.0, 3e38, 1e-30], np.float32),
        # no NaN bit patterns as float16: OpenCL holds a float16 in a float register, which keeps no NaN payload
        dt.int16: np.array([0, 15360, -1024, 1, -15360, 31744, 100, 1000], np.int16),
        dt.float16: np.array([1.0, -2.5, np.inf, 0.1, 0.0, -0.0, 60000, 6e-5], np.float16),
        dt.uint8: np.array([0, 1, 127, 128, 255, 7, 200, 64], np.uint8),
        dt.int8: np.array([0, 1, 127, -128, -1, 7, -56, 64], np.int8),
    }
    pairs = [(dt.int32, dt.float32), (dt.float32, dt.int32), (dt.int16, dt.float16), (dt.float16, dt.int16)]
    pairs += [(dt.uint8, dt.int8), (dt.int8, dt.uint8)]
    sources = list(values)
    inputs = [(d, values[d]) for d in sources]
    outputs = [(target, None) for _, target in pairs]

    def build(b, params):
        gid = b(IrOp.RANGE, dt.int32, (), ("g0", N // vec, "global"))
        index = b(Op.MUL, dt.int32, (gid, b(IrOp.CONST, dt.int32, (), vec))) if vec > 1 else gid
        loads = {d: b(IrOp.LOAD, d, (params[len(outputs) + i], index), None, vec) for i, d in enumerate(sources)}
        for i, (source, target) in enumerate(pairs):
            b(IrOp.STORE, None, (params[i], index, b(Op.BITCAST, target, (loads[source],), source, vec)))
        b(IrOp.ENDRANGE, None, (gid,))

    results = _run(backend, f"op_table_bitcasts_x{vec}", build, outputs, inputs, (N // vec,))
    for (source, target), result in zip(pairs, results):
        expected = values[source].view(target.np)
        np.testing.assert_array_equal(result.view(np.uint8), expected.view(np.uint8), err_msg=f"{source} -> {target}")


# --- every backend: every IR op -----------------------------------------------------------------------------------
def test_both_renderers_render_every_ir_op(backend):
    """One program that uses each IrOp: two global iterations of 4 lanes; a loop accumulating a vector; a
    horizontal sum stored under an `if`; contiguous, strided, shuffled and gathered vector loads; a masked scalar
    load; a vector store and a scatter; a prefetch far past the buffer's end (a hint: no fault, no value)."""
    source = np.arange(1, 17, dtype=np.float32) * 1.5  # 16 elements
    outputs = [(dt.float32, None), (dt.int32, None), (dt.float32, None)]
    f32, i32 = dt.float32, dt.int32

    def build(b, params):
        vectors, scattered, sums, data = params

        def const(value, dtype=i32):
            return b(IrOp.CONST, dtype, (), value)

        def lanewise(op, dtype, *srcs):  # a 4-lane ALU op, scalar operands broadcast first
            srcs = [x if x.vec == 4 else b(IrOp.BROADCAST, x.dtype, (x,), None, 4) for x in srcs]
            return b(op, dtype, srcs, None, 4)

        lanes = b(IrOp.LANES, i32, (), None, 4)
        gid = b(IrOp.RANGE, i32, (), ("g0", 2, "global"))
        base = b(Op.MUL, i32, (gid, const(4)))
        contiguous = b(IrOp.LOAD, f32, (data, base), None, 4)  # data[base + i]
        strided = b(IrOp.LOAD, f32, (data, base), 2, 4)  # data[base + 2i]
        shuffled = b(IrOp.LOAD, f32, (data, base), (1, 0, 3, 2), 4)  # data[base + (1, 0, 3, 2)[i]]
        backwards = lanewise(Op.ADD, i32, base, lanewise(Op.ADD, i32, const(7), lanewise(Op.NEG, i32, lanes)))
        gathered = b(IrOp.GATHER, f32, (data, backwards), None, 4)  # data[base + 7 - i]
        acc = b(IrOp.ACC, f32, (), 0.0, 4)
        trips = b(IrOp.VARIABLE, i32, (), ("trips", 1, 5))  # a run-time loop bound: 3 at this launch
        loop = b(IrOp.RANGE, i32, (trips,), ("r0", 5, "loop"))
        b(IrOp.ACC_UPDATE, None, (acc, lanewise(Op.ADD, f32, acc, contiguous)))
        b(IrOp.PREFETCH, None, (data, base), 1 << 20)  # far past the end: a hint only
        b(IrOp.ENDRANGE, None, (loop,))
        total = lanewise(Op.ADD, f32, lanewise(Op.ADD, f32, acc, strided), lanewise(Op.ADD, f32, shuffled, gathered))
        b(IrOp.STORE, None, (vectors, base, total))
        j = lanewise(Op.ADD, i32, base, lanes)
        b(IrOp.SCATTER, None, (scattered, lanewise(Op.ADD, i32, const(7), lanewise(Op.NEG, i32, j)), j))  # [7 - j] = j
        first = b(Op.CMPLT, dt.bool_, (gid, const(1)))
        b(IrOp.IF, None, (first,))
        masked = b(IrOp.LOAD, f32, (data, gid, first))  # data[gid] where gid < 1, else 0
        b(IrOp.STORE, None, (sums, gid, b(Op.ADD, f32, (b(IrOp.HREDUCE, f32, (acc,), Op.ADD), masked))))
        b(IrOp.ENDIF, None, ())
        b(IrOp.ENDRANGE, None, (gid,))
        # a new IR op needs a place here (those that need work-groups: tests/test_gpu_kernels.py)
        assert {u.op for u in b.uops if isinstance(u.op, IrOp)} == {op for op in IrOp if op.requires is None}

    inputs = [(dt.float32, source)]
    vectors, scattered, sums = _run(backend, "op_table_ir_ops", build, outputs, inputs, (2,), {"trips": 3})
    base = np.repeat([0, 4], 4)
    lane = np.tile(np.arange(4), 2)
    expected = (
        3 * source[base + lane] + source[base + 2 * lane] + source[base + [1, 0, 3, 2] * 2] + source[base + 7 - lane]
    )
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)
    np.testing.assert_array_equal(scattered, 7 - np.arange(8))
    assert sums[0] == pytest.approx(3 * source[:4].sum() + source[0])
    assert np.all(sums[1:].view(np.uint32) == 0xFFFFFFFF)  # not written: the `if` did not hold there


# --- the compiler's source -----------------------------------------------------------------------------------------
COMPILER = ["lazygrad/graph.py", "lazygrad/autograd.py", "lazygrad/schedule.py", "lazygrad/runtime.py"]
COMPILER += ["lazygrad/ops.py", "lazygrad/codegen/*.py", "backends/*.py"]
OP_NAMES = {m.value for table in (Op, AstOp, IrOp) for m in table}


def _mentions_op(node) -> bool:
    return (isinstance(node, ast.Name) and node.id == "op") or (isinstance(node, ast.Attribute) and node.attr == "op")


def _op_names_in(node) -> list:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in OP_NAMES else []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [name for element in node.elts for name in _op_names_in(element)]
    return []


@pytest.mark.backend_independent
def test_the_compiler_compares_ops_by_member_never_by_name():
    """No `op == "add"`, `u.op in ("store", "scatter")` or table keyed by op names: a name would silently stop
    matching when the frontend passes members."""
    found = []
    for path in sorted(p for pattern in COMPILER for p in ROOT.glob(pattern)):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_mentions_op(side) for side in sides) and any(_op_names_in(side) for side in sides):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            elif isinstance(node, ast.Dict) and len(node.keys) > 1:
                if all(key is not None and _op_names_in(key) for key in node.keys):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} (a table keyed by op names)")
    assert not found, "ops compared by name: " + ", ".join(found)

"""The reference backend: the linear IR (lazygrad/codegen/ir.py) interpreted with numpy. Slow, complete, no compiler.

It is the executable specification of the IR, which the other backends are tested against (tests/test_reference.py),
and the smallest example of a backend (docs/backends.md).

All work-items of a kernel run together, as the lanes of numpy arrays: a uop's value is an array with one row per
work-item (and a column per lane for a vector), or one shared value where it is the same for all (a literal, a loop
variable). "global" ranges are the work-items' coordinates; "loop" ranges run in order, for all work-items at once;
an `if` narrows the set of active work-items, and only active ones write memory or accumulators. A work-group is
its consecutive work-items, so a `group_reduce` combines rows of one group.

Numbers are the other backends': integers wrap, `idiv` and `mod` truncate as in C, `shr` is arithmetic on signed
ints, `max` propagates NaN, float16 is stored as half (arithmetic on it is float32: the lowering's casts say so),
bool is one byte in memory. Memory is host memory (numpy byte arrays); a load or store outside its buffer raises.
"""

from __future__ import annotations

import math
import time

import numpy as np

from lazygrad import dtype as dt
from lazygrad.backends import Capabilities, HostMemory
from lazygrad.codegen.ir import Program, UOp
from lazygrad.codegen.verify import verify
from lazygrad.ops import IrOp, Op


def _truncated_quotient(a, b):
    """C's integer division: the quotient rounded toward zero (numpy's // rounds down); a divisor of 0 is taken
    as 1, as the compiled backends do (x / 0 is x, x % 0 is 0)."""
    b = np.where(b == 0, np.ones_like(b), b)
    if a.dtype.kind == "u":
        return a // b
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -quotient, quotient)


def _maximum(a, b):
    return a | b if a.dtype == np.bool_ else np.maximum(a, b)  # np.maximum propagates NaN


# the ALU table: each elementwise primitive as a numpy function of its operands (cast and bitcast: below)
_ALU = {
    Op.EXP2: np.exp2,
    Op.LOG2: np.log2,
    Op.SIN: np.sin,
    Op.SQRT: np.sqrt,
    Op.RECIP: np.reciprocal,
    Op.NEG: np.negative,
    Op.ADD: np.add,
    Op.MUL: np.multiply,
    Op.MAX: _maximum,
    Op.CMPLT: np.less,
    Op.CMPNE: np.not_equal,
    Op.IDIV: _truncated_quotient,
    Op.MOD: lambda a, b: a - _truncated_quotient(a, b) * np.where(b == 0, np.ones_like(b), b),
    Op.AND: np.bitwise_and,
    Op.OR: np.bitwise_or,
    Op.XOR: np.bitwise_xor,
    Op.SHL: np.left_shift,
    Op.SHR: np.right_shift,  # arithmetic on signed ints, logical on unsigned ones
    Op.WHERE: np.where,
}


def _cast(value, u: UOp):
    if u.dtype == dt.bool_:
        return value != 0  # NaN is true, as in C
    return value.astype(u.dtype.np)


def _bitcast(value, u: UOp):
    if u.dtype == dt.bool_:  # a byte is true when it is not zero, as a bool loaded from memory
        return np.ascontiguousarray(value).view(np.uint8) != 0
    return np.ascontiguousarray(value).view(u.dtype.np)


def _combine(op: Op, values, axis: int):
    """Values along an axis combined by hreduce or group_reduce (Op.ADD or Op.MAX)."""
    if values.dtype == np.bool_:
        return values.any(axis=axis)
    if op is Op.ADD:
        return np.add.reduce(values, axis=axis, dtype=values.dtype)  # integers wrap
    return np.maximum.reduce(values, axis=axis)


def _literal(value, d: dt.DType) -> np.ndarray:
    """A constant as a value of d: an int wraps to d's width, as the other backends' literals do (-1 as uint8
    is 255)."""
    if d.is_int:
        bits = int(value) & ((1 << (8 * d.itemsize)) - 1)
        return np.asarray(bits, dtype=np.dtype(f"u{d.itemsize}")).view(d.np)
    return np.asarray(bool(value) if d == dt.bool_ else float(value), dtype=d.np)


class _Run:
    """One launch of a program: the state of every work-item while the uops are interpreted."""

    def __init__(self, program: Program, memory: list, values: tuple = ()):
        self.program = program
        self.variables = dict(zip(program.variables, values))  # the Variables' values, by name
        self.items = math.prod(program.global_size) * program.local_size
        self.item = np.arange(self.items)
        self.group = self.item // program.local_size  # the point of the global ranges each work-item is at
        self.active = np.ones(self.items, dtype=bool)
        self.memory = memory  # byte arrays, one per buffer
        self.values: dict = {}  # uop id -> its value
        # each global range's place among them, outermost first (a range inside a loop is met more than once)
        ranges = [u for u in program.uops if u.op is IrOp.RANGE and u.arg[2] == "global"]
        self.global_place = {u.id: place for place, u in enumerate(ranges)}

    def full(self, value):
        """A scalar uop's value with one row per work-item (a shared value repeated)."""
        return np.broadcast_to(np.asarray(value), (self.items,))

    def buffer(self, param: UOp) -> np.ndarray:
        raw = self.memory[param.arg[0]]
        itemsize = param.dtype.itemsize  # (an empty buffer is allocated as one byte)
        return raw[: raw.size // itemsize * itemsize].view(np.uint8 if param.dtype == dt.bool_ else param.dtype.np)

    def execute(self):
        uops, pc = self.program.uops, 0
        block_end = _block_ends(uops)
        loop_start: dict = {}
        masks: list = []
        while pc < len(uops):
            u = uops[pc]
            op = u.op
            if op is IrOp.RANGE and u.arg[2] == "loop":
                self.values[u.id] = np.int32(0)
                loop_start[u.id] = pc + 1
            elif op is IrOp.ENDRANGE and u.srcs[0].arg[2] == "loop":
                r = u.srcs[0]
                following = self.values[r.id] + 1
                if following < (int(self.values[r.srcs[0].id]) if r.srcs else r.arg[1]):  # (a run-time bound)
                    self.values[r.id] = np.int32(following)
                    pc = loop_start[r.id]
                    continue
            elif op is IrOp.IF:
                masks.append(self.active)
                self.active = self.active & self.full(self.values[u.srcs[0].id])
                if not self.active.any():  # nothing inside can have an effect: skip the block
                    self.active = masks.pop()
                    pc = block_end[pc] + 1
                    continue
            elif op is IrOp.ENDIF:
                self.active = masks.pop()
            elif op in _STRUCTURE:
                _STRUCTURE[op](self, u)
            else:
                self.values[u.id] = self.alu(u)
            pc += 1

    def alu(self, u: UOp):
        operands = [self.values[s.id] for s in u.srcs]
        if u.op is Op.CAST:
            return _cast(operands[0], u)
        if u.op is Op.BITCAST:
            return _bitcast(operands[0], u)
        if u.op is Op.SHL or u.op is Op.SHR:  # a shift count is taken modulo the width, as x86 does
            operands[1] = operands[1] & (u.dtype.itemsize * 8 - 1)
        return np.asarray(_ALU[u.op](*operands)).astype(u.dtype.np, copy=False)

    # --- the IR's own ops (the ALU table is above) -----------------------------------------------
    def param(self, u: UOp):
        self.values[u.id] = u

    def const(self, u: UOp):
        self.values[u.id] = _literal(u.arg, u.dtype)

    def variable(self, u: UOp):
        self.values[u.id] = np.int32(self.variables[u.arg[0]])

    def global_range(self, u: UOp):
        """A work-item's coordinate along the next global range, outermost first."""
        sizes, place = self.program.global_size, self.global_place[u.id]
        inner = math.prod(sizes[place + 1 :])
        self.values[u.id] = ((self.group // inner) % sizes[place]).astype(np.int32)

    def nothing(self, u: UOp):
        pass  # the end of a global range: work-items are not a loop

    def acc(self, u: UOp):
        shape = (self.items,) if u.vec == 1 else (self.items, u.vec)
        self.values[u.id] = np.full(shape, u.arg, dtype=u.dtype.np)

    def acc_update(self, u: UOp):
        acc, value = u.srcs
        current, new = self.values[acc.id], self.values[value.id]
        active = self.active if acc.vec == 1 else self.active[:, None]
        self.values[acc.id] = np.where(active, new, current).astype(current.dtype, copy=False)

    def lanes(self, u: UOp):
        self.values[u.id] = np.arange(u.vec, dtype=np.int32)

    def broadcast(self, u: UOp):
        value = np.asarray(self.values[u.srcs[0].id])
        self.values[u.id] = np.broadcast_to(value[..., None], value.shape + (u.vec,))

    def hreduce(self, u: UOp):
        self.values[u.id] = _combine(u.arg, np.asarray(self.values[u.srcs[0].id]), axis=-1)

    def prefetch(self, u: UOp):
        pass  # a hint: nothing to compute

    def local_id(self, u: UOp):
        self.values[u.id] = (self.item % self.program.local_size).astype(np.int32)

    def group_reduce(self, u: UOp):
        combine, size = u.arg
        values = self.full(self.values[u.srcs[0].id]).reshape(-1, size)
        self.values[u.id] = np.repeat(_combine(combine, values, axis=1), size)

    def local(self, u: UOp):
        # one array per work-group; work-items run in lockstep here, so a barrier has nothing to wait for
        groups = math.prod(self.program.global_size)
        self.values[u.id] = np.zeros((groups, u.arg), dtype=u.dtype.np)

    def local_load(self, u: UOp):
        array, index = self.values[u.srcs[0].id], self.full(self.values[u.srcs[1].id])
        active = self.active
        self.check_local(u, array, index[active])
        self.values[u.id] = np.where(active, array[self.group, np.where(active, index, 0)], 0).astype(array.dtype)

    def local_store(self, u: UOp):
        array, index = self.values[u.srcs[0].id], self.full(self.values[u.srcs[1].id])
        value, active = self.full(self.values[u.srcs[2].id]), self.active
        self.check_local(u, array, index[active])
        array[self.group[active], index[active]] = value[active]

    def check_local(self, u: UOp, array: np.ndarray, indexes: np.ndarray):
        if indexes.size and (indexes.min() < 0 or indexes.max() >= array.shape[1]):
            raise IndexError(
                f"kernel {self.program.name}: {u!r} reaches elements {int(indexes.min())}..{int(indexes.max())} "
                f"of a local array of {array.shape[1]}"
            )

    # --- memory -------------------------------------------------------------------------------
    def lane_indexes(self, u: UOp, index, lanes: int) -> np.ndarray:
        """The element each lane of a vector load or store reads: from the lane-0 index by the arg's stride or
        offsets (load, store), or one index per lane (gather, scatter)."""
        if u.op is IrOp.GATHER or u.op is IrOp.SCATTER:
            return index
        arg = u.arg if u.op is IrOp.LOAD else None
        offsets = np.asarray(arg if isinstance(arg, tuple) else np.arange(lanes) * (arg or 1))
        return np.asarray(index)[..., None] + offsets

    def load(self, u: UOp):
        param, index = u.srcs[0], self.values[u.srcs[1].id]
        vector = u.vec > 1
        if vector:
            index = self.lane_indexes(u, index, u.vec)
        shape = (self.items, u.vec) if vector else (self.items,)
        valid = self.active if not vector else self.active[:, None]
        if len(u.srcs) == 3:
            given = np.asarray(self.values[u.srcs[2].id])
            valid = valid & (given[..., None] if vector and u.srcs[2].vec == 1 else given)
        valid = np.broadcast_to(valid, shape)
        index = np.broadcast_to(index, shape)
        data = self.buffer(param)
        self.check_bounds(u, data, index[valid])
        value = np.where(valid, data[np.where(valid, index, 0)] if data.size else 0, 0)  # invalid lanes read 0
        self.values[u.id] = value != 0 if u.dtype == dt.bool_ else value.astype(u.dtype.np, copy=False)

    def store(self, u: UOp):
        param, index, value = u.srcs
        index, value = self.values[index.id], self.values[value.id]
        vector = u.srcs[2].vec > 1
        if vector:
            index = self.lane_indexes(u, index, u.srcs[2].vec)
        shape = (self.items, u.srcs[2].vec) if vector else (self.items,)
        active = np.broadcast_to(self.active[:, None] if vector else self.active, shape)
        index, value = np.broadcast_to(index, shape)[active], np.broadcast_to(value, shape)[active]
        data = self.buffer(param)
        self.check_bounds(u, data, index)
        data[index] = value

    def check_bounds(self, u: UOp, data: np.ndarray, indexes: np.ndarray):
        if indexes.size and (indexes.min() < 0 or indexes.max() >= data.size):
            raise IndexError(
                f"kernel {self.program.name}: {u!r} reaches elements {int(indexes.min())}..{int(indexes.max())} "
                f"of buffer {u.srcs[0].arg[0]}, which has {data.size}"
            )


def _block_ends(uops: list) -> dict:
    """The position of each if's endif (to skip a block no work-item enters)."""
    ends, open_ifs = {}, []
    for position, u in enumerate(uops):
        if u.op is IrOp.IF:
            open_ifs.append(position)
        elif u.op is IrOp.ENDIF:
            ends[open_ifs.pop()] = position
    return ends


_STRUCTURE = {
    IrOp.PARAM: _Run.param,
    IrOp.VARIABLE: _Run.variable,
    IrOp.CONST: _Run.const,
    IrOp.RANGE: _Run.global_range,  # a "loop" range is handled by the interpreter's loop
    IrOp.ENDRANGE: _Run.nothing,
    IrOp.ACC: _Run.acc,
    IrOp.ACC_UPDATE: _Run.acc_update,
    IrOp.LOAD: _Run.load,
    IrOp.STORE: _Run.store,
    IrOp.GATHER: _Run.load,
    IrOp.SCATTER: _Run.store,
    IrOp.LANES: _Run.lanes,
    IrOp.BROADCAST: _Run.broadcast,
    IrOp.HREDUCE: _Run.hreduce,
    IrOp.PREFETCH: _Run.prefetch,
    IrOp.LOCAL_ID: _Run.local_id,
    IrOp.GROUP_REDUCE: _Run.group_reduce,
    IrOp.LOCAL: _Run.local,
    IrOp.LOCAL_LOAD: _Run.local_load,
    IrOp.LOCAL_STORE: _Run.local_store,
    IrOp.BARRIER: _Run.nothing,
}
# IF and ENDIF change which work-items are active: the interpreter's loop handles them
RENDERED = frozenset(_STRUCTURE) | {IrOp.IF, IrOp.ENDIF}


def run(program: Program, memory: list, values: tuple = ()) -> None:
    """Run `program` on `memory` (one numpy byte array per buffer, outputs first), in place; `values`: its
    Variables' values."""
    with np.errstate(all="ignore"):  # integers wrap and floats overflow to inf, silently, as on a device
        _Run(program, memory, values).execute()


class ReferenceKernel:
    def __init__(self, program: Program):
        verify(program)  # the interpreter assumes a well-formed program, as every backend may
        self.name, self.program, self.source = program.name, program, program.dump()

    def __call__(self, buffers: list, wait: bool = False, values: tuple = ()) -> float | None:
        start = time.perf_counter()
        run(self.program, buffers, values)
        return time.perf_counter() - start if wait else None

    def bind(self, buffers: list, values: tuple = ()):
        """A launcher with the buffers fixed: `launch(wait) -> seconds or None` (the step JIT replays these)."""
        current = list(values)

        def launch(wait=False):
            return self(buffers, wait, tuple(current))

        launch.set_values = lambda new_values: current.__setitem__(slice(None), list(new_values))
        return launch


class ReferenceBackend(HostMemory):
    name = "reference"
    device_name = "numpy interpreter of the linear IR"
    is_gpu = False

    def __init__(self):
        # vectors of 4 lanes, so that vector IR runs here too; work-groups of up to 64 items, so that a reduce
        # with few outputs runs as work-group reductions (which also makes the interpreter faster: more rows)
        self.capabilities = Capabilities(
            vector_width=4, group_reduce=64, local_memory=1 << 16, max_work_group=64, compute_units=1
        )

    def allocate(self, nbytes: int):
        return np.zeros(max(nbytes, 1), dtype=np.uint8)

    def compile_ahead(self, programs: list) -> None:
        pass  # each program is built when `compile` gets it

    def compile(self, program: Program) -> ReferenceKernel:
        return ReferenceKernel(program)


def create(name: str = "reference") -> ReferenceBackend:
    return ReferenceBackend()

"""The linear low-level IR that every backend renders.

A kernel becomes a flat list of `UOp`s in program order. Loops are explicit (`range` ...
`endrange`), and so are conditional blocks (`if` ... `endif`); accumulators are mutable variables (`acc`,
`acc_update`); everything else is SSA: each UOp's `srcs` refer to earlier UOps. Indexes are int32.

A UOp's `op` is an `IrOp` (param, variable, const, range, endrange, if, endif, acc, acc_update, load, store, gather,
scatter, lanes, broadcast, hreduce: the table in lazygrad/ops.py gives each one's srcs and arg) or an
elementwise `Op`, an ALU op whose operands are its srcs (cast and bitcast: arg the source dtype; an int32 add or
mul of an index expression: arg INDEX_ARITHMETIC, see below).

"global" ranges are parallel (the first is split across threads or work-items); "loop" ranges run in order.
A `range` UOp is also the loop variable's value; an `acc` UOp read as an operand is the accumulator's
current value. A load whose valid is false reads 0; a vector load with stride s reads index + i*s in lane i,
one with a tuple of offsets reads index + offsets[i].

Work-groups: a program with `local_size` > 1 runs that many work-items per point of its global ranges (a
work-group, for devices that declare `group_reduce`); its global ranges then index work-groups, `local_id` is
a work-item's index in its group, and `group_reduce` gives every work-item of the group the group's values
combined. Every work-item reaches every `group_reduce` (it holds a barrier): such programs guard stores with
`if`, never return early.

Vectors: a UOp with `vec` > 1 holds that many lanes. A `load`/`store` whose index is a scalar and
whose value is a vector reads/writes `vec` consecutive elements from that index (lanes whose valid
is false read 0 and touch no memory). ALU ops take operands of equal `vec`. Backends without vector
support are lowered with vector width 1 and never see these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lazygrad.dtype import DType
from lazygrad.ops import IrOp, Op

# The arg of an int32 add or mul that computes an index (a load's or store's address, a valid mask's operand): such
# arithmetic never overflows, since the runtime refuses buffers and loops beyond 2**31 - 1 elements
# (runtime._check_32_bit_indexes), so a backend may say so (LLVM's `nsw`: it then widens the index to 64 bits once per
# loop and folds constant offsets into addressing, instead of sign-extending each index). Arithmetic on int32 tensor
# values has no arg: it wraps, as PyTorch's does.
INDEX_ARITHMETIC = "index"


@dataclass(eq=False)
class UOp:
    op: IrOp | Op  # an IrOp, or an elementwise Op (an ALU op)
    dtype: DType | None
    srcs: tuple = ()
    arg: object = None
    id: int = field(default=-1)
    vec: int = 1  # lanes: 1 is a scalar; n > 1 is a vector of n values of dtype

    def __repr__(self):
        srcs = ",".join(f"%{s.id}" for s in self.srcs)
        lanes = f"x{self.vec}" if self.vec > 1 else ""
        return f"%{self.id} = {self.op} {self.dtype.name if self.dtype else ''}{lanes} ({srcs}) {self.arg!r}"


@dataclass
class Program:
    """A linearized kernel: what a backend needs to render and launch it."""

    name: str
    uops: list
    buffer_dtypes: tuple  # per buffer index, output first
    global_size: tuple  # sizes of the global ranges, outermost first
    local_size: int = 1  # work-items per point of the global ranges (a work-group sharing a reduce), else 1
    # buffer indexes that share memory with another argument of the launch (an assign's target that the kernel
    # also reads): renderers must not promise the compiler that they do not alias (no restrict, no noalias)
    aliased: frozenset = frozenset()
    # the names of the Variables (run-time sizes and offsets) the kernel takes as int32 arguments after its buffers
    variables: tuple = ()

    def dump(self) -> str:
        return "\n".join(repr(u) for u in self.uops)

    def summary(self) -> Program:
        """This program without its IR: what a compiled kernel keeps to be launched and reported. (Kept whole, the
        IR of every compiled kernel, ~200 UOps and their tuples each, is walked by every full garbage collection.)"""
        return dataclasses.replace(self, uops=[])

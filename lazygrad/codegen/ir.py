"""The linear low-level IR that every backend renders.

A kernel becomes a flat list of `UOp`s in program order. Loops are explicit (`range` ...
`endrange`); accumulators are mutable variables (`acc`, `acc_update`); everything else is SSA:
each UOp's `srcs` refer to earlier UOps. Indexes are int32.

| op         | srcs                      | arg                               |
| ---------- | ------------------------- | --------------------------------- |
| param      | -                         | (buffer index, is_output)          |
| const      | -                         | Python value                      |
| range      | -                         | (name, size, kind), kind "global" or "loop" (1) |
| endrange   | (range,)                  | -                                 |
| acc        | -                         | initial value (a variable; every lane of a vector acc) |
| acc_update | (acc, value)              | -  (acc = value)                  |
| load       | (param, index[, valid])   | None; or for a vector a stride s (2) |
| store      | (param, index, value)     | -                                 |
| gather     | (param, index vector[, valid]) | - (a vector load from lane-wise indexes) |
| scatter    | (param, index vector, value)   | -                                 |
| lanes      | -                         | - (the int32 vector 0, 1, ..., vec-1)  |
| broadcast  | (scalar,)                 | - (the scalar in every lane)       |
| hreduce    | (vector,)                 | "add" or "max": the lanes combined into a scalar |
| if         | (bool,)                   | - (the uops up to the matching endif run when it is true) |
| endif      | -                         | -                                 |
| local_id   | -                         | group size: this work-item's index in its work-group (3) |
| group_reduce | (value,)                | ("add" or "max", group size): the group's values combined (3) |
| alu ops    | operands                  | cast/bitcast: source dtype         |

(1) "global" ranges are parallel (the first is split across threads or work-items); "loop" ranges
run in order. (2) valid false reads 0; a vector load with stride s reads index + i*s in lane i.
(3) Only in programs with `local_size` > 1 (work-groups of that many work-items per output, for
devices that declare `group_reduce`): the global ranges then index work-groups. group_reduce gives
every work-item of the group the combined value. Every work-item reaches every `group_reduce` (it
holds a barrier): such programs guard stores with `if`, never return early.

alu ops: exp2 log2 sin sqrt recip neg cast bitcast add mul max cmplt cmpne idiv mod and or xor
shl shr where. A `range` UOp is also the loop variable's value; an `acc` UOp read as an operand is
the accumulator's current value.

Vectors: a UOp with `vec` > 1 holds that many lanes. A `load`/`store` whose index is a scalar and
whose value is a vector reads/writes `vec` consecutive elements from that index (lanes whose valid
is false read 0 and touch no memory). ALU ops take operands of equal `vec`. Backends without vector
support are lowered with vector width 1 and never see these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lazygrad.dtype import DType


@dataclass(eq=False)
class UOp:
    op: str
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

    def dump(self) -> str:
        return "\n".join(repr(u) for u in self.uops)

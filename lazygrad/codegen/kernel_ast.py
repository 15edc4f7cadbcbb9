"""The kernel AST: what the scheduler hands to the code generator.

One kernel stores one buffer. Its AST is a tree of `KernelOp`s whose leaves read buffers through
ShapeTrackers (by position in the kernel's buffer list, so that two kernels that differ only in
which buffers they touch are one compiled program) and whose root is a store. A kernel holds at
most one reduce; ops above it (the epilogue) work in the reduced shape.

A node's `op` is an `AstOp` (load, const, valid, reduce, store, sink: the table in lazygrad/ops.py says what each
holds) or an elementwise `Op`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lazygrad.dtype import DType
from lazygrad.ops import AstOp, Op


@dataclass(frozen=True, eq=True)
class KernelOp:
    op: AstOp | Op  # an AstOp, or an elementwise Op
    srcs: tuple = ()
    arg: object = None  # AstOp's table says what; cast: the target DType, bitcast: the source DType
    dtype: DType | None = None

    def __hash__(self):  # cached: kernels are DAGs, and an uncached hash would unfold them into trees
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash((self.op, self.srcs, self.arg, self.dtype))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __eq__(self, other):  # each pair of nodes compared once: the generated field-by-field __eq__ unfolds DAGs
        if self is other:
            return True
        if not isinstance(other, KernelOp):
            return NotImplemented
        compared, stack = set(), [(self, other)]
        while stack:
            a, b = stack.pop()
            if a is b or (id(a), id(b)) in compared:
                continue
            if hash(a) != hash(b) or (a.op, a.arg, a.dtype, len(a.srcs)) != (b.op, b.arg, b.dtype, len(b.srcs)):
                return False
            if a.op is AstOp.CONST and a.arg[0] == 0 and _signed_zero(a.arg[0]) != _signed_zero(b.arg[0]):
                return False  # 0.0 == -0.0, but not as a kernel's constant (1 / x tells them apart)
            compared.add((id(a), id(b)))
            stack.extend(zip(a.srcs, b.srcs))
        return True

    def walk(self):
        """Every node once, sources before users (iterative: no recursion limit, no reference cycle)."""
        seen, order, stack = set(), [], [(self, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((s, False) for s in reversed(node.srcs) if id(s) not in seen)
        return order

    def structure(self) -> str:
        """A canonical text of the kernel, one line per distinct node (linear in the DAG's size): the key of
        its compiled program in memory and on disk. Cached on the node (nodes are immutable): a new kernel's key
        is asked for by its lowering, its name, the disk cache and the kernel cache."""
        cached = self.__dict__.get("_structure")
        if cached is not None:
            return cached
        number, lines = {}, []
        for node in self.walk():
            number[id(node)] = len(lines)
            srcs = ",".join(str(number[id(s)]) for s in node.srcs)
            lines.append(f"{node.op}|{node.dtype.name if node.dtype else ''}|{node.arg!r}|{srcs}")
        text = "\n".join(lines)
        object.__setattr__(self, "_structure", text)
        return text

    def describe(self, depth=0) -> str:
        pad = "  " * depth
        arg = self.arg
        if self.op is AstOp.LOAD or self.op is AstOp.STORE:
            arg = (arg[0], [(v.shape, v.strides, v.offset, v.mask) for v in arg[1].views])
        head = f"{pad}{self.op} {self.dtype.name if self.dtype else ''} {arg if arg is not None else ''}"
        return "\n".join([head] + [s.describe(depth + 1) for s in self.srcs])


def _signed_zero(value) -> bool:
    return isinstance(value, float) and math.copysign(1.0, value) < 0

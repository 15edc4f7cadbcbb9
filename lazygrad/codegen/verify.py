"""The IR verifier: checks a linear IR program (codegen/ir.py) against the op tables in lazygrad/ops.py.

`verify(program)` raises `IRError` naming the first uop that breaks a rule, and the rule. The rules are what every
backend may assume of the programs it is given:

- each uop's op is an `IrOp` or an elementwise `Op` (an ALU op), with the number of sources its row says;
- every source is a uop defined earlier, in a block (range or if) that is still open;
- dtypes: an ALU result follows its row's dtype rule, on operands of a dtype kind the row accepts; comparisons
  give bool; cast and bitcast name the source dtype in their arg (bitcast between dtypes of one size); only an
  int32 add or mul carries INDEX_ARITHMETIC (codegen/ir.py: index arithmetic that never overflows); loads and
  stores go through a param, with int32 indexes and bool valids, in the param's dtype;
- vectors: the operands of an ALU op have the vec of its result; broadcast, hreduce, gather and scatter change
  lanes as their rows say;
- ranges and ifs nest: each endrange closes the innermost open block, which must be its range, and each endif an
  if; the global ranges are the program's global_size, in order;
- work-group uops (rows whose `requires` is set) appear only in programs with local_size > 1, and a
  group_reduce or barrier never inside an if (every work-item of the group must reach it); local loads and
  stores go through a local array, in its dtype, with int32 indexes;
- only output params are stored to.
"""

from __future__ import annotations

from lazygrad import dtype as dt
from lazygrad.codegen.ir import INDEX_ARITHMETIC, Program, UOp
from lazygrad.ops import ELEMENTWISE, DtypeRule, IrOp, Op


class IRError(ValueError):
    """A program that breaks a rule of the IR: a bug in whatever produced it (the lowering, or a hand-made test)."""


# how many sources each IR op takes (a range: load and gather take an optional valid)
_SOURCES = {
    IrOp.PARAM: (0, 0),
    IrOp.VARIABLE: (0, 0),
    IrOp.CONST: (0, 0),
    IrOp.RANGE: (0, 1),
    IrOp.ENDRANGE: (1, 1),
    IrOp.IF: (1, 1),
    IrOp.ENDIF: (0, 0),
    IrOp.ACC: (0, 0),
    IrOp.ACC_UPDATE: (2, 2),
    IrOp.LOAD: (2, 3),
    IrOp.STORE: (3, 3),
    IrOp.GATHER: (2, 3),
    IrOp.SCATTER: (3, 3),
    IrOp.LANES: (0, 0),
    IrOp.BROADCAST: (1, 1),
    IrOp.HREDUCE: (1, 1),
    IrOp.PREFETCH: (2, 2),
    IrOp.LOCAL_ID: (0, 0),
    IrOp.GROUP_REDUCE: (1, 1),
    IrOp.LOCAL: (0, 0),
    IrOp.LOCAL_LOAD: (2, 2),
    IrOp.LOCAL_STORE: (3, 3),
    IrOp.BARRIER: (0, 0),
}
_REDUCING = (Op.ADD, Op.MAX)  # what hreduce and group_reduce combine with


def verify(program: Program) -> None:
    """Raise IRError unless every uop of `program` follows the rules of the IR."""
    _Verifier(program).run()


class _Verifier:
    def __init__(self, program: Program):
        self.program = program
        self.blocks: list = []  # the open ranges and ifs, innermost last
        self.visible: list = [set()]  # ids of the uops defined in each open block (the outermost first)
        self.global_sizes: list = []

    def fail(self, u: UOp, rule: str):
        raise IRError(f"kernel {self.program.name}: uop {u!r}: {rule}")

    def run(self):
        for u in self.program.uops:
            self.check(u)
            self.visible[-1].add(id(u))
        if self.blocks:
            self.fail(self.blocks[-1], "never closed (a range needs its endrange, an if its endif)")
        if tuple(self.global_sizes) != tuple(self.program.global_size):
            raise IRError(
                f"kernel {self.program.name}: its global ranges have sizes {tuple(self.global_sizes)}, "
                f"but the program's global_size is {tuple(self.program.global_size)}"
            )

    def check(self, u: UOp):
        if not isinstance(u, UOp):
            raise IRError(f"kernel {self.program.name}: {u!r} is not a UOp")
        if isinstance(u.op, IrOp):
            low, high = _SOURCES[u.op]
        elif isinstance(u.op, Op) and u.op in ELEMENTWISE:
            low = high = u.op.arity
        else:
            self.fail(u, f"{u.op!r} is neither an IrOp nor an elementwise Op")
        if not low <= len(u.srcs) <= high:
            expected = str(low) if low == high else f"{low} to {high}"
            self.fail(u, f"{u.op} takes {expected} sources, not {len(u.srcs)}")
        for s in u.srcs:
            if not isinstance(s, UOp) or not any(id(s) in level for level in self.visible):
                self.fail(u, f"source {s!r} is not defined earlier in an open block")
        if not isinstance(u.vec, int) or u.vec < 1:
            self.fail(u, f"vec must be a positive int, not {u.vec!r}")
        if isinstance(u.op, Op):
            self.alu(u)
        else:
            if u.op.requires is not None and self.program.local_size <= 1:
                self.fail(u, f"{u.op} needs work-groups, but the program's local_size is {self.program.local_size}")
            _CHECKS[u.op](self, u)

    # --- ALU ops ---------------------------------------------------------------------------------
    def alu(self, u: UOp):
        op, srcs = u.op, u.srcs
        if any(s.vec != u.vec for s in srcs):
            self.fail(u, f"operands of {op} must have its vec {u.vec}, not {[s.vec for s in srcs]}")
        if any(s.dtype is None for s in srcs) or not isinstance(u.dtype, dt.DType):
            self.fail(u, f"{op} computes on values with dtypes")
        values = srcs[1:] if op is Op.WHERE else srcs
        kind = values[0].dtype.kind
        if kind not in op.kinds:
            self.fail(u, f"{op} does not compute on {values[0].dtype.name} (its row accepts kinds {op.kinds!r})")
        if op is Op.CAST or op is Op.BITCAST:
            if u.arg != srcs[0].dtype:
                self.fail(u, f"{op}'s arg must be its source's dtype {srcs[0].dtype.name}, not {u.arg!r}")
            if op is Op.BITCAST and u.dtype.itemsize != srcs[0].dtype.itemsize:
                self.fail(u, f"bitcast between dtypes of different sizes ({srcs[0].dtype.name} -> {u.dtype.name})")
            return
        if u.arg == INDEX_ARITHMETIC and not (op in (Op.ADD, Op.MUL) and u.dtype == dt.int32):
            self.fail(u, f"only an int32 add or mul computes an index, not {op} on {u.dtype.name}")
        if op is Op.WHERE and srcs[0].dtype != dt.bool_:
            self.fail(u, f"where's condition must be bool, not {srcs[0].dtype.name}")
        if any(s.dtype != values[0].dtype for s in values):
            self.fail(u, f"operands of {op} must have one dtype, not {[s.dtype.name for s in values]}")
        expected = dt.bool_ if op.dtype_rule is DtypeRule.BOOL else values[0].dtype
        if u.dtype != expected:
            self.fail(u, f"{op}'s result is {expected.name} ({op.dtype_rule.value}), not {u.dtype.name}")

    # --- the IR's own ops ------------------------------------------------------------------------
    def expect_dtype(self, u: UOp, value: UOp, dtype: dt.DType, what: str):
        if value.dtype != dtype:
            self.fail(u, f"{what} must be {dtype.name}, not {value.dtype.name if value.dtype else None}")

    def param(self, u: UOp):
        arg = u.arg
        if not (isinstance(arg, tuple) and len(arg) == 2 and isinstance(arg[0], int)):
            self.fail(u, "a param's arg is (buffer index, is_output)")
        if not 0 <= arg[0] < len(self.program.buffer_dtypes):
            self.fail(u, f"buffer {arg[0]} does not exist (the program has {len(self.program.buffer_dtypes)})")
        if u.dtype != self.program.buffer_dtypes[arg[0]] or u.vec != 1:
            self.fail(u, f"a param has its buffer's dtype {self.program.buffer_dtypes[arg[0]].name}, one lane")

    def variable(self, u: UOp):
        arg = u.arg
        if not (isinstance(arg, tuple) and len(arg) == 3 and arg[0] in self.program.variables):
            self.fail(
                u, f"a variable's arg is (name, min, max), its name one of the program's {self.program.variables}"
            )
        self.expect_dtype(u, u, dt.int32, "a variable")

    def const(self, u: UOp):
        if not isinstance(u.dtype, dt.DType) or u.vec != 1:
            self.fail(u, "a const is a scalar with a dtype (broadcast makes a vector of it)")

    def range(self, u: UOp):
        arg = u.arg
        if not (isinstance(arg, tuple) and len(arg) == 3 and arg[2] in ("global", "loop")):
            self.fail(u, 'a range\'s arg is (name, size, "global" or "loop")')
        if not isinstance(arg[1], int) or arg[1] < 1:
            self.fail(u, f"a range's size must be a positive int (loops run at least once), not {arg[1]!r}")
        self.expect_dtype(u, u, dt.int32, "a range's variable")
        if u.srcs:
            if arg[2] != "loop":
                self.fail(u, "only a loop range takes a run-time bound (global ranges are the launch's size)")
            self.expect_dtype(u, u.srcs[0], dt.int32, "a range's bound")
        if arg[2] == "global":
            self.global_sizes.append(arg[1])
        self.open(u)

    def endrange(self, u: UOp):
        (r,) = u.srcs
        if r.op is not IrOp.RANGE:
            self.fail(u, f"endrange closes a range, not {r.op}")
        self.close(u, r)

    def if_(self, u: UOp):
        (condition,) = u.srcs
        if condition.dtype != dt.bool_ or condition.vec != 1:
            self.fail(u, "an if's condition is a scalar bool")
        self.open(u)

    def endif(self, u: UOp):
        if not self.blocks or self.blocks[-1].op is not IrOp.IF:
            self.fail(u, "endif without an open if as the innermost block")
        self.close(u, self.blocks[-1])

    def open(self, u: UOp):
        self.blocks.append(u)
        self.visible.append(set())

    def close(self, u: UOp, block: UOp):
        if not self.blocks or self.blocks[-1] is not block:
            innermost = repr(self.blocks[-1]) if self.blocks else "nothing"
            self.fail(u, f"closes {block!r}, but the innermost open block is {innermost}")
        self.blocks.pop()
        self.visible.pop()

    def acc(self, u: UOp):
        if not isinstance(u.dtype, dt.DType) or u.arg is None:
            self.fail(u, "an acc has a dtype and an initial value")

    def acc_update(self, u: UOp):
        acc, value = u.srcs
        if acc.op is not IrOp.ACC:
            self.fail(u, f"acc_update writes an acc, not {acc.op}")
        if value.dtype != acc.dtype or value.vec != acc.vec:
            self.fail(u, f"the value must be the acc's {acc.dtype.name}x{acc.vec}, not {value.dtype}x{value.vec}")

    def memory(self, u: UOp, index_lanes: int, value: UOp | None = None):
        """Checks shared by loads, stores, gathers and scatters."""
        param, index = u.srcs[0], u.srcs[1]
        if param.op is not IrOp.PARAM:
            self.fail(u, f"{u.op} goes through a param, not {param.op}")
        self.expect_dtype(u, index, dt.int32, "an index")
        if index.vec != index_lanes:
            self.fail(u, f"{u.op}'s index has {index_lanes} lane(s), not {index.vec}")
        data = value if value is not None else u
        if data.dtype != param.dtype:
            self.fail(u, f"{u.op} of {data.dtype} through a param of {param.dtype.name}")
        if value is not None and not param.arg[1]:
            self.fail(u, f"stores to buffer {param.arg[0]}, which is not an output")
        if value is None and len(u.srcs) == 3:
            valid = u.srcs[2]
            self.expect_dtype(u, valid, dt.bool_, "a valid")
            if valid.vec not in (1, u.vec):
                self.fail(u, f"a valid has 1 or {u.vec} lanes, not {valid.vec}")

    def load(self, u: UOp):
        self.memory(u, 1)
        arg = u.arg
        if u.vec == 1 and arg is not None:
            self.fail(u, f"a scalar load's arg is None, not {arg!r}")
        if isinstance(arg, tuple) and (len(arg) != u.vec or not all(isinstance(x, int) and x >= 0 for x in arg)):
            self.fail(u, f"a load's lane offsets are {u.vec} ints >= 0, not {arg!r}")
        if not (arg is None or isinstance(arg, tuple) or (isinstance(arg, int) and arg >= 1)):
            self.fail(u, f"a load's arg is None, a lane stride >= 1 or lane offsets, not {arg!r}")

    def store(self, u: UOp):
        self.memory(u, 1, u.srcs[2])

    def gather(self, u: UOp):
        if u.vec < 2:
            self.fail(u, "a gather loads a vector")
        self.memory(u, u.vec)

    def scatter(self, u: UOp):
        value = u.srcs[2]
        if value.vec < 2:
            self.fail(u, "a scatter stores a vector")
        self.memory(u, value.vec, value)

    def prefetch(self, u: UOp):
        param, index = u.srcs
        if param.op is not IrOp.PARAM:
            self.fail(u, f"prefetch goes through a param, not {param.op}")
        self.expect_dtype(u, index, dt.int32, "an index")
        if index.vec != 1 or u.dtype is not None or u.vec != 1:
            self.fail(u, "prefetch takes a scalar index and has no value or lanes")
        if type(u.arg) is not int:
            self.fail(u, f"prefetch's arg is an int offset, not {u.arg!r}")

    def lanes(self, u: UOp):
        if u.vec < 2 or u.dtype != dt.int32:
            self.fail(u, "lanes is an int32 vector")

    def broadcast(self, u: UOp):
        (src,) = u.srcs
        if src.vec != 1 or u.vec < 2 or u.dtype != src.dtype:
            self.fail(u, "broadcast makes a vector of a scalar, in its dtype")

    def hreduce(self, u: UOp):
        (src,) = u.srcs
        if src.vec < 2 or u.vec != 1 or u.dtype != src.dtype:
            self.fail(u, "hreduce combines a vector's lanes into a scalar of its dtype")
        if u.arg not in _REDUCING:
            self.fail(u, f"hreduce combines with Op.ADD or Op.MAX, not {u.arg!r}")

    def local_id(self, u: UOp):
        if u.dtype != dt.int32 or u.vec != 1 or u.arg != self.program.local_size:
            self.fail(u, f"local_id is a scalar int32 with arg the group size {self.program.local_size}")

    def group_reduce(self, u: UOp):
        (src,) = u.srcs
        if not (isinstance(u.arg, tuple) and len(u.arg) == 2 and u.arg[0] in _REDUCING):
            self.fail(u, "group_reduce's arg is (Op.ADD or Op.MAX, group size)")
        if u.arg[1] != self.program.local_size:
            self.fail(u, f"group_reduce over {u.arg[1]} items in work-groups of {self.program.local_size}")
        if src.vec != 1 or u.vec != 1 or u.dtype != src.dtype:
            self.fail(u, "group_reduce combines scalars, in their dtype")
        if any(block.op is IrOp.IF for block in self.blocks):
            self.fail(u, "group_reduce inside an if: every work-item of the group must reach it")

    def local(self, u: UOp):
        if not isinstance(u.dtype, dt.DType) or u.vec != 1 or not (isinstance(u.arg, int) and u.arg >= 1):
            self.fail(u, "a local array has a dtype, one lane and an element count >= 1 as its arg")

    def local_access(self, u: UOp):
        array, index = u.srcs[0], u.srcs[1]
        if array.op is not IrOp.LOCAL:
            self.fail(u, f"{u.op} goes through a local array, not {array.op}")
        self.expect_dtype(u, index, dt.int32, "an index")
        data = u.srcs[2] if u.op is IrOp.LOCAL_STORE else u
        if data.dtype != array.dtype or data.vec != 1 or index.vec != 1:
            self.fail(u, f"{u.op} moves scalars of the local array's {array.dtype.name}")

    def barrier(self, u: UOp):
        if any(block.op is IrOp.IF for block in self.blocks):
            self.fail(u, "barrier inside an if: every work-item of the group must reach it")


_CHECKS = {
    IrOp.PARAM: _Verifier.param,
    IrOp.VARIABLE: _Verifier.variable,
    IrOp.CONST: _Verifier.const,
    IrOp.RANGE: _Verifier.range,
    IrOp.ENDRANGE: _Verifier.endrange,
    IrOp.IF: _Verifier.if_,
    IrOp.ENDIF: _Verifier.endif,
    IrOp.ACC: _Verifier.acc,
    IrOp.ACC_UPDATE: _Verifier.acc_update,
    IrOp.LOAD: _Verifier.load,
    IrOp.STORE: _Verifier.store,
    IrOp.GATHER: _Verifier.gather,
    IrOp.SCATTER: _Verifier.scatter,
    IrOp.LANES: _Verifier.lanes,
    IrOp.BROADCAST: _Verifier.broadcast,
    IrOp.HREDUCE: _Verifier.hreduce,
    IrOp.PREFETCH: _Verifier.prefetch,
    IrOp.LOCAL_ID: _Verifier.local_id,
    IrOp.GROUP_REDUCE: _Verifier.group_reduce,
    IrOp.LOCAL: _Verifier.local,
    IrOp.LOCAL_LOAD: _Verifier.local_access,
    IrOp.LOCAL_STORE: _Verifier.local_access,
    IrOp.BARRIER: _Verifier.barrier,
}

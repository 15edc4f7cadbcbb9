"""The op tables: one enum per vocabulary of the compiler, one row per member.

- `Op`: the graph's primitives (`LazyBuffer.op`), with what the compiler needs to know of each: its group, arity,
  the dtype of its result, the dtype kinds it computes on, whether it has a gradient, and for a reduce its
  identity and the ALU op that folds one more element in. Its elementwise members are also the ALU ops of the
  kernel AST and of the linear IR, where they mean the same computation.
- `AstOp`: the kernel AST's own node kinds (`KernelOp.op`, lazygrad/codegen/kernel_ast.py).
- `IrOp`: the linear IR's own uop kinds (`UOp.op`, lazygrad/codegen/ir.py); every backend renders every one that
  needs no declared capability (the work-group ones need `group_reduce`).

A word names one thing: `Op.CONST` is a constant node of the graph, `AstOp.CONST` a constant read through a view
inside a kernel, `IrOp.CONST` a literal of the IR. They are distinct members and compare unequal.

Adding a primitive: its row here, its gradient rule in autograd.py (if differentiable), one line in each
renderer's ALU table (backends/llvm.py, backends/opencl.py). tests/test_op_table.py checks all of that.
"""

from __future__ import annotations

from enum import Enum, unique

from lazygrad.dtype import DType, bool_, lowest, zero


class Group(Enum):
    SOURCE = "source"  # no operands: realized data, a constant, data waiting on the host
    UNARY = "unary"
    BINARY = "binary"
    TERNARY = "ternary"
    REDUCE = "reduce"  # over axes, which stay as size-1 dims
    MOVEMENT = "movement"  # changes the view only (recorded in `LazyBuffer.movement`, never a node of its own)
    EFFECT = "effect"  # writes memory: an in-place update, a forced buffer, a copy between devices
    VIEW = "view"  # a node that is a base seen through movement ops

    def __repr__(self):
        return f"Group.{self.name}"


class DtypeRule(Enum):
    """The dtype of a primitive's result: a description, and the rule (first operand's dtype, last operand's, arg)
    -> dtype."""

    def __new__(cls, description, rule):
        member = object.__new__(cls)
        member._value_ = description
        member.rule = rule  # None: the caller names the dtype
        return member

    SAME = "the dtype of its first operand", lambda first, last, arg: first
    BOOL = "bool (a comparison)", lambda first, last, arg: bool_
    VALUE = "the dtype of its value operands (where's second and third)", lambda first, last, arg: last
    ARG = "the dtype in its arg (cast)", lambda first, last, arg: arg
    GIVEN = "named by whoever builds the node (sources; bitcast, whose arg is the source dtype)", None

    def __repr__(self):
        return f"DtypeRule.{self.name}"


# dtype kinds (DType.kind) an elementwise primitive computes on: b bool, u unsigned, i signed, f float
ALL_KINDS = "buif"


@unique
class Op(str, Enum):
    """The graph's primitives, one row each.

    Op mixes in str only so that the string names the frontend passes ("add", "sum") hash and compare equal to
    their members until it passes the members themselves; inside the compiler an Op is compared by identity
    (`op is Op.ADD`, `op in REDUCE`), never to a string (tests/test_op_table.py reads the source to check).
    """

    # name, group, arity, result dtype, kinds it computes on, differentiable[, identity, combine]
    BUFFER = "buffer", Group.SOURCE, 0, DtypeRule.GIVEN, "", False
    CONST = "const", Group.SOURCE, 0, DtypeRule.GIVEN, "", False
    HOST = "host", Group.SOURCE, 0, DtypeRule.GIVEN, "", False
    EXP2 = "exp2", Group.UNARY, 1, DtypeRule.SAME, "f", True
    LOG2 = "log2", Group.UNARY, 1, DtypeRule.SAME, "f", True
    SIN = "sin", Group.UNARY, 1, DtypeRule.SAME, "f", True
    SQRT = "sqrt", Group.UNARY, 1, DtypeRule.SAME, "f", True
    RECIP = "recip", Group.UNARY, 1, DtypeRule.SAME, "f", True
    NEG = "neg", Group.UNARY, 1, DtypeRule.SAME, "uif", True
    CAST = "cast", Group.UNARY, 1, DtypeRule.ARG, ALL_KINDS, True
    BITCAST = "bitcast", Group.UNARY, 1, DtypeRule.GIVEN, ALL_KINDS, False
    ADD = "add", Group.BINARY, 2, DtypeRule.SAME, "uif", True
    MUL = "mul", Group.BINARY, 2, DtypeRule.SAME, "uif", True
    MAX = "max", Group.BINARY, 2, DtypeRule.SAME, ALL_KINDS, True
    CMPLT = "cmplt", Group.BINARY, 2, DtypeRule.BOOL, ALL_KINDS, False
    CMPNE = "cmpne", Group.BINARY, 2, DtypeRule.BOOL, ALL_KINDS, False
    IDIV = "idiv", Group.BINARY, 2, DtypeRule.SAME, "ui", False  # truncates, as C does
    MOD = "mod", Group.BINARY, 2, DtypeRule.SAME, "ui", False  # the sign of the dividend, as C's %
    AND = "and", Group.BINARY, 2, DtypeRule.SAME, "bui", False
    OR = "or", Group.BINARY, 2, DtypeRule.SAME, "bui", False
    XOR = "xor", Group.BINARY, 2, DtypeRule.SAME, "bui", False
    SHL = "shl", Group.BINARY, 2, DtypeRule.SAME, "ui", False
    SHR = "shr", Group.BINARY, 2, DtypeRule.SAME, "ui", False  # logical on unsigned, arithmetic on signed
    WHERE = "where", Group.TERNARY, 3, DtypeRule.VALUE, ALL_KINDS, True
    # a reduce also names its identity and the ALU op that folds one more element into the running value
    SUM = "sum", Group.REDUCE, 1, DtypeRule.SAME, "", True, zero, "add"
    RMAX = "rmax", Group.REDUCE, 1, DtypeRule.SAME, "", True, lowest, "max"
    RESHAPE = "reshape", Group.MOVEMENT, 1, DtypeRule.SAME, "", True
    PERMUTE = "permute", Group.MOVEMENT, 1, DtypeRule.SAME, "", True
    EXPAND = "expand", Group.MOVEMENT, 1, DtypeRule.SAME, "", True
    PAD = "pad", Group.MOVEMENT, 1, DtypeRule.SAME, "", True
    SHRINK = "shrink", Group.MOVEMENT, 1, DtypeRule.SAME, "", True
    FLIP = "flip", Group.MOVEMENT, 1, DtypeRule.SAME, "", True
    WINDOW = "window", Group.MOVEMENT, 1, DtypeRule.SAME, "", True  # sliding windows: (..., i) -> (..., o, k)
    ASSIGN = "assign", Group.EFFECT, 1, DtypeRule.SAME, "", False  # srcs (value,), arg the target base
    CONTIGUOUS = "contiguous", Group.EFFECT, 1, DtypeRule.SAME, "", True
    COPY = "copy", Group.EFFECT, 1, DtypeRule.SAME, "", True
    VIEW = "view", Group.VIEW, 0, DtypeRule.SAME, "", False

    def __new__(cls, name, group, arity, dtype_rule, kinds, differentiable, identity=None, combine=None):
        member = str.__new__(cls, name)
        member._value_ = name
        member.group, member.arity, member.dtype_rule = group, arity, dtype_rule
        member.kinds, member.differentiable = kinds, differentiable
        member.identity = identity  # a reduce's: dtype -> its value over nothing
        member.combine = combine  # a reduce's ALU op folding one more element in (a name until the class exists)
        return member

    def result_dtype(self, first: DType, last: DType, arg=None) -> DType:
        """The dtype of this primitive on operands whose first and last have these dtypes, by its row's rule."""
        rule = self.dtype_rule.rule
        if rule is None:
            raise ValueError(f"{self.value}: the caller names the result dtype (dtype=...)")
        return rule(first, last, arg)

    @staticmethod
    def coerce(op) -> Op:
        """The member for a primitive's name (or the member itself); a clear error for anything else."""
        return coerce(op)

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)

    def __repr__(self):
        return f"Op.{self.name}"


_BY_NAME = {member.value: member for member in Op}


def coerce(op) -> Op:
    """Op.coerce, as a module function: the graph calls it for every node it builds, and in Python 3.11 reading a
    class attribute of an Enum costs a slow metaclass lookup."""
    member = _BY_NAME.get(op) if isinstance(op, str) else None  # a member hashes and compares as its name
    if member is None:
        raise ValueError(f"unknown primitive {op!r}; the primitives are: {', '.join(m.value for m in Op)}")
    return member


for _member in Op:
    if _member.combine is not None:
        _member.combine = _BY_NAME[_member.combine]


def _members(*groups: Group) -> frozenset:
    return frozenset(op for op in Op if op.group in groups)


# the group sets, derived from the table
SOURCES = _members(Group.SOURCE)
UNARY = _members(Group.UNARY)
BINARY = _members(Group.BINARY)
TERNARY = _members(Group.TERNARY)
ELEMENTWISE = UNARY | BINARY | TERNARY
REDUCE = _members(Group.REDUCE)
MOVEMENT = _members(Group.MOVEMENT)
EFFECTS = _members(Group.EFFECT)
COMPARISONS = frozenset(op for op in Op if op.dtype_rule is DtypeRule.BOOL)
DIFFERENTIABLE = frozenset(op for op in Op if op.differentiable)


class _Kind(Enum):
    """A vocabulary of one IR's own node kinds: each row is its name, its operands and its arg. Members hash by
    identity (each is one object), which makes them fast dictionary keys."""

    def __new__(cls, name, srcs, arg, requires=None):
        member = object.__new__(cls)
        member._value_ = name
        member.srcs, member.arg = srcs, arg  # what a node of this kind holds, in words
        # the Capabilities field a device must declare for it (None: every backend renders it)
        member.requires = requires
        return member

    __hash__ = object.__hash__

    def __str__(self):
        return self.value

    def __format__(self, spec):
        return format(self.value, spec)

    def __repr__(self):
        return f"{type(self).__name__}.{self.name}"


@unique
class AstOp(_Kind):
    """The kernel AST's own node kinds; its other nodes are elementwise `Op`s. Leaves read through a ShapeTracker
    in the kernel's shape; a store's tracker is of its output buffer."""

    LOAD = "load", "-", "(buffer index, ShapeTracker)"
    CONST = "const", "-", "(Python value, ShapeTracker): the value where the view is valid, else 0"
    VALID = "valid", "-", "ShapeTracker: whether the view is valid there (a bool)"
    REDUCE = "reduce", "(value,)", "(Op.SUM or Op.RMAX, axes)"
    STORE = "store", "(value,)", "(buffer index, ShapeTracker)"
    SINK = "sink", "(store, ...)", "-: the root of a kernel, one store per output"


@unique
class IrOp(_Kind):
    """The linear IR's own uop kinds; its ALU uops are elementwise `Op`s (cast and bitcast: arg the source dtype).
    Every backend (LLVM, OpenCL, the reference) renders every member that requires no capability;
    tests/test_op_table.py runs each. The work-group members need a device that declares `group_reduce` (OpenCL and
    the reference; tests/test_gpu_kernels.py, tests/test_reference.py); the LLVM renderer refuses them clearly."""

    PARAM = "param", "-", "(buffer index, is_output)"
    # a run-time size or offset (a lazygrad.Variable): an int32 argument after the buffers, in Program.variables order
    VARIABLE = "variable", "-", "(name, min, max): the value of an int32 argument of the kernel"
    CONST = "const", "-", "Python value: a literal"
    RANGE = (
        "range",
        "([bound])",
        '(name, size, "global" or "loop"): a loop, and its variable as a value; with a bound (an int32 value, '
        "a loop range only), it runs bound times, size being the most",
    )
    ENDRANGE = "endrange", "(range,)", "-"
    IF = "if", "(condition,)", "-: the uops up to the matching endif run only when the condition holds"
    ENDIF = "endif", "-", "-"
    ACC = "acc", "-", "initial value: an accumulator (a variable; read as an operand, its current value)"
    ACC_UPDATE = "acc_update", "(acc, value)", "-: acc = value"
    LOAD = "load", "(param, index[, valid])", "None; for a vector, a lane stride s or a tuple of lane offsets"
    STORE = "store", "(param, index, value)", "-"
    GATHER = "gather", "(param, index vector[, valid])", "-: a vector load from lane-wise indexes"
    SCATTER = "scatter", "(param, index vector, value)", "-: a vector store to lane-wise indexes"
    LANES = "lanes", "-", "-: the int32 vector 0, 1, ..., vec-1"
    BROADCAST = "broadcast", "(scalar,)", "-: the scalar in every lane"
    HREDUCE = "hreduce", "(vector,)", "Op.ADD or Op.MAX: the lanes combined into a scalar"
    # a hint, no access: the element's cache line is fetched ahead of its load; it may lie outside the buffer
    PREFETCH = "prefetch", "(param, index)", "int offset: a hint that element index + offset will be read soon"
    # work-groups (programs with local_size > 1, devices that declare group_reduce)
    LOCAL_ID = "local_id", "-", "group size: the work-item's index in its work-group", "group_reduce"
    GROUP_REDUCE = (
        "group_reduce",
        "(value,)",
        "(Op.ADD or Op.MAX, group size): the group's values combined; every work-item gets the result",
        "group_reduce",
    )
    # local memory, shared by the work-items of a group (the tiled matrix products of codegen/tiling.py)
    LOCAL = "local", "-", "element count: an array in the work-group's local memory, of the uop's dtype", "group_reduce"
    LOCAL_LOAD = "local_load", "(local, index)", "-", "group_reduce"
    LOCAL_STORE = "local_store", "(local, index, value)", "-", "group_reduce"
    BARRIER = (
        "barrier",
        "-",
        "-: every work-item of the group waits here; what they stored to local memory before it is seen after it",
        "group_reduce",
    )

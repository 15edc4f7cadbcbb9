"""Lowered programs (codegen/ir.py) as plain JSON data, for the disk cache: no pickle, a strict parser.

A cached program is data, never code: `decode_program` accepts only the shape `encode_program` writes (known op
names, known dtypes, integers in range, each uop's sources referring to earlier uops) and raises
`ProgramFormatError` on anything else, so a damaged or foreign entry is lowered again rather than trusted.

Values in `arg` are tagged so that they come back with their Python type: null, true/false, JSON integers,
strings, {"f": float.hex()} (exact, with inf, nan and -0.0), {"t": [...]} for tuples, {"dtype": name} and
{"op": name}. An op is written by name through `op_name` / `op_from_name`: the one place to adapt when op kinds
change representation.
"""

from __future__ import annotations

import json
from enum import Enum

from lazygrad import dtype as dt
from lazygrad.codegen.ir import INDEX_ARITHMETIC, Program, UOp
from lazygrad.ops import ELEMENTWISE, IrOp, Op

FORMAT = "lazygrad-program-2"

# Every op the linear IR has: its own kinds (IrOp) and the elementwise primitives (Op). A name outside is refused.
_OPS = {member.value: member for member in IrOp} | {member.value: member for member in ELEMENTWISE}
_DTYPES = {d.name: d for d in dt.ALL_DTYPES}
_MAX_LANES = 1024
_MAX_GROUP = 1 << 16  # work-items in a work-group
_MAX_DEPTH = 8  # nesting of tuples inside an arg
_INT_LIMIT = 1 << 64


class ProgramFormatError(ValueError):
    """A serialized program that is not exactly what encode_program writes."""


def op_name(op) -> str:
    """The name an op is stored under."""
    name = op.value if isinstance(op, (IrOp, Op)) else None
    if _OPS.get(name) is not op:
        raise ProgramFormatError(f"unknown op {op!r}")
    return name


def op_from_name(name) -> IrOp | Op:
    """The op stored under `name`; unknown names are refused."""
    if not isinstance(name, str) or name not in _OPS:
        raise ProgramFormatError(f"unknown op name {name!r}"[:200])
    return _OPS[name]


def _encode_value(value, depth: int = 0):
    if isinstance(value, Enum):  # before str: Op members are strings too, and must come back as members
        return {"op": op_name(value)}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if not -_INT_LIMIT < value < _INT_LIMIT:
            raise ProgramFormatError(f"integer {value} out of range")
        return value
    if isinstance(value, float):
        return {"f": value.hex()}
    if isinstance(value, dt.DType):
        return {"dtype": value.name}
    if isinstance(value, tuple) and depth < _MAX_DEPTH:
        return {"t": [_encode_value(v, depth + 1) for v in value]}
    try:
        return {"op": op_name(value)}
    except ProgramFormatError:
        raise ProgramFormatError(f"cannot store a value of type {type(value).__name__}: {value!r}") from None


def _decode_value(data, depth: int = 0):
    if data is None or isinstance(data, (bool, str)):
        return data
    if isinstance(data, int):
        if not -_INT_LIMIT < data < _INT_LIMIT:
            raise ProgramFormatError(f"integer {data} out of range")
        return data
    if isinstance(data, dict) and len(data) == 1:
        ((tag, inner),) = data.items()
        if tag == "f" and isinstance(inner, str) and len(inner) <= 32:
            try:
                return float.fromhex(inner)
            except (ValueError, OverflowError):
                raise ProgramFormatError(f"bad float {inner!r}") from None
        if tag == "dtype":
            return _decode_dtype(inner)
        if tag == "t" and isinstance(inner, list) and depth < _MAX_DEPTH:
            return tuple(_decode_value(v, depth + 1) for v in inner)
        if tag == "op":
            return op_from_name(inner)
    raise ProgramFormatError(f"bad value {data!r}"[:200])


def _decode_dtype(name):
    if not isinstance(name, str) or name not in _DTYPES:
        raise ProgramFormatError(f"unknown dtype {name!r}"[:200])
    return _DTYPES[name]


def _int_in(data, low: int, high: int, what: str) -> int:
    if isinstance(data, bool) or not isinstance(data, int) or not low <= data <= high:
        raise ProgramFormatError(f"{what} must be an integer in [{low}, {high}], got {data!r}"[:200])
    return data


def encode_program(program: Program) -> bytes:
    """The program as compact JSON bytes; ProgramFormatError if it holds something the format cannot express."""
    if program.variables:  # kernels over run-time sizes are few and small: lowered again in each process
        raise ProgramFormatError(f"a program with Variables {program.variables} is not written to the disk cache")
    uops = []
    for index, u in enumerate(program.uops):
        if u.id != index:
            raise ProgramFormatError(f"uop {index} has id {u.id}")
        uops.append(
            [
                op_name(u.op),
                None if u.dtype is None else u.dtype.name,
                [s.id for s in u.srcs],
                _encode_value(u.arg),
                u.vec,
            ]
        )
    document = {
        "format": FORMAT,
        "name": program.name,
        "buffer_dtypes": [d.name for d in program.buffer_dtypes],
        "global_size": list(program.global_size),
        "local_size": program.local_size,
        "uops": uops,
    }
    for size in program.global_size:
        _int_in(size, 0, _INT_LIMIT, "a global size")
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def _reject_constant(name: str):
    raise ProgramFormatError(f"non-standard JSON constant {name}")


def _check_arg(op: IrOp | Op, arg, n_buffers: int) -> None:
    """The arg shapes the lowering produces, per op (the rest are checked by type in _decode_value)."""
    if op is IrOp.PARAM:
        if not (isinstance(arg, tuple) and len(arg) == 2 and isinstance(arg[1], bool)):
            raise ProgramFormatError(f"param arg {arg!r}")
        _int_in(arg[0], 0, n_buffers - 1, "a param's buffer index")
    elif op is IrOp.RANGE:
        if not (isinstance(arg, tuple) and len(arg) == 3 and isinstance(arg[0], str) and arg[2] in ("global", "loop")):
            raise ProgramFormatError(f"range arg {arg!r}"[:200])
        if not arg[0].isidentifier():
            raise ProgramFormatError(f"range name {arg[0]!r}"[:200])
        _int_in(arg[1], 0, _INT_LIMIT, "a range's size")
    elif op in (IrOp.CONST, IrOp.ACC):
        if not isinstance(arg, (bool, int, float)) or isinstance(arg, Enum):
            raise ProgramFormatError(f"{op} arg {arg!r}"[:200])
    elif op in (Op.CAST, Op.BITCAST):
        if not isinstance(arg, dt.DType):
            raise ProgramFormatError(f"{op} arg {arg!r}"[:200])
    elif op in (Op.ADD, Op.MUL):
        if arg not in (None, INDEX_ARITHMETIC):
            raise ProgramFormatError(f"{op} arg {arg!r}"[:200])
    elif op is IrOp.PREFETCH:
        _int_in(arg, -_INT_LIMIT, _INT_LIMIT, "a prefetch's offset")
    elif op is IrOp.HREDUCE:
        if arg not in (Op.ADD, Op.MAX):
            raise ProgramFormatError(f"hreduce arg {arg!r}"[:200])
    elif op is IrOp.LOCAL:
        _int_in(arg, 1, _INT_LIMIT, "a local array's size")
    elif op in (IrOp.LOCAL_ID, IrOp.GROUP_REDUCE):
        size = arg if op is IrOp.LOCAL_ID else (arg[1] if isinstance(arg, tuple) and len(arg) == 2 else None)
        if op is IrOp.GROUP_REDUCE and arg[0] not in (Op.ADD, Op.MAX):
            raise ProgramFormatError(f"group_reduce arg {arg!r}"[:200])
        _int_in(size, 2, _MAX_GROUP, f"{op}'s group size")


def decode_program(blob: bytes) -> Program:
    """Parse what encode_program wrote; ProgramFormatError on anything else."""
    try:
        document = json.loads(blob, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProgramFormatError(f"not JSON: {e}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ProgramFormatError("not a lazygrad program")
    if set(document) != {"format", "name", "buffer_dtypes", "global_size", "local_size", "uops"}:
        raise ProgramFormatError(f"unexpected fields {sorted(document)}")
    name, buffer_dtypes, global_size, rows = (document[k] for k in ("name", "buffer_dtypes", "global_size", "uops"))
    local_size = _int_in(document["local_size"], 1, _MAX_GROUP, "the local size")
    if not (isinstance(name, str) and name.isidentifier()):
        raise ProgramFormatError(f"kernel name {name!r}"[:200])
    if not (isinstance(buffer_dtypes, list) and isinstance(global_size, list) and isinstance(rows, list)):
        raise ProgramFormatError("buffer_dtypes, global_size and uops must be lists")
    buffers = tuple(_decode_dtype(d) for d in buffer_dtypes)
    sizes = tuple(_int_in(s, 0, _INT_LIMIT, "a global size") for s in global_size)
    uops: list[UOp] = []
    for index, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 5):
            raise ProgramFormatError(f"uop {index} is not [op, dtype, srcs, arg, vec]")
        op_data, dtype_data, src_ids, arg_data, vec = row
        op = op_from_name(op_data)
        dtype = None if dtype_data is None else _decode_dtype(dtype_data)
        if not isinstance(src_ids, list) or len(src_ids) > 8:
            raise ProgramFormatError(f"uop {index}: bad sources {src_ids!r}"[:200])
        srcs = tuple(uops[_int_in(s, 0, index - 1, f"uop {index}'s source")] for s in src_ids)
        arg = _decode_value(arg_data)
        _check_arg(op, arg, len(buffers))
        uops.append(UOp(op, dtype, srcs, arg, index, _int_in(vec, 1, _MAX_LANES, f"uop {index}'s lanes")))
    return Program(name, uops, buffers, sizes, local_size)

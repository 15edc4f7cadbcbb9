"""Data types and PyTorch's type-promotion rules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class DType:
    name: str  # PyTorch's name: float32, int64, bool, ...
    itemsize: int
    kind: str  # "b" bool, "u" unsigned int, "i" signed int, "f" float
    priority: int  # position in the promotion lattice within a kind

    @property
    def np(self) -> np.dtype:
        return np.dtype("bool" if self.name == "bool" else self.name)

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_int(self) -> bool:
        return self.kind in "iu"

    def __repr__(self) -> str:
        return f"lazygrad.{self.name}"

    # The dtypes are module singletons (__reduce__ below keeps every copy the one module-level instance), so equality
    # is identity: object's own __eq__ and __hash__, in C. (A Python __eq__ cost ~0.4 us per compare, and an eager
    # step compares dtypes on most ops.)
    def __reduce__(self):
        return (to_dtype, (self.name,))


bool_ = DType("bool", 1, "b", 0)
uint8 = DType("uint8", 1, "u", 1)
int8 = DType("int8", 1, "i", 1)
int16 = DType("int16", 2, "i", 2)
int32 = DType("int32", 4, "i", 3)
int64 = DType("int64", 8, "i", 4)
float16 = DType("float16", 2, "f", 5)
float32 = DType("float32", 4, "f", 6)
float64 = DType("float64", 8, "f", 7)


def zero(d: DType):
    """0 as a value of d: the identity of a sum."""
    return False if d == bool_ else (0.0 if d.is_float else 0)


def lowest(d: DType):
    """The least value of d: the identity of a max (-inf for floats)."""
    if d.is_float:
        return float("-inf")
    if d == bool_:
        return False
    return 0 if d.kind == "u" else -(2 ** (d.itemsize * 8 - 1))


ALL_DTYPES = (bool_, uint8, int8, int16, int32, int64, float16, float32, float64)
_BY_NAME = {d.name: d for d in ALL_DTYPES} | {
    "float": float32,
    "half": float16,
    "double": float64,
    "int": int32,
    "long": int64,
    "bool_": bool_,
}

default_float = float32  # torch.get_default_dtype(): what Python floats and float constructors become
default_int = int64


def set_default_dtype(d) -> None:
    """torch.set_default_dtype: the dtype of Python floats, zeros/ones/rand..., and of `Tensor(float ndarray)`."""
    global default_float
    d = to_dtype(d)
    if not d.is_float:
        raise TypeError(f"only floating-point types are supported as the default type, got {d.name}")
    default_float = d


def get_default_dtype() -> DType:
    return default_float


def to_dtype(x) -> DType:
    """Accept a DType, a name, a numpy dtype, a Python type or a torch dtype."""
    if isinstance(x, DType):
        return x
    if x is float:
        return default_float
    if x is int:
        return default_int
    if x is bool:
        return bool_
    if isinstance(x, str):
        name = x.removeprefix("torch.").removeprefix("lazygrad.")
        if name in _BY_NAME:
            return _BY_NAME[name]
        raise TypeError(f"unknown dtype {x!r}; known: {', '.join(d.name for d in ALL_DTYPES)}")
    try:
        npd = np.dtype(x)
    except TypeError:
        return to_dtype(str(x))  # e.g. torch.float32
    return to_dtype(npd.name)


def from_numpy_dtype(npd: np.dtype) -> DType:
    # remembered per numpy dtype: every upload asks (numpy's dtype name is computed in Python each time)
    found = _FROM_NUMPY.get(npd)
    if found is None:
        found = _FROM_NUMPY[npd] = to_dtype(np.dtype(npd).name)
    return found


_FROM_NUMPY: dict = {}


def promote(a: DType, b: DType) -> DType:
    """PyTorch's promotion of two tensor dtypes."""
    if a == b:
        return a
    order = {"b": 0, "u": 1, "i": 1, "f": 2}
    if order[a.kind] != order[b.kind]:
        return a if order[a.kind] > order[b.kind] else b
    if {a, b} == {uint8, int8}:
        return int16
    return a if a.priority > b.priority else b


def scalar_dtype(value, other: DType) -> DType:
    """Dtype of `tensor <op> python_scalar`: a scalar only lifts the category (int -> float), never the width."""
    if isinstance(value, bool):
        return other
    if isinstance(value, int):
        return default_int if other == bool_ else other
    if isinstance(value, float):
        return other if other.is_float else default_float
    raise TypeError(f"unsupported scalar {value!r} of type {type(value).__name__}")


def python_type_dtype(value) -> DType:
    if isinstance(value, bool):
        return bool_
    if isinstance(value, int):
        return default_int
    return default_float

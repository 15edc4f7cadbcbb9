"""Checkpoints: PyTorch's zip format and safetensors, read and written with numpy alone (torch is never imported).

Reading a PyTorch checkpoint means unpickling, and unpickling can run arbitrary code. The unpickler here resolves
only the handful of globals a tensor checkpoint needs (the tensor rebuild functions, storage types, dtypes,
OrderedDict) to harmless stand-ins, and refuses every other global before anything is called. See
docs/checkpoints.md for the formats and the safety model.

Array-level API (numpy in, numpy out):
    load_checkpoint(f)   the whole object: nested dicts/lists as stored, tensors as numpy arrays
    load_arrays(f)       a flat {name: array}: nested containers are flattened with dotted names
    save_arrays(d, f)    torch.save-compatible zip, readable by torch.load(f, weights_only=True)
    save_checkpoint(t, f) a nested tree (dicts, lists, numbers, strings, arrays) as torch.save writes it
    save_safetensors(d, f)
Tensor-level API: load(f, device=None) -> the saved tree with Tensors, and save(tree, f), as torch.load/torch.save.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import IO, Any, NamedTuple

import numpy as np

PathOrFile = str | os.PathLike | IO[bytes]

# numpy has no bfloat16: such tensors are read as their raw 16 bits and widened to float32 (exact).
BFLOAT16 = "bfloat16"

# torch's legacy storage classes (torch.FloatStorage, ...) and the element type each one holds.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": BFLOAT16,
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_DTYPE_STORAGES = {dtype: storage for storage, dtype in _STORAGE_DTYPES.items()}

# dtypes torch pickles by name (torch.uint16, ...): those without a legacy storage class come with UntypedStorage.
_TORCH_DTYPE_NAMES = set(_STORAGE_DTYPES.values()) | {"uint16", "uint32", "uint64"}

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": BFLOAT16,
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
_DTYPE_SAFETENSORS = {dtype: code for code, dtype in _SAFETENSORS_DTYPES.items()}

_ZIP_MAGIC = b"PK\x03\x04"
# Files written by torch.save before torch 1.6 (or with _use_new_zipfile_serialization=False) start with this.
_LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]
_SAFETENSORS_MAX_HEADER = 100 << 20  # the safetensors specification's own limit
_TORCH_RECORD_ALIGNMENT = 64  # torch aligns each record's data in the zip so that it can be memory-mapped

# What a load may cost (docs/checkpoints.md, "What is refused"): at most twice the file's size plus this.
ALLOCATION_SLACK = 16 << 20
_MAX_NESTING = 100  # containers inside containers; a state_dict nests 1 to 4 deep
_MAX_DIMS = 64  # dimensions of a tensor (torch allows 64)
_MAX_ZIP_RECORDS = 100_000  # zipfile keeps an object per record of the directory


# ---------------------------------------------------------------------------------------------------------------
# element types


def _numpy_dtype(name: str, byteorder: str = "<") -> np.dtype:
    """The numpy element type for a torch dtype name; bfloat16 maps to its raw 16-bit pattern."""
    return np.dtype("uint16" if name == BFLOAT16 else name).newbyteorder(byteorder)


def _bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _little_endian_bytes(array: np.ndarray) -> np.ndarray:
    """The array's elements as a flat uint8 array in C order and little-endian byte order."""
    contiguous = np.asarray(array, order="C")
    little = contiguous.astype(contiguous.dtype.newbyteorder("<"), copy=False)
    return little.reshape(-1).view(np.uint8)


def _check_savable(name: str, array: np.ndarray, supported_dtypes, file_format: str) -> None:
    if array.dtype.name not in supported_dtypes or array.dtype.name == BFLOAT16:
        raise TypeError(f"cannot save {name!r}: {file_format} has no dtype {array.dtype}")


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """C-order strides in elements (numpy's own strides may be arbitrary along dimensions of size 1)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


# ---------------------------------------------------------------------------------------------------------------
# reading: what a checkpoint may cost


class _Budget:
    """The memory a load may hold at once: twice the file's size plus ALLOCATION_SLACK.

    A checkpoint's tensors come from its own bytes, so a well-formed file never needs more (bfloat16, widened to
    float32, is the one case that doubles). Every allocation the reader makes is charged here *before* it is
    made, so a few hundred bytes that declare terabytes are refused with the tensor's name instead of taking the
    machine's memory.
    """

    def __init__(self, file_size: int):
        self.file_size = file_size
        self.limit = 2 * file_size + ALLOCATION_SLACK
        self.live = 0  # bytes the reader holds now (records, arrays, the unpickled objects' estimate)

    def charge(self, nbytes: int, what: str) -> None:
        if self.live + nbytes > self.limit:
            raise ValueError(
                f"checkpoint refused: {what} would need {nbytes:,} bytes, but a {self.file_size:,}-byte checkpoint "
                f"may need at most {self.limit:,} bytes in all (twice its size + {ALLOCATION_SLACK >> 20} MiB); "
                "a well-formed checkpoint never does"
            )
        self.live += nbytes

    def release(self, nbytes: int) -> None:
        self.live -= nbytes


def _prod(values) -> int:
    """A product in Python integers: numpy's would wrap around for crafted sizes."""
    out = 1
    for value in values:
        out *= value
    return out


def _file_size(file: IO[bytes]) -> int:
    """Bytes from the current position to the end of the file."""
    start = file.tell()
    end = file.seek(0, os.SEEK_END)
    file.seek(start)
    return end - start


def _read_exactly(file: IO[bytes], offset: int, out: np.ndarray, what: str) -> None:
    """Fill `out` (any dtype) with the file's bytes at `offset`."""
    file.seek(offset)
    view = memoryview(out).cast("B") if out.size else memoryview(b"")
    got = 0
    while got < len(view):
        n = file.readinto(view[got:])
        if not n:
            raise ValueError(f"malformed checkpoint: the file ends inside {what}")
        got += n


# ---------------------------------------------------------------------------------------------------------------
# reading: format detection


@contextlib.contextmanager
def _open_for_reading(path_or_file: PathOrFile) -> Iterator[IO[bytes]]:
    if hasattr(path_or_file, "read"):
        yield path_or_file  # the caller's file: leave it open
    else:
        with open(os.fspath(path_or_file), "rb") as file:
            yield file


def _peek(file: IO[bytes], size: int) -> bytes:
    start = file.tell()
    head = file.read(size)
    file.seek(start)
    return head


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (header_length,) = struct.unpack("<Q", head[:8])
    return 0 < header_length <= _SAFETENSORS_MAX_HEADER and head[8:9] == b"{"


def load_checkpoint(path_or_file: PathOrFile) -> Any:
    """Read a PyTorch zip checkpoint or a safetensors file, chosen by content; tensors become numpy arrays.

    Containers come back as stored (a state_dict is a dict; {"model": {...}, "epoch": 3} stays nested). A file
    that is not a well-formed checkpoint raises ValueError or pickle.UnpicklingError (docs/checkpoints.md lists
    what is refused), before its declared sizes are allocated.
    """
    with _open_for_reading(path_or_file) as file:
        head = _peek(file, 16)
        if head.startswith(_ZIP_MAGIC):
            loader = _load_torch_zip
        elif _looks_like_safetensors(head):
            loader = _load_safetensors
        elif head.startswith(_LEGACY_TORCH_MAGIC):
            raise ValueError(
                "this checkpoint uses PyTorch's legacy (pre-1.6) format, which lazygrad does not read; "
                "re-save it with torch>=1.6: torch.save(torch.load(old_path), new_path)"
            )
        else:
            raise ValueError("not a checkpoint lazygrad can read: neither a PyTorch zip archive nor a safetensors file")
        try:
            return loader(file)
        except (ValueError, pickle.UnpicklingError, MemoryError):
            raise
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            EOFError,
            LookupError,
            TypeError,
            AttributeError,
            struct.error,
            RecursionError,
            OverflowError,
            NotImplementedError,
        ) as e:  # what a damaged file makes zipfile, json or the unpickler raise: one kind of error for the caller
            raise ValueError(f"malformed checkpoint: {type(e).__name__}: {e}"[:500]) from None


def load_arrays(path_or_file: PathOrFile) -> dict[str, np.ndarray]:
    """Read a checkpoint as a flat {name: numpy array}.

    Nested containers are flattened with dotted names, the way PyTorch names nested modules:
    {"model": {"fc.weight": w}} gives {"model.fc.weight": w}, a list's items get their index. Leaves that are
    not tensors (an epoch number, a config string) are left out; load_checkpoint returns everything.
    """
    checkpoint = load_checkpoint(path_or_file)
    if isinstance(checkpoint, np.ndarray):
        raise TypeError("the checkpoint holds a single tensor, not a dict of them; use load_checkpoint to read it")
    return flatten_arrays(checkpoint)


def flatten_arrays(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Collect the arrays in nested dicts/lists/tuples into one dict keyed by dotted paths.

    Each container is visited once. A pickle can make one container reachable along exponentially many paths
    (a list holding the same list twice, nested: 465 bytes made 65,536 names), so a container that holds tensors
    and is met a second time is refused; load_checkpoint returns it as stored, shared.
    """
    return {prefix + name: array for name, array in _relative_arrays(tree, {}, "", 0).items()}


def _short(path: str) -> str:
    path = path.rstrip(".") or "the top"
    return repr(path if len(path) <= 60 else f"{path[:28]}...{path[-28:]}")


def _relative_arrays(node: Any, memo: dict, path: str, depth: int) -> dict[str, np.ndarray]:
    if isinstance(node, Mapping):
        children = [(str(key), value) for key, value in node.items()]
    elif isinstance(node, (list, tuple)):
        children = [(str(index), value) for index, value in enumerate(node)]
    else:
        return {}
    if id(node) in memo:
        first_path, found = memo[id(node)]
        if found:
            raise ValueError(
                f"the checkpoint holds one container of tensors at two places ({_short(first_path)} and "
                f"{_short(path)}); load_checkpoint returns it as stored"
            )
        return found
    if depth > _MAX_NESTING:
        raise ValueError(f"the checkpoint nests containers more than {_MAX_NESTING} deep (at {path!r})")
    flat: dict[str, np.ndarray] = {}
    memo[id(node)] = (path, flat)  # filled below; a container that holds itself adds nothing the second time
    for key, value in children:
        found = (
            {key: value}
            if isinstance(value, np.ndarray)
            else {
                f"{key}.{name}": array
                for name, array in _relative_arrays(value, memo, f"{path}{key}.", depth + 1).items()
            }
        )
        for name, array in found.items():
            if name in flat:
                raise ValueError(f"two tensors in the checkpoint flatten to the same name {path}{name!r}")
            flat[name] = array
    return flat


# ---------------------------------------------------------------------------------------------------------------
# reading: PyTorch zip archives through a restricted unpickler


class _StorageType(NamedTuple):
    """Stand-in for torch.FloatStorage & co. A tuple, so that a pickle cannot set attributes on it."""

    dtype_name: str | None  # None: torch.storage.UntypedStorage (bytes; _rebuild_tensor_v3 brings the dtype)


class _DTypeRef(NamedTuple):
    """Stand-in for torch.float32 & co."""

    name: str


class _Storage:
    """One storage record's bytes, read once however many tensors view it."""

    __slots__ = ("key", "buffer", "dtype_name", "byteorder", "users")

    def __init__(self, key: str, buffer: np.ndarray, dtype_name: str | None, byteorder: str):
        self.key, self.buffer, self.dtype_name, self.byteorder = key, buffer, dtype_name, byteorder
        self.users = 0  # tensors in the result that view it; the last one may take its buffer over


class _TensorRecord:
    """A tensor the pickle asked for, checked against its storage but not yet allocated.

    Arrays are made after unpickling, when each tensor's name and each storage's users are known: the bound on
    memory can then name the tensor, and the last tensor viewing a whole storage takes its buffer over instead of
    copying it.
    """

    __slots__ = ("storage", "dtype_name", "offset", "size", "stride")

    def __init__(self, storage: _Storage, dtype_name: str, offset, size, stride):
        self.storage, self.dtype_name = storage, dtype_name
        self.offset, self.size, self.stride = self._checked(storage, dtype_name, offset, size, stride)

    @staticmethod
    def _checked(storage: _Storage, dtype_name: str, offset, size, stride) -> tuple:
        """Every declared number against the storage's real length, before anything is allocated."""

        def integers(values, what) -> tuple:
            if not isinstance(values, tuple) or len(values) > _MAX_DIMS:
                raise pickle.UnpicklingError(f"malformed tensor: {what} {values!r}"[:300])
            for value in values:
                if type(value) is not int or value < 0:  # torch never stores negative sizes or strides
                    raise pickle.UnpicklingError(f"malformed tensor: {what} {values!r}"[:300])
            return values

        size, stride = integers(size, "size"), integers(stride, "stride")
        if type(offset) is not int or offset < 0:
            raise pickle.UnpicklingError(f"malformed tensor: storage offset {offset!r}"[:300])
        if len(size) != len(stride):
            raise pickle.UnpicklingError(f"malformed tensor: size {size} and stride {stride} differ in length")
        elements = len(storage.buffer) // _numpy_dtype(dtype_name).itemsize
        if 0 not in size:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= elements:
                raise pickle.UnpicklingError(
                    f"malformed tensor: a view of size {size}, stride {stride}, offset {offset} reaches outside "
                    f"its storage of {elements} elements"
                )
        return offset, size, stride

    def is_broadcast(self) -> bool:
        return any(s == 0 and n > 1 for n, s in zip(self.size, self.stride))

    def is_whole_storage(self) -> bool:
        """A C-contiguous view of all of its storage, in native byte order: it can be the storage's buffer."""
        element = _numpy_dtype(self.dtype_name, self.storage.byteorder)
        return (
            self.offset == 0
            and self.dtype_name != BFLOAT16
            and element.isnative
            and _prod(self.size) * element.itemsize == len(self.storage.buffer)
            and all(s == c for n, s, c in zip(self.size, self.stride, _contiguous_strides(self.size)) if n > 1)
        )

    def materialize(self, name: str, budget: _Budget) -> np.ndarray:
        storage = self.storage
        element = _numpy_dtype(self.dtype_name, storage.byteorder)
        native = element.newbyteorder("=")
        out_itemsize = 4 if self.dtype_name == BFLOAT16 else element.itemsize
        storage.users -= 1
        if 0 in self.size:
            array = np.empty(self.size, np.float32 if self.dtype_name == BFLOAT16 else native)
        elif storage.users == 0 and self.is_whole_storage():  # the last user of a storage takes its buffer over
            array = storage.buffer.view(native).reshape(self.size)
            storage.buffer = None  # charged already, as the record
            return array
        else:
            # Zero strides (torch's expand) load as a broadcast view of the one copy of what they repeat.
            size = tuple(1 if s == 0 else n for n, s in zip(self.size, self.stride))
            budget.charge(_prod(size) * out_itemsize, f"tensor {name!r} of size {self.size}, stride {self.stride}")
            flat = storage.buffer[: len(storage.buffer) // element.itemsize * element.itemsize].view(element)
            byte_strides = tuple(s * element.itemsize for s in self.stride)
            view = np.lib.stride_tricks.as_strided(flat[self.offset :], size, byte_strides, writeable=False)
            if self.dtype_name == BFLOAT16:
                array = view.astype(np.uint32)  # widened in place: no second temporary
                array <<= 16
                array = array.view(np.float32)
            else:
                array = np.array(view, dtype=native)  # a copy that owns its memory, in native byte order
            if size != self.size:
                array = np.broadcast_to(array, self.size)  # read-only; lazygrad.load expands it lazily
        if storage.users == 0 and storage.buffer is not None:
            budget.release(len(storage.buffer))
            storage.buffer = None
        return array


def _allowed_opcodes() -> dict:
    """The pure-Python unpickler's dispatch table without the opcodes a tensor checkpoint never needs.

    The pure-Python unpickler keeps its memo in a dict: the C one grows an array to the largest memo index a
    pickle names, which a few bytes can set to 2**32.
    """
    dispatch = dict(pickle._Unpickler.dispatch)
    for opcode in (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch.pop(opcode[0], None)
    dispatch.pop(pickle.PERSID[0], None)  # torch writes BINPERSID
    return dispatch


class _RestrictedUnpickler(pickle._Unpickler):
    """Unpickles a torch checkpoint's data.pkl, resolving only the globals that rebuild tensors and containers.

    Every opcode is charged to the load's budget (an estimate of the objects it makes), so a pickle cannot build
    more Python objects than the file's size allows.
    """

    _BYTES_PER_OPCODE = 64  # about the largest object one opcode makes (an empty dict); strings are charged apart
    dispatch = _allowed_opcodes()

    def __init__(self, data: bytes, read_record, byteorder: str, budget: _Budget):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._read_record = read_record  # storage key -> uint8 array of data/<key>
        self._byteorder = byteorder
        self._budget = budget
        self._storages: dict[str, _Storage] = {}
        self.tensors: list[_TensorRecord] = []
        budget.charge(4 * len(data), "the pickle's strings")  # a str holds at most 4 bytes per byte it came from
        counted = {}
        for code, handler in self.dispatch.items():
            counted[code] = self._counting(handler)
        counted[pickle.BUILD[0]] = self._counting(type(self)._load_build)
        self.dispatch = counted

    def _counting(self, handler):
        budget, cost = self._budget, self._BYTES_PER_OPCODE

        def counted(unpickler):
            budget.charge(cost, "the pickle's objects")
            handler(unpickler)

        return counted

    def _load_build(self):
        """BUILD is how torch restores an OrderedDict's `_metadata`; anything else it could reach is refused."""
        state = self.stack.pop()
        target = self.stack[-1]
        if not (type(target) is OrderedDict and isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise pickle.UnpicklingError(
                f"malformed checkpoint: a BUILD of {type(target).__name__} with {type(state).__name__}"
            )
        for key, value in state.items():
            if key.startswith("__"):
                raise pickle.UnpicklingError(f"malformed checkpoint: a BUILD that sets {key!r}")
            target.__dict__[key] = value

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        # Bound methods and tuples: a BUILD opcode cannot change them for later loads (and BUILD is refused).
        rebuilders = {
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor_v2,
            "torch._utils._rebuild_tensor_v3": self._rebuild_tensor_v3,
            "torch._utils._rebuild_parameter": self._rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": self._rebuild_parameter,
            "_codecs.encode": self._encode_latin1,  # how protocol-2 pickles spell bytes objects
        }
        if qualified in rebuilders:
            return rebuilders[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if qualified == "torch.storage.UntypedStorage":
            return _StorageType(None)
        if module == "torch" and name in _TORCH_DTYPE_NAMES:
            return _DTypeRef(name)
        if qualified == "collections.OrderedDict":
            return OrderedDict
        if qualified == "torch.Size":
            return tuple
        raise pickle.UnpicklingError(
            f"checkpoint refers to {qualified}; lazygrad only loads tensors (in dicts, lists, numbers and strings), "
            "so it refused this checkpoint before running anything from it"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        # torch writes ("storage", storage type, key, location, number of elements)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"malformed checkpoint: unexpected persistent id {pid!r}"[:300])
        _, storage_type, key, _location, _numel = pid
        if not isinstance(key, (str, int)):
            raise pickle.UnpicklingError(f"malformed checkpoint: storage key {key!r}"[:300])
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, self._read_record(f"data/{key}"), storage_type.dtype_name, self._byteorder)
            self._storages[key] = storage
        elif storage.dtype_name != storage_type.dtype_name:  # torch gives each record one type
            raise pickle.UnpicklingError(f"malformed checkpoint: storage {key} is used with two types")
        return storage

    @staticmethod
    def _check_storage(storage: Any) -> _Storage:
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"malformed checkpoint: expected a storage, got {type(storage).__name__}")
        return storage

    def _tensor(self, storage: _Storage, dtype_name: str, offset, size, stride) -> _TensorRecord:
        record = _TensorRecord(storage, dtype_name, offset, size, stride)
        self.tensors.append(record)
        return record

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        storage = self._check_storage(storage)
        if storage.dtype_name is None:
            raise pickle.UnpicklingError("malformed checkpoint: an untyped storage without a dtype")
        return self._tensor(storage, storage.dtype_name, offset, size, stride)

    def _rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
        storage = self._check_storage(storage)
        if not isinstance(dtype, _DTypeRef):
            raise pickle.UnpicklingError(f"malformed checkpoint: expected a dtype, got {type(dtype).__name__}")
        return self._tensor(storage, dtype.name, offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad=False, hooks=None, state=None):
        return data  # a Parameter is its tensor; requires_grad is the model's business

    def _encode_latin1(self, text, encoding="latin1"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"malformed checkpoint: unexpected _codecs.encode({text!r}, {encoding!r})")
        return text.encode("latin1")


def _materialize(tree: Any, tensors: list[_TensorRecord], budget: _Budget) -> Any:
    """Replace each _TensorRecord in the unpickled tree by its array, visiting each object once.

    Containers are updated in place (tuples rebuilt), so sharing in the pickle is sharing in the result. Tensors
    that copy come before the one that may take its storage's buffer over, so a storage is freed as soon as its
    last tensor has what it needs.
    """
    names: dict[int, str] = {}  # record -> the first path that reaches it
    order: list[tuple[Any, str]] = []  # containers, parents before children
    seen: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(tree, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, _TensorRecord):
            names.setdefault(id(node), path or "the checkpoint's tensor")
            continue
        if not isinstance(node, (dict, list, tuple, set, frozenset)) or id(node) in seen:
            continue
        if depth > _MAX_NESTING:
            raise ValueError(f"malformed checkpoint: containers nested more than {_MAX_NESTING} deep (at {path!r})")
        seen.add(id(node))
        order.append((node, path))
        if isinstance(node, dict):
            if any(isinstance(key, _TensorRecord) for key in node):
                raise ValueError("malformed checkpoint: a tensor as a dict key")
            children = list(node.items())
        elif isinstance(node, (set, frozenset)):
            if any(isinstance(item, _TensorRecord) for item in node):
                raise ValueError("malformed checkpoint: a tensor in a set")
            continue
        else:
            children = list(enumerate(node))
        for key, value in children:
            stack.append((value, f"{path}.{key}" if path else str(key), depth + 1))

    reachable = [t for t in dict.fromkeys(tensors) if id(t) in names]  # unreachable records are never allocated
    for record in reachable:
        record.storage.users += 1
    for record in tensors:
        if record.storage.users == 0 and record.storage.buffer is not None:
            budget.release(len(record.storage.buffer))
            record.storage.buffer = None
    arrays: dict[int, np.ndarray] = {}
    takes_over = [r for r in reachable if r.is_whole_storage()]
    for record in [r for r in reachable if not r.is_whole_storage()] + takes_over:
        arrays[id(record)] = record.materialize(names[id(record)], budget)

    rebuilt: dict[int, tuple] = {}

    def resolved(value, depth=0):
        if isinstance(value, _TensorRecord):
            return arrays[id(value)]
        if not isinstance(value, tuple) or depth > _MAX_NESTING:
            return value
        if id(value) not in rebuilt:
            rebuilt[id(value)] = tuple(resolved(item, depth + 1) for item in value)
        return rebuilt[id(value)]

    for node, _ in order:
        if isinstance(node, dict):
            for key, value in node.items():
                node[key] = resolved(value)
        elif isinstance(node, list):
            node[:] = [resolved(value) for value in node]
    return resolved(tree)


class _ZipRecords:
    """A torch zip archive's records, each read once, uncompressed and inside the file, or refused."""

    def __init__(self, file: IO[bytes], archive: zipfile.ZipFile, end: int, budget: _Budget):
        self.file, self.archive, self.end, self.budget = file, archive, end, budget
        self.bytes_read = 0

    def read(self, name: str) -> np.ndarray:
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise pickle.UnpicklingError(f"malformed checkpoint: record {name} is missing") from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"checkpoint refused: record {name} is compressed (zip method {info.compress_type}); torch.save "
                "stores records uncompressed, and lazygrad does not inflate records whose size it cannot bound"
            )
        if info.flag_bits & 0x1:
            raise ValueError(f"checkpoint refused: record {name} is encrypted")
        size = info.file_size
        if info.compress_size != size:
            raise ValueError(f"malformed checkpoint: record {name} stores {info.compress_size} bytes for {size}")
        if not 0 <= info.header_offset <= self.end - 30:
            raise ValueError(f"malformed checkpoint: record {name} starts at {info.header_offset}, outside the file")
        self.file.seek(info.header_offset)
        local = self.file.read(30)
        if len(local) != 30 or local[:4] != _ZIP_MAGIC:
            raise ValueError(f"malformed checkpoint: record {name} has no local header at {info.header_offset}")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        if start + size > self.end:
            raise ValueError(
                f"malformed checkpoint: record {name} declares {size:,} bytes at offset {start:,}, past the end of "
                f"the file ({self.end:,} bytes)"
            )
        if self.bytes_read + size > self.budget.file_size:
            raise ValueError(f"malformed checkpoint: records overlap (record {name} would read the file twice)")
        self.bytes_read += size
        self.budget.charge(size, f"record {name}")
        buffer = np.empty(size, np.uint8)
        _read_exactly(self.file, start, buffer, f"record {name}")
        if zlib.crc32(buffer) != info.CRC:
            raise ValueError(f"malformed checkpoint: record {name} fails its CRC check (the file is damaged)")
        return buffer


def _load_torch_zip(file: IO[bytes]) -> Any:
    file_size = _file_size(file)
    end = file.tell() + file_size  # zipfile's offsets are positions in the file object
    budget = _Budget(file_size)
    # zipfile keeps about 9 bytes of objects per byte of the zip directory: charged before it reads it
    start = file.tell()
    end_record = zipfile._EndRecData(file)  # zipfile's own reader of the end record (private, unchanged for years)
    file.seek(start)
    if not end_record:
        raise ValueError("malformed checkpoint: a zip archive without its end record")
    budget.charge(10 * min(end_record[zipfile._ECD_SIZE], file_size), "the zip directory")
    with zipfile.ZipFile(file) as archive:
        infos = archive.infolist()
        if len(infos) > _MAX_ZIP_RECORDS:
            raise ValueError(f"checkpoint refused: {len(infos):,} zip records, more than {_MAX_ZIP_RECORDS:,}")
        names = [info.filename for info in infos]
        # Records live under one top folder whose name varies ("archive", or the file's stem).
        pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
        if not pickles:
            raise ValueError("a zip archive without <folder>/data.pkl: not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        if any(name.startswith(prefix + "code/") for name in names):
            raise ValueError("this is a TorchScript archive (torch.jit.save); save model.state_dict() with torch.save")
        records = _ZipRecords(file, archive, end, budget)
        byteorder = "<"
        if prefix + "byteorder" in names:
            stored = records.read(prefix + "byteorder").tobytes().decode("ascii", "replace").strip()
            if stored not in ("little", "big"):
                raise ValueError(f"malformed checkpoint: byteorder record {stored[:20]!r}")
            byteorder = "<" if stored == "little" else ">"
        data = records.read(pickles[0]).tobytes()
        unpickler = _RestrictedUnpickler(data, lambda record: records.read(prefix + record), byteorder, budget)
        tree = unpickler.load()
    return _materialize(tree, unpickler.tensors, budget)


# ---------------------------------------------------------------------------------------------------------------
# reading: safetensors


def _no_duplicate_keys(pairs: list) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("malformed safetensors header: a name appears twice")
    return dict(pairs)


def _refuse_constant(name: str):
    raise ValueError(f"malformed safetensors header: {name} is not JSON")


def _safetensors_entry(name: str, info: Any, data_length: int) -> tuple[str, tuple, int, int]:
    """(dtype name, shape, begin, end) of one header entry, every number checked."""
    if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
        raise ValueError(f"malformed safetensors header: entry {name!r} is not {{dtype, shape, data_offsets}}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _SAFETENSORS_DTYPES:
        raise ValueError(f"safetensors tensor {name!r} has dtype {code}, which lazygrad cannot read"[:300])
    if not (isinstance(shape, list) and len(shape) <= _MAX_DIMS):
        raise ValueError(f"malformed safetensors header: tensor {name!r} has shape {shape!r}"[:300])
    if not (isinstance(offsets, list) and len(offsets) == 2):
        raise ValueError(f"malformed safetensors header: tensor {name!r} has data_offsets {offsets!r}"[:300])
    for value in (*shape, *offsets):
        if type(value) is not int or value < 0:
            raise ValueError(f"malformed safetensors header: tensor {name!r}: {value!r} is not a size"[:300])
    dtype_name = _SAFETENSORS_DTYPES[code]
    begin, end = offsets
    if not begin <= end <= data_length:
        raise ValueError(
            f"safetensors tensor {name!r}: data_offsets {begin}..{end} lie outside the file's {data_length:,} "
            "bytes of data"
        )
    if end - begin != _prod(shape) * _numpy_dtype(dtype_name).itemsize:
        raise ValueError(f"safetensors tensor {name!r}: offsets {begin}..{end} do not fit shape {tuple(shape)}")
    return dtype_name, tuple(shape), begin, end


def _load_safetensors(file: IO[bytes]) -> dict[str, np.ndarray]:
    start = file.tell()
    file_size = _file_size(file)
    budget = _Budget(file_size)
    (header_length,) = struct.unpack("<Q", file.read(8))
    if not 0 < header_length <= min(_SAFETENSORS_MAX_HEADER, file_size - 8):
        raise ValueError(
            f"malformed safetensors file: a header of {header_length:,} bytes in a file of {file_size:,} bytes"
        )
    header_bytes = file.read(header_length)
    # what json makes of it, at most: an object per bracket or comma, and the text
    budget.charge(
        64 * sum(header_bytes.count(c) for c in b"[{,") + 4 * header_length, "the safetensors header's objects"
    )
    try:
        header = json.loads(header_bytes, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"malformed safetensors header: {e}"[:300]) from None
    if not isinstance(header, dict):
        raise ValueError("malformed safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("malformed safetensors header: __metadata__ must map strings to strings")
    data_start = start + 8 + header_length
    data_length = file_size - 8 - header_length
    entries = {name: _safetensors_entry(name, info, data_length) for name, info in header.items()}
    previous_end, previous_name = 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin < previous_end:
            raise ValueError(f"malformed safetensors file: tensors {previous_name!r} and {name!r} overlap")
        previous_end, previous_name = end, name
    arrays = {}
    for name, (dtype_name, shape, begin, end) in entries.items():
        element = _numpy_dtype(dtype_name)
        budget.charge((end - begin) * (2 if dtype_name == BFLOAT16 else 1), f"tensor {name!r} of shape {shape}")
        array = np.empty(shape, element)  # its own memory, writable
        _read_exactly(file, data_start + begin, array, f"tensor {name!r}")
        if dtype_name == BFLOAT16:
            array = _bfloat16_bits_to_float32(array)
        elif not element.isnative:
            array = array.astype(element.newbyteorder("="))
        arrays[name] = array
    return arrays


# ---------------------------------------------------------------------------------------------------------------
# writing


@contextlib.contextmanager
def _open_for_writing(path_or_file: PathOrFile) -> Iterator[IO[bytes]]:
    """A path is written to a temporary name and renamed at the end: a crash never leaves half a checkpoint."""
    if hasattr(path_or_file, "write"):
        yield path_or_file
        return
    path = os.fspath(path_or_file)
    temporary = f"{path}.{os.getpid()}.partial"
    try:
        with open(temporary, "wb") as file:
            yield file
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def save_safetensors(arrays: Mapping[str, np.ndarray], path_or_file: PathOrFile, metadata=None) -> None:
    """Write a safetensors file: 8-byte header length, JSON header, then the tensors' bytes back to back."""
    prepared = [(name, np.asarray(array)) for name, array in arrays.items()]
    for name, array in prepared:
        _check_savable(name, array, _DTYPE_SAFETENSORS, "safetensors")
    # Widest elements first, as the safetensors package does, so every tensor stays aligned for memory mapping.
    prepared.sort(key=lambda item: (-item[1].dtype.itemsize, item[0]))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, array in prepared:
        header[name] = {
            "dtype": _DTYPE_SAFETENSORS[array.dtype.name],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # pad so the data starts 8-byte aligned
    with _open_for_writing(path_or_file) as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for _, array in prepared:
            file.write(_little_endian_bytes(array))


class _TorchPickleWriter:
    """Writes the protocol-2 pickle of a {name: tensor} dict, opcode by opcode, the way torch.save lays it out.

    pickle.Pickler cannot do this without torch: to write a global such as torch._utils._rebuild_tensor_v2 it
    imports the module to check the name. The structure is small and fixed, so the opcodes are written here.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = [pickle.PROTO + b"\x02"]

    def getvalue(self) -> bytes:
        return b"".join(self._parts)

    def opcode(self, code: bytes) -> None:
        self._parts.append(code)

    def global_(self, module: str, name: str) -> None:
        self._parts.append(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def string(self, text: str) -> None:
        encoded = text.encode("utf-8", "surrogatepass")
        self._parts.append(pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded)

    def integer(self, value: int) -> None:
        if 0 <= value < 1 << 8:
            self._parts.append(pickle.BININT1 + struct.pack("<B", value))
        elif 0 <= value < 1 << 16:
            self._parts.append(pickle.BININT2 + struct.pack("<H", value))
        elif -(1 << 31) <= value < 1 << 31:
            self._parts.append(pickle.BININT + struct.pack("<i", value))
        else:
            encoded = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
            self._parts.append(pickle.LONG1 + struct.pack("<B", len(encoded)) + encoded)

    def int_tuple(self, values) -> None:
        self.opcode(pickle.MARK)
        for value in values:
            self.integer(int(value))
        self.opcode(pickle.TUPLE)

    def tensor(self, storage_key: str, array: np.ndarray) -> None:
        """_rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict()) for a C-contiguous array.

        dtypes without a legacy storage class (uint16/32/64) go as torch does it: an UntypedStorage of bytes and
        _rebuild_tensor_v3 with the dtype as an extra argument.
        """
        dtype_name = array.dtype.name
        typed = dtype_name in _DTYPE_STORAGES
        self.global_("torch._utils", "_rebuild_tensor_v2" if typed else "_rebuild_tensor_v3")
        self.opcode(pickle.MARK)
        self.opcode(pickle.MARK)  # the persistent id: ("storage", storage type, key, location, numel)
        self.string("storage")
        if typed:
            self.global_("torch", _DTYPE_STORAGES[dtype_name])
        else:
            self.global_("torch.storage", "UntypedStorage")
        self.string(storage_key)
        self.string("cpu")
        self.integer(array.size if typed else array.nbytes)
        self.opcode(pickle.TUPLE)
        self.opcode(pickle.BINPERSID)
        self.integer(0)  # storage offset
        self.int_tuple(array.shape)
        self.int_tuple(_contiguous_strides(array.shape))
        self.opcode(pickle.NEWFALSE)  # requires_grad
        self.global_("collections", "OrderedDict")  # backward hooks: always empty
        self.opcode(pickle.EMPTY_TUPLE)
        self.opcode(pickle.REDUCE)
        if not typed:
            self.global_("torch", dtype_name)
        self.opcode(pickle.TUPLE)
        self.opcode(pickle.REDUCE)


def _pickle_checkpoint(tree: Any) -> tuple[bytes, list[np.ndarray]]:
    """The pickle of a checkpoint tree as torch.save writes it, and its tensors' arrays (one storage each, in order).

    What torch.load(weights_only=True) reads back: dicts (str, int, float, bool or None keys), lists, tuples, str,
    int, float, bool, None, and tensors (lazygrad Tensors, numpy arrays; numpy scalars are written as Python
    numbers). One tensor object reached twice is one storage, as torch.save keeps it. Anything else is a TypeError
    naming its place in the tree, raised before a byte is written.
    """
    writer = _TorchPickleWriter()
    arrays: list[np.ndarray] = []
    storage_of: dict[int, int] = {}  # id(tensor object) -> its storage's index
    reached: list[Any] = []  # keeps each tensor object alive, so that no id is reused while writing

    def write(value: Any, path: str, depth: int) -> None:
        if depth > _MAX_NESTING:
            raise ValueError(f"lazygrad.save: containers nested more than {_MAX_NESTING} deep (at {path!r})")
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            value = value.item()
        if value is None:
            writer.opcode(pickle.NONE)
        elif isinstance(value, bool):
            writer.opcode(pickle.NEWTRUE if value else pickle.NEWFALSE)
        elif isinstance(value, int):
            writer.integer(value)
        elif isinstance(value, float):
            writer.opcode(pickle.BINFLOAT + struct.pack(">d", value))
        elif isinstance(value, str):
            writer.string(value)
        elif isinstance(value, Mapping):
            writer.opcode(pickle.EMPTY_DICT)
            if value:
                writer.opcode(pickle.MARK)
                for key, item in value.items():
                    if not (key is None or isinstance(key, (str, int, float))):
                        kind = type(key).__name__
                        raise TypeError(f"lazygrad.save cannot store a {kind} as a dict key (in {path!r})")
                    write(key, path, depth + 1)
                    write(item, f"{path}.{key}" if path else str(key), depth + 1)
                writer.opcode(pickle.SETITEMS)
        elif isinstance(value, list):
            writer.opcode(pickle.EMPTY_LIST)
            if value:
                writer.opcode(pickle.MARK)
                for i, item in enumerate(value):
                    write(item, f"{path}.{i}" if path else str(i), depth + 1)
                writer.opcode(pickle.APPENDS)
        elif isinstance(value, tuple):
            writer.opcode(pickle.MARK)
            for i, item in enumerate(value):
                write(item, f"{path}.{i}" if path else str(i), depth + 1)
            writer.opcode(pickle.TUPLE)
        elif isinstance(value, np.ndarray) or (hasattr(value, "numpy") and hasattr(value, "shape")):
            index = storage_of.get(id(value))
            if index is None:
                # order="C" rather than np.ascontiguousarray, which would turn 0-d arrays into 1-d ones
                array = np.asarray(value if isinstance(value, np.ndarray) else value.numpy(), order="C")
                _check_savable(path or "the tensor", array, _TORCH_DTYPE_NAMES, "PyTorch's checkpoint format")
                index = storage_of[id(value)] = len(arrays)
                arrays.append(array)
                reached.append(value)
            writer.tensor(str(index), arrays[index])
        else:
            raise TypeError(
                f"lazygrad.save cannot store {path or 'the object'!r}: a {type(value).__name__} (it stores tensors, "
                "arrays, dicts, lists, tuples, numbers, strings and None, which torch.load(weights_only=True) reads)"
            )

    write(tree, "", 0)
    writer.opcode(pickle.STOP)
    return writer.getvalue(), arrays


def _write_aligned_record(archive: zipfile.ZipFile, file: IO[bytes], name: str, data) -> None:
    """Store one uncompressed record whose data starts on a 64-byte boundary, padding the local header's extra
    field the way torch does (field id "FB")."""
    info = zipfile.ZipInfo(name)  # fixed 1980 timestamp: the same arrays give the same bytes
    local_header_end = file.tell() + 30 + len(name.encode()) + 4  # 30: the local file header's fixed part
    padding = -local_header_end % _TORCH_RECORD_ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, padding) + b"Z" * padding
    archive.writestr(info, memoryview(data))


def save_arrays(arrays: Mapping[str, np.ndarray], path_or_file: PathOrFile) -> None:
    """Write {name: array} as torch.save writes a state_dict; torch.load(path, weights_only=True) reads it back.

    Each array gets its own storage, written C-contiguous and little-endian.
    """
    save_checkpoint({str(name): np.asarray(array) for name, array in arrays.items()}, path_or_file)


def save_checkpoint(tree: Any, path_or_file: PathOrFile) -> None:
    """Write a checkpoint tree (nested dicts, lists, tuples, numbers, strings, None and tensors) as torch.save
    does; torch.load(path, weights_only=True) reads it back with the same structure."""
    pickled, arrays = _pickle_checkpoint(tree)
    records: list[tuple[str, Any]] = [
        ("data.pkl", pickled),
        (".format_version", b"1"),
        (".storage_alignment", str(_TORCH_RECORD_ALIGNMENT).encode()),
        ("byteorder", b"little"),
    ]
    records += [(f"data/{key}", _little_endian_bytes(array)) for key, array in enumerate(arrays)]
    records.append(("version", b"3\n"))
    with _open_for_writing(path_or_file) as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            _write_aligned_record(archive, file, f"archive/{name}", data)


# ---------------------------------------------------------------------------------------------------------------
# Tensor-level API


def load(path_or_file: PathOrFile, device=None, *, map_location=None, weights_only: bool | None = None) -> dict:
    """torch.load: a checkpoint (PyTorch .pth/.pt or safetensors) with the structure it was saved with (a
    state_dict is {name: Tensor}; {"model": ..., "optimizer": ..., "epoch": 3} stays nested), tensors as Tensors.

    torch's keywords: `map_location` is the device the tensors go to (a device name; torch's dicts and functions
    are refused), and `weights_only` may be True (or left out): lazygrad reads tensors only and never runs a
    checkpoint's pickled code, so weights_only=False, which asks for that, is an error rather than ignored."""
    from lazygrad.dtype import from_numpy_dtype
    from lazygrad.tensor import Tensor

    if weights_only is False:
        raise ValueError(
            "lazygrad.load reads tensors only and never runs pickled code: weights_only=False is not supported"
        )
    if map_location is not None:
        if not isinstance(map_location, str):
            raise TypeError(f"map_location must be a device name here, got {type(map_location).__name__}")
        if device is not None and device != map_location:
            raise ValueError(f"load: device={device!r} and map_location={map_location!r} disagree")
        device = map_location

    def to_tensor(array: np.ndarray):
        repeated = tuple(n > 1 and s == 0 for n, s in zip(array.shape, array.strides))
        if not any(repeated):
            return Tensor(array, dtype=from_numpy_dtype(array.dtype), device=device)
        # torch's expanded tensors (stride 0) stay expanded: one copy of what they repeat, expanded lazily
        once = array[tuple(slice(0, 1) if r else slice(None) for r in repeated)]
        return Tensor(np.ascontiguousarray(once), dtype=from_numpy_dtype(array.dtype), device=device).expand(
            array.shape
        )

    tensors: dict[int, Tensor] = {}  # one array reached twice (tied weights) is one Tensor

    def rebuilt(node: Any, depth: int = 0) -> Any:
        if isinstance(node, np.ndarray):
            if id(node) not in tensors:
                tensors[id(node)] = to_tensor(node)
            return tensors[id(node)]
        if depth > _MAX_NESTING:
            return node
        if isinstance(node, dict):
            return type(node)((key, rebuilt(value, depth + 1)) for key, value in node.items())
        if isinstance(node, (list, tuple)):
            return type(node)(rebuilt(value, depth + 1) for value in node)
        return node

    return rebuilt(load_checkpoint(path_or_file))


def save(obj: Any, path_or_file: PathOrFile) -> None:
    """torch.save: a checkpoint tree ({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, or
    a plain state_dict, or one tensor) in PyTorch's zip format, which torch.load(weights_only=True) reads back.
    A path ending in .safetensors writes safetensors, which holds a flat {name: tensor} only."""
    is_path = not hasattr(path_or_file, "write")
    if is_path and os.fspath(path_or_file).endswith(".safetensors"):
        if not isinstance(obj, Mapping):
            raise TypeError(f"safetensors stores a flat {{name: tensor}}, got a {type(obj).__name__}")
        for name, value in obj.items():
            if isinstance(value, (Mapping, list, tuple)):
                raise TypeError(
                    f"safetensors stores a flat {{name: tensor}}; {name!r} is a {type(value).__name__}: save nested "
                    "checkpoints (model, optimizer, epoch) in PyTorch's format (a .pt or .pth path)"
                )
        arrays = {name: value.numpy() if hasattr(value, "numpy") else np.asarray(value) for name, value in obj.items()}
        save_safetensors(arrays, path_or_file)
    else:
        save_checkpoint(obj, path_or_file)

"""Checkpoints: PyTorch's zip format and safetensors, read and written with numpy alone (torch is never imported).

Reading a PyTorch checkpoint means unpickling, and unpickling can run arbitrary code. The unpickler here resolves
only the handful of globals a tensor checkpoint needs (the tensor rebuild functions, storage types, dtypes,
OrderedDict) to harmless stand-ins, and refuses every other global before anything is called. See
docs/checkpoints.md for the formats and the safety model.

Array-level API (numpy in, numpy out):
    load_checkpoint(f)   the whole object: nested dicts/lists as stored, tensors as numpy arrays
    load_arrays(f)       a flat {name: array}: nested containers are flattened with dotted names
    save_arrays(d, f)    torch.save-compatible zip, readable by torch.load(f, weights_only=True)
    save_safetensors(d, f)
Tensor-level API: load(f, device=None) -> {name: Tensor} and save(state_dict, f).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import struct
import zipfile
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

    Containers come back as stored (a state_dict is a dict; {"model": {...}, "epoch": 3} stays nested).
    """
    with _open_for_reading(path_or_file) as file:
        head = _peek(file, 16)
        if head.startswith(_ZIP_MAGIC):
            return _load_torch_zip(file)
        if _looks_like_safetensors(head):
            return _load_safetensors(file)
        if head.startswith(_LEGACY_TORCH_MAGIC):
            raise ValueError(
                "this checkpoint uses PyTorch's legacy (pre-1.6) format, which lazygrad does not read; "
                "re-save it with torch>=1.6: torch.save(torch.load(old_path), new_path)"
            )
        raise ValueError("not a checkpoint lazygrad can read: neither a PyTorch zip archive nor a safetensors file")


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
    """Collect the arrays in nested dicts/lists/tuples into one dict keyed by dotted paths."""
    if isinstance(tree, Mapping):
        children = [(str(key), value) for key, value in tree.items()]
    elif isinstance(tree, (list, tuple)):
        children = [(str(index), value) for index, value in enumerate(tree)]
    else:
        return {}
    flat: dict[str, np.ndarray] = {}
    for key, value in children:
        name = f"{prefix}{key}"
        found = {name: value} if isinstance(value, np.ndarray) else flatten_arrays(value, name + ".")
        for found_name, array in found.items():
            if found_name in flat:
                raise ValueError(f"two tensors in the checkpoint flatten to the same name {found_name!r}")
            flat[found_name] = array
    return flat


# ---------------------------------------------------------------------------------------------------------------
# reading: PyTorch zip archives through a restricted unpickler


class _StorageType(NamedTuple):
    """Stand-in for torch.FloatStorage & co. A tuple, so that a pickle cannot set attributes on it."""

    dtype_name: str | None  # None: torch.storage.UntypedStorage (bytes; _rebuild_tensor_v3 brings the dtype)


class _DTypeRef(NamedTuple):
    """Stand-in for torch.float32 & co."""

    name: str


class _Storage(NamedTuple):
    raw: bytes
    dtype_name: str | None
    byteorder: str  # "<" or ">", from the archive's byteorder record


def _array_from_storage(storage: _Storage, dtype_name: str, offset: int, size, stride) -> np.ndarray:
    """Copy the strided view (offset, size, stride in elements, as torch stores them) out of a storage."""
    element = _numpy_dtype(dtype_name, storage.byteorder)
    flat = np.frombuffer(storage.raw, dtype=element, count=len(storage.raw) // element.itemsize)
    size, stride, offset = tuple(map(int, size)), tuple(map(int, stride)), int(offset)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"malformed tensor: size {size} and stride {stride} differ in length")
    if 0 in size:
        view = np.empty(size, element)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if offset < 0 or min(stride, default=0) < 0 or last >= flat.size:
            raise pickle.UnpicklingError(
                f"malformed tensor: a view of size {size}, stride {stride}, offset {offset} reaches outside "
                f"its storage of {flat.size} elements"
            )
        byte_strides = tuple(s * element.itemsize for s in stride)
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=byte_strides, writeable=False)
    array = np.array(view, dtype=element.newbyteorder("="))  # a copy that owns its memory, in native byte order
    return _bfloat16_bits_to_float32(array) if dtype_name == BFLOAT16 else array


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's data.pkl, resolving only the globals that rebuild tensors and containers."""

    def __init__(self, file: IO[bytes], read_record, byteorder: str):
        super().__init__(file, encoding="utf-8")
        self._read_record = read_record  # storage key -> bytes of data/<key>
        self._byteorder = byteorder
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        # Bound methods and tuples: a malicious BUILD opcode cannot change them for later loads.
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
            raise pickle.UnpicklingError(f"malformed checkpoint: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, _numel = pid
        key = str(key)
        if key not in self._storages:
            try:
                raw = self._read_record(f"data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"malformed checkpoint: storage data/{key} is missing") from None
            self._storages[key] = _Storage(raw, storage_type.dtype_name, self._byteorder)
        return self._storages[key]

    @staticmethod
    def _check_storage(storage: Any) -> _Storage:
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"malformed checkpoint: expected a storage, got {type(storage).__name__}")
        return storage

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        storage = self._check_storage(storage)
        if storage.dtype_name is None:
            raise pickle.UnpicklingError("malformed checkpoint: an untyped storage without a dtype")
        return _array_from_storage(storage, storage.dtype_name, offset, size, stride)

    def _rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None):
        storage = self._check_storage(storage)
        if not isinstance(dtype, _DTypeRef):
            raise pickle.UnpicklingError(f"malformed checkpoint: expected a dtype, got {type(dtype).__name__}")
        return _array_from_storage(storage, dtype.name, offset, size, stride)

    def _rebuild_parameter(self, data, requires_grad=False, hooks=None, state=None):
        return data  # a Parameter is its tensor; requires_grad is the model's business

    def _encode_latin1(self, text, encoding="latin1"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"malformed checkpoint: unexpected _codecs.encode({text!r}, {encoding!r})")
        return text.encode("latin1")


def _load_torch_zip(file: IO[bytes]) -> Any:
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
        # Records live under one top folder whose name varies ("archive", or the file's stem).
        pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
        if not pickles:
            raise ValueError("a zip archive without <folder>/data.pkl: not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        if any(name.startswith(prefix + "code/") for name in names):
            raise ValueError("this is a TorchScript archive (torch.jit.save); save model.state_dict() with torch.save")
        byteorder = "<"
        if prefix + "byteorder" in names:
            byteorder = {"little": "<", "big": ">"}[archive.read(prefix + "byteorder").decode().strip()]
        with archive.open(pickles[0]) as pickled:
            unpickler = _RestrictedUnpickler(pickled, lambda record: archive.read(prefix + record), byteorder)
            return unpickler.load()


# ---------------------------------------------------------------------------------------------------------------
# reading: safetensors


def _load_safetensors(file: IO[bytes]) -> dict[str, np.ndarray]:
    start = file.tell()
    (header_length,) = struct.unpack("<Q", file.read(8))
    header = json.loads(file.read(header_length))
    header.pop("__metadata__", None)
    data_start = start + 8 + header_length
    arrays = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"safetensors tensor {name!r} has dtype {info['dtype']}, which lazygrad cannot read")
        dtype_name = _SAFETENSORS_DTYPES[info["dtype"]]
        element = _numpy_dtype(dtype_name)
        shape = tuple(info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != int(np.prod(shape)) * element.itemsize:
            raise ValueError(f"safetensors tensor {name!r}: offsets {begin}..{end} do not fit shape {shape}")
        buffer = bytearray(end - begin)  # writable, so the array we return is too
        file.seek(data_start + begin)
        if file.readinto(buffer) != len(buffer):
            raise ValueError(f"safetensors file is truncated inside tensor {name!r}")
        array = np.frombuffer(buffer, dtype=element).reshape(shape).astype(element.newbyteorder("="), copy=False)
        arrays[name] = _bfloat16_bits_to_float32(array) if dtype_name == BFLOAT16 else array
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


def _pickle_state_dict(arrays: list[tuple[str, np.ndarray]]) -> bytes:
    writer = _TorchPickleWriter()
    writer.opcode(pickle.EMPTY_DICT)
    if arrays:
        writer.opcode(pickle.MARK)
        for storage_key, (name, array) in enumerate(arrays):
            writer.string(name)
            writer.tensor(str(storage_key), array)
        writer.opcode(pickle.SETITEMS)
    writer.opcode(pickle.STOP)
    return writer.getvalue()


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
    # order="C" rather than np.ascontiguousarray, which would turn 0-d arrays into 1-d ones
    prepared = [(str(name), np.asarray(array, order="C")) for name, array in arrays.items()]
    for name, array in prepared:
        _check_savable(name, array, _TORCH_DTYPE_NAMES, "PyTorch's checkpoint format")
    records: list[tuple[str, Any]] = [
        ("data.pkl", _pickle_state_dict(prepared)),
        (".format_version", b"1"),
        (".storage_alignment", str(_TORCH_RECORD_ALIGNMENT).encode()),
        ("byteorder", b"little"),
    ]
    records += [(f"data/{key}", _little_endian_bytes(array)) for key, (_, array) in enumerate(prepared)]
    records.append(("version", b"3\n"))
    with _open_for_writing(path_or_file) as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            _write_aligned_record(archive, file, f"archive/{name}", data)


# ---------------------------------------------------------------------------------------------------------------
# Tensor-level API


def load(path_or_file: PathOrFile, device=None) -> dict:
    """Load a checkpoint (PyTorch .pth/.pt or safetensors) as {name: Tensor}, flattened like load_arrays."""
    from lazygrad.tensor import Tensor

    return {name: Tensor(array, device=device) for name, array in load_arrays(path_or_file).items()}


def save(state_dict: Mapping[str, Any], path_or_file: PathOrFile) -> None:
    """Save {name: Tensor or array}: safetensors if the path ends in .safetensors, else PyTorch's zip format."""
    arrays = {
        name: value.numpy() if hasattr(value, "numpy") else np.asarray(value) for name, value in state_dict.items()
    }
    is_path = not hasattr(path_or_file, "write")
    if is_path and os.fspath(path_or_file).endswith(".safetensors"):
        save_safetensors(arrays, path_or_file)
    else:
        save_arrays(arrays, path_or_file)

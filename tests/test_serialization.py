"""Checkpoints: PyTorch's zip format and safetensors (lazygrad.serialization), weight downloads (lazygrad.hub).

torch is only the oracle here: it writes the files lazygrad must read and reads the files lazygrad writes.
The download tests talk to an http.server on 127.0.0.1 and nothing else.
"""

import functools
import hashlib
import http.server
import io
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

from lazygrad import hub
from lazygrad.serialization import (
    _TorchPickleWriter,
    load,
    load_arrays,
    load_checkpoint,
    save,
    save_arrays,
    save_safetensors,
)

torch = pytest.importorskip("torch")


def as_numpy(tensor) -> np.ndarray:
    """The oracle's view of a torch tensor as lazygrad returns it (bfloat16 widens to float32)."""
    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def assert_same_arrays(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        assert actual[name].shape == array.shape, name
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


def torch_state_dict() -> dict:
    generator = torch.Generator().manual_seed(0)
    storage_owner = torch.arange(30, dtype=torch.float32)
    return {
        "float32": torch.randn(3, 4, generator=generator),
        "float16": torch.randn(2, 5, generator=generator).half(),
        "int64": torch.arange(-3, 9).reshape(3, 4),
        "bool": torch.tensor([[True, False], [False, True]]),
        "transposed": torch.randn(4, 3, generator=generator).t(),
        "slice_with_offset": storage_owner[7:13],
        "strided_slice": storage_owner.view(5, 6)[1:4, ::2],
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }


# ---------------------------------------------------------------------------------------------------------------
# reading what torch.save wrote


def test_load_arrays_reads_torch_state_dict(tmp_path):
    state_dict = torch_state_dict()
    torch.save(state_dict, tmp_path / "weights.pth")
    loaded = load_arrays(tmp_path / "weights.pth")
    assert_same_arrays(loaded, {name: as_numpy(t) for name, t in state_dict.items()})
    arrays = list(loaded.values())
    assert all(array.flags.writeable for array in arrays)
    # separate arrays, even for tensors that share a storage in the file (the slices here)
    assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1 :])


def test_load_arrays_widens_bfloat16_to_float32(tmp_path):
    weights = torch.randn(7, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    torch.save({"w": weights}, tmp_path / "bf16.pth")
    assert_same_arrays(load_arrays(tmp_path / "bf16.pth"), {"w": weights.float().numpy()})


def test_load_arrays_reads_dtypes_stored_as_untyped_storage(tmp_path):
    # torch stores uint16 with an UntypedStorage and _rebuild_tensor_v3
    weights = torch.from_numpy(np.array([0, 1, 65535], dtype=np.uint16))
    torch.save({"w": weights}, tmp_path / "u16.pth")
    assert_same_arrays(load_arrays(tmp_path / "u16.pth"), {"w": weights.numpy()})


def test_load_arrays_reads_module_state_dict_with_parameters_and_metadata(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    torch.save(model.state_dict(), tmp_path / "model.pth")
    torch.save(dict(model.named_parameters()), tmp_path / "parameters.pth")  # Parameter objects, not tensors
    assert_same_arrays(load_arrays(tmp_path / "model.pth"), {k: as_numpy(v) for k, v in model.state_dict().items()})
    assert_same_arrays(load_arrays(tmp_path / "parameters.pth"), {k: as_numpy(v) for k, v in model.named_parameters()})


def test_load_arrays_accepts_any_archive_folder_name_and_file_objects(tmp_path):
    state_dict = {"w": torch.ones(2, 2)}
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)  # the folder inside is "archive"
    torch.save(state_dict, tmp_path / "my-model.v2.pt")  # the folder is named after the file
    assert {name.split("/")[0] for name in zipfile.ZipFile(tmp_path / "my-model.v2.pt").namelist()} != {"archive"}
    buffer.seek(0)
    assert_same_arrays(load_arrays(buffer), {"w": np.ones((2, 2), np.float32)})
    with open(tmp_path / "my-model.v2.pt", "rb") as file:
        assert_same_arrays(load_arrays(file), {"w": np.ones((2, 2), np.float32)})


def test_load_arrays_flattens_nested_checkpoints_with_dotted_names(tmp_path):
    checkpoint = {"model": {"fc.weight": torch.ones(2)}, "epoch": 3, "history": [torch.zeros(1)]}
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    assert_same_arrays(
        load_arrays(tmp_path / "checkpoint.pth"),
        {"model.fc.weight": np.ones(2, np.float32), "history.0": np.zeros(1, np.float32)},
    )
    nested = load_checkpoint(tmp_path / "checkpoint.pth")
    assert nested["epoch"] == 3
    np.testing.assert_array_equal(nested["model"]["fc.weight"], np.ones(2, np.float32))


def test_load_arrays_explains_the_legacy_format(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"legacy.*torch>=1\.6"):
        load_arrays(tmp_path / "old.pth")


def test_load_arrays_rejects_unknown_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="neither a PyTorch zip archive nor a safetensors file"):
        load_arrays(tmp_path / "notes.txt")


# ---------------------------------------------------------------------------------------------------------------
# writing what torch.load reads


def numpy_arrays() -> dict:
    rng = np.random.default_rng(0)
    return {
        "float32": rng.standard_normal((3, 4), dtype=np.float32),
        "float64": rng.standard_normal(5),
        "float16": rng.standard_normal((2, 2)).astype(np.float16),
        "int64": np.arange(-6, 6, dtype=np.int64).reshape(2, 6),
        "int32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
        "int8": np.array([-128, 127], dtype=np.int8),
        "uint8": np.array([0, 255], dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "uint16": np.array([0, 65535], dtype=np.uint16),
        "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,
        "size_one_column": np.arange(3.0, dtype=np.float32)[:, None],
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def test_save_arrays_is_read_by_torch_load_weights_only(tmp_path):
    arrays = numpy_arrays()
    save_arrays(arrays, tmp_path / "out.pth")
    loaded = torch.load(tmp_path / "out.pth", weights_only=True)
    assert_same_arrays({name: tensor.numpy() for name, tensor in loaded.items()}, arrays)


def test_save_arrays_round_trips_through_load_arrays(tmp_path):
    arrays = numpy_arrays()
    buffer = io.BytesIO()
    save_arrays(arrays, buffer)
    buffer.seek(0)
    assert_same_arrays(load_arrays(buffer), arrays)


def test_save_arrays_aligns_tensor_data_to_64_bytes_like_torch(tmp_path):
    save_arrays(numpy_arrays(), tmp_path / "out.pth")
    raw = (tmp_path / "out.pth").read_bytes()
    for info in zipfile.ZipFile(tmp_path / "out.pth").infolist():
        name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
        assert (info.header_offset + 30 + name_length + extra_length) % 64 == 0, info.filename
    assert torch.load(tmp_path / "out.pth", weights_only=True, mmap=True)["float32"].shape == (3, 4)


def test_save_arrays_refuses_dtypes_torch_lacks(tmp_path):
    with pytest.raises(TypeError, match="'text'"):
        save_arrays({"text": np.array(["a"])}, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


# ---------------------------------------------------------------------------------------------------------------
# safetensors


def test_safetensors_round_trip(tmp_path):
    arrays = {name: array for name, array in numpy_arrays().items() if name != "uint16"}
    save_safetensors(arrays, tmp_path / "out.safetensors")
    loaded = load_arrays(tmp_path / "out.safetensors")
    assert_same_arrays({name: loaded[name] for name in arrays}, arrays)


def test_safetensors_written_by_lazygrad_is_read_by_the_safetensors_package(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed")
    arrays = numpy_arrays()
    save_safetensors(arrays, tmp_path / "out.safetensors", metadata={"format": "np"})
    loaded = safetensors_numpy.load_file(tmp_path / "out.safetensors")
    assert_same_arrays({name: loaded[name] for name in arrays}, arrays)


def test_safetensors_written_by_the_safetensors_package_is_read(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="the safetensors package is not installed")
    state_dict = torch_state_dict() | {"bfloat16": torch.randn(3).to(torch.bfloat16)}
    # safetensors stores contiguous, unshared tensors
    state_dict = {name: tensor.contiguous().clone() for name, tensor in state_dict.items()}
    safetensors_torch.save_file(state_dict, tmp_path / "in.safetensors", metadata={"source": "torch"})
    loaded = load_arrays(tmp_path / "in.safetensors")
    assert_same_arrays({name: loaded[name] for name in state_dict}, {k: as_numpy(v) for k, v in state_dict.items()})


def test_format_is_chosen_by_content_not_extension(tmp_path):
    arrays = {"w": np.arange(4, dtype=np.float32)}
    save_safetensors(arrays, tmp_path / "really_safetensors.pth")
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, tmp_path / "really_torch.safetensors")
    assert_same_arrays(load_arrays(tmp_path / "really_safetensors.pth"), arrays)
    assert_same_arrays(load_arrays(tmp_path / "really_torch.safetensors"), arrays)


# ---------------------------------------------------------------------------------------------------------------
# malicious checkpoints


class RunsCommand:
    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def write_torch_like_zip(path, payload) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("make_payload", ["os.system", "builtins.exec"])
def test_malicious_checkpoint_is_refused_before_running_anything(tmp_path, make_payload):
    marker = tmp_path / "pwned"
    if make_payload == "os.system":
        payload = {"w": RunsCommand(os.system, f"touch {marker}")}
    else:
        payload = {"w": RunsCommand(exec, f"open({str(marker)!r}, 'w').close()")}
    write_torch_like_zip(tmp_path / "evil.pth", payload)
    with pytest.raises(pickle.UnpicklingError, match=r"checkpoint refers to \S*(system|exec).*only loads tensors"):
        load_arrays(tmp_path / "evil.pth")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# hostile files: a few hundred bytes that declare terabytes fail fast, within twice the file's size in memory

# Loads a checkpoint in a fresh process under an address-space limit and prints what happened and how far its
# resident memory rose above where it was before the load (VmHWM, reset first through /proc/self/clear_refs).
MEASURE = r"""
import json, resource, sys, time
import numpy as np
import lazygrad
from lazygrad import serialization


def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (1 << 30), resource.RLIM_INFINITY))  # a backstop
function = sys.argv[2]
if function == "load":  # start the backend first: its memory is not the checkpoint's
    (lazygrad.Tensor(np.ones(2, np.float32)) + 1).numpy()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident size starts again from the current one
before = status("VmRSS")
start = time.perf_counter()
try:
    result = getattr(serialization, function)(sys.argv[1])
    arrays = result.items() if function == "load_arrays" else []
    outcome = {"loaded": True, "shapes": {k: list(v.shape) for k, v in arrays}}
except Exception as e:
    outcome = {"loaded": False, "error": f"{type(e).__name__}: {e}"}
outcome["seconds"] = time.perf_counter() - start
outcome["peak_growth"] = status("VmHWM") - before
print(json.dumps(outcome))
"""

MEMORY_CONSTANT = 24 << 20  # ALLOCATION_SLACK (16 MiB) and room for the interpreter's own noise


def load_in_a_fresh_process(path, function: str = "load_arrays") -> dict:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), function], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    size = os.path.getsize(path)
    assert outcome["peak_growth"] <= 2 * size + MEMORY_CONSTANT, (outcome, size)
    assert outcome["seconds"] < 5, outcome
    return outcome


def tensor_pickle(size, stride, offset=0, storage_type="FloatStorage", key="0", numel=1) -> bytes:
    """{"w": _rebuild_tensor_v2(storage, offset, size, stride, ...)}, with any numbers."""
    w = _TorchPickleWriter()
    w.opcode(pickle.EMPTY_DICT)
    w.string("w")
    tensor_opcodes(w, size, stride, offset, storage_type, key, numel)
    w.opcode(pickle.SETITEM)
    w.opcode(pickle.STOP)
    return w.getvalue()


def tensor_opcodes(w, size, stride, offset=0, storage_type="FloatStorage", key="0", numel=1) -> None:
    w.global_("torch._utils", "_rebuild_tensor_v2")
    w.opcode(pickle.MARK)
    w.opcode(pickle.MARK)
    w.string("storage")
    w.global_("torch", storage_type)
    w.string(key)
    w.string("cpu")
    w.integer(numel)
    w.opcode(pickle.TUPLE)
    w.opcode(pickle.BINPERSID)
    w.integer(offset)
    w.int_tuple(size)
    w.int_tuple(stride)
    w.opcode(pickle.NEWFALSE)
    w.global_("collections", "OrderedDict")
    w.opcode(pickle.EMPTY_TUPLE)
    w.opcode(pickle.REDUCE)
    w.opcode(pickle.TUPLE)
    w.opcode(pickle.REDUCE)


def write_torch_zip(path, data_pkl: bytes, records: dict, compression=zipfile.ZIP_STORED) -> None:
    """A torch-like archive; `compression` applies to the storage records."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data, compress_type=compression)
        archive.writestr("archive/version", "3\n")


def test_a_safetensors_header_declaring_terabytes_fails_fast(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))

    outcome = load_in_a_fresh_process(path)

    assert not outcome["loaded"] and "ValueError" in outcome["error"]
    assert "'w'" in outcome["error"] and "outside" in outcome["error"], outcome["error"]


@pytest.mark.parametrize(
    "header,match",
    [
        ({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 1 << 62]}}, "outside"),
        ({"w": {"dtype": "F32", "shape": [1 << 32, 1 << 32], "data_offsets": [0, 0]}}, "do not fit"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "not a size"),
        ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, "not a size"),
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "outside"),
        ({"w": {"dtype": "F32", "shape": "x", "data_offsets": [0, 4]}}, "shape"),
        (
            {
                "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            "overlap",
        ),  # noqa: E501
        ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}, "dtype, shape, data_offsets"),
        ({"w": [1, 2]}, "dtype, shape, data_offsets"),
        ({"__metadata__": {"a": 1}}, "__metadata__"),
    ],
)
def test_a_malformed_safetensors_header_is_refused_with_the_tensor_named(tmp_path, header, match):
    encoded = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(16))
    with pytest.raises(ValueError, match=match):
        load_arrays(path)


@pytest.mark.parametrize("header_length", [1 << 40, 200, (100 << 20) + 1])
def test_a_safetensors_header_longer_than_the_file_is_refused(tmp_path, header_length):
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", header_length) + b'{"w": {}}' + bytes(64))
    with pytest.raises(ValueError):
        load_arrays(path)


def test_a_safetensors_header_with_a_repeated_name_is_refused(tmp_path):
    encoded = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'  # noqa: E501
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(4))
    with pytest.raises(ValueError, match="appears twice"):
        load_arrays(path)


def test_a_zero_stride_record_declaring_terabytes_loads_as_a_broadcast_view(tmp_path):
    path = tmp_path / "stride0.pth"
    write_torch_zip(path, tensor_pickle((1 << 20, 1 << 20), (0, 0)), {"0": np.float32(3).tobytes()})
    assert os.path.getsize(path) < 1000

    outcome = load_in_a_fresh_process(path)

    assert outcome["loaded"] and outcome["shapes"] == {"w": [1 << 20, 1 << 20]}
    array = load_arrays(path)["w"]
    assert array.strides == (0, 0) and not array.flags.writeable and array[12345, 67] == 3


def test_an_expanded_tensor_saved_by_torch_loads_as_a_broadcast_view(tmp_path):
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(65536, 16384)}, path)  # 4 GiB as a view, 1.5 KB on disk
    assert os.path.getsize(path) < 2000

    outcome = load_in_a_fresh_process(path)

    assert outcome["loaded"] and outcome["shapes"] == {"w": [65536, 16384]}


def test_lazygrad_load_keeps_an_expanded_tensor_expanded(tmp_path):
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(65536, 16384), "rows": torch.arange(3.0)[:, None].expand(3, 5)}, path)

    outcome = load_in_a_fresh_process(path, "load")
    loaded = load(path)

    assert outcome["loaded"]
    assert loaded["w"].shape == (65536, 16384)
    np.testing.assert_array_equal(loaded["w"][:2, :3].numpy(), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(loaded["rows"].numpy(), torch.arange(3.0)[:, None].expand(3, 5).numpy())


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(4.0).expand(3, 4),
        torch.arange(6.0).reshape(2, 1, 3).expand(2, 5, 3),
        torch.arange(6.0).reshape(2, 3).t().unsqueeze(0).expand(4, 3, 2),
        torch.tensor(7, dtype=torch.int64).expand(2, 2),
        torch.arange(3.0).to(torch.bfloat16).expand(2, 3),
    ],
    ids=["rows", "middle", "transposed", "int64-scalar", "bfloat16"],
)
def test_expanded_tensors_have_torchs_values(tmp_path, tensor):
    torch.save({"w": tensor}, tmp_path / "expanded.pth")
    np.testing.assert_array_equal(load_arrays(tmp_path / "expanded.pth")["w"], as_numpy(tensor))


def test_overlapping_strides_are_bounded_by_the_files_size(tmp_path):
    """Stride (1, 1) over 4096 x 4096 reads 8191 floats of storage but would copy 16 M of them: 64 MiB from 33 KB."""
    path = tmp_path / "overlap.pth"
    write_torch_zip(path, tensor_pickle((4096, 4096), (1, 1)), {"0": bytes(4 * 8191)})

    outcome = load_in_a_fresh_process(path)

    assert not outcome["loaded"] and "'w'" in outcome["error"] and "twice its size" in outcome["error"]


def test_overlapping_strides_within_the_bound_load_like_torch(tmp_path):
    storage = torch.arange(10.0)
    tensor = storage.as_strided((8, 3), (1, 1))
    torch.save({"w": tensor}, tmp_path / "overlap.pth")
    np.testing.assert_array_equal(load_arrays(tmp_path / "overlap.pth")["w"], tensor.numpy())


@pytest.mark.parametrize(
    "size,stride,offset,match",
    [
        ((2, 2), (2, 1), 1, "reaches outside"),
        ((2,), (1 << 62,), 0, "reaches outside"),
        ((2, 2), (1,), 0, "differ in length"),
        ((-1,), (1,), 0, "malformed tensor"),
        ((2,), (-1,), 1, "malformed tensor"),
        ((1,), (1,), -1, "storage offset"),
        (tuple([1] * 65), tuple([1] * 65), 0, "malformed tensor"),
    ],
)
def test_a_tensor_view_outside_its_storage_is_refused(tmp_path, size, stride, offset, match):
    path = tmp_path / "outside.pth"
    write_torch_zip(path, tensor_pickle(size, stride, offset), {"0": bytes(16)})
    with pytest.raises(pickle.UnpicklingError, match=match):
        load_arrays(path)


def test_a_compressed_record_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "deflated.pth"
    write_torch_zip(path, tensor_pickle((64 << 20,), (1,)), {"0": bytes(256 << 20)}, zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 400_000

    outcome = load_in_a_fresh_process(path)

    assert not outcome["loaded"] and "compressed" in outcome["error"] and "archive/data/0" in outcome["error"]


@pytest.mark.parametrize("compression", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_any_compression_method_is_refused(tmp_path, compression):
    path = tmp_path / "compressed.pth"
    write_torch_zip(path, tensor_pickle((1,), (1,)), {"0": bytes(4)}, compression)
    with pytest.raises(ValueError, match="compressed"):
        load_arrays(path)


def test_a_record_declaring_more_bytes_than_the_file_is_refused(tmp_path):
    path = tmp_path / "long.pth"
    write_torch_zip(path, tensor_pickle((4,), (1,)), {"0": bytes(16)})
    data = bytearray(path.read_bytes())
    # the central directory entry of data/0: its compressed and uncompressed sizes, made 2 GiB
    index = data.index(b"PK\x01\x02" + data[data.index(b"PK\x01\x02") + 4 : data.index(b"PK\x01\x02") + 6])
    entries = [i for i in range(index, len(data)) if data.startswith(b"PK\x01\x02", i)]
    (entry,) = [i for i in entries if data[i + 46 : i + 46 + 14] == b"archive/data/0"]
    data[entry + 20 : entry + 28] = struct.pack("<II", 1 << 31, 1 << 31)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="past the end|malformed"):
        load_arrays(path)


def test_a_zip_directory_of_many_records_is_charged_before_zipfile_reads_it(tmp_path):
    """zipfile keeps ~9 bytes of Python objects per byte of the directory: 60,000 directory entries (all naming
    one record) are refused before zipfile reads them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", tensor_pickle((1,), (1,)))
    data = buffer.getvalue()
    central = data.index(b"PK\x01\x02")
    end = data.index(b"PK\x05\x06")
    entry = data[central:end]
    name_length = struct.unpack("<H", entry[28:30])[0]
    entries = [entry[:46] + f"{i:016x}".encode()[:name_length] + entry[46 + name_length :] for i in range(60_000)]
    directory = entry + b"".join(entries)
    end_record = data[end : end + 8] + struct.pack("<HHII", 60_001 & 0xFFFF, 60_001 & 0xFFFF, len(directory), central)
    path = tmp_path / "records.pth"
    path.write_bytes(data[:central] + directory + end_record + data[end + 20 :])

    outcome = load_in_a_fresh_process(path)

    assert not outcome["loaded"] and "the zip directory" in outcome["error"], outcome


def shared_reference_pickle(depth: int) -> bytes:
    """{"w": L[depth]} where L[0] is a tensor and L[k] = [L[k-1], L[k-1]]: 2**depth paths to one tensor."""
    w = _TorchPickleWriter()
    w.opcode(pickle.EMPTY_DICT)
    w.string("w")
    tensor_opcodes(w, (1,), (1,))
    w.opcode(pickle.LONG_BINPUT + struct.pack("<I", 0))
    for level in range(depth):
        w.opcode(pickle.POP)
        w.opcode(pickle.EMPTY_LIST)
        w.opcode(pickle.MARK)
        w.opcode(pickle.LONG_BINGET + struct.pack("<I", level))
        w.opcode(pickle.LONG_BINGET + struct.pack("<I", level))
        w.opcode(pickle.APPENDS)
        w.opcode(pickle.LONG_BINPUT + struct.pack("<I", level + 1))
    w.opcode(pickle.SETITEM)
    w.opcode(pickle.STOP)
    return w.getvalue()


def test_shared_pickle_references_are_visited_once(tmp_path):
    path = tmp_path / "shared.pth"
    write_torch_zip(path, shared_reference_pickle(64), {"0": np.float32(5).tobytes()})  # 2**64 paths

    tree = load_checkpoint(path)  # returned as stored: shared, not unfolded
    node, depth = tree["w"], 0
    while isinstance(node, list):
        assert node[0] is node[1]
        node, depth = node[0], depth + 1
    assert depth == 64 and node.tolist() == [5.0]
    with pytest.raises(ValueError, match="one container of tensors at two places"):
        load_arrays(path)
    outcome = load_in_a_fresh_process(path)
    assert not outcome["loaded"] and "two places" in outcome["error"]


def test_a_memo_index_near_two_to_the_32_costs_nothing(tmp_path):
    """The C unpickler grows an array to the largest memo index a pickle names; lazygrad's does not."""
    w = _TorchPickleWriter()
    w.opcode(pickle.EMPTY_DICT)
    w.string("w")
    tensor_opcodes(w, (1,), (1,))
    w.opcode(pickle.LONG_BINPUT + struct.pack("<I", 0xFFFFFFF0))
    w.opcode(pickle.SETITEM)
    w.opcode(pickle.STOP)
    path = tmp_path / "memo.pth"
    write_torch_zip(path, w.getvalue(), {"0": np.float32(1).tobytes()})

    outcome = load_in_a_fresh_process(path)

    assert outcome["loaded"]


def test_a_pickle_of_many_small_objects_is_bounded(tmp_path):
    """One opcode byte makes a 56-byte list: 4 MB of EMPTY_LIST would be 230 MB of lists."""
    data = pickle.PROTO + b"\x02" + pickle.EMPTY_LIST * (4 << 20) + pickle.EMPTY_DICT + pickle.STOP
    path = tmp_path / "lists.pth"
    write_torch_zip(path, data, {})

    outcome = load_in_a_fresh_process(path)

    assert not outcome["loaded"] and "pickle" in outcome["error"] and "twice its size" in outcome["error"]


def test_a_build_opcode_reaches_nothing_but_an_ordered_dicts_metadata(tmp_path):
    w = _TorchPickleWriter()
    w.opcode(pickle.EMPTY_DICT)
    w.string("w")
    tensor_opcodes(w, (1,), (1,))
    w.opcode(pickle.EMPTY_DICT)
    w.string("__class__")
    w.integer(1)
    w.opcode(pickle.SETITEM)
    w.opcode(pickle.BUILD)
    w.opcode(pickle.SETITEM)
    w.opcode(pickle.STOP)
    path = tmp_path / "build.pth"
    write_torch_zip(path, w.getvalue(), {"0": np.float32(1).tobytes()})
    with pytest.raises(pickle.UnpicklingError, match="BUILD"):
        load_arrays(path)


@pytest.mark.parametrize("opcode", [pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.EXT1, pickle.PERSID])
def test_opcodes_a_tensor_checkpoint_never_needs_are_refused(tmp_path, opcode):
    path = tmp_path / "opcode.pth"
    write_torch_zip(path, pickle.PROTO + b"\x02" + pickle.MARK + opcode + b"os\nsystem\n" + pickle.STOP, {})
    with pytest.raises(ValueError, match="malformed checkpoint"):
        load_arrays(path)


def test_truncated_and_damaged_files_raise_value_errors(tmp_path):
    torch.save(torch_state_dict(), tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    for cut in (30, 100, len(data) // 2, len(data) - 30):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises((ValueError, pickle.UnpicklingError)):
            load_arrays(tmp_path / "cut.pth")
    damaged = bytearray(data)
    record = data.index(b"/data/0") + len("/data/0")
    damaged[record + 100] ^= 0xFF  # inside the first storage record's data (past its padding)
    (tmp_path / "damaged.pth").write_bytes(bytes(damaged))
    with pytest.raises(ValueError):
        load_arrays(tmp_path / "damaged.pth")


def test_a_real_checkpoint_needs_no_more_than_its_size(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(256, 1024, generator=generator) for i in range(16)}  # 16 MiB
    torch.save(state, tmp_path / "model.pth")
    outcome = load_in_a_fresh_process(tmp_path / "model.pth")
    assert outcome["loaded"]
    assert outcome["peak_growth"] <= os.path.getsize(tmp_path / "model.pth") + MEMORY_CONSTANT


# ---------------------------------------------------------------------------------------------------------------
# hub: cache location and downloads (from 127.0.0.1 only)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return home


@pytest.fixture
def file_server(tmp_path):
    """Serves tmp_path/served on 127.0.0.1; yields (base url, list of requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requests = []

    class CountingHandler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    handler = functools.partial(CountingHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, requests
    finally:
        server.shutdown()
        server.server_close()


def closed_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_checkpoint_dir_matches_torch_hub(torch_home, monkeypatch, tmp_path):
    assert hub.checkpoint_dir() == torch_home / "hub" / "checkpoints"
    assert str(hub.checkpoint_dir()) == os.path.join(torch.hub.get_dir(), "checkpoints")
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.checkpoint_dir() == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    assert str(hub.checkpoint_dir()) == os.path.join(torch.hub.get_dir(), "checkpoints")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.checkpoint_dir() == tmp_path / "home" / ".cache" / "torch" / "hub" / "checkpoints"


def test_known_resnet_weights_name_their_torchvision_files():
    assert hub.RESNET18_IMAGENET1K_V1 == (
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "resnet18-f37072fd.pth",
    )
    for url, file_name in hub.KNOWN_WEIGHTS.values():
        assert url == f"https://download.pytorch.org/models/{file_name}"
        assert len(hub.sha256_prefix_from_name(file_name)) == 8
    assert hub.sha256_prefix_from_name("resnet50-0676ba61.pth") == "0676ba61"
    assert hub.sha256_prefix_from_name("my_weights.pth") is None


def test_download_lands_in_checkpoint_dir_and_is_reused(torch_home, file_server, capsys):
    base_url, served, requests = file_server
    torch.save({"w": torch.arange(6.0)}, served / "payload.pth")
    digest = hashlib.sha256((served / "payload.pth").read_bytes()).hexdigest()
    file_name = f"tiny-{digest[:8]}.pth"
    (served / "payload.pth").rename(served / file_name)

    path = hub.load_url_to_file(f"{base_url}/{file_name}")
    assert path == torch_home / "hub" / "checkpoints" / file_name
    assert path.read_bytes() == (served / file_name).read_bytes()
    assert "100.0%" in capsys.readouterr().err
    assert_same_arrays(load_arrays(path), {"w": np.arange(6.0, dtype=np.float32)})

    assert hub.load_url_to_file(f"{base_url}/{file_name}") == path
    assert requests == [f"/{file_name}"]  # the second call used the cache
    assert sorted(os.listdir(path.parent)) == [file_name]


def test_download_with_wrong_hash_is_rejected_and_not_kept(torch_home, file_server):
    base_url, served, _ = file_server
    (served / "tiny-00000000.pth").write_bytes(b"these bytes do not hash to 00000000")
    with pytest.raises(RuntimeError, match="SHA-256"):
        hub.load_url_to_file(f"{base_url}/tiny-00000000.pth", progress=False)
    assert os.listdir(hub.checkpoint_dir()) == []


def test_explicit_hash_prefix_is_checked(torch_home, file_server):
    base_url, served, _ = file_server
    (served / "weights.pth").write_bytes(b"some bytes")
    with pytest.raises(RuntimeError, match="SHA-256"):
        hub.load_url_to_file(f"{base_url}/weights.pth", expected_sha256_prefix="abcdef12", progress=False)
    good_prefix = hashlib.sha256(b"some bytes").hexdigest()[:10]
    path = hub.load_url_to_file(f"{base_url}/weights.pth", expected_sha256_prefix=good_prefix, progress=False)
    assert path.read_bytes() == b"some bytes"


def test_missing_file_on_server_reports_http_error(torch_home, file_server):
    base_url, _, _ = file_server
    with pytest.raises(RuntimeError, match="HTTP 404"):
        hub.load_url_to_file(f"{base_url}/absent-12345678.pth", progress=False)
    assert os.listdir(hub.checkpoint_dir()) == []


def test_unreachable_server_explains_offline_and_manual_placement(torch_home):
    url = f"http://127.0.0.1:{closed_local_port()}/resnet18-f37072fd.pth"
    with pytest.raises(RuntimeError, match="offline") as error:
        hub.load_url_to_file(url, progress=False)
    message = str(error.value)
    assert url in message
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message


def test_file_placed_by_hand_is_used_without_network(torch_home):
    placed = hub.checkpoint_dir() / "resnet18-f37072fd.pth"
    placed.parent.mkdir(parents=True)
    save_arrays({"fc.bias": np.zeros(3, np.float32)}, placed)
    url = f"http://127.0.0.1:{closed_local_port()}/resnet18-f37072fd.pth"
    assert hub.load_url_to_file(url) == placed


# ---------------------------------------------------------------------------------------------------------------
# Tensor-level API (needs lazygrad.tensor)


def tensor_class():
    from lazygrad.tensor import Tensor

    return Tensor


def test_tensor_load_returns_tensors_with_the_checkpoint_values(tmp_path):
    Tensor = tensor_class()

    state_dict = {"weight": torch.randn(3, 2).t(), "steps": torch.tensor(7)}
    torch.save(state_dict, tmp_path / "weights.pth")
    loaded = load(tmp_path / "weights.pth")
    assert list(loaded) == ["weight", "steps"]
    for name, tensor in loaded.items():
        assert isinstance(tensor, Tensor)
        np.testing.assert_array_equal(tensor.numpy(), state_dict[name].numpy())


def test_tensor_save_is_read_by_torch(tmp_path):
    Tensor = tensor_class()

    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    save({"weight": Tensor(weight)}, tmp_path / "weights.pth")
    np.testing.assert_array_equal(torch.load(tmp_path / "weights.pth", weights_only=True)["weight"].numpy(), weight)


def test_tensor_save_writes_safetensors_for_that_extension(tmp_path):
    Tensor = tensor_class()

    weight = np.arange(4, dtype=np.float32)
    save({"weight": Tensor(weight)}, tmp_path / "weights.safetensors")
    assert (tmp_path / "weights.safetensors").read_bytes()[8:9] == b"{"
    np.testing.assert_array_equal(load(tmp_path / "weights.safetensors")["weight"].numpy(), weight)


def test_load_takes_torchs_map_location_and_weights_only(tmp_path):
    path = tmp_path / "model.pt"
    state = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "steps": torch.tensor(3)}
    torch.save(state, path)
    loaded = load(path, map_location="cpu", weights_only=True)
    assert loaded["weight"].device == "llvm"  # "cpu" is the llvm backend
    np.testing.assert_array_equal(loaded["weight"].numpy(), state["weight"].numpy())
    assert loaded["steps"].item() == 3
    with pytest.raises(ValueError, match="weights_only=False"):
        load(path, weights_only=False)
    with pytest.raises(TypeError, match="map_location"):
        load(path, map_location={"cuda:0": "cpu"})


def test_safetensors_refuses_a_nested_checkpoint_naming_the_entry(tmp_path):
    with pytest.raises(TypeError, match="'model' is a dict"):
        save({"model": {"w": np.zeros(2, np.float32)}, "epoch": np.int64(1)}, tmp_path / "nested.safetensors")


# ---- nested checkpoints: PyTorch's "saving and loading a general checkpoint" ----


def general_checkpoint_pair(steps: int = 2):
    """The same small model and Adam run `steps` steps in torch and in lazygrad; each one's general checkpoint
    ({"model", "optimizer", "epoch", "lr", "names"}), and the models and optimizers."""
    import lazygrad

    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ours = lazygrad.nn.Sequential(lazygrad.nn.Linear(3, 4), lazygrad.nn.ReLU(), lazygrad.nn.Linear(4, 2))
    ours.load_state_dict({k: lazygrad.tensor(v.numpy()) for k, v in theirs.state_dict().items()})
    their_opt, our_opt = torch.optim.Adam(theirs.parameters(), lr=0.05), lazygrad.optim.Adam(ours.parameters(), lr=0.05)
    for model, opt, module in ((theirs, their_opt, torch), (ours, our_opt, lazygrad)):
        for step in range(steps):
            x = module.tensor(np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3) * (step + 1))
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
    checkpoints = [
        {"model": m.state_dict(), "optimizer": o.state_dict(), "epoch": 3, "lr": 0.1, "names": ["a", "b"], "none": None}
        for m, o in ((theirs, their_opt), (ours, our_opt))
    ]
    return checkpoints, (theirs, their_opt), (ours, our_opt)


# torch's switches between its implementations of one update; lazygrad has one of each, and its param groups do not
# carry them (torch.optim's load_state_dict fills them in with their defaults)
TORCH_IMPLEMENTATION_SWITCHES = ("foreach", "capturable", "differentiable", "fused")


def assert_same_tree(ours, theirs, path="checkpoint"):
    """Same structure (container types, keys, order) and leaves: tensors by value, anything else by ==."""
    import lazygrad

    if isinstance(theirs, dict) and "params" in theirs:  # an optimizer's param group
        theirs = {k: v for k, v in theirs.items() if k not in TORCH_IMPLEMENTATION_SWITCHES}
        ours = {k: v for k, v in ours.items() if k not in TORCH_IMPLEMENTATION_SWITCHES}

    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, (lazygrad.Tensor, torch.Tensor)), f"{path}: {type(ours).__name__}, not a tensor"
        assert tuple(ours.shape) == tuple(theirs.shape), path
        np.testing.assert_allclose(np.asarray(ours.numpy()), theirs.numpy(), rtol=1e-6, atol=1e-7, err_msg=path)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), f"{path}: keys {list(ours)} != {list(theirs)}"
        for key in theirs:
            assert_same_tree(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), f"{path}: {ours!r} != {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same_tree(a, b, f"{path}.{i}")
    elif isinstance(theirs, (int, float)) and not isinstance(theirs, bool):  # torch's weight_decay default is 0
        assert isinstance(ours, (int, float)) and not isinstance(ours, bool) and ours == theirs, path
    else:
        assert type(ours) is type(theirs) and ours == theirs, f"{path}: {ours!r} != {theirs!r}"


def test_a_nested_checkpoint_saved_by_lazygrad_is_read_by_torch_as_torchs_own(tmp_path):
    (theirs, ours), _, _ = general_checkpoint_pair()
    save(ours, tmp_path / "ours.pt")
    assert_same_tree(torch.load(tmp_path / "ours.pt", weights_only=True), theirs)


def test_torchs_nested_checkpoint_loads_with_the_same_structure(tmp_path):
    (theirs, _), _, _ = general_checkpoint_pair()
    torch.save(theirs, tmp_path / "theirs.pt")
    assert_same_tree(load(tmp_path / "theirs.pt"), theirs)


@pytest.mark.parametrize("resumed_by", ["lazygrad", "torch"])
def test_resuming_from_the_other_librarys_checkpoint_continues_as_torch(tmp_path, resumed_by):
    """Train 2 steps in both, save each one's checkpoint; resume a fresh model and optimizer from the other
    library's file, train 2 more steps in each, and compare with torch having trained 4 steps straight."""
    import lazygrad

    (their_checkpoint, our_checkpoint), (theirs, their_opt), (ours, our_opt) = general_checkpoint_pair()
    torch.save(their_checkpoint, tmp_path / "theirs.pt")
    save(our_checkpoint, tmp_path / "ours.pt")
    if resumed_by == "lazygrad":
        checkpoint, module = load(tmp_path / "theirs.pt"), lazygrad
        model = lazygrad.nn.Sequential(lazygrad.nn.Linear(3, 4), lazygrad.nn.ReLU(), lazygrad.nn.Linear(4, 2))
    else:
        checkpoint, module = torch.load(tmp_path / "ours.pt", weights_only=True), torch
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    model.load_state_dict(checkpoint["model"])
    opt = module.optim.Adam(model.parameters(), lr=0.01)  # the checkpoint's lr (0.05) must win
    opt.load_state_dict(checkpoint["optimizer"])
    assert checkpoint["epoch"] == 3
    for resumed, resumed_opt, m in ((theirs, their_opt, torch), (model, opt, module)):
        for step in range(2, 4):
            x = m.tensor(np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3) * (step + 1))
            resumed_opt.zero_grad()
            (resumed(x) ** 2).mean().backward()
            resumed_opt.step()
    assert_same_tree(dict(model.state_dict()), dict(theirs.state_dict()))


def test_save_refuses_what_torch_load_cannot_read_naming_where_it_is(tmp_path):
    with pytest.raises(TypeError, match=r"'extras\.1\.hook': a builtin_function"):
        save({"model": {"w": np.zeros(2, np.float32)}, "extras": [1, {"hook": print}]}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()

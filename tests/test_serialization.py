"""Checkpoints: PyTorch's zip format and safetensors (lazygrad.serialization), weight downloads (lazygrad.hub).

torch is only the oracle here: it writes the files lazygrad must read and reads the files lazygrad writes.
The download tests talk to an http.server on 127.0.0.1 and nothing else.
"""

import functools
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import threading
import zipfile

import numpy as np
import pytest

from lazygrad import hub
from lazygrad.serialization import load, load_arrays, load_checkpoint, save, save_arrays, save_safetensors

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
    assert all(array.flags.writeable and array.flags.owndata for array in loaded.values())


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

"""`lazygrad.device`, torch.device's counterpart: made from a name or a (type, index), printed and compared as
torch's, returned by `x.device`, and accepted wherever a device goes (`.to`, creation functions, Module.to,
load's map_location). "cpu" is the llvm backend and "cuda" the opencl one, so each compares equal to its backend."""

import numpy as np
import pytest
import torch

import lazygrad
from lazygrad import nn

ALIAS = {"cpu": "llvm", "cuda": "opencl"}


@pytest.mark.backend_independent
@pytest.mark.parametrize("args", [("cpu",), ("cuda",), ("cuda:1",), ("cuda", 1), ("cuda:0",)], ids=str)
def test_device_type_index_str_and_repr_as_torch(args):
    ours, theirs = lazygrad.device(*args), torch.device(*args)
    assert ours.type == ALIAS[theirs.type] and ours.index == theirs.index
    expected = str(theirs).replace(theirs.type, ALIAS[theirs.type]).removesuffix(":0")  # index 0: the default device
    assert str(ours) == expected and f"{ours}" == expected
    assert repr(ours) == repr(theirs).replace(f"'{theirs.type}'", f"'{ALIAS[theirs.type]}'")


@pytest.mark.backend_independent
@pytest.mark.parametrize("args", [("tpu",), ("cuda:0", 1), ("cuda:x",)], ids=str)
def test_bad_device_strings_are_refused_as_torch(args):
    with pytest.raises(RuntimeError):
        torch.device(*args)
    with pytest.raises(RuntimeError):
        lazygrad.device(*args)


@pytest.mark.backend_independent
def test_devices_compare_and_hash_with_the_names_of_their_backend():
    cpu = lazygrad.device("cpu")
    assert cpu == "cpu" and cpu == "llvm" and cpu == lazygrad.device("llvm") and cpu != "cuda"
    assert cpu != lazygrad.device("cuda") and cpu != 3
    assert {cpu: "found"}["llvm"] == "found"  # a device and its backend's name are one dict key
    assert lazygrad.device(cpu) is cpu


def test_tensor_device_is_a_device_and_the_torch_idiom_places_tensors(backend):
    device = lazygrad.device("cuda" if lazygrad.cuda.is_available() else "cpu")
    x = lazygrad.tensor([1.0, 2.0], device=device)
    assert isinstance(x.device, lazygrad.device) and x.device == device
    assert lazygrad.ones(2).device == backend and repr(lazygrad.ones(2).device) == f"device(type='{backend}')"
    here = lazygrad.device(backend)
    moved = x.to(here)
    assert moved.device == here and lazygrad.zeros(2, device=here).device == here
    model = nn.Linear(2, 1).to(here)
    assert model.weight.device == here and model(moved).device == here
    np.testing.assert_array_equal(moved.numpy(), [1.0, 2.0])


def test_load_takes_a_device_as_map_location(tmp_path, backend):
    torch.save({"w": torch.arange(3.0)}, tmp_path / "w.pt")
    loaded = lazygrad.load(tmp_path / "w.pt", map_location=lazygrad.device(backend))
    assert loaded["w"].device == backend
    np.testing.assert_array_equal(loaded["w"].numpy(), [0.0, 1.0, 2.0])

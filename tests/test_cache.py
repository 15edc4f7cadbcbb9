"""The disk cache of compiled kernels (lazygrad/diskcache.py, LAZYGRAD_CACHE_DIR) never costs a right answer.

A damaged entry is discarded and rebuilt with a warning; processes sharing a cache directory do not
disturb each other; a cache directory that cannot be written turns the disk cache off with one warning;
and a warm cache spares a new process the compiler entirely.

Tests of whole processes run a small child script (CHILD) in a subprocess with its own
LAZYGRAD_CACHE_DIR; the others call diskcache directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import lazygrad
from lazygrad import config, diskcache, runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Computes a few kernels (elementwise, reduce, matmul) and prints their values as JSON. With
# "no-compiler", every way to compile from source raises: the kernels must come from the disk cache.
CHILD = r"""
import json, sys, warnings
import numpy as np
import lazygrad

backend, mode = sys.argv[1], sys.argv[2]
warnings.simplefilter("always")
if mode == "no-compiler":
    def refuse(*args, **kwargs):
        raise AssertionError("the compiler ran although the disk cache is warm")
    if backend.startswith("opencl"):
        from lazygrad.backends import opencl
        opencl.OpenCLBackend._build = refuse
    else:
        from lazygrad.backends import llvm
        llvm._LLVMCompiler.object_code = refuse
lazygrad.Device.DEFAULT = backend
x = lazygrad.tensor(np.arange(12, dtype=np.float32).reshape(3, 4) / 4)
results = [(x * 2 + 1).exp().sum(1), x @ x.T, x.amax(0), (x - x.mean(1, keepdim=True)).relu()]
print(json.dumps([r.numpy().tolist() for r in results]))
"""


def expected_child_values() -> list:
    x = np.arange(12, dtype=np.float64).reshape(3, 4) / 4
    return [np.exp(x * 2 + 1).sum(1), x @ x.T, x.max(0), np.maximum(x - x.mean(1, keepdims=True), 0)]


def run_child(backend: str, cache_dir, mode: str = "normal", wait: bool = True):
    env = dict(os.environ, LAZYGRAD_CACHE_DIR=str(cache_dir), LAZYGRAD_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, backend, mode],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return finish(process) if wait else process


def finish(process) -> tuple:
    """(values, stderr) of a child that must have succeeded."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"child process failed:\n{err}"
    return json.loads(out.strip().splitlines()[-1]), err


def assert_right_values(values: list):
    for got, want in zip(values, expected_child_values(), strict=True):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-5)


def entries(cache_dir) -> list:
    return sorted(os.path.join(cache_dir, name) for name in os.listdir(cache_dir) if name.endswith(".bin"))


def is_intact(path: str) -> bool:
    """What diskcache checks: the magic, then the sha256 of the payload."""
    with open(path, "rb") as f:
        blob = f.read()
    return blob[:4] == b"LGC1" and hashlib.sha256(blob[36:]).digest() == blob[4:36]


@pytest.fixture
def fresh_disk_cache(tmp_path, monkeypatch):
    """This process's disk cache in an empty directory, enabled, with no kernel compiled in memory yet."""
    directory = tmp_path / "cache"
    monkeypatch.setattr(config, "CACHE_DIR", str(directory))
    monkeypatch.setattr(diskcache, "_disabled_reason", None)
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    return directory


def unique_kernels(count: int = 3) -> tuple:
    """(results, constants) of `count` kernels that no other test compiles (each has its own constant)."""
    x = lazygrad.tensor(np.arange(6, dtype=np.float32))
    offsets = np.random.default_rng().uniform(1, 2, count)
    return [((x + float(c)) * 3).numpy() for c in offsets], offsets


def assert_unique_kernels_right(results, offsets):
    for got, c in zip(results, offsets, strict=True):
        np.testing.assert_allclose(got, (np.arange(6) + np.float32(c)) * 3, rtol=1e-6)


# --- damaged entries ---------------------------------------------------------------------------------


def test_a_truncated_entry_is_discarded_and_rebuilt_with_a_warning(backend, tmp_path):
    assert_right_values(run_child(backend, tmp_path)[0])
    for path in entries(tmp_path):
        size = os.path.getsize(path)
        os.truncate(path, size // 2)

    values, stderr = run_child(backend, tmp_path)

    assert_right_values(values)
    assert "discarded a corrupted kernel cache entry" in stderr
    assert entries(tmp_path) and all(is_intact(p) for p in entries(tmp_path)), "the entries were not rebuilt"


def test_an_entry_with_flipped_bits_is_discarded_and_rebuilt_with_a_warning(backend, tmp_path):
    assert_right_values(run_child(backend, tmp_path)[0])
    for path in entries(tmp_path):
        with open(path, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 0xFF]))

    values, stderr = run_child(backend, tmp_path)

    assert_right_values(values)
    assert "discarded a corrupted kernel cache entry" in stderr
    assert all(is_intact(p) for p in entries(tmp_path)), "the entries were not rebuilt"


@pytest.mark.backend_independent
@pytest.mark.parametrize("damage", [b"", b"LGC1", b"not a cache entry at all" * 4, b"LGC1" + bytes(32) + b"payload"])
def test_get_discards_a_damaged_entry_with_a_warning(fresh_disk_cache, damage):
    diskcache.put("key", b"payload")
    (path,) = entries(fresh_disk_cache)
    with open(path, "wb") as f:
        f.write(damage)

    with pytest.warns(RuntimeWarning, match="corrupted kernel cache entry"):
        assert diskcache.get("key") is None
    assert not os.path.exists(path)


@pytest.mark.backend_independent
def test_get_returns_what_put_stored(fresh_disk_cache):
    diskcache.put("key", b"\x00compiled kernel\xff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert diskcache.get("key") == b"\x00compiled kernel\xff"
        assert diskcache.get("another key") is None


# --- sharing a directory ----------------------------------------------------------------------------


def test_two_processes_filling_one_cache_directory_at_once_both_succeed(backend, tmp_path):
    children = [run_child(backend, tmp_path, wait=False) for _ in range(2)]

    for child in children:
        values, stderr = finish(child)
        assert_right_values(values)
        assert "corrupted" not in stderr

    assert all(is_intact(p) for p in entries(tmp_path))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")], "temporary files left behind"


def test_a_new_process_with_a_warm_cache_never_runs_the_compiler(backend, tmp_path):
    run_child(backend, tmp_path)

    values, stderr = run_child(backend, tmp_path, mode="no-compiler")

    assert_right_values(values)


def test_the_child_can_tell_that_the_compiler_ran(backend, tmp_path):
    """The check above has teeth: with a cold cache, the refusing compiler makes the child fail."""
    process = run_child(backend, tmp_path, mode="no-compiler", wait=False)
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0 and "the compiler ran" in err


# --- a directory that cannot be written -------------------------------------------------------------


def test_a_cache_directory_that_cannot_be_created_turns_the_cache_off_with_one_warning(
    fresh_disk_cache, monkeypatch, tmp_path
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(config, "CACHE_DIR", str(blocker / "cache"))  # makedirs fails, even for root

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, offsets = unique_kernels()

    assert_unique_kernels_right(results, offsets)
    messages = [str(w.message) for w in caught if "disk cache" in str(w.message)]
    assert len(messages) == 1, messages
    assert "disk cache disabled" in messages[0] and str(blocker) in messages[0]


def test_a_cache_directory_that_cannot_be_written_turns_the_cache_off_with_one_warning(fresh_disk_cache, monkeypatch):
    fresh_disk_cache.mkdir()

    def read_only(*args, **kwargs):  # what mkstemp meets in a directory without write permission
        raise PermissionError(13, "Permission denied", str(fresh_disk_cache))

    monkeypatch.setattr(diskcache.tempfile, "mkstemp", read_only)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, offsets = unique_kernels()

    assert_unique_kernels_right(results, offsets)
    messages = [str(w.message) for w in caught if "disk cache" in str(w.message)]
    assert len(messages) == 1, messages
    assert "Permission denied" in messages[0]
    assert entries(fresh_disk_cache) == []


def test_a_cache_turned_off_by_the_user_is_neither_read_nor_written(fresh_disk_cache, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results, offsets = unique_kernels()
    assert_unique_kernels_right(results, offsets)
    assert not fresh_disk_cache.exists()

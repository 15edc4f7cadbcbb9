"""The disk cache of compiled kernels (lazygrad/diskcache.py, LAZYGRAD_CACHE_DIR) never costs a right answer,
and nothing put in it can make lazygrad run code of someone else's choosing (docs/cache.md).

A damaged entry is discarded and rebuilt with a warning; so is a hostile one (a pickle payload, object code or
an OpenCL binary moved under another kernel's key, an entry from another user's cache): entries carry an HMAC
under a per-user secret kept outside the cache directory. A cache directory that others could write, that
cannot be created or written, or a key file that is not private turns the disk cache off with one warning.
Processes sharing a cache directory do not disturb each other, and a warm cache spares a new process the
compiler entirely. Lowered programs are stored as JSON and parsed strictly (lazygrad/codegen/serialize.py).

Tests of whole processes run a small child script (CHILD) in a subprocess with its own LAZYGRAD_CACHE_DIR and
XDG_CONFIG_HOME (so its own cache key); the others call diskcache directly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest

import lazygrad
from lazygrad import config, diskcache, runtime
from lazygrad.codegen import serialize
from lazygrad.codegen.ir import Program, UOp
from lazygrad.ops import IrOp, Op

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


def run_child(backend: str, cache_dir, mode: str = "normal", wait: bool = True, config_home=None):
    """Run CHILD with `cache_dir` as its kernel cache; its cache key lives under `config_home` (by default a
    folder next to the cache: one user)."""
    config_home = config_home or os.path.join(os.path.dirname(str(cache_dir)), "config-home")
    env = dict(os.environ, LAZYGRAD_CACHE_DIR=str(cache_dir), XDG_CONFIG_HOME=str(config_home), LAZYGRAD_THREADS="1")
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


def secret_of(config_home) -> bytes:
    with open(os.path.join(config_home, "lazygrad", "cache-key")) as f:
        return bytes.fromhex(f.read().strip())


def is_intact(path: str, config_home=None) -> bool:
    """What diskcache checks: the magic, then the HMAC of the key (its sha256 is the file's name) and payload."""
    config_home = config_home or os.path.join(os.path.dirname(os.path.dirname(path)), "config-home")
    with open(path, "rb") as f:
        blob = f.read()
    key_digest = bytes.fromhex(os.path.basename(path).removesuffix(".bin"))
    tag = hmac.new(secret_of(config_home), b"lazygrad kernel cache entry v2\0" + key_digest + blob[36:], "sha256")
    return blob[:4] == b"LGC2" and hmac.compare_digest(tag.digest(), blob[4:36])


@pytest.fixture
def fresh_disk_cache(tmp_path, monkeypatch):
    """This process's disk cache in an empty directory, enabled, with no kernel compiled in memory yet."""
    directory = tmp_path / "cache"
    monkeypatch.setattr(config, "CACHE_DIR", str(directory))
    monkeypatch.setattr(config, "CONFIG_DIR", str(tmp_path / "config" / "lazygrad"))
    monkeypatch.setattr(diskcache, "_disabled_reason", None)
    monkeypatch.setattr(diskcache, "_verified_directories", set())
    monkeypatch.setattr(diskcache, "_secrets", {})
    monkeypatch.setattr(diskcache, "_warned_old_format", False)
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
    assert_right_values(run_child(backend, tmp_path / "cache")[0])
    for path in entries(tmp_path / "cache"):
        size = os.path.getsize(path)
        os.truncate(path, size // 2)

    values, stderr = run_child(backend, tmp_path / "cache")

    assert_right_values(values)
    assert "discarded a corrupted kernel cache entry" in stderr
    assert entries(tmp_path / "cache") and all(is_intact(p) for p in entries(tmp_path / "cache")), (
        "the entries were not rebuilt"
    )


def test_an_entry_with_flipped_bits_is_discarded_and_rebuilt_with_a_warning(backend, tmp_path):
    assert_right_values(run_child(backend, tmp_path / "cache")[0])
    for path in entries(tmp_path / "cache"):
        with open(path, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 0xFF]))

    values, stderr = run_child(backend, tmp_path / "cache")

    assert_right_values(values)
    assert "discarded a corrupted kernel cache entry" in stderr
    assert all(is_intact(p) for p in entries(tmp_path / "cache")), "the entries were not rebuilt"


@pytest.mark.backend_independent
@pytest.mark.parametrize("damage", [b"", b"LGC2", b"not a cache entry at all" * 4, b"LGC2" + bytes(32) + b"payload"])
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


# --- hostile entries: whoever can write the cache directory cannot make lazygrad run their code -------------


class RunsAShellCommand:
    """Unpickling this runs `touch <marker>`: what a pickle payload in the cache did before entries were data."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def forged_entries(payload: bytes) -> list:
    """Ways to dress a payload as an entry without the user's secret."""
    return [
        b"LGC1" + hashlib.sha256(payload).digest() + payload,  # the old format: a checksum anyone recomputes
        b"LGC2" + hashlib.sha256(payload).digest() + payload,
        b"LGC2" + hmac.new(b"\0" * 32, payload, "sha256").digest() + payload,  # an HMAC under a guessed key
        b"LGC2" + bytes(32) + payload,
    ]


@pytest.mark.parametrize("forgery", range(4))
def test_a_pickle_payload_in_the_cache_never_runs_and_the_result_stays_right(backend, tmp_path, forgery):
    cache, marker = tmp_path / "cache", tmp_path / "pwned"
    assert_right_values(run_child(backend, cache)[0])
    payload = pickle.dumps(RunsAShellCommand(marker))
    for path in entries(cache):
        with open(path, "wb") as f:
            f.write(forged_entries(payload)[forgery])

    values, stderr = run_child(backend, cache)

    assert_right_values(values)
    assert not marker.exists(), "a pickle payload from the cache ran"
    if forgery == 0:  # the old format: one warning for all of its entries
        assert stderr.count("written by an older lazygrad (not authenticated)") == 1
    else:
        assert stderr.count("discarded a corrupted kernel cache entry") == len(entries(cache))
    assert all(is_intact(p) for p in entries(cache)), "the entries were not rebuilt"


def test_entries_moved_under_other_keys_never_run_and_the_result_stays_right(backend, tmp_path):
    """Object code (llvm), OpenCL binaries (opencl) and lowered programs, each genuine and correctly tagged, but
    moved under another kernel's key: the key is part of what the HMAC covers, so every one is refused."""
    cache = tmp_path / "cache"
    assert_right_values(run_child(backend, cache)[0])
    paths = entries(cache)
    blobs = []
    for path in paths:
        with open(path, "rb") as f:
            blobs.append(f.read())
    for path, blob in zip(paths, blobs[1:] + blobs[:1]):  # each entry gets the next one's contents
        with open(path, "wb") as f:
            f.write(blob)

    values, stderr = run_child(backend, cache)

    assert_right_values(values)
    assert stderr.count("discarded a corrupted kernel cache entry") == len(paths)
    assert all(is_intact(p) for p in entries(cache))


def test_entries_copied_from_another_users_cache_never_run_and_the_result_stays_right(backend, tmp_path):
    theirs, mine = tmp_path / "their-cache", tmp_path / "my-cache"
    assert_right_values(run_child(backend, theirs, config_home=tmp_path / "their-config")[0])
    mine.mkdir(mode=0o700)
    for path in entries(theirs):  # the same names: the same kernels, but tagged under their secret
        with open(path, "rb") as src, open(mine / os.path.basename(path), "wb") as dst:
            dst.write(src.read())

    values, stderr = run_child(backend, mine, config_home=tmp_path / "my-config")

    assert_right_values(values)
    assert stderr.count("discarded a corrupted kernel cache entry") == len(entries(theirs))
    assert all(is_intact(p, tmp_path / "my-config") for p in entries(mine))
    assert secret_of(tmp_path / "my-config") != secret_of(tmp_path / "their-config")


@pytest.mark.backend_independent
def test_get_refuses_an_entry_renamed_to_another_key(fresh_disk_cache):
    diskcache.put("kernel a", b"code of a")
    diskcache.put("kernel b", b"code of b")
    path_a, path_b = (
        diskcache._path(str(fresh_disk_cache), "kernel a"),
        diskcache._path(str(fresh_disk_cache), "kernel b"),
    )
    os.replace(path_a, path_b)

    with pytest.warns(RuntimeWarning, match="corrupted kernel cache entry"):
        assert diskcache.get("kernel b") is None
    assert diskcache.get("kernel a") is None


@pytest.mark.backend_independent
def test_entries_of_the_old_unauthenticated_format_are_discarded_with_one_warning(fresh_disk_cache):
    payload = pickle.dumps(RunsAShellCommand("/tmp/never"))
    for key in ("kernel a", "kernel b"):
        diskcache.put(key, b"genuine")
        with open(diskcache._path(str(fresh_disk_cache), key), "wb") as f:
            f.write(b"LGC1" + hashlib.sha256(payload).digest() + payload)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert diskcache.get("kernel a") is None and diskcache.get("kernel b") is None

    assert [str(w.message) for w in caught if "kernel cache" in str(w.message)] == [
        f"lazygrad: discarded kernel cache entries in {fresh_disk_cache} written by an older lazygrad (not "
        "authenticated); rebuilding them"
    ]
    assert entries(fresh_disk_cache) == []


@pytest.mark.backend_independent
@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_get_never_follows_or_blocks_on_something_that_is_not_a_file(fresh_disk_cache, tmp_path, kind):
    diskcache.put("key", b"payload")
    (path,) = entries(fresh_disk_cache)
    os.unlink(path)
    if kind == "symlink":
        target = tmp_path / "elsewhere"
        target.write_bytes(b"LGC2" + bytes(32))
        os.symlink(target, path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.mkdir(path)

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert diskcache.get("key") is None


# --- sharing a directory ----------------------------------------------------------------------------


def test_two_processes_filling_one_cache_directory_at_once_both_succeed(backend, tmp_path):
    children = [run_child(backend, tmp_path / "cache", wait=False) for _ in range(2)]

    for child in children:
        values, stderr = finish(child)
        assert_right_values(values)
        assert "corrupted" not in stderr

    assert all(is_intact(p) for p in entries(tmp_path / "cache"))
    assert not [name for name in os.listdir(tmp_path / "cache") if name.startswith(".tmp-")], (
        "temporary files left behind"
    )


def test_a_new_process_with_a_warm_cache_never_runs_the_compiler(backend, tmp_path):
    run_child(backend, tmp_path / "cache")

    values, stderr = run_child(backend, tmp_path / "cache", mode="no-compiler")

    assert_right_values(values)


def test_the_child_can_tell_that_the_compiler_ran(backend, tmp_path):
    """The check above has teeth: with a cold cache, the refusing compiler makes the child fail."""
    process = run_child(backend, tmp_path / "cache", mode="no-compiler", wait=False)
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


def assert_one_disabling_warning(caught, *fragments) -> str:
    messages = [str(w.message) for w in caught if "disk cache" in str(w.message)]
    assert len(messages) == 1, messages
    assert "disk cache disabled" in messages[0]
    for fragment in fragments:
        assert fragment in messages[0], messages[0]
    return messages[0]


@pytest.mark.parametrize("mode,who", [(0o770, "its group"), (0o777, "group and others"), (0o1777, "group and others")])
def test_a_cache_directory_others_can_write_is_refused_with_one_warning(fresh_disk_cache, mode, who):
    fresh_disk_cache.mkdir()
    os.chmod(fresh_disk_cache, mode)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, offsets = unique_kernels()

    assert_unique_kernels_right(results, offsets)
    assert_one_disabling_warning(caught, str(fresh_disk_cache), f"writable by {who}", "chmod 700")
    assert entries(fresh_disk_cache) == []


def test_a_cache_directory_owned_by_someone_else_is_refused_with_one_warning(fresh_disk_cache, monkeypatch):
    fresh_disk_cache.mkdir(mode=0o700)
    monkeypatch.setattr(diskcache.os, "geteuid", lambda: os.stat(fresh_disk_cache).st_uid + 1)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, offsets = unique_kernels()

    assert_unique_kernels_right(results, offsets)
    assert_one_disabling_warning(caught, str(fresh_disk_cache), "not by this user")
    assert entries(fresh_disk_cache) == []


@pytest.mark.backend_independent
def test_the_cache_directory_and_the_key_are_created_private(fresh_disk_cache):
    diskcache.put("key", b"payload")

    assert stat.S_IMODE(os.stat(fresh_disk_cache).st_mode) == 0o700
    key_file = diskcache.key_file()
    assert key_file == os.path.join(config.CONFIG_DIR, "cache-key")
    assert not key_file.startswith(str(fresh_disk_cache)), "the key must live outside the cache directory"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(key_file)).st_mode) == 0o700
    assert len(secret_of(os.path.dirname(os.path.dirname(key_file)))) == 32


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_or_write_turns_the_cache_off_with_one_warning(fresh_disk_cache, mode):
    os.makedirs(config.CONFIG_DIR, mode=0o700)
    key_file = os.path.join(config.CONFIG_DIR, "cache-key")
    with open(key_file, "w") as f:
        f.write("00" * 32 + "\n")
    os.chmod(key_file, mode)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, offsets = unique_kernels()

    assert_unique_kernels_right(results, offsets)
    assert_one_disabling_warning(caught, key_file, "chmod 600")
    assert entries(fresh_disk_cache) == []


@pytest.mark.backend_independent
def test_a_key_directory_others_can_write_turns_the_cache_off(fresh_disk_cache):
    """Whoever can write the key's directory could swap in a key they know, and forge entries with it."""
    os.makedirs(config.CONFIG_DIR)
    os.chmod(config.CONFIG_DIR, 0o777)

    with pytest.warns(RuntimeWarning, match="disk cache disabled.*directory of the cache key.*writable"):
        diskcache.put("key", b"payload")
    assert diskcache.get("key") is None
    assert not os.path.exists(os.path.join(config.CONFIG_DIR, "cache-key"))


@pytest.mark.backend_independent
@pytest.mark.parametrize("content", ["", "not hex at all", "00" * 16])
def test_a_key_file_that_is_not_a_key_turns_the_cache_off(fresh_disk_cache, content):
    os.makedirs(config.CONFIG_DIR, mode=0o700)
    key_file = os.path.join(config.CONFIG_DIR, "cache-key")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content.encode())
    os.close(fd)

    with pytest.warns(RuntimeWarning, match="disk cache disabled.*not 32 bytes"):
        diskcache.put("key", b"payload")
    assert diskcache.get("key") is None


def test_a_cache_turned_off_by_the_user_is_neither_read_nor_written(fresh_disk_cache, monkeypatch):
    monkeypatch.setattr(config, "CACHE_DIR", "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results, offsets = unique_kernels()
    assert_unique_kernels_right(results, offsets)
    assert not fresh_disk_cache.exists()


# --- lowered programs are stored as data, parsed strictly ------------------------------------------------------


def lowered_programs() -> list:
    """The programs of a few kernels: elementwise, a reduce with vector lanes, a matmul, casts, a where."""
    captured = []
    original = runtime.lower

    def capture(*args, **kwargs):
        program = original(*args, **kwargs)
        captured.append(program)
        return program

    runtime.lower = capture
    try:
        x = lazygrad.tensor(np.random.default_rng(0).standard_normal((9, 17)).astype(np.float32))
        offset = float(np.random.default_rng().uniform(1, 2))  # new kernels, whatever ran before
        ((x + offset).exp().sum(1) + (x @ x.T).amax(0)).numpy()
        (lazygrad.where(x > offset, x.int(), -1).half() * offset).numpy()
    finally:
        runtime.lower = original
    assert captured
    return captured


def test_lowered_programs_round_trip_through_json(fresh_disk_cache):
    for program in lowered_programs():
        blob = serialize.encode_program(program)
        json.loads(blob)  # plain JSON
        back = serialize.decode_program(blob)
        assert back.dump() == program.dump()
        assert (back.name, back.buffer_dtypes, back.global_size, back.local_size) == (
            program.name,
            tuple(program.buffer_dtypes),
            tuple(program.global_size),
            program.local_size,
        )
        for a, b in zip(program.uops, back.uops, strict=True):
            assert type(a.arg) is type(b.arg) and repr(a.arg) == repr(b.arg)


@pytest.mark.backend_independent
def test_work_group_programs_and_op_args_round_trip():
    """A work-group reduction (local_size, local_id, group_reduce) and op-valued args: Op members are strings too,
    and must come back as members (a renderer compares `combine is Op.ADD`)."""
    from lazygrad.codegen.capabilities import Capabilities
    from lazygrad.codegen.lowering import KernelOptions

    programs = []
    x = lazygrad.tensor(np.ones((3, 300), np.float32), device="llvm")

    def choose(name, nest):
        return KernelOptions(group=64)

    original = runtime.lower

    def capture(*args, **kwargs):
        programs.append(original(*args, **kwargs))
        return programs[-1]

    runtime.lower = capture
    try:
        with runtime.forced_options(choose):
            with pytest.raises(Exception, match="work-groups"):  # LLVM has none: lowered, then refused
                x.sum(1).numpy()
    finally:
        runtime.lower = original
    assert programs and programs[-1].local_size == 64
    back = serialize.decode_program(serialize.encode_program(programs[-1]))
    assert back.local_size == 64 and back.dump() == programs[-1].dump()
    (reduce,) = [u for u in back.uops if u.op is IrOp.GROUP_REDUCE]
    assert reduce.arg[0] is Op.ADD and Capabilities().group_reduce == 0


@pytest.mark.backend_independent
def test_the_program_cache_holds_no_pickle(fresh_disk_cache):
    x = lazygrad.tensor(np.arange(5, dtype=np.float32))
    (x * float(np.random.default_rng().uniform(1, 2))).numpy()
    for path in entries(fresh_disk_cache):
        with open(path, "rb") as f:
            assert b"\x80\x04" not in f.read()[36:38]  # no pickle protocol header where the payload starts


@pytest.mark.backend_independent
@pytest.mark.parametrize("value", [0, -(2**63), True, False, 1.5, -0.0, float("inf"), float("-inf"), (1, (2, "x"))])
def test_values_come_back_with_their_type(value):
    op = IrOp.LOAD if isinstance(value, tuple) else IrOp.CONST  # a vector load's arg can be a tuple of lane offsets
    program = Program("k", [UOp(op, lazygrad.float32, (), value, 0)], (lazygrad.float32,), ())
    back = serialize.decode_program(serialize.encode_program(program)).uops[0].arg
    assert type(back) is type(value) and repr(back) == repr(value)


@pytest.mark.backend_independent
def test_nan_comes_back():
    program = Program("k", [UOp(IrOp.CONST, lazygrad.float32, (), float("nan"), 0)], (lazygrad.float32,), ())
    assert np.isnan(serialize.decode_program(serialize.encode_program(program)).uops[0].arg)


def good_document() -> dict:
    return {
        "format": serialize.FORMAT,
        "name": "k",
        "buffer_dtypes": ["float32"],
        "global_size": [4],
        "local_size": 1,
        "uops": [
            ["param", "float32", [], {"t": [0, True]}, 1],
            ["range", "int32", [], {"t": ["g0", 4, "global"]}, 1],
            ["const", "float32", [], {"f": "0x1.0p+0"}, 1],
            ["store", None, [0, 1, 2], None, 1],
            ["endrange", None, [1], None, 1],
        ],
    }


def with_change(path, value):
    document = good_document()
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(document).encode()


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(pickle.dumps(RunsAShellCommand("/tmp/never")), id="a pickle"),
        pytest.param(b"\xff\xfe", id="not utf-8"),
        pytest.param(b"[1, 2]", id="not an object"),
        pytest.param(b'{"format": "lazygrad-program-2", "x": NaN}', id="NaN constant"),
        pytest.param(with_change(["local_size"], 0), id="a zero local size"),
        pytest.param(with_change(["uops", 2, 0], "local_id"), id="a local id with a float arg"),
        pytest.param(b"[" * 100000, id="deep nesting"),
        pytest.param(with_change(["format"], "other"), id="another format"),
        pytest.param(with_change(["extra"], 1), id="an unknown field"),
        pytest.param(with_change(["name"], "k; system()"), id="a name that is not an identifier"),
        pytest.param(with_change(["buffer_dtypes", 0], "float128"), id="an unknown dtype"),
        pytest.param(with_change(["global_size", 0], -1), id="a negative size"),
        pytest.param(with_change(["global_size", 0], True), id="a bool for an int"),
        pytest.param(with_change(["uops", 0, 0], "syscall"), id="an unknown op"),
        pytest.param(with_change(["uops", 0, 0], ["add"]), id="an op that is not a name"),
        pytest.param(with_change(["uops", 3, 2], [0, 1, 3]), id="a reference to itself"),
        pytest.param(with_change(["uops", 3, 2], [0, 1, 4]), id="a reference forward"),
        pytest.param(with_change(["uops", 3, 2], [0, 1, -1]), id="a negative reference"),
        pytest.param(with_change(["uops", 3, 4], 0), id="zero lanes"),
        pytest.param(with_change(["uops", 3, 4], 1 << 40), id="too many lanes"),
        pytest.param(with_change(["uops", 0, 3], {"t": [5, True]}), id="a param beyond the buffers"),
        pytest.param(with_change(["uops", 1, 3], {"t": ["g0", 4, "threads"]}), id="an unknown range kind"),
        pytest.param(with_change(["uops", 2, 3], {"f": "nonsense"}), id="a bad float"),
        pytest.param(with_change(["uops", 2, 3], {"pickle": "..."}), id="an unknown tag"),
        pytest.param(with_change(["uops", 2, 3], [1, 2]), id="a list arg"),
        pytest.param(with_change(["uops", 2, 3], 1 << 70), id="a huge integer"),
        pytest.param(with_change(["uops", 2], "x"), id="a row that is not a list"),
    ],
)
def test_decode_refuses_anything_encode_does_not_write(blob):
    assert serialize.decode_program(json.dumps(good_document()).encode()).name == "k"  # the base case is good
    with pytest.raises(serialize.ProgramFormatError):
        serialize.decode_program(blob)


@pytest.mark.backend_independent
def test_op_names_round_trip_and_unknown_names_are_refused():
    for name in ("add", "load", "range", "where", "hreduce"):
        assert serialize.op_name(serialize.op_from_name(name)) == name
    with pytest.raises(serialize.ProgramFormatError):
        serialize.op_from_name("__import__")
    with pytest.raises(serialize.ProgramFormatError):
        serialize.op_name("not an op")

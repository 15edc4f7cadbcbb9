"""A fuzzer for the checkpoint readers (lazygrad.serialization): mutated real checkpoints, each loaded in a worker
process under a memory limit and a time limit.

Seeds are real files: torch.save of state dicts (every dtype, transposed and sliced views, expanded tensors, a
module's state_dict with its metadata, nested checkpoints), lazygrad's own writers, and the safetensors package.
Each case applies one to three mutations, chosen by the format:

- bytes: flipped bits, boundary integers written over 1/2/4/8 bytes, chunks deleted, repeated or truncated;
- the zip directory: fields of a central or local header or of the end record (method, sizes, offsets, lengths,
  CRC, counts) set to boundary values;
- pickle opcodes: data.pkl taken apart with pickletools and put back with integer arguments (sizes, strides,
  offsets, memo indexes) set to boundary values, opcodes dropped, repeated or swapped, globals renamed;
- the safetensors header: shapes, offsets and dtypes changed, entries added, dropped or duplicated, the length
  field off by some bytes.

A worker (`python -c WORKER`) loads one case at a time under RLIMIT_AS and reports the outcome, the time and the
growth of its resident memory. A case passes when it loads, or raises ValueError or pickle.UnpicklingError (the
errors docs/checkpoints.md promises), within the time limit and in at most twice the file's size plus
MEMORY_CONSTANT of new memory. Anything else is a finding: another exception, a MemoryError, a peak above the
bound, a worker that dies (a crash) or stops answering (a hang).

tests/test_loader_fuzz.py runs a few hundred cases; scripts/fuzz_loaders.py runs as many as asked.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import random
import selectors
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_CONSTANT = 24 << 20  # serialization.ALLOCATION_SLACK (16 MiB) and the interpreter's noise
BOUNDARY_INTEGERS = [0, 1, 2, 3, 7, 8, 63, 64, 127, 128, 255, 256, 4095, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
                     2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -1, -2, -(2**31), -(2**63)]  # fmt: skip

WORKER = r"""
import gc, json, pickle, resource, sys, time, traceback
import numpy as np
from lazygrad import serialization


def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + int(sys.argv[1]), resource.RLIM_INFINITY))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    path = line.strip()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    start = time.perf_counter()
    try:
        result = serialization.load_checkpoint(path)
        if not isinstance(result, np.ndarray):
            serialization.flatten_arrays(result)
        outcome, detail = "loaded", ""
    except (ValueError, pickle.UnpicklingError) as e:
        outcome, detail = "refused", f"{type(e).__name__}: {str(e)[:200]}"
    except MemoryError:
        outcome, detail = "memory", traceback.format_exc()[-2000:]
    except BaseException as e:
        outcome, detail = "unexpected", traceback.format_exc()[-2000:]
    seconds = time.perf_counter() - start
    result = None
    print(json.dumps({"outcome": outcome, "detail": detail, "seconds": seconds, "peak": status("VmHWM") - before}),
          flush=True)
"""


# --- seeds ---------------------------------------------------------------------------------------------------


def write_seeds(directory: str) -> dict[str, list[str]]:
    """Real checkpoints to mutate: {"torch": [paths], "safetensors": [paths]}."""
    import torch

    from lazygrad.serialization import save_arrays, save_safetensors

    generator = torch.Generator().manual_seed(0)
    storage = torch.arange(30, dtype=torch.float32)
    state = {
        "float32": torch.randn(3, 4, generator=generator),
        "float16": torch.randn(2, 5, generator=generator).half(),
        "bfloat16": torch.randn(3, generator=generator).to(torch.bfloat16),
        "int64": torch.arange(-3, 9).reshape(3, 4),
        "uint8": torch.arange(6, dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "transposed": torch.randn(4, 3, generator=generator).t(),
        "slice": storage[7:13],
        "strided": storage.view(5, 6)[1:4, ::2],
        "expanded": torch.arange(3.0)[:, None].expand(3, 4),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Linear(4, 2))
    paths: dict[str, list[str]] = {"torch": [], "safetensors": []}

    def add(kind: str, name: str) -> str:
        path = os.path.join(directory, name)
        paths[kind].append(path)
        return path

    torch.save(state, add("torch", "state.pth"))
    torch.save(module.state_dict(), add("torch", "module.pth"))
    torch.save({"model": {"w": state["float32"]}, "epoch": 3, "steps": [1, 2], "tied": [storage, storage]},
               add("torch", "nested.pth"))  # fmt: skip
    plain = {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.contiguous().numpy() for k, v in state.items()}
    plain.pop("uint8")  # torch's format has uint8; kept simple here
    save_arrays(plain, add("torch", "lazygrad.pth"))
    save_safetensors(plain, add("safetensors", "lazygrad.safetensors"), metadata={"format": "pt"})
    try:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, add("safetensors", "package.safetensors"))
    except ImportError:  # the package is optional: lazygrad's own file is a seed either way
        pass
    return paths


# --- mutations -----------------------------------------------------------------------------------------------


def _boundary(rng: random.Random) -> int:
    return rng.choice(BOUNDARY_INTEGERS)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    if not out:
        return bytes([rng.randrange(256)])
    kind = rng.randrange(6)
    position = rng.randrange(len(out))
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        width = rng.choice([1, 2, 4, 8])
        value = _boundary(rng) % (1 << (8 * width))
        out[position : position + width] = value.to_bytes(width, "little")
    elif kind == 2:
        del out[position : position + rng.randint(1, 64)]
    elif kind == 3:
        chunk = out[position : position + rng.randint(1, 64)]
        out[position:position] = chunk * rng.randint(1, 4)
    elif kind == 4:
        del out[rng.randrange(len(out)) :]
    else:
        out[position] = rng.choice([0x00, 0xFF, 0x7F, 0x80, ord("{"), ord("["), ord("]")])
    return bytes(out)


_HEADER_FIELDS = {  # name: (offset, width) in a zip header
    b"PK\x01\x02": [(8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (42, 4)],
    b"PK\x03\x04": [(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
    b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
}


def mutate_zip_directory(data: bytes, rng: random.Random) -> bytes:
    """Set a field of a central directory entry, a local header or the end record to a boundary value."""
    headers = [(i, magic) for magic in _HEADER_FIELDS for i in _find_all(data, magic)]
    if not headers:
        return mutate_bytes(data, rng)
    position, magic = rng.choice(headers)
    offset, width = rng.choice(_HEADER_FIELDS[magic])
    value = rng.choice([_boundary(rng), rng.randrange(1 << (8 * width)), 8, 12, 14, 99])  # 8/12/14/99: methods
    out = bytearray(data)
    out[position + offset : position + offset + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    return bytes(out)


def _find_all(data: bytes, needle: bytes) -> list[int]:
    found, start = [], data.find(needle)
    while start != -1:
        found.append(start)
        start = data.find(needle, start + 1)
    return found


def _records(data: bytes) -> list[tuple[str, bytes]] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [(info.filename, archive.read(info)) for info in archive.infolist()]
    except Exception:
        return None


def _rezip(records: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def _encode_int_arg(opcode: str, value: int) -> bytes | None:
    """The bytes of an integer-argument opcode with a new value, or None when the value does not fit it."""
    if opcode in ("BININT1", "BINPUT", "BINGET") and 0 <= value < 256:
        return getattr(pickle, opcode) + bytes([value])
    if opcode == "BININT2" and 0 <= value < 65536:
        return pickle.BININT2 + struct.pack("<H", value)
    if opcode == "BININT" and -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    if opcode in ("LONG_BINPUT", "LONG_BINGET") and 0 <= value < 2**32:
        return getattr(pickle, opcode) + struct.pack("<I", value)
    if opcode in ("BININT1", "BININT2", "BININT", "LONG1"):
        encoded = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "little", signed=True)
        return pickle.LONG1 + bytes([len(encoded)]) + encoded
    return None


def mutate_pickle(data: bytes, rng: random.Random) -> bytes:
    """Take data.pkl out of a torch zip, change its opcodes, and put it back (stored, valid zip)."""
    records = _records(data)
    if not records:
        return mutate_bytes(data, rng)
    index = next((i for i, (name, _) in enumerate(records) if name.endswith("/data.pkl")), None)
    if index is None:
        return mutate_bytes(data, rng)
    pickled = records[index][1]
    try:
        ops = [(op.name, arg, pos) for op, arg, pos in pickletools.genops(pickled)]
    except Exception:
        ops = []
    if not ops:
        return mutate_bytes(data, rng)
    pieces = [pickled[pos : (ops[i + 1][2] if i + 1 < len(ops) else len(pickled))] for i, (_, _, pos) in enumerate(ops)]
    kind = rng.randrange(6)
    integer_ops = [i for i, (name, _, _) in enumerate(ops) if _encode_int_arg(name, 0) is not None]
    if kind <= 1 and integer_ops:  # sizes, strides, offsets, memo indexes: the numbers that matter
        for _ in range(rng.randint(1, 3)):
            i = rng.choice(integer_ops)
            encoded = _encode_int_arg(ops[i][0], _boundary(rng))
            if encoded is not None:
                pieces[i] = encoded
    elif kind == 2:
        del pieces[rng.randrange(len(pieces))]
    elif kind == 3:
        i = rng.randrange(len(pieces))
        j = min(len(pieces), i + rng.randint(1, 12))
        pieces[j:j] = pieces[i:j] * rng.randint(1, 8)  # repeated opcodes: shared references, deeper nesting
    elif kind == 4:
        i, j = rng.randrange(len(pieces)), rng.randrange(len(pieces))
        pieces[i], pieces[j] = pieces[j], pieces[i]
    else:
        globals_ = [i for i, (name, _, _) in enumerate(ops) if name == "GLOBAL"]
        replacement = rng.choice([b"os\nsystem\n", b"torch\nFloatStorage\n", b"torch._utils\n_rebuild_tensor_v3\n",
                                  b"collections\nOrderedDict\n", b"builtins\ngetattr\n", b"torch\nbfloat16\n",
                                  b"torch.storage\nUntypedStorage\n", b"numpy\nndarray\n"])  # fmt: skip
        if globals_:
            pieces[rng.choice(globals_)] = pickle.GLOBAL + replacement
    records[index] = (records[index][0], b"".join(pieces))
    return _rezip(records)


def mutate_safetensors_header(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 8:
        return mutate_bytes(data, rng)
    (length,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + length])
        assert isinstance(header, dict)
    except Exception:
        return mutate_bytes(data, rng)
    rest = data[8 + length :]
    names = [name for name in header if name != "__metadata__"]
    kind = rng.randrange(7)
    if names and kind <= 2:
        entry = header[rng.choice(names)]
        if isinstance(entry, dict):
            key = rng.choice(["shape", "data_offsets", "dtype"])
            if key == "dtype":
                entry[key] = rng.choice(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "C64", "", 7, None])
            elif isinstance(entry.get(key), list) and entry[key] and rng.random() < 0.7:
                entry[key][rng.randrange(len(entry[key]))] = rng.choice([_boundary(rng), 1.5, "3", None, [], True])
            else:
                entry[key] = rng.choice([[], [_boundary(rng)] * rng.randint(1, 70), None, {}, "x", _boundary(rng)])
    elif names and kind == 3:
        del header[rng.choice(names)]
    elif names and kind == 4:
        header[rng.choice(names) + "_copy"] = header[rng.choice(names)]
    elif kind == 5:
        header["__metadata__"] = rng.choice([{"a": 1}, [], None, {"format": "pt" * 1000}])
    else:  # the length field off by a little or a lot
        encoded = data[8 : 8 + length]
        delta = rng.choice([-8, -1, 1, 8, 2**20, 2**40, -length])
        return struct.pack("<Q", max(0, length + delta) % 2**64) + encoded + rest
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + rest


MUTATORS = {
    "torch": [mutate_bytes, mutate_zip_directory, mutate_pickle, mutate_pickle],
    "safetensors": [mutate_bytes, mutate_safetensors_header, mutate_safetensors_header],
}


def make_case(seed_bytes: bytes, file_format: str, rng: random.Random) -> bytes:
    data = seed_bytes
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data = rng.choice(MUTATORS[file_format])(data, rng)
    return data


# --- running -------------------------------------------------------------------------------------------------


@dataclass
class Report:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    findings: list = field(default_factory=list)  # (kind, detail, path of the kept case or None)
    max_seconds: float = 0.0
    max_peak_over_size: float = 0.0  # the largest (peak - 2 * size) seen, bytes

    def summary(self) -> str:
        return (
            f"{self.cases} cases: {dict(self.outcomes)}; slowest {self.max_seconds * 1e3:.1f} ms; "
            f"largest peak minus twice the size {self.max_peak_over_size / 2**20:.2f} MiB; "
            f"{len(self.findings)} findings"
        )


class Worker:
    """A loader process under RLIMIT_AS, restarted after a crash or a hang."""

    def __init__(self, memory_limit: int):
        self.memory_limit = memory_limit
        self.process = None
        self.selector = None

    def start(self) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(self.memory_limit)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=env,
            cwd=REPO,
        )
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)
        if self._read_line(60) is None:
            raise RuntimeError("the fuzzing worker did not start")

    def _read_line(self, timeout: float) -> str | None:
        if not self.selector.select(timeout):
            return None
        line = self.process.stdout.readline()
        return line or None

    def run(self, path: str, timeout: float) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.start()
        try:
            self.process.stdin.write(path + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._read_line(timeout)
        if line is not None:
            return json.loads(line)
        hung = self.process.poll() is None
        self.stop()
        if hung:
            return {"outcome": "hang", "detail": f"no answer within {timeout} s", "seconds": timeout, "peak": 0}
        return {"outcome": "crash", "detail": "the worker died", "seconds": 0.0, "peak": 0}

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process.stdin.close()
            self.process.stdout.close()
            self.selector.close()
        self.process = None


def fuzz(
    cases: int,
    file_format: str,
    seed: int = 0,
    timeout: float = 10.0,
    memory_limit: int = 1 << 30,
    keep_dir: str | None = None,
    progress=None,
) -> Report:
    """Run `cases` mutated checkpoints of `file_format` ("torch" or "safetensors") and report what happened."""
    rng = random.Random(seed)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="lazygrad-fuzz-") as directory:
        seeds = [open(path, "rb").read() for path in write_seeds(directory)[file_format]]
        worker = Worker(memory_limit)
        case_path = os.path.join(directory, "case")
        try:
            for number in range(cases):
                data = make_case(rng.choice(seeds), file_format, rng)
                with open(case_path, "wb") as f:
                    f.write(data)
                result = worker.run(case_path, timeout)
                report.cases += 1
                outcome = result["outcome"]
                bound = 2 * len(data) + MEMORY_CONSTANT
                if outcome in ("loaded", "refused") and result["peak"] > bound:
                    outcome = "over the memory bound"
                    result["detail"] = f"peak growth {result['peak']:,} bytes for a {len(data):,}-byte file"
                report.outcomes[outcome] += 1
                report.max_seconds = max(report.max_seconds, result["seconds"])
                report.max_peak_over_size = max(report.max_peak_over_size, result["peak"] - 2 * len(data))
                if outcome not in ("loaded", "refused"):
                    kept = None
                    if keep_dir:
                        os.makedirs(keep_dir, exist_ok=True)
                        kept = os.path.join(keep_dir, f"{file_format}-{seed}-{number}.bin")
                        with open(kept, "wb") as f:
                            f.write(data)
                    report.findings.append((outcome, result["detail"], kept))
                if progress is not None:
                    progress(report)
        finally:
            worker.stop()
    return report

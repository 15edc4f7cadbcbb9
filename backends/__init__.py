"""Backends: one module per device kind, each implementing `Backend`.

A backend renders the linear IR (lazygrad.codegen.ir) to its language, compiles it (cached),
allocates memory, copies to and from the host, and launches kernels. Adding a backend is one new
module here plus one line in `REGISTRY`; no core file changes.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from typing import Protocol

import numpy as np

from lazygrad import config
from lazygrad.codegen.capabilities import Capabilities  # noqa: F401 (each backend declares one)

# name -> module path; the module exposes `create(name) -> Backend`, which raises when it cannot start
REGISTRY = {
    "opencl": "lazygrad.backends.opencl",
    "llvm": "lazygrad.backends.llvm",
    "reference": "lazygrad.backends.reference",  # numpy interpreter of the IR: the specification, slow
}


class CompiledKernel(Protocol):
    name: str
    source: str

    def __call__(self, buffers: list, wait: bool = False, values: tuple = ()) -> float | None:
        """Launch on device buffers (output first) and the int values of the program's Variables (in
        `program.variables` order); with wait, return the kernel's seconds."""

    def bind(self, buffers: list, values: tuple = ()):
        """A launcher with the arguments fixed: `launch(wait) -> seconds or None`. It may have `set_buffer(slot,
        handle)` and `set_values(values)` to rebind in place (the step JIT's replays)."""


class Backend(Protocol):
    name: str  # registry name, also the device string tensors carry
    device_name: str  # what the hardware calls itself
    is_gpu: bool
    capabilities: Capabilities

    def allocate(self, nbytes: int): ...

    def free(self, handle, nbytes: int) -> None: ...

    def copy_in(self, handle, array) -> None: ...

    def copy_out(self, handle, array) -> None: ...

    def copy_between(self, dst, src, nbytes: int, src_offset: int = 0) -> None:
        """nbytes from src (from byte src_offset on) into dst, both of this device."""

    def compile(self, program) -> CompiledKernel: ...

    def compile_ahead(self, programs: list) -> None:
        """The programs `compile` is about to get, one by one, in launch order: a backend that can compile several
        at once starts on them here (LLVM's worker processes); one that cannot does nothing."""

    def synchronize(self) -> None: ...


class HostMemory:
    """Memory management for backends whose buffers are numpy byte arrays in host memory (LLVM, the reference):
    copies are slice assignments, and there is nothing to free or wait for."""

    def free(self, handle, nbytes: int) -> None:
        pass

    def copy_in(self, handle, array) -> None:
        handle[: array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)

    def copy_out(self, handle, array) -> None:
        array.reshape(-1).view(np.uint8)[:] = handle[: array.nbytes]

    def copy_between(self, dst, src, nbytes: int, src_offset: int = 0) -> None:
        dst[:nbytes] = src[src_offset : src_offset + nbytes]

    def synchronize(self) -> None:
        pass


class BackendUnavailable(RuntimeError):
    pass


class CompileError(RuntimeError):
    """A kernel the backend's compiler rejected: a bug in lazygrad's code generator."""


class WorkGroupTooLarge(CompileError):
    """A kernel compiled for work-groups bigger than the device runs it in (the registers it needs decide that,
    known only once it is built): the runtime lowers it again for `allowed` work-items."""

    def __init__(self, message: str, allowed: int):
        super().__init__(message)
        self.allowed = allowed


def compile_failure(
    compiler: str, language: str, suffix: str, name: str, source: str, log: str, max_lines: int = 12
) -> str:
    """The message for a kernel a compiler rejects: its name, the file its source was saved to, and the head
    of the compiler's log. Every backend reports compile failures this way."""
    path = os.path.join(tempfile.gettempdir(), f"lazygrad-failed-{name}.{suffix}")
    try:
        with open(path, "w") as f:
            f.write(source)
        saved = f"its {language} is in {path}"
    except OSError as e:
        saved = f"its {language} could not be saved to {path} ({e}); LAZYGRAD_DEBUG=3 prints it"
    lines = [line for line in log.strip().splitlines() if line.strip()]
    head = "\n".join("  " + line for line in lines[:max_lines])
    more = f"\n  ... ({len(lines) - max_lines} more lines)" if len(lines) > max_lines else ""
    return (
        f"{compiler} could not compile kernel {name}; {saved}\n{head}{more}\n"
        "This is a bug in lazygrad's code generator: please report it with that file."
    )


_instances: dict = {}
_failures: dict = {}


def get(name: str) -> Backend:
    """The backend instance for a device name ('llvm', 'opencl', 'opencl:1' picks a device index)."""
    key = name.lower()
    if key in _instances:
        return _instances[key]
    kind = key.split(":")[0]
    if kind not in REGISTRY:
        raise BackendUnavailable(f"unknown backend {name!r}; lazygrad has: {_listing()}")
    if key in _failures:
        raise BackendUnavailable(
            f"backend {name!r} is not available: {_failures[key]}\navailable backends: {_listing()}"
        )
    try:
        module = importlib.import_module(REGISTRY[kind])
        backend = module.create(key)
    except Exception as e:  # any failure to start: missing package, no device, driver error
        _failures[key] = f"{type(e).__name__}: {e}"
        raise BackendUnavailable(f"backend {name!r} could not start: {e}\navailable backends: {_listing()}") from e
    _instances[key] = backend
    return backend


def available() -> dict:
    """{name: (True, device description) or (False, reason)} for every registered backend."""
    out = {}
    for name in REGISTRY:
        try:
            b = get(name)
            out[name] = (True, b.device_name)
        except BackendUnavailable:
            out[name] = (False, _failures.get(name, "unknown reason"))
    return out


def _listing() -> str:
    parts = []
    for name in REGISTRY:
        if name in _instances:
            parts.append(f"{name} (available: {_instances[name].device_name})")
        elif name in _failures:
            parts.append(f"{name} (unavailable: {_failures[name]})")
        else:
            parts.append(name)
    return ", ".join(parts)


def default_device() -> str:
    """LAZYGRAD_BACKEND if set; otherwise OpenCL when it has a GPU, else LLVM."""
    if config.BACKEND:
        if config.BACKEND.split(":")[0] not in REGISTRY:
            raise BackendUnavailable(
                f"LAZYGRAD_BACKEND={config.BACKEND!r} is not a backend; choose one of: {', '.join(REGISTRY)}"
            )
        get(config.BACKEND)
        return config.BACKEND
    try:
        if get("opencl").is_gpu:
            return "opencl"
    except BackendUnavailable:
        pass
    get("llvm")
    return "llvm"

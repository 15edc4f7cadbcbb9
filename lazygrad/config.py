"""Every environment variable lazygrad reads, read here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as e:
        raise ValueError(f"{name}={raw!r} is not an integer") from e


# opencl | llvm; empty: OpenCL when it finds a GPU, else LLVM
BACKEND = os.environ.get("LAZYGRAD_BACKEND", "").strip().lower()
# 1: kernels and times, 2: + the schedule with fusion reasons, 3: + generated source, 4: + linear IR
DEBUG = _int("LAZYGRAD_DEBUG", 0)
# compiled kernels on disk; LAZYGRAD_CACHE_DIR=off disables the disk cache
CACHE_DIR = os.environ.get("LAZYGRAD_CACHE_DIR") or str(
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lazygrad"
)
# the secret that authenticates kernel cache entries lives here, outside the cache directory (docs/cache.md)
CONFIG_DIR = str(Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "lazygrad")
# threads for LLVM kernels (default: all cores)
THREADS = _int("LAZYGRAD_THREADS", os.cpu_count() or 1)
# processes that compile a batch of new LLVM kernels in parallel (0: compile one by one in this process); default:
# one per core when there are several
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
COMPILE_WORKERS = _int("LAZYGRAD_COMPILE_WORKERS", min(8, _CORES) if _CORES > 1 else 0)
# OpenCL device: an index into the list of devices, or a substring of the device name
OPENCL_DEVICE = os.environ.get("LAZYGRAD_OPENCL_DEVICE", "")
# 0 disables the heuristic kernel optimizations (upcast/unroll), for debugging the code generator
OPTIMIZE = _int("LAZYGRAD_OPTIMIZE", 1)
# the kernel search's effort (0: off): each new kernel's option records are timed on the device and the winner kept
# in the disk cache (lazygrad/search.py, docs/search.md); 1 is a quick search, each step up searches longer
SEARCH = _int("LAZYGRAD_SEARCH", 0)
# the CPU LLVM compiles for: empty or "host" for this machine's (with all its features), or an LLVM CPU name
# ("x86-64", "haswell", ...) for code that runs on older machines; results do not depend on it
LLVM_CPU = os.environ.get("LAZYGRAD_LLVM_CPU", "").strip()
# gpu: the OpenCL backend generates the kernels a GPU gets (scalar code, work-group reductions) on any
# device, e.g. PoCL on a CPU, so that GPU-shaped code is tested without a GPU
OPENCL_PROFILE = os.environ.get("LAZYGRAD_OPENCL_PROFILE", "").strip().lower()
# a path: write the lazygrad.viz page of everything the program computed (kernels, fusion reasons) when it exits
VIZ = os.environ.get("LAZYGRAD_VIZ", "").strip()

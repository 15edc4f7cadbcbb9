"""What a device offers the code generator: declared by each backend, read by the lowering.

It lives in codegen, not backends, because the compiler is what reads it (backends import codegen, never
the reverse). The lowering reads nothing else of a backend: two backends that declare equal records get
the same kernels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """What a backend's device offers the code generator, declared by the backend (the lowering probes nothing).

    The lowering reads only this record: two backends with equal records get the same kernels."""

    vector_width: int = 1  # float32 lanes the code generator vectorizes to (1: scalar code)
    cache_blocking: bool = False  # split big matrix products' reduces into cache-sized chunks (CPU caches)
    # work-items that may share one reduce through local memory and barriers (0: the device cannot)
    group_reduce: int = 0
    local_memory: int = 0  # bytes of local memory per work-group
    max_work_group: int = 1  # work-items per work-group
    compute_units: int = 1  # multiprocessors or cores: how many work-groups run at once, roughly
    is_gpu: bool = False
    # a CPU's register file and per-core caches, which register tiles and cache blocking are sized for. The defaults
    # are the CPUs the heuristics were measured on (AVX-512: 32 vector registers; 1 MiB of L2 and 48 KiB of L1d)
    vector_registers: int = 32
    l1_bytes: int = 48 << 10
    l2_bytes: int = 1 << 20


# a device that declares nothing: scalar code, no shared reduces
SCALAR = Capabilities()

"""What a device offers the code generator: declared by each backend, read by the lowering.

It lives in codegen, not backends, because the compiler is what reads it (backends import codegen, never
the reverse). The lowering reads nothing else of a backend: two backends that declare equal records get
the same kernels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """What a backend's device offers the code generator, declared by the backend (never probed).

    The lowering reads only this record: two backends with equal records get the same kernels."""

    vector_width: int = 1  # float32 lanes the code generator vectorizes to (1: scalar code)
    cache_blocking: bool = False  # split big matrix products' reduces into cache-sized chunks (CPU caches)
    # work-items that may share one reduce through local memory and barriers (0: the device cannot)
    group_reduce: int = 0
    local_memory: int = 0  # bytes of local memory per work-group
    max_work_group: int = 1  # work-items per work-group
    compute_units: int = 1  # multiprocessors or cores: how many work-groups run at once, roughly
    is_gpu: bool = False


# a device that declares nothing: scalar code, no shared reduces
SCALAR = Capabilities()

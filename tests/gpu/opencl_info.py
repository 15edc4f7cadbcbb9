"""Print every OpenCL platform and device, then which device lazygrad's opencl backend chose.

Exits 1 when lazygrad did not get a GPU: on the lent NVIDIA machine that means the ICD setup failed, and every
later "opencl" number would silently come from PoCL on the CPU.
"""

from __future__ import annotations

import sys

import pyopencl as cl

from lazygrad import backends


def main() -> int:
    print(f"pyopencl {cl.VERSION_TEXT}")
    for platform in cl.get_platforms():
        print(f"platform: {platform.name} | {platform.version}")
        for device in platform.get_devices():
            kind = cl.device_type.to_string(device.type)
            print(
                f"  device: {device.name} | {kind} | driver {device.driver_version} | "
                f"{device.global_mem_size >> 20} MiB | fp64 {'yes' if device.double_fp_config else 'no'}"
            )
    backend = backends.get("opencl")
    print(f"lazygrad opencl backend: {backend.device_name} (is_gpu={backend.is_gpu})")
    return 0 if backend.is_gpu else 1


if __name__ == "__main__":
    sys.exit(main())

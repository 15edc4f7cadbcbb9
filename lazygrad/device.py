"""The default device, chosen once from LAZYGRAD_BACKEND (see lazygrad.backends.default_device)."""

from __future__ import annotations


class _Device:
    """`lazygrad.Device.DEFAULT` is the device new tensors go to; assign to change it."""

    def __init__(self):
        self._default: str | None = None

    @property
    def DEFAULT(self) -> str:  # noqa: N802 (tinygrad's and this project's public name)
        if self._default is None:
            from lazygrad import backends

            self._default = backends.default_device()
        return self._default

    @DEFAULT.setter
    def DEFAULT(self, name: str) -> None:  # noqa: N802
        from lazygrad import backends

        name = canonical_device(name, resolve_default=False)
        backends.get(name)  # fail now, with the list of backends, if it cannot start
        self._default = name


Device = _Device()


def canonical_device(device, resolve_default: bool = True) -> str:
    """'llvm', 'opencl', 'opencl:1'; 'cpu' means llvm; None means the default device."""
    if device is None:
        return Device.DEFAULT if resolve_default else None
    name = str(device).lower()
    if name in ("cpu", "clang"):
        return "llvm"
    if name == "gpu" or name == "cuda":
        return "opencl"
    return name

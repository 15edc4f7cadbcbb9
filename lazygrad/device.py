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


# other frameworks' device names, and the backend that serves each here
ALIASES = {"cpu": "llvm", "clang": "llvm", "gpu": "opencl", "cuda": "opencl"}


def canonical_device(device, resolve_default: bool = True) -> str:
    """'llvm', 'opencl', 'opencl:1'; 'cpu' means llvm; None means the default device."""
    if device is None:
        return Device.DEFAULT if resolve_default else None
    name = str(device).lower()
    return ALIASES.get(name, name)


def is_device_name(text: str) -> bool:
    """Whether a string names a device ('llvm', 'opencl:1', 'cuda'), as opposed to a dtype ('float32')."""
    from lazygrad.backends import REGISTRY

    kind = text.split(":")[0].lower()
    return kind in ALIASES or kind in REGISTRY

"""Devices: the default device, chosen once from LAZYGRAD_BACKEND (see lazygrad.backends.default_device), device
names and their aliases, and `lazygrad.device`, torch.device's counterpart.

`lazygrad.device` is the class below, not this module: lazygrad/__init__.py binds the name over the submodule
(`from lazygrad.device import canonical_device` still reaches the module, through sys.modules)."""

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
    """'llvm', 'opencl', 'opencl:1'; 'cpu' means llvm, 'cuda:0' opencl (index 0 is the default device of a backend);
    None means the default device."""
    if device is None:
        return Device.DEFAULT if resolve_default else None
    if type(device) is device_class:
        return str.__str__(device)  # already canonical
    name = str(device).lower()
    kind, _, index = name.partition(":")
    kind = ALIASES.get(kind, kind)
    if kind == "llvm" or index in ("", "0"):  # one CPU device; index 0 is the backend's own default
        return kind
    return f"{kind}:{index}"


class device(str):  # noqa: N801 (torch's name)
    """torch.device: `lazygrad.device("cuda" if lazygrad.cuda.is_available() else "cpu")`, `device("cuda", 0)`,
    `x.device`. It is the canonical name of the backend that serves it ('llvm', 'opencl', 'opencl:1'), so it goes
    wherever a device name goes, and equals a device or a name that means the same backend: device("cpu") == "llvm".
    `type` is the backend ("cpu" is llvm, "cuda" opencl), `index` the index given, or None."""

    __slots__ = ("type", "index")

    def __new__(cls, type, index: int | None = None):  # noqa: A002 (torch's parameter name)
        if isinstance(type, device) and index is None:
            return type
        text = str(type).strip()
        kind, colon, given = text.partition(":")
        if colon and index is not None:
            raise RuntimeError(f"type (string) must not include an index because index was passed explicitly: {text}")
        if colon:
            if not given.isdigit():
                raise RuntimeError(f"Invalid device string: {text!r} (the index after ':' must be a number)")
            index = int(given)
        if index is not None and (not isinstance(index, int) or index < 0):
            raise RuntimeError(f"Device index must not be negative, got {index}")
        if not is_device_name(kind):
            from lazygrad.backends import REGISTRY

            known = ", ".join([*REGISTRY, *ALIASES])
            raise RuntimeError(f"Expected one of {known} device type at start of device string: {text}")
        name = canonical_device(kind if index is None else f"{kind}:{index}")
        out = super().__new__(cls, name)
        out.type, out.index = name.partition(":")[0], index
        return out

    def __repr__(self) -> str:
        index = "" if self.index is None else f", index={self.index}"
        return f"device(type='{self.type}'{index})"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            try:
                return str.__eq__(self, canonical_device(other))
            except (TypeError, ValueError):
                return False
        return NotImplemented

    def __ne__(self, other) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = str.__hash__  # the canonical name's: a device and its name find the same dict entries

    def __reduce__(self):
        return (device, (str.__str__(self),))


device_class = device  # canonical_device's name for it (its parameter is called device)
_INTERNED: dict[str, device] = {}


def device_of(name: str) -> device:
    """The device object of a canonical name, made once (Tensor.device is read on every op's path)."""
    found = _INTERNED.get(name)
    if found is None:
        found = _INTERNED[name] = device(name)
    return found


def is_device_name(text: str) -> bool:
    """Whether a string names a device ('llvm', 'opencl:1', 'cuda'), as opposed to a dtype ('float32')."""
    from lazygrad.backends import REGISTRY

    kind = text.split(":")[0].lower()
    return kind in ALIASES or kind in REGISTRY

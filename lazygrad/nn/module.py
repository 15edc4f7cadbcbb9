"""Parameter and Module: PyTorch's module system (registration, state_dict, train/eval) over lazy Tensors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

import lazygrad
from lazygrad.device import canonical_device
from lazygrad.graph import defers_gc
from lazygrad.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable when assigned as an attribute."""

    def __init__(self, data: Tensor | None = None, requires_grad: bool = True):
        if data is None:
            data = lazygrad.empty(0)
        if not isinstance(data, Tensor):
            data = Tensor(data)
        # contiguous: a parameter is updated in place, so it needs dense storage of its own, not a broadcast view
        # (of a constant, say); a tensor that already has its own buffer is shared, as in PyTorch
        Tensor.__init__(self, data.detach().contiguous(), requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


# Buffers that got a lazy in-place update during a forward pass (BatchNorm's running statistics). The next optimizer
# step realizes them in the same schedule as the parameters; otherwise each forward would chain another pending update
# onto the last one and keep the activations it reads alive. Keyed by id: Tensors need not be hashable.
_pending_buffer_updates: dict[int, Tensor] = {}


def note_buffer_update(buffer: Tensor) -> None:
    _pending_buffer_updates[id(buffer)] = buffer


def take_pending_buffer_updates() -> list[Tensor]:
    """The buffers updated since the last call, forgotten by this call (the caller realizes them)."""
    buffers = list(_pending_buffer_updates.values())
    _pending_buffer_updates.clear()
    return buffers


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def tensor_from_array(value: Any, like: Tensor) -> Tensor:
    """A new Tensor holding value (numpy array, list or scalar) with like's dtype and device."""
    array = np.asarray(value, dtype=like.dtype.np)
    # WORKAROUND(core <= 921148a): Tensor(0-d array) came out with shape (1,); a no-op once the fix is committed
    return Tensor(array, dtype=like.dtype, device=like.device).reshape(array.shape)


def _as_tensor_like(value: Any, target: Tensor) -> Tensor:
    """A checkpoint value (lazygrad Tensor, numpy array, list or scalar) as a Tensor of target's dtype and device."""
    if isinstance(value, Tensor):
        return value.to(target.device).cast(target.dtype)
    return tensor_from_array(value, target)


def _shape_of(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)


def _add_indent(text: str, spaces: int) -> str:
    first, *rest = text.split("\n")
    return "\n".join([first] + [" " * spaces + line for line in rest])


class Module:
    """Base class of layers and models, with PyTorch's behaviour: attributes that are Parameters, Modules or
    registered buffers are tracked, so parameters(), state_dict() and load_state_dict() find them by name."""

    def __init__(self) -> None:
        # object.__setattr__: our own __setattr__ needs these dicts to exist already
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", {})

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # a model's forward builds a whole step's forward graph at once, like backward() and step(): with the collector
    # paused (and resumed after the outermost module's call) an eager ResNet-18 step's young collections fall from
    # ~4.6 to ~0.9 a step
    @defers_gc
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- registration ----

    def _registries(self) -> tuple[dict, dict, dict]:
        try:
            return self.__dict__["_parameters"], self.__dict__["_buffers"], self.__dict__["_modules"]
        except KeyError:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning attributes") from None

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot register {type(param).__name__} as parameter {name!r} (a Parameter or None)")
        self._forget(name)
        self._registries()[0][name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot register {type(tensor).__name__} as buffer {name!r} (a Tensor or None)")
        self._forget(name)
        self._registries()[1][name] = tensor
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def register_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"cannot register {type(module).__name__} as submodule {name!r} (a Module or None)")
        self._forget(name)
        self._registries()[2][name] = module

    add_module = register_module

    def _forget(self, name: str) -> None:
        for registry in self._registries():
            registry.pop(name, None)
        self.__dict__.pop(name, None)

    def __setattr__(self, name: str, value: Any) -> None:
        params, buffers, modules = self._registries()
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.register_module(name, value)
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} (a Parameter or None)")
            params[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer {name!r} (a Tensor or None)")
            buffers[name] = value
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to submodule {name!r} (a Module or None)")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails, i.e. for registered names
        for registry in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(registry, {})
            if name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for registry in self._registries():
            if name in registry:
                del registry[name]
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return list(super().__dir__()) + [*self._parameters, *self._buffers, *self._modules]

    # ---- traversal ----

    def named_modules(self, memo: set[int] | None = None, prefix: str = "") -> Iterator[tuple[str, Module]]:
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is not None:
                yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen: set[int] = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def _named_members(self, registry: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()  # a tensor shared by two modules is reported once, under its first name
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for module_prefix, module in modules:
            for name, tensor in getattr(module, registry).items():
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                yield (f"{module_prefix}.{name}" if module_prefix else name), tensor

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        yield from self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Tensor]]:
        yield from self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def get_submodule(self, target: str) -> Module:
        module = self
        for part in target.split(".") if target else []:
            if part not in module._modules:
                raise AttributeError(f"{type(module).__name__} has no submodule {part!r} (looking up {target!r})")
            module = module._modules[part]
        return module

    def apply(self, fn) -> Module:
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ---- modes, devices, gradients ----

    def train(self, mode: bool = True) -> Module:
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.parameters():
            if param.grad is None:
                continue
            param.grad = None if set_to_none else lazygrad.zeros_like(param.grad)

    def to(self, device: str) -> Module:
        """Move parameters and buffers to `device`. Moved parameters are new objects: build optimizers afterwards."""
        device = canonical_device(device)  # "cpu" -> "llvm", None -> the default device
        return self._replace_tensors(lambda t: t.device != device, lambda t: t.to(device))

    def cpu(self) -> Module:
        return self.to("cpu")

    def float(self) -> Module:
        return self._cast_floating(lazygrad.float32)

    def double(self) -> Module:
        return self._cast_floating(lazygrad.float64)

    def half(self) -> Module:
        return self._cast_floating(lazygrad.float16)

    def _cast_floating(self, dtype) -> Module:
        """Cast floating-point parameters and buffers to dtype, as torch's Module.float/double/half (integer buffers,
        such as BatchNorm's batch count, keep theirs)."""
        return self._replace_tensors(lambda t: t.dtype.is_float and t.dtype != dtype, lambda t: t.detach().cast(dtype))

    def _replace_tensors(self, needs, convert) -> Module:
        """Replace every parameter and buffer t for which needs(t) holds by convert(t), realized; parameters stay
        Parameters with their requires_grad. They are new objects: build optimizers afterwards."""
        replaced: list[Tensor] = []
        for module in self.modules():
            for table, is_parameter in ((module._parameters, True), (module._buffers, False)):
                for name, t in table.items():
                    if t is not None and needs(t):
                        new = convert(t)
                        table[name] = (
                            Parameter(new, requires_grad=t.requires_grad) if is_parameter else new.contiguous()
                        )
                        replaced.append(table[name])
        if replaced:
            lazygrad.realize(*replaced)
        return self

    # ---- state dict ----

    def _state_entries(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(key, tensor) in PyTorch's order: a module's parameters, then its persistent buffers, then its children."""
        for name, param in self._parameters.items():
            if param is not None:
                yield prefix + name, param
        for name, buffer in self._buffers.items():
            if buffer is not None and name not in self._non_persistent_buffers:
                yield prefix + name, buffer
        for name, module in self._modules.items():
            if module is not None:
                yield from module._state_entries(f"{prefix}{name}.")

    def state_dict(self, prefix: str = "", keep_vars: bool = False) -> dict[str, Tensor]:
        return {key: tensor if keep_vars else tensor.detach() for key, tensor in self._state_entries(prefix)}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values into the existing parameters and buffers (in place, so optimizers keep working)."""
        own = dict(self._state_entries())
        missing = [key for key in own if key not in state_dict]
        unexpected = [key for key in state_dict if key not in own]
        errors = [
            f"size mismatch for {key}: copying a param with shape {_shape_of(value)} from checkpoint, "
            f"the shape in current model is {tuple(own[key].shape)}."
            for key, value in state_dict.items()
            if key in own and _shape_of(value) != tuple(own[key].shape)
        ]
        if strict:
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
        if errors:
            details = "".join("\n\t" + error for error in errors)
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:{details}")
        targets = []
        with lazygrad.no_grad():
            for key, target in own.items():
                if key in state_dict:
                    targets.append(target.assign(_as_tensor_like(state_dict[key], target)))
        lazygrad.realize(*targets)
        return IncompatibleKeys(missing, unexpected)

    # ---- printing ----

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [line for line in self.extra_repr().split("\n") if line]
        lines += [f"({name}): {_add_indent(repr(module), 2)}" for name, module in self._modules.items()]
        if not self._modules and len(lines) <= 1:
            return f"{type(self).__name__}({''.join(lines)})"
        return type(self).__name__ + "(\n" + "".join(f"  {line}\n" for line in lines) + ")"

"""Optimizers with PyTorch's names, hyperparameters, param groups, state dicts and exact update formulas (torch.optim).

step() builds every parameter's update lazily, writes parameters and optimizer state in place with assign, and
realizes all of them (plus the gradients and any BatchNorm running statistics updated by the forward pass) in one
lazygrad.realize() call, so the scheduler sees the whole update at once and can fuse it.

Hyperparameters are data on the device. Each param group is a dict, as in torch, and also owns a small float32
buffer of the numbers its update kernels read (lr, momentum, betas, eps, weight decay and values derived from them,
each computed on the host in double precision and rounded once, as torch's scalar arguments are). Writing
`group["lr"] = 0.01` (a scheduler does) rewrites that buffer at once: the compiled kernels stay the same, and a
jitted step, which replays kernels without running step(), reads the new value. Settings that change the shape of
the update itself (SGD's momentum switched on or off, nesterov, maximize, amsgrad, decoupled weight decay) cannot be
data: changing one makes every JIT capture run its function again (lazygrad.jit.invalidate_captures).

Adam's step count lives on the device too, and its bias corrections 1 - beta**step are computed there from it each
step, so replays advance them and a change of betas is honoured as torch honours it.

Each update reads optimizer state after assigning it (`buf.assign(...)`, then `param - buf * lr`): a plain
read-after-write for the scheduler, instead of an expression that must read the old buffer before it is overwritten.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import lazygrad
from lazygrad.graph import LazyBuffer, defers_gc
from lazygrad.jit import invalidate_captures
from lazygrad.nn.module import take_pending_buffer_updates, tensor_from_array
from lazygrad.ops import Op
from lazygrad.tensor import Tensor


def _fresh_copy(value: Any, like: Tensor) -> Tensor:
    """A new buffer holding value (a Tensor or array), never an alias of it: loaded state must not share storage."""
    return tensor_from_array(_host_value(value), like)


def _host_value(value: Any) -> np.ndarray:
    """A checkpoint value (lazygrad Tensor, torch tensor, numpy array, number) as a numpy array."""
    if isinstance(value, Tensor):
        return value.numpy()
    if hasattr(value, "detach"):  # a torch tensor, as torch's own state dicts hold
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _gradient_node(param: Tensor) -> LazyBuffer:
    """param.grad's graph node in param's dtype; a gradient of another shape is refused (torch refuses to set one)."""
    grad = param.grad._lazydata
    if grad.shape != param._lazydata.shape:
        raise RuntimeError(f"parameter of shape {tuple(param.shape)} has a gradient of shape {tuple(grad.shape)}")
    return grad if grad.dtype is param._lazydata.dtype else grad.alu(Op.CAST, arg=param.dtype, dtype=param.dtype)


def _node(op: Op, *srcs: LazyBuffer) -> LazyBuffer:
    """One elementwise graph node: the updates are built from nodes, not tensor ops (see SGD._update_one)."""
    return LazyBuffer.elementwise(op, srcs)


def _over(node: LazyBuffer, shape: tuple) -> LazyBuffer:
    """A 0-d node broadcast over `shape` (the view an operator's broadcasting makes)."""
    return node.broadcast((1,) * len(shape), shape) if shape else node


def _zeros_buffer(like: Tensor) -> Tensor:
    return lazygrad.zeros(like.shape, dtype=like.dtype, device=like.device).contiguous()


class ParamGroup(dict):
    """One entry of optimizer.param_groups: a plain dict to its users, whose hyperparameter writes also reach the
    device buffer the update kernels read."""

    def __init__(self, values: dict[str, Any], on_change: Callable[[ParamGroup], None]):
        super().__init__(values)
        self._on_change = on_change

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._on_change(self)

    def update(self, *args, **kwargs) -> None:
        super().update(*args, **kwargs)
        self._on_change(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __reduce__(self):  # pickles and deep-copies as the plain dict torch has
        return (dict, (dict(self),))


class Optimizer:
    """Holds param_groups (dicts of params and hyperparameters) and per-parameter state, as torch.optim does."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any]):
        self.defaults = defaults
        self.param_groups: list[ParamGroup] = []
        # per group: its device hyperparameter buffer, the values last written there, its update's structure, and
        # group-wide state (Adam's step count)
        self.group_state: list[dict[str, Any]] = []
        self._state: dict[int, dict[str, Any]] = {}  # keyed by id(param): Tensors need not be hashable
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for group in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(group)

    # ---- hyperparameters on the device ----

    def device_hyperparameters(self, group: dict[str, Any]) -> dict[str, float]:
        """The numbers the update kernels read, by name, computed from the group's hyperparameters."""
        raise NotImplementedError

    def update_structure(self, group: dict[str, Any]) -> tuple:
        """The settings that decide which kernels an update runs (as opposed to the numbers they read)."""
        return ()

    def _group_changed(self, group: ParamGroup) -> None:
        index = next((i for i, g in enumerate(self.param_groups) if g is group), None)
        if index is None or "hyperparameters" not in self.group_state[index]:
            return  # still being built by add_param_group
        state = self.group_state[index]
        values = np.array(list(self.device_hyperparameters(group).values()), dtype=state["written"].dtype)
        if not np.array_equal(values, state["written"]):
            state["hyperparameters"].lazydata.base.buffer.copy_in(values)
            state["written"] = values
        structure = self.update_structure(group)
        if structure != state["structure"]:
            state["structure"] = structure
            invalidate_captures()  # a captured step would run the old kind of update

    def hyperparameter(self, group_index: int, name: str, like: Tensor) -> Tensor:
        """A 0-d view of one device hyperparameter of a group, in like's dtype."""
        state = self.group_state[group_index]
        buffer = state["hyperparameters"]
        # the view is made once per buffer (indexing costs more than the rest of an eager update); it reads the
        # buffer's memory, which a changed hyperparameter overwrites in place
        views = state.setdefault("views", {})
        cached = views.get(name)
        if cached is None or cached[0] is not buffer.lazydata:
            cached = views[name] = (buffer.lazydata, buffer[state["names"].index(name)])
        value = cached[1]
        return value if value.dtype == like.dtype else value.cast(like.dtype)

    def hyperparameter_node(self, group_index: int, name: str, like: Tensor) -> LazyBuffer:
        """hyperparameter() broadcast to like's shape, as a graph node: the view an operator's broadcasting makes,
        made once per (name, shape, dtype) and buffer (eager updates build their formulas from nodes)."""
        state = self.group_state[group_index]
        node = like._lazydata
        key = (name, node.shape, node.dtype)
        broadcasts = state.setdefault("broadcasts", {})
        cached = broadcasts.get(key)
        if cached is None or cached[0] is not state["hyperparameters"].lazydata:
            value = _over(self.hyperparameter(group_index, name, like)._lazydata, node.shape)
            cached = broadcasts[key] = (state["hyperparameters"].lazydata, value)
        return cached[1]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for param in group["params"]:
            if not isinstance(param, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(param).__name__}")
            # a frozen parameter (requires_grad=False) is accepted, as torch does: it never gets a gradient, so
            # step() leaves it alone, and it starts training if it is unfrozen later
        known = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in group["params"]}) != len(group["params"]) or known & {id(p) for p in group["params"]}:
            raise ValueError("some parameters appear more than once in the optimizer's parameter groups")
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        group = ParamGroup(group, self._group_changed)
        names = list(self.device_hyperparameters(group))
        # float64 parameters read float64 hyperparameters: torch's Python-float lr is double precision there
        wide = any(p.dtype == lazygrad.float64 for p in group["params"])
        values = np.array(list(self.device_hyperparameters(group).values()), dtype=np.float64 if wide else np.float32)
        device = group["params"][0].device if group["params"] else None
        buffer = lazygrad.tensor(values, device=device)
        self.param_groups.append(group)
        self.group_state.append(
            {"hyperparameters": buffer, "names": names, "written": values, "structure": self.update_structure(group)}
        )
        # parameters must be realized buffers before step() writes into them
        lazygrad.realize(buffer, *group["params"])
        invalidate_captures()  # a captured step would leave the new parameters alone

    def state_for(self, param: Tensor) -> dict[str, Any]:
        return self._state.setdefault(id(param), {})

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad = None if set_to_none else lazygrad.zeros_like(param.grad)

    @defers_gc
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update every parameter that has a gradient. A closure (zero_grad, forward, backward, return the loss) is
        called first, and its loss is realized in the same schedule as the update, from the old parameters."""
        loss = closure() if closure is not None else None
        outputs: list[Tensor] = [loss] if isinstance(loss, Tensor) else []
        with lazygrad.no_grad():
            for index, group in enumerate(self.param_groups):
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    outputs += self._update(index, group, params)
                    outputs += [p.grad for p in params]  # realized now: after the update they would read new values
        lazygrad.realize(*outputs, *take_pending_buffer_updates())
        return loss

    def _update(self, index: int, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        """Assign the new values of params and their state; return every tensor assigned."""
        raise NotImplementedError

    # ---- saving and loading, in torch's layout ----

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _param_state(self, index: int, param: Tensor) -> dict[str, Any]:
        """The state of one parameter as torch's state_dict lists it."""
        return dict(self._state.get(id(param), {}))

    def state_dict(self) -> dict[str, Any]:
        """{"state": {param index: {name: value}}, "param_groups": [hyperparameters + "params": param indices]}, as
        torch.optim's. Tensors are returned by reference, as in PyTorch."""
        groups, state, position = [], {}, 0
        for index, group in enumerate(self.param_groups):
            indices = list(range(position, position + len(group["params"])))
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": indices})
            for i, param in zip(indices, group["params"]):
                param_state = self._param_state(index, param)
                if param_state:
                    state[i] = param_state
            position += len(indices)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load hyperparameters and state (from this library's state_dict() or torch's). State that exists already
        is overwritten in place, so jitted steps keep working."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state dict has {len(groups)} parameter groups, the optimizer {len(self.param_groups)}")
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"loaded state dict has a group of {len(saved['params'])} parameters where the optimizer has "
                    f"{len(group['params'])}"
                )
        written: list[Tensor] = []
        for index, (saved, group) in enumerate(zip(groups, self.param_groups)):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
            for saved_index, param in zip(saved["params"], group["params"]):
                saved_state = state_dict["state"].get(saved_index, {})
                written += self._load_param_state(index, param, saved_state)
        lazygrad.realize(*written)

    def _load_param_state(self, index: int, param: Tensor, saved: dict[str, Any]) -> list[Tensor]:
        state = self._state.setdefault(id(param), {})
        written = []
        for name, value in saved.items():
            if value is None:
                continue
            current = state.get(name)
            if isinstance(current, Tensor) and tuple(current.shape) == tuple(np.shape(_host_value(value))):
                written.append(current.assign(_fresh_copy(value, current)))  # in place: captures stay valid
            else:
                state[name] = _fresh_copy(value, param)
                written.append(state[name])
                invalidate_captures()  # new buffers that a captured step does not know
        return written

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {key}: {value}" for key, value in sorted(group.items()) if key != "params"]
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ):
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"invalid SGD hyperparameters: lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def device_hyperparameters(self, group):
        return {
            "-lr": -group["lr"],  # the update adds step * -lr, as torch's `param.add_(step, alpha=-lr)`
            "momentum": group["momentum"],
            "1 - dampening": 1 - group["dampening"],
            "weight_decay": group["weight_decay"],
        }

    def update_structure(self, group):
        # a weight decay and a dampening of 0 leave their terms out (as PyTorch's branches do): an eager step builds
        # five ops less per parameter; their values stay data, so a replay reads changed ones, and a change to or
        # from 0 changes the kind of update (captures are invalidated)
        return (
            group["momentum"] != 0,
            group["nesterov"],
            group["maximize"],
            group["weight_decay"] != 0,
            group["dampening"] != 0,
        )

    def _update(self, index, group, params):
        assigned = []
        for param in params:
            assigned += self._update_one(index, group, param)
        return assigned

    def _update_one(self, index, group, param):
        # built from graph nodes directly: the nodes that `param - buffer * lr` and the rest make as tensor ops,
        # without a tensor, promotion and broadcasting for each (an eager step updates every parameter; with tensor
        # ops SGD with momentum made 7 tensors per parameter)
        e = _node

        def hyper(name):
            return self.hyperparameter_node(index, name, param)

        step = _gradient_node(param)
        if group["maximize"]:
            step = e(Op.NEG, step)
        if group["weight_decay"] != 0:
            step = e(Op.ADD, step, e(Op.MUL, param._lazydata, hyper("weight_decay")))
        assigned = []
        if group["momentum"] != 0:
            state = self.state_for(param)
            if "momentum_buffer" not in state:  # PyTorch starts the buffer at the first gradient, undamped
                state["momentum_buffer"] = _zeros_buffer(param).assign(Tensor._wrap(step))
            else:
                buffer = state["momentum_buffer"]
                if group["dampening"] != 0:
                    step = e(Op.MUL, step, hyper("1 - dampening"))
                buffer._assign_node(e(Op.ADD, e(Op.MUL, buffer._lazydata, hyper("momentum")), step))
            buffer = state["momentum_buffer"]
            assigned.append(buffer)
            if group["nesterov"]:
                step = e(Op.ADD, step, e(Op.MUL, buffer._lazydata, hyper("momentum")))
            else:
                step = buffer._lazydata
        assigned.append(param._assign_node(e(Op.ADD, param._lazydata, e(Op.MUL, step, hyper("-lr")))))
        return assigned


class Adam(Optimizer):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ):
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid {type(self).__name__} hyperparameters: lr={lr}, betas={betas}, eps={eps}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults)

    def device_hyperparameters(self, group):
        (beta1, beta2), lr, weight_decay = group["betas"], group["lr"], group["weight_decay"]
        return {
            "lr": lr,
            "1 - beta1": 1 - beta1,
            "beta2": beta2,
            "1 - beta2": 1 - beta2,
            # ln(beta) for the bias corrections 1 - beta**step (0 for beta = 0, where the correction is 1)
            "ln beta1": math.log(beta1) if beta1 > 0 else -math.inf,
            "ln beta2": math.log(beta2) if beta2 > 0 else -math.inf,
            "eps": group["eps"],
            "weight_decay": 0.0 if group["decoupled_weight_decay"] else weight_decay,
            "1 - lr * weight_decay": 1 - lr * weight_decay if group["decoupled_weight_decay"] else 1.0,
        }

    def update_structure(self, group):
        return (group["amsgrad"], group["maximize"], group["decoupled_weight_decay"])

    def _group_step_state(self, index: int, device: str) -> dict[str, Any]:
        state = self.group_state[index]
        if "step" not in state:
            dtype = state["hyperparameters"].dtype  # float64 for float64 parameters
            state["step"] = lazygrad.zeros((), dtype=dtype, device=device).contiguous()
            state["bias_correction1"] = lazygrad.ones((), dtype=dtype, device=device).contiguous()
            state["bias_correction2"] = lazygrad.ones((), dtype=dtype, device=device).contiguous()
        return state

    def _group_step(self, index: int, device: str) -> list[Tensor]:
        """Advance the group's step count and its bias corrections on the device; return them, assigned."""
        state = self._group_step_state(index, device)
        step = state["step"].assign(state["step"] + 1)
        hyper = state["hyperparameters"]
        names = state["names"]
        corrections = []
        for beta in ("1", "2"):
            exponent = step * hyper[names.index(f"ln beta{beta}")]  # ln(beta**step)
            corrections.append(state[f"bias_correction{beta}"].assign(_one_minus_exp(exponent)))
        return [step, *corrections]

    def _param_state(self, index, param):
        state = dict(self._state.get(id(param), {}))
        if state and "step" in self.group_state[index]:
            # torch keeps a step tensor per parameter, and advances each in place: one tensor shared by all (as the
            # group's is here) would be advanced once per parameter by a torch optimizer resuming from the checkpoint
            step = self.group_state[index]["step"]
            state = {"step": lazygrad.tensor(step.numpy(), device=step.device), **state}
        return state

    def _load_param_state(self, index, param, saved):
        saved = dict(saved)
        step = saved.pop("step", None)
        written = super()._load_param_state(index, param, saved)
        if step is not None:
            count = float(_host_value(step))
            state, (beta1, beta2) = self._group_step_state(index, param.device), self.param_groups[index]["betas"]
            for name, value in (
                ("step", count),
                ("bias_correction1", 1 - beta1**count),
                ("bias_correction2", 1 - beta2**count),
            ):
                written.append(state[name].assign(_fresh_copy(np.array(value), state[name])))
        return written

    def _update(self, index, group, params):
        assigned = self._group_step(index, params[0].device)
        _, bias_correction1, bias_correction2 = assigned
        # the 0-d factors every parameter of a dtype shares: lr / (1 - beta1**step), sqrt(1 - beta2**step)
        shared: dict = {}
        for param in params:
            dtype = param._lazydata.dtype
            if dtype not in shared:
                correction1 = bias_correction1.cast(param.dtype)._lazydata
                correction2 = bias_correction2.cast(param.dtype)._lazydata
                lr = self.hyperparameter(index, "lr", param)._lazydata
                shared[dtype] = (_node(Op.MUL, lr, _node(Op.RECIP, correction1)), _node(Op.SQRT, correction2))
            assigned += self._update_one(index, group, param, *shared[dtype])
        return assigned

    def _update_one(self, index, group, param, step_size, correction2_sqrt):
        # built from graph nodes directly, as SGD's (see there): torch's formulas, each op one node
        e = _node

        def hyper(name):
            return self.hyperparameter_node(index, name, param)

        node = param._lazydata
        grad = _gradient_node(param)
        if group["maximize"]:
            grad = e(Op.NEG, grad)
        grad = e(Op.ADD, grad, e(Op.MUL, node, hyper("weight_decay")))  # 0 for AdamW, exactly: no branch
        decayed = e(Op.MUL, node, hyper("1 - lr * weight_decay"))  # 1 for Adam, exactly
        state = self.state_for(param)
        if "exp_avg" not in state:
            state["exp_avg"], state["exp_avg_sq"] = _zeros_buffer(param), _zeros_buffer(param)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = _zeros_buffer(param)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        m, v = exp_avg._lazydata, exp_avg_sq._lazydata
        # exp_avg + (grad - exp_avg) * (1 - beta1): a lerp, as PyTorch computes it
        exp_avg._assign_node(e(Op.ADD, m, e(Op.MUL, e(Op.ADD, grad, e(Op.NEG, m)), hyper("1 - beta1"))))
        squared = e(Op.MUL, e(Op.MUL, grad, grad), hyper("1 - beta2"))
        exp_avg_sq._assign_node(e(Op.ADD, e(Op.MUL, v, hyper("beta2")), squared))
        assigned = [exp_avg, exp_avg_sq]
        if group["amsgrad"]:
            largest = state["max_exp_avg_sq"]
            exp_avg_sq = largest._assign_node(e(Op.MAX, largest._lazydata, exp_avg_sq._lazydata))
            assigned.append(exp_avg_sq)
        # exp_avg_sq.sqrt() / sqrt(1 - beta2**step) + eps, then param * (1 - lr wd) - exp_avg / denom * step_size
        denom = e(Op.MUL, e(Op.SQRT, exp_avg_sq._lazydata), e(Op.RECIP, _over(correction2_sqrt, node.shape)))
        denom = e(Op.ADD, denom, hyper("eps"))
        update = e(Op.MUL, e(Op.MUL, exp_avg._lazydata, e(Op.RECIP, denom)), _over(step_size, node.shape))
        assigned.append(param._assign_node(e(Op.ADD, decayed, e(Op.NEG, update))))
        return assigned


def _one_minus_exp(x: Tensor) -> Tensor:
    """1 - e**x for x <= 0, accurate for small |x| (1 - beta2**step at the first steps, beta2 near 1), where
    computing e**x first would cancel most of the digits: a Taylor series there, 1 - exp(x) elsewhere."""
    series = -x * (1 + x * (1 / 2 + x * (1 / 6 + x * (1 / 24 + x * (1 / 120 + x / 720)))))
    return (x.abs() < 0.125)._select(series, 1 - x.exp())


class AdamW(Adam):
    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True)


from lazygrad.optim import lr_scheduler  # noqa: E402  (torch.optim exposes it too; it imports Optimizer from here)

__all__ = ["Optimizer", "ParamGroup", "SGD", "Adam", "AdamW", "lr_scheduler"]

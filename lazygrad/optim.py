"""Optimizers with PyTorch's names, hyperparameters and exact update formulas (torch.optim).

step() builds every parameter's update lazily, writes parameters and optimizer state in place with assign, and
realizes all of them (plus the gradients and any BatchNorm running statistics updated by the forward pass) in one
lazygrad.realize() call, so the scheduler sees the whole update at once and can fuse it. Hyperparameters such as lr
are Python numbers baked into the update; Adam's step-dependent bias corrections live on the device (the running
powers beta**step), so a replayed (jitted) step stays correct.

Each update reads optimizer state after assigning it (`buf.assign(...)`, then `param - buf * lr`): a plain
read-after-write for the scheduler, instead of an expression that must read the old buffer before it is overwritten.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import lazygrad
from lazygrad.nn.module import take_pending_buffer_updates, tensor_from_array
from lazygrad.tensor import Tensor


def _fresh_copy(value: Any, like: Tensor) -> Tensor:
    """A new buffer holding value (a Tensor or array), never an alias of it: loaded state must not share storage."""
    return tensor_from_array(value.numpy() if isinstance(value, Tensor) else value, like)


def _zeros_buffer(like: Tensor) -> Tensor:
    return lazygrad.zeros(like.shape, dtype=like.dtype, device=like.device).contiguous()


class Optimizer:
    """Holds param_groups (dicts of params and hyperparameters) and per-parameter state, as torch.optim does."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any]):
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        self.group_state: list[dict[str, Any]] = []  # per-group state (Adam's beta powers), parallel to param_groups
        self._state: dict[int, dict[str, Any]] = {}  # keyed by id(param): Tensors need not be hashable
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        for group in params if isinstance(params[0], dict) else [{"params": params}]:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for param in group["params"]:
            if not isinstance(param, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(param).__name__}")
            if not param.requires_grad:
                raise ValueError("optimizing a tensor that does not require grad")
        known = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in group["params"]}) != len(group["params"]) or known & {id(p) for p in group["params"]}:
            raise ValueError("some parameters appear more than once in the optimizer's parameter groups")
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self.param_groups.append(group)
        self.group_state.append({})
        # parameters must be realized buffers before step() writes into them
        lazygrad.realize(*group["params"])

    def state_for(self, param: Tensor) -> dict[str, Any]:
        return self._state.setdefault(id(param), {})

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad = None if set_to_none else lazygrad.zeros_like(param.grad)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update every parameter that has a gradient. A closure (zero_grad, forward, backward, return the loss) is
        called first, and its loss is realized in the same schedule as the update, from the old parameters."""
        loss = closure() if closure is not None else None
        outputs: list[Tensor] = [loss] if isinstance(loss, Tensor) else []
        with lazygrad.no_grad():
            for group, group_state in zip(self.param_groups, self.group_state):
                params = [p for p in group["params"] if p.grad is not None]
                if params:
                    outputs += self._update(group, group_state, params)
                    outputs += [p.grad for p in params]  # realized now: after the update they would read new values
        lazygrad.realize(*outputs, *take_pending_buffer_updates())
        return loss

    def _update(self, group: dict[str, Any], group_state: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        """Assign the new values of params and their state; return every tensor assigned."""
        raise NotImplementedError

    # ---- saving and loading ----

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """{"state": {param index: {name: value}}, "param_groups": [hyperparameters + param indices], "group_state"}.
        Tensors are returned by reference, as in PyTorch."""
        index = {id(p): i for i, p in enumerate(self._all_params())}
        groups = [
            {**{k: v for k, v in group.items() if k != "params"}, "params": [index[id(p)] for p in group["params"]]}
            for group in self.param_groups
        ]
        state = {index[key]: dict(value) for key, value in self._state.items() if key in index}
        return {"state": state, "param_groups": groups, "group_state": [dict(s) for s in self.group_state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state dict has {len(groups)} parameter groups, the optimizer {len(self.param_groups)}")
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"loaded state dict has a group of {len(saved['params'])} parameters where the optimizer has "
                    f"{len(group['params'])}"
                )
        params = self._all_params()
        loaded: list[Tensor] = []

        def restore(value: Any, like: Tensor) -> Any:
            if isinstance(value, (Tensor, np.ndarray)):
                loaded.append(_fresh_copy(value, like))
                return loaded[-1]
            return copy.deepcopy(value)

        self._state = {}
        for saved, group in zip(groups, self.param_groups):
            group.update({k: copy.deepcopy(v) for k, v in saved.items() if k != "params"})
            for saved_index, param in zip(saved["params"], group["params"]):
                saved_state = state_dict["state"].get(saved_index, {})
                self._state[id(param)] = {name: restore(value, param) for name, value in saved_state.items()}
        for i, saved in enumerate(state_dict.get("group_state", [{} for _ in self.param_groups])):
            self.group_state[i] = {name: restore(value, params[0]) for name, value in saved.items()}
        lazygrad.realize(*loaded)

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

    def _update(self, group, group_state, params):
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        assigned = []
        for param in params:
            step = -param.grad if group["maximize"] else param.grad
            if group["weight_decay"] != 0:
                step = step + param * group["weight_decay"]
            if momentum != 0:
                state = self.state_for(param)
                if "momentum_buffer" not in state:  # PyTorch starts the buffer at the first gradient, undamped
                    state["momentum_buffer"] = _zeros_buffer(param).assign(step)
                else:
                    buffer = state["momentum_buffer"]
                    buffer.assign(buffer * momentum + step * (1 - dampening))
                buffer = state["momentum_buffer"]
                assigned.append(buffer)
                step = step + buffer * momentum if group["nesterov"] else buffer
            assigned.append(param.assign(param - step * lr))
        return assigned


class Adam(Optimizer):
    decoupled_weight_decay = False  # AdamW: decay the parameter itself instead of adding to the gradient

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
    ):
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid {type(self).__name__} hyperparameters: lr={lr}, betas={betas}, eps={eps}")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize
        )
        super().__init__(params, defaults)

    def _update(self, group, group_state, params):
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if "beta1_power" not in group_state:
            group_state["step"] = 0
            group_state["beta1_power"] = lazygrad.ones((), device=params[0].device).contiguous()
            group_state["beta2_power"] = lazygrad.ones((), device=params[0].device).contiguous()
        group_state["step"] += 1
        beta1_power = group_state["beta1_power"].assign(group_state["beta1_power"] * beta1)
        beta2_power = group_state["beta2_power"].assign(group_state["beta2_power"] * beta2)
        assigned = [beta1_power, beta2_power]
        step_size = lr / (1 - beta1_power)
        bias_correction2_sqrt = (1 - beta2_power).sqrt()
        for param in params:
            grad = -param.grad if group["maximize"] else param.grad
            value = param
            if weight_decay != 0:
                if self.decoupled_weight_decay:
                    value = param * (1 - lr * weight_decay)
                else:
                    grad = grad + param * weight_decay
            state = self.state_for(param)
            if "exp_avg" not in state:
                state["exp_avg"], state["exp_avg_sq"] = _zeros_buffer(param), _zeros_buffer(param)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = _zeros_buffer(param)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.assign(exp_avg + (grad - exp_avg) * (1 - beta1))  # lerp, as PyTorch computes it
            exp_avg_sq.assign(exp_avg_sq * beta2 + grad * grad * (1 - beta2))
            assigned += [exp_avg, exp_avg_sq]
            if group["amsgrad"]:
                exp_avg_sq = state["max_exp_avg_sq"].assign(state["max_exp_avg_sq"].maximum(exp_avg_sq))
                assigned.append(exp_avg_sq)
            denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
            assigned.append(param.assign(value - (exp_avg / denom) * step_size))
        return assigned


class AdamW(Adam):
    decoupled_weight_decay = True

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
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)

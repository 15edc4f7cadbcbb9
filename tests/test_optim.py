"""lazygrad.optim against torch.optim: several steps from the same parameters and the same loss give the same
parameters, for each optimizer and option; plus state_dict round trips and the one-schedule step."""

import numpy as np
import pytest

import lazygrad
from lazygrad import nn, optim
from lazygrad.nn.module import take_pending_buffer_updates

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-3, 1e-4
SHAPES = [(3, 4), (5,)]


@pytest.fixture(autouse=True)
def no_pending_batchnorm_updates():
    """step() also realizes BatchNorm running stats left pending by earlier forwards: start each test without any."""
    take_pending_buffer_updates()


def initial_arrays(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
    targets = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
    return params, targets


def loss_of(params, targets):
    """A loss whose gradient 2 (p - t) + 0.3 p^2 changes from step to step; written identically for both libraries."""
    total = 0
    for param, target in zip(params, targets):
        diff = param - target
        total = total + (diff * diff).sum() + (param * param * param).sum() * 0.1
    return total


def run_torch(make_optimizer, steps: int) -> list[list[np.ndarray]]:
    arrays, target_arrays = initial_arrays()
    params = [torch.tensor(a, requires_grad=True) for a in arrays]
    targets = [torch.tensor(t) for t in target_arrays]
    optimizer = make_optimizer(params)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(params, targets).backward()
        optimizer.step()
        history.append([p.detach().numpy().copy() for p in params])
    return history


def run_lazygrad(make_optimizer, steps: int) -> list[list[np.ndarray]]:
    arrays, target_arrays = initial_arrays()
    params = [nn.Parameter(lazygrad.tensor(a)) for a in arrays]
    targets = [lazygrad.tensor(t) for t in target_arrays]
    optimizer = make_optimizer(params)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(params, targets).backward()
        optimizer.step()
        history.append([p.numpy().copy() for p in params])
    return history


def assert_same_history(actual, expected) -> None:
    for step, (actual_params, expected_params) in enumerate(zip(actual, expected)):
        for index, (a, e) in enumerate(zip(actual_params, expected_params)):
            np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL, err_msg=f"param {index} after step {step + 1}")


CASES = {
    "sgd": ("SGD", dict(lr=0.05)),
    "sgd-momentum": ("SGD", dict(lr=0.05, momentum=0.9)),
    "sgd-dampening": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    "sgd-nesterov-decay": ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    "sgd-maximize": ("SGD", dict(lr=0.01, momentum=0.5, maximize=True)),
    "adam": ("Adam", dict(lr=0.05)),
    "adam-betas-decay": ("Adam", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    "adam-amsgrad": ("Adam", dict(lr=0.05, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=0.05)),
    "adamw-decay-amsgrad": ("AdamW", dict(lr=0.05, weight_decay=0.3, amsgrad=True)),
    "adam-maximize": ("Adam", dict(lr=0.01, maximize=True)),
}


@pytest.mark.parametrize("name, kwargs", CASES.values(), ids=CASES.keys())
def test_optimizer_steps_match_torch(name, kwargs):
    steps = 5
    expected = run_torch(lambda params: getattr(torch.optim, name)(params, **kwargs), steps)
    actual = run_lazygrad(lambda params: getattr(optim, name)(params, **kwargs), steps)
    assert_same_history(actual, expected)


def test_param_groups_with_their_own_hyperparameters_match_torch():
    def groups(params):
        return [{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "momentum": 0.5}]

    expected = run_torch(lambda params: torch.optim.SGD(groups(params), lr=0.02, momentum=0.9), 3)
    actual = run_lazygrad(lambda params: optim.SGD(groups(params), lr=0.02, momentum=0.9), 3)
    assert_same_history(actual, expected)


def test_sgd_on_float32_and_float64_parameters_of_one_group_matches_torch():
    """One group's hyperparameters are float64 when any parameter is; the float32 ones read them cast."""
    arrays, target_arrays = initial_arrays()
    kwargs = dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)
    results = []
    for lib, make in ((torch, torch.optim.SGD), (lazygrad, optim.SGD)):
        params = [
            lib.tensor(arrays[0], requires_grad=True),
            lib.tensor(arrays[1].astype(np.float64), requires_grad=True),
        ]
        targets = [lib.tensor(target_arrays[0]), lib.tensor(target_arrays[1].astype(np.float64))]
        optimizer = make(params, **kwargs)
        for _ in range(3):
            optimizer.zero_grad()
            loss_of(params, targets).backward()
            optimizer.step()
        results.append([p.detach().numpy() for p in params])
    for expected, actual in zip(*results):
        assert actual.dtype == expected.dtype
        np.testing.assert_allclose(actual, expected, rtol=1e-6 if actual.dtype == np.float64 else RTOL, atol=ATOL)


def test_a_gradient_of_another_shape_is_refused_with_both_shapes():
    param = nn.Parameter(lazygrad.ones(3))
    param.grad = lazygrad.ones(2)
    with pytest.raises(RuntimeError, match=r"parameter of shape \(3,\) has a gradient of shape \(2,\)"):
        optim.SGD([param], lr=0.1, momentum=0.9).step()


def test_parameters_without_gradient_are_left_alone():
    used, unused = nn.Parameter(lazygrad.ones(3)), nn.Parameter(lazygrad.ones(3))
    optimizer = optim.Adam([used, unused], lr=0.1)
    (used * 2).sum().backward()
    optimizer.step()
    np.testing.assert_array_equal(unused.numpy(), np.ones(3, np.float32))
    assert not np.allclose(used.numpy(), 1.0)


def test_frozen_parameters_are_accepted_and_left_alone_as_in_torch():
    def train(lib, model, optimizer_class):
        with lib.no_grad():
            model[0].weight.copy_(lib.tensor(np.full((3, 3), 0.5, np.float32)))
            model[0].bias.copy_(lib.tensor(np.arange(3, dtype=np.float32)))
        model[0].weight.requires_grad = False  # frozen, and still handed to the optimizer, as fine-tuning code does
        optimizer = optimizer_class(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(2):
            optimizer.zero_grad()
            (model(lib.ones(2, 3)) ** 2).sum().backward()
            optimizer.step()
        return [p.detach().numpy() for p in model.parameters()]

    expected = train(torch, torch.nn.Sequential(torch.nn.Linear(3, 3)), torch.optim.SGD)
    actual = train(lazygrad, nn.Sequential(nn.Linear(3, 3)), optim.SGD)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(actual[0], np.full((3, 3), 0.5, np.float32))


def test_zero_grad_sets_gradients_to_none_or_zero():
    param = nn.Parameter(lazygrad.ones(3))
    optimizer = optim.SGD([param], lr=0.1)
    (param * 3).sum().backward()
    optimizer.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(param.grad.numpy(), np.zeros(3, np.float32))
    optimizer.zero_grad()
    assert param.grad is None


def test_gradients_stay_readable_after_the_step():
    param = nn.Parameter(lazygrad.ones(3))
    optimizer = optim.SGD([param], lr=0.5)
    (param * param).sum().backward()
    optimizer.step()
    np.testing.assert_allclose(param.grad.numpy(), [2, 2, 2])  # the gradient at the old value, not the new one
    np.testing.assert_allclose(param.numpy(), [0, 0, 0])


@pytest.mark.parametrize(
    "name, kwargs",
    [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.05)), ("AdamW", dict(lr=0.05, amsgrad=True))],
)
def test_state_dict_round_trip_continues_identically(name, kwargs):
    """Two steps, save, load into a fresh optimizer over copies of the parameters: the next steps agree."""
    arrays, target_arrays = initial_arrays()
    targets = [lazygrad.tensor(t) for t in target_arrays]
    params = [nn.Parameter(lazygrad.tensor(a)) for a in arrays]
    optimizer = getattr(optim, name)(params, **kwargs)

    def step(optimizer, params):
        optimizer.zero_grad()
        loss_of(params, targets).backward()
        optimizer.step()

    for _ in range(2):
        step(optimizer, params)
    copies = [nn.Parameter(lazygrad.tensor(p.numpy())) for p in params]
    resumed = getattr(optim, name)(copies, lr=1.0)  # hyperparameters come from the state dict
    resumed.load_state_dict(optimizer.state_dict())
    assert resumed.param_groups[0]["lr"] == kwargs["lr"]
    for _ in range(2):
        step(optimizer, params)
        step(resumed, copies)
    for original, copy in zip(params, copies):
        np.testing.assert_allclose(copy.numpy(), original.numpy(), rtol=1e-6, atol=1e-7)


def test_state_dict_refers_to_parameters_by_index():
    params = [nn.Parameter(lazygrad.ones(2)), nn.Parameter(lazygrad.ones(3))]
    optimizer = optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    state = optimizer.state_dict()
    assert state["param_groups"][0]["params"] == [0, 1] and state["param_groups"][0]["momentum"] == 0.9
    assert sorted(state["state"]) == [0, 1]
    np.testing.assert_allclose(state["state"][1]["momentum_buffer"].numpy(), np.ones(3))


def test_step_realizes_everything_in_one_call(monkeypatch):
    """The whole update (every parameter and buffer) goes to the scheduler at once, so it can fuse."""
    params = [nn.Parameter(lazygrad.ones(4)), nn.Parameter(lazygrad.ones(2, 2))]
    optimizer = optim.Adam(params, lr=0.1)
    sum((p * p).sum() for p in params).backward()
    calls = []
    real_realize = lazygrad.realize
    monkeypatch.setattr(lazygrad, "realize", lambda *tensors: calls.append(len(tensors)) or real_realize(*tensors))
    optimizer.step()
    assert len(calls) == 1
    assert calls[0] >= 2 + 2 * 2  # params, exp_avg, exp_avg_sq (and grads, beta powers)


def test_invalid_arguments_are_rejected():
    param = nn.Parameter(lazygrad.ones(2))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([param], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([param, param], lr=0.1)
    with pytest.raises(ValueError):
        optim.Adam([param], betas=(0.9, 1.5))


# --- hyperparameters are device values ------------------------------------------------------------------


def make_params(library):
    arrays, target_arrays = initial_arrays()
    if library is torch:
        return [torch.tensor(a, requires_grad=True) for a in arrays], [torch.tensor(t) for t in target_arrays]
    return [nn.Parameter(lazygrad.tensor(a)) for a in arrays], [lazygrad.tensor(t) for t in target_arrays]


def run_with_changes(library, name, kwargs, changes, steps=8, jitted=False):
    """Train, applying changes[step] (a dict of hyperparameters) to every param group before that step."""
    params, targets = make_params(library)
    optimizer = getattr(torch.optim if library is torch else optim, name)(params, **kwargs)

    def step():
        optimizer.zero_grad()
        loss_of(params, targets).backward()
        optimizer.step()

    if jitted:
        step = lazygrad.jit(step)
    history = []
    for i in range(steps):
        for group in optimizer.param_groups:
            group.update(changes.get(i, {}))
        step()
        history.append([p.detach().numpy().copy() if library is torch else p.numpy() for p in params])
    return history, step


# (optimizer, its arguments, changes by step, whether the changes keep the kind of update: values only)
CHANGES = {
    "sgd": (
        "SGD",
        dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.05),
        {3: dict(lr=0.01), 4: dict(momentum=0.5, dampening=0.2), 5: dict(weight_decay=0.1), 6: dict(lr=0.0)},
        True,
    ),
    # SGD leaves a weight decay or dampening of 0 out of the update (as torch): switching one on changes the update
    "sgd-decay-and-dampening-switched-on": (
        "SGD",
        dict(lr=0.05, momentum=0.9),
        {4: dict(dampening=0.2), 5: dict(weight_decay=0.1)},
        False,
    ),
    "sgd-nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True), {3: dict(lr=0.02, momentum=0.7)}, True),
    "adam": (
        "Adam",
        dict(lr=0.05),
        {3: dict(lr=0.01), 4: dict(betas=(0.8, 0.9)), 5: dict(eps=1e-3), 6: dict(weight_decay=0.2)},
        True,
    ),
    "adamw": (
        "AdamW",
        dict(lr=0.05, amsgrad=True),
        {3: dict(lr=0.02, weight_decay=0.3), 5: dict(betas=(0.5, 0.6))},
        True,
    ),
}


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name, kwargs, changes, values_only", CHANGES.values(), ids=CHANGES.keys())
def test_changed_hyperparameters_take_effect_like_torch(name, kwargs, changes, values_only, jitted):
    """Issue 13: a changed lr was ignored under the JIT (it was a constant in the captured kernels)."""
    expected, _ = run_with_changes(torch, name, kwargs, changes)
    actual, step = run_with_changes(lazygrad, name, kwargs, changes, jitted=jitted)
    assert_same_history(actual, expected)
    if jitted and values_only:
        assert step.replays == 6, "a change of values only made the JIT capture the step again"


@pytest.mark.parametrize(
    "name, kwargs, change",
    [
        (
            "SGD",
            dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
            dict(lr=0.01, momentum=0.5, dampening=0.3, weight_decay=0.2),
        ),
        ("Adam", dict(lr=0.05), dict(lr=0.01, betas=(0.5, 0.7), eps=1e-4, weight_decay=0.1)),
    ],
)
def test_changing_hyperparameters_compiles_nothing(name, kwargs, change):
    """Issue 13: a changed lr recompiled the update kernels (it was a constant in them)."""
    params, targets = make_params(lazygrad)
    optimizer = getattr(optim, name)(params, **kwargs)
    for i in range(3):
        if i == 2:
            optimizer.param_groups[0].update(change)
        with lazygrad.profile(timed=False) as profile:
            optimizer.zero_grad()
            loss_of(params, targets).backward()
            optimizer.step()
    assert profile.compiled == 0


def test_switching_momentum_on_recaptures_a_jitted_step():
    """Momentum from 0 to 0.9 changes the kind of update (a momentum buffer appears): the JIT captures again."""
    changes = {4: dict(momentum=0.9)}
    expected, _ = run_with_changes(torch, "SGD", dict(lr=0.05), changes)
    actual, step = run_with_changes(lazygrad, "SGD", dict(lr=0.05), changes, jitted=True)
    assert_same_history(actual, expected)
    assert step.replays == 2 + 2  # steps 3-4 replayed; 5 and 6 ran normally (then captured); 7-8 replayed


def test_add_param_group_matches_torch():
    def run(library):
        params, targets = make_params(library)
        optimizer = (torch.optim if library is torch else optim).SGD([params[0]], lr=0.05, momentum=0.9)
        history = []
        for i in range(4):
            if i == 2:
                optimizer.add_param_group({"params": [params[1]], "lr": 0.2, "momentum": 0.5})
            optimizer.zero_grad()
            loss_of(params, targets).backward()
            optimizer.step()
            history.append([p.detach().numpy().copy() if library is torch else p.numpy() for p in params])
        return history, optimizer

    (expected, torch_optimizer), (actual, optimizer) = run(torch), run(lazygrad)
    assert_same_history(actual, expected)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in torch_optimizer.param_groups]


def to_torch_state(state_dict):
    def convert(value):
        return torch.tensor(value.numpy()) if isinstance(value, lazygrad.Tensor) else value

    return {
        "state": {i: {k: convert(v) for k, v in s.items()} for i, s in state_dict["state"].items()},
        "param_groups": [dict(g) for g in state_dict["param_groups"]],
    }


@pytest.mark.parametrize(
    "name, kwargs",
    [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.05)), ("AdamW", dict(lr=0.05, amsgrad=True))],
)
def test_state_dicts_move_between_torch_and_lazygrad(name, kwargs):
    """Two steps in one library, the state dict loaded into the other, two more steps there: the same parameters
    as four steps in torch. The layout is torch's: state keyed by parameter index, with torch's names."""
    expected = run_torch(lambda params: getattr(torch.optim, name)(params, **kwargs), 4)[-1]

    def continue_in(library, state_dict, values):
        params, targets = make_params(library)
        params = (
            [torch.tensor(v, requires_grad=True) for v in values]
            if library is torch
            else [nn.Parameter(lazygrad.tensor(v)) for v in values]
        )
        optimizer = getattr(torch.optim if library is torch else optim, name)(params, lr=1.0)
        optimizer.load_state_dict(state_dict)
        for _ in range(2):
            optimizer.zero_grad()
            loss_of(params, targets).backward()
            optimizer.step()
        return [p.detach().numpy() if library is torch else p.numpy() for p in params]

    # lazygrad -> torch
    params, targets = make_params(lazygrad)
    optimizer = getattr(optim, name)(params, **kwargs)
    for _ in range(2):
        optimizer.zero_grad()
        loss_of(params, targets).backward()
        optimizer.step()
    state = optimizer.state_dict()
    torch_keys = {"SGD": ["momentum_buffer"], "Adam": ["step", "exp_avg", "exp_avg_sq"]}
    keys = torch_keys.get(name, ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
    assert sorted(state["state"]) == [0, 1] and list(state["state"][0]) == keys
    assert_same_history([continue_in(torch, to_torch_state(state), [p.numpy() for p in params])], [expected])

    # torch -> lazygrad
    torch_params, torch_targets = make_params(torch)
    torch_optimizer = getattr(torch.optim, name)(torch_params, **kwargs)
    for _ in range(2):
        torch_optimizer.zero_grad()
        loss_of(torch_params, torch_targets).backward()
        torch_optimizer.step()
    values = [p.detach().numpy().copy() for p in torch_params]
    assert_same_history([continue_in(lazygrad, torch_optimizer.state_dict(), values)], [expected])

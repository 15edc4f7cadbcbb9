"""lazygrad.optim.lr_scheduler against torch.optim.lr_scheduler: the same learning rates (and OneCycleLR's momenta)
step by step, for two param groups; and the same training when a schedule drives the optimizer."""

import numpy as np
import pytest

import lazygrad
from lazygrad import nn, optim
from lazygrad.optim import lr_scheduler

torch = pytest.importorskip("torch")

STEPS = 25

SCHEDULES = {
    "step": lambda m, opt: m.StepLR(opt, step_size=3, gamma=0.5),
    "multistep": lambda m, opt: m.MultiStepLR(opt, milestones=[2, 5, 5, 9], gamma=0.3),
    "exponential": lambda m, opt: m.ExponentialLR(opt, gamma=0.9),
    "cosine": lambda m, opt: m.CosineAnnealingLR(opt, T_max=7, eta_min=0.001),  # 25 steps: down, up and down
    "lambda": lambda m, opt: m.LambdaLR(opt, lambda epoch: 0.95**epoch),
    "lambda-per-group": lambda m, opt: m.LambdaLR(opt, [lambda e: 1 / (e + 1), lambda e: 0.9**e]),
    "linear": lambda m, opt: m.LinearLR(opt, start_factor=0.25, total_iters=4),
    "linear-down": lambda m, opt: m.LinearLR(opt, start_factor=1.0, end_factor=0.1, total_iters=10),
    "onecycle": lambda m, opt: m.OneCycleLR(opt, max_lr=0.5, total_steps=STEPS),
    "onecycle-linear-three-phase": lambda m, opt: m.OneCycleLR(
        opt, max_lr=[0.5, 0.2], total_steps=STEPS, anneal_strategy="linear", three_phase=True
    ),
    "sequential": lambda m, opt: m.SequentialLR(
        opt, [m.LinearLR(opt, start_factor=0.1, total_iters=3), m.CosineAnnealingLR(opt, T_max=10)], milestones=[3]
    ),
    "sequential-three": lambda m, opt: m.SequentialLR(
        opt,
        [m.LinearLR(opt, start_factor=0.5, total_iters=2), m.ExponentialLR(opt, gamma=0.8), m.StepLR(opt, step_size=2)],
        milestones=[3, 8],
    ),
}


def hyperparameter_history(library, make_scheduler, optimizer_name: str) -> list:
    params = [library.zeros(2, requires_grad=True), library.zeros(3, requires_grad=True)]
    groups = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.3}]
    kwargs = dict(lr=0.1, momentum=0.9) if optimizer_name == "SGD" else dict(lr=0.1, betas=(0.9, 0.99))
    opt_module = torch.optim if library is torch else optim
    optimizer = getattr(opt_module, optimizer_name)(groups, **kwargs)
    scheduler = make_scheduler(torch.optim.lr_scheduler if library is torch else lr_scheduler, optimizer)
    history = []
    for _ in range(STEPS):
        optimizer.step()  # no gradients: nothing moves, but torch wants step() before the scheduler's
        scheduler.step()
        values = scheduler.get_last_lr() + [g["lr"] for g in optimizer.param_groups]
        for group in optimizer.param_groups:
            values += [group["momentum"]] if "momentum" in group else list(group["betas"])
        history.append(values)
    return history


@pytest.mark.backend_independent
@pytest.mark.parametrize("optimizer_name", ["SGD", "Adam"])
@pytest.mark.parametrize("make_scheduler", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_learning_rates_match_torch_step_by_step(make_scheduler, optimizer_name):
    expected = hyperparameter_history(torch, make_scheduler, optimizer_name)
    actual = hyperparameter_history(lazygrad, make_scheduler, optimizer_name)
    for step, (a, e) in enumerate(zip(actual, expected)):
        assert a == pytest.approx(e, rel=1e-12, abs=0), f"step {step + 1}"


@pytest.mark.backend_independent
def test_a_scheduler_resumes_from_its_state_dict():
    def make(library_optim, library_scheduler):
        params = (
            [lazygrad.zeros(2, requires_grad=True)] if library_optim is optim else [torch.zeros(2, requires_grad=True)]
        )
        optimizer = library_optim.SGD(params, lr=0.2)
        return optimizer, library_scheduler.CosineAnnealingLR(optimizer, T_max=9)

    optimizer, scheduler = make(optim, lr_scheduler)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    resumed_optimizer, resumed = make(optim, lr_scheduler)
    resumed.load_state_dict(scheduler.state_dict())
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    for _ in range(6):
        for o, s in ((optimizer, scheduler), (resumed_optimizer, resumed)):
            o.step()
            s.step()
        assert resumed.get_last_lr() == scheduler.get_last_lr()
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


# --- schedules driving training ------------------------------------------------------------------------


def train(library, optimizer_name, kwargs, make_scheduler, steps=12, jitted=False) -> list:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,))]
    targets = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,))]
    if library is torch:
        params = [torch.tensor(a, requires_grad=True) for a in arrays]
        targets = [torch.tensor(t) for t in targets]
        optimizer = getattr(torch.optim, optimizer_name)(params, **kwargs)
        scheduler = make_scheduler(torch.optim.lr_scheduler, optimizer)
    else:
        params = [nn.Parameter(lazygrad.tensor(a)) for a in arrays]
        targets = [lazygrad.tensor(t) for t in targets]
        optimizer = getattr(optim, optimizer_name)(params, **kwargs)
        scheduler = make_scheduler(lr_scheduler, optimizer)

    def step():
        optimizer.zero_grad()
        loss = sum(((p - t) ** 2).sum() + (p * p * p).sum() * 0.1 for p, t in zip(params, targets))
        loss.backward()
        optimizer.step()
        return loss

    if jitted:
        step = lazygrad.jit(step)
    history = []
    for _ in range(steps):
        loss = step()
        scheduler.step()
        history.append(
            [float(loss.item())] + [p.detach().numpy().copy() if library is torch else p.numpy() for p in params]
        )
    return history


TRAININGS = {
    "sgd-cosine": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01), SCHEDULES["cosine"]),
    "sgd-onecycle": ("SGD", dict(lr=0.05, momentum=0.9), lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=12)),
    "adam-onecycle": ("Adam", dict(lr=0.05), lambda m, o: m.OneCycleLR(o, max_lr=0.1, total_steps=12)),
    "adamw-step": ("AdamW", dict(lr=0.05, weight_decay=0.1), SCHEDULES["step"]),
}


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name, kwargs, make_scheduler", TRAININGS.values(), ids=TRAININGS.keys())
def test_scheduled_training_matches_torch(name, kwargs, make_scheduler, jitted):
    expected = train(torch, name, kwargs, make_scheduler)
    actual = train(lazygrad, name, kwargs, make_scheduler, jitted=jitted)
    for step, (a, e) in enumerate(zip(actual, expected)):
        for index, (x, y) in enumerate(zip(a, e)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=f"step {step + 1}, item {index}")


def test_scheduled_jitted_training_replays():
    """The jitted runs above compare because the learning rate is data: make sure they did replay."""
    calls = []
    original = lazygrad.jit

    def counting_jit(fn):
        calls.append(original(fn))
        return calls[-1]

    lazygrad.jit = counting_jit
    try:
        train(lazygrad, "SGD", dict(lr=0.05, momentum=0.9), SCHEDULES["cosine"], steps=6, jitted=True)
    finally:
        lazygrad.jit = original
    assert calls[0].replays == 4

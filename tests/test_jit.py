"""@lazygrad.jit: capture on the second call, replay from the third, with the same numbers as running normally."""

import numpy as np
import pytest

import lazygrad
from lazygrad import nn, optim


def make_model_and_step(jitted: bool):
    lazygrad.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(x, y):
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return model, (lazygrad.jit(step) if jitted else step)


def batches(n):
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal((2, 2, 6, 6), dtype=np.float32), rng.standard_normal((2, 3), dtype=np.float32))
        for _ in range(n)
    ]


def test_replayed_steps_match_normal_steps():
    data = batches(6)
    model_a, plain = make_model_and_step(jitted=False)
    model_b, jitted = make_model_and_step(jitted=True)
    for x, y in data:
        loss_a = plain(lazygrad.tensor(x), lazygrad.tensor(y)).item()
        loss_b = jitted(lazygrad.tensor(x), lazygrad.tensor(y)).item()
        np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert jitted.replays == len(data) - 2
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_replay_launches_the_captured_kernels_and_builds_no_graph():
    _, jitted = make_model_and_step(jitted=True)
    ((x, y),) = batches(1)
    for _ in range(2):
        jitted(lazygrad.tensor(x), lazygrad.tensor(y))
    with lazygrad.profile() as p:
        jitted(lazygrad.tensor(x), lazygrad.tensor(y)).item()
    assert p.kernels == len(jitted.launches)
    assert p.compiled == 0


def test_new_input_shapes_fall_back_to_running_the_function_with_a_warning():
    calls = []

    @lazygrad.jit
    def double(x):
        calls.append(1)
        return x * 2

    for _ in range(3):
        double(lazygrad.ones(3))
    assert len(calls) == 2  # the third call was a replay
    with pytest.warns(RuntimeWarning, match="differ from the captured"):
        out = double(lazygrad.ones(4))
    np.testing.assert_array_equal(out.numpy(), np.full(4, 2.0, np.float32))
    assert len(calls) == 3

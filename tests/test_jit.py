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


def test_new_input_shapes_get_a_capture_of_their_own():
    calls = []

    @lazygrad.jit
    def double(x):
        calls.append(1)
        return x * 2

    for _ in range(3):
        double(lazygrad.ones(3))
    assert len(calls) == 2  # the third call was a replay
    for n in range(3):  # a new shape: one normal call, one capture, then replays
        out = double(lazygrad.arange(4).float() + n)
        np.testing.assert_array_equal(out.numpy(), (np.arange(4) + n) * 2.0)
    assert len(calls) == 4 and double.replays == 2
    np.testing.assert_array_equal(double(lazygrad.ones(3) * 5).numpy(), np.full(3, 10.0, np.float32))
    assert len(calls) == 4  # the first shape's capture is still there


def test_other_arguments_are_part_of_what_is_captured():
    scale = lazygrad.jit(lambda x, factor: x * factor)
    x = lazygrad.ones(2)
    results = [scale(x, factor).numpy() for factor in (2.0, 2.0, 2.0, 3.0, 3.0, 3.0)]
    np.testing.assert_array_equal(np.stack(results)[:, 0], [2, 2, 2, 3, 3, 3])
    assert scale.replays == 2


# --- outputs: every call returns tensors of its own ---------------------------------------------------


def test_tensors_returned_by_earlier_calls_keep_their_values():
    """Issue 13: the returned tensors shared one buffer, so reading them afterwards gave [0, 32, 32, 32, 32]."""
    total = lazygrad.jit(lambda x: (x * 8).sum())
    losses = [total(lazygrad.full((1,), float(i))) for i in range(5)]
    assert [loss.item() for loss in losses] == [0, 8, 16, 24, 32]
    assert total.replays == 3


def test_returned_views_and_several_outputs_are_fresh_per_call():
    @lazygrad.jit
    def stats(x):
        return {"sum": x.sum(), "rows": [(x * 2)[0], x.amax(dim=1)]}

    data = [np.arange(6, dtype=np.float32).reshape(2, 3) + i for i in range(5)]
    results = [stats(lazygrad.tensor(d)) for d in data]
    for d, r in zip(data, results):
        assert r["sum"].item() == d.sum()
        np.testing.assert_array_equal(r["rows"][0].numpy(), d[0] * 2)
        np.testing.assert_array_equal(r["rows"][1].numpy(), d.max(axis=1))


def test_reuse_outputs_lets_each_replay_overwrite_the_previous_result():
    total = lazygrad.jit(reuse_outputs=True)(lambda x: (x * 8).sum())
    losses = [total(lazygrad.full((1,), float(i))) for i in range(5)]
    assert [loss.item() for loss in losses] == [0, 32, 32, 32, 32]  # calls 2 to 5 return the same buffer


def test_a_returned_input_or_parameter_is_the_tensor_itself():
    weight = lazygrad.ones(3).contiguous().realize()

    @lazygrad.jit
    def passthrough(x):
        weight.assign(weight + 1)
        return x, weight

    for i in range(4):
        x = lazygrad.full((3,), float(i)).contiguous().realize()
        out, w = passthrough(x)
        np.testing.assert_array_equal(out.numpy(), x.numpy())
        np.testing.assert_array_equal(w.numpy(), np.full(3, 2.0 + i, np.float32))


def test_replays_do_not_write_into_earlier_inputs():
    double = lazygrad.jit(lambda x: x * 2)
    inputs = [lazygrad.tensor(np.full(3, i, np.float32)) for i in range(4)]
    outputs = [double(x) for x in inputs]
    for i, (x, y) in enumerate(zip(inputs, outputs)):
        np.testing.assert_array_equal(x.numpy(), np.full(3, i, np.float32))
        np.testing.assert_array_equal(y.numpy(), np.full(3, 2 * i, np.float32))


def test_returned_buffers_are_freed_with_the_callers_tensors():
    from lazygrad.runtime import Buffer

    double = lazygrad.jit(lambda x: x * 2)
    x = lazygrad.ones(1024).contiguous().realize()
    for _ in range(3):
        double(x).numpy()
    live = Buffer.live_bytes
    for _ in range(20):
        double(x).numpy()
    assert Buffer.live_bytes == live


# --- inputs: a replay reads the view it is given ------------------------------------------------------


def test_slices_of_one_buffer_replay_their_own_elements():
    """Issue 13: g(base[i:i+4]) for i = 0..3 gave [0..3], [1..4], [1..4], [1..4]."""
    base = lazygrad.arange(8).float().contiguous().realize()
    identity = lazygrad.jit(lambda x: x * 1)
    assert [identity(base[i : i + 4]).tolist() for i in range(4)] == [list(range(i, i + 4)) for i in range(4)]
    assert identity.replays == 2


def test_mini_batches_sliced_from_a_dataset_advance():
    data = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    dataset = lazygrad.tensor(data).realize()
    batch_sum = lazygrad.jit(lambda x: x.sum(dim=0))
    for start in range(0, 10, 2):
        np.testing.assert_array_equal(batch_sum(dataset[start : start + 2]).numpy(), data[start : start + 2].sum(0))


@pytest.mark.parametrize(
    "view",
    [
        lambda base, i: base[i::2][:3],  # strided
        lambda base, i: base.reshape(4, 3)[:, i % 3].reshape(4)[:3],  # a column
        lambda base, i: base[i : i + 6].reshape(2, 3).permute(1, 0).reshape(6)[:3],  # transposed
        lambda base, i: base[i : i + 2].pad((1, 0)),  # padded: reads a zero that is not in memory
        lambda base, i: base[0:3] if i % 2 else lazygrad.full((3,), float(i)),  # a view, then a fresh tensor
    ],
    ids=["strided", "column", "transposed", "padded", "alternating"],
)
def test_any_view_replays_the_elements_it_shows(view):
    values = np.arange(12, dtype=np.float32)
    base = lazygrad.tensor(values).realize()
    plus_one = lazygrad.jit(lambda x: x + 1)
    for i in range(5):
        x = view(base, i)
        np.testing.assert_array_equal(plus_one(x).numpy(), x.numpy() + 1, err_msg=f"call {i}")
    assert plus_one.replays == 3


def test_capture_with_a_slice_then_replay_with_bigger_and_smaller_buffers():
    """Issue 13: capturing with a slice and replaying with a fresh tensor mixed new and stale data, or raised when
    the new buffer was bigger."""
    small = lazygrad.tensor(np.arange(8, dtype=np.float32)).realize()
    big = lazygrad.tensor(np.arange(100, dtype=np.float32) * 10).realize()
    negate = lazygrad.jit(lambda x: -x)
    calls = [small[2:6], small[4:8], lazygrad.tensor(np.full(4, 7, np.float32)), big[50:54], big[::25]]
    for x in calls:
        np.testing.assert_array_equal(negate(x).numpy(), -x.numpy())
    assert negate.replays == 3


def test_the_same_tensor_twice_and_constants_as_inputs():
    add = lazygrad.jit(lambda a, b: a + b)
    for i in range(4):
        x = lazygrad.full((3,), float(i)).contiguous().realize()
        np.testing.assert_array_equal(add(x, x).numpy(), np.full(3, 2.0 * i))
        np.testing.assert_array_equal(add(x, lazygrad.ones(3) * i).numpy(), np.full(3, 2.0 * i))


# --- a training loop: mini-batches sliced from one dataset, a cosine schedule ---------------------------


def dataset_training(
    library, jitted: bool = False, epochs: int = 2, batch: int = 8, dropout: float = 0.0, seed: int = 0
) -> list:
    """Losses and parameters after each step of SGD with momentum and a cosine schedule over mini-batches that are
    slices of one dataset tensor, with dropout on the hidden layer if asked."""
    rng = np.random.default_rng(7)
    images = rng.standard_normal((48, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 48)
    w1, b1 = rng.uniform(-0.4, 0.4, (16, 6)).astype(np.float32), rng.uniform(-0.4, 0.4, 16).astype(np.float32)
    w2, b2 = rng.uniform(-0.4, 0.4, (3, 16)).astype(np.float32), rng.uniform(-0.4, 0.4, 3).astype(np.float32)
    steps = epochs * len(images) // batch
    if library == "torch":
        import torch

        params = [torch.tensor(a, requires_grad=True) for a in (w1, b1, w2, b2)]
        data, targets = torch.tensor(images), torch.tensor(labels)
        opt = torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=1e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        functional = torch.nn.functional
        torch.manual_seed(seed)
    else:
        params = [nn.Parameter(lazygrad.tensor(a)) for a in (w1, b1, w2, b2)]
        data, targets = lazygrad.tensor(images).realize(), lazygrad.tensor(labels).realize()
        opt = optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=1e-3)
        schedule = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        functional = nn.functional
        lazygrad.manual_seed(seed)

    def step(x, y):
        hidden = functional.linear(x, params[0], params[1]).relu()
        if dropout:
            hidden = functional.dropout(hidden, dropout)
        loss = functional.cross_entropy(functional.linear(hidden, params[2], params[3]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    if jitted:
        step = lazygrad.jit(step)
    history = []
    for _ in range(epochs):
        for start in range(0, len(images), batch):
            loss = step(data[start : start + batch], targets[start : start + batch])
            schedule.step()
            values = [p.detach().numpy().copy() if library == "torch" else p.numpy() for p in params]
            history.append([np.float32(loss.item()), *values])
    if jitted:
        assert step.replays == steps - 2
    return history


def test_a_jitted_training_loop_over_dataset_slices_matches_the_eager_loop_and_torch():
    """Issue 13's done-when: mini-batches sliced from one dataset tensor, dropout, a cosine learning-rate schedule; the
    jitted loop gives step for step the same losses and parameters as the eager loop (same seed), and without dropout
    (PyTorch's random stream is another) tracks PyTorch's within rtol 1e-4."""
    for dropout in (0.0, 0.25):
        eager = dataset_training("lazygrad", dropout=dropout)
        jitted = dataset_training("lazygrad", jitted=True, dropout=dropout)
        for step, (a, b) in enumerate(zip(jitted, eager)):
            for index, (x, y) in enumerate(zip(a, b)):
                np.testing.assert_array_equal(
                    x, y, err_msg=f"dropout {dropout}, step {step + 1}, item {index} (0: loss)"
                )
    assert not np.array_equal(eager[-1][1], dataset_training("lazygrad")[-1][1])  # dropout changed the training
    for step, (a, b) in enumerate(zip(dataset_training("lazygrad"), dataset_training("torch"))):
        for index, (x, y) in enumerate(zip(a, b)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=f"step {step + 1}, item {index} (0: loss)")


def test_with_dropout_the_jitted_loss_curve_stays_within_torchs_own_seed_to_seed_spread():
    """With dropout the two libraries draw different masks, so the curves cannot agree step for step. The stated
    tolerance: each epoch's mean loss of the jitted lazygrad loop lies inside the range PyTorch's loop covers over
    six seeds, widened by 0.08 (about the spread of those seeds themselves, measured: 0.05-0.15 per epoch), and the
    loss falls as PyTorch's does."""
    epochs = 8

    def epoch_means(history):
        return np.array([row[0] for row in history]).reshape(epochs, -1).mean(1)

    torch_curves = np.array(
        [epoch_means(dataset_training("torch", epochs=epochs, dropout=0.25, seed=s)) for s in range(6)]
    )
    ours = epoch_means(dataset_training("lazygrad", jitted=True, epochs=epochs, dropout=0.25, seed=0))
    low, high = torch_curves.min(0) - 0.08, torch_curves.max(0) + 0.08
    assert np.all((low <= ours) & (ours <= high)), f"lazygrad {ours} outside torch's band {low} .. {high}"
    assert ours[-1] < ours[0] - 0.2 and torch_curves[:, -1].mean() < torch_curves[:, 0].mean() - 0.2

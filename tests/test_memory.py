"""Device memory lives exactly as long as something needs it, and training does not grow it.

`runtime.Buffer.live_bytes` counts the bytes of every device buffer a tensor or a graph still refers
to; `runtime.POOL.bytes_held` the freed ones kept for reuse. A buffer is needed while a tensor views
it or an unrealized graph will read it; once a result is realized, the graph behind it is released.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import lazygrad
from lazygrad import nn, optim, runtime


def live() -> int:
    return runtime.Buffer.live_bytes


@pytest.fixture
def no_cyclic_gc():
    """Only reference counting frees objects meanwhile, so what a test sees freed is freed at once, not
    whenever Python's cyclic garbage collector runs next: device memory must not wait for it."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def realized(shape, value: float = 1.0) -> lazygrad.Tensor:
    return lazygrad.tensor(np.full(shape, value, dtype=np.float32)).realize()


# --- lifetimes ---------------------------------------------------------------------------------------

promptly = pytest.mark.usefixtures("no_cyclic_gc")


@promptly
def test_a_buffer_is_freed_when_its_tensor_is_dropped():
    before = live()
    x = realized((1000,))
    assert live() == before + 4000

    del x

    assert live() == before


@promptly
def test_a_view_keeps_its_base_buffer_alive():
    before = live()
    x = realized((10, 100))
    view = x[2:5].permute(1, 0)
    del x
    assert live() == before + 4000

    del view

    assert live() == before


@promptly
def test_an_unrealized_graph_keeps_the_buffers_it_reads():
    before = live()
    x = realized((1000,))
    y = x * 2 + 1
    del x
    assert live() == before + 4000, "y still needs x"

    del y

    assert live() == before


@promptly
def test_realizing_a_result_releases_the_buffers_of_its_inputs():
    before = live()
    x = realized((1000,))
    y = (x * 2 + 1).realize()
    del x

    assert live() == before + 4000, "only y's own buffer should remain"
    np.testing.assert_array_equal(y.numpy(), np.full(1000, 3, np.float32))


@promptly
def test_intermediate_buffers_of_a_schedule_are_freed_once_it_has_run():
    """A value used twice (here through a reduce) gets a buffer of its own for the kernels that read it."""
    x = realized((1000,))
    before = live()
    y = (x.exp() * x.exp().sum()).realize()

    assert live() == before + 4000, f"{live() - before - 4000} bytes of intermediates still live"
    del y


@promptly
def test_gradients_release_their_buffers_when_dropped():
    w = lazygrad.tensor(np.ones((100,), np.float32), requires_grad=True).realize()
    before = live()
    (w * w).sum().backward()
    w.grad.realize()
    assert live() == before + 400

    w.grad = None

    assert live() == before


# --- training keeps memory flat ----------------------------------------------------------------------


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def snapshot() -> dict:
    gc.collect()
    # objects counted before resident memory is read: the list gc.get_objects() builds (8 bytes an object,
    # ~4 MiB in a process that ran the whole suite) would otherwise show up as growth in the next snapshot
    objects = len(gc.get_objects())
    return {"live": live(), "pool": runtime.POOL.bytes_held, "rss": resident_bytes(), "objects": objects}


def train(steps: int, use_jit: bool, warmup: int = 50) -> tuple:
    """Snapshots after `warmup` steps and after `steps` steps of a small convnet on 8x8 inputs."""
    lazygrad.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 16)

    def step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    if use_jit:
        step = lazygrad.jit(step)
    first = last = None
    for i in range(steps):
        loss = step(lazygrad.tensor(images), lazygrad.tensor(labels)).item()
        if i == warmup - 1:
            first = snapshot()
    last = snapshot()
    assert loss < 0.5, f"the model did not train (loss {loss})"
    return first, last


def assert_flat(first: dict, last: dict, steps: int):
    """Live and pooled buffers exactly flat; Python objects and resident memory within noise."""
    assert last["live"] == first["live"], f"live device bytes grew by {last['live'] - first['live']} in {steps} steps"
    assert last["pool"] <= first["pool"], f"the buffer pool grew by {last['pool'] - first['pool']} bytes"
    assert last["objects"] - first["objects"] < 100, f"{last['objects'] - first['objects']} more Python objects"
    assert last["rss"] - first["rss"] < 4 * 2**20, f"resident memory grew by {(last['rss'] - first['rss']) >> 10} KiB"


def test_a_thousand_jitted_training_steps_keep_memory_flat():
    first, last = train(1000, use_jit=True)
    assert_flat(first, last, 950)


def test_training_steps_without_the_jit_keep_memory_flat():
    """200 steps rather than 1,000: without the JIT a step costs ~25 ms here, and a leak shows within 150."""
    first, last = train(200, use_jit=False)
    assert_flat(first, last, 150)


# --- no reference cycles -----------------------------------------------------------------------------


@pytest.mark.parametrize("use_jit", [False, True], ids=["eager", "jit"])
def test_a_training_step_leaves_no_reference_cycles(use_jit):
    """Nothing a step builds waits for the cyclic garbage collector. A tensor caught in a cycle stays alive
    until the collector runs, and while alive it counts as wanted: a schedule would realize it (so the
    kernels of a step would depend on when the collector last ran)."""
    lazygrad.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = lazygrad.tensor(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))

    def step(x):
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    if use_jit:
        step = lazygrad.jit(step)
    step(x).item()  # the first step builds caches and optimizer state, which live on
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):  # the JIT captures the second call and replays the third
            step(x).item()
        gc.collect()
        ours = [describe(o) for o in gc.garbage if made_by_lazygrad(o)]
        foreign = [describe(o) for o in gc.garbage if not made_by_lazygrad(o)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    # A cycle always holds an object that is not a plain container (an instance, a function, a cell): lazygrad's
    # show here by their type's or code's module. Cycles of other libraries' objects (e.g. functions a driver
    # binding generates with exec, freed when an old compiled kernel is dropped) are not the step's tensors.
    if foreign:
        print(f"cycles of other libraries' objects, not lazygrad's: {foreign[:8]}")
    assert not ours, f"{len(ours)} of lazygrad's objects in reference cycles, e.g. {ours[:8]}"


def made_by_lazygrad(obj) -> bool:
    if isinstance(obj, (dict, list, tuple, set)):
        return False  # containers: the cycle's other members say whose they are
    code = getattr(obj, "__code__", None)
    if code is not None:  # a function, a closure
        return f"{os.sep}lazygrad{os.sep}" in code.co_filename or f"{os.sep}backends{os.sep}" in code.co_filename
    if type(obj).__name__ == "cell":
        return False  # a recursive closure's cell: its function, also in the cycle, says whose it is
    return type(obj).__module__.split(".")[0] in ("lazygrad", "backends")


def describe(obj) -> str:
    code = getattr(obj, "__code__", None)
    if code is not None:
        return f"function {obj.__qualname__} ({code.co_filename}:{code.co_firstlineno})"
    if isinstance(obj, dict):
        return f"dict with keys {list(obj)[:5]}"
    return type(obj).__qualname__


# --- the cyclic garbage collector is paused while a step's graph is built or walked at once ----------------------


def _gc_probe(seen: list) -> lazygrad.Tensor:
    """x * 2 whose gradient rule notes whether the collector runs."""
    x = lazygrad.ones(3, requires_grad=True)

    def backward(grad):
        seen.append(gc.isenabled())
        if len(seen) > 1:
            raise ValueError("a rule that fails")
        return (grad * 2,)

    return lazygrad.Tensor._composite("probe", (x,), lambda: x * 2, backward)


def test_backward_step_and_realize_pause_the_collector_and_resume_it(monkeypatch):
    seen: list = []
    _gc_probe(seen).sum().backward()
    assert seen == [False] and gc.isenabled()
    param = nn.Parameter(lazygrad.ones(2))
    optimizer = optim.SGD([param], lr=0.1)

    def closure():
        seen.append(gc.isenabled())
        loss = (param * param).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert seen == [False, False] and gc.isenabled()
    run_plan = runtime.run_plan
    monkeypatch.setattr(runtime, "run_plan", lambda *a: (seen.append(gc.isenabled()), run_plan(*a))[1])
    (param + 1).realize()
    assert seen == [False, False, False] and gc.isenabled()


def test_a_modules_forward_pauses_the_collector_and_resumes_it_after_the_outermost_call():
    seen: list = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(gc.isenabled())
            return x * 2

    model = nn.Sequential(Probe(), nn.Sequential(Probe()))
    model(lazygrad.ones(2))
    assert seen == [False, False] and gc.isenabled()
    gc.disable()  # a collector the user paused stays paused
    try:
        model(lazygrad.ones(2))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_resumes_after_a_failing_backward_and_stays_paused_if_the_user_paused_it():
    seen: list = []
    out = _gc_probe(seen)
    out.sum().backward(retain_graph=True)
    with pytest.raises(ValueError, match="a rule that fails"):
        out.sum().backward()
    assert gc.isenabled()
    gc.disable()
    try:
        _gc_probe([]).sum().backward()
        assert not gc.isenabled()
    finally:
        gc.enable()

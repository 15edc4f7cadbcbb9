"""Views share memory with the tensor they view, in both directions, as PyTorch's do (torch is the oracle).

A view made by a movement op (reshape, slicing, permute, expand, squeeze, narrow, select, diagonal, ...), by
detach() or by .data sees every in-place update of its base, of itself and of its sibling views, realized or not,
under autograd and under @lazygrad.jit. Ops that copy in PyTorch (clone, contiguous of a non-contiguous view,
advanced indexing, flip, pad) keep copying. Shapes are shared between tests so that kernels are compiled once.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import lazygrad

SHAPE = (4, 6)


def start(lib, seed: int = 0, requires_grad: bool = False):
    values = np.random.default_rng(seed).uniform(-2, 2, SHAPE).astype(np.float32)
    return lib.tensor(values, requires_grad=requires_grad)


def values(t) -> np.ndarray:
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t.numpy()


def assert_same(ours, theirs, what: str = ""):
    np.testing.assert_allclose(values(ours), values(theirs), rtol=1e-5, atol=1e-5, err_msg=what)


# --- the repros ------------------------------------------------------------------------------------
def test_a_view_sees_a_later_update_of_its_base():
    for realize_first in (False, True):
        x, xt = lazygrad.arange(4.0), torch.arange(4.0)
        if realize_first:
            x.realize()
        v, vt = x.reshape(2, 2), xt.reshape(2, 2)
        x.add_(1)
        xt.add_(1)
        assert_same(v, vt, f"realized first: {realize_first}")


def test_a_realized_view_of_a_tensor_of_zeros_stays_a_view():
    """zeros() is a constant until realized: realizing a view of it gives the base its memory, shared by the view."""
    x, xt = lazygrad.zeros(*SHAPE), torch.zeros(*SHAPE)
    v, vt = x[1], xt[1]
    v.realize()
    x.add_(2)
    xt.add_(2)
    v.mul_(3)
    vt.mul_(3)
    assert_same(v, vt)
    assert_same(x, xt)


def test_siblings_and_chains_of_views_see_each_others_updates():
    ours, theirs = [], []
    for lib, out in ((lazygrad, ours), (torch, theirs)):
        x = start(lib)
        row, column, transposed = x[1], x[:, 2], x.t()
        corner = transposed[3:, :2]  # a view of a view
        row.mul_(10)
        corner.fill_(7)
        x.realize() if lib is lazygrad else None
        column.add_(row[3])  # reads a sibling (not where it writes: torch would read some elements updated)
        out += [x, row, column, transposed, corner]
    for a, b in zip(ours, theirs):
        assert_same(a, b)


def test_detach_and_data_alias_their_tensor():
    for attribute in ("detach", "data"):
        x, xt = start(lazygrad), start(torch)
        d = x.detach() if attribute == "detach" else x.data
        dt = xt.detach() if attribute == "detach" else xt.data
        d.add_(1)
        dt.add_(1)
        assert_same(x, xt, f"{attribute}: an update of the alias")
        x.mul_(3)
        xt.mul_(3)
        assert_same(d, dt, f"{attribute}: an update of the tensor")


def test_every_view_op_aliases():
    views = {
        "view": lambda t: t.view(2, 12),
        "flatten": lambda t: t.flatten(),
        "slice": lambda t: t[1:3, ::2],
        "select": lambda t: t.select(1, 4),
        "narrow": lambda t: t.narrow(1, 2, 3),
        "permute": lambda t: t.permute(1, 0),
        "unsqueeze": lambda t: t.unsqueeze(1),
        "squeeze": lambda t: t[:1].squeeze(0),
        "diagonal": lambda t: t.diagonal(1),
        "expand": lambda t: t[:, :1].expand(4, 3),
        "unbind": lambda t: t.unbind(1)[2],
        "split": lambda t: t.split(2, 1)[1],
        "chunk": lambda t: t.chunk(2, 0)[1],
        "movedim": lambda t: t.movedim(0, 1),
        "mT": lambda t: t.mT,
        "unflatten": lambda t: t.unflatten(1, (2, 3)),
        "view_as": lambda t: t.view_as(t.new_zeros(24)),
        "unfold": lambda t: t.unfold(1, 2, 3),  # windows that do not overlap can be written
    }
    for name, make in views.items():
        x, xt = start(lazygrad), start(torch)
        v, vt = make(x), make(xt)
        x.mul_(2)
        xt.mul_(2)
        assert_same(v, vt, f"{name}: the base updated")
        if name != "expand":  # several elements of an expanded view are one of the base's: torch refuses to write
            v.sub_(1)
            vt.sub_(1)
            assert_same(x, xt, f"{name}: the view updated")


def test_ops_that_copy_in_torch_still_copy():
    copies = {
        "clone": lambda t: t.clone(),
        "contiguous of a transpose": lambda t: t.t().contiguous(),
        "advanced indexing": lambda t: t[[0, 2]],
        "flip": lambda t: t.flip(0),
        "reshape of a transpose": lambda t: t.t().reshape(-1),
    }
    for name, make in copies.items():
        x, xt = start(lazygrad), start(torch)
        c, ct = make(x), make(xt)
        x.add_(5)
        xt.add_(5)
        c.mul_(0)
        ct.mul_(0)
        assert_same(c, ct, name)
        assert_same(x, xt, name)


def test_writing_an_expanded_view_or_overlapping_windows_is_an_error():
    x = start(lazygrad)
    with pytest.raises(RuntimeError, match="single memory location"):
        x[:, :1].expand(4, 3).add_(1)
    with pytest.raises(RuntimeError, match="single memory location"):
        x.unfold(1, 3, 1).mul_(2)  # (torch writes these, each element as often as windows hold it)


# --- autograd ----------------------------------------------------------------------------------------
def test_gradient_through_inplace_updates_of_views_matches_torch():
    grads = []
    for lib in (lazygrad, torch):
        x = start(lib, requires_grad=True)
        y = x.clone()
        y[0].mul_(2)
        y[:, 1].add_(y[:, 0])
        (y * y).sum().backward()
        grads.append((x.grad, y))
    assert_same(grads[0][1], grads[1][1], "values")
    assert_same(grads[0][0], grads[1][0], "gradient")


def test_a_leaf_view_updated_under_no_grad_and_its_gradient():
    results = []
    for lib in (lazygrad, torch):
        w = start(lib, requires_grad=True)
        top = w[:2]
        with lib.no_grad():
            top.mul_(0.5)  # as an init function would
        loss = (top * w[2:]).sum() + w.sum()
        loss.backward()
        results.append((w, top, w.grad))
    for a, b in zip(*results):
        assert_same(a, b)


def test_inplace_on_a_view_of_a_leaf_that_requires_grad_raises():
    w = start(lazygrad, requires_grad=True)
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        w[0].add_(1)


def test_a_value_saved_for_backward_then_modified_gets_the_gradient_of_the_values_at_the_time():
    """torch raises here ("modified by an inplace operation"); lazygrad keeps the value each op saw (a snapshot)
    and gives the gradient torch would have given had the update come after backward."""
    x = start(lazygrad, requires_grad=True)
    y = x * 1
    v = y[1:3]
    z = (v * v).sum()  # saves v
    y.add_(100)  # modifies v (through y)
    z.backward()
    xt = start(torch, requires_grad=True)
    (xt[1:3] * xt[1:3]).sum().backward()
    assert_same(x.grad, xt.grad)
    yt = xt.detach() * 1
    yt.add_(100)
    assert_same(v, yt[1:3], "the view still follows its base")


def test_a_saved_leaf_or_view_of_one_modified_in_place_raises_as_in_torch():
    """A leaf keeps no old values (an optimizer updates parameters every step): where torch raises, so does lazygrad,
    and where the gradient needs no value (an add), neither does."""
    for lib in (lazygrad, torch):
        x, w = start(lib), start(lib, 1, requires_grad=True)
        row = x[0]
        saved = (row * w[0]).sum()  # saves row: its value is w's gradient
        added = (row + w[1]).sum()  # saves nothing
        x.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            saved.backward()
        added.backward()
        np.testing.assert_allclose(values(w.grad)[1], np.ones(SHAPE[1]), err_msg=lib.__name__)


def test_a_non_leaf_modified_under_no_grad_keeps_its_value_for_earlier_graphs():
    """torch raises here; lazygrad gives the gradient of the values the graph saw (the update goes to new memory,
    so the realized old value stays)."""
    x = start(lazygrad, requires_grad=True)
    y = (x * 1).realize()
    z = (y[1:] * y[1:]).sum()
    with lazygrad.no_grad():
        y.mul_(10)
    z.backward()
    xt = start(torch, requires_grad=True)
    (xt[1:] * xt[1:]).sum().backward()
    assert_same(x.grad, xt.grad)
    assert_same(y, xt.detach() * 10)


def test_a_view_of_a_parameter_held_across_optimizer_steps_follows_it():
    results = []
    for lib in (lazygrad, torch):
        p = start(lib, requires_grad=True)
        transposed = p.t()
        opt = lib.optim.SGD([p], lr=0.1)
        for _ in range(3):
            loss = (transposed * transposed).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append((p, transposed))
    assert_same(results[0][0], results[1][0], "the parameter")
    assert_same(results[0][1], results[1][1], "its view")
    assert not results[0][1]._snapshots, "a view of a leaf keeps no old values"


# --- a fuzzer: random view chains and in-place updates, every live tensor checked after each step ---------
def _view_recipes(shape: tuple) -> list:
    """(name, make, writable) for the views of a tensor of this shape (the same few recur: shared kernels)."""
    if len(shape) == 2:
        rows, cols = shape
        recipes = [
            ("row", lambda t: t[rows - 1], True),
            ("columns", lambda t: t[:, 1:], True),
            ("t", lambda t: t.t(), True),
            ("every other row", lambda t: t[::2], True),
            ("flatten", lambda t: t.flatten(), True),
            ("detach", lambda t: t.detach(), True),
            ("expand", lambda t: t[:1].expand(3, cols), False),
            ("unsqueeze", lambda t: t.unsqueeze(0)[0], True),
        ]
        if rows > 1 and cols > 1:
            recipes.append(("diagonal", lambda t: t.diagonal(), True))
        return recipes
    (n,) = shape
    recipes = [("tail", lambda t: t[1:], True), ("detach", lambda t: t.detach(), True)]
    if n % 2 == 0:
        recipes.append(("halves", lambda t: t.view(2, n // 2), True))
    return recipes


def _inplace_recipes(shape: tuple, rng: np.random.Generator, weights: dict | None = None) -> list:
    """(name, apply(tensor, lib)) of updates that torch and lazygrad both allow on a tensor of this shape; with
    `weights` (per library a tensor of SHAPE, which may require grad) also updates by a piece of it."""
    other = rng.uniform(-1, 1, shape).astype(np.float32)
    mask = rng.random(shape) < 0.5
    scalar = float(np.round(rng.uniform(-2, 2), 2))
    recipes = [
        ("add_", lambda t, lib: t.add_(scalar)),
        ("mul_", lambda t, lib: t.mul_(lib.tensor(other))),
        ("copy_", lambda t, lib: t.copy_(lib.tensor(other))),
        ("fill_", lambda t, lib: t.fill_(scalar)),
        ("zero_", lambda t, lib: t.zero_()),
        ("masked_fill_", lambda t, lib: t.masked_fill_(lib.tensor(mask), scalar)),
        ("clamp_", lambda t, lib: t.clamp_(-0.5, 0.5)),
        ("setitem", lambda t, lib: t.__setitem__(0, scalar)),
    ]
    if len(shape) == 2:
        recipes.append(("setitem rows", lambda t, lib: t.__setitem__(slice(1, None), lib.tensor(other[1:]))))
    if weights is not None:
        numel = int(np.prod(shape))

        def piece(lib):
            return weights[lib].reshape(-1)[:numel].reshape(shape)

        recipes += [
            ("add_ weights", lambda t, lib: t.add_(piece(lib))),
            ("mul_ weights", lambda t, lib: t.mul_(piece(lib))),
            ("copy_ weights", lambda t, lib: t.copy_(piece(lib) * 2)),
        ]
    return recipes


def _run_program(seed: int, steps: int, requires_grad: bool = False):
    """The same random program on lazygrad and torch: views of views, in-place updates, realizes sprinkled in.
    Every live tensor is compared with torch after each step (in one kernel: the values concatenated)."""
    rng = random.Random(seed)
    data = np.random.default_rng(seed)
    leaves = {lib: start(lib, seed, requires_grad) for lib in (lazygrad, torch)}
    weights = {lib: start(lib, seed + 1000, requires_grad) for lib in (lazygrad, torch)}
    live = [({lib: leaves[lib].clone() if requires_grad else leaves[lib] for lib in leaves}, True, "base")]
    for step in range(steps):
        tensors, writable, name = rng.choice(live)
        shape = tuple(tensors[torch].shape)
        action = rng.random()
        if action < 0.4 and len(live) < 6:
            view_name, make, view_writable = rng.choice(_view_recipes(shape))
            live.append(({lib: make(t) for lib, t in tensors.items()}, writable and view_writable, view_name))
            what = f"{view_name} of {name}"
        elif action < 0.85 and writable:
            update_name, apply = rng.choice(_inplace_recipes(shape, data, weights))
            for lib, t in tensors.items():
                apply(t, lib)
            what = f"{update_name} on {name}"
        else:
            tensors[lazygrad].realize()
            what = f"realize {name}"
        ours = lazygrad.cat([t[lazygrad].reshape(-1) for t, _, _ in live]).numpy()
        theirs = torch.cat([t[torch].detach().reshape(-1) for t, _, _ in live]).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=f"seed {seed}, step {step}: {what}")
    return leaves, weights, live


@pytest.mark.parametrize("seed", range(6))
def test_random_view_chains_and_updates_match_torch(seed):
    _run_program(seed, steps=7)


@pytest.mark.parametrize("seed", range(12))
def test_random_view_chains_and_updates_give_torchs_gradients(seed):
    leaves, weights, live = _run_program(100 + seed, steps=5, requires_grad=True)
    projections = [np.random.default_rng(seed).uniform(-1, 1, t[torch].shape).astype(np.float32) for t, _, _ in live]
    for lib in (lazygrad, torch):
        loss = sum((t[lib] * lib.tensor(p)).sum() for (t, _, _), p in zip(live, projections) if t[lib].requires_grad)
        if isinstance(loss, int):
            pytest.skip("this program left no tensor that requires grad")
        try:
            loss.backward()
        except RuntimeError as error:  # torch refuses a value saved for backward and modified since
            assert "modified by an inplace operation" in str(error)
            pytest.skip(f"torch raises for this program (a saved value modified in place): {error}"[:200])
    for name, pair in (("the leaf", leaves), ("the weights", weights)):
        assert (pair[lazygrad].grad is None) == (pair[torch].grad is None), f"{name}: a gradient on one side only"
        if pair[torch].grad is not None:
            assert_same(pair[lazygrad].grad, pair[torch].grad, f"{name}: gradient")


# --- the step JIT ------------------------------------------------------------------------------------
def test_views_held_across_jitted_steps_see_each_replay():
    x = start(lazygrad).realize()
    expected = start(torch)
    row, column, transposed = x[1], x[:, 2], x.t()

    @lazygrad.jit
    def step(y):
        x[0].add_(y)  # through a view into x's buffer: every replay writes it
        column.mul_(2)  # a second update of x in the step
        return (row * 2).sum()

    for call in range(4):
        y = np.full(SHAPE[1], call + 1, dtype=np.float32)
        total = step(lazygrad.tensor(y))
        expected[0].add_(torch.tensor(y))
        expected[:, 2].mul_(2)
        np.testing.assert_allclose(total.item(), (expected[1] * 2).sum().item(), rtol=1e-5, err_msg=f"call {call}")
        assert_same(x, expected, f"call {call}: the base")
        assert_same(row, expected[1], f"call {call}: a row")
        assert_same(column, expected[:, 2], f"call {call}: a column")
        assert_same(transposed, expected.t(), f"call {call}: the transpose")


@pytest.mark.parametrize("seed", range(5, 8))  # seeds whose programs update the base twice in a step
def test_random_updates_through_views_replay_under_jit(seed):
    """A random program of updates through views of a realized base, jitted: each replay matches torch, for the
    base and for every view held across the calls."""
    rng, data = random.Random(seed), np.random.default_rng(seed)
    live = [({lazygrad: start(lazygrad, seed).realize(), torch: start(torch, seed)}, True)]
    for _ in range(3):
        tensors, writable = rng.choice(live)
        _, make, view_writable = rng.choice(_view_recipes(tuple(tensors[torch].shape)))
        live.append(({lib: make(t) for lib, t in tensors.items()}, writable and view_writable))
    program = []
    for _ in range(3):
        index = rng.choice([i for i, (_, writable) in enumerate(live) if writable])
        program.append((index, rng.choice(_inplace_recipes(tuple(live[index][0][torch].shape), data))))

    def body(lib, y):
        live[0][0][lib].add_(y)  # what changes from call to call: the argument
        for index, (_, apply) in program:
            apply(live[index][0][lib], lib)
        return live[-1][0][lib].sum()

    step = lazygrad.jit(lambda y: body(lazygrad, y))
    for call in range(4):
        y = np.full(SHAPE, call + 1, dtype=np.float32)
        total = step(lazygrad.tensor(y))
        expected = body(torch, torch.tensor(y))
        what = f"seed {seed}, call {call}, program {[(i, name) for i, (name, _) in program]}"
        np.testing.assert_allclose(total.item(), expected.item(), rtol=1e-5, atol=1e-4, err_msg=what)
        for index, (tensors, _) in enumerate(live):
            assert_same(tensors[lazygrad], tensors[torch], f"{what}: tensor {index}")

"""Symbolic sizes: `lazygrad.Variable` as a slice start and stop, views of symbolic offset and size, kernels that
take the variable's value as an int argument (compiled once for every value), the JIT replaying with a new value,
and the clear errors for what symbolic sizes do not support (docs/symbolic.md).

Every kernel here reads a (2, 8, 4) float32 buffer through views with `n` in [1, 8] or `pos` in [0, 7], so the
kernels compile once per backend and the tests share them."""

import numpy as np
import pytest

import lazygrad
from lazygrad import Variable

torch = pytest.importorskip("torch")

SLOTS = 8
N = Variable("n", 1, SLOTS)  # a length: 1..8 slots
POS = Variable("pos", 0, SLOTS - 1)  # a slot


def _data(seed=0):
    return np.random.default_rng(seed).standard_normal((2, SLOTS, 4)).astype(np.float32)


def test_reduces_softmax_and_attention_over_a_symbolic_length_match_torch_and_compile_once():
    data = _data()
    x = lazygrad.tensor(data).realize()
    query = lazygrad.tensor(data[:, :1] * 0.5).realize()
    compiled_after_first = 0
    for value in (1, SLOTS // 2, SLOTS):  # the first slot only, half, all of them
        n = N.bind(value)
        with lazygrad.profile(timed=False) as p:
            keys = x[:, :n]  # (2, n, 4): a view of symbolic size
            assert keys.shape[1] == n
            total = keys.sum(1).numpy()
            largest = keys.amax(1).numpy()
            weights = (query @ keys.transpose(1, 2)).softmax(-1)  # (2, 1, n)
            attended = (weights @ keys).numpy()  # (2, 1, 4)
        if value != 1:
            compiled_after_first += p.compiled
        reference = torch.tensor(data[:, :value])
        np.testing.assert_allclose(total, reference.sum(1).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(largest, reference.amax(1).numpy())
        expected = torch.softmax(torch.tensor(data[:, :1] * 0.5) @ reference.transpose(1, 2), -1) @ reference
        np.testing.assert_allclose(attended, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert compiled_after_first == 0, "a kernel was compiled again for another value of the variable"


def test_a_symbolic_reduce_reads_only_the_first_n_slots():
    # slots n.. hold NaN: a kernel that read one of them (looping to the bound, not the value) would return NaN
    for value in (1, 5):
        data = _data(1)
        data[:, value:] = np.nan
        x = lazygrad.tensor(data).realize()
        n = N.bind(value)
        keys = x[:, :n]
        np.testing.assert_allclose(keys.sum(1).numpy(), data[:, :value].sum(1), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(keys.amax(1).numpy(), data[:, :value].max(1))


def test_assign_into_a_symbolic_slot_writes_that_slot_only():
    data = _data(2)
    cache = lazygrad.tensor(data).realize()
    expected = data.copy()
    rng = np.random.default_rng(3)
    for value in (0, 3, SLOTS - 1):  # the first, a middle and the last slot
        new = rng.standard_normal((2, 1, 4)).astype(np.float32)
        pos = POS.bind(value)
        cache[:, pos : pos + 1].assign(lazygrad.tensor(new))
        expected[:, value : value + 1] = new
        # read after the write, in the same graph: the sum of the slots up to pos sees the new value
        np.testing.assert_allclose(
            cache[:, : pos + 1].sum(1).numpy(), expected[:, : value + 1].sum(1), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_array_equal(cache.numpy(), expected)  # every other slot as it was


def test_jit_replays_a_capture_with_the_value_bound_in_the_call():
    data = _data(4)
    x = lazygrad.tensor(data).realize()

    @lazygrad.jit
    def prefix_sum(source, n):
        return source[:, :n].sum(1).realize()

    compiled_later = 0
    for value in (2, 3, 1, SLOTS, 5):
        with lazygrad.profile(timed=False) as p:
            out = prefix_sum(x, N.bind(value)).numpy()
        if value != 2:
            compiled_later += p.compiled
        np.testing.assert_allclose(out, data[:, :value].sum(1), rtol=1e-5, atol=1e-6)
    assert prefix_sum.replays == 3 and len(prefix_sum.captures) == 1  # one capture: the value is not its key
    assert compiled_later == 0


# --- what is not supported: clear errors (no kernels run) --------------------------------------------------------
@pytest.mark.backend_independent
def test_binding_a_value_outside_the_bounds_names_the_variable():
    with pytest.raises(ValueError, match=r"'n' bound to 9, outside its bounds \[1, 8\]"):
        N.bind(SLOTS + 1)
    with pytest.raises(ValueError, match="outside its bounds"):
        POS.bind(-1)
    with pytest.raises(TypeError, match="binds an int"):
        N.bind(2.5)
    with pytest.raises(ValueError, match="loop names"):
        Variable("r0", 0, 3)  # the kernels' own loop variables


@pytest.mark.backend_independent
def test_a_slice_that_could_leave_the_dim_is_refused_for_every_value():
    x = lazygrad.zeros(2, SLOTS, 4)
    with pytest.raises(IndexError, match=r"n.*within the dim"):
        x[:, 1 : N.bind(3) + 1]  # stop up to 9 > 8
    with pytest.raises(IndexError, match="at least one element"):
        x[:, : POS.bind(2)]  # a length pos would be 0 at pos = 0: a symbolic size is at least 1


@pytest.mark.backend_independent
def test_unsupported_ops_on_symbolic_shapes_raise_naming_the_shape_and_variable():
    x = lazygrad.zeros(2, SLOTS, 4).realize()
    keys = x[:, : N.bind(3)]
    with pytest.raises(NotImplementedError, match=r"symbolic: n in \[1, 8\]"):
        keys.reshape(2, -1)  # merging the symbolic dim with another
    with pytest.raises(NotImplementedError, match=r"numpy\(\) of a tensor of symbolic shape"):
        keys.numpy()
    with pytest.raises(NotImplementedError, match="pad"):
        keys.pad((0, 0, 0, 1))
    with pytest.raises(NotImplementedError, match="argmax, cumsum"):
        keys.argmax(1)
    leaf = lazygrad.zeros(2, SLOTS, 4, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backward through a view with a Variable"):
        leaf[:, : N.bind(3)]
    with pytest.raises(NotImplementedError, match="mean over a symbolic size"):
        keys.mean(1)


def test_setitem_and_inplace_ops_on_a_symbolic_view_write_through_it():
    data = _data(5)
    cache = lazygrad.tensor(data).realize()
    expected = data.copy()
    pos = POS.bind(2)
    cache[:, pos] = lazygrad.tensor(np.full((2, 4), 7.0, np.float32))  # an index: the slot's dim squeezed
    expected[:, 2] = 7.0
    cache[:, : N.bind(3)].add_(1.0)  # slots 0..2
    expected[:, :3] += 1.0
    np.testing.assert_array_equal(cache.numpy(), expected)


@pytest.mark.backend_independent
def test_an_unbound_variable_in_a_kernel_is_refused():
    x = lazygrad.zeros(2, SLOTS, 4).realize()
    with pytest.raises(ValueError, match="'n' has no value"):
        x[:, :N].sum(1).numpy()


@pytest.mark.backend_independent
def test_jit_refuses_to_return_a_tensor_of_symbolic_shape():
    x = lazygrad.zeros(2, SLOTS, 4).realize()
    step = lazygrad.jit(lambda source, n: source[:, :n] * 2)
    step(x, N.bind(2))  # the first call runs the function as it is
    with pytest.raises(NotImplementedError, match="returned a view made with a Variable"):
        step(x, N.bind(3))  # the capture: a replay would return the captured call's shape


@pytest.mark.backend_independent
def test_the_reference_interpreter_runs_kernels_over_a_symbolic_length():
    # the IR's specification: a `variable` argument and a loop bounded by it (backends/reference.py)
    data = _data(6)
    x = lazygrad.tensor(data, device="reference").realize()
    for value in (1, 6):
        n = N.bind(value)
        np.testing.assert_allclose(x[:, :n].sum(1).numpy(), data[:, :value].sum(1), rtol=1e-5, atol=1e-6)


def test_indexes_beside_a_variable_and_a_full_reduction_of_a_symbolic_length():
    data = _data(7)
    x = lazygrad.tensor(data).realize()
    n = N.bind(3)
    np.testing.assert_allclose(x[-1, :n].sum(0).numpy(), data[-1, :3].sum(0), rtol=1e-5)  # a negative int index
    np.testing.assert_allclose(x[0, :n, -1].sum().numpy(), data[0, :3, -1].sum(), rtol=1e-5)  # all dims reduced

"""lazygrad.random: the device generator (Threefry-2x32-20 as lazy integer ops) against its published known answers
and a numpy reference; the distributions of rand, randn and randint (moments, Kolmogorov-Smirnov, chi-square);
independence of successive draws and of seeds; the same stream on every backend; and draws that advance under the
JIT (issue 13: random numbers froze in replayed calls, so dropout applied one mask forever)."""

import numpy as np
import pytest
from scipy import stats

import lazygrad
from lazygrad import backends, nn
from lazygrad import random as lg_random

N = 200_000


def reference_words(seed: int, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32-20 of counters start .. start + n - 1, in numpy (the same function run on host arrays)."""
    counter = np.arange(start, start + n, dtype=np.int64)
    key = lg_random._key_words(seed)
    return lg_random.threefry2x32(key[0], key[1], counter & lg_random.MASK, counter >> 32)


# Random123's known-answer vectors for threefry2x32_20 (also JAX's): (key, counter) -> output words
KNOWN_ANSWERS = [
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("key, counter, expected", KNOWN_ANSWERS)
def test_threefry_gives_the_published_known_answers_on_the_device(key, counter, expected):
    words = [lazygrad.tensor(np.array([v], np.int64)) for v in (*key, *counter)]
    assert tuple(int(w.item()) for w in lg_random.threefry2x32(*words)) == expected
    host = [np.int64(v) for v in (*key, *counter)]
    assert tuple(int(w) for w in lg_random.threefry2x32(*host)) == expected


def test_draws_are_the_reference_stream_and_advance_the_counter():
    lazygrad.manual_seed(1234)
    first = [w.numpy() for w in lg_random.random_words(3000, lazygrad.Device.DEFAULT)]
    second = [w.numpy() for w in lg_random.random_words(5, lazygrad.Device.DEFAULT)]
    for actual, expected in zip(first + second, reference_words(1234, 0, 3000) + reference_words(1234, 3000, 5)):
        np.testing.assert_array_equal(actual, expected)


def test_rand_is_uniform():
    lazygrad.manual_seed(0)
    x = lazygrad.rand(N).numpy().astype(np.float64)
    assert x.dtype == np.float64 and x.min() >= 0 and x.max() < 1
    assert abs(x.mean() - 0.5) < 4 * np.sqrt(1 / 12 / N)
    assert abs(x.var() - 1 / 12) < 0.002
    assert stats.kstest(x, "uniform").pvalue > 1e-3


def test_randn_is_standard_normal():
    lazygrad.manual_seed(0)
    x = lazygrad.randn(N).numpy().astype(np.float64)
    assert abs(x.mean()) < 4 / np.sqrt(N)
    assert abs(x.var() - 1) < 0.015
    assert abs(stats.skew(x)) < 0.03 and abs(stats.kurtosis(x)) < 0.06
    assert stats.kstest(x, "norm").pvalue > 1e-3


def test_normal_and_uniform_scale_and_shift():
    lazygrad.manual_seed(2)
    x = lazygrad.Tensor.normal(N, mean=3.0, std=0.5).numpy()
    y = lazygrad.Tensor.uniform(N, low=-2.0, high=4.0).numpy()
    assert abs(x.mean() - 3) < 0.01 and abs(x.std() - 0.5) < 0.01
    assert y.min() >= -2 and y.max() < 4 and abs(y.mean() - 1) < 0.03


def test_randint_covers_its_range_evenly():
    lazygrad.manual_seed(0)
    x = lazygrad.randint(-3, 7, (N,)).numpy()
    assert x.dtype == np.int64 and x.min() == -3 and x.max() == 6
    counts = np.bincount(x + 3, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_successive_draws_and_different_seeds_are_independent():
    lazygrad.manual_seed(5)
    a, b = lazygrad.rand(N).numpy(), lazygrad.rand(N).numpy()
    lazygrad.manual_seed(6)
    c = lazygrad.rand(N).numpy()
    for x, y in ((a, b), (a, c), (b, c)):
        assert abs(np.corrcoef(x, y)[0, 1]) < 4 / np.sqrt(N)
        assert stats.ks_2samp(x, y).pvalue > 1e-3  # same distribution
    # neighbouring elements (consecutive counters) are uncorrelated too
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 4 / np.sqrt(N)


def test_manual_seed_reproduces_the_stream():
    lazygrad.manual_seed(42)
    first = [lazygrad.rand(4, 5).numpy(), lazygrad.randn(7).numpy(), lazygrad.randint(0, 100, (9,)).numpy()]
    lazygrad.manual_seed(42)
    again = [lazygrad.rand(4, 5).numpy(), lazygrad.randn(7).numpy(), lazygrad.randint(0, 100, (9,)).numpy()]
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(lazygrad.rand(4, 5).numpy(), first[0])


def test_dtypes_shapes_and_gradients():
    x = lazygrad.rand(2, 3, dtype=lazygrad.float16, requires_grad=True)
    assert x.shape == (2, 3) and x.dtype == lazygrad.float16 and x.requires_grad
    assert lazygrad.randn((4, 1), dtype=lazygrad.float64).numpy().dtype == np.float64
    assert lazygrad.rand(0).numpy().shape == (0,)
    w = lazygrad.randn(3, requires_grad=True)
    (w * 2).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [2, 2, 2])


def test_a_draw_is_a_kernel_that_fuses_with_its_consumer():
    """No host upload of the numbers: a small kernel advances the counter, and the numbers are computed inside the
    kernel that uses them."""
    lazygrad.rand(10).numpy()  # the generator's state exists
    with lazygrad.profile(timed=False) as profile:
        total = (lazygrad.rand(100_000) * 2).sum()
        total.numpy()
    # the counter's advance (and snapshot), the key schedule's scalar, and the sum's two stages with the draw fused
    # into the first: no kernel stores the 100,000 numbers
    assert profile.kernels <= 4
    assert profile.copies <= 3  # two small index uploads and the result; not 100,000 numbers


@pytest.mark.backend_independent
def test_the_stream_is_the_same_on_every_backend():
    values = {}
    for name in backends.REGISTRY:
        try:
            backends.get(name)
        except backends.BackendUnavailable:
            continue
        lazygrad.manual_seed(9)
        values[name] = [
            lazygrad.rand(5000, device=name).numpy(),
            lazygrad.randn(5000, device=name).numpy(),
            lazygrad.randint(0, 1000, (5000,), device=name).numpy(),
        ]
    if len(values) < 2:
        pytest.skip("one backend only")
    first, *others = values.values()
    for other in others:
        np.testing.assert_array_equal(other[0], first[0])  # exact: uniforms are integers over 2**24
        np.testing.assert_allclose(other[1], first[1], rtol=1e-5, atol=1e-5)  # log, sqrt, cos may round apart
        np.testing.assert_array_equal(other[2], first[2])


# --- under the JIT -------------------------------------------------------------------------------------------


def test_dropout_draws_a_new_mask_on_every_replayed_call():
    """Issue 13: random tensors were host uploads a capture did not record, so nn.Dropout applied the same mask on
    every replayed call."""
    dropout = nn.Dropout(0.5)
    x = lazygrad.ones(64).contiguous().realize()

    def apply(x):
        return dropout(x) * 1

    lazygrad.manual_seed(11)
    eager = [apply(x).numpy() for _ in range(6)]
    jitted = lazygrad.jit(apply)
    lazygrad.manual_seed(11)
    replayed = [jitted(x).numpy() for _ in range(6)]
    assert jitted.replays == 4
    for step, (a, b) in enumerate(zip(replayed, eager)):
        np.testing.assert_array_equal(a, b, err_msg=f"call {step + 1}")
    masks = {tuple(m != 0) for m in replayed}
    assert len(masks) == 6
    assert all(set(np.unique(m)) <= {0.0, 2.0} for m in replayed)


def test_manual_seed_between_replays_restarts_the_stream():
    noise = lazygrad.jit(lambda x: x + lazygrad.rand(8))
    zero = lazygrad.zeros(8).contiguous().realize()
    for _ in range(3):
        noise(zero)
    lazygrad.manual_seed(3)
    a = [noise(zero).numpy() for _ in range(2)]
    lazygrad.manual_seed(3)
    b = [noise(zero).numpy() for _ in range(2)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.array_equal(a[0], a[1])


def test_a_generator_first_used_inside_a_capture_still_advances():
    draw = lazygrad.jit(lambda x: x + lazygrad.rand(4))
    zero = lazygrad.zeros(4).contiguous().realize()
    draw(zero)
    lg_random._states.clear()  # the generator's state is created again by the captured call itself
    values = [draw(zero).numpy() for _ in range(4)]
    assert draw.replays == 3
    assert len({tuple(v) for v in values}) == 4

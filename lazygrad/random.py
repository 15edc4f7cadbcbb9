"""Random numbers on the device: the Threefry-2x32 counter-based generator (20 rounds) written as lazy integer ops.

Element i of a draw is Threefry(key, counter + i): a pure function of the key (from the seed), a counter that lives
in a device buffer, and i. So random numbers are kernels that fuse with their consumers (a dropout mask is computed
inside the kernel that applies it), the stream is the same on every backend (integers, and uniforms made exactly
from them), `manual_seed` makes it reproducible, and a JIT replay advances it: each draw advances the device counter
with a small kernel, which the capture records like any other.

Threefry-2x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; as JAX's PRNG) needs only
32-bit additions, rotations and xors. lazygrad has no unsigned 32-bit type, so on the device the rounds run in int32,
whose additions and left shifts wrap like uint32's (two's complement), with each right shift masked to its logical
result; words go in and come out as int64 values in [0, 2**32). On the host (numpy, the tests' reference) the same
function holds the words in int64 masked to 32 bits after each addition: sums stay below 2**33 and shifted words
below 2**61, never overflowing. (The device ran the int64 form until 2026-12-02: half the lanes a vector and three
times the instructions; rand(8, 3, 224, 224) on one thread took 3.02 ms, against 1.29 ms in int32.)

Per draw of n numbers: a kernel advances the counter by n and snapshots its old value into a buffer of its own (so
the lazy draw reads memory no later draw overwrites); the numbers themselves stay lazy.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from lazygrad import dtype as dt
from lazygrad.shape import shape_from_args

MASK = 0xFFFFFFFF
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
PARITY = 0x1BD11BDA  # Threefry's key-schedule constant
ROW = 1024  # a draw's indices are row * ROW + column: two small index uploads instead of one of n

_seed = [0]
_states: dict = {}  # device -> _DeviceState


class _DeviceState:
    """The generator's state on one device: its key (two 32-bit words) and its counter, both device buffers, so a
    reseed or an advance changes data, never a kernel."""

    def __init__(self, device: str):
        from lazygrad.tensor import Tensor

        # host uploads, not kernels: a JIT capture that creates the state must not replay its creation
        self.key = Tensor(_key_words(_seed[0]), device=device).realize()
        self.counter = Tensor(np.zeros(1, np.int64), device=device).realize()

    def reseed(self, seed: int) -> None:
        self.key.lazydata.base.buffer.copy_in(_key_words(seed))
        self.counter.lazydata.base.buffer.copy_in(np.zeros(1, np.int64))


def _key_words(seed: int) -> np.ndarray:
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF  # torch accepts negative seeds too
    return np.array([seed & MASK, seed >> 32], np.int64)


def manual_seed(seed: int) -> None:
    """Restart every device's stream from seed."""
    _seed[0] = int(seed)
    for state in _states.values():
        state.reseed(seed)


def initial_seed() -> int:
    return _seed[0]


def _state(device: str) -> _DeviceState:
    if device not in _states:
        _states[device] = _DeviceState(device)
    return _states[device]


def threefry2x32(key0, key1, count0, count1, constant=lambda value, dtype=None: value):
    """The two 32-bit output words of Threefry-2x32-20 for each counter pair (count0, count1): int64 tensors (or
    numpy arrays) of 32-bit values, all of one shape. constant(value, dtype) gives an integer in the operands' form (a
    tensor of their shape saves the broadcasting of a Python number at each of the ~150 ops); dtype is int32 on the
    device path, None (the operands' int64) on the host's."""
    if isinstance(key0, (np.ndarray, np.integer, int)):
        return _threefry2x32_masked(key0, key1, count0, count1)
    return _threefry2x32_wrapping(key0, key1, count0, count1, constant)


def _threefry2x32_wrapping(key0, key1, count0, count1, constant):
    """Tensors: the rounds in int32 arithmetic, which wraps as uint32's does; a rotation's right shift is arithmetic in
    int32, so its sign copies are masked off (LLVM turns the pattern into one rotate instruction)."""
    i32 = dt.int32

    def rotate_left(x, bits: int):
        return (x << constant(bits, i32)) | ((x >> constant(32 - bits, i32)) & constant((1 << bits) - 1, i32))

    words = (v.cast(i32) for v in (key0, key1, count0, count1))  # int64 -> int32 wraps
    x0, x1 = _threefry_rounds(*words, operator.add, rotate_left, lambda value: constant(value, i32))
    return tuple(x.cast(dt.int64) & constant(MASK) for x in (x0, x1))


def _threefry2x32_masked(key0, key1, count0, count1):
    """numpy: the words in int64, masked to 32 bits after each addition."""

    def rotate_left(x, bits: int):
        return ((x << bits) | (x >> (32 - bits))) & MASK

    return _threefry_rounds(key0, key1, count0, count1, lambda a, b: (a + b) & MASK, rotate_left, lambda value: value)


def _threefry_rounds(key0, key1, count0, count1, add, rotate_left, number):
    """Threefry-2x32-20's key schedule and rounds, in whatever arithmetic `add` (32-bit, wrapping), `rotate_left` and
    `number` (a constant in the operands' form) give."""
    keys = (key0, key1, key0 ^ key1 ^ number(PARITY))
    x0, x1 = add(count0, keys[0]), add(count1, keys[1])
    for block in range(5):
        for bits in ROTATIONS[block % 2]:
            x0 = add(x0, x1)
            x1 = rotate_left(x1, bits) ^ x0
        x0 = add(x0, keys[(block + 1) % 3])
        x1 = add(x1, keys[(block + 2) % 3] + number(block + 1))
    return x0, x1


def random_words(n: int, device: str):
    """(word0, word1): int64 tensors of shape (n,) holding the next n pairs of random 32-bit words of device's stream;
    the stream advances by n."""
    from lazygrad.tensor import Tensor, realize

    state = _state(device)
    advanced = state.counter.assign(state.counter + n)
    start = (advanced - n).contiguous()
    realize(advanced, start)  # now: a later draw advances the counter again
    if n == 0:
        empty = Tensor.zeros(0, dtype=dt.int64, device=device)
        return empty, empty
    rows = -(-n // ROW) if n > ROW else 1
    columns = ROW if n > ROW else n
    row_starts = Tensor.arange(rows, device=device).reshape(rows, 1) * columns
    index = (row_starts + Tensor.arange(columns, device=device).reshape(1, columns)).reshape(rows * columns)[:n]
    counter = start.expand(n) + index
    constants: dict = {}

    def constant(value: int, dtype=None):
        dtype = dtype or dt.int64
        if (value, dtype) not in constants:
            constants[value, dtype] = Tensor.full((n,), value, dtype=dtype, device=device)
        return constants[value, dtype]

    key0, key1 = (state.key[i].reshape(1).expand(n) for i in range(2))
    return threefry2x32(key0, key1, counter & constant(MASK), counter >> constant(32), constant)


def _float_dtype(dtype):
    return dt.to_dtype(dtype) if dtype is not None else dt.default_float


def uniform_unit(shape, device: str):
    """float32 numbers in [0, 1): the top 24 bits of a word over 2**24, exact in float32 on every backend."""
    word0, _ = random_words(math.prod(shape), device)
    return ((word0 >> 8).cast(dt.float32) * (1.0 / (1 << 24))).reshape(shape)


# Building a draw's graph (~250 integer ops) and scheduling it costs tens of milliseconds of Python. Outside a JIT
# capture, a draw of a size and kind drawn before (a data loader's batch, noise of one shape) is replayed by a step
# JIT of its own: its kernels run again, advancing the same counter, with no graph built. Inside a capture a draw
# stays lazy (the capture records its kernels, and it fuses with its consumer); big draws too (their arithmetic
# outweighs the graph), and draws of shapes seen once (a model's initialization) run lazily on their first two calls.
REPLAYED_MAX_ELEMENTS = 1 << 22
REPLAYED_MAX_FUNCTIONS = 16
_replayed: dict = {}  # (kind, shape, dtype, device, extra) -> JitFunction, least recently used first


def _drawn(key: tuple, build):
    from lazygrad import runtime
    from lazygrad.jit import JitFunction

    if runtime.CAPTURES or math.prod(key[1]) > REPLAYED_MAX_ELEMENTS:
        return build()
    function = _replayed.pop(key, None) or JitFunction(build)
    _replayed[key] = function  # most recently used last
    if len(_replayed) > REPLAYED_MAX_FUNCTIONS:
        del _replayed[next(iter(_replayed))]
    return function()


def _normal(shape, device: str):
    """Standard normal float32 numbers by the Box-Muller transform of the two words of each counter."""
    word0, word1 = random_words(math.prod(shape), device)
    radius_uniform = ((word0 >> 8) + 1).cast(dt.float32) * (1.0 / (1 << 24))  # (0, 1]: its log is finite
    angle_uniform = (word1 >> 8).cast(dt.float32) * (1.0 / (1 << 24))
    return ((radius_uniform.log() * -2.0).sqrt() * (angle_uniform * (2 * math.pi)).cos()).reshape(shape)


def _integers(low: int, high: int, shape, device: str):
    """Integers in [low, high): 63 random bits modulo the range (a bias below range / 2**63)."""
    word0, word1 = random_words(math.prod(shape), device)
    bits = ((word1 & 0x7FFFFFFF) << 32) | word0
    return (bits % (high - low) + low).reshape(shape)


def rand(*shape, dtype=None, device=None, requires_grad: bool = False):
    from lazygrad.device import canonical_device

    shape, device, dtype = shape_from_args(shape), canonical_device(device), _float_dtype(dtype)
    out = _drawn(("rand", shape, dtype, device), lambda: uniform_unit(shape, device).cast(dtype))
    return out.requires_grad_() if requires_grad else out


def randn(*shape, dtype=None, device=None, requires_grad: bool = False):
    from lazygrad.device import canonical_device

    shape, device, dtype = shape_from_args(shape), canonical_device(device), _float_dtype(dtype)
    out = _drawn(("randn", shape, dtype, device), lambda: _normal(shape, device).cast(dtype))
    return out.requires_grad_() if requires_grad else out


def randint(low: int, high: int, shape, dtype=None, device=None):
    from lazygrad.device import canonical_device

    shape, device = shape_from_args(shape), canonical_device(device)
    dtype = dt.to_dtype(dtype) if dtype is not None else dt.int64
    if high <= low:
        raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={low} >= to={high}")
    key = ("randint", shape, dtype, device, (int(low), int(high)))
    return _drawn(key, lambda: _integers(int(low), int(high), shape, device).cast(dtype))


def uniform(*shape, low: float = 0.0, high: float = 1.0, dtype=None, device=None, requires_grad: bool = False):
    out = rand(*shape, device=device) * (high - low) + low
    out = out.cast(_float_dtype(dtype))
    return out.requires_grad_() if requires_grad else out


def normal(*shape, mean: float = 0.0, std: float = 1.0, dtype=None, device=None, requires_grad: bool = False):
    out = randn(*shape, device=device) * std + mean
    out = out.cast(_float_dtype(dtype))
    return out.requires_grad_() if requires_grad else out

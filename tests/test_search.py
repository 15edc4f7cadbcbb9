"""The kernel search (lazygrad/search.py, LAZYGRAD_SEARCH): candidates are checked before they are timed, winners
persist in the disk cache per device, and a warm process reuses them without timing.

Nothing here times the device: `search.launch_timer` is replaced by a timer that says which candidate is "fastest",
and the candidates are cut down to a few neighbours of the heuristics' record (PoCL compiles each in about a second).
Every test uses one kernel, a row-wise dot product (a reduce), so the compiled programs are shared where they can be.
"""

from __future__ import annotations

import numpy as np
import pytest

import lazygrad
from lazygrad import Tensor, config, diskcache, runtime, search
from lazygrad.codegen.lowering import KernelOptions, build_loop_nest, lower
from lazygrad.ops import IrOp

ROWS, COLUMNS = 8, 64
EVERY_NEIGHBOUR = search.neighbours  # the tests cut the candidates down to a few of these


@pytest.fixture
def searching(tmp_path, monkeypatch):
    """A private, empty disk cache, LAZYGRAD_SEARCH=1, an empty compiled-kernel cache and fresh search stats."""
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    monkeypatch.setattr(config, "CACHE_DIR", str(directory))
    monkeypatch.setattr(config, "CONFIG_DIR", str(tmp_path / "config" / "lazygrad"))
    monkeypatch.setattr(diskcache, "_disabled_reason", None)
    monkeypatch.setattr(diskcache, "_verified_directories", set())
    monkeypatch.setattr(diskcache, "_secrets", {})
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    monkeypatch.setattr(config, "SEARCH", 1)
    monkeypatch.setattr(search, "stats", dict.fromkeys(search.stats, 0))
    monkeypatch.setattr(search, "SECONDS_PER_EFFORT", 600.0)  # the candidate list, not the clock, ends the search

    def three_neighbours(centre, nest, capabilities, launch_sizes, ast=None):
        return EVERY_NEIGHBOUR(centre, nest, capabilities, False, ast)[:3]

    monkeypatch.setattr(search, "neighbours", three_neighbours)
    # compiled kernels keep no IR (Program.summary) and the kernel cache is keyed by the AST's text: remember the
    # program each kernel was compiled from, and the AST each kernel was asked for, for options_of and only_kernel
    _compiled_from.clear()
    _asked_for.clear()
    backend = lazygrad.backends.get(lazygrad.Device.DEFAULT)
    compile_program = backend.compile

    def remembering_compile(program):
        kernel = compile_program(program)
        _compiled_from[id(kernel)] = program.dump()
        return kernel

    monkeypatch.setattr(backend, "compile", remembering_compile)
    get_kernel = runtime.get_kernel

    def remembering_get_kernel(ast, buffer_dtypes, device, sizes, aliased=frozenset()):
        entry = get_kernel(ast, buffer_dtypes, device, sizes, aliased)
        _asked_for[id(entry)] = ast
        return entry

    monkeypatch.setattr(runtime, "get_kernel", remembering_get_kernel)
    return directory


_compiled_from: dict = {}  # id(compiled kernel) -> the dump of the program it was compiled from
_asked_for: dict = {}  # id(kernel cache entry) -> the AST get_kernel was given


def timer_favouring(fastest):
    """A launch timer that runs nothing: 1 us where `fastest(candidate)`, else 1 ms for the heuristics' record and
    2 ms for the other candidates."""

    def timer(candidate, launch):
        if fastest(candidate):
            return 1e-6
        return 2e-3 if any(reason.startswith("search: ") for reason in candidate.options.reasons) else 1e-3

    return timer


def favour_the_second_neighbour(monkeypatch) -> list:
    """Time the second neighbour of the heuristics' record fastest; the list returned holds its key once known."""
    second = []
    original = search.neighbours

    def remember_second(centre, nest, capabilities, launch_sizes, ast=None):
        found = original(centre, nest, capabilities, launch_sizes, ast)
        second[:] = [found[1].key()]
        return found

    monkeypatch.setattr(search, "neighbours", remember_second)
    monkeypatch.setattr(search, "launch_timer", timer_favouring(lambda c: c.key() in second))
    return second


def no_timing(candidate, launch):
    raise AssertionError(f"timed {candidate.describe()}: a stored winner must be reused without timing")


def row_dot(seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((ROWS, COLUMNS), np.float32), rng.standard_normal((ROWS, COLUMNS), np.float32)
    return (Tensor(a) * Tensor(b)).sum(axis=1).numpy(), (a * b).sum(axis=1)


def only_kernel():
    (key, entry), *others = runtime._kernel_cache.items()
    assert not others, "the test computes one kernel"
    return _asked_for[id(entry)], key[1], entry


def options_of(entry, ast, dtypes, options: KernelOptions) -> bool:
    """Whether the compiled kernel is the lowering of `options`."""
    caps = lazygrad.backends.get(entry.device).capabilities
    return _compiled_from[id(entry.kernel)] == lower(ast, dtypes, entry.kernel.name, options, caps).dump()


def the_record(directory, ast, dtypes, device) -> str:
    backend = lazygrad.backends.get(device)
    sizes = (ROWS, ROWS * COLUMNS, ROWS * COLUMNS)
    return search.record_key(ast, dtypes, sizes, backend, runtime._LOWERING_VERSION)


def second_neighbour(ast, device):
    """The candidate the tests make fastest among the correct ones."""
    backend = lazygrad.backends.get(device)
    nest = build_loop_nest(ast)
    heuristic = search.Candidate(search.choose_options(nest, ast, backend.capabilities))
    return search.neighbours(heuristic, nest, backend.capabilities, False)[1]


def test_a_wrong_candidate_is_never_chosen_even_when_it_is_the_fastest(searching, monkeypatch):
    """The first neighbour is lowered with its accumulators starting at 1 instead of 0 (wrong sums) and timed fastest;
    the second is correct and timed faster than the heuristics: the second wins."""
    broken = []

    def broken_first(ast, dtypes, name, candidate, capabilities):
        program = lower(ast, dtypes, name, candidate.options, capabilities)
        if not broken:
            broken.append(candidate.key())
            for u in program.uops:
                if u.op is IrOp.ACC:
                    u.arg = 1.0
        return program

    monkeypatch.setattr(search, "_lower_candidate", broken_first)
    chosen = favour_the_second_neighbour(monkeypatch)
    second_fastest = search.launch_timer
    monkeypatch.setattr(search, "launch_timer", lambda c, run: 1e-9 if c.key() in broken else second_fastest(c, run))
    got, expected = row_dot()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    ast, dtypes, entry = only_kernel()
    assert broken and search.stats["discarded"] >= 1
    winner = second_neighbour(ast, entry.device)
    assert winner.key() == chosen[0] and winner.key() not in broken
    assert options_of(entry, ast, dtypes, winner.options), "the fastest correct candidate is the one launched"


def test_winners_persist_and_are_reused_without_timing(searching, monkeypatch):
    favour_the_second_neighbour(monkeypatch)
    row_dot()
    ast, dtypes, entry = only_kernel()
    assert search.stats["searched"] == 1
    # a new compiled-kernel cache, as in a new process: the record is read back and nothing is timed
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    monkeypatch.setattr(search, "launch_timer", no_timing)
    got, expected = row_dot(seed=1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert search.stats["searched"] == 1 and search.stats["reused"] == 1
    _, _, reused = only_kernel()
    assert options_of(reused, ast, dtypes, second_neighbour(ast, entry.device).options)


def test_a_winner_is_searched_again_only_for_more_effort(searching, monkeypatch):
    monkeypatch.setattr(search, "launch_timer", timer_favouring(lambda c: False))
    row_dot()
    for effort, searched in ((1, 1), (2, 2), (1, 2), (2, 2)):  # a winner of effort 2 serves efforts 1 and 2
        monkeypatch.setattr(runtime, "_kernel_cache", {})
        monkeypatch.setattr(config, "SEARCH", effort)
        row_dot()
        assert search.stats["searched"] == searched, f"effort {effort}"


def test_winners_do_not_cross_devices(searching, monkeypatch):
    monkeypatch.setattr(search, "launch_timer", timer_favouring(lambda c: False))
    row_dot()
    assert search.stats["searched"] == 1
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    identity = search.device_identity
    monkeypatch.setattr(search, "device_identity", lambda backend: identity(backend) + " (another one)")
    row_dot()
    assert search.stats["searched"] == 2 and search.stats["reused"] == 0, "another device searches again"


def test_the_jit_replays_the_searched_kernel(searching, monkeypatch):
    favour_the_second_neighbour(monkeypatch)

    @lazygrad.jit
    def row_dot_jitted(a, b):
        return (a * b).sum(axis=1)

    rng = np.random.default_rng(3)
    for _ in range(4):
        a, b = rng.standard_normal((ROWS, COLUMNS), np.float32), rng.standard_normal((ROWS, COLUMNS), np.float32)
        got = row_dot_jitted(Tensor(a).realize(), Tensor(b).realize()).numpy()
        np.testing.assert_allclose(got, (a * b).sum(axis=1), rtol=1e-5, atol=1e-5)
    assert row_dot_jitted.replays >= 1
    ast, dtypes, entry = only_kernel()
    chosen = second_neighbour(ast, entry.device)
    launched = [e for e in row_dot_jitted.launches if e.kernel.name == entry.kernel.name]
    assert launched and all(options_of(e, ast, dtypes, chosen.options) for e in launched)


def test_a_corrupted_search_record_is_discarded_loudly_and_searched_again(searching, monkeypatch):
    monkeypatch.setattr(search, "launch_timer", timer_favouring(lambda c: False))
    row_dot()
    ast, dtypes, entry = only_kernel()
    path = diskcache._path(str(searching), the_record(searching, ast, dtypes, entry.device))
    with open(path, "r+b") as f:  # one flipped bit in the payload
        blob = bytearray(f.read())
        blob[-2] ^= 1
        f.seek(0)
        f.write(blob)
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    with pytest.warns(RuntimeWarning, match="discarded a corrupted kernel cache entry"):
        got, expected = row_dot()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert search.stats["searched"] == 2


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"not json", "not JSON"),
        (b'{"version": 5}', "fields"),
        # a tile that does not divide its dim (the loops would run past the buffers' ends)
        (
            b'{"blocking": null, "effort": 1, "group": null, "heuristic": false, "interior": null, '
            b'"local_size": null, "local_tile": null, "prefetch": null, "unroll": null, "upcast": [[0, 3]], '
            b'"vector": null, "version": 5}',
            r"tile \[\(0, 3\)\] does not divide d0",
        ),
        # an interior copy of the loop body for iterations the loop does not have
        (
            b'{"blocking": null, "effort": 1, "group": null, "heuristic": false, "interior": [[0, 1, 8]], '
            b'"local_size": null, "local_tile": null, "prefetch": null, "unroll": null, "upcast": [], '
            b'"vector": null, "version": 5}',
            "1..8 is not inside d0's 8 iterations",
        ),
        # an interior that is not (dim, lo, hi) triples
        (
            b'{"blocking": null, "effort": 1, "group": null, "heuristic": false, "interior": [[0, 1]], '
            b'"local_size": null, "local_tile": null, "prefetch": null, "unroll": null, "upcast": [], '
            b'"vector": null, "version": 5}',
            "not a list of",
        ),
        # a local-memory tile the lowering does not know
        (
            b'{"blocking": null, "effort": 1, "group": null, "heuristic": false, "interior": null, '
            b'"local_size": null, "local_tile": [96, 96, 8, 6, 6], "prefetch": null, "unroll": null, "upcast": [], '
            b'"vector": null, "version": 5}',
            "local_tile is",
        ),
    ],
    ids=[
        "not-json",
        "missing-fields",
        "tile-past-the-end",
        "interior-past-the-end",
        "interior-not-triples",
        "unknown-local-tile",
    ],
)
def test_a_search_record_that_does_not_fit_its_kernel_is_refused_loudly(searching, monkeypatch, payload, reason):
    """An entry whose HMAC verifies (written by this user's lazygrad) but that names no valid record."""
    monkeypatch.setattr(search, "launch_timer", timer_favouring(lambda c: False))
    row_dot()
    ast, dtypes, entry = only_kernel()
    diskcache.put(the_record(searching, ast, dtypes, entry.device), payload)
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    with pytest.warns(RuntimeWarning, match=f"refused the kernel search record .*{reason}"):
        got, expected = row_dot()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert search.stats["searched"] == 2


@pytest.mark.backend_independent
def test_the_tolerance_allows_reordered_sums_and_refuses_wrong_ones():
    from lazygrad import dtypes

    rng = np.random.default_rng(0)
    terms = rng.uniform(0.5, 2.0, (64, 4096)).astype(np.float32)
    forward = terms.sum(axis=1, dtype=np.float32)
    pairwise = np.array([np.float32(row[::2].sum() + row[1::2].sum()) for row in terms], np.float32)
    assert search.agree(forward, pairwise, dtypes.float32, 4096)
    wrong = forward.copy()
    wrong[5] += 1.0
    assert not search.agree(forward, wrong, dtypes.float32, 4096)
    assert not search.agree(np.array([np.nan, 1.0]), np.array([1.0, 1.0]), dtypes.float32, 1)
    assert not search.agree(np.array([3, 4], np.int32), np.array([3, 5], np.int32), dtypes.int32, 10)


@pytest.mark.backend_independent
def test_every_neighbour_fits_its_loop_nest():
    from lazygrad.codegen.capabilities import Capabilities
    from lazygrad.codegen.lowering import LoopNest

    nest = LoopNest(shape=(12, 20, 64, 9), n_output=2, trackers={})
    gpu = Capabilities(group_reduce=256, local_memory=1 << 16, max_work_group=1024, compute_units=132, is_gpu=True)
    cpu = Capabilities(vector_width=16, cache_blocking=True)
    centres = [
        search.Candidate(KernelOptions(upcast=[(0, 4)], unroll=(3, 3), vector=(2, 16))),
        search.Candidate(KernelOptions(upcast=[(1, 2)], group=64)),
    ]
    for capabilities in (gpu, cpu):
        for centre in centres:
            found = search.neighbours(centre, nest, capabilities, launch_sizes=True)
            assert found and all(search._invalid(c, nest) is None for c in found)
            assert len({c.key() for c in found}) == len(found)
    assert search._invalid(search.Candidate(KernelOptions(upcast=[(0, 5)])), nest)  # 5 does not divide 12
    assert search._invalid(search.Candidate(KernelOptions(unroll=(3, 4))), nest)


def test_an_opencl_work_group_size_can_win_and_is_reused(searching, monkeypatch, backend):
    if backend != "opencl":
        pytest.skip("the work-group size of a launch is OpenCL's to choose; other backends have none")

    def launch_sizes_only(centre, nest, capabilities, launch_sizes, ast=None):
        return [c for c in EVERY_NEIGHBOUR(centre, nest, capabilities, True, ast) if c.local_size][:2]

    monkeypatch.setattr(search, "neighbours", launch_sizes_only)
    monkeypatch.setattr(search, "launch_timer", timer_favouring(lambda c: c.local_size == 4))
    got, expected = row_dot()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    ast, dtypes, entry = only_kernel()
    payload = diskcache.get(the_record(searching, ast, dtypes, entry.device))
    assert search.decode_record(payload, build_loop_nest(ast)).local_size == 4
    monkeypatch.setattr(runtime, "_kernel_cache", {})
    monkeypatch.setattr(search, "launch_timer", no_timing)
    got, expected = row_dot(seed=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    _, _, entry = only_kernel()
    work_items = int(np.prod(entry.kernel.program.global_size))
    assert entry.kernel.local_size == min(4, work_items) and search.stats["reused"] == 1


def test_an_unroll_of_a_reduce_dim_beside_the_lane_dim_is_right(backend):
    """The search's check found this one: an unroll of one reduce dim while vector lanes run along another moved
    the lane dim too (each unrolled step read the next vector of the other dim). Sums per channel, as BatchNorm's."""
    x = np.random.default_rng(5).uniform(0.5, 2.0, (2, 16, 8, 8)).astype(np.float32)

    def unrolled_beside_lanes(name, nest):
        if nest.shape == (16, 2, 64):
            return KernelOptions(vector=(2, 8), unroll=(1, 2))
        return None

    with runtime.forced_options(unrolled_beside_lanes):
        got = Tensor(x).sum(axis=(0, 2, 3)).numpy()
    np.testing.assert_allclose(got, x.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5)

"""The kernel search (`LAZYGRAD_SEARCH=<effort>`): option records around the heuristics' choice, timed on the device.

For each kernel compiled for the first time on a device, `tuned_kernel` looks for a record in the disk cache (the
winner of an earlier search, keyed by the device's identity and the kernel's structure) and, without one, searches:

1. the heuristics' record (codegen.lowering.choose_options) is compiled and run on scratch buffers (fresh
   allocations, inputs filled with seeded values; never a live tensor's memory): its outputs are the reference;
2. candidates one step away from the best record so far (a register tile factor changed, an unroll, narrower or no
   vector lanes, cache blocking or a work-group reduction on or off, the work-group size of an OpenCL launch) are
   lowered, verified, compiled and run on the same inputs; one that fails any step, or whose outputs differ from
   the reference beyond a tolerance set by the dtype and the reduction's length, is discarded and never chosen;
3. the rest are timed (the minimum of a few launches; a candidate clearly slower than the best stops after one);
   the best becomes the next centre, for as many rounds as the effort allows and within its time budget;
4. the winner (the heuristics' record unless a candidate beats it by more than the noise margin) is stored in the
   disk cache (HMAC'd like every entry: docs/cache.md), so a later process lowers it without timing anything.

docs/search.md describes it for users.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from lazygrad import config, diskcache
from lazygrad.codegen import tiling
from lazygrad.codegen.kernel_ast import KernelOp
from lazygrad.codegen.lowering import (
    KernelOptions,
    LoopNest,
    choose_options,
    interior_bounds,
    lower,
    options_problem,
    stores_of,
)
from lazygrad.codegen.serialize import ProgramFormatError, decode_program, encode_program
from lazygrad.codegen.verify import verify
from lazygrad.ops import AstOp, Op
from lazygrad.shape import prod

_RECORD_VERSION = 5  # bumped when a record's fields change meaning
RUNS = 3  # launches timed per candidate (the minimum counts)
SLOWER = 1.5  # a first launch this much slower than the best so far ends a candidate's timing
MARGIN = 0.03  # a candidate replaces the heuristics' record only when it is this much faster (timing noise)
SECONDS_PER_EFFORT = 2.0  # the time budget of one kernel's search per unit of effort
SEED = 1234  # the scratch inputs' values
PROGRESS_SECONDS = 10.0  # without LAZYGRAD_DEBUG, a line on stderr at most this often while kernels are searched
_last_progress = [time.perf_counter()]

# what a search did in this process (examples/benchmark.py reports it)
stats = {"searched": 0, "reused": 0, "candidates": 0, "discarded": 0, "improved": 0, "seconds": 0.0}


@dataclass
class Candidate:
    """An option record and how it is launched: `local_size`, the work-group size of an OpenCL launch without a
    work-group reduction (None: the backend's default)."""

    options: KernelOptions
    local_size: int | None = None
    # the options are the heuristics' (a record says so, and a warm process compiles them without choosing again)
    heuristic: bool = False
    effort: int = 0  # of the search that chose it: a later process asking for more searches again

    def key(self) -> tuple:
        o = self.options
        upcast = tuple(map(tuple, o.upcast))
        return (upcast, o.unroll, o.vector, o.blocking, o.group, o.local_tile, o.prefetch, o.interior, self.local_size)

    def describe(self) -> str:
        head = self.options.describe().splitlines()[0]
        return head + (f", local_size={self.local_size}" if self.local_size else "")


class _MoreEffort(Exception):
    """A stored winner of a search with less effort than this process asks for."""


class SearchRecordError(ValueError):
    """A search record that does not describe a valid candidate for its kernel."""


# --- the records in the disk cache ------------------------------------------------------------------------------
def device_identity(backend) -> str:
    """What a winner is valid for: the backend, the device (with LLVM's thread count), its compiler and driver."""
    target = getattr(backend, "target_id", None) or getattr(getattr(backend, "compiler", None), "target_id", "")
    return f"{backend.name}|{backend.device_name}|{target}"


def record_key(ast: KernelOp, buffer_dtypes: tuple, sizes: tuple, backend, version: str) -> str:
    """`version`: the code generator's (runtime._LOWERING_VERSION): a record means what the lowering of that
    version makes of it."""
    identity = device_identity(backend)
    dtypes = ",".join(d.name for d in buffer_dtypes)
    return f"search|{_RECORD_VERSION}|{version}|{identity}|{backend.capabilities!r}|{dtypes}|{sizes}|" + ast.structure()


def encode_record(candidate: Candidate) -> bytes:
    o = candidate.options
    fields = {
        "version": _RECORD_VERSION,
        "upcast": [list(pair) for pair in o.upcast],
        "unroll": list(o.unroll) if o.unroll else None,
        "vector": list(o.vector) if o.vector else None,
        "blocking": list(o.blocking) if o.blocking else None,
        "group": o.group,
        "local_tile": list(o.local_tile) if o.local_tile else None,
        "prefetch": o.prefetch,
        "interior": [list(entry) for entry in o.interior] if o.interior else None,
        "local_size": candidate.local_size,
        "heuristic": candidate.heuristic,
        "effort": candidate.effort,
    }
    return json.dumps(fields, sort_keys=True).encode()


def _integer(value, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise SearchRecordError(f"{what} is {value!r}, not an integer in {low}..{high}")
    return value


def _pair(value, what: str, dims: range, nest: LoopNest) -> tuple | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise SearchRecordError(f"{what} is {value!r}, not a pair")
    dim = _integer(value[0], dims.start, dims.stop - 1, f"{what}'s dim") if len(dims) else None
    if dim is None:
        raise SearchRecordError(f"{what} names a dim, and this kernel has none of that kind")
    return dim, _integer(value[1], 1, max(nest.shape[dim], 1), f"{what}'s factor")


def _local_tile(value) -> tuple | None:
    """A record's local tile: one of the tiles the lowering knows (tiling.TILES), or none."""
    known = [dataclasses.astuple(t) for t in tiling.TILES]
    if value is None:
        return None
    if not isinstance(value, list) or tuple(value) not in known:
        raise SearchRecordError(f"local_tile is {value!r}, not one of {known}")
    return tuple(value)


def _interior(value, nest: LoopNest) -> tuple | None:
    """A record's interior: (dim, lo, hi) triples of integers (`options_problem` checks them against the loops)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(entry, list) and len(entry) == 3 for entry in value):
        raise SearchRecordError(f"interior is {value!r}, not a list of (dim, lo, hi) triples")
    return tuple(
        (
            _integer(d, 0, len(nest.shape) - 1, "interior's dim"),
            _integer(lo, 0, 1 << 31, "interior's lo"),
            _integer(hi, 0, 1 << 31, "interior's hi"),
        )
        for d, lo, hi in value
    )


def decode_record(payload: bytes, nest: LoopNest) -> Candidate:
    """The candidate a record names, parsed strictly (known fields, integers within the kernel's loop nest);
    anything else raises SearchRecordError."""
    try:
        fields = json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise SearchRecordError(f"not JSON: {e}") from e
    expected = {"version", "upcast", "unroll", "vector", "blocking", "group", "local_tile", "prefetch", "local_size"}
    expected |= {"interior"}
    expected |= {"heuristic", "effort"}
    if not isinstance(fields, dict) or set(fields) != expected:
        raise SearchRecordError(
            f"fields {sorted(fields) if isinstance(fields, dict) else fields!r}, not {sorted(expected)}"
        )
    if fields["version"] != _RECORD_VERSION:
        raise SearchRecordError(f"record version {fields['version']!r}, not {_RECORD_VERSION}")
    outputs, reduces = range(nest.n_output), range(nest.n_output, len(nest.shape))
    if not isinstance(fields["upcast"], list):
        raise SearchRecordError(f"upcast is {fields['upcast']!r}, not a list")
    upcast = [_pair(pair, "upcast", outputs, nest) for pair in fields["upcast"]]
    blocking = fields["blocking"]
    if blocking is not None:
        if not isinstance(blocking, list) or len(blocking) != 2:
            raise SearchRecordError(f"blocking is {blocking!r}, not a pair")
        blocking = tuple(_integer(v, 1, 1 << 31, "blocking") for v in blocking)
    options = KernelOptions(
        upcast=upcast,
        unroll=_pair(fields["unroll"], "unroll", reduces, nest),
        vector=_pair(fields["vector"], "vector", range(len(nest.shape)), nest),
        blocking=blocking,
        group=None if fields["group"] is None else _integer(fields["group"], 2, 1024, "group"),
        local_tile=_local_tile(fields["local_tile"]),
        prefetch=None if fields["prefetch"] is None else _integer(fields["prefetch"], 64, 1 << 30, "prefetch"),
        interior=_interior(fields["interior"], nest),
        reasons=["search: the winner of an earlier search on this device (disk cache)"],
    )
    local = fields["local_size"]
    if not isinstance(fields["heuristic"], bool):
        raise SearchRecordError(f"heuristic is {fields['heuristic']!r}, not true or false")
    local_size = None if local is None else _integer(local, 1, 1024, "local_size")
    effort = _integer(fields["effort"], 1, 1000, "effort")
    candidate = Candidate(options, local_size, fields["heuristic"], effort)
    problem = _invalid(candidate, nest)
    if problem:
        raise SearchRecordError(problem)
    return candidate


# --- candidates ----------------------------------------------------------------------------------------------
def _invalid(candidate: Candidate, nest: LoopNest) -> str | None:
    """Why the lowering cannot run this record on this loop nest (None: it can): its options must fit the nest
    (`options_problem`), and a work-group size goes with neither shared reduces nor local tiles."""
    problem = options_problem(candidate.options, nest)
    if problem is not None:
        return problem
    if candidate.local_size is not None and candidate.options.group:
        return "a work-group size for a kernel whose groups share a reduce"
    if candidate.local_size is not None and candidate.options.local_tile:
        return "a local tile takes no other option"
    return None


def _tile_factors(size: int) -> list:
    return [f for f in (2, 3, 4, 7, 8) if size % f == 0 and size >= f]


def neighbours(
    centre: Candidate, nest: LoopNest, capabilities, launch_sizes: bool, ast: KernelOp | None = None
) -> list:
    """Records one step away from `centre`: one knob changed (and whatever that change forces). Where the centre
    versions its loops' interiors, a changed tile or lanes move them (`interior_bounds` of the kernel's `ast`; without
    it, the changed records keep none)."""
    o, shape = centre.options, nest.shape
    reducing = nest.n_output < len(shape)
    found = []
    if o.local_tile:  # a tiled product: the other tiles that fit the device, or no local tile (plain scalar code)
        for tile in tiling.TILES:
            fits = tile.threads <= capabilities.max_work_group and tile.local_bytes() <= capabilities.local_memory
            if fits and dataclasses.astuple(tile) != o.local_tile:
                found.append(Candidate(KernelOptions(local_tile=dataclasses.astuple(tile), reasons=["search: tile"])))
        found.append(Candidate(KernelOptions(reasons=["search: no local tile"])))
        return found

    def vary(reason: str, local_size=centre.local_size, **changes):
        options = dataclasses.replace(o, reasons=[f"search: {reason}"], **changes)
        if o.interior and "interior" not in changes:
            options.interior = interior_bounds(nest, ast, options) if ast is not None else None
        found.append(Candidate(options, local_size if not options.group else None))

    # the register tile: one dim's factor changed, added or dropped (at most 3 dims and 32 accumulators)
    tile = dict(o.upcast)
    for d in range(nest.n_output):
        for f in [1, *_tile_factors(shape[d])]:
            if f == tile.get(d, 1):
                continue
            new = {**tile, d: f} if f > 1 else {k: v for k, v in tile.items() if k != d}
            if len(new) <= 3 and prod(new.values()) <= 32:
                vary(f"tile d{d} by {f}", upcast=sorted(new.items()))
    if reducing:
        # an unroll of one of the two innermost reduce dims (or none)
        if o.unroll:
            vary("no unroll", unroll=None)
        for d in list(nest.reduce_dims)[-2:]:
            for f in (2, 4, 8):
                if (d, f) != o.unroll:
                    vary(f"unroll d{d} by {f}", unroll=(d, f))
        if o.blocking:
            vary("no cache blocking", blocking=None)
        if o.interior:
            vary("no interior copy", interior=None)
        if o.prefetch:  # prefetches off, or twice or half as far ahead
            vary("no prefetch", prefetch=None)
            for ahead in (o.prefetch * 2, o.prefetch // 2):
                vary(f"prefetch {ahead} bytes ahead", prefetch=ahead)
        # a work-group reduction on or off, and twice or half as wide
        if o.group:
            vary("no work-group reduction", group=None)
        most = min(capabilities.group_reduce, capabilities.max_work_group, 1024)
        if most >= 2:
            tile_size = prod(f for _, f in o.upcast)
            widths = [o.group // 2, o.group * 2] if o.group else [min(most, 256), 64]
            for g in widths:
                if 2 <= g <= most and g * tile_size * 4 <= capabilities.local_memory // 2:
                    vary(f"group {g}", group=g, vector=None, blocking=None, prefetch=None, local_size=None)
    if o.vector:
        d, width = o.vector
        vary("scalar code", vector=None, blocking=None, prefetch=None)
        if width >= 4 and shape[d] % (width // 2) == 0:
            vary(f"lanes of {width // 2}", vector=(d, width // 2))
    if launch_sizes and not o.group:
        for size in (1, 4, 16, 64, 256):
            if size != centre.local_size and size <= capabilities.max_work_group:
                vary(f"work-groups of {size}", local_size=size)
    return [c for c in found if _invalid(c, nest) is None]


# --- scratch buffers and the checks -------------------------------------------------------------------------
def _seeded(dtype, size: int, rng) -> np.ndarray:
    """Inputs: positive floats (so logs, square roots and reciprocals of variances stay finite and outputs can be
    compared), small positive integers (no division by zero), random booleans."""
    if dtype.is_float:
        return rng.uniform(0.5, 2.0, size).astype(dtype.np)
    if dtype.kind == "b":
        return rng.random(size) < 0.5
    return rng.integers(1, 9, size).astype(dtype.np)


class _Scratch:
    """Fresh device buffers for one kernel's arguments (outputs first), freed by `release`."""

    def __init__(self, backend, buffer_dtypes: tuple, sizes: tuple, outputs: int):
        self.backend, self.dtypes, self.sizes, self.n_outputs = backend, buffer_dtypes, sizes, outputs
        self.nbytes = [max(s * d.itemsize, 1) for d, s in zip(buffer_dtypes, sizes)]
        self.handles = []
        try:
            for n in self.nbytes:
                self.handles.append(backend.allocate(n))
            rng = np.random.default_rng(SEED)
            for i in range(outputs, len(sizes)):
                if sizes[i]:
                    backend.copy_in(self.handles[i], _seeded(buffer_dtypes[i], sizes[i], rng))
        except BaseException:
            self.release()
            raise

    def poison_outputs(self) -> None:
        """Fill the outputs with a byte pattern, so that a candidate that leaves an element unwritten differs."""
        for i in range(self.n_outputs):
            if self.sizes[i]:
                self.backend.copy_in(self.handles[i], np.full(self.nbytes[i], 0xA5, dtype=np.uint8))

    def outputs(self) -> list:
        arrays = []
        for i in range(self.n_outputs):
            out = np.empty(self.sizes[i], dtype=self.dtypes[i].np)
            if self.sizes[i]:
                self.backend.copy_out(self.handles[i], out)
            arrays.append(out)
        return arrays

    def release(self) -> None:
        for handle, n in zip(self.handles, self.nbytes):
            self.backend.free(handle, n)
        self.handles = []


def tolerance(dtype, reduce_length: int) -> float:
    """Relative tolerance between two correct orders of the same computation: rounding errors of a sum grow
    like the square root of its length (the order of additions is what candidates change)."""
    eps = float(np.finfo(dtype.np).eps) if dtype.is_float else 0.0
    return 8 * eps * math.sqrt(max(reduce_length, 1))


def agree(reference: np.ndarray, out: np.ndarray, dtype, reduce_length: int) -> bool:
    if not dtype.is_float:
        return bool(np.array_equal(reference, out))
    ref, got = reference.astype(np.float64), out.astype(np.float64)
    finite = np.isfinite(ref)
    if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(ref[~finite], got[~finite], equal_nan=True):
        return False
    if not finite.any():
        return True
    rtol = tolerance(dtype, reduce_length)
    atol = rtol * float(np.mean(np.abs(ref[finite])))
    return bool(np.all(np.abs(ref[finite] - got[finite]) <= atol + rtol * np.abs(ref[finite])))


# --- timing ----------------------------------------------------------------------------------------------------
def launch_timer(candidate: Candidate, launch) -> float:
    """Seconds of one launch, as the device reports them; tests replace this to time nothing."""
    return launch()


def _time(candidate: Candidate, launch, best: float) -> float:
    first = launch_timer(candidate, launch)
    if first > best * SLOWER:  # clearly slower: no need for the minimum
        return first
    return min([first, *(launch_timer(candidate, launch) for _ in range(RUNS - 1))])


def _confirm(heuristic: Candidate, heuristic_kernel, best: Candidate, best_kernel, handles) -> tuple:
    """(heuristic's seconds, best's seconds): the minimum of RUNS launches each, alternating, so that both see
    the same load (the search timed them minutes apart on a busy machine)."""
    heuristic_times, best_times = [], []
    for _ in range(RUNS):
        heuristic_times.append(launch_timer(heuristic, lambda: heuristic_kernel(handles, wait=True)))
        best_times.append(launch_timer(best, lambda: best_kernel(handles, wait=True)))
    return min(heuristic_times), min(best_times)


# --- the search --------------------------------------------------------------------------------------------
def _searchable(ast: KernelOp, nest: LoopNest) -> str | None:
    """Why a kernel is not searched (None: it is)."""
    if not nest.shape:
        return "a scalar kernel: nothing to choose"
    for node in ast.walk():  # random inputs could divide by zero, which traps on a CPU
        if node.op in (Op.IDIV, Op.MOD) and node.srcs[1].op is not AstOp.CONST:
            return "an integer division by a value read from memory"
    return None


def _lower_candidate(ast: KernelOp, buffer_dtypes: tuple, name: str, candidate: Candidate, capabilities):
    """The linear IR of a candidate (tests wrap this to make a candidate deliberately wrong)."""
    return lower(ast, buffer_dtypes, name, candidate.options, capabilities)


def _compile(ast, buffer_dtypes, name, candidate: Candidate, backend, compiled: dict):
    """A candidate's kernel: compiled once per option record (launch-size variants share it)."""
    o = candidate.options
    base_key = Candidate(o).key()
    kernel = compiled.get(base_key)
    if kernel is None:
        program = _lower_candidate(ast, buffer_dtypes, name, candidate, backend.capabilities)
        verify(program)
        kernel = compiled[base_key] = backend.compile(program)
    if candidate.local_size is not None:
        kernel = copy.copy(kernel)
        kernel.set_local_size(candidate.local_size)
    return kernel


def tuned_kernel(
    ast: KernelOp, nest: LoopNest, buffer_dtypes: tuple, sizes: tuple, name: str, backend, compile_heuristic, version
):
    """The compiled kernel to launch: the winner of a search (from the disk cache, or searched now), else the
    heuristics' (`compile_heuristic()` compiles that)."""
    if _searchable(ast, nest) is not None:
        return compile_heuristic()
    key = record_key(ast, buffer_dtypes, sizes, backend, version)
    payload = diskcache.get(key)  # only an entry this user's lazygrad wrote for this key (HMAC)
    if payload is not None:
        try:
            winner = decode_record(payload, nest)
            if winner.effort < config.SEARCH:
                raise _MoreEffort(winner.effort)
            kernel = _winner_kernel(ast, buffer_dtypes, name, winner, key, backend, compile_heuristic)
            stats["reused"] += 1
            if config.DEBUG >= 2:
                print(f"--- search of {name}: the record in the disk cache, {winner.describe()}")
            return kernel
        except _MoreEffort as e:
            if config.DEBUG >= 1:
                print(f"  search {name}: the stored winner was searched with effort {e}, searching again")
        except Exception as e:  # a record this version cannot use: said loudly, then searched again
            warnings.warn(
                f"lazygrad: refused the kernel search record of {name} in the disk cache ({type(e).__name__}: "
                f"{e}); searching again",
                RuntimeWarning,
                stacklevel=2,
            )
    heuristic = Candidate(choose_options(nest, ast, backend.capabilities), heuristic=True)
    winner, kernel = _search(ast, nest, buffer_dtypes, sizes, name, backend, heuristic, compile_heuristic)
    chose_heuristics = Candidate(winner.options).key() == heuristic.key()
    winner = dataclasses.replace(winner, heuristic=chose_heuristics, effort=max(config.SEARCH, 1))
    diskcache.put(key, encode_record(winner))
    return kernel


def _winner_kernel(ast, buffer_dtypes, name, winner: Candidate, key: str, backend, compile_heuristic):
    """A stored winner, compiled: the heuristics' through their cache of lowered programs, any other record
    lowered once and its program kept in the disk cache next to the record (lowering is a warm start's slow part)."""
    if winner.heuristic:
        kernel = compile_heuristic()
    else:
        program_key = "searched program|" + key
        blob = diskcache.get(program_key)
        program = None
        if blob is not None:
            try:
                program = decode_program(blob)  # data, parsed strictly: never pickle
            except ProgramFormatError:
                pass
        if program is None:
            program = _lower_candidate(ast, buffer_dtypes, name, winner, backend.capabilities)
            try:
                diskcache.put(program_key, encode_program(program))
            except ProgramFormatError:  # a program the format cannot express is lowered again next time
                pass
        verify(program)
        kernel = backend.compile(program)
    if winner.local_size is not None:
        kernel.set_local_size(winner.local_size)
    return kernel


def _search(ast, nest, buffer_dtypes, sizes, name, backend, heuristic: Candidate, compile_heuristic):
    start = time.perf_counter()
    effort = max(config.SEARCH, 1)
    budget = SECONDS_PER_EFFORT * effort
    reduce_length = prod(nest.shape[nest.n_output :])
    outputs = len(stores_of(ast))
    reference_kernel = compile_heuristic()
    # a kernel whose launch takes a work-group size (OpenCL's) tries several
    launch_sizes = hasattr(reference_kernel, "set_local_size")
    compiled = {heuristic.key(): reference_kernel}
    tried, discarded = 1, 0
    scratch = _Scratch(backend, buffer_dtypes, sizes, outputs)
    try:
        handles = scratch.handles
        scratch.poison_outputs()
        reference_kernel(handles, wait=True)
        reference = scratch.outputs()
        heuristic_seconds = _time(heuristic, lambda: reference_kernel(handles, wait=True), math.inf)
        candidates_start = time.perf_counter()  # the budget is the candidates': the reference may compile slowly
        best, best_seconds, best_kernel = heuristic, heuristic_seconds, reference_kernel
        seen = {heuristic.key()}
        for _ in range(effort):
            centre = best
            for candidate in neighbours(centre, nest, backend.capabilities, launch_sizes, ast):
                if candidate.key() in seen:
                    continue
                if time.perf_counter() - candidates_start > budget:
                    break
                seen.add(candidate.key())
                tried += 1
                try:
                    kernel = _compile(ast, buffer_dtypes, name, candidate, backend, compiled)
                    scratch.poison_outputs()
                    kernel(handles, wait=True)
                    got = scratch.outputs()
                except Exception as e:  # does not lower, verify, compile or launch: never chosen
                    discarded += 1
                    if config.DEBUG >= 3:
                        print(f"    {candidate.describe()}: discarded ({type(e).__name__}: {e})")
                    continue
                if not all(agree(r, g, d, reduce_length) for r, g, d in zip(reference, got, buffer_dtypes)):
                    discarded += 1
                    if config.DEBUG >= 1:
                        print(f"    {name}: {candidate.describe()} gives other values than the heuristics: discarded")
                    continue
                seconds = _time(candidate, lambda k=kernel: k(handles, wait=True), best_seconds)
                if config.DEBUG >= 3:
                    print(f"    {candidate.describe()}: {seconds * 1e3:.3f} ms")
                if seconds < best_seconds:
                    best, best_seconds, best_kernel = candidate, seconds, kernel
            if best is centre:
                break
        if best is not heuristic:  # timed again side by side: load that came and went must not pick the winner
            heuristic_seconds, best_seconds = _confirm(heuristic, reference_kernel, best, best_kernel, handles)
    finally:
        scratch.release()
    if best_seconds > heuristic_seconds * (1 - MARGIN):  # within the noise: the heuristics' record stays
        best, best_seconds, best_kernel = heuristic, heuristic_seconds, reference_kernel
    seconds = time.perf_counter() - start
    stats["searched"] += 1
    stats["candidates"] += tried
    stats["discarded"] += discarded
    stats["seconds"] += seconds
    stats["improved"] += best is not heuristic
    if config.DEBUG == 0 and time.perf_counter() - _last_progress[0] > PROGRESS_SECONDS:  # a long search says so
        _last_progress[0] = time.perf_counter()
        print(
            f"lazygrad: kernel search: {stats['searched']} kernels searched in {stats['seconds']:.0f} s, "
            f"{stats['improved']} faster than the heuristics (LAZYGRAD_DEBUG=1 shows each)",
            file=sys.stderr,
        )
    if config.DEBUG >= 1:
        change = "the heuristics' record" if best is heuristic else best.describe()
        print(
            f"  search {name:<40} {tried:3} candidates ({discarded} discarded) in {seconds:5.1f} s: "
            f"{heuristic_seconds * 1e3:.3f} -> {best_seconds * 1e3:.3f} ms, {change}",
            file=sys.stdout,
        )
    return best, best_kernel

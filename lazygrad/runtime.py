"""Runs schedules: device buffers and their pool, the compiled-kernel cache, profiling.

`realize(lazybuffers)` schedules the graph behind them, compiles what is new (once per distinct
kernel AST and device), allocates outputs from a per-device pool, launches, and then releases the
graph behind every realized node.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from lazygrad import backends, config, diskcache
from lazygrad.codegen.lowering import KernelOptions, build_loop_nest, choose_options, lower, options_problem
from lazygrad.codegen.serialize import ProgramFormatError, decode_program, encode_program
from lazygrad.codegen.verify import verify
from lazygrad.graph import LazyBuffer, defers_gc
from lazygrad.ops import ELEMENTWISE, AstOp, Op
from lazygrad.schedule import ItemKind, ScheduleItem, Scheduler
from lazygrad.shape import describe_symbolic, max_prod, symbolic_dims
from lazygrad.symbolic import Node, upper_bound, user_variables


def backend_for(device: str):
    backend = _BACKENDS.get(device)  # (every buffer's allocation and copy asks: no import statement each time)
    if backend is None:
        from lazygrad import backends

        backend = _BACKENDS[device] = backends.get(device)
    return backend


# device name -> its backend, once found (backends.get keeps one instance per name: this only skips its look-up)
_BACKENDS: dict = {}


# --- memory --------------------------------------------------------------------------------------
class _Pool:
    """Freed device allocations kept by size for reuse; emptied once when an allocation fails."""

    def __init__(self):
        self.free: dict = {}  # (device, nbytes) -> [handle]
        self.bytes_held = 0

    def take(self, device: str, nbytes: int):
        handles = self.free.get((device, nbytes))
        if handles:
            self.bytes_held -= nbytes
            return handles.pop()
        backend = backend_for(device)
        try:
            return backend.allocate(nbytes)
        except Exception as e:
            if not _is_out_of_memory(e):  # a size the device never allocates, a lost device, ...
                hint = " (more than this device allows in one buffer)" if "INVALID_BUFFER_SIZE" in str(e) else ""
                raise RuntimeError(
                    f"{device}: could not allocate a buffer of {_size(nbytes)}{hint}: {type(e).__name__}: {e}"
                ) from e
            self.release_all()
        try:
            return backend.allocate(nbytes)
        except Exception as e:
            raise MemoryError(
                f"out of memory on {device}: could not allocate {_size(nbytes)}, even after freeing "
                f"the buffer pool; live tensors hold {_size(Buffer.live_bytes)} on all devices. "
                f"Free tensors you no longer need or make the batch smaller. "
                f"({type(e).__name__}: {e})"
            ) from e

    def give_back(self, device: str, nbytes: int, handle):
        self.free.setdefault((device, nbytes), []).append(handle)
        self.bytes_held += nbytes

    def release_all(self):
        for (device, nbytes), handles in self.free.items():
            backend = backend_for(device)
            for h in handles:
                backend.free(h, nbytes)
        self.free.clear()
        self.bytes_held = 0


POOL = _Pool()


def _is_out_of_memory(error: Exception) -> bool:
    """Python's MemoryError (numpy), or a device's own (OpenCL: MEM_OBJECT_ALLOCATION_FAILURE, OUT_OF_*)."""
    text = str(error).upper().replace(" ", "_")
    return isinstance(error, MemoryError) or any(
        code in text for code in ("OUT_OF_MEMORY", "MEM_OBJECT_ALLOCATION_FAILURE", "OUT_OF_RESOURCES", "OUT_OF_HOST")
    )


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes} bytes ({nbytes / scale:.1f} {unit})"
    return f"{nbytes} bytes"


class Buffer:
    """Device memory for one realized base; returns to the pool when unreferenced."""

    live_bytes = 0

    def __init__(self, device: str, size: int, dtype):
        self.device, self.size, self.dtype = device, size, dtype
        self.nbytes = size * dtype.itemsize
        self.handle = POOL.take(device, self.nbytes)
        Buffer.live_bytes += self.nbytes

    def __del__(self):  # cheaper than a weakref.finalize per buffer (eager steps allocate several per kernel)
        handle = self.__dict__.get("handle")
        if handle is not None and Buffer is not None:  # None: a failed allocation, or interpreter shutdown
            Buffer.live_bytes -= self.nbytes
            POOL.give_back(self.device, self.nbytes, handle)

    def copy_in(self, array: np.ndarray):
        backend_for(self.device).copy_in(self.handle, array)

    def to_numpy(self) -> np.ndarray:
        out = np.empty(self.size, dtype=self.dtype.np)
        backend_for(self.device).copy_out(self.handle, out)
        return out


# --- profiling ---------------------------------------------------------------------------------
@dataclass
class KernelLaunch:
    name: str
    seconds: float
    flops: int = 0
    bytes: int = 0
    start: float = 0.0  # time.perf_counter() when it was launched (the host's clock): where a trace places it
    device: str = ""
    global_size: tuple = ()  # the program's global ranges, outermost first
    local_size: int = 1  # work-items per point of the global ranges (a work-group sharing a reduce)


@dataclass
class TraceEvent:
    """One span of a profile's timeline: a kernel, a copy, a compilation or a schedule being run."""

    kind: str  # "kernel" | "copy" | "compile" | "schedule"
    name: str
    track: str  # the queue or thread it ran on: "<device>" for kernels, "<device> copies", "host"
    start: float  # time.perf_counter()
    seconds: float
    args: dict = field(default_factory=dict)


@dataclass
class Profile:
    kernels: int = 0
    copies: int = 0
    compiled: int = 0
    compile_seconds: float = 0.0
    launches: list = field(default_factory=list)
    timed: bool = True
    # the timeline (timed profiles only): every launch, copy, compilation and schedule, in the order they ended
    events: list = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def __str__(self) -> str:
        rows = [f"{'kernel':<40} {'ms':>9} {'GFLOP/s':>9} {'GB/s':>8}"]
        for k in sorted(self.launches, key=lambda k: -k.seconds):
            gflops = k.flops / k.seconds / 1e9 if k.seconds else 0
            gbs = k.bytes / k.seconds / 1e9 if k.seconds else 0
            rows.append(f"{k.name:<40} {k.seconds * 1e3:9.3f} {gflops:9.2f} {gbs:8.2f}")
        total = sum(k.seconds for k in self.launches)
        rows.append(
            f"{self.kernels} kernels ({total * 1e3:.2f} ms), {self.copies} copies, "
            f"{self.compiled} compiled ({self.compile_seconds:.2f} s)"
        )
        return "\n".join(rows)

    def export_chrome_trace(self, path) -> None:
        """Write the timeline as a Chrome trace (JSON, the Trace Event Format; opens in Perfetto and
        chrome://tracing): one track per device queue, one per device's copies, and the host's (schedules,
        with the compilations inside them). PyTorch's name: `torch.profiler.profile.export_chrome_trace`."""
        from lazygrad.viz.trace import write_chrome_trace

        if not self.timed:
            raise ValueError("profile(timed=False) records no times and no timeline; use profile() to export a trace")
        write_chrome_trace(self, path)


_profiles: list = []


class profile:
    """`with lazygrad.profile() as p:` counts and times the kernels launched inside."""

    def __init__(self, timed: bool = True):
        self.p = Profile(timed=timed)

    def __enter__(self) -> Profile:
        self.p.started = time.perf_counter()
        _profiles.append(self.p)
        return self.p

    def __exit__(self, *exc):
        _profiles.remove(self.p)
        return False

    def export_chrome_trace(self, path) -> None:
        self.p.export_chrome_trace(path)


def _timing_wanted() -> bool:
    if not _profiles:  # (every launch asks: no generator when nothing profiles)
        return config.DEBUG >= 1
    return config.DEBUG >= 1 or any(p.timed for p in _profiles)


def profiling_active() -> bool:
    return bool(_profiles) or config.DEBUG >= 1


def note_launch(entry, seconds: float, start: float | None = None) -> KernelLaunch:
    """Count a kernel launched (by a schedule, or by a JIT replay, which knows only its duration)."""
    seconds = seconds or 0.0
    program = entry.kernel.program
    launch = KernelLaunch(
        entry.kernel.name,
        seconds,
        entry.flops,
        entry.bytes,
        time.perf_counter() - seconds if start is None else start,
        entry.device,
        tuple(program.global_size),
        program.local_size,
    )
    for p in _profiles:
        p.kernels += 1
        p.launches.append(launch)
        if p.timed:
            args = {"flops": launch.flops, "bytes": launch.bytes, "global_size": list(launch.global_size)}
            if launch.local_size > 1:
                args["local_size"] = launch.local_size
            p.events.append(TraceEvent("kernel", launch.name, launch.device, launch.start, seconds, args))
    if config.DEBUG >= 1:
        print(f"  {launch.name:<44} {launch.seconds * 1e3:8.3f} ms{'  (replay)' if start is None else ''}")
    return launch


def _note_event(kind: str, name: str, track: str, start: float, args: dict) -> None:
    """A copy, compilation or schedule, on the timeline of every timed profile."""
    event = TraceEvent(kind, name, track, start, time.perf_counter() - start, args)
    for p in _profiles:
        if p.timed:
            p.events.append(event)


# what lazygrad.viz listens with while a capture is open: `schedule(items)` before a schedule runs (its graph is
# still there), `kernel(item, entry, launch)` after each kernel of it ran (launch: a KernelLaunch, None untimed)
OBSERVERS: list = []


# JIT captures in progress (lazygrad.jit): each records the kernels launched while it is active
CAPTURES: list = []


def copy_buffer(dst: Buffer, src: Buffer, src_offset: int = 0) -> None:
    """Fill dst with src's elements from src_offset on: a device-side copy on one device, else through the host."""
    backend = backend_for(dst.device)
    if src.device == dst.device:
        backend.copy_between(dst.handle, src.handle, dst.nbytes, src_offset * src.dtype.itemsize)
    else:
        dst.copy_in(src.to_numpy()[src_offset : src_offset + dst.size])


# --- compiled kernels ----------------------------------------------------------------------------
@dataclass
class CompiledEntry:
    kernel: object
    flops: int
    bytes: int
    device: str = ""
    variables: tuple = ()  # names of the Variables the kernel takes as int arguments, in argument order


_kernel_cache: dict = {}


def kernel_name(ast, program_shape) -> str:
    digest = hashlib.sha256(ast.structure().encode()).hexdigest()[:10]
    prefix = "r" if any(n.op is AstOp.REDUCE for n in ast.walk()) else "e"
    # a symbolic size is named by its bound: v128 (up to 128)
    sizes = [f"v{s.vmax}" if isinstance(s, Node) else str(s) for s in program_shape]
    return f"{prefix}_{'_'.join(sizes) or 'scalar'}_{digest}"


def _estimate_cost(ast, buffer_dtypes, sizes, nest) -> tuple:
    """(flops, bytes) of a kernel: the ALU ops of its reduce's body (the reduce's own add included) times the
    whole iteration space, plus the other ALU ops (elementwise work, or a reduce's epilogue) times the
    output space; the bytes of its buffers."""

    def is_alu(n):
        return (n.op in ELEMENTWISE and n.op is not Op.CAST) or n.op is AstOp.REDUCE

    # equal nodes are one computation (the code generator emits them once)
    body = {n for r in ast.walk() if r.op is AstOp.REDUCE for n in r.walk() if is_alu(n)}
    others = {n for n in ast.walk() if is_alu(n)} - body
    flops = len(body) * max_prod(nest.shape) + len(others) * max_prod(nest.shape[: nest.n_output])
    return flops, sum(d.itemsize * s for d, s in zip(buffer_dtypes, sizes))


def kernel_variables(ast) -> tuple:
    """The names of the Variables a kernel's views use (sorted: the order of its int arguments)."""
    names = set()
    for n in ast.walk():
        if n.op in (AstOp.LOAD, AstOp.CONST, AstOp.STORE, AstOp.VALID):
            st = n.arg if n.op is AstOp.VALID else n.arg[1]
            if st.symbolic:
                for v in st.views:
                    for x in (*v.shape, v.offset):
                        names |= {u.name for u in user_variables(x)}
    return tuple(sorted(names))


def aliased_arguments(buffers: list) -> frozenset:
    """The positions of a launch's buffers that another position shares (an assign's target, read by its kernel)."""
    ids = [id(b) for b in buffers]
    return frozenset(i for i, b in enumerate(ids) if ids.count(b) > 1) if len(set(ids)) < len(ids) else frozenset()


# kernels index buffers and count loops in 32-bit integers (int32 in the IR, i32 in LLVM, int in OpenCL C)
_INDEX_LIMIT = 2**31 - 1


def _check_32_bit_indexes(name: str, buffer_dtypes: tuple, sizes: tuple, nest_shape: tuple) -> None:
    """Refuse, before anything runs, a kernel whose indexes would overflow 32 bits (wrong addresses, not an error)."""
    for position, (dtype, size) in enumerate(zip(buffer_dtypes, sizes)):
        if size > _INDEX_LIMIT:
            raise RuntimeError(
                f"kernel {name}: buffer {position} holds {size} {dtype.name} elements "
                f"({_size(size * dtype.itemsize)}); "
                f"kernels index with 32-bit integers, so a buffer may hold at most {_INDEX_LIMIT} elements. "
                "Split the tensor (e.g. with .chunk) into parts below that"
            )
    if any(upper_bound(d) > _INDEX_LIMIT for d in nest_shape):  # a reduce over a broadcast dim: no buffer that big
        raise RuntimeError(
            f"kernel {name}: loops of {nest_shape} iterations; kernels count with 32-bit integers, so a loop may run "
            f"at most {_INDEX_LIMIT} times. Split the tensor into parts below that"
        )


def get_kernel(ast, buffer_dtypes: tuple, device: str, sizes: tuple, aliased: frozenset = frozenset()) -> CompiledEntry:
    """`aliased`: positions whose buffer another position shares at launch (aliased_arguments)."""
    # keyed by the AST's text, not the AST: a cache holding every kernel's tree of KernelOps (and their views) kept
    # tens of thousands of objects for the garbage collector to walk at each full collection
    key = (ast.structure(), buffer_dtypes, device, aliased)
    entry = _kernel_cache.get(key)
    if entry is not None:
        return entry
    backend = backend_for(device)
    t0 = time.perf_counter()
    ahead = _lowered_ahead.pop(key, None)  # (nest, name, program) when _compile_ahead lowered it already
    nest = build_loop_nest(ast) if ahead is None else ahead[0]
    nest_shape = nest.shape
    name = kernel_name(ast, nest_shape) if ahead is None else ahead[1]
    _check_32_bit_indexes(name, buffer_dtypes, sizes, nest_shape)

    def compile_heuristic():
        # a loop, not a recursive closure: a closure that refers to itself is a reference cycle holding the AST
        capabilities = backend.capabilities
        lowered = ahead[2] if ahead is not None else None
        while True:
            program = lowered or _lowered(ast, buffer_dtypes, name, capabilities)
            lowered = None
            verify(program)  # once per compiled kernel (lowered or read from the disk cache): the IR's rules
            if config.DEBUG >= 4:
                print(f"--- linear IR of {name}\n{program.dump()}")
            try:
                return backend.compile(dataclasses.replace(program, aliased=aliased) if aliased else program)
            except backends.WorkGroupTooLarge as e:
                if _forced(ast, name) is not None or e.allowed >= capabilities.max_work_group:
                    raise  # forced options are the caller's to fix; a device that allows what it declared is a bug
                if config.DEBUG >= 1:
                    print(f"lazygrad: {e}: lowered again for work-groups of at most {e.allowed}")
                group = 1 << (max(1, min(capabilities.group_reduce, e.allowed)).bit_length() - 1)
                capabilities = dataclasses.replace(
                    capabilities, max_work_group=e.allowed, group_reduce=group if group > 1 else 0
                )

    # LAZYGRAD_SEARCH (lazygrad/search.py); its scratch buffers never alias, so an aliased launch keeps the heuristics'
    # (a kernel over a run-time size is lowered plainly: timing one value of it would say little of the others)
    if config.SEARCH and config.OPTIMIZE and _forced_options is None and not aliased and not kernel_variables(ast):
        from lazygrad import search

        kernel = search.tuned_kernel(
            ast, nest, buffer_dtypes, sizes, name, backend, compile_heuristic, _LOWERING_VERSION
        )
    else:
        kernel = compile_heuristic()
    if config.DEBUG >= 2:  # what the code generator chose for this kernel, and why
        options = kernel_options(ast, name, backend.capabilities)
        searched = " (the heuristics'; the search's choice is on its own line)" if config.SEARCH else ""
        print(f"--- options of {name} (loops {nest_shape}){searched}: {options.describe()}")
    if config.DEBUG >= 3:
        print(f"--- source of {name}\n{kernel.source}")
    seconds = time.perf_counter() - t0
    for p in _profiles:
        p.compiled += 1
        p.compile_seconds += seconds
    if _profiles:
        _note_event("compile", f"compile {name}", "host", t0, {"kernel": name, "device": device})
    flops, nbytes = _estimate_cost(ast, buffer_dtypes, sizes, nest)
    # the int arguments in the order the program takes them (the lowering names them; the AST agrees)
    entry = CompiledEntry(kernel, flops, nbytes, device, kernel.program.variables)
    _kernel_cache[key] = entry
    return entry


# --- compiling a plan's new kernels together ------------------------------------------------------
# A backend that compiles several kernels at once (LLVM's worker processes) gets a plan's new kernels before the
# first is launched; get_kernel then takes the programs lowered here (by its own cache key) instead of lowering them
# again, and the backend the object code its workers made.
_lowered_ahead: dict = {}  # get_kernel's key -> (loop nest, kernel name, program), for the plan being run


def _compile_ahead(steps: list, nodes: list, externals: list) -> None:
    """Lower the kernels of `steps` not compiled yet and hand them to their backend's `compile_ahead` at once.
    The buffers each launch will get are foreseen from the nodes (a node's buffer has its dtype and size; an
    assign writes its target's). A guess that misses costs a wasted compile, never a wrong kernel: get_kernel
    looks everything up by its own key and the backend by the source. A kernel that cannot be lowered is left to
    get_kernel, which raises its error in launch order."""
    if config.SEARCH or _forced_options is not None:
        return
    batches: dict = {}  # device -> programs
    _lowered_ahead.clear()
    for step in steps:
        if step.entry is not None or step.kind is not _KERNEL_ITEM:
            continue
        outputs = [nodes[i] for i in step.outputs]
        device = outputs[0].device
        backend = backend_for(device)
        if 0 in outputs[0].shape:
            continue
        inputs = [nodes[i] if i >= 0 else externals[-1 - i] for i in step.inputs]
        targets = [out.arg if out.op is _ASSIGN else out for out in outputs]
        # what each launch slot will hold: a realized node's buffer, else the buffer the node will get
        buffers = [n if n.buffer is None else n.buffer for n in (*targets, *inputs)]
        dtypes = tuple(n.dtype for n in (*targets, *inputs))
        key = (step.ast.structure(), dtypes, device, aliased_arguments(buffers))
        if key in _kernel_cache or key in _lowered_ahead:
            continue
        try:
            nest = build_loop_nest(step.ast)
            name = kernel_name(step.ast, nest.shape)
            _check_32_bit_indexes(name, dtypes, tuple(n.size for n in (*targets, *inputs)), nest.shape)
            program = _lowered(step.ast, dtypes, name, backend.capabilities)
        except Exception:  # noqa: BLE001 (get_kernel lowers it again and raises the error at its launch)
            continue
        _lowered_ahead[key] = (nest, name, program)
        batches.setdefault(device, []).append(dataclasses.replace(program, aliased=key[3]) if key[3] else program)
    for device, programs in batches.items():
        backend_for(device).compile_ahead(programs)


# while set (by `forced_options`): (kernel name, LoopNest) -> KernelOptions that replace the heuristics' choice,
# or None to keep it for that kernel
_forced_options = None


@contextlib.contextmanager
def forced_options(choose):
    """Lower the kernels compiled inside with the options `choose(name, nest)` returns instead of the heuristics'
    (None keeps theirs): to test a code path on any device, or to replay a kernel with options written by hand.
    Those kernels bypass the disk cache, and the compiled-kernel cache is restored afterwards."""
    global _forced_options
    saved = dict(_kernel_cache)
    _kernel_cache.clear()
    _plans.clear()  # the plans seen before hold the kernels compiled without these options (and no ASTs)
    _forced_options = choose
    try:
        yield
    finally:
        _forced_options = None
        _kernel_cache.clear()
        _kernel_cache.update(saved)
        _plans.clear()


def _forced(ast, name: str):
    if _forced_options is None:
        return None
    nest = build_loop_nest(ast)
    options = _forced_options(name, nest)
    if options is not None:
        _check_options(options, nest, name, "forced options")
    return options


def kernel_options(ast, name: str, capabilities) -> KernelOptions:
    """The option record a kernel is lowered with, reasons included: the one `forced_options` gives, none under
    LAZYGRAD_OPTIMIZE=0, else the heuristics' choice for a device of these capabilities."""
    forced = _forced(ast, name)
    if forced is not None:
        return forced
    if not config.OPTIMIZE:
        return KernelOptions(reasons=["LAZYGRAD_OPTIMIZE=0: the plain loop nest"])
    nest = build_loop_nest(ast)
    options = choose_options(nest, ast, capabilities)
    _check_options(options, nest, name, "the heuristics' options")
    return options


def _check_options(options: KernelOptions, nest, name: str, whose: str) -> None:
    """Options that do not fit the loop nest (a factor that does not divide its dim) would compute wrong values:
    refused, naming the kernel."""
    problem = options_problem(options, nest)
    if problem is not None:
        raise ValueError(f"{whose} for kernel {name} ({options.describe()}) do not fit its loops: {problem}")


def _lowered(ast, buffer_dtypes: tuple, name: str, capabilities):
    """The linear IR of a kernel, from the disk cache when a process lowered the same kernel before
    (lowering is the slow part of a warm start: the compiled code is cached by the backend)."""
    forced = _forced(ast, name)
    if forced is not None:
        return lower(ast, buffer_dtypes, name, forced, capabilities)
    key = f"program|{_LOWERING_VERSION}|{config.OPTIMIZE}|{capabilities!r}|{buffer_dtypes}|{name}|" + ast.structure()
    blob = diskcache.get(key)  # only an entry this user's lazygrad wrote for this key (HMAC): see docs/cache.md
    if blob is not None:
        try:
            return decode_program(blob)  # data, parsed strictly: never pickle
        except ProgramFormatError:  # an entry from an incompatible version: lower again
            pass
    program = lower(ast, buffer_dtypes, name, kernel_options(ast, name, capabilities), capabilities)
    try:
        diskcache.put(key, encode_program(program))
    except ProgramFormatError:  # a program the format cannot express is lowered again next time
        pass
    return program


def _codegen_digest() -> str:
    """A hash of the code generator's own source: a cached program is reused only by the code that made it."""
    from lazygrad import codegen, ops, shape, symbolic

    digest = hashlib.sha256()
    folder = os.path.dirname(codegen.__file__)
    modules = [shape.__file__, symbolic.__file__, ops.__file__]  # ops: the IR's vocabulary and the reduce identities
    for path in sorted([*(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py")), *modules]):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


_LOWERING_VERSION = _codegen_digest()


# --- running a schedule --------------------------------------------------------------------------
# read once: Enum class attributes are slow to read in Python 3.11, and these are read for every launch
_KERNEL_ITEM, _ASSIGN, _CONST = ItemKind.KERNEL, Op.ASSIGN, Op.CONST


class PlanStep:
    """One item of a schedule with its nodes named by position (see Scheduler.structure): an index into the
    scheduled nodes, or -1 - an index into the realized bases read. So the step applies to every graph of the
    same structure, and it keeps the compiled kernel it launches. Its kernel AST is dropped once the kernel is
    found (a plan kept its ASTs' KernelOps, views and tuples alive for the garbage collector to walk): when the
    compiled kernels must be looked up again (`forced_options`, a replaced kernel cache), the plans are dropped."""

    __slots__ = ("kind", "outputs", "inputs", "ast", "reason", "entry", "var_vals", "sizes", "empty")

    def __init__(
        self, kind, outputs: tuple, inputs: tuple, ast, reason: str, var_vals: dict | None = None, sizes: tuple = ()
    ):
        self.kind, self.outputs, self.inputs, self.ast, self.reason = kind, outputs, inputs, ast, reason
        self.entry = None
        self.var_vals = var_vals or {}  # the Variables' values of the graph this plan was made for
        # the outputs' element counts: the structure fixes every shape, so they are counted once, not per launch
        self.sizes = sizes
        self.empty = 0 in sizes  # a kernel with no elements to compute (launched as zero-size buffers only)


# The schedules of graphs seen before, by structure (Scheduler.structure's key). A training loop without @jit
# builds the same graph each step: its schedule, kernels and launch order are found here instead of made again.
_plans: dict = {}
MAX_PLANS = 512  # distinct graph structures kept (the oldest is dropped): each holds its compiled kernels
_plan_kernel_cache = [None]  # the _kernel_cache the plans' entries came from (a test may replace it)
# how many realizations scheduled their graph ("made") and how many ran the plan of an equal structure ("reused")
schedule_counts = {"made": 0, "reused": 0}
# seconds realize() spent finding or making schedules, and running them (launches, kernels, uploads): the split
# examples/benchmark_eager.py reports (the rest of an eager step is building the graph)
realize_seconds = {"schedule": 0.0, "run": 0.0}


def _plan(items: list, nodes: list, externals: list) -> list:
    position = {id(n): i for i, n in enumerate(nodes)}
    position.update({id(e): -1 - j for j, e in enumerate(externals)})
    return [
        PlanStep(
            item.kind,
            tuple(position[id(o)] for o in item.outputs),
            tuple(position[id(b)] for b in item.inputs),
            item.ast,
            item.reason,
            item.var_vals,
            tuple(o.size for o in item.outputs),
        )
        for item in items
    ]


def run_schedule(items: list) -> None:
    """Run schedule items (from create_schedule) over the nodes they name."""
    nodes = list({id(n): n for item in items for n in (*item.outputs, *item.inputs)}.values())
    run_plan(_plan(items, nodes, []), nodes, [], items)


def run_plan(steps: list, nodes: list, externals: list, items: list | None = None) -> None:
    """Run a plan's steps over the nodes and externals of a graph of its structure. `items`, the schedule the
    plan was made from (a graph scheduled now, not a reused plan), goes to the observers (lazygrad.viz)."""
    if config.DEBUG >= 2:
        print(f"--- schedule: {len(steps)} items")
        for step in steps:
            node = nodes[step.outputs[0]]
            outs = f" (+{len(step.outputs) - 1} outputs)" if len(step.outputs) > 1 else ""
            print(f"  {step.kind:6} {node.op:10} {str(node.shape):24} {step.reason}{outs}")
    if items is not None:
        for observer in OBSERVERS:
            observer.schedule(items)
    start = time.perf_counter() if _profiles else 0.0
    # (a copy's step never gets an entry: only kernels not compiled yet call for the look ahead)
    ahead = any(step.entry is None and step.kind is _KERNEL_ITEM for step in steps)
    if ahead:
        _compile_ahead(steps, nodes, externals)
    buffer_op = Op.BUFFER  # read once: an Enum class attribute is slow to read in Python 3.11
    # nothing watches (no profile, capture, observer or DEBUG): a kernel of one output, already compiled, without
    # run-time sizes, launches here directly (most launches of a reused plan), without _run_step's checks and lists
    plain = not (_profiles or CAPTURES or OBSERVERS or config.DEBUG >= 1)
    kernel_item = _KERNEL_ITEM
    for number, step in enumerate(steps):
        entry = step.entry
        if plain and entry is not None and step.kind is kernel_item and len(step.outputs) == 1:
            if not (entry.variables or step.empty):
                node = nodes[step.outputs[0]]
                buffer = node.arg.buffer if node.op is _ASSIGN else Buffer(node.device, step.sizes[0], node.dtype)
                handles = [buffer.handle]
                for i in step.inputs:
                    handles.append((nodes[i] if i >= 0 else externals[-1 - i]).buffer.handle)
                entry.kernel(handles)
                node.buffer = buffer
                node.srcs = ()  # a realized base no longer needs what it was computed from
                if node.op is not buffer_op:
                    if node.op is not _CONST:
                        node.arg = None
                    node.op = buffer_op
                continue
        positions = step.outputs
        outputs = [nodes[positions[0]]] if len(positions) == 1 else [nodes[i] for i in positions]
        inputs = [nodes[i] if i >= 0 else externals[-1 - i] for i in step.inputs]
        _run_step(step, outputs, inputs, items[number] if items is not None else None)
        for out in outputs:  # a realized base no longer needs what it was computed from
            out.srcs = ()
            if out.op is not buffer_op:
                if out.op is not _CONST:
                    out.arg = None
                out.op = buffer_op
    if ahead:
        _lowered_ahead.clear()  # a guess no launch took (its nest and program are not kept)
    if _profiles:
        _note_event("schedule", f"schedule ({len(steps)} items)", "host", start, {"items": len(steps)})


def _run_step(step: PlanStep, outputs: list, inputs: list, item: ScheduleItem | None):
    node = outputs[0]
    kind = step.kind
    if kind is not _KERNEL_ITEM:
        _run_transfer(kind, node, inputs)
        return
    sizes = step.sizes
    if step.empty:
        for out in outputs:
            out.buffer = Buffer(out.device, 0, out.dtype)
        return
    if len(outputs) == 1:  # (most kernels: no comprehensions, each a call in Python 3.11)
        buffers = [node.arg.buffer if node.op is _ASSIGN else Buffer(node.device, sizes[0], node.dtype)]
    else:
        buffers = [
            out.arg.buffer if out.op is _ASSIGN else Buffer(out.device, size, out.dtype)
            for out, size in zip(outputs, sizes)
        ]
    for b in inputs:
        buffers.append(b.buffer)
    entry = step.entry
    if entry is None:
        for b in inputs:
            if b.device != node.device:
                raise RuntimeError(f"kernel on {node.device} reads a buffer on {b.device}; copy it with .to() first")
        dtypes = tuple(b.dtype for b in buffers)
        sizes = tuple(b.size for b in buffers)
        entry = step.entry = get_kernel(step.ast, dtypes, node.device, sizes, aliased_arguments(buffers))
        step.ast = None  # the compiled kernel is all the plan needs now (see PlanStep)
    timed = _timing_wanted()
    start = time.perf_counter() if timed else 0.0
    handles = []
    for b in buffers:
        handles.append(b.handle)
    if entry.variables:  # the values of the run-time sizes and offsets, as int arguments
        unbound = [name for name in entry.variables if name not in step.var_vals]
        if unbound:
            name = entry.kernel.name
            raise ValueError(f"Variable {unbound[0]!r} has no value in kernel {name}: slice with var.bind(n)")
        values = tuple(step.var_vals[name] for name in entry.variables)
        seconds = entry.kernel(handles, wait=timed, values=values)
    else:
        values = ()
        seconds = entry.kernel(handles, wait=timed)
    for out, buffer in zip(outputs, buffers):
        out.buffer = buffer
    for capture in CAPTURES:  # the JIT gives the buffers this launch allocated a fresh one per replay
        capture.record(entry, buffers, [b for out, b in zip(outputs, buffers) if out.op is not _ASSIGN], values)
    launch = None
    if timed:
        launch = note_launch(entry, seconds, start)
    else:
        for p in _profiles:
            p.kernels += 1
    if item is not None:
        for observer in OBSERVERS:
            observer.kernel(item, entry, launch)


def _run_transfer(kind, node: LazyBuffer, inputs: list) -> None:
    """An upload of host data or a copy between devices."""
    if kind is ItemKind.HOST:
        start = time.perf_counter()
        node.buffer = Buffer(node.device, node.size, node.dtype)
        node.buffer.copy_in(np.ascontiguousarray(node.arg))
        _count_copy("copy host -> device", node.device, node.buffer.nbytes, start)
        return
    if kind is ItemKind.COPY:
        if CAPTURES:
            warnings.warn(
                "lazygrad.jit: a copy between devices inside a jitted function is not replayed",
                RuntimeWarning,
                stacklevel=4,
            )
        start = time.perf_counter()
        data = inputs[0].buffer.to_numpy()
        node.buffer = Buffer(node.device, node.size, node.dtype)
        node.buffer.copy_in(data)
        _count_copy(f"copy {inputs[0].device} -> {node.device}", node.device, node.buffer.nbytes, start)


def _count_copy(name: str = "copy", device: str = "", nbytes: int = 0, start: float | None = None):
    for p in _profiles:
        p.copies += 1
    if _profiles and start is not None:
        _note_event("copy", name, f"{device} copies", start, {"bytes": nbytes})


@defers_gc
def realize(lazybuffers: list) -> None:
    # a constant needs no memory (kernels inline it), and its node is shared by every equal constant
    pending = []
    for lb in lazybuffers:
        base = lb if lb._base is None else lb._base
        if base.buffer is None and base.op is not _CONST:
            pending.append(lb)
    if not pending:
        return
    start = time.perf_counter()
    if _plan_kernel_cache[0] is not _kernel_cache:  # a test replaced the kernel cache: plan and compile again
        _plan_kernel_cache[0] = _kernel_cache
        _plans.clear()
    scheduler = Scheduler(pending)
    key, externals = scheduler.structure()
    # an observer (lazygrad.viz) is shown the schedule with its graph and reasons, so it is made again
    try:
        steps = _plans.get(key)
    except TypeError:  # an arg that cannot be a key: scheduled every time
        key = steps = None
    if OBSERVERS:
        steps = None
    items = None
    if steps is not None:
        schedule_counts["reused"] += 1
    else:
        schedule_counts["made"] += 1
        items = scheduler.schedule()
        steps = _plan(items, scheduler.nodes, externals)
        if key is not None:
            if len(_plans) >= MAX_PLANS:
                del _plans[next(iter(_plans))]
            _plans[key] = steps
    scheduled = time.perf_counter()
    run_plan(steps, scheduler.nodes, externals, items)
    realize_seconds["schedule"] += scheduled - start
    realize_seconds["run"] += time.perf_counter() - scheduled


def to_numpy(lb: LazyBuffer) -> np.ndarray:
    """The values of a LazyBuffer (any view) as a numpy array; counts as a copy."""
    if symbolic_dims(lb.shape):
        raise NotImplementedError(
            f"numpy() of a tensor of symbolic shape {describe_symbolic(lb.shape)}: its size is known only in kernels; "
            "reduce it, or write it into a tensor of fixed shape, first"
        )
    base = lb if lb._base is None else lb._base
    if base.op is _CONST or (base is not lb and not (lb.st.contiguous_view and lb.size == base.size)):
        lb = lb.contiguous()
    realize([lb])
    base = lb if lb._base is None else lb._base
    if base.size == 0:
        return np.zeros(lb.shape, dtype=lb.dtype.np)
    start = time.perf_counter()
    data = base.buffer.to_numpy()
    if _profiles:  # (the name is formatted only for a profile: every item() comes here)
        _count_copy(f"copy {base.device} -> host", base.device, base.buffer.nbytes, start)
    return data.reshape(lb.shape)

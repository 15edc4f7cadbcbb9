"""Data-parallel collectives over MPI, with torch.distributed's names.

    import lazygrad.distributed as dist
    dist.init_process_group()            # rank and world size come from MPI (mpiexec -n 2 python train.py)
    dist.all_reduce(t, op=dist.ReduceOp.AVG)

MPI (through mpi4py) is the transport: the ranks are the processes `mpiexec` starts, on one host or across hosts.
A collective realizes its tensors (one schedule), copies each bucket of them into one contiguous host staging buffer,
runs one MPI call on it, and hands back tensors holding their parts of the result: a bucket of many tensors costs one
message, not one per tensor (docs/distributed.md).

Failures end the job instead of hanging it: every collective first checks that all ranks bring the same shapes and
dtypes (and says which rank differs), every wait has a timeout, and an exception that escapes on any rank aborts
the whole job (MPI_Abort through sys.excepthook). A rank that dies is noticed by the launcher, which ends the others.
"""

from __future__ import annotations

import enum
import sys
import time
import traceback
import zlib
from datetime import timedelta

import numpy as np

from lazygrad.dtype import ALL_DTYPES
from lazygrad.tensor import Tensor, realize

# how long a collective waits for the other ranks before it gives up (init_process_group(timeout=...))
DEFAULT_TIMEOUT = timedelta(minutes=10)
# the fixed-size record of what a rank brings to a collective (compared across ranks before the data moves)
_MAX_DIMS = 8
_SIGNATURE_LENGTH = 6 + _MAX_DIMS


class ReduceOp(enum.Enum):
    SUM = "sum"
    AVG = "avg"
    MAX = "max"
    MIN = "min"


class DistributedError(RuntimeError):
    """A collective cannot go on: the ranks disagree, or one of them stopped answering."""


class _ProcessGroup:
    def __init__(self, comm, timeout: timedelta):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.timeout = timeout.total_seconds()


_group: _ProcessGroup | None = None
_MPI = None  # the mpi4py.MPI module, once init_process_group imported it


def _import_mpi():
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError(
                "lazygrad.distributed needs mpi4py and an MPI library: pip install 'lazygrad[distributed]' "
                "(mpi4py and MPICH from PyPI), then start the ranks with mpiexec -n N python your_script.py"
            ) from e
        _MPI = MPI
    return _MPI


def is_available() -> bool:
    """Whether mpi4py (and so an MPI library) can be imported."""
    try:
        _import_mpi()
    except ImportError:
        return False
    return True


def is_initialized() -> bool:
    return _group is not None


def init_process_group(
    backend: str | None = None,
    init_method: str | None = None,
    timeout: timedelta | None = None,
    world_size: int = -1,
    rank: int = -1,
    store=None,
    group_name: str = "",
    pg_options=None,
    device_id=None,
) -> None:
    """Join the job that mpiexec started: rank and world size come from MPI. torch's other arguments are accepted;
    a world_size or rank that contradicts MPI's is an error. Installs an excepthook that aborts the job."""
    global _group
    if backend not in (None, "mpi", "gloo", "nccl"):
        raise ValueError(f"lazygrad.distributed runs on MPI; backend {backend!r} is not supported")
    if _group is not None:
        raise RuntimeError("trying to initialize the default process group twice")
    MPI = _import_mpi()
    # a communicator of our own: the user's own MPI traffic on COMM_WORLD cannot match ours
    group = _ProcessGroup(MPI.COMM_WORLD.Dup(), timeout or DEFAULT_TIMEOUT)
    if world_size not in (-1, group.size) or rank not in (-1, group.rank):
        raise ValueError(
            f"init_process_group(world_size={world_size}, rank={rank}), but mpiexec started this process as rank "
            f"{group.rank} of {group.size}: the ranks come from MPI"
        )
    _group = group
    _install_abort_on_exception()


def destroy_process_group() -> None:
    global _group
    if _group is not None:
        _group.comm.Free()
        _group = None


def _require_group() -> _ProcessGroup:
    if _group is None:
        raise RuntimeError(
            "Default process group has not been initialized, please make sure to call init_process_group."
        )
    return _group


def get_rank() -> int:
    return _require_group().rank


def get_world_size() -> int:
    return _require_group().size


def _install_abort_on_exception() -> None:
    """An exception that escapes on one rank would leave the others waiting in their next collective forever:
    print it, naming the rank, then abort every rank of the job."""
    previous = sys.excepthook

    def abort_job(kind, value, trace):
        rank = _group.rank if _group is not None else "?"
        if previous is not sys.__excepthook__:
            previous(kind, value, trace)
        # one write: the launcher stops forwarding output once the abort reaches it
        report = "".join(traceback.format_exception(kind, value, trace))
        sys.stdout.flush()
        sys.stderr.write(f"{report}[lazygrad.distributed] rank {rank} raised {kind.__name__}: aborting all ranks\n")
        sys.stderr.flush()
        time.sleep(0.1)  # and a moment for it to reach the launcher before the abort does
        _MPI.COMM_WORLD.Abort(1)

    sys.excepthook = abort_job


# ---- waiting with a deadline ----


def _wait(request, what: str) -> None:
    """Wait for a non-blocking MPI request; raise DistributedError once the group's timeout has passed. Polls (with
    short sleeps once the wait is long) instead of blocking, so that no rank spins a core while it waits."""
    group = _require_group()
    deadline = time.monotonic() + group.timeout
    polls = 0
    while not request.Test():
        polls += 1
        if polls > 200:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"{what} on rank {group.rank} timed out after {group.timeout:g} s waiting for the other ranks "
                    f"(world size {group.size}): a rank stopped, hangs, or called another collective"
                )
            time.sleep(0.0002 if polls < 2000 else 0.002)


def barrier() -> None:
    group = _require_group()
    _wait(group.comm.Ibarrier(), "barrier")


# ---- every rank brings the same: checked before the data moves ----


def _code(name: str) -> int:
    """The same number for the same name on every rank (Python's own hash differs between processes)."""
    return zlib.crc32(name.encode())


_COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "reduce_scatter")
_NAMES = {_code(name): name for name in (*_COLLECTIVES, *(d.name for d in ALL_DTYPES))}


def _signature(kind: str, tensors: list[Tensor], extra: int = 0) -> np.ndarray:
    """What this rank brings to a collective, as a fixed-size row: the collective, the count of tensors, an extra
    number (the reduce op or root), the dtype, the total count of elements, and the first tensor's shape."""
    shapes = [tuple(t.shape) for t in tensors]
    row = np.full(_SIGNATURE_LENGTH, -1, dtype=np.int64)
    row[0] = _code(kind)
    row[1] = len(tensors)
    row[2] = extra
    row[3] = _code(tensors[0].dtype.name) if tensors else -1
    row[4] = sum(int(np.prod(s)) for s in shapes)
    first = shapes[0] if shapes else ()
    row[5] = len(first)
    row[6 : 6 + min(len(first), _MAX_DIMS)] = first[:_MAX_DIMS]
    return row


def _describe(row: np.ndarray) -> str:
    shape = tuple(int(d) for d in row[6 : 6 + min(int(row[5]), _MAX_DIMS)])
    text = f"shape {shape} {_NAMES.get(int(row[3]), '?')}"
    if row[1] != 1:
        text = f"{int(row[1])} tensors of {int(row[4])} elements in all, the first of {text}"
    return text


def _check_same(kind: str, tensors: list[Tensor], extra: int = 0, what_extra: str = "") -> None:
    """Raise DistributedError on every rank when the ranks' tensors differ (naming each rank's), instead of letting
    MPI truncate a message or wait forever for one that never comes."""
    group = _require_group()
    mine = _signature(kind, tensors, extra)
    rows = np.empty((group.size, _SIGNATURE_LENGTH), dtype=np.int64)
    _wait(group.comm.Iallgather(mine, rows), kind)
    if (rows == rows[0]).all():
        return
    if (rows[:, 0] != rows[0, 0]).any():
        calls = ", ".join(f"rank {r}: {_NAMES.get(int(row[0]), '?')}" for r, row in enumerate(rows))
        raise DistributedError(f"ranks called different collectives at the same point ({calls})")
    if what_extra and (rows[:, 2] != rows[0, 2]).any():
        values = ", ".join(f"rank {r}: {what_extra} {int(row[2])}" for r, row in enumerate(rows))
        raise DistributedError(f"{kind}: ranks disagree on {what_extra} ({values})")
    listing = ", ".join(f"rank {r}: {_describe(row)}" for r, row in enumerate(rows))
    differing = [r for r, row in enumerate(rows) if not (row[1:] == rows[0, 1:]).all()]
    raise DistributedError(
        f"{kind}: the tensors differ between ranks (rank {differing[0]} differs from rank 0): {listing}"
    )


def check_same_structure(kind: str, entries: list[str]) -> None:
    """Raise DistributedError on every rank when the ranks' lists of entries (a model's parameter names, shapes and
    dtypes, say) differ, naming the first entry that differs and the ranks' versions of it."""
    group = _require_group()
    mine = np.array([_code("\n".join(entries)), len(entries)], dtype=np.int64)
    rows = np.empty((group.size, 2), dtype=np.int64)
    _wait(group.comm.Iallgather(mine, rows), kind)
    if (rows == rows[0]).all():
        return
    # every rank saw the difference, so every rank is here for this second exchange
    lists = group.comm.allgather(entries)
    for r, theirs in enumerate(lists):
        if theirs != lists[0]:
            at = next((i for i, (a, b) in enumerate(zip(lists[0], theirs)) if a != b), min(len(theirs), len(lists[0])))
            rank0 = lists[0][at] if at < len(lists[0]) else "nothing"
            other = theirs[at] if at < len(theirs) else "nothing"
            raise DistributedError(
                f"{kind}: rank {r} differs from rank 0 at entry {at}: rank 0 has {rank0}, rank {r} has {other} "
                f"(rank 0 has {len(lists[0])} entries, rank {r} {len(theirs)})"
            )


# ---- moving tensors through the host: one contiguous staging buffer per bucket ----


def _pack(tensors: list[Tensor]) -> np.ndarray:
    """The tensors' values one after another in one host array (the bucket's staging buffer, one MPI message).
    Each tensor is copied into its place; a cat on the device first would cost more than it saves (lazygrad's cat
    reads every input at every output element)."""
    for t in tensors[1:]:
        if t.dtype != tensors[0].dtype or t.device != tensors[0].device:
            raise TypeError(
                f"a bucket holds one dtype on one device; got {tensors[0].dtype.name} on {tensors[0].device} and "
                f"{t.dtype.name} on {t.device}"
            )
    realize(*tensors)  # one schedule for all of them, so the kernels that compute them run together
    staging = np.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype.np)
    offset = 0
    for t in tensors:
        staging[offset : offset + t.numel()] = t.numpy().reshape(-1)
        offset += t.numel()
    return staging


def _unpack(staging: np.ndarray, like: list[Tensor]) -> list[Tensor]:
    """Tensors shaped like each of `like`, holding their parts of the staging buffer (uploaded when used)."""
    pieces, offset = [], 0
    for t in like:
        n = t.numel()
        pieces.append(Tensor(staging[offset : offset + n].reshape(t.shape), dtype=t.dtype, device=t.device))
        offset += n
    return pieces


def _mpi_op(op: ReduceOp):
    return {ReduceOp.SUM: _MPI.SUM, ReduceOp.AVG: _MPI.SUM, ReduceOp.MAX: _MPI.MAX, ReduceOp.MIN: _MPI.MIN}[op]


def _coerce_op(op) -> ReduceOp:
    if isinstance(op, ReduceOp):
        return op
    try:
        return ReduceOp(str(op).lower())
    except ValueError:
        raise ValueError(f"unknown reduce op {op!r}; lazygrad.distributed has SUM, AVG, MAX and MIN") from None


def _check_reducible(kind: str, tensors: list[Tensor], op: ReduceOp) -> None:
    if op is ReduceOp.AVG and not all(t.dtype.is_float for t in tensors):
        dtypes = sorted({t.dtype.name for t in tensors})
        raise TypeError(f"{kind} with ReduceOp.AVG needs floating-point tensors (got {', '.join(dtypes)})")
    if any(t.dtype.name == "bool" for t in tensors):
        raise TypeError(f"{kind}: bool tensors cannot be reduced; cast them to an integer dtype first")


def all_reduce_buckets(buckets: list[list[Tensor]], op=ReduceOp.SUM, check: bool = True) -> list[list[Tensor]]:
    """Reduce buckets of tensors across ranks, one message per bucket; returns the results as new tensors (the
    tensors themselves are not written: DistributedDataParallel rebinds gradients to these). Every tensor is computed
    in one schedule; each bucket's message starts as soon as its staging buffer is filled, while the next bucket is
    copied out."""
    group = _require_group()
    op = _coerce_op(op)
    everything = [t for bucket in buckets for t in bucket]
    _check_reducible("all_reduce", everything, op)
    if check:
        _check_same("all_reduce", everything, list(ReduceOp).index(op), "reduce op")
    realize(*everything)  # one schedule: the kernels that compute every bucket's tensors run once, together
    stagings, requests = [], []
    for bucket in buckets:
        stagings.append(_pack(bucket))
        if group.size > 1:
            requests.append(group.comm.Iallreduce(_MPI.IN_PLACE, stagings[-1], op=_mpi_op(op)))
    for request in requests:
        _wait(request, "all_reduce")
    results = []
    for staging, bucket in zip(stagings, buckets):
        if op is ReduceOp.AVG:
            np.divide(staging, group.size, out=staging)
        results.append(_unpack(staging, bucket))
    return results


def all_reduce_coalesced(tensors: list[Tensor], op=ReduceOp.SUM) -> list[Tensor]:
    """Reduce same-dtype tensors across ranks in one message; returns the results (see all_reduce_buckets)."""
    return all_reduce_buckets([tensors], op)[0]


def all_reduce(tensor: Tensor, op=ReduceOp.SUM, group=None, async_op: bool = False) -> None:
    """Reduce `tensor` across all ranks, in place: every rank ends with the sum (mean, max, min)."""
    _no_async(async_op, group)
    (result,) = all_reduce_coalesced([tensor], op)
    tensor.assign(result)


def broadcast_coalesced(tensors: list[Tensor], src: int = 0) -> None:
    """Every rank's tensors take the values of rank `src`'s, in place; one message per dtype."""
    group = _require_group()
    _check_rank("broadcast", src)
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype.name, t.device), []).append(t)
    for bucket in by_dtype.values():
        _check_same("broadcast", bucket, src, "src")
        staging = _pack(bucket)
        if group.size > 1:
            _wait(group.comm.Ibcast(staging, root=src), "broadcast")
        if group.rank != src:
            for t, value in zip(bucket, _unpack(staging, bucket)):
                t.assign(value)


def broadcast(tensor: Tensor, src: int = 0, group=None, async_op: bool = False) -> None:
    """`tensor` takes rank `src`'s values on every rank, in place."""
    _no_async(async_op, group)
    broadcast_coalesced([tensor], src)


def _check_rank_list(call: str, list_name: str, tensors: list, like_name: str, like: Tensor, size: int) -> None:
    """A collective's list of one tensor per rank: as long as the world, each of `like`'s shape and dtype."""
    if len(tensors) != size:
        raise ValueError(f"{call} needs a list of {size} tensors (the world size), got {len(tensors)}")
    for r, t in enumerate(tensors):
        if t.shape != like.shape or t.dtype != like.dtype:
            raise ValueError(
                f"{call}: {list_name}[{r}] is {tuple(t.shape)} {t.dtype.name}, the {like_name} "
                f"{tuple(like.shape)} {like.dtype.name}"
            )


def all_gather(tensor_list: list[Tensor], tensor: Tensor, group=None, async_op: bool = False) -> None:
    """tensor_list[r] takes rank r's `tensor`, on every rank (in place, as torch's)."""
    _no_async(async_op, group)
    process_group = _require_group()
    _check_rank_list("all_gather", "tensor_list", tensor_list, "input", tensor, process_group.size)
    _check_same("all_gather", [tensor])
    mine = _pack([tensor])
    gathered = np.empty(process_group.size * mine.size, dtype=mine.dtype)
    _wait(process_group.comm.Iallgather(mine, gathered), "all_gather")
    for t, value in zip(tensor_list, _unpack(gathered, tensor_list)):
        t.assign(value)


def reduce_scatter(output: Tensor, input_list: list[Tensor], op=ReduceOp.SUM, group=None, async_op: bool = False):
    """`output` on rank r takes the reduction over all ranks of their input_list[r] (in place, as torch's)."""
    _no_async(async_op, group)
    process_group = _require_group()
    op = _coerce_op(op)
    _check_rank_list("reduce_scatter", "input_list", input_list, "output", output, process_group.size)
    _check_reducible("reduce_scatter", input_list, op)
    _check_same("reduce_scatter", input_list, list(ReduceOp).index(op), "reduce op")
    staging = _pack(input_list)
    mine = np.empty(output.numel(), dtype=staging.dtype)
    _wait(process_group.comm.Ireduce_scatter_block(staging, mine, op=_mpi_op(op)), "reduce_scatter")
    if op is ReduceOp.AVG:
        np.divide(mine, process_group.size, out=mine)
    (value,) = _unpack(mine, [output])
    output.assign(value)


def _check_rank(kind: str, rank: int) -> None:
    size = _require_group().size
    if not 0 <= rank < size:
        raise ValueError(f"{kind}: rank {rank} is not in the group (world size {size})")


def _no_async(async_op: bool, group) -> None:
    if async_op:
        raise NotImplementedError("lazygrad.distributed collectives are synchronous (async_op=True is not supported)")
    if group is not None:
        raise NotImplementedError("lazygrad.distributed has one process group, the world (group=None)")


# ---- splitting a data set between ranks ----


class DistributedSampler:
    """Each rank's share of a data set's indices, as torch.utils.data.distributed.DistributedSampler: the indices
    (shuffled by seed + epoch when shuffle) are padded by repeating the first ones to a multiple of num_replicas (or,
    with drop_last, cut to one), and rank r takes every num_replicas-th from r. Call set_epoch(e) every epoch."""

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):  # fmt: skip
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"Invalid rank {self.rank}, rank should be in the interval [0, {self.num_replicas - 1}]")
        self.dataset_length = dataset if isinstance(dataset, int) else len(dataset)
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0
        if drop_last:
            self.num_samples = self.dataset_length // self.num_replicas
        else:
            self.num_samples = -(-self.dataset_length // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        if self.shuffle:
            # numpy's generator, seeded by (seed, epoch): every rank draws the same permutation (not torch's stream)
            indices = np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_length).tolist()
        else:
            indices = list(range(self.dataset_length))
        if self.drop_last:
            indices = indices[: self.total_size]
        else:
            padding = self.total_size - len(indices)
            while padding > 0:
                indices += indices[:padding]
                padding = self.total_size - len(indices)
        return iter(indices[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])


__all__ = [
    "DistributedError",
    "DistributedSampler",
    "ReduceOp",
    "all_gather",
    "all_reduce",
    "all_reduce_buckets",
    "all_reduce_coalesced",
    "check_same_structure",
    "barrier",
    "broadcast",
    "broadcast_coalesced",
    "destroy_process_group",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_available",
    "is_initialized",
    "reduce_scatter",
]

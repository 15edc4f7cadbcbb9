"""DistributedDataParallel: data-parallel training over lazygrad.distributed (MPI), with torch's names.

    dist.init_process_group()
    model = DistributedDataParallel(model)       # every rank starts from rank 0's parameters and buffers
    loss_fn(model(x_local), y_local).backward()  # gradients are averaged across ranks as backward() finishes
    opt.step()

backward() in lazygrad builds the gradient graph and runs nothing; the gradients must be averaged before the
optimizer reads them. DDP hooks each parameter's gradient accumulation: once every parameter of the model has
received its gradient in a backward() call, it computes them all (one schedule), packs them into buckets of about
bucket_cap_mb (in reverse order of registration, as torch: the last layers' gradients are ready first) and averages
each bucket across ranks in one MPI message. The parameters' .grad then hold the averages.

SyncBatchNorm (and SyncBatchNorm.convert_sync_batchnorm) normalizes with the statistics of the global batch.
"""

from __future__ import annotations

import contextlib
import functools
import weakref

import lazygrad
from lazygrad import distributed as dist
from lazygrad import runtime
from lazygrad.nn import functional as F
from lazygrad.nn.layers import BatchNorm2d
from lazygrad.nn.module import Module, note_buffer_update
from lazygrad.tensor import Tensor, realize


class DistributedDataParallel(Module):
    """Wraps a module for data-parallel training: parameters and buffers are broadcast from rank 0 when wrapped,
    buffers again before each forward (broadcast_buffers), and gradients are averaged in buckets after backward().
    device_ids, output_device, dim and gradient_as_bucket_view are accepted for torch's signature and ignored."""

    def __init__(
        self,
        module: Module,
        device_ids=None,
        output_device=None,
        dim: int = 0,
        broadcast_buffers: bool = True,
        process_group=None,
        bucket_cap_mb: float = 25.0,
        find_unused_parameters: bool = False,
        gradient_as_bucket_view: bool = False,
        static_graph: bool = False,
    ):
        super().__init__()
        if process_group is not None:
            raise NotImplementedError("lazygrad.distributed has one process group, the world (process_group=None)")
        if find_unused_parameters:
            raise NotImplementedError(
                "DistributedDataParallel(find_unused_parameters=True) is not supported: every parameter that requires "
                "grad must take part in the loss (set requires_grad=False on the others)"
            )
        self.module = module
        self.broadcast_buffers = broadcast_buffers
        self.bucket_cap_mb = bucket_cap_mb
        self.require_backward_grad_sync = True
        named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
        buffers = list(module.buffers())
        # all ranks must hold the same model: said here, naming the first parameter that differs, not as a garbled
        # gradient later
        dist.check_same_structure(
            "DistributedDataParallel",
            [f"parameter {name}: {tuple(p.shape)} {p.dtype.name}" for name, p in module.named_parameters()]
            + [f"buffer {name}: {tuple(b.shape)} {b.dtype.name}" for name, b in module.named_buffers()],
        )
        state = [*module.parameters(), *buffers]
        if state:
            dist.broadcast_coalesced(state, src=0)
            realize(*state)
        self._names = {id(p): name for name, p in named}
        self._params = [p for _, p in named]
        self._buckets = _buckets(self._params, bucket_cap_mb * 2**20)
        self._ready: set[int] = set()
        self._checked = False
        me = weakref.ref(self)  # a parameter must not keep its wrapper (and so the whole model) alive
        for p in self._params:
            # an instance attribute: autograd calls this parameter's _accumulate_grad, which now also tells DDP
            p._accumulate_grad = functools.partial(_accumulate_and_report, me, p)

    def forward(self, *args, **kwargs):
        if self._ready:
            missing = [self._names[id(p)] for p in self._params if id(p) not in self._ready]
            self._ready.clear()
            raise RuntimeError(
                "DistributedDataParallel: the previous backward() gave no gradient to parameters "
                f"{', '.join(missing)}, so the gradients were not averaged across ranks. Every parameter that "
                "requires grad must take part in the loss (find_unused_parameters is not supported)."
            )
        if self.broadcast_buffers and dist.get_world_size() > 1:
            buffers = list(self.module.buffers())
            if buffers:
                dist.broadcast_coalesced(buffers, src=0)
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self):
        """Inside, backward() accumulates local gradients only; the first backward() after it averages the sums."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    def _gradient_ready(self, param: Tensor) -> None:
        self._ready.add(id(param))
        if len(self._ready) == len(self._params):
            self._ready.clear()
            self._average_gradients()

    def _average_gradients(self) -> None:
        if runtime.CAPTURES:
            raise RuntimeError(
                "DistributedDataParallel cannot run inside a lazygrad.jit capture: its gradients are averaged on "
                "the host through MPI, and a replay runs only the captured kernels, so each rank would step with "
                "its own gradients. Call the training step without @lazygrad.jit."
            )
        grads = [[p.grad for p in bucket] for bucket in self._buckets]
        averaged = dist.all_reduce_buckets(grads, dist.ReduceOp.AVG, check=not self._checked)
        self._checked = True  # the shapes were checked at the first reduction; they are the parameters' shapes
        for bucket, values in zip(self._buckets, averaged):
            for p, value in zip(bucket, values):
                p.grad = value


def _accumulate_and_report(ddp_ref, param: Tensor, gradient: Tensor) -> None:
    Tensor._accumulate_grad(param, gradient)
    ddp = ddp_ref()
    if ddp is not None and ddp.require_backward_grad_sync:
        ddp._gradient_ready(param)


def _buckets(params: list[Tensor], cap_bytes: float) -> list[list[Tensor]]:
    """Parameters in reverse order, cut into buckets of one dtype and device of at most cap_bytes (a parameter
    larger than that is a bucket of its own)."""
    buckets: list[list[Tensor]] = []
    current: list[Tensor] = []
    size = 0
    for p in reversed(params):
        nbytes = p.numel() * p.dtype.itemsize
        same_kind = not current or (current[0].dtype == p.dtype and current[0].device == p.device)
        if current and (not same_kind or size + nbytes > cap_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        buckets.append(current)
    return buckets


class SyncBatchNorm(BatchNorm2d):
    """BatchNorm whose training statistics are those of the whole global batch, across ranks, as torch's: each
    rank's per-channel sums and sums of squares are summed over the ranks (one message), and in backward() the
    gradients of those sums are summed over the ranks too. Out of training, or on one rank, it is BatchNorm. Takes
    inputs (N, C, ...) of any rank from 2."""

    def forward(self, input: Tensor) -> Tensor:
        if input.ndim < 2 or input.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm({self.num_features}) expects (N, {self.num_features}, ...), got {input.shape}"
            )
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            with lazygrad.no_grad():
                counted = self.num_batches_tracked.assign(self.num_batches_tracked + 1)
            note_buffer_update(counted)
            if self.momentum is None:
                momentum = 1.0 / counted.float()
        use_batch_stats = self.training or not self.track_running_stats
        if not (use_batch_stats and dist.is_initialized() and dist.get_world_size() > 1):
            return F.batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, use_batch_stats, momentum, self.eps
            )
        channels = input.shape[1]
        reduce_dims = (0, *range(2, input.ndim))
        channel_shape = (1, channels) + (1,) * (input.ndim - 2)
        local = float(input.numel() // channels)
        # the count of values per channel over all ranks (ranks may hold batches of different sizes)
        count = int(dist.all_reduce_coalesced([Tensor([local], device=input.device)])[0].item())
        if count <= 1:
            raise ValueError(f"SyncBatchNorm needs more than 1 value per channel when training, got {count} in all")
        sums = Tensor.cat([input.sum(reduce_dims), (input * input).sum(reduce_dims)])
        totals = _all_reduce_sum(sums)
        mean = (totals[:channels] / count).reshape(channel_shape)
        var = (totals[channels:] / count).reshape(channel_shape) - mean * mean  # biased, as BatchNorm normalizes
        if self.running_mean is not None and self.running_var is not None:
            F._update_running_stats(self.running_mean, self.running_var, mean, var, momentum, count)
        scale = (var + self.eps).rsqrt()
        if self.weight is not None:
            scale = scale * self.weight.reshape(channel_shape)
        output = (input - mean) * scale
        return output if self.bias is None else output + self.bias.reshape(channel_shape)

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """The module with every BatchNorm2d replaced by a SyncBatchNorm holding the same parameters and buffers."""
        if process_group is not None:
            raise NotImplementedError("lazygrad.distributed has one process group, the world (process_group=None)")
        if isinstance(module, BatchNorm2d) and not isinstance(module, SyncBatchNorm):
            converted = cls.__new__(cls)
            Module.__init__(converted)
            for name in ("num_features", "eps", "momentum", "affine", "track_running_stats", "training"):
                object.__setattr__(converted, name, getattr(module, name))
            for name, param in module._parameters.items():
                converted.register_parameter(name, param)
            for name, buffer in module._buffers.items():
                converted.register_buffer(name, buffer, persistent=name not in module._non_persistent_buffers)
            return converted
        for name, child in list(module._modules.items()):
            if child is not None:
                replaced = cls.convert_sync_batchnorm(child)
                if replaced is not child:
                    module._modules[name] = replaced
        return module


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum over ranks of `tensor`, differentiable: the gradient that reaches each rank's copy of the sum is the
    sum over ranks of the gradients each rank's loss gives it (a collective in backward(), in the same order on
    every rank, since every rank differentiates the same graph)."""

    def forward() -> Tensor:
        return dist.all_reduce_coalesced([tensor.detach()])[0]

    def backward(gradient: Tensor) -> tuple:
        return (dist.all_reduce_coalesced([gradient])[0],)

    return Tensor._composite("all_reduce", (tensor,), forward, backward)


DDP = DistributedDataParallel

__all__ = ["DDP", "DistributedDataParallel", "SyncBatchNorm"]

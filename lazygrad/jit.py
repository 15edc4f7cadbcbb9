"""The step JIT: capture the kernels of one call of a function, replay them on later calls.

    @lazygrad.jit
    def train_step(x, y):
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step(); opt.zero_grad()
        return loss

Call 1 runs normally (it compiles kernels and creates optimizer state). Call 2 runs normally too,
while the runtime records every kernel launched and the buffers it touched. From call 3 on, the
function body is not run at all: the inputs' data is copied into the buffers that call 2 read them
from, and the recorded kernels run again in order. No graph is built, nothing is differentiated
or scheduled, so a step costs its kernels and little else.

What a replay does not redo: Python side effects of the body, and tensors the body created but
did not return (a parameter's `.grad`, say). Parameters, optimizer state and BatchNorm statistics
are updated, since they are buffers the kernels write. When the inputs' shapes or dtypes differ
from the captured call, the JIT warns and runs the function normally.
"""

from __future__ import annotations

import functools
import warnings

from lazygrad import runtime
from lazygrad.graph import LazyBuffer
from lazygrad.tensor import Tensor


class _Capture:
    def __init__(self):
        self.launches: list = []  # (CompiledEntry, [Buffer]) in launch order

    def record(self, entry, buffers: list):
        self.launches.append((entry, list(buffers)))


def _tensor_args(args, kwargs) -> list:
    found = [a for a in args if isinstance(a, Tensor)]
    found += [v for v in kwargs.values() if isinstance(v, Tensor)]
    return found


def _signature(tensors: list) -> tuple:
    return tuple((t.shape, t.dtype, t.device) for t in tensors)


class JitFunction:
    def __init__(self, fn):
        self.fn = fn
        self.calls = 0
        self.signature = None
        self.launches: list = []
        self.input_buffers: list = []  # the Buffer each input was read from during capture
        self.outputs: list = []  # (structure, Buffer, shape, dtype, device)
        self.output_structure = None
        self.replays = 0
        functools.update_wrapper(self, fn)

    def reset(self):
        """Forget the captured kernels; the next two calls run normally again."""
        self.calls, self.launches, self.signature = 0, [], None

    def __call__(self, *args, **kwargs):
        inputs = _tensor_args(args, kwargs)
        for t in inputs:
            t.realize()
        self.calls += 1
        if self.calls == 1:
            return self.fn(*args, **kwargs)
        if self.calls == 2:
            return self._capture(inputs, args, kwargs)
        if _signature(inputs) != self.signature:
            warnings.warn(
                f"lazygrad.jit: inputs {_signature(inputs)} differ from the captured {self.signature}; running "
                f"{getattr(self.fn, '__name__', 'the function')} without the JIT",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args, **kwargs)
        return self._replay(inputs)

    def _capture(self, inputs, args, kwargs):
        capture = _Capture()
        runtime.CAPTURES.append(capture)
        try:
            result = self.fn(*args, **kwargs)
            returned = _flatten_tensors(result)
            runtime.realize([t.lazydata for t in returned])
        finally:
            runtime.CAPTURES.remove(capture)
        self.signature = _signature(inputs)
        self.launches = capture.launches
        self.input_buffers = [t.lazydata.base.buffer for t in inputs]
        self.input_views = [t.lazydata for t in inputs]
        self.output_structure = result
        self.output_buffers = [(t.lazydata.base.buffer, t.lazydata) for t in returned]
        self.bound = [entry.kernel.bind([b.handle for b in buffers]) for entry, buffers in self.launches]
        return result

    def _replay(self, inputs):
        for t, captured in zip(inputs, self.input_buffers):
            src = t.lazydata.base.buffer
            if src is not captured:
                runtime.copy_buffer(captured, src)
        with_profile = runtime.profiling_active()
        for (entry, _), launch in zip(self.launches, self.bound):
            if with_profile:
                runtime.note_launch(entry, launch(True))
            else:
                launch(False)
        self.replays += 1
        fresh = iter([_output_tensor(buf, lb) for buf, lb in self.output_buffers])
        return _rebuild(self.output_structure, fresh)


def _output_tensor(buffer, lb: LazyBuffer) -> Tensor:
    out = LazyBuffer.from_buffer(buffer, lb.base.shape, lb.dtype, lb.device)
    for op, arg in lb.movement:  # the same view of the fresh buffer
        out = getattr(out, op)(arg)
    return Tensor(out)


def _flatten_tensors(result) -> list:
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _flatten_tensors(r)]
    if isinstance(result, dict):
        return [t for r in result.values() for t in _flatten_tensors(r)]
    return []


def _rebuild(structure, fresh):
    if isinstance(structure, Tensor):
        return next(fresh)
    if isinstance(structure, (tuple, list)):
        return type(structure)(_rebuild(s, fresh) for s in structure)
    if isinstance(structure, dict):
        return {k: _rebuild(v, fresh) for k, v in structure.items()}
    return structure


def jit(fn):
    """Decorator: capture a function's kernels on its second call and replay them from the third."""
    return JitFunction(fn)

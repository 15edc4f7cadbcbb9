"""The step JIT: capture the kernels of one call of a function, replay them on later calls.

    @lazygrad.jit
    def train_step(x, y):
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step(); opt.zero_grad()
        return loss

Captures are keyed by the call's structure: the shape, dtype, device and requires_grad of every tensor argument
(anywhere in nested lists, tuples and dicts) and the value of every other argument. For each key, the first call
runs normally (it compiles kernels and creates optimizer state), the second runs normally while the runtime records
every kernel launched and the buffers it touched, and from the third on the function body is not run at all: the
recorded kernels run again in order, with each input tensor's memory and a fresh buffer for each returned tensor
bound in place of the captured ones. No graph is built, nothing is differentiated or scheduled.

Inputs: the captured kernels read every input as a dense, contiguous buffer of the input's shape. An input that is
one already (a fresh tensor, or a view of the start of a buffer in order) is bound directly; any other view (a
slice that starts further in, a transpose, a padded view) is first copied into a fresh buffer of its own: a device
copy for an in-order range of its buffer (a mini-batch sliced from a dataset), a gathering kernel otherwise. So a
replay reads exactly the elements of the view it is given, whatever view the capture saw.

Outputs: every call returns new tensors. A returned tensor that a captured kernel computed gets a freshly allocated
buffer on each replay, so tensors returned by earlier calls keep their values. `jit(fn, reuse_outputs=True)` skips
that allocation: each replay then overwrites the buffers the previous call returned. A returned parameter or other
tensor that lives across calls (optimizer state, a running statistic) is returned as itself, as the function would.

What a replay does not redo: Python side effects of the body, values the body read to the host (`.item()`), data the
body uploaded from the host (a `lazygrad.tensor(...)` built inside is the captured call's data on every replay), and
tensors the body created but did not return (a parameter's `.grad`, say). Parameters, optimizer state and BatchNorm
statistics are updated, since they are buffers the kernels write. docs/jit.md says the rest.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict

from lazygrad import runtime
from lazygrad import tensor as tensor_module
from lazygrad.graph import LazyBuffer
from lazygrad.shape import contiguous_strides, describe_symbolic
from lazygrad.symbolic import BoundVariable
from lazygrad.tensor import Tensor

# a function called with this many different argument structures keeps only the most recent captures (each holds
# its intermediate buffers)
MAX_CAPTURES = 8


# bumped when something a capture relies on changes in a way its kernels cannot see (an optimizer's parameters,
# state buffers or the kind of update it runs): every capture made before then is dropped at its next call
_generation = [0]


def invalidate_captures() -> None:
    """Make every jitted function capture again (after two normal calls) instead of replaying."""
    _generation[0] += 1


class _Recorder:
    """Collects the kernels launched while a capture is active (runtime.CAPTURES)."""

    def __init__(self):
        self.launches: list = []  # (CompiledEntry, [Buffer], ids of the buffers the launch allocated)
        self.values: list = []  # per launch: the values of its Variables (entry.variables order)

    def record(self, entry, buffers: list, created: list, values: tuple = ()) -> None:
        self.launches.append((entry, list(buffers), {id(b) for b in created}))
        self.values.append(values)


class _Capture:
    """One recorded call: its kernels, and which buffer slots are rebound on each replay."""

    def __init__(self):
        self.entries: list = []  # CompiledEntry per launch, in order
        self.bound: list = []  # launchers with fixed arguments; those with rebound slots are rebuilt per replay
        self.templates: dict = {}  # launch index -> handles, None where a slot is rebound
        self.slots: dict = {}  # launch index -> [(slot, ("input", k) | ("output", j))]
        # per returned tensor: ("const" | "same", LazyBuffer) or ("input" | "output", number, view of the buffer)
        self.outputs: list = []
        self.fresh_outputs: list = []  # (device, size, dtype) of the buffers allocated per replay
        self.structure = None  # the returned value, with its tensors replaced on each replay
        self.held: list = []  # the buffers of the non-rebound slots
        self.call_buffers: dict = {}  # the last replay's inputs and outputs
        self.generation = _generation[0]
        # launch index -> (its Variables' names, their values at capture): replays pass the call's values
        self.variables: dict = {}


def _structure_key(value, tensors: list, bindings: dict | None = None):
    """A hashable description of an argument, with its tensors appended to tensors and the values of its bound
    Variables put in bindings (by name): a Variable is part of the structure, its value is not."""
    if isinstance(value, Tensor):
        if value.lazydata.st.symbolic:
            raise NotImplementedError(
                f"a jitted function's argument of symbolic shape {describe_symbolic(value.shape)}: pass the "
                "Variable (bound) and the tensor it indexes instead"
            )
        tensors.append(value)
        return ("tensor", value.shape, value.dtype, value.device, value.requires_grad)
    if isinstance(value, BoundVariable):
        if bindings is not None:
            if bindings.setdefault(value.name, value.value) != value.value:
                raise ValueError(
                    f"Variable {value.name!r} passed bound to two values ({bindings[value.name]}, {value.value})"
                )
        return ("variable", value.name, value.vmin, value.vmax)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_structure_key(v, tensors, bindings) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _structure_key(v, tensors, bindings)) for k, v in value.items()))
    try:
        hash(value)
    except TypeError:  # an unhashable object: the same object is the same argument
        return ("object", id(value))
    return ("value", type(value), value)


def _substitute(value, replacements: dict):
    """value with each tensor t replaced by replacements[id(t)] where there is one."""
    if isinstance(value, Tensor):
        return replacements.get(id(value), value)
    if isinstance(value, (tuple, list)):
        return type(value)(_substitute(v, replacements) for v in value)
    if isinstance(value, dict):
        return {k: _substitute(v, replacements) for k, v in value.items()}
    return value


def _flatten_tensors(result) -> list:
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _flatten_tensors(r)]
    if isinstance(result, dict):
        return [t for r in result.values() for t in _flatten_tensors(r)]
    return []


class _Returned:
    """Where a returned tensor goes in the returned structure (which keeps no captured tensor alive)."""


def _strip(result):
    if isinstance(result, Tensor):
        return _Returned()
    if isinstance(result, (tuple, list)):
        return type(result)(_strip(r) for r in result)
    if isinstance(result, dict):
        return {k: _strip(v) for k, v in result.items()}
    return result


def _rebuild(structure, fresh):
    if isinstance(structure, _Returned):
        return next(fresh)
    if isinstance(structure, (tuple, list)):
        return type(structure)(_rebuild(s, fresh) for s in structure)
    if isinstance(structure, dict):
        return {k: _rebuild(v, fresh) for k, v in structure.items()}
    return structure


def _in_order_offset(lb: LazyBuffer) -> int | None:
    """The element offset of a view that reads its buffer in order (an unmasked range), else None."""
    if not lb.realized or len(lb.st.views) != 1:
        return None
    view = lb.st.views[0]
    if view.mask is not None or view.strides != contiguous_strides(view.shape):
        return None
    return view.offset


def _dense_buffer(tensor: Tensor) -> runtime.Buffer:
    """A buffer holding tensor's elements densely in order: its own when it already does, else a fresh copy."""
    lb = tensor.lazydata
    offset = _in_order_offset(lb)
    if offset == 0 and lb.size == lb.base.size:
        return lb.base.buffer
    if lb.size == 0:
        return runtime.Buffer(lb.device, 0, lb.dtype)
    if offset is not None:  # a range of a bigger buffer (a mini-batch of a dataset): one device copy
        staged = runtime.Buffer(lb.device, lb.size, lb.dtype)
        runtime.copy_buffer(staged, lb.base.buffer, offset)
        return staged
    # a strided, permuted, padded or constant view: a kernel gathers it (compiled once per distinct view)
    gathered = Tensor(lb).contiguous().realize().lazydata
    return gathered.base.buffer


def _view_of(buffer: runtime.Buffer, view: tuple) -> Tensor:
    """A view (base shape, dtype, device, movement ops) applied to buffer (which holds data of the base shape)."""
    base_shape, dtype, device, movement = view
    out = LazyBuffer.from_buffer(buffer, base_shape, dtype, device)
    for op, arg in movement:
        out = getattr(out, op)(arg)
    return Tensor(out)


class JitFunction:
    def __init__(self, fn, reuse_outputs: bool = False):
        self.fn = fn
        self.reuse_outputs = reuse_outputs
        self.calls: dict = {}  # structure key -> calls so far
        self.captures: OrderedDict = OrderedDict()  # structure key -> _Capture, least recently used first
        self.replays = 0
        self.last = None  # the capture used most recently
        functools.update_wrapper(self, fn)

    @property
    def launches(self) -> list:
        """The compiled kernels of the most recently used capture, in launch order."""
        return list(self.last.entries) if self.last is not None else []

    def reset(self):
        """Forget every capture; the next two calls of each argument structure run normally again."""
        self.calls, self.captures, self.last = {}, OrderedDict(), None

    def __call__(self, *args, **kwargs):
        inputs: list = []
        bindings: dict = {}
        key = _structure_key((args, kwargs), inputs, bindings)
        for t in inputs:
            t.realize()
        capture = self.captures.get(key)
        if capture is not None and capture.generation != _generation[0]:
            del self.captures[key]
            capture = None
        if capture is not None:
            self.captures.move_to_end(key)
            self.last = capture
            return self._replay(capture, inputs, bindings)
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] == 1:
            return self.fn(*args, **kwargs)
        del self.calls[key]
        if len(self.captures) >= MAX_CAPTURES:
            warnings.warn(
                f"lazygrad.jit: {getattr(self.fn, '__name__', 'the function')} was called with more than "
                f"{MAX_CAPTURES} different argument structures (tensor shapes, dtypes, other arguments' values); "
                "the oldest capture is dropped. Pass values that change from call to call as tensors.",
                RuntimeWarning,
                stacklevel=2,
            )
            self.captures.popitem(last=False)
        return self._capture(key, inputs, args, kwargs)

    def _capture(self, key, inputs: list, args, kwargs):
        # the kernels read each input from a dense buffer of its own (see _dense_buffer); two inputs never share one
        input_buffers, replacements = [], {}
        for t in inputs:
            buffer = _dense_buffer(t)
            if any(buffer is b for b in input_buffers):
                copy = runtime.Buffer(buffer.device, buffer.size, buffer.dtype)
                runtime.copy_buffer(copy, buffer)
                buffer = copy
            input_buffers.append(buffer)
            if buffer is not t.lazydata.base.buffer:
                stand_in = Tensor(LazyBuffer.from_buffer(buffer, t.shape, t.dtype, t.device))
                stand_in.requires_grad = t.requires_grad
                replacements[id(t)] = stand_in
        if replacements:
            args, kwargs = _substitute(args, replacements), _substitute(kwargs, replacements)

        recorder = _Recorder()
        runtime.CAPTURES.append(recorder)
        tensor_module.write_back_moved()  # (none are left from before: this only clears)
        try:
            result = self.fn(*args, **kwargs)
            returned = _flatten_tensors(result)
            for t in returned:  # its shape would hold the captured call's value of the Variable on every replay
                if t.lazydata.st.symbolic:
                    raise NotImplementedError(
                        f"a jitted function returned a view made with a Variable (shape {describe_symbolic(t.shape)}):"
                        " a replay would return the captured call's view; return a tensor of its own (.contiguous(), "
                        "of fixed shape)"
                    )
            # a tensor updated twice in the step left its buffer for a new one: its value goes back into the buffer
            # (one more kernel, captured), so that a replay updates the memory the tensor and its views read
            written = tensor_module.write_back_moved()
            runtime.realize([t.lazydata for t in returned] + [t.lazydata for t in written])
        finally:
            runtime.CAPTURES.remove(recorder)

        capture = _Capture()
        created = set().union(*(c for _, _, c in recorder.launches))
        rebound = {id(b): ("input", k) for k, b in enumerate(input_buffers)}
        capture.structure = _strip(result)
        for t in returned:
            lb = t.lazydata
            buffer = lb.base.buffer
            view = (lb.base.shape, lb.dtype, lb.device, lb.movement)
            if buffer is None:  # a constant: no memory, the same on every call
                capture.outputs.append(("const", lb))
            elif id(buffer) in rebound:
                capture.outputs.append((*rebound[id(buffer)], view))
            elif id(buffer) in created and not self.reuse_outputs:
                capture.outputs.append(("output", len(capture.fresh_outputs), view))
                rebound[id(buffer)] = ("output", len(capture.fresh_outputs))
                capture.fresh_outputs.append((buffer.device, buffer.size, buffer.dtype))
            else:  # a parameter, optimizer state, or (with reuse_outputs) a buffer each replay overwrites
                capture.outputs.append(("same", lb))
        for index, ((entry, buffers, _), values) in enumerate(zip(recorder.launches, recorder.values)):
            capture.entries.append(entry)
            if values:  # a kernel over a run-time size: each replay passes the call's values of its Variables
                capture.variables[index] = (entry.variables, values)
            slots = [(slot, rebound[id(b)]) for slot, b in enumerate(buffers) if id(b) in rebound]
            if slots:
                capture.slots[index] = slots
                capture.templates[index] = [None if id(b) in rebound else b.handle for b in buffers]
                capture.bound.append(None)
            else:
                capture.bound.append(entry.kernel.bind([b.handle for b in buffers], values))
        # the intermediate buffers live as long as the capture (launchers hold bare handles); the captured call's
        # inputs and returned buffers are not held, so they are freed with the caller's tensors
        capture.held = [b for _, buffers, _ in recorder.launches for b in buffers if id(b) not in rebound]
        self.captures[key] = capture
        self.last = capture
        return result

    def _replay(self, capture: _Capture, inputs: list, bindings: dict):
        call_buffers = {("input", k): _dense_buffer(t) for k, t in enumerate(inputs)}
        for j, (device, size, dtype) in enumerate(capture.fresh_outputs):
            call_buffers[("output", j)] = runtime.Buffer(device, size, dtype)
        bound = capture.bound
        for index, slots in capture.slots.items():
            set_buffer = getattr(bound[index], "set_buffer", None)
            if set_buffer is not None:  # the backend rebinds a launcher's buffers in place
                for slot, name in slots:
                    set_buffer(slot, call_buffers[name].handle)
                continue
            handles = list(capture.templates[index])
            for slot, name in slots:
                handles[slot] = call_buffers[name].handle
            bound[index] = capture.entries[index].kernel.bind(handles, capture.variables.get(index, ((), ()))[1])
        for index, (names, captured) in capture.variables.items():
            # a Variable passed bound takes this call's value; one bound inside the body keeps the captured value
            bound[index].set_values(tuple(bindings.get(name, value) for name, value in zip(names, captured)))
        # the buffers of this call stay referenced until the next replay: a device may still be running on them
        capture.call_buffers = call_buffers
        if runtime.profiling_active():
            for entry, launch in zip(capture.entries, bound):
                runtime.note_launch(entry, launch(True))
        else:
            for launch in bound:
                launch(False)
        self.replays += 1
        returned = []
        for kind, *rest in capture.outputs:
            if kind in ("const", "same"):
                returned.append(Tensor(rest[0]))
            else:
                number, view = rest
                returned.append(_view_of(call_buffers[(kind, number)], view))
        return _rebuild(capture.structure, iter(returned))


def jit(fn=None, *, reuse_outputs: bool = False):
    """Decorator: capture a function's kernels on its second call and replay them from the third.

    `@lazygrad.jit` returns fresh tensors from every call; `@lazygrad.jit(reuse_outputs=True)` lets each replay
    overwrite the tensors the previous call returned (no allocation per call)."""
    if fn is None:
        return lambda f: JitFunction(f, reuse_outputs)
    return JitFunction(fn, reuse_outputs)

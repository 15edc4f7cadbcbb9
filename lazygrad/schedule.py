"""The scheduler: which lazy nodes become buffers, and the kernels that compute them.

Every unrealized base reachable from the requested outputs is either *realized* (it gets its own
buffer and kernel) or *fused* (inlined into each kernel that reads it). The reasons a base is
realized are recorded, and LAZYGRAD_DEBUG=2 prints them:

- "output": the caller asked for it
- "effect": copies, host uploads, assigns and explicit `contiguous()` always write memory
- "shared": more than one consumer reads it, and computing it again in each would cost more than a
  buffer (it holds a reduce, is more than a few ops, or a reduce or a broadcast reads it)
- "reduce-in-view": it holds a reduce and is read through a view (a reduce cannot be inlined
  into another kernel's loops), or by another reduce
- "second-reduce": a kernel holds at most one reduce
- "broadcast-compute": a few ops or more, read through a broadcast at least 4x its size (fused, each
  element would be computed again for every copy)
- "assign-hazard": an assign would overwrite memory that this value reads through another view
- "assign-order": it reads a buffer's old value, and the kernel it was fused into must wait (through others) for
  the assign that overwrites the buffer (`_break_cycle`)
- "deep-chain": its fused ops nest `_MAX_FUSED_DEPTH` deep (a chain built in a loop): the next ops start a kernel

Everything else is fused: an elementwise chain is one kernel, elementwise work before a reduce
joins its loop, and elementwise work after a reduce on the reduced shape joins as its epilogue.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from enum import Enum

from lazygrad.codegen.kernel_ast import KernelOp
from lazygrad.graph import LazyBuffer, const_key, refs_of
from lazygrad.ops import ELEMENTWISE, REDUCE, AstOp, Op, zero
from lazygrad.shape import ShapeTracker

# primitives whose result always gets a buffer: they write memory
_WRITES_MEMORY = frozenset({Op.HOST, Op.COPY, Op.ASSIGN, Op.CONTIGUOUS})
# effects whose value is their source's, written to memory of their own (or, for an assign, into the target's)
_STORES_ITS_SOURCE = frozenset({Op.CONTIGUOUS, Op.ASSIGN})
# elementwise primitives whose arg a kernel needs: the target dtype of a cast, the source dtype of a bitcast
_KEEPS_ARG = frozenset({Op.CAST, Op.BITCAST})


# _merge_readers leaves an elementwise kernel of more than this many ops per element, over at least this many
# elements, on its own rather than in the loop of a reduce it reads (GELU after the MLP's first product): a product
# whose lanes run along its reduce dim computes its epilogue one output at a time, which for a long epilogue costs
# far more than the one extra read of the product's output that a separate, vectorized kernel costs
_HEAVY_EPILOGUE_OPS = 16
_HEAVY_EPILOGUE_SIZE = 65536
# _merge_outputs folds at most this many outputs into one kernel (a ResNet-18 or GPT kernel folds at most 4): a long
# chain of in-place updates that nothing realizes in between (`x.mul_(0.5).add_(1)` in a loop) would otherwise fold
# into one kernel, each fold building the grown kernel again (a 400-update chain took 100 s to schedule)
_MAX_KERNEL_OUTPUTS = 16
# a fused value at most this many ops deep (the deepest ResNet-18 or GPT kernel, a random-number kernel, is 109): a
# longer chain (`y = y * 0.5 + 1` in a loop) is cut into kernels of this depth (reason "deep-chain"), and kernels are
# not merged past it. LLVM's time grows faster than the code: 2,048 chained ops compiled in ~2 s, 8,000 in 25 s,
# while a chain cut into kernels of one depth compiles one program, launched again for each piece
_MAX_FUSED_DEPTH = 256


class ItemKind(Enum):
    KERNEL = "kernel"
    HOST = "host"  # an upload of host data
    COPY = "copy"  # a copy between devices

    def __format__(self, spec):
        return format(self.value, spec)


@dataclass
class ScheduleItem:
    kind: ItemKind
    output: LazyBuffer  # the base this item realizes (the first, for a kernel with several outputs)
    inputs: list = field(default_factory=list)  # realized bases read, in kernel buffer order after the outputs
    ast: KernelOp | None = None  # a "sink" of one store per output
    reason: str = ""
    outputs: list = field(default_factory=list)  # every base this item realizes
    fused: set = field(default_factory=set)  # ids of the unrealized bases computed inside the kernel
    reduces: set = field(default_factory=set)  # ids of the reduce nodes among them (at most one)
    # per output: why it has a buffer, and for the outputs after the first, why it is stored by this kernel
    output_reasons: list = field(default_factory=list)
    # {name: value} of the Variables its views use (the AST holds them unbound: one kernel for every value)
    var_vals: dict = field(default_factory=dict)
    # a kernel over a symbolic size or through a symbolic view (write_view): never merged with another
    symbolic: bool = False

    def __post_init__(self):
        if not self.outputs:
            self.outputs = [self.output]


class Scheduler:
    def __init__(self, targets: list):
        self.targets = [t.base for t in targets]
        self.realize: dict = {}  # id(base) -> reason
        self.joined: dict = {}  # id(base) -> why a merge made it an extra output of another base's kernel
        self.nodes: list = []  # unrealized bases, sources first
        # id(node) -> its position in self.nodes: what structure() numbers nodes by, and the set of collected ids
        self._positions: dict = {}
        seen = self._positions
        new_targets, checked = self.targets, 0
        self._assigns: list = []  # the assign nodes among them
        self._reads_old: set | None = None  # ids of the nodes that read data an assign overwrites (_stale_readers)
        while True:
            if self._collect(new_targets, self.nodes, seen, self._assigns):
                checked = 0  # a new assign may make nodes checked before read old data: check them all again
            stale = self._stale_readers(checked)
            if not stale or all(id(n) in seen for n in stale):
                # (stale nodes already collected are now targets: that changes neither the nodes nor what is stale)
                self.targets += stale
                break
            self.targets += stale
            new_targets = stale  # only what they add is walked: the nodes collected so far stay, in their order
            checked = len(self.nodes)
        self._by_id = None
        self._consumers = None

    @property
    def by_id(self) -> dict:
        """id(base) -> the scheduled node (made when a schedule is made, not when a plan is reused)."""
        if self._by_id is None:
            self._by_id = {id(n): n for n in self.nodes}
        return self._by_id

    @property
    def consumers(self) -> dict:
        """id(base) -> ids of the scheduled nodes that read it (made when a schedule is made, not on reuse)."""
        if self._consumers is None:
            consumers: dict = {}
            for node in self.nodes:
                for src in node.srcs:
                    consumers.setdefault(id(src.base), set()).add(id(node))
            self._consumers = consumers
        return self._consumers

    # --- graph walk -------------------------------------------------------------------------------
    @staticmethod
    def _collect(targets: list, nodes: list, seen: dict, assigns: list) -> bool:
        """Append to `nodes` the unrealized bases the targets need and `seen` does not hold yet, each after its
        sources (iterative depth-first); `seen` maps each id to the node's position in `nodes`, and the assigns
        among them are appended to `assigns` too. Whether there were any."""
        stack = [(t, False) for t in reversed(targets)]
        pop, push, append = stack.pop, stack.append, nodes.append
        assign, before = Op.ASSIGN, len(assigns)  # (an Enum class attribute is slow to read in Python 3.11)
        while stack:
            node, done = pop()
            if done:
                seen[id(node)] = len(nodes)
                append(node)
                if node.op is assign:
                    assigns.append(node)
                continue
            if id(node) in seen or node.buffer is not None:
                continue
            seen[id(node)] = -1  # (visited; its position once its sources are in)
            push((node, True))
            for src in node.srcs:
                base = src if src._base is None else src._base
                if base.buffer is None and id(base) not in seen:
                    push((base, False))
        return len(assigns) > before

    def _stale_readers(self, checked: int = 0) -> list:
        """Lazy values that read a buffer an assign here overwrites, and that will still be wanted after
        this schedule (a tensor holds them, or a node outside the schedule reads them): they are computed
        now, from the old data. (PyTorch: `before = a + 0; a.add_(1)` leaves `before` as it was.)
        `checked`: the first nodes were checked by the call before, whose stale values are targets now; with the
        nodes collected since (no new assign among them) they are not stale, so only the nodes after are
        walked, with the call before's set of the nodes that read old data (`_reads_old`)."""
        assign = Op.ASSIGN  # read once: an Enum class attribute is slow to read in Python 3.11
        assigns = self._assigns
        if not assigns:
            return []
        collected = self._positions  # (the ids of the nodes collected)
        wanted = {id(t) for t in self.targets}
        stale, nodes = [], self.nodes
        if checked and self._reads_old is not None:
            # the first `checked` nodes are as the call before found them (no new assign since): which of them read
            # old data is known, so only the nodes collected since are walked (a ResNet-18 step: ~1,500 nodes)
            reads_old, nodes = self._reads_old, nodes[checked:]
        else:
            reads_old = {id(n.arg) for n in assigns}
        self._reads_old = reads_old
        for node in nodes:
            if node.op is assign:
                continue
            for src in node.srcs:
                if id(src if src._base is None else src._base) in reads_old:
                    break
            else:
                continue
            reads_old.add(id(node))
            if id(node) in wanted:
                continue
            holders, readers = node._holders, node._readers
            # (any_alive inlined for the one-reference case: this runs for every node that reads old data)
            if holders is not None and (holders() is not None if type(holders) is weakref.ref else holders.any_alive()):
                stale.append(node)
            elif readers is not None:
                if type(readers) is weakref.ref:
                    reader = readers()
                    if reader is not None and id(reader) not in collected:
                        stale.append(node)
                elif readers.any_alive(collected):
                    stale.append(node)
        for a in assigns:  # readers of the target itself that this schedule does not reach
            target = a.arg
            for ref in refs_of(target._readers):
                r = ref()
                if r is not None and r.buffer is None and id(r) not in collected:
                    if not (r.op is assign and r.arg is target):
                        stale.append(r)
        return stale

    # --- structure: when two graphs get the same schedule ---------------------------------------------
    def structure(self) -> tuple:
        """(key, externals): a hashable description of everything the schedule depends on, and the realized
        bases the graph reads, in first-read order.

        The key lists every unrealized base (sources first) as its op, shape, dtype, device, arg (constants by
        value, an assign's target and every source by position: a node's index, or -1 - an external's index)
        and the movement ops it reads each source through; then the targets; then the externals' shapes,
        dtypes and devices. Two graphs with equal keys are the same graph up to which buffers they read and
        which host data they upload, so the schedule made for one, its kernels and launch order, is right for
        the other. What the schedule also depends on outside the graph (which lazy values tensors still hold,
        `_stale_readers`) is already decided here: it is in the targets. The key is unhashable when an arg is (nothing
        is then reused: runtime.realize)."""
        index = self._positions.copy()  # then the externals, as -1 - their position
        externals: list = []

        def ref(base) -> int:
            position = index.get(id(base))
            if position is None:
                position = index[id(base)] = -1 - len(externals)
                externals.append(base)
            return position

        const, assign, host = Op.CONST, Op.ASSIGN, Op.HOST  # read once: Enum class attributes are slow to read
        parts = []
        for node in self.nodes:
            op = node.op
            if op is const:
                arg = const_key(node.arg)
            elif op is assign:
                arg = (ref(node.arg), getattr(node, "write_view", None))
            elif op is host:
                arg = None  # the data is bound per run, like a buffer
            else:
                arg = node.arg
            srcs = []
            for src in node.srcs:
                base = src if src._base is None else src._base
                position = index.get(id(base))
                srcs.append((ref(base) if position is None else position, src.movement))
            parts.append((op, node.shape, node.dtype, node.device, arg, tuple(srcs)))
        targets = tuple(index.get(id(t)) for t in self.targets)
        # (not hashed here: a nested tuple's hash is not cached, and the plans' look-up hashes it anyway)
        return (tuple(parts), targets, tuple((e.shape, e.dtype, e.device) for e in externals)), externals

    # --- what gets a buffer ----------------------------------------------------------------------
    def decide(self):
        for t in self.targets:
            if t.buffer is None:
                self.realize[id(t)] = "output"
        holds_reduce: dict = {}
        fused_depth: dict = {}  # id -> how deeply its fused ops nest
        self._holds_reduce, self._inline_cost, self._op_cost = holds_reduce, {}, {}
        copy, const = Op.COPY, Op.CONST  # read once: an Enum class attribute is slow to read in Python 3.11
        for node in self.nodes:
            if node.op in _WRITES_MEMORY:
                self.realize.setdefault(id(node), "effect")
            if node.op is copy and node.srcs[0].base.buffer is None:  # a copy moves memory that must exist
                self.realize.setdefault(id(node.srcs[0].base), "effect")
            if node.op is const:
                continue
            # which reduce nodes would be inlined into this node's kernel
            reduces = set()
            for src in node.srcs:
                b = src.base
                if b.buffer is not None or id(b) in self.realize:
                    continue
                inner = holds_reduce.get(id(b), set())
                if inner and (_not_a_reshape(src) or node.op in REDUCE):
                    self.realize[id(b)] = "reduce-in-view"
                    continue
                if b.op in ELEMENTWISE and src.size >= 4 * b.size and self._op_cost.get(id(b), 0) >= 4:
                    # a broadcast would compute every element of it again for each copy read
                    self.realize[id(b)] = "broadcast-compute"
                    continue
                if inner and reduces and inner != reduces:
                    self.realize[id(b)] = "second-reduce"
                    continue
                reduces |= inner
            if node.op in REDUCE:
                reduces = {id(node)}
            holds_reduce[id(node)] = reduces if node.op in ELEMENTWISE | REDUCE else set()
            if node.op in ELEMENTWISE or node.op in REDUCE:
                # ops computed per element when fused, and how deep they nest (realized sources count as loads)
                cost, depth = 1, 0
                for s in node.srcs:
                    b = s.base
                    if b.buffer is None and id(b) not in self.realize:
                        cost += self._op_cost.get(id(b), 0)
                        depth = max(depth, fused_depth.get(id(b), 0))
                if depth >= _MAX_FUSED_DEPTH:
                    self.realize.setdefault(id(node), "deep-chain")
                if node.op in ELEMENTWISE:
                    self._op_cost[id(node)] = cost
                fused_depth[id(node)] = depth + 1
            if len(self.consumers.get(id(node), ())) > 1 and not self._cheap_to_repeat(node):
                self.realize.setdefault(id(node), "shared")

    def _cheap_to_repeat(self, node: LazyBuffer) -> bool:
        """A small elementwise value read only by elementwise kernels, at most once per element, is
        computed again in each of them rather than written to memory and read back."""
        if node.op not in ELEMENTWISE or self._holds_reduce.get(id(node)):
            return False
        cost = 1 + sum(self._inline_cost.get(id(s.base), 0) for s in node.srcs)
        if cost > 8:
            return False
        for consumer_id in self.consumers[id(node)]:
            consumer = self.by_id[consumer_id]
            if consumer.op not in ELEMENTWISE and consumer.op not in _STORES_ITS_SOURCE:
                return False
            if any(s.base is node and s.size > node.size for s in consumer.srcs):
                return False
        self._inline_cost[id(node)] = cost
        return True

    # --- kernel ASTs -----------------------------------------------------------------------------
    def _ast(self, node: LazyBuffer, movement: tuple, inputs: list, root: LazyBuffer) -> KernelOp:
        """The AST computing `node` (a base) seen through `movement` ops; a node reached again by another
        path is the same KernelOp object (so a DAG is not unfolded into a tree, here or in lowering).

        Iterative, depth first and sources in order (the order in which loads are met is the kernel's buffer
        order): a fused chain may be thousands of ops deep (`y = y * 0.5 + 1` in a loop), past Python's
        recursion limit."""
        memo = self._ast_memo
        top = (id(node), movement, node is root)
        # each entry: (base, movement, root, the sources' keys once its sources were pushed, else None)
        stack: list = [(node, movement, root, None)]
        while stack:
            node, movement, root, pending = stack.pop()
            key = (id(node), movement, node is root)
            if pending is not None:  # its sources are built: combine them
                memo[key] = self._node_ast(node, movement, [memo[k] for k in pending])
                continue
            if key in memo:
                continue
            leaf = self._leaf_ast(node, movement, inputs, root)
            if leaf is not None:
                memo[key] = leaf
                continue
            self._fused.add(id(node))
            if node.op in _STORES_ITS_SOURCE:  # its value is its source's
                sources = ((node.srcs[0].base, node.srcs[0].movement + movement),)
            elif node.op in REDUCE:
                # the consumer reads the reduce through a plain reshape at most (see decide); the
                # epilogue trackers are moved into the reduce's output shape in _kernel
                sources = tuple((s.base, s.movement) for s in node.srcs)
            else:
                sources = tuple((s.base, s.movement + movement) for s in node.srcs)
            stack.append((node, movement, root, [(id(b), m, False) for b, m in sources]))
            stack.extend((b, m, None, None) for b, m in reversed(sources))
        return memo[top]

    def _leaf_ast(self, node: LazyBuffer, movement: tuple, inputs: list, root: LazyBuffer) -> KernelOp | None:
        """A constant, or a load of a buffer (added to `inputs` when first met); None for a node computed here."""
        if node.op is Op.CONST:
            st = ShapeTracker.contiguous(node.shape).apply(movement)
            return KernelOp(AstOp.CONST, (), (node.arg, st), node.dtype)
        if node is not root and (
            node.buffer is not None or (id(node) in self.realize and id(node) not in self._inline)
        ):
            if node not in inputs:
                inputs.append(node)
            st = ShapeTracker.contiguous(node.shape).apply(movement)
            return KernelOp(AstOp.LOAD, (), (self._n_outputs + inputs.index(node), st), node.dtype)
        return None

    def _node_ast(self, node: LazyBuffer, movement: tuple, srcs: list) -> KernelOp:
        """The AST of a node computed in the kernel, from its sources' ASTs."""
        if node.op in _STORES_ITS_SOURCE:
            return srcs[0]
        if node.op in REDUCE:
            self._reduce_shape = node.shape
            return KernelOp(AstOp.REDUCE, tuple(srcs), (node.op, node.arg), node.dtype)
        out = KernelOp(node.op, tuple(srcs), node.arg if node.op in _KEEPS_ARG else None, node.dtype)
        # a pad of a fused value must read 0 outside, whatever the math gives there
        st = ShapeTracker.contiguous(node.shape).apply(movement)
        if any(v.mask is not None for v in st.views):
            outside = KernelOp(AstOp.CONST, (), (zero(node.dtype), ShapeTracker.contiguous(st.shape)), node.dtype)
            out = KernelOp(Op.WHERE, (KernelOp(AstOp.VALID, (), st, None), out, outside), None, node.dtype)
        return out

    def _kernel(self, node: LazyBuffer, members: tuple = ()) -> ScheduleItem:
        """The kernel storing `node`, and also each of `members`: bases that node reads elementwise,
        computed in the same loop and stored from it (a kernel with several outputs)."""
        outputs = [node, *members]
        inputs: list = []
        self._inline = {id(m) for m in members} | {id(node)}  # a member may read the root: computed, not loaded
        self._n_outputs, self._fused, self._ast_memo = len(outputs), set(), {}
        write_view = getattr(node, "write_view", None)  # an assign into a view stores through it (members: none)
        values, kernel_shape = [], node.shape if write_view is None else write_view.shape
        for out in outputs:
            self._reduce_shape = None
            values.append(self._ast(out, (), inputs, out))
            if self._reduce_shape is not None:  # with a reduce inside, the epilogue works in its output shape
                kernel_shape = self._reduce_shape
        stores = []
        for index, (out, value) in enumerate(zip(outputs, values)):
            store_st = ShapeTracker.contiguous(out.shape) if write_view is None else write_view
            if store_st.shape != kernel_shape:  # every output of a kernel is stored from one loop nest
                value = _reshape_epilogue(value, kernel_shape)
                store_st = store_st.reshape(kernel_shape)
            if out.op is Op.ASSIGN and self._assign_hazard(value, inputs, out.arg, write_view is not None):
                self.realize[id(out.srcs[0].base)] = "assign-hazard"
                raise _Reschedule()
            stores.append(KernelOp(AstOp.STORE, (value,), (index, store_st), out.dtype))
        if members and (
            _depth(values) > _MAX_FUSED_DEPTH + 8  # (a few more for the loads, masks and stores around the ops)
            or self._overwrites_what_others_read(outputs, values, inputs)
        ):
            raise _UnsafeMerge()
        sink, var_vals = _unbind_ast(KernelOp(AstOp.SINK, tuple(stores)))
        reduces = {i for i in self._fused if self.by_id[i].op in REDUCE}
        reasons = [self.realize.get(id(node), "")]
        reasons += [f"{self.realize.get(id(m), '')}; {self.joined.get(id(m), 'merged')}" for m in members]
        symbolic = bool(var_vals) or write_view is not None
        return ScheduleItem(
            ItemKind.KERNEL, node, inputs, sink, reasons[0], outputs, self._fused, reduces, reasons, var_vals, symbolic
        )

    def _overwrites_what_others_read(self, outputs: list, values: list, inputs: list) -> bool:
        """In a kernel with several outputs, stores run one after another in each iteration: an assign's store
        must not come before another output's read of the old target, unless that read is one of the very loads
        the assign's own value makes (computed once, before the first store that needs it) and element for
        element. Otherwise another output could read an element that this iteration, or an earlier one, already
        overwrote (`x0.mul_(x1.flip(0)); x1.mul_(...)` folded into one kernel)."""
        for out, value in zip(outputs, values):
            if out.op is not Op.ASSIGN or out.arg not in inputs:
                continue
            index = self._n_outputs + inputs.index(out.arg)
            own = {id(n) for n in value.walk() if n.op is AstOp.LOAD and n.arg[0] == index}
            for other in values:
                if other is value:
                    continue
                for n in other.walk():
                    if n.op is AstOp.LOAD and n.arg[0] == index:
                        if id(n) not in own or not n.arg[1].contiguous_view:
                            return True
        return False

    def _assign_hazard(self, value: KernelOp, inputs: list, target: LazyBuffer, through_view: bool = False) -> bool:
        if target not in inputs:
            return False
        index = self._n_outputs + inputs.index(target)
        # a store through a view writes other positions than a contiguous read of the target would read there
        return any(
            n.op is AstOp.LOAD and n.arg[0] == index and (through_view or not n.arg[1].contiguous_view)
            for n in value.walk()
        )

    def schedule(self) -> list:
        while True:
            self.decide()
            try:
                return self._ordered_items()
            except _Reschedule:
                continue

    def _ordered_items(self) -> list:
        items = []
        for node in self.nodes:
            if id(node) not in self.realize:
                continue
            if node.op is Op.HOST:
                items.append(ScheduleItem(ItemKind.HOST, node, [], None, "effect"))
            elif node.op is Op.COPY:
                items.append(ScheduleItem(ItemKind.COPY, node, [node.srcs[0].base], None, "effect"))
            else:
                items.append(self._kernel(node))
        _, cycle = _topological(_dependencies(items))
        if cycle:
            self._break_cycle(items, cycle)
        return _order_assigns(self._merge_siblings(self._merge_readers(self._merge_outputs(items))))

    def _break_cycle(self, items: list, cycle: list) -> None:
        """Fusion made a kernel that must run both before an assign (it reads the old value of the target) and
        after it (it reads, through other kernels, something that waits for the assign). The values it fuses that
        read an old target directly get buffers of their own ("assign-order"), computed before the assign; then the
        schedule is made again. (PyTorch: `t = b * 1; b.add_(1); mixed = a + b; a.add_(t)` with `t` not held.)
        Every node reading an old target from a kernel of its own cannot close a cycle, so this ends; a cycle with
        nothing left to cut is an error that names the buffers, never a wrong order."""
        overwritten = {id(out.arg): out for item in items for out in item.outputs if out.op is Op.ASSIGN}
        members = set(cycle)
        cut = []
        for i in cycle:
            item = items[i]
            if item.kind is not ItemKind.KERNEL:
                continue
            own = {id(o) for o in item.outputs}
            for x in item.inputs:
                assign = overwritten.get(id(x))
                if assign is None or id(assign) in own or _item_of(items, assign) not in members:
                    continue  # only the reads of old values that the cycle runs through
                for fused_id in item.fused - own:
                    node = self.by_id[fused_id]
                    reads_old = any((s if s._base is None else s._base) is x for s in node.srcs)
                    if reads_old and id(node) not in self.realize:
                        cut.append(node)
        if not cut:
            raise RuntimeError(_cycle_message(items, cycle))
        for node in cut:
            self.realize[id(node)] = "assign-order"
        raise _Reschedule()

    def _merge_outputs(self, items: list) -> list:
        """Fold a kernel into the kernel that reads it when that reader is its only consumer and reads
        it element for element: one loop then computes and stores both (fewer launches, one pass)."""
        by_output = {id(item.output): item for item in items if item.kind is ItemKind.KERNEL and len(item.outputs) == 1}
        merged_away: set = set()
        readers: dict = {}  # id of a realized base -> how many of the items left read it
        for item in items:
            for x in item.inputs:
                readers[id(x)] = readers.get(id(x), 0) + 1
        for item in items:
            if item.kind is not ItemKind.KERNEL or id(item) in merged_away or item.symbolic:
                continue
            refused: set = set()
            while True:
                candidate = self._mergeable_input(item, by_output, merged_away, readers, refused)
                if candidate is None:
                    break
                if len(item.outputs) + len(candidate.outputs) > _MAX_KERNEL_OUTPUTS:
                    break
                if _fold_closes_cycle(items, merged_away, candidate, item):
                    refused.add(id(candidate))  # it reads an old target whose assign waits, through others, on item
                    continue
                members = tuple(item.outputs[1:]) + tuple(candidate.outputs)
                added = [o for o in candidate.outputs if id(o) not in self.joined]
                for o in added:
                    self.joined[id(o)] = "folded into its only reader"
                try:
                    new = self._kernel(item.output, members)
                except _UnsafeMerge:
                    for o in added:
                        del self.joined[id(o)]
                    refused.add(id(candidate))
                    continue
                merged_away.add(id(candidate))
                for x in (*item.inputs, *candidate.inputs):
                    readers[id(x)] -= 1
                item.__dict__.update(new.__dict__)
                for x in item.inputs:
                    readers[id(x)] = readers.get(id(x), 0) + 1
        return [item for item in items if id(item) not in merged_away]

    def _merge_readers(self, items: list) -> list:
        """Fold a small elementwise kernel into a kernel it reads element for element, when every other
        kernel of this schedule it reads runs before that one anyway: the producer's loop computes it too,
        as an extra output (a BatchNorm's per-channel coefficients, say). It then waits on nothing that was
        not already waited on, so no cycle can form."""
        producer_of = {id(out): item for item in items for out in item.outputs}
        ancestors = _ancestors(items)
        merged_away: set = set()
        for item in items:
            if item.kind is not ItemKind.KERNEL or item.reduces or len(item.outputs) != 1 or id(item) in merged_away:
                continue
            if item.symbolic:
                continue
            producers = {id(producer_of[id(x)]): producer_of[id(x)] for x in item.inputs if id(x) in producer_of}
            out = item.output
            source = next(
                (p for p in producers.values() if all(q is p or id(q) in ancestors[id(p)] for q in producers.values())),
                None,
            )
            if source is None or source is item or source.kind is not ItemKind.KERNEL or id(source) in merged_away:
                continue
            if source.symbolic:
                continue
            if out.size != source.output.size:
                continue
            if source.reduces and out.size >= _HEAVY_EPILOGUE_SIZE and _alu_count(item.ast) > _HEAVY_EPILOGUE_OPS:
                continue  # on its own it is vectorized; in a product whose lanes run along the reduce, it is not
            if out.op is Op.ASSIGN and any(out.arg in other.inputs for other in items if other is not item):
                continue  # others must read the old value first: the assign keeps its own place in the order
            loads = _loads_by_buffer(item.ast)
            read = [
                st
                for i, x in enumerate(item.inputs)
                if producer_of.get(id(x)) is source
                for st in loads.get(len(item.outputs) + i, [None])
            ]
            if not read or any(st is None or not st.contiguous_view for st in read):
                continue
            members = (*source.outputs[1:], out)
            previous = self.joined.get(id(out))
            self.joined[id(out)] = "computed in the loop of the kernel it reads"
            try:
                merged = self._kernel(source.output, members)
            except _UnsafeMerge:
                if previous is None:
                    del self.joined[id(out)]
                else:
                    self.joined[id(out)] = previous
                continue
            source.__dict__.update(merged.__dict__)
            merged_away.add(id(item))
            producer_of[id(out)] = source
        return [item for item in items if id(item) not in merged_away]

    def _merge_siblings(self, items: list) -> list:
        """Put elementwise kernels that nothing else in the schedule reads, with outputs of one size, into
        one kernel (a BatchNorm's running mean and variance updates, say). Such kernels are independent of
        each other, and a kernel that nothing reads cannot close a cycle."""
        needed = set().union(*_dependencies(items)) if items else set()
        groups: dict = {}  # (device, size) -> item indexes
        for i, item in enumerate(items):
            if i in needed or item.kind is not ItemKind.KERNEL or any(n.op is AstOp.REDUCE for n in item.ast.walk()):
                continue
            if item.symbolic:
                continue
            groups.setdefault((item.output.device, item.output.size), []).append(i)
        merged_away = set()
        for group in groups.values():
            if len(group) < 2:
                continue
            root = items[group[0]]
            members = tuple(root.outputs[1:]) + tuple(o for j in group[1:] for o in items[j].outputs)
            added = [o for o in members if id(o) not in self.joined]
            for o in added:
                self.joined[id(o)] = "shares a loop with unread kernels of its size"
            try:
                merged = self._kernel(root.output, members)
            except _UnsafeMerge:
                for o in added:
                    del self.joined[id(o)]
                continue
            root.__dict__.update(merged.__dict__)
            merged_away.update(group[1:])
        return [item for i, item in enumerate(items) if i not in merged_away]

    def _mergeable_input(self, item: ScheduleItem, by_output: dict, merged_away: set, readers: dict, refused: set):
        size = item.output.size
        group = {id(o) for o in item.outputs}
        reduces = item.reduces  # a kernel holds at most one
        loads = _loads_by_buffer(item.ast)
        for position, x in enumerate(item.inputs):
            producer = by_output.get(id(x))
            if producer is None or id(producer) in merged_away or id(producer) in refused or producer is item:
                continue
            if producer.symbolic:
                continue
            if x.size != size:
                continue
            if self.realize.get(id(x)) == "assign-hazard":  # it has a buffer so that an assign can read it whole
                continue
            views = loads.get(len(item.outputs) + position)
            if not views or not all(st.contiguous_view for st in views):  # every read element for element
                continue
            if not self.consumers.get(id(x), set()) <= item.fused | group:
                continue
            if readers[id(x)] > 1:
                continue  # another kernel reads it too (a value fused into both): folding could close a cycle
            if x.op in _STORES_ITS_SOURCE and x.srcs[0].is_view:
                continue
            other = producer.reduces
            if reduces and other and other != reduces:
                continue
            return producer
        return None


class _Reschedule(Exception):
    pass


class _UnsafeMerge(Exception):
    """A merge would make a kernel that overwrites a buffer another of its outputs reads: the merge is not made."""


def _dependencies(items: list) -> list:
    """For each item, the items that must run before it: the producers of what it reads, and, for an
    assign, every other kernel that reads the buffer it overwrites (the old value)."""
    producer = {id(out): i for i, item in enumerate(items) for out in item.outputs}
    readers: dict = {}  # id(base) -> the items that read it
    for r, item in enumerate(items):
        for b in item.inputs:
            readers.setdefault(id(b), []).append(r)
    deps = [{producer[id(b)] for b in item.inputs if id(b) in producer} for item in items]
    for a, item in enumerate(items):
        for out in item.outputs:
            if out.op is Op.ASSIGN:
                deps[a].update(r for r in readers.get(id(out.arg), ()) if r != a)
    return deps


def _topological(deps: list) -> tuple:
    """(order, cycle): indexes in an order where each comes after everything it depends on (iterative
    depth-first), and None; or, when there is none, a cycle (indexes, each depending on the next, the last on
    the first) and None."""
    order, state = [], [0] * len(deps)  # 0 new, 1 on the current path, 2 done
    for start in range(len(deps)):
        if state[start]:
            continue
        state[start] = 1
        path = [start]
        pending = [iter(sorted(deps[start]))]
        while path:
            for j in pending[-1]:
                if state[j] == 1:
                    return None, path[path.index(j) :]
                if state[j] == 0:
                    state[j] = 1
                    path.append(j)
                    pending.append(iter(sorted(deps[j])))
                    break
            else:
                state[path[-1]] = 2
                order.append(path.pop())
                pending.pop()
    return order, None


def _item_of(items: list, out: LazyBuffer):
    return next((i for i, item in enumerate(items) if any(o is out for o in item.outputs)), None)


def _cycle_message(items: list, cycle: list) -> str:
    """Names what waits on what around a cycle: the kernels by output, the assigns by target."""

    def name(item):
        out = item.output
        what = "assign into" if out.op is Op.ASSIGN else out.op.name.lower()
        return f"{what} {out.dtype.name}{list(out.shape)}"

    steps = " -> ".join(name(items[i]) for i in reversed(cycle))
    return (
        "schedule has a cycle: a kernel reads a buffer's old value and, through other kernels, a value that needs "
        "the assign overwriting that buffer, so no order is right "
        f"(each runs before the next: {steps} -> ...). Realize the value read before the in-place update "
        "(`.realize()`) to break it."
    )


def _fold_closes_cycle(items: list, merged_away: set, producer: ScheduleItem, reader: ScheduleItem) -> bool:
    """Would folding `producer` into `reader` (its only reader) make a kernel that waits on itself? Only when
    the producer reads a buffer that an assign of another item overwrites, and that assign leads to the reader
    through other items (PyTorch: `t = b * 1; b.add_(1); mixed = a + b; a.add_(t)`: t may not join a's update,
    which waits for `mixed`, which waits for b's update, which waits for t). Without such a read, the reader is
    the producer's only dependent, and folding cannot close a cycle."""
    live = [item for item in items if id(item) not in merged_away]
    targets = {id(out.arg) for item in live if item is not producer for out in item.outputs if out.op is Op.ASSIGN}
    if not any(id(x) in targets for x in producer.inputs):
        return False
    deps = _dependencies(live)
    index = {id(item): i for i, item in enumerate(live)}
    source, goal = index[id(producer)], index[id(reader)]
    dependents: list = [[] for _ in live]
    for i, before in enumerate(deps):
        for j in before:
            dependents[j].append(i)
    seen = {source, goal}
    stack = [d for d in dependents[source] if d != goal]
    while stack:  # is the reader reached from the producer other than directly?
        i = stack.pop()
        if i == goal:
            return True
        if i in seen:
            continue
        seen.add(i)
        stack.extend(dependents[i])
    return False


def _ancestors(items: list) -> dict:
    """id(item) -> ids of every item that must run before it, directly or not."""
    deps = _dependencies(items)
    result: dict = {}
    order, cycle = _topological(deps)
    if cycle:
        raise RuntimeError(_cycle_message(items, cycle))
    for i in order:
        result[id(items[i])] = set().union(*({id(items[j])} | result[id(items[j])] for j in deps[i]))
    return result


def _order_assigns(items: list) -> list:
    """Topological order of the items under `_dependencies`."""
    order, cycle = _topological(_dependencies(items))
    if cycle:
        raise RuntimeError(_cycle_message(items, cycle))
    return [items[i] for i in order]


def _loads_by_buffer(ast: KernelOp) -> dict:
    """Buffer index -> the views of every load of it in the kernel (a buffer may be read through several)."""
    loads: dict = {}
    for n in ast.walk():
        if n.op is AstOp.LOAD:
            loads.setdefault(n.arg[0], []).append(n.arg[1])
    return loads


def _not_a_reshape(src: LazyBuffer) -> bool:
    return src.is_view and not (src.st.contiguous_view and src.size == src.base.size)


def _reshape_epilogue(node: KernelOp, shape: tuple, done: dict | None = None) -> KernelOp:
    """The epilogue (everything above the reduce) re-expressed in the reduce's output shape."""
    done = {} if done is None else done  # each node once: epilogues are DAGs (a tree walk is exponential)
    if id(node) in done:
        return done[id(node)]
    if node.op is AstOp.REDUCE:
        result = node
    elif node.op is AstOp.LOAD or node.op is AstOp.CONST:
        result = KernelOp(node.op, (), (node.arg[0], node.arg[1].reshape(shape)), node.dtype)
    elif node.op is AstOp.VALID:
        result = KernelOp(AstOp.VALID, (), node.arg.reshape(shape), node.dtype)
    else:
        result = KernelOp(node.op, tuple(_reshape_epilogue(s, shape, done) for s in node.srcs), node.arg, node.dtype)
    done[id(node)] = result
    return result


def create_schedule(targets: list) -> list:
    return Scheduler(targets).schedule()


def _depth(values: list) -> int:
    """How deeply the nodes of kernel ASTs nest (a leaf is 1)."""
    depth: dict = {}
    for value in values:
        for node in value.walk():
            depth[id(node)] = 1 + max((depth[id(s)] for s in node.srcs), default=0)
    return max(depth[id(v)] for v in values)


def _alu_count(ast: KernelOp) -> int:
    """Elementwise ops a kernel computes per element (each distinct node once)."""
    return sum(1 for node in ast.walk() if node.op in ELEMENTWISE)


def _unbind_ast(ast: KernelOp) -> tuple:
    """(the AST with every bound Variable in its views unbound, {name: value}): kernels are compiled and cached for
    the variable, and launched with its value. Two values of one variable in one kernel are refused."""
    leaves = [n for n in ast.walk() if n.op in _VIEWED]
    if not any((n.arg if n.op is AstOp.VALID else n.arg[1]).symbolic for n in leaves):
        return ast, {}
    values: dict = {}
    done: dict = {}
    for node in ast.walk():  # sources before their users
        arg = node.arg
        if node.op in _VIEWED:
            st, found = (arg if node.op is AstOp.VALID else arg[1]).unbind()
            for name, value in found.items():
                if values.setdefault(name, value) != value:
                    raise ValueError(f"Variable {name!r} is bound to both {values[name]} and {value} in one kernel")
            arg = st if node.op is AstOp.VALID else (arg[0], st)
        srcs = tuple(done[id(s)] for s in node.srcs)
        same = arg is node.arg and all(a is b for a, b in zip(srcs, node.srcs))
        done[id(node)] = node if same else KernelOp(node.op, srcs, arg, node.dtype)
    return done[id(ast)], values


_VIEWED = frozenset({AstOp.LOAD, AstOp.CONST, AstOp.VALID, AstOp.STORE})

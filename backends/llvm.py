"""The CPU backend: linear IR -> LLVM IR text -> machine code through llvmlite, run on all cores.

Each kernel is `void name(ptr buf0, ptr buf1, ..., i32 start, i32 end)`; the outermost global loop
runs from start to end, so a thread pool splits it (ctypes releases the GIL during the call).
Loops are do-while with phi counters; accumulators live in allocas that LLVM promotes to registers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import llvmlite
import llvmlite.binding as llvm
import numpy as np

from lazygrad import config, diskcache
from lazygrad import dtype as dt
from lazygrad.codegen.ir import Program

# --- rendering --------------------------------------------------------------------------------
_MEM_TYPE = {"bool": "i8", "uint8": "i8", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
             "float16": "half", "float32": "float", "float64": "double"}
_REG_TYPE = dict(_MEM_TYPE, bool="i1")
_INTRINSIC_SUFFIX = {"half": "f16", "float": "f32", "double": "f64"}


def _ty(d: dt.DType) -> str:
    return _REG_TYPE[d.name]


def _float_literal(value: float, d: dt.DType) -> str:
    # LLVM wants floats as the hex of the double with the same value, exactly representable in d
    if d == dt.float32:
        value = float(np.float32(value))
    elif d == dt.float16:
        value = float(np.float16(value))
    return "0x" + struct.pack(">d", value).hex().upper()


def _const(value, d: dt.DType) -> str:
    if d == dt.bool_:
        return "true" if value else "false"
    if d.is_float:
        return _float_literal(float(value), d)
    return str(int(value))


class _Renderer:
    def __init__(self, program: Program):
        self.p = program
        self.lines: list = []
        self.entry: list = []
        self.names: dict = {}  # UOp id -> SSA value text
        self.declares: set = set()
        self.block = "entry"
        self.tmp = 0
        self.loops: dict = {}  # range id -> (header label, phi placeholder index, start value)

    def fresh(self, hint="t") -> str:
        self.tmp += 1
        return f"%{hint}{self.tmp}"

    def emit(self, text: str):
        self.lines.append("  " + text)

    def val(self, u) -> str:
        if u.op == "const":
            return _const(u.arg, u.dtype)
        if u.op == "acc":  # read the accumulator's current value
            name = self.fresh("a")
            self.emit(f"{name} = load {_ty(u.dtype)}, ptr {self.names[u.id]}")
            return name
        return self.names[u.id]

    def intrinsic(self, name: str, d: dt.DType, nargs: int) -> str:
        t = _ty(d)
        fn = f"@llvm.{name}.{_INTRINSIC_SUFFIX[t]}"
        self.declares.add(f"declare {t} {fn}({', '.join([t] * nargs)})")
        return fn

    def render(self) -> str:
        p = self.p
        params = [f"ptr noalias align 16 %buf{i}" for i in range(len(p.buffer_dtypes))] + ["i32 %start", "i32 %end"]
        first_global = True
        for u in p.uops:
            op = u.op
            if op == "param":
                self.names[u.id] = f"%buf{u.arg[0]}"
            elif op == "const":
                pass
            elif op == "range":
                name, size, kind = u.arg
                lo, hi = ("%start", "%end") if (kind == "global" and first_global) else ("0", str(size))
                if kind == "global":
                    first_global = False
                pred = self.block
                header = f"L{u.id}"
                self.emit(f"br label %{header}")
                self.lines.append(f"{header}:")
                self.block = header
                phi_index = len(self.lines)
                self.lines.append("")  # the phi, filled in at endrange when the latch block is known
                self.names[u.id] = f"%i{u.id}"
                self.loops[u.id] = (header, phi_index, lo, pred, hi)
            elif op == "endrange":
                r = u.srcs[0]
                header, phi_index, lo, pred, hi = self.loops[r.id]
                nxt, cond = self.fresh("next"), self.fresh("cond")
                self.emit(f"{nxt} = add nuw nsw i32 %i{r.id}, 1")
                self.emit(f"{cond} = icmp slt i32 {nxt}, {hi}")
                latch = self.block
                self.lines[phi_index] = f"  %i{r.id} = phi i32 [{lo}, %{pred}], [{nxt}, %{latch}]"
                exit_label = f"X{r.id}"
                self.emit(f"br i1 {cond}, label %{header}, label %{exit_label}")
                self.lines.append(f"{exit_label}:")
                self.block = exit_label
            elif op == "acc":
                slot = f"%acc{u.id}"
                self.entry.append(f"  {slot} = alloca {_ty(u.dtype)}")
                self.names[u.id] = slot
                self.emit(f"store {_ty(u.dtype)} {_const(u.arg, u.dtype)}, ptr {slot}")
            elif op == "acc_update":
                acc, value = u.srcs
                self.emit(f"store {_ty(acc.dtype)} {self.val(value)}, ptr {self.names[acc.id]}")
            elif op == "load":
                self.render_load(u)
            elif op == "store":
                self.render_store(u)
            else:
                self.names[u.id] = self.render_alu(u)
        body = "\n".join(self.lines)
        head = f"define void @{p.name}({', '.join(params)}) #0 {{\nentry:\n" + "\n".join(self.entry)
        attrs = 'attributes #0 = { nounwind "no-trapping-math"="true" }'
        return "\n".join(sorted(self.declares)) + "\n\n" + head + "\n" + body + "\n  ret void\n}\n" + attrs + "\n"

    def _address(self, buf, index_uop, valid) -> tuple:
        mem = _MEM_TYPE[buf.dtype.name]
        index = self.val(index_uop)
        if valid is not None:  # masked-out elements read index 0, which always exists
            safe = self.fresh("safe")
            self.emit(f"{safe} = select i1 {self.val(valid)}, i32 {index}, i32 0")
            index = safe
        ptr = self.fresh("p")
        self.emit(f"{ptr} = getelementptr inbounds {mem}, ptr {self.names[buf.id]}, i32 {index}")
        return ptr, mem

    def render_load(self, u):
        buf, index_uop = u.srcs[0], u.srcs[1]
        valid = u.srcs[2] if len(u.srcs) > 2 else None
        ptr, mem = self._address(buf, index_uop, valid)
        raw = self.fresh("v")
        self.emit(f"{raw} = load {mem}, ptr {ptr}")
        value = raw
        if u.dtype == dt.bool_:
            value = self.fresh("b")
            self.emit(f"{value} = icmp ne i8 {raw}, 0")
        if valid is not None:
            out = self.fresh("m")
            zero = _const(False if u.dtype == dt.bool_ else 0, u.dtype)
            self.emit(f"{out} = select i1 {self.val(valid)}, {_ty(u.dtype)} {value}, {_ty(u.dtype)} {zero}")
            value = out
        self.names[u.id] = value

    def render_store(self, u):
        buf, index_uop, value = u.srcs
        ptr, mem = self._address(buf, index_uop, None)
        v = self.val(value)
        if buf.dtype == dt.bool_:
            wide = self.fresh("z")
            self.emit(f"{wide} = zext i1 {v} to i8")
            v = wide
        self.emit(f"store {mem} {v}, ptr {ptr}")

    def render_alu(self, u) -> str:
        op, d = u.op, u.dtype
        srcs = [self.val(s) for s in u.srcs]
        out = self.fresh("r")
        t = _ty(d)
        src_d = u.srcs[0].dtype
        is_f = src_d.is_float
        unsigned = src_d.kind in "ub"
        if op == "add":
            self.emit(f"{out} = {'fadd contract' if is_f else 'add'} {t} {srcs[0]}, {srcs[1]}")
        elif op == "mul":
            self.emit(f"{out} = {'fmul contract' if is_f else 'mul'} {t} {srcs[0]}, {srcs[1]}")
        elif op == "max":
            if is_f:
                self.emit(f"{out} = call {t} {self.intrinsic('maximum', d, 2)}({t} {srcs[0]}, {t} {srcs[1]})")
            elif d == dt.bool_:
                self.emit(f"{out} = or i1 {srcs[0]}, {srcs[1]}")
            else:
                cmp = self.fresh("c")
                self.emit(f"{cmp} = icmp {'ugt' if unsigned else 'sgt'} {t} {srcs[0]}, {srcs[1]}")
                self.emit(f"{out} = select i1 {cmp}, {t} {srcs[0]}, {t} {srcs[1]}")
        elif op in ("cmplt", "cmpne"):
            st = _ty(src_d)
            if is_f:
                self.emit(f"{out} = fcmp {'olt' if op == 'cmplt' else 'une'} {st} {srcs[0]}, {srcs[1]}")
            else:
                pred = ("ult" if unsigned else "slt") if op == "cmplt" else "ne"
                self.emit(f"{out} = icmp {pred} {st} {srcs[0]}, {srcs[1]}")
        elif op == "idiv":
            self.emit(f"{out} = {'udiv' if unsigned else 'sdiv'} {t} {srcs[0]}, {srcs[1]}")
        elif op == "mod":
            self.emit(f"{out} = {'urem' if unsigned else 'srem'} {t} {srcs[0]}, {srcs[1]}")
        elif op in ("and", "or", "xor", "shl"):
            self.emit(f"{out} = {op} {t} {srcs[0]}, {srcs[1]}")
        elif op == "shr":
            self.emit(f"{out} = {'lshr' if unsigned else 'ashr'} {t} {srcs[0]}, {srcs[1]}")
        elif op == "where":
            self.emit(f"{out} = select i1 {srcs[0]}, {t} {srcs[1]}, {t} {srcs[2]}")
        elif op == "neg":
            self.emit(f"{out} = fneg {t} {srcs[0]}" if d.is_float else f"{out} = sub {t} 0, {srcs[0]}")
        elif op == "recip":
            self.emit(f"{out} = fdiv {t} {_const(1.0, d)}, {srcs[0]}")
        elif op in ("exp2", "log2", "sin", "sqrt"):
            self.emit(f"{out} = call {t} {self.intrinsic(op, d, 1)}({t} {srcs[0]})")
        elif op == "cast":
            self.emit(f"{out} = {_cast_instruction(u.arg, d, srcs[0])}")
        elif op == "bitcast":
            self.emit(f"{out} = bitcast {_ty(u.arg)} {srcs[0]} to {t}")
        else:
            raise NotImplementedError(f"LLVM renderer: op {op}")
        return out


def _cast_instruction(src: dt.DType, dst: dt.DType, value: str) -> str:
    s, d = _ty(src), _ty(dst)
    if dst == dt.bool_:
        return f"fcmp une {s} {value}, {_const(0.0, src)}" if src.is_float else f"icmp ne {s} {value}, 0"
    if src.is_float and dst.is_float:
        return f"{'fpext' if dst.itemsize > src.itemsize else 'fptrunc'} {s} {value} to {d}"
    if src.is_float:
        return f"{'fptoui' if dst.kind == 'u' else 'fptosi'} {s} {value} to {d}"
    if dst.is_float:
        return f"{'uitofp' if src.kind in 'ub' else 'sitofp'} {s} {value} to {d}"
    if dst.itemsize == src.itemsize and src != dt.bool_:
        return f"bitcast {s} {value} to {d}"
    if dst.itemsize > src.itemsize or src == dt.bool_:
        return f"{'zext' if src.kind in 'ub' else 'sext'} {s} {value} to {d}"
    return f"trunc {s} {value} to {d}"


def render_llvm(program: Program) -> str:
    return _Renderer(program).render()


# --- compiling and running ----------------------------------------------------------------------
class CompileError(RuntimeError):
    pass


class _LLVMCompiler:
    def __init__(self):
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        libm = ctypes.util.find_library("m")
        if libm:
            llvm.load_library_permanently(libm)
        target = llvm.Target.from_default_triple()
        self.cpu = llvm.get_host_cpu_name()
        self.features = llvm.get_host_cpu_features().flatten()
        self.machine = target.create_target_machine(cpu=self.cpu, features=self.features, opt=3, jit=True)
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.machine)
        self.lock = threading.Lock()
        self.target_id = f"{llvm.get_default_triple()}|{self.cpu}|{self.features}|llvmlite {llvmlite.__version__}"

    def object_code(self, source: str, name: str) -> bytes:
        try:
            module = llvm.parse_assembly(source)
            module.verify()
        except RuntimeError as e:
            raise CompileError(str(e)) from e
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pb = llvm.create_pass_builder(self.machine, pto)
        pb.getModulePassManager().run(module, pb)
        return self.machine.emit_object(module)

    def load(self, obj: bytes, name: str) -> int:
        with self.lock:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
            self.engine.finalize_object()
            return self.engine.get_function_address(name)


class LLVMKernel:
    def __init__(self, backend: LLVMBackend, program: Program, source: str, address: int):
        self.name, self.source, self.program = program.name, source, program
        nargs = len(program.buffer_dtypes)
        self.fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * nargs), ctypes.c_int32, ctypes.c_int32)(address)
        self.backend = backend
        self.outer = program.global_size[0] if program.global_size else 1
        inner = math.prod(program.global_size[1:]) if program.global_size else 1
        self.work = self.outer * inner

    def bind(self, buffers: list):
        """A launcher with the arguments fixed: `launch(wait) -> seconds or None` (JIT replays)."""
        ptrs = [b.ctypes.data for b in buffers]
        fn, pool = self.fn, self.backend.pool
        threads = min(self.backend.threads, self.outer)
        if threads <= 1 or self.work < 4096:
            def run():
                fn(*ptrs, 0, self.outer)
        else:
            bounds = [self.outer * i // threads for i in range(threads + 1)]
            chunks = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
            first, rest = chunks[0], chunks[1:]

            def run():
                futures = [pool.submit(fn, *ptrs, a, b) for a, b in rest]
                fn(*ptrs, *first)  # this thread takes a share too
                for f in futures:
                    f.result()

        def launch(wait: bool = False):
            t0 = time.perf_counter()
            run()
            return time.perf_counter() - t0 if wait else None

        return launch

    def __call__(self, buffers: list, wait: bool = False):
        return self.bind(buffers)(wait)


class LLVMBackend:
    name = "llvm"
    is_gpu = False

    def __init__(self):
        self.compiler = _LLVMCompiler()
        self.device_name = f"CPU ({self.compiler.cpu}, {config.THREADS} threads)"
        self.threads = max(1, config.THREADS)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="lazygrad-llvm")

    # memory is host memory: numpy byte arrays, 64-byte aligned for vector loads
    def allocate(self, nbytes: int):
        raw = np.empty(max(nbytes, 1) + 64, dtype=np.uint8)
        offset = (-raw.ctypes.data) % 64
        return raw[offset : offset + max(nbytes, 1)]

    def free(self, handle, nbytes: int) -> None:
        pass

    def copy_in(self, handle, array: np.ndarray) -> None:
        handle[: array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)

    def copy_out(self, handle, array: np.ndarray) -> None:
        array.reshape(-1).view(np.uint8)[:] = handle[: array.nbytes]

    def synchronize(self) -> None:
        pass

    def compile(self, program: Program) -> LLVMKernel:
        source = render_llvm(program)
        key = f"llvm|{self.compiler.target_id}|{source}"
        obj = diskcache.get(key)
        if obj is None:
            obj = self.compiler.object_code(source, program.name)
            diskcache.put(key, obj)
        address = self.compiler.load(obj, program.name)
        return LLVMKernel(self, program, source, address)


def create(name: str = "llvm") -> LLVMBackend:
    return LLVMBackend()

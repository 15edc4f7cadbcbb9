"""A compile worker: a process that turns LLVM IR into object code for the LLVM backend's compile pool.

llvmlite runs every LLVM call behind one global lock, so threads cannot compile kernels in parallel; processes
can. Run as a script (`python llvm_worker.py CPU FEATURES`), never imported with lazygrad: it imports llvmlite alone,
so it starts in tens of milliseconds. It compiles exactly as `_LLVMCompiler.object_code` does (the same target
machine options and pass pipeline), so its object code is byte for byte the in-process compiler's.

Protocol over stdin/stdout, one job at a time: a request is a 4-byte little-endian length and that many bytes of
IR (UTF-8); the reply is one status byte (0 ok: object code follows; 1: LLVM refused the IR, its message
follows), a 4-byte length, and the payload. It exits when stdin closes.
"""

import struct
import sys


def compile_to_object(llvm, machine, source: str) -> bytes:
    """The object code of one module (the same steps as backends/llvm.py's _LLVMCompiler.object_code)."""
    module = llvm.parse_assembly(source)
    module.verify()
    pb = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(module, pb)
    return machine.emit_object(module)


def main(cpu: str, features: str) -> None:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(cpu=cpu, features=features, opt=3, jit=True)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = stdin.read(4)
        if len(header) < 4:
            return  # the parent closed the pipe: done
        (length,) = struct.unpack("<I", header)
        source = stdin.read(length).decode()
        try:
            status, payload = 0, compile_to_object(llvm, machine, source)
        except Exception as e:  # the parent compiles it again in-process, where the error is raised with context
            status, payload = 1, str(e).encode()
        stdout.write(struct.pack("<BI", status, len(payload)) + payload)
        stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Results do not depend on the CPU that runs them.

The machines this suite runs on differ (an AMD Zen 5; an Intel Xeon with AVX512-FP16, native half
arithmetic; an AMD Zen 3 with AVX2 and no AVX-512). LLVM is free to use what a CPU offers, so the LLVM
backend must not leave it choices that change a result: on a CPU with half arithmetic, `fmul contract`
and `fadd contract` around a float16 rounding point became one half FMA (one rounding where PyTorch
rounds twice; 27% of `a*b+c` differed).

- The same programs, compiled for several CPU targets this host can run (LAZYGRAD_LLVM_CPU), give
  identical float16 results and float32 results within rounding.
- The code for a CPU with half arithmetic (which this host may lack) has no half FMA.
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import lazygrad
from lazygrad import runtime

pytestmark = pytest.mark.backend_independent

# generic x86-64 (no F16C: half conversions are library calls), AVX2, AVX-512, and this machine; for each, the
# host features it needs to run (code for AVX-512 dies with SIGILL on an AVX2-only host such as a Zen 3) and the
# lanes the code generator gives float32 there
CPU_TARGETS = {
    "x86-64": (set(), 4),
    "haswell": ({"avx2", "fma", "f16c"}, 8),
    "skylake-avx512": ({"avx512f", "avx512bw", "avx512dq", "avx512vl"}, 16),
    "host": (set(), None),
}


def runnable_targets() -> list[str]:
    import llvmlite.binding as llvm

    host = {name for name, present in llvm.get_host_cpu_features().items() if present}
    runnable = [cpu for cpu, (needs, _) in CPU_TARGETS.items() if needs <= host]
    for cpu in CPU_TARGETS.keys() - set(runnable):
        warnings.warn(f"not run for {cpu}: this host lacks {sorted(CPU_TARGETS[cpu][0] - host)}", stacklevel=2)
    return runnable


PROGRAM = """
import json, sys
import numpy as np
import lazygrad as lg
from lazygrad import backends

rng = np.random.default_rng(0)
h = [lg.tensor(rng.uniform(-2, 2, 1003).astype(np.float16)) for _ in range(3)]
f = [lg.tensor(rng.standard_normal(1003).astype(np.float32)) for _ in range(3)]
m = [lg.tensor(rng.standard_normal((37, 53)).astype(np.float32)) for _ in range(2)]
results = {
    "half_fma": h[0] * h[1] + h[2],
    "half_chain": ((h[0] * h[1] + h[2]) * h[0] - h[1]).relu() * 0.5,
    "half_exp": (h[0] * h[1]).exp(),
    "half_sum": (h[0] * h[1]).sum(),
    "float_fma": f[0] * f[1] + f[2],
    "float_mix": (f[0] * f[1] + f[2]).exp().sum(),
    "float_matmul": m[0] @ m[1].T,
}
out = {name: {"dtype": str(t.numpy().dtype), "hex": t.numpy().tobytes().hex()} for name, t in results.items()}
print(json.dumps({"vector_width": backends.get("llvm").capabilities.vector_width, "results": out}))
"""


def run_for_cpu(cpu: str, tmp_path) -> dict:
    env = dict(os.environ, LAZYGRAD_BACKEND="llvm", LAZYGRAD_LLVM_CPU=cpu, LAZYGRAD_CACHE_DIR=str(tmp_path / cpu))
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"LAZYGRAD_LLVM_CPU={cpu}: exit {done.returncode}\n{done.stderr[-3000:]}"
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    arrays = {k: np.frombuffer(bytes.fromhex(v["hex"]), dtype=v["dtype"]) for k, v in payload["results"].items()}
    return {"vector_width": payload["vector_width"], "results": arrays}


def test_results_are_the_same_for_every_cpu_target(tmp_path):
    runs = {cpu: run_for_cpu(cpu, tmp_path) for cpu in runnable_targets()}
    # the targets really differ in what the code generator uses (4, 8 and, on an AVX-512 host, 16 lanes)
    assert {"x86-64", "haswell"} <= runs.keys(), "every x86-64 host this suite runs on has AVX2"
    for cpu, run in runs.items():
        assert run["vector_width"] == (CPU_TARGETS[cpu][1] or run["vector_width"]), (cpu, run["vector_width"])
    reference = runs["host"]["results"]
    for cpu, run in runs.items():
        for name, got in run["results"].items():
            want = reference[name]
            if got.dtype == np.float16:
                np.testing.assert_array_equal(got, want, err_msg=f"{name} on {cpu} vs host")
            else:
                np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-5, err_msg=f"{name} on {cpu} vs host")
    # and float16, rounded per op, is what PyTorch computes
    rng = np.random.default_rng(0)
    h = [torch.tensor(rng.uniform(-2, 2, 1003).astype(np.float16)) for _ in range(3)]
    np.testing.assert_array_equal(reference["half_fma"], (h[0] * h[1] + h[2]).numpy())


def test_no_half_fma_on_a_cpu_with_half_arithmetic(monkeypatch):
    """Compiled for Sapphire Rapids (AVX512-FP16) whatever the host: the multiply and the add of a*b+c stay
    two half instructions, each rounding, as PyTorch computes them."""
    from lazygrad.backends.llvm import _LLVMCompiler, render_llvm

    programs = []
    lowered = runtime._lowered

    def recording(*args, **kwargs):
        programs.append(lowered(*args, **kwargs))
        return programs[-1]

    monkeypatch.setattr(runtime, "_kernel_cache", {})
    monkeypatch.setattr(runtime, "_lowered", recording)
    a, b, c = (lazygrad.tensor(np.full(64, 1.5, np.float16), device="llvm") for _ in range(3))
    (a * b + c).numpy()
    (program,) = programs
    compiler = _LLVMCompiler("sapphirerapids")
    import llvmlite.binding as llvm

    module = llvm.parse_assembly(render_llvm(program))
    options = llvm.create_pipeline_tuning_options(speed_level=3)
    passes = llvm.create_pass_builder(compiler.machine, options)
    passes.getModulePassManager().run(module, passes)
    assembly = compiler.machine.emit_assembly(module)
    assert "vmulph" in assembly and "vaddph" in assembly, "expected native half arithmetic for this target"
    assert "vfmadd" not in assembly, "a half FMA rounds once where PyTorch rounds twice"

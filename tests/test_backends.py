"""The backends side by side: the registry, choosing a backend, the same graph giving the same numbers on LLVM
and OpenCL, moving tensors between them, compile errors, and the OpenCL binary cache.

These tests name their devices themselves, so they run once (backend_independent), not once per backend.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import rand

import lazygrad
from lazygrad import backends
from lazygrad import dtype as dt
from lazygrad.codegen.ir import Program, UOp
from lazygrad.nn import functional as F
from lazygrad.ops import IrOp, Op

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("llvm", "opencl")


def require(name: str):
    """The backend, or a skip (a failure under CI, where every backend must run) when it cannot start."""
    try:
        return backends.get(name)
    except backends.BackendUnavailable as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{name} unavailable under CI: {e}")
        pytest.skip(f"{name} unavailable: {str(e).splitlines()[0]}")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def on_each_device(fn, *arrays) -> dict:
    """fn applied to the same inputs placed on each backend: {device: [numpy results]}."""
    for name in DEVICES:
        require(name)
    results = {}
    for device in DEVICES:
        outs = fn(*[lazygrad.Tensor(a.copy(), device=device) for a in arrays])
        outs = outs if isinstance(outs, (tuple, list)) else [outs]
        results[device] = [o.numpy() for o in outs]
    return results


def assert_devices_agree(results: dict, rtol=1e-5, atol=1e-6, reference=None):
    first, second = (results[d] for d in DEVICES)
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"result {i}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"result {i}: llvm vs opencl")
        if reference is not None:
            np.testing.assert_allclose(
                b, reference[i], rtol=rtol, atol=atol, equal_nan=True, err_msg=f"result {i}: opencl vs reference"
            )


# ---- the registry ------------------------------------------------------------------------------------------
def test_available_lists_every_registered_backend():
    listed = backends.available()
    assert {"llvm", "opencl"} <= set(listed)
    for name, (ok, detail) in listed.items():
        assert isinstance(ok, bool) and detail, f"{name}: no description"


@pytest.mark.backend_independent
def test_cuda_is_available_says_whether_opencl_runs_on_a_gpu():
    # the driver's own device type (pyopencl), not the backend's flag; PoCL on this CPU is not a GPU
    opencl_runs = backends.available()["opencl"][0]
    expected = False
    if opencl_runs:
        import pyopencl as cl

        expected = bool(backends.get("opencl").device.type & cl.device_type.GPU)
        assert lazygrad.ones(1, device="cuda").device.startswith("opencl")  # "cuda" names the opencl backend
    assert lazygrad.cuda.is_available() is expected


def test_unknown_backend_fails_naming_the_real_ones():
    result = run_python("import lazygrad; lazygrad.rand(2).numpy()", LAZYGRAD_BACKEND="nonsense")
    assert result.returncode != 0
    assert "nonsense" in result.stderr and "opencl" in result.stderr and "llvm" in result.stderr, result.stderr


def test_opencl_device_that_does_not_exist_is_reported_with_the_device_list():
    require("opencl")
    code = "import lazygrad; lazygrad.rand(2, device='opencl').numpy()"
    result = run_python(code, LAZYGRAD_OPENCL_DEVICE="no-such-device-xyz")
    assert result.returncode != 0
    assert "no-such-device-xyz" in result.stderr and "devices:" in result.stderr, result.stderr


class _Fake:
    def __init__(self, name, device_type=None):
        self.name, self.type = name, device_type


def test_opencl_device_choice_prefers_a_gpu_and_obeys_a_request():
    require("opencl")
    import pyopencl as cl

    from lazygrad.backends import opencl

    cpu = (_Fake("a CPU platform"), _Fake("Some CPU", cl.device_type.CPU))
    gpu = (_Fake("a GPU platform"), _Fake("NVIDIA H100", cl.device_type.GPU))
    assert opencl._choose_device(cl, [cpu, gpu], "") == gpu
    assert opencl._choose_device(cl, [cpu, gpu], "0") == cpu
    assert opencl._choose_device(cl, [cpu, gpu], "some cpu") == cpu
    with pytest.raises(RuntimeError, match="there are 2"):
        opencl._choose_device(cl, [cpu, gpu], "5")
    with pytest.raises(RuntimeError, match="Some CPU"):  # the message lists the devices there are
        opencl._choose_device(cl, [cpu, gpu], "radeon")


def test_a_hidden_nvidia_driver_is_pointed_out(monkeypatch):
    require("opencl")
    import pyopencl as cl

    from lazygrad.backends import opencl

    monkeypatch.setattr(opencl, "_nvidia_opencl_library", lambda: "/usr/lib/libnvidia-opencl.so.1")
    cpu = (_Fake("a CPU platform"), _Fake("Some CPU", cl.device_type.CPU))
    with pytest.warns(RuntimeWarning, match="OCL_ICD_VENDORS"):
        assert opencl._choose_device(cl, [cpu], "") == cpu


# ---- rendering details that decide exactness -----------------------------------------------------------------
def test_opencl_float_literals_are_exact():
    from lazygrad.backends.opencl import _const

    assert float.fromhex(_const(0.1, dt.float32).rstrip("f")) == float(np.float32(0.1))
    assert float.fromhex(_const(0.1, dt.float64)) == 0.1
    assert _const(float("-inf"), dt.float32) == "(-INFINITY)"
    assert _const(float("nan"), dt.float32) == "NAN"
    assert _const(-(2**31), dt.int32) == "(-2147483647-1)"
    assert _const(-(2**63), dt.int64) == "(-9223372036854775807L-1L)"


# ---- the same graph, the same numbers ------------------------------------------------------------------------
# Each case is (graph, inputs, reference results, tolerances). A last dim that is a multiple of 16 makes the
# code generator emit vector code for PoCL; odd shapes keep it scalar.
def elementwise_case(shape):
    x, y = rand(*shape, seed=1), rand(*shape, seed=2)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    y[1, 0] = np.nan

    def graph(a, b):
        return [lazygrad.maximum(a, b), (a.abs() + 0.5).log() * a.sin(), a.exp2().sqrt(), 1 / (a * a + 1), a < b]

    with np.errstate(invalid="ignore"):
        ref = [
            torch.maximum(torch.tensor(x), torch.tensor(y)).numpy(),
            np.log(np.abs(x) + 0.5) * np.sin(x),
            np.sqrt(np.exp2(x)),
            1 / (x * x + 1),
            x < y,
        ]
    return graph, [x, y], ref, {}


def integer_case(shape):
    a = rand(*shape, dtype=np.int32, low=-50, high=50, seed=3)
    b = rand(*shape, dtype=np.int32, low=1, high=7, seed=4) * np.where(rand(*shape, seed=5) > 0, 1, -1).astype(np.int32)
    shift = rand(*shape, dtype=np.int32, low=0, high=5, seed=6)

    def graph(x, y, s):
        return [x // y, x % y, x.fmod(y), x << s, x >> s, x & y, x | y, x ^ y, lazygrad.maximum(x, y)]

    ta, tb, ts = (torch.tensor(v) for v in (a, b, shift))
    ref = [ta // tb, ta % tb, torch.fmod(ta, tb), ta << ts, ta >> ts, ta & tb, ta | tb, ta ^ tb, torch.maximum(ta, tb)]
    return graph, [a, b, shift], [r.numpy() for r in ref], {}


def half_and_bool_case(shape):
    x, flags = rand(*shape, seed=7), rand(*shape, dtype=np.bool_, seed=8)

    def graph(a, f):
        half = a.half()
        return [half, (half.float() * 3).half(), a > 0, (a > 0).float() + a.int().float(), f < (a > 0), f.any(-1)]

    half = x.astype(np.float16)
    ref = [
        half,
        (half.astype(np.float32) * 3).astype(np.float16),
        x > 0,
        (x > 0).astype(np.float32) + x.astype(np.int32).astype(np.float32),
        flags < (x > 0),
        flags.any(-1),
    ]
    return graph, [x, flags], ref, {}


def reduction_case(shape):
    x = rand(*shape, seed=8)
    ref = [np.float32(x.sum(dtype=np.float64)), x.sum(1), x.max(2), torch.softmax(torch.tensor(x), -1).numpy()]
    return (lambda a: [a.sum(), a.sum(1), a.amax(2), a.softmax(-1)]), [x], ref, dict(rtol=1e-4, atol=1e-5)


def matmul_and_conv_case(n, k, m, image_size):
    m1, m2 = rand(n, k, seed=9), rand(k, m, seed=10)
    image, weight = rand(2, 3, *image_size, seed=11), rand(8, 3, 3, 3, seed=12)

    def graph(a, b, img, w):
        return [a @ b, F.conv2d(img, w, padding=1, stride=2), F.conv2d(img, w, padding=1), F.max_pool2d(img, 3, 2, 1)]

    timage, tweight = torch.tensor(image), torch.tensor(weight)
    ref = [
        m1 @ m2,
        torch.nn.functional.conv2d(timage, tweight, padding=1, stride=2).numpy(),
        torch.nn.functional.conv2d(timage, tweight, padding=1).numpy(),
        torch.nn.functional.max_pool2d(timage, 3, 2, 1).numpy(),
    ]
    return graph, [m1, m2, image, weight], ref, dict(rtol=1e-4, atol=1e-4)


def check_case(case):
    graph, arrays, reference, tolerances = case
    assert_devices_agree(on_each_device(graph, *arrays), reference=reference, **tolerances)


@pytest.mark.parametrize("shape", [(5, 7), (4, 48)], ids=["scalar", "vector"])
def test_elementwise_math_agrees_including_nan_and_inf(shape):
    check_case(elementwise_case(shape))


@pytest.mark.parametrize("shape", [(6, 5), (4, 32)], ids=["scalar", "vector"])
def test_integer_ops_agree_with_c_semantics(shape):
    check_case(integer_case(shape))


@pytest.mark.parametrize("shape", [(4, 9), (4, 32)], ids=["scalar", "vector"])
def test_half_and_bool_storage_agree(shape):
    check_case(half_and_bool_case(shape))


@pytest.mark.parametrize("shape", [(33, 65, 17), (8, 64, 32)], ids=["scalar", "vector"])
def test_reductions_agree_including_a_scalar_output(shape):
    check_case(reduction_case(shape))


@pytest.mark.parametrize("sizes", [(37, 61, 29, (11, 13)), (32, 64, 48, (16, 32))], ids=["scalar", "vector"])
def test_matmul_and_conv2d_agree(sizes):
    check_case(matmul_and_conv_case(*sizes))


def test_scalar_code_as_a_gpu_gets_it_agrees(monkeypatch):
    """GPUs get vector width 1; on PoCL the same kernels are vectorized. Force the GPU's scalar code here (shapes no
    other test uses, so no kernel compiled with vectors is reused)."""
    backend = require("opencl")
    monkeypatch.setattr(backend, "capabilities", dataclasses.replace(backend.capabilities, vector_width=1))
    check_case(elementwise_case((3, 64)))
    check_case(integer_case((3, 16)))
    check_case(half_and_bool_case((3, 16)))
    check_case(reduction_case((4, 48, 16)))
    check_case(matmul_and_conv_case(16, 48, 32, (16, 16)))


def test_backward_pass_agrees():
    image, weight, fc = rand(2, 3, 8, 8, seed=13), rand(4, 3, 3, 3, seed=14), rand(5, 4 * 4 * 4, seed=15)
    labels = np.array([1, 3])

    def graph(img, w, f):
        for t in (img, w, f):
            t.requires_grad_()
        hidden = F.max_pool2d(F.conv2d(img, w, padding=1).relu(), 2)
        logits = F.linear(hidden.reshape(2, -1), f)
        loss = F.cross_entropy(logits, lazygrad.Tensor(labels, device=img.device))
        loss.backward()
        return [loss, img.grad, w.grad, f.grad]

    timg, tw, tf = (torch.tensor(v, requires_grad=True) for v in (image, weight, fc))
    hidden = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(timg, tw, padding=1).relu(), 2)
    loss = torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(hidden.reshape(2, -1), tf), torch.tensor(labels)
    )
    loss.backward()
    ref = [loss.detach().numpy(), timg.grad.numpy(), tw.grad.numpy(), tf.grad.numpy()]
    assert_devices_agree(on_each_device(graph, image, weight, fc), rtol=1e-4, atol=1e-5, reference=ref)


def test_tensors_move_between_backends():
    require("llvm"), require("opencl")
    x = rand(3, 4, seed=16)
    on_llvm = (lazygrad.Tensor(x, device="llvm") * 2).realize()
    on_opencl = on_llvm.to("opencl") + 1
    assert on_opencl.device == "opencl"
    back = (on_opencl * 3).realize().to("llvm")
    assert back.device == "llvm"
    np.testing.assert_allclose(back.numpy(), (x * 2 + 1) * 3, rtol=1e-6)
    np.testing.assert_array_equal(on_llvm.T.to("opencl").numpy(), (x * 2).T)


def test_an_unrealized_tensor_moves_between_backends():
    require("llvm"), require("opencl")
    x = rand(3, 4, seed=17)
    moved = (lazygrad.Tensor(x, device="llvm") * 2).to("opencl")
    np.testing.assert_allclose(moved.numpy(), x * 2, rtol=1e-6)


def test_jit_replays_give_the_same_training_as_llvm():
    from lazygrad import optim

    x, labels = rand(32, 8, seed=18), rand(32, dtype=np.int64, low=0, high=3, seed=19)
    w1, w2 = rand(16, 8, seed=20, low=-0.3, high=0.3), rand(3, 16, seed=21, low=-0.3, high=0.3)

    def train(device: str) -> list:
        weights = [lazygrad.Tensor(w, device=device, requires_grad=True) for w in (w1, w2)]
        opt = optim.SGD(weights, lr=0.1, momentum=0.9)

        @lazygrad.jit
        def step(inputs, targets):
            loss = F.cross_entropy(F.linear(F.linear(inputs, weights[0]).relu(), weights[1]), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        data = [lazygrad.Tensor(v, device=device) for v in (x, labels)]
        losses = [step(*data).item() for _ in range(5)]
        assert step.replays == 3
        return losses

    require("llvm"), require("opencl")
    np.testing.assert_allclose(train("opencl"), train("llvm"), rtol=1e-5)


# ---- compiling ---------------------------------------------------------------------------------------------
def _bitcast_program(name: str, src: dt.DType, dst: dt.DType) -> Program:
    """out[i] = bitcast<dst>(in[i]), written by hand (a mismatched size makes a kernel no compiler accepts)."""
    out = UOp(IrOp.PARAM, dst, (), (0, True), 0)
    inp = UOp(IrOp.PARAM, src, (), (1, False), 1)
    gid = UOp(IrOp.RANGE, dt.int32, (), ("g0", 4, "global"), 2)
    load = UOp(IrOp.LOAD, src, (inp, gid), None, 3)
    cast = UOp(Op.BITCAST, dst, (load,), src, 4)
    store = UOp(IrOp.STORE, None, (out, gid, cast), None, 5)
    end = UOp(IrOp.ENDRANGE, None, (gid,), None, 6)
    return Program(name, [out, inp, gid, load, cast, store, end], (dst, src), (4,))


def test_a_kernel_that_fails_to_compile_is_named_with_its_build_log(monkeypatch):
    backend = require("opencl")
    opencl = sys.modules[type(backend).__module__]
    render = opencl.render_opencl
    # an #error directive: every OpenCL compiler stops there (NVIDIA's accepts a bitcast between types of
    # different sizes, which PoCL refuses, and an undeclared function, with a warning)
    monkeypatch.setattr(opencl, "render_opencl", lambda program: render(program) + "\n#error no_such kernel\n")
    with pytest.raises(RuntimeError) as info:
        backend.compile(_bitcast_program("e_broken_kernel", dt.float32, dt.int32))
    message = str(info.value)
    assert "e_broken_kernel" in message and "error" in message  # the kernel's name and the build log
    saved = message.split("its OpenCL C is in ")[1].split()[0].rstrip(";")
    assert "no_such" in Path(saved).read_text()  # the source, kept for the bug report


def test_a_hand_written_kernel_runs():
    backend = require("opencl")
    kernel = backend.compile(_bitcast_program("e_bitcast_kernel", dt.float32, dt.int32))
    values = np.array([1.0, -2.5, np.inf, 0.1], dtype=np.float32)
    out, inp = backend.allocate(16), backend.allocate(16)
    backend.copy_in(inp, values)
    seconds = kernel([out, inp], wait=True)
    result = np.empty(4, dtype=np.int32)
    backend.copy_out(out, result)
    np.testing.assert_array_equal(result, values.view(np.int32))
    assert seconds is not None and seconds >= 0
    backend.free(out, 16), backend.free(inp, 16)


def test_float64_on_a_device_without_doubles_is_a_clear_error(monkeypatch):
    backend = require("opencl")
    monkeypatch.setattr(backend, "supports_float64", False)
    with pytest.raises(RuntimeError, match="float64"):
        backend.compile(_bitcast_program("e_double_kernel", dt.int64, dt.float64))


def test_built_binaries_are_cached_on_disk(tmp_path):
    require("opencl")
    code = (
        "import lazygrad; from lazygrad import backends\n"
        "a = lazygrad.Tensor([[1.0, 2.0], [3.0, 4.0]], device='opencl')\n"
        "assert ((a @ a).exp().sum(1)).tolist()\n"
        "print('source builds', backends.get('opencl').source_builds)"
    )
    first = run_python(code, LAZYGRAD_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "source builds 0" not in first.stdout and any(tmp_path.iterdir())
    second = run_python(code, LAZYGRAD_CACHE_DIR=str(tmp_path))
    assert second.returncode == 0, second.stderr
    assert "source builds 0" in second.stdout


def test_local_size_rounds_the_launch_up_and_the_guard_covers_the_rest():
    require("opencl")
    n = 1000 + 3  # not a multiple of any work-group size
    x = np.arange(n, dtype=np.float32)
    np.testing.assert_allclose((lazygrad.Tensor(x, device="opencl") * 2).numpy(), x * 2)

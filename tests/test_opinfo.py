"""Conformance with PyTorch's own op database (torch.testing._internal.common_methods_invocations.op_db).

For every OpInfo whose name lazygrad provides (tests/opinfo_harness.py says how a name maps to a lazygrad
callable), its samples run through lazygrad and torch: values, dtypes and shapes compared, and the gradients of
every input when the op supports autograd. Every op_db name lazygrad does not provide is in a table of
tests/opinfo_tables.py with its reason; test_coverage_of_op_db prints the counts and fails when they drift.

Samples per op (why: PoCL compiles each new kernel in about a second, and this file must stay within about a
minute of CI per backend): on LLVM the first three float32 samples with gradients and the first int64 and bool
samples, and the samples EXTRA_SAMPLES names (ones a full run once found wrong, kept fixed); on OpenCL one sample
of the first dtype the op takes, forward only. OpenCL runs less because its kernels are the same lowering as
LLVM's up to the renderer (which test_backends checks op by op), and PoCL's compile time would make the full set
cost minutes of CI. LAZYGRAD_OPINFO_SAMPLES=all runs every sample of every dtype with gradients (by hand).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest
import torch
from opinfo_harness import (
    FUNCTIONAL_NAMES,
    OP_DB,
    OTHER_NAMES,
    TOP_LEVEL_NAMES,
    Unsupported,
    check_sample,
    lazygrad_callable,
    op_id,
    samples,
)
from opinfo_tables import BACKLOG, OUT_OF_SCOPE, TRANSFORMER_WORK

import lazygrad

# the first samples of each dtype, and whether gradients are compared, per backend (see the docstring)
SAMPLES_PER_DTYPE = {"llvm": (3, 1, 1), "opencl": (1, 1, 1), "reference": (1, 1, 1)}  # float32, int64, bool
GRADIENTS = {"llvm": True, "opencl": False, "reference": False}
ONE_DTYPE_ONLY = {"llvm": False, "opencl": True, "reference": True}  # the first dtype the op takes, only
if os.environ.get("LAZYGRAD_OPINFO_SAMPLES") == "all":
    # every sample of every dtype, with gradients, on every backend: the full conformance run (by hand, not in CI:
    # about 6 minutes on LLVM with one worker; PoCL's compile time makes it hours on OpenCL)
    SAMPLES_PER_DTYPE = dict.fromkeys(SAMPLES_PER_DTYPE, (None, None, None))
    GRADIENTS = dict.fromkeys(GRADIENTS, True)
    ONE_DTYPE_ONLY = dict.fromkeys(ONE_DTYPE_ONLY, False)

# ops whose gradients compile into many kernels (prod's multiplication tree): one float32 sample on every backend
ONE_FLOAT32_SAMPLE = {"prod", "cumprod", "scatter_reduce.prod"}
if os.environ.get("LAZYGRAD_OPINFO_SAMPLES") == "all":
    ONE_FLOAT32_SAMPLE = set()

# samples beyond the first few that CI runs too (on LLVM): each once gave a wrong value, dtype or shape, or raised,
# in the full run (LAZYGRAD_OPINFO_SAMPLES=all), so CI keeps its fix.
# {op_id: ((dtype, index of the sample in op_db's order for that dtype), ...)}
EXTRA_SAMPLES: dict[str, tuple[tuple[torch.dtype, int], ...]] = {
    "addmv": ((torch.int64, 1),),  # float alpha and beta truncate to an int64 result's 0
    "addbmm": ((torch.int64, 2),),
    "baddbmm": ((torch.int64, 2),),
    "addr": ((torch.bool, 2),),  # bool: beta * input + alpha * outer is (beta and input) or (alpha and outer)
    "sum_to_size": ((torch.bool, 10),),  # nothing to sum: the bool input itself
    "cummax": ((torch.bool, 2),),  # a 0-d bool input
    "cummin": ((torch.bool, 2),),
    "sort": ((torch.bool, 49),),  # a 0-d bool input
    "rot90": ((torch.bool, 4),),  # k = -4: a bool copy
    "prod": ((torch.bool, 19),),  # dtype=bool
    "nn.functional.pad.constant": ((torch.int64, 1), (torch.bool, 26)),  # the fill takes the input's dtype
    # integer dtypes: torch truncates float bounds (and step) to integers first
    "arange": ((torch.int64, 10), (torch.int64, 14), (torch.int64, 18), (torch.int64, 22)),
    "linspace": ((torch.int64, 32),),
    "linspace.tensor_overload": ((torch.int64, 96),),
    "logspace": ((torch.int64, 50), (torch.int64, 305)),
    "logspace.tensor_overload": ((torch.int64, 150),),
    "pow": ((torch.int64, 2),),  # an int64 exponent tensor: exact (5 ** 9), not through float32
    "scatter_reduce.mean": ((torch.int64, 3),),  # rows the index does not reach keep self's values
    "nn.functional.local_response_norm": ((torch.int64, 10),),  # an empty input comes back itself
    "cumprod": ((torch.float32, 5),),  # an empty dim
    "diff": ((torch.float32, 22), (torch.bool, 30)),  # n=0 with prepend/append: the input itself
    "masked_select": ((torch.float32, 4),),  # 0-d input and mask
    "meshgrid.variadic_tensors": ((torch.float32, 4), (torch.float32, 6)),  # indexing="xy" with a 0-d tensor
    "meshgrid.list_of_tensors": ((torch.float32, 4),),
    "softmax": ((torch.float32, 5),),  # an empty reduced dim
    "softmax.with_dtype": ((torch.int64, 5),),
    "log_softmax": ((torch.float32, 5),),
    "log_softmax.with_dtype": ((torch.float32, 5),),
    "nn.functional.softmin": ((torch.float32, 5),),
    "nn.functional.softmin.with_dtype": ((torch.int64, 5),),
    "nn.functional.normalize": ((torch.float32, 4),),  # p=0
    "nn.functional.cosine_similarity": ((torch.float32, 7),),  # inputs that broadcast along dim
    "nn.functional.group_norm": ((torch.float32, 12),),  # an empty batch
    "topk": ((torch.float32, 7), (torch.int64, 8)),  # 0-d input
    "scatter": ((torch.float32, 7), (torch.float32, 8), (torch.int64, 1), (torch.int64, 15), (torch.bool, 3)),
    "scatter_add": ((torch.float32, 6),),  # 0-d
    "gather": ((torch.float32, 4), (torch.bool, 3)),  # an empty index
    "nn.functional.pdist": ((torch.float32, 4),),  # p=0: the output is in the input's graph
    "repeat_interleave": ((torch.float32, 3), (torch.float32, 4)),  # a tensor of repeats, output_size
    # tensor indices mixed with slices and ...: adjacent (in place) and separated (in front)
    "__getitem__": ((torch.float32, 5), (torch.float32, 11), (torch.float32, 15), (torch.int64, 8)),
}

# whole-op expected failures: what the op does not do yet (strict: the day it passes, this entry must go)
KNOWN_FAILURES = {
    "__rpow__": "the gradient of a negative base's power with respect to the exponent is 0, torch's NaN",
}

# ops whose values are not comparable (random or uninitialized): shape and dtype only, as these reasons say
VALUES_UNCHECKED = {
    "empty": "uninitialized memory in torch (lazygrad gives zeros)",
    "empty_like": "uninitialized memory in torch (lazygrad gives zeros)",
    "new_empty": "uninitialized memory in torch (lazygrad gives zeros)",
    "randn": "random numbers: lazygrad's generator is not torch's",
    "randn_like": "random numbers: lazygrad's generator is not torch's",
    "rand_like": "random numbers: lazygrad's generator is not torch's",
    "randint": "random numbers: lazygrad's generator is not torch's",
    "normal.in_place": "random numbers: lazygrad's generator is not torch's",
    "uniform": "random numbers: lazygrad's generator is not torch's",
    "nn.functional.dropout": "random mask: lazygrad's generator is not torch's",
    "multinomial": "random draws: lazygrad's generator is not torch's",
}

# per-op tolerance where float32 rounding of an ill-conditioned function exceeds the default
TOLERANCE = {
    "tan": (1e-3, "tan near its poles: |tan'| = 1 + tan^2 reaches 4e7 on op_db's samples"),
    "logcumsumexp": (
        1e-2,
        "op_db's sample holds 10000 beside values near 0: torch's own float32 gradient is 1.4e-3 off float64's "
        "(lazygrad's is within 1.2e-7)",
    ),
}


# dropouts whose samples with 0 < p < 1 in training draw a random mask (value: the default of `training`); their
# p = 0, p = 1 and evaluation samples are compared by value, the masks' structure by test_nn.py
RANDOM_MASK_IN_TRAINING = {
    "nn.functional.dropout2d": True,
    "nn.functional.dropout3d": True,
    "nn.functional.alpha_dropout": False,
    "nn.functional.feature_alpha_dropout": False,
}


def sample_skip(info, sample) -> str | None:
    """Why this sample is not run (None: it is run). Each reason names what lazygrad does not take."""
    if info.name in RANDOM_MASK_IN_TRAINING:
        p = sample.kwargs.get("p", sample.args[0] if sample.args else 0.5)
        if sample.kwargs.get("training", RANDOM_MASK_IN_TRAINING[info.name]) and 0 < p < 1:
            return f"a random mask (p = {p}): lazygrad's generator is not torch's"
    for value in (*sample.args, *sample.kwargs.values()):
        if isinstance(value, torch.memory_format):
            return "memory_format: lazygrad has one memory layout"
    if sample.kwargs.get("dropout_p", 0) > 0:
        return "dropout_p > 0: a random mask, lazygrad's generator is not torch's (test_transformer.py checks it)"
    if info.name == "norm" and "nuc" in sample.args:
        return "the nuclear norm is a singular-value decomposition (LAPACK, out of scope as linalg.svd)"
    if info.name == "nn.functional.batch_norm" and sample.input.numel() == 0:
        return "batch_norm of a 0-element input"
    if info.name in ("sort", "argsort", "msort") and not sample.kwargs.get("stable", False):
        values = sample.input.flatten()
        if values.numel() and values.unique().numel() < values.numel():
            # ties in an unstable sort: torch's order among equal elements is its algorithm's (not index order for
            # large inputs); lazygrad's sort is stable, and op_db's stable=True samples compare the order of ties
            return "ties without stable=True: torch leaves the order of equal elements unspecified"
    return None


def provided_infos() -> list:
    return [info for info in OP_DB if lazygrad_callable(info) is not None]


@pytest.mark.parametrize("info", [pytest.param(info, id=op_id(info)) for info in provided_infos()])
def test_opinfo_samples_match_torch(info, backend, request):
    if op_id(info) in KNOWN_FAILURES:
        # strict where the full sample set runs (LLVM): the day the op passes, its entry must go
        strict = not ONE_DTYPE_ONLY[backend]
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILURES[op_id(info)], strict=strict))
    fn = lazygrad_callable(info)
    rtol = TOLERANCE.get(op_id(info), (None,))[0]
    dtypes = [d for d in (torch.float32, torch.int64, torch.bool) if d in info.supported_dtypes("cpu")]
    limits = dict(zip((torch.float32, torch.int64, torch.bool), SAMPLES_PER_DTYPE[backend]))
    ran, skipped = 0, []
    extra = EXTRA_SAMPLES.get(op_id(info), ()) if backend == "llvm" else ()
    run_dtypes = dtypes[:1] if ONE_DTYPE_ONLY[backend] else dtypes
    for dtype in run_dtypes + [d for d, _ in extra if d not in run_dtypes and d in dtypes]:
        limit = 1 if dtype == torch.float32 and info.name in ONE_FLOAT32_SAMPLE else limits[dtype]
        limit = limit if dtype in run_dtypes else 0
        with_grad = dtype == torch.float32 and info.supports_autograd and GRADIENTS[backend]
        wanted = {k for d, k in extra if d == dtype}
        for k, sample in enumerate(samples(info, dtype, limit, with_grad, wanted)):
            if not (limit is None or k < limit or k in wanted):
                continue
            name = f"{op_id(info)} {dtype} sample {k}"
            reason = sample_skip(info, sample)
            assert reason is None or k not in wanted, f"EXTRA_SAMPLES names {name}, which is skipped: {reason}"
            if reason is None:
                try:
                    check_sample(info, fn, sample, with_grad, name, rtol, values=op_id(info) not in VALUES_UNCHECKED)
                    ran += 1
                    continue
                except Unsupported as e:
                    reason = str(e)
            skipped.append(f"{name}: {reason}")
    if skipped:
        print("skipped samples:\n  " + "\n  ".join(skipped))
    if ran == 0:
        why = "; ".join(skipped) or "op_db lists no CPU dtype among float32, int64 and bool for it"
        pytest.skip(f"no sample could run: {why}")


# the counts this file covers; a change to lazygrad's surface changes them, and this must be updated with it
EXPECTED_COUNTS = {
    "op_db entries run": 414,
    "names provided": 371,
    "top-level provided": 290,
    "functional provided": 81,
}


@pytest.mark.backend_independent
def test_coverage_of_op_db():
    provided = {info.name for info in provided_infos()}
    out_of_scope = {name: reason for reason, names in OUT_OF_SCOPE.items() for name in names}
    tables = {"out of scope": set(out_of_scope), "transformer work": set(TRANSFORMER_WORK), "backlog": set(BACKLOG)}
    all_names = set(TOP_LEVEL_NAMES) | set(FUNCTIONAL_NAMES) | set(OTHER_NAMES)
    for table, names in tables.items():
        assert not names & provided, f"lazygrad now provides {sorted(names & provided)}: remove from the {table} table"
        assert names <= all_names, f"not in op_db: {sorted(names - all_names)} ({table} table)"
    listed = [n for names in tables.values() for n in names]
    assert len(listed) == len(set(listed)), "a name is in two tables"
    unaccounted = all_names - provided - set(listed)
    assert not unaccounted, f"op_db names neither provided nor in a table of tests/opinfo_tables.py: {unaccounted}"
    counts = {
        "op_db entries run": len(provided_infos()),
        "names provided": len(provided),
        "top-level provided": len(provided & set(TOP_LEVEL_NAMES)),
        "functional provided": len(provided & set(FUNCTIONAL_NAMES)),
    }
    failing = sorted(KNOWN_FAILURES)
    print(
        f"\nop_db: {len(OP_DB)} entries, {len(all_names)} names ({len(TOP_LEVEL_NAMES)} top-level, "
        f"{len(FUNCTIONAL_NAMES)} nn.functional)\n"
        f"provided: {counts['names provided']} names ({counts['top-level provided']} top-level, "
        f"{counts['functional provided']} nn.functional) in {counts['op_db entries run']} entries, "
        f"{len(failing)} of them expected to fail: {failing}\n"
        + "".join(f"{table}: {len(names)}\n" for table, names in tables.items())
    )
    assert counts == EXPECTED_COUNTS, f"coverage changed: update EXPECTED_COUNTS to {counts}"


@pytest.mark.backend_independent
def test_usage_page_lists_the_differences_in_these_tables():
    script = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "usage_differences.py"
    spec = importlib.util.spec_from_file_location("usage_differences", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.USAGE.read_text()
    assert module.updated_page(page) == page, "docs/usage.md is stale: run scripts/usage_differences.py"


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda m, t: m.addr(t([[1]]), t([1]), t([1]), alpha=0.5), id="addr-int-float-alpha"),
        pytest.param(lambda m, t: m.arange(0, 5, 0.5, dtype=m.int64), id="arange-int-step-truncated-to-0"),
        pytest.param(lambda m, t: t([2, 3]) ** -1, id="int-pow-negative-scalar"),
    ],
)
def test_integer_dtype_errors_match_torch(call):
    """Where torch refuses an integer-dtype call that op_db's samples do not reach, lazygrad refuses it too."""
    with pytest.raises((RuntimeError, ValueError)) as torch_error:  # torch's arange raises ValueError here
        call(torch, torch.tensor)
    with pytest.raises(RuntimeError) as error:
        call(lazygrad, lazygrad.tensor)
    print(f"torch: {torch_error.value}\nlazygrad: {error.value}")

#!/usr/bin/env python
"""Run thousands of random programs on lazygrad and on PyTorch and report every disagreement.

    python scripts/fuzz.py --cases 5000 --backend llvm
    python scripts/fuzz.py --cases 2000 --backend opencl --seed 7 --kinds movement

The programs come from the generator in tests/test_fuzz.py (see its docstring). Each case checks
the result's values and the gradients of its inputs against torch. Every failure is printed with the
program and a standalone script that reproduces it; failures are grouped by their first line so one
bug does not drown the others. Programs that hit an already reported bug (test_fuzz.known_bug) are
counted apart. Before each case the program is written to --current, so a crash that kills the
process (a segfault in a kernel) still leaves the program behind.

Exit status: 0 when no case failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import sys
import tempfile
import time
import traceback
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)

import test_fuzz  # noqa: E402

import lazygrad  # noqa: E402


def signature(error: BaseException) -> str:
    """What groups failures: the exception type and its first line, without the numbers that vary."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = next((line for line in lines if "differs" in line or "shape" in line), lines[0] if lines else "")
    return f"{type(error).__name__}: {first[:120]}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--backend", default=None, help="llvm | opencl (default: lazygrad's default device)")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed so a run can be repeated")
    parser.add_argument("--max-ops", type=int, default=6)
    parser.add_argument("--kinds", default="all", help="all | movement | a comma-separated list of op kinds")
    parser.add_argument("--no-grad", action="store_true", help="check values only")
    parser.add_argument("--show", type=int, default=3, help="programs printed per kind of failure")
    parser.add_argument("--current", default=os.path.join(tempfile.gettempdir(), "lazygrad-fuzz-current.py"))
    args = parser.parse_args(argv)

    if args.backend:
        lazygrad.Device.DEFAULT = args.backend
    backend = lazygrad.Device.DEFAULT
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    kinds = {"all": test_fuzz.ALL_KINDS, "movement": test_fuzz.MOVEMENT_KINDS}.get(args.kinds)
    kinds = kinds or tuple(k.strip() for k in args.kinds.split(","))
    print(
        f"fuzzing {args.cases} programs on {backend} (seed {seed}, kinds {','.join(kinds)}); "
        f"the running program is in {args.current}",
        flush=True,
    )

    rng = random.Random(seed)
    failures: dict = collections.defaultdict(list)
    known: collections.Counter = collections.Counter()
    started = time.perf_counter()
    for case in range(args.cases):
        program = test_fuzz.generate(test_fuzz.Draws.from_random(rng), kinds, args.max_ops)
        grads = not args.no_grad
        reason = test_fuzz.known_bug(program, backend, grads)
        if reason is not None:
            known[reason] += 1
            continue
        with open(args.current, "w") as f:
            f.write(f"# case {case}, seed {seed}, backend {backend}\n{program.script(backend)}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (test_fuzz.check_gradients if grads else test_fuzz.check_forward)(program)
        except Exception as e:  # every failure is a finding: report it and go on
            key = signature(e)
            failures[key].append((case, program, e))
            if len(failures[key]) == 1:
                print(f"case {case}: NEW FAILURE {key}", flush=True)
        if (case + 1) % 500 == 0:
            print(
                f"  {case + 1} cases, {sum(map(len, failures.values()))} failures, "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )

    ran = args.cases - sum(known.values())
    for key, found in failures.items():
        print(f"\n=== {len(found)} x {key}")
        for case, program, error in found[: args.show]:
            print(f"--- case {case}:\n{program.source()}\n{''.join(traceback.format_exception_only(error))[:2000]}")
            print(f"--- reproduce with:\n{program.script(backend)}")
    print(
        f"\n{ran} cases ran on {backend} in {time.perf_counter() - started:.0f} s (seed {seed}): "
        f"{sum(map(len, failures.values()))} failed in {len(failures)} ways"
    )
    for reason, count in known.items():
        print(f"  {count} skipped: known bug: {reason}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

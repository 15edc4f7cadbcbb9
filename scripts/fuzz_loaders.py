#!/usr/bin/env python
"""Fuzz the checkpoint readers with mutated real checkpoints, each loaded under a memory and a time limit.

    python scripts/fuzz_loaders.py --cases 10000                      # both formats, 10,000 cases each
    python scripts/fuzz_loaders.py --cases 50000 --format torch --seed 7 --keep /tmp/findings

The mutations, the worker and what counts as a finding are in tests/loader_fuzzing.py (see its docstring).
Every finding (an unexpected exception, a MemoryError, a peak above twice the file's size plus a constant, a
crash, a hang) is printed with its detail, and the case that caused it is kept in --keep.

Exit status: 0 when no case was a finding, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from loader_fuzzing import fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10000, help="cases per format")
    parser.add_argument("--format", choices=["torch", "safetensors", "both"], default="both")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one case may take")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address space a worker may add to its own")
    parser.add_argument("--keep", default="fuzz-loader-findings", help="where cases that are findings are kept")
    args = parser.parse_args()

    formats = ["torch", "safetensors"] if args.format == "both" else [args.format]
    findings = 0
    for file_format in formats:
        started = time.perf_counter()

        def progress(report, file_format=file_format):
            if report.cases % 1000 == 0:
                print(f"  {file_format}: {report.summary()}", flush=True)

        report = fuzz(
            args.cases,
            file_format,
            seed=args.seed,
            timeout=args.timeout,
            memory_limit=args.memory_mb << 20,
            keep_dir=args.keep,
            progress=progress,
        )
        print(f"{file_format} (seed {args.seed}, {time.perf_counter() - started:.0f} s): {report.summary()}")
        for kind, detail, kept in report.findings:
            print(f"--- {kind} (case kept in {kept})\n{detail}")
        findings += len(report.findings)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

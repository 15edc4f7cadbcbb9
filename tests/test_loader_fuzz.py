"""The checkpoint readers against mutated real checkpoints (tests/loader_fuzzing.py): every case loads or is
refused with ValueError / pickle.UnpicklingError, within a time limit and twice the file's size in memory.

A bounded run is part of the suite; `python scripts/fuzz_loaders.py --cases 10000` runs a long one.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from loader_fuzzing import Worker, fuzz

pytest.importorskip("torch")

CASES = 500  # per format: a few seconds each


@pytest.mark.backend_independent
@pytest.mark.parametrize("file_format", ["torch", "safetensors"])
def test_mutated_checkpoints_load_or_are_refused_within_time_and_memory(file_format, tmp_path):
    report = fuzz(CASES, file_format, seed=14, timeout=20, keep_dir=str(tmp_path))

    assert report.cases == CASES
    assert not report.findings, f"{report.summary()}\n" + "\n".join(map(str, report.findings[:5]))
    assert report.outcomes["refused"] > CASES // 4, report.summary()  # the mutations reach the checks
    assert report.outcomes["loaded"] > 0, report.summary()


@pytest.mark.backend_independent
def test_the_worker_reports_a_load_over_its_memory_limit(tmp_path):
    from lazygrad.serialization import save_arrays

    save_arrays({"big": np.ones((64, 1 << 20), np.uint8)}, tmp_path / "big.pth")  # 64 MiB
    worker = Worker(memory_limit=32 << 20)
    try:
        result = worker.run(str(tmp_path / "big.pth"), timeout=60)
    finally:
        worker.stop()
    assert result["outcome"] == "memory", result


@pytest.mark.backend_independent
def test_the_worker_reports_a_case_that_takes_too_long(tmp_path):
    path = tmp_path / "any.bin"
    path.write_bytes(os.urandom(64))
    worker = Worker(memory_limit=1 << 30)
    try:
        worker.start()
        result = worker.run(str(path), timeout=0)
    finally:
        worker.stop()
    assert result["outcome"] == "hang", result

"""lazygrad.distributed and DistributedDataParallel, on 2 and 3 ranks started by mpiexec from the test.

The ranks run tests/distributed_ranks.py on the test's backend (LAZYGRAD_BACKEND) and share the test run's kernel
cache (LAZYGRAD_CACHE_DIR). Without mpi4py (pip install '.[distributed]') the tests skip, saying so; under CI they
fail instead, as an unavailable backend does (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import in_ci

import lazygrad.distributed as dist

RANKS_SCRIPT = Path(__file__).with_name("distributed_ranks.py")


def launcher() -> str:
    """The mpiexec beside this interpreter (the `mpich` wheel puts it there), else the one on PATH."""
    beside = Path(sys.executable).with_name("mpiexec")
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not dist.is_available() or found is None:
        why = "lazygrad.distributed needs mpi4py and mpiexec: pip install '.[distributed]' (scripts/setup.sh does)"
        if in_ci():
            pytest.fail(f"{why} (CI=true: the distributed tests must run)", pytrace=False)
        pytest.skip(why)
    return found


def run_ranks(n: int, *arguments: str, backend: str | None, timeout: float = 240, **env) -> tuple[int, str, float]:
    """(exit status, stdout + stderr, seconds) of `mpiexec -n N python distributed_ranks.py ARGUMENTS`."""
    environment = {
        **os.environ,
        # Open MPI refuses to start as root without these (MPICH ignores them); CI runs as root
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "LAZYGRAD_THREADS": "1",  # the ranks share the machine's cores
        **env,
    }
    if backend is not None:
        environment["LAZYGRAD_BACKEND"] = backend
    command = [launcher(), "-n", str(n), sys.executable, str(RANKS_SCRIPT), *arguments]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=environment
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        pytest.fail(f"mpiexec -n {n} {' '.join(arguments)} did not finish in {timeout} s; output:\n{out}")
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def test_collectives_on_three_ranks_match_numpy(backend):
    # 3 ranks here (an odd count, where a pairwise algorithm has a rank left over); the other tests run 2
    status, output, _ = run_ranks(3, "collectives", backend=backend)
    assert status == 0, output
    assert all(f"rank {r} ok" in output for r in range(3)), output


@pytest.mark.backend_independent
def test_shape_mismatch_is_an_error_naming_ranks_and_shapes():
    status, output, _ = run_ranks(2, "mismatch", backend="llvm")
    assert status == 0, output
    for rank in (0, 1):
        assert f"rank {rank} caught: all_reduce: the tensors differ between ranks" in output, output
    assert "rank 0: shape (3, 5) float32, rank 1: shape (4, 5) float32" in output, output
    assert (
        "DistributedDataParallel: rank 1 differs from rank 0 at entry 0: "
        "rank 0 has parameter 0.weight: (2, 3) float32, rank 1 has parameter 0.weight: (3, 3) float32"
    ) in output, output


@pytest.mark.backend_independent
def test_a_rank_that_raises_aborts_the_job():
    status, output, seconds = run_ranks(2, "raises", backend="llvm", timeout=60)
    assert status != 0, output
    assert "ValueError: rank 1 fails on purpose" in output, output
    assert "rank 1 raised ValueError: aborting all ranks" in output, output
    assert seconds < 30, f"the job took {seconds:.1f} s to end"


@pytest.mark.backend_independent
def test_a_killed_rank_ends_the_job_with_a_clear_error():
    status, output, seconds = run_ranks(2, "killed", backend="llvm", timeout=60)
    assert status != 0, output
    # the launcher's report names the failed process and its signal (MPICH: "BAD TERMINATION ... Killed (signal 9)")
    assert "signal 9" in output or "SIGKILL" in output or "Killed" in output, output
    assert seconds < 30, f"the job took {seconds:.1f} s to end"


@pytest.mark.backend_independent
def test_a_rank_that_never_joins_times_out_the_others():
    status, output, seconds = run_ranks(2, "hangs", backend="llvm", timeout=60, DISTRIBUTED_TEST_TIMEOUT="2")
    assert status != 0, output
    assert "all_reduce on rank 0 timed out after 2 s waiting for the other ranks" in output, output
    assert seconds < 30, f"the job took {seconds:.1f} s to end"


@pytest.mark.backend_independent
def test_ddp_refuses_unused_parameters_and_jit_captures():
    status, output, _ = run_ranks(1, "misuse", backend="llvm")
    assert status == 0 and "rank 0 ok" in output, output


def torch_convnet() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 3),
    )


def test_ddp_with_sync_batchnorm_on_two_ranks_equals_one_process_on_the_whole_batch(backend, tmp_path):
    """Two ranks with half of each global batch of 8 end every step with the parameters (and BatchNorm running
    statistics) of one process (PyTorch) that trains on the whole batch from rank 0's initial parameters; the model's
    BatchNorm is converted to SyncBatchNorm; step 2 accumulates two micro-batches, the first under no_sync()."""
    sys.path.insert(0, str(RANKS_SCRIPT.parent))
    from distributed_ranks import ddp_batches

    saved_path = tmp_path / "ddp.npz"
    status, output, _ = run_ranks(2, "ddp", str(saved_path), backend=backend)
    assert status == 0, output
    saved = np.load(saved_path)

    model = torch_convnet()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.from_numpy(saved[f"initial_{i}"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    for step, batches in enumerate(ddp_batches(world=2)):
        for x, y in batches:
            loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
        opt.zero_grad()
        for i, p in enumerate(model.parameters()):
            np.testing.assert_allclose(
                saved[f"step{step}_{i}"], p.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=f"step {step}, param {i}"
            )
        for i, b in enumerate((model[1].running_mean, model[1].running_var)):
            np.testing.assert_allclose(
                saved[f"buffers{step}_{i}"], b.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"step {step}"
            )


@pytest.mark.backend_independent
def test_a_resumed_job_continues_the_loss_curve(tmp_path):
    """Rank 0 checkpoints model, optimizer and sampler after epoch 0; a new job resumes from it: its losses and final
    parameters are those of one job that trained both epochs."""
    checkpoint = str(tmp_path / "checkpoint.pth")
    results = {}
    for mode in ("straight", "first", "resume"):
        results[mode] = str(tmp_path / f"{mode}.npz")
        status, output, _ = run_ranks(2, "resume", mode, checkpoint, results[mode], backend="llvm")
        assert status == 0, output
    straight, first, resumed = (np.load(results[mode]) for mode in ("straight", "first", "resume"))
    assert len(first["losses"]) == len(resumed["losses"]) == len(straight["losses"]) // 2
    np.testing.assert_allclose(np.concatenate([first["losses"], resumed["losses"]]), straight["losses"], rtol=1e-6)
    for i in range(4):
        np.testing.assert_allclose(resumed[f"arr_{i}"], straight[f"arr_{i}"], rtol=1e-6, atol=1e-7)


@pytest.mark.backend_independent
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_matches_torch_without_shuffle(drop_last):
    from torch.utils.data.distributed import DistributedSampler as TorchSampler

    for replicas in (2, 3):
        for rank in range(replicas):
            ours = dist.DistributedSampler(10, num_replicas=replicas, rank=rank, shuffle=False, drop_last=drop_last)
            theirs = TorchSampler(range(10), num_replicas=replicas, rank=rank, shuffle=False, drop_last=drop_last)
            assert list(ours) == list(theirs) and len(ours) == len(theirs)


@pytest.mark.backend_independent
def test_distributed_sampler_shuffles_a_partition_per_epoch():
    samplers = [dist.DistributedSampler(12, num_replicas=3, rank=r, shuffle=True, seed=5) for r in range(3)]
    first = [list(s) for s in samplers]
    assert sorted(i for share in first for i in share) == list(range(12))  # the ranks' shares partition the set
    for s in samplers:
        s.set_epoch(1)
    assert [list(s) for s in samplers] != first  # another epoch, another order
    restored = dist.DistributedSampler(12, num_replicas=3, rank=0, shuffle=True, seed=0)
    restored.load_state_dict(samplers[0].state_dict())
    assert list(restored) == list(samplers[0])


@pytest.mark.backend_independent
def test_collectives_before_init_process_group_say_so():
    if dist.is_initialized():
        pytest.skip("this process joined a process group")
    with pytest.raises(RuntimeError, match="Default process group has not been initialized"):
        dist.get_rank()

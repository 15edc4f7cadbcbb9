#!/usr/bin/env bash
# Set up (see scripts/setup.sh), then lint and run the whole test suite on every backend.
# This is exactly what CI runs (.ci/run). Arguments go to pytest, e.g. `bash scripts/test.sh -k conv`;
# `--backend llvm` or LAZYGRAD_TEST_BACKENDS=llvm restricts the backends (tests/conftest.py).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO"

# A fresh kernel cache per run: every run compiles from cold, and no stale kernel from an older
# compiler can hide (or cause) a failure.
LAZYGRAD_CACHE_DIR="$(mktemp -d -t lazygrad-cache.XXXXXX)"
export LAZYGRAD_CACHE_DIR
trap 'rm -rf "$LAZYGRAD_CACHE_DIR"' EXIT

# Every step runs even when an earlier one fails, so one run shows everything that is wrong.
failed=()

echo "== ruff check"
"$VENV/bin/ruff" check --output-format=concise . || failed+=("ruff check")

echo "== ruff format --check"
"$VENV/bin/ruff" format --check --output-format=concise . || failed+=("ruff format")

echo "== pytest"
status=0
"$PYTHON" -m pytest -n auto "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here"
fi
[ "$status" -eq 0 ] || failed+=("pytest (exit $status)")

# The kernels a GPU gets (scalar code, work-group reductions, local-memory tiles), run on PoCL: the op, autograd and
# ResNet suites once more with LAZYGRAD_OPENCL_PROFILE=gpu. Only in a whole run (no pytest arguments) that
# includes opencl.
if [ $# -eq 0 ] && [[ -z "${LAZYGRAD_TEST_BACKENDS:-}" || "${LAZYGRAD_TEST_BACKENDS}" == *opencl* ]]; then
    echo "== pytest: the op, autograd and ResNet suites under a GPU profile (opencl)"
    status=0
    LAZYGRAD_OPENCL_PROFILE=gpu "$PYTHON" -m pytest -n auto -q --backend opencl \
        tests/test_ops.py tests/test_autograd.py tests/test_resnet.py || status=$?
    [ "$status" -eq 0 ] || failed+=("pytest under a GPU profile (exit $status)")
fi

if [ ${#failed[@]} -gt 0 ]; then
    printf -v summary '%s, ' "${failed[@]}"
    echo "FAILED: ${summary%, }"
    exit 1
fi
echo "all checks passed"

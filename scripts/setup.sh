# Sourced by scripts/example.sh and scripts/test.sh: everything a fresh Debian/Ubuntu machine needs.
#
#   1. system packages: PoCL, an OpenCL driver for the CPU, so the opencl backend runs without a GPU;
#      Graphviz (`dot`), which lays out lazygrad.viz's graphs, and Chromium, in which tests/test_viz.py opens them
#   2. a virtual environment in .venv (inside the repo, ignored by git)
#   3. torch==2.13.0 first, then lazygrad itself with its test and distributed extras, editable (distributed: mpi4py
#      and MPICH from PyPI, whose mpiexec lands in .venv/bin; MPICH, unlike Open MPI, needs no flag to run as root)
#
# Idempotent: a second run only checks, so it takes a second or two. Delete .venv to start over.
# Afterwards $REPO is the repository root and $PYTHON the virtual environment's interpreter.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON="$VENV/bin/python"

say() { echo "[setup] $*"; }

# ---- 1. system packages ----
system_packages=()
dpkg -s pocl-opencl-icd >/dev/null 2>&1 || system_packages+=(pocl-opencl-icd)
command -v dot >/dev/null 2>&1 || system_packages+=(graphviz)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || system_packages+=(chromium)
# Debian's own python3 ships without ensurepip; `python3 -m venv` needs python3-venv there.
if [ ! -x "$PYTHON" ] && ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    system_packages+=(python3-venv)
fi
if [ ${#system_packages[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        say "no apt-get here: skipping ${system_packages[*]}; the opencl backend needs an OpenCL driver (ICD)"
    else
        sudo=()
        if [ "$(id -u)" -ne 0 ]; then
            if command -v sudo >/dev/null 2>&1; then
                sudo=(sudo)
            else
                say "not root and no sudo: skipping apt-get install ${system_packages[*]}"
            fi
        fi
        if [ "$(id -u)" -eq 0 ] || [ ${#sudo[@]} -gt 0 ]; then
            say "apt-get install ${system_packages[*]}"
            # A failed install (no network, locked dpkg) is reported but not fatal: llvm still works,
            # and the test suite then says exactly which backend is missing and why.
            # (env, not a prefix assignment: sudo would drop DEBIAN_FRONTEND from the environment)
            { "${sudo[@]}" apt-get update -qq &&
                "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${system_packages[@]}"; } ||
                say "apt-get install ${system_packages[*]} failed; continuing without it"
        fi
    fi
fi

command -v dot >/dev/null 2>&1 ||
    say "no Graphviz (dot): lazygrad.viz pages list the kernels without graphs; install the package graphviz"
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ||
    say "no Chromium: tests/test_viz.py cannot open the viz page (skipped; failed under CI); install chromium"

# ---- 2. virtual environment ----
if [ ! -x "$PYTHON" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi

# ---- 3. Python packages ----
# The stamp records what was installed from; when pyproject.toml or this script change, install again.
stamp="$VENV/.lazygrad-setup"
wanted="$(cat "$REPO/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    # torch first and pinned: a bare `torch` (or the test extra's range, with no torch yet) makes pip
    # download a multi-GB CUDA build. With 2.13.0 in place, the extra's range is already satisfied.
    say "pip install torch==2.13.0"
    "$PYTHON" -m pip install --disable-pip-version-check -q torch==2.13.0
    say "pip install -e .[test,distributed]"
    "$PYTHON" -m pip install --disable-pip-version-check -q -e "$REPO[test,distributed]"
    echo "$wanted" >"$stamp"
fi
say "ready: $("$PYTHON" --version) in $VENV"

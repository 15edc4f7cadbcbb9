"""The wheel installs `backends/` as `lazygrad.backends` and carries every module of the source tree."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent

REPO = Path(__file__).resolve().parents[1]
# What a build must not see: a stale build/ or egg-info would leak old files into the wheel.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def source_modules() -> set[str]:
    """Every .py file of the package, as its path inside the wheel (backends/x.py -> lazygrad/backends/x.py)."""
    paths = {str(p.relative_to(REPO)) for p in (REPO / "lazygrad").rglob("*.py")}
    paths |= {"lazygrad/" + str(p.relative_to(REPO)) for p in (REPO / "backends").rglob("*.py")}
    return {p for p in paths if "__pycache__" not in p}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy so the build writes nothing into the checkout (build/, *.egg-info).
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(source)]
    subprocess.run(cmd, check=True, cwd=tmp)
    (built,) = tmp.glob("lazygrad-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_files(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_backends_install_as_a_subpackage(wheel_files):
    assert "lazygrad/backends/__init__.py" in wheel_files
    assert "lazygrad/backends/llvm.py" in wheel_files


def test_no_top_level_backends_package(wheel_files):
    top_level = {name.split("/")[0] for name in wheel_files}
    assert "backends" not in top_level
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"lazygrad"}


def test_codegen_is_packaged(wheel_files):
    assert "lazygrad/codegen/__init__.py" in wheel_files


def test_every_source_module_is_in_the_wheel(wheel_files):
    # A new subpackage must also be listed in pyproject.toml's `packages`, or installs silently lack it.
    missing = source_modules() - wheel_files
    assert not missing, f"modules missing from the wheel (add their package to pyproject.toml): {sorted(missing)}"


def test_installed_wheel_imports_its_backends(wheel, tmp_path):
    # Installed on its own (not the editable checkout), `lazygrad.backends` must come from inside the wheel.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import lazygrad.backends.llvm as m; "
        "assert m.__file__.startswith(sys.argv[1]), m.__file__; print(m.__file__)"
    )
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, cwd=tmp_path)

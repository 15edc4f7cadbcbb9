"""Every test runs once per backend, with that backend as `lazygrad.Device.DEFAULT`.

- Test ids name the backend: `test_relu[llvm]`, `test_relu[opencl]`.
- Restrict with `pytest --backend llvm` or `LAZYGRAD_TEST_BACKENDS=llvm,opencl` (the option wins).
- A test that does not depend on the backend opts out with `@pytest.mark.backend_independent` and runs once.
- An unavailable backend skips its tests with the reason; under CI (CI=true) it fails them instead, so CI
  can never go green while silently testing one backend.
- A test that wants to know its backend asks for the `backend` fixture.

The default device is set in a setup hook rather than in the fixture, because fixtures of wider scope
(module, class, session) are built before any function-scoped fixture: setting it first means they too
build their tensors on the test's backend. For the same reason, when a process moves on to another
backend, every wider-scoped fixture is torn down and built again on the new one.
"""

from __future__ import annotations

import os

import pytest

import lazygrad
from lazygrad import backends

# the backends every test runs on unless told otherwise; "reference" (a numpy interpreter of the IR, too slow for
# the whole suite) runs where it is asked for (--backend reference), and by default on the files below: the op table,
# op, autograd and fusion tests (about a minute on one core), so that CI checks the executable specification too
DEFAULT_BACKENDS = [name for name in backends.REGISTRY if name != "reference"]
ALSO_ON_REFERENCE = {"test_op_table.py", "test_ops.py", "test_autograd.py", "test_fusion.py"}

BACKEND_KEY = pytest.StashKey[str]()
PREVIOUS_DEFAULT_KEY = pytest.StashKey[str | None]()


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        default=None,
        help="comma-separated backends to run the tests on (default: $LAZYGRAD_TEST_BACKENDS, else "
        f"{', '.join(DEFAULT_BACKENDS)}; also: {', '.join(sorted(set(backends.REGISTRY) - set(DEFAULT_BACKENDS)))})",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "backend_independent: run once, not once per backend")
    config.lazygrad_backends = selected_backends(config)
    config.lazygrad_chosen = bool(config.getoption("--backend") or os.environ.get("LAZYGRAD_TEST_BACKENDS", ""))


def selected_backends(config) -> list[str]:
    raw = config.getoption("--backend") or os.environ.get("LAZYGRAD_TEST_BACKENDS", "")
    names = [name.strip().lower() for name in raw.split(",") if name.strip()] or DEFAULT_BACKENDS
    unknown = [name for name in names if name not in backends.REGISTRY]
    if unknown:
        raise pytest.UsageError(f"unknown backend(s) {', '.join(unknown)}; lazygrad has {', '.join(backends.REGISTRY)}")
    return names


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def availability(name: str) -> tuple[bool, str]:
    """(True, the device's name) or (False, why the backend cannot start here)."""
    try:
        return True, backends.get(name).device_name
    except backends.BackendUnavailable as e:
        return False, str(e).splitlines()[0]


def pytest_report_header(config):
    lines = []
    for name in config.lazygrad_backends:
        ok, detail = availability(name)
        lines.append(f"  {name}: {detail}" if ok else f"  {name}: UNAVAILABLE ({detail})")
    return ["lazygrad backends under test:", *lines]


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames and not metafunc.definition.get_closest_marker("backend_independent"):
        names = metafunc.config.lazygrad_backends
        if not metafunc.config.lazygrad_chosen and metafunc.definition.path.name in ALSO_ON_REFERENCE:
            names = [*names, "reference"]
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def llvm():
    """The LLVM backend object, for tests of its threads and compile workers: it must run everywhere."""
    try:
        return backends.get("llvm")
    except backends.BackendUnavailable as e:
        pytest.fail(f"the LLVM backend must run everywhere: {e}")


@pytest.fixture(autouse=True)
def backend(request) -> str | None:
    """The backend this test runs on (None for backend-independent tests); it is Device.DEFAULT meanwhile."""
    return getattr(request, "param", None)


def pytest_collection_modifyitems(config, items):
    # Group the tests by backend (backend-independent ones first; stable, so file order is kept within a
    # group): each process then switches backend, and rebuilds wide-scoped fixtures, at most once or twice.
    order = {name: i for i, name in enumerate([*config.lazygrad_backends, "reference"])}
    items.sort(key=lambda item: order.get(backend_of(item), -1))


def backend_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("backend") if callspec else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    name = backend_of(item)
    if name is None:
        return
    previous = item.session.stash.get(BACKEND_KEY, None)
    if previous is not None and previous != name:
        # Fixtures of module/class/session scope hold tensors on the previous backend: tear them all down
        # (pytest's own SetupState, as after the last test) so this item's setup rebuilds them here.
        item.session._setupstate.teardown_exact(None)
    item.session.stash[BACKEND_KEY] = name

    ok, detail = availability(name)
    if not ok:
        if in_ci():
            pytest.fail(f"{detail} (CI=true: every backend must run)", pytrace=False)
        pytest.skip(detail)
    try:
        item.stash[PREVIOUS_DEFAULT_KEY] = lazygrad.Device.DEFAULT
    except backends.BackendUnavailable:  # LAZYGRAD_BACKEND names a backend that cannot start here
        item.stash[PREVIOUS_DEFAULT_KEY] = None
    lazygrad.Device.DEFAULT = name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    previous = item.stash.get(PREVIOUS_DEFAULT_KEY, None)
    if previous is not None:
        lazygrad.Device.DEFAULT = previous

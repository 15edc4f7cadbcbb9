"""lazygrad.viz and profile().export_chrome_trace: the page a real browser shows, and the trace, against the
profile and the scheduler.

The page is opened in headless Chromium (Debian's `chromium`): the test reads back the DOM the page's script built
(`--dump-dom`) and the data the page embeds, and fails on any console message (Chromium logs each one, and every
uncaught error, as a CONSOLE line with --enable-logging=stderr; the page itself logs nothing). The counts and
reasons are checked against a `lazygrad.profile()` opened by the test and against the schedule items the runtime
ran, recorded by the test itself.

The page tests are backend independent (they run on the default device): the page is built by the same code from
the schedule and the profile on every backend, and a second ResNet-18 step on PoCL would add minutes of compilation
and check nothing new. The trace test runs on every backend: kernel durations come from each backend's own clock.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import lazygrad
import lazygrad.viz
from lazygrad import nn, runtime
from lazygrad.viz import graphs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def require(tool: str | None, name: str, package: str):
    """Skip (fail under CI) when a system tool is missing, saying which package provides it."""
    if tool is None:
        message = f"{name} not found: install the Debian package {package} (scripts/setup.sh does)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message} (CI=true)", pytrace=False)
        pytest.skip(message)


def open_in_browser(page, tmp_path, screenshot=None, fragment="") -> tuple[str, list]:
    """(the DOM after the page's script ran, the console messages) of a page opened in headless Chromium; a
    fragment such as "#k3" opens that item's section, as a click on it does."""
    require(CHROMIUM, "chromium", "chromium")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}"]
    result = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri() + fragment],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    if screenshot is not None:
        shot = [*flags, "--hide-scrollbars", "--window-size=1280,900", f"--screenshot={screenshot}", page.as_uri()]
        subprocess.run(shot, capture_output=True, timeout=180, check=True)
    return result.stdout, console


def embedded_data(dom: str) -> dict:
    match = re.search(r'<script type="application/json" id="lazygrad-data">(.*?)</script>', dom, re.S)
    assert match, "the page embeds no data"
    return json.loads(html.unescape(match.group(1)) if "&quot;" in match.group(1) else match.group(1))


class ScheduleRecorder:
    """The schedule items the runtime runs, recorded independently of lazygrad.viz."""

    def __init__(self, monkeypatch):
        self.items = []
        original = runtime.run_plan

        def run_plan(steps, nodes, externals, items=None):
            # under a capture every graph is scheduled anew (no reused plan), so its items come along
            assert items is not None, "a schedule ran without its items while a viz capture was open"
            self.items += [
                (item.kind.value, item.reason, list(item.output_reasons), item.output.size) for item in items
            ]
            return original(steps, nodes, externals, items)

        monkeypatch.setattr(runtime, "run_plan", run_plan)


def convnet_step():
    lazygrad.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10)
    )
    optimizer = lazygrad.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = lazygrad.randn(2, 3, 8, 8), lazygrad.tensor([1, 3])
    lazygrad.realize(*model.parameters(), x, y)

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def resnet18_step():
    from lazygrad.models import resnet18

    lazygrad.manual_seed(0)
    model = resnet18(weights=None)
    optimizer = lazygrad.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    data, labels = lazygrad.rand(1, 3, 64, 64), lazygrad.rand(1, 1000)
    lazygrad.realize(*model.parameters(), *model.buffers(), data, labels)

    def step():
        loss = (model(data) - labels).sum()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def captured(step, monkeypatch, page):
    """Run a step under a viz capture, inside a profile of the test's own, recording the schedules."""
    recorder = ScheduleRecorder(monkeypatch)
    with lazygrad.profile() as profile:
        with lazygrad.viz.capture(page) as capture:
            step()
    return capture, profile, recorder


def check_page_against_profile_and_scheduler(page, tmp_path, profile, recorder, screenshot=None, fragment=""):
    dom, console = open_in_browser(page, tmp_path, screenshot, fragment)
    assert console == [], "the page wrote to the console:\n" + "\n".join(console)
    assert 'data-rendered="yes"' in dom, "the page's script did not run to its end"
    data = embedded_data(dom)
    # kernel counts: what the script rendered, what the page embeds, what the profile counted
    shown = re.search(r'id="summary" data-kernels="(\d+)" data-copies="(\d+)" data-compiled="(\d+)"', dom)
    assert shown, "the summary was not rendered"
    assert [int(n) for n in shown.groups()] == [profile.kernels, profile.copies, profile.compiled]
    kernels_in_schedules = sum(1 for kind, _, _, size in recorder.items if kind == "kernel" and size > 0)
    assert profile.kernels == kernels_in_schedules == data["summary"]["scheduled_kernels"]
    assert len(re.findall(r'<details id="k\d+" class="item kernel"', dom)) == sum(
        1 for kind, *_ in recorder.items if kind == "kernel"
    )
    # every item's reasons are the scheduler's, in the order it ran them
    page_items = [(r["kind"], r["reason"], [o["reason"] for o in r["outputs"]]) for r in data["items"]]
    scheduler = [
        (kind if kind != "host" else "upload", reason, reasons or [reason])
        for kind, reason, reasons, _ in recorder.items
    ]
    assert page_items == scheduler
    # each cut between kernels carries the reason its producer's output was given
    for record in data["items"]:
        for source in record["inputs"]:
            if source["producer"] is not None:
                producer = data["items"][source["producer"]]
                assert source["reason"] == producer["outputs"][source["output"]]["reason"]
    launched = sorted((r["name"], r["seconds"]) for r in data["items"] if r["launched"])
    assert launched == sorted((k.name, k.seconds) for k in profile.launches)
    if shutil.which("dot"):
        assert data["graphs"]["available"], data["graphs"]["message"]
        assert dom.count('class="node"') >= len(data["items"])  # the overview's nodes are in the page
    return dom, data


@pytest.mark.backend_independent
def test_a_convnet_steps_page_renders_in_a_browser_and_agrees_with_the_profile_and_scheduler(tmp_path, monkeypatch):
    step = convnet_step()
    step()  # compile once: the captured step then shows launches, and compilations count 0
    page = tmp_path / "convnet.html"
    capture, profile, recorder = captured(step, monkeypatch, page)
    merged = next(
        i for i, r in enumerate(capture.items) if len(r["outputs"]) > 1
    )  # the optimizer's kernels have several
    dom, data = check_page_against_profile_and_scheduler(page, tmp_path, profile, recorder, fragment=f"#k{merged}")
    # the section the fragment opened was filled in by the script: outputs with reasons, options, its graph
    section = dom.split(f'<details id="k{merged}"', 1)[1].split("</details>", 1)[0]
    assert section.startswith(" open") or ' open=""' in section.split(">", 1)[0]
    for reason in (o["reason"] for o in data["items"][merged]["outputs"]):
        assert html.escape(reason, quote=False) in section
    assert "options (the code generator" in section and "show generated source" in section
    if shutil.which("dot"):
        assert "<svg" in section
    kernels = [r for r in data["items"] if r["kind"] == "kernel"]
    assert {"output", "shared"} <= {r["reason"] for r in kernels}
    for record in kernels:
        assert data["sources"][record["name"]], "each kernel's source is in the page"
        assert "\n" in data["options"][record["name"]] or data["options"][record["name"]]


@pytest.mark.backend_independent
def test_the_resnet18_steps_page_renders_in_a_browser_and_agrees_with_the_profile_and_scheduler(tmp_path, monkeypatch):
    require(shutil.which("dot"), "dot", "graphviz")
    step = resnet18_step()
    page = tmp_path / "resnet18.html"
    screenshot = os.environ.get("LAZYGRAD_VIZ_SCREENSHOT")  # docs/viz.png is made this way (see docs/viz.md)
    capture, profile, recorder = captured(step, monkeypatch, page)
    _, data = check_page_against_profile_and_scheduler(page, tmp_path, profile, recorder, screenshot)
    assert profile.kernels > 150
    assert data["graphs"]["available"]


def test_the_exported_trace_matches_the_profile(tmp_path):
    # on every backend: kernel durations come from OpenCL's event profiling there, from the host's clock on LLVM
    lazygrad.manual_seed(1)
    x, w = lazygrad.randn(16, 8), lazygrad.randn(8, 4)
    lazygrad.realize(x, w)
    # the compiled-kernel cache set aside (and restored after): the kernels are compiled inside the profile, so
    # that the trace holds compilations too
    with runtime.forced_options(lambda name, nest: None), lazygrad.profile() as profile:
        hidden = (x @ w).relu().realize()
        (hidden * 2).sum().item()
    path = tmp_path / "step.json"
    profile.export_chrome_trace(path)
    with open(path) as f:
        trace = json.load(f)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    by_kind = {kind: [e for e in spans if e["cat"] == kind] for kind in ("kernel", "copy", "compile", "schedule")}
    assert len(spans) == sum(len(v) for v in by_kind.values())
    assert len(by_kind["kernel"]) == profile.kernels
    assert len(by_kind["copy"]) == profile.copies
    assert len(by_kind["compile"]) == profile.compiled > 0
    assert [e["name"] for e in sorted(by_kind["kernel"], key=lambda e: e["ts"])] == [k.name for k in profile.launches]
    for event, launch in zip(sorted(by_kind["kernel"], key=lambda e: e["ts"]), profile.launches):
        assert event["args"]["flops"] == launch.flops and event["args"]["bytes"] == launch.bytes
        assert event["dur"] == pytest.approx(launch.seconds * 1e6)
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {e["tid"] for e in spans} <= set(names), "every track is named"
    assert {names[e["tid"]] for e in by_kind["compile"] + by_kind["schedule"]} == {"host"}
    # nesting: every compilation inside the schedule that caused it, every kernel inside a schedule's span, and
    # the spans of one track never overlap partially
    schedules = by_kind["schedule"]

    def inside(event, outer):
        return outer["ts"] <= event["ts"] and event["ts"] + event["dur"] <= outer["ts"] + outer["dur"] + 1e-3

    for event in by_kind["compile"] + by_kind["kernel"]:
        assert sum(inside(event, s) for s in schedules) == 1, event
    for tid in names:
        track = sorted((e for e in spans if e["tid"] == tid), key=lambda e: (e["ts"], -e["dur"]))
        open_spans: list = []
        for event in track:
            while open_spans and open_spans[-1]["ts"] + open_spans[-1]["dur"] <= event["ts"] + 1e-3:
                open_spans.pop()
            assert not open_spans or inside(event, open_spans[-1]), (event, open_spans[-1])
            open_spans.append(event)


@pytest.mark.backend_independent
def test_an_untimed_profile_refuses_to_export_a_trace(tmp_path):
    with lazygrad.profile(timed=False) as profile:
        (lazygrad.ones(3) + 1).realize()
    with pytest.raises(ValueError, match="timed=False"):
        profile.export_chrome_trace(tmp_path / "trace.json")


@pytest.mark.backend_independent
def test_without_graphviz_the_page_is_a_list_and_says_what_is_missing(tmp_path, monkeypatch):
    step = convnet_step()
    with lazygrad.viz.capture() as capture:
        step()
    monkeypatch.setattr(graphs.shutil, "which", lambda name: None)
    page = tmp_path / "no-graphviz.html"
    capture.write(page)
    dom, console = open_in_browser(page, tmp_path)
    assert console == []
    assert "Graphviz is not installed" in dom and "apt-get install graphviz" in dom
    assert 'id="overview"' not in dom
    assert len(re.findall(r'<details id="k\d+" class="item', dom)) == len(capture.items)


@pytest.mark.backend_independent
def test_the_browser_check_sees_a_page_that_fails(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = open_in_browser(page, tmp_path)
    assert any("undefinedFunction is not defined" in line for line in console)


@pytest.mark.backend_independent
def test_lazygrad_viz_writes_the_page_of_a_whole_program_when_it_exits(tmp_path):
    page = tmp_path / "program.html"
    program = "import lazygrad; print((lazygrad.ones(4) * 3).sum().item())"
    env = {**os.environ, "LAZYGRAD_VIZ": str(page), "LAZYGRAD_BACKEND": lazygrad.Device.DEFAULT.split(":")[0].lower()}
    result = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "12.0" in result.stdout
    data = embedded_data(page.read_text())
    assert data["summary"]["kernels"] == 1
    assert [r["kind"] for r in data["items"]] == ["kernel"] and data["items"][0]["reason"] == "output"

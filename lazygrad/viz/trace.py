"""A profile's timeline as a Chrome trace: the Trace Event Format's JSON, which Perfetto and chrome://tracing open.

Every span is a complete event (`"ph": "X"`, times in microseconds from the profile's start). Tracks are threads
of one process: "host" (schedules being run, with the compilations they caused inside them), one per device queue
(its kernels) and one per device's copies; metadata events name them.
"""

from __future__ import annotations

import json

PROCESS_ID = 1


def chrome_trace(profile) -> dict:
    """The trace of a `lazygrad.profile()` as a dict, ready for json.dump."""
    tracks: dict = {"host": 1}  # the host first: its track is the outermost in the viewers
    spans = []
    for event in sorted(profile.events, key=lambda e: (e.start, -e.seconds)):
        thread = tracks.setdefault(event.track, len(tracks) + 1)
        spans.append(
            {
                "name": event.name,
                "cat": event.kind,
                "ph": "X",
                "ts": (event.start - profile.started) * 1e6,
                "dur": event.seconds * 1e6,
                "pid": PROCESS_ID,
                "tid": thread,
                "args": event.args,
            }
        )
    names = [{"name": "process_name", "ph": "M", "pid": PROCESS_ID, "tid": 0, "args": {"name": "lazygrad"}}]
    for track, thread in tracks.items():
        names.append({"name": "thread_name", "ph": "M", "pid": PROCESS_ID, "tid": thread, "args": {"name": track}})
        names.append(
            {"name": "thread_sort_index", "ph": "M", "pid": PROCESS_ID, "tid": thread, "args": {"sort_index": thread}}
        )
    return {"traceEvents": names + spans, "displayTimeUnit": "ms"}


def write_chrome_trace(profile, path) -> None:
    with open(path, "w") as f:
        json.dump(chrome_trace(profile), f)

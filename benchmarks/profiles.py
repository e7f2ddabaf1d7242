"""Where the client's time goes: pyinstrument samples the client process's main thread (the
event loop) during a closed-loop throughput run, for rtguard with spans + metrics on and for
the SDK. Reported: the functions with the most time (including callees, counted once per
stack), as a share of the loop's busy time (time outside the selector's wait)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyinstrument import Profiler

from . import throughput
from .simserver import SimulatorProcess
from .workers import Workers

__all__ = ["ProfileResult", "ProfiledRun", "run"]

FULL_CALLS, QUICK_CALLS = 4_000, 1_000
TOP = 14
IDLE_FUNCTIONS = {"select", "poll", "epoll.poll"}


@dataclass(frozen=True)
class Entry:
    function: str  # Class.method (file[:line])
    self_share: float  # share of busy time spent in the function's own code, 0..1
    inclusive: float  # share of busy time with its callees


@dataclass
class ProfiledRun:
    client: str
    calls: int
    calls_per_second: float
    busy_seconds: float
    entries: list[Entry] = field(default_factory=list)  # top by own time
    groups: dict[str, float] = field(default_factory=dict)  # share of busy time, callees in


@dataclass
class ProfileResult:
    runs: list[ProfiledRun] = field(default_factory=list)


def _label(frame: Any) -> str:
    name = frame.function
    if frame.class_name:
        name = f"{frame.class_name}.{name}"
    path = (frame.file_path_short or "").split("site-packages/")[-1]
    if name.startswith("<") and frame.line_no:  # a generator expression or lambda: which one
        path = f"{path}:{frame.line_no}"
    return f"{name} ({path})" if path else name


@dataclass
class _Totals:
    inclusive: dict[str, float] = field(default_factory=dict)
    own: dict[str, float] = field(default_factory=dict)
    groups: dict[str, float] = field(default_factory=dict)


def _walk(
    frame: Any,
    parent: str,
    ancestors: frozenset[str],
    in_groups: frozenset[str],
    groups: dict[str, tuple[str, ...]],
    totals: _Totals,
) -> None:
    if frame.is_synthetic:  # pyinstrument's [self]/[await] frames: their parent's own time
        return
    label = _label(frame)
    if label not in ancestors:
        totals.inclusive[label] = totals.inclusive.get(label, 0.0) + frame.time
    totals.own[label] = totals.own.get(label, 0.0) + frame.total_self_time
    entered = set()
    path = f"{parent} > {label}"
    for group, needles in groups.items():
        if group not in in_groups and any(n in path for n in needles):
            totals.groups[group] = totals.groups.get(group, 0.0) + frame.time
            entered.add(group)
    for child in frame.children:
        _walk(child, label, ancestors | {label}, in_groups | entered, groups, totals)


def _idle(frame: Any) -> float:
    if frame.function in IDLE_FUNCTIONS:
        return float(frame.time)
    return sum(_idle(child) for child in frame.children)


def analyse(profiler: Profiler, groups: dict[str, tuple[str, ...]]) -> ProfiledRun:
    session = profiler.last_session
    root = session.root_frame() if session is not None else None
    run = ProfiledRun("", 0, 0.0, 0.0)
    if root is None:
        return run
    busy = root.time - _idle(root)
    totals = _Totals()
    _walk(root, "", frozenset(), frozenset(), groups, totals)
    ranked = sorted(totals.own, key=lambda k: totals.own[k], reverse=True)
    ranked = [
        k for k in ranked if k.split(" ")[0] not in IDLE_FUNCTIONS and "(benchmarks/" not in k
    ][:TOP]
    run.busy_seconds = busy
    run.entries = [Entry(k, totals.own[k] / busy, totals.inclusive[k] / busy) for k in ranked]
    run.groups = {g: totals.groups.get(g, 0.0) / busy for g in groups}
    return run


async def profile(
    sim: SimulatorProcess,
    workers: Workers,
    kind: str,
    calls: int,
    groups: dict[str, tuple[str, ...]],
) -> ProfiledRun:
    """A closed-loop run with pyinstrument sampling the client worker's event loop."""
    await throughput.measure(sim, workers, kind, 100)  # warm
    m = await throughput.measure(sim, workers, kind, calls, groups=groups)
    run: ProfiledRun = m.profile
    run.client = throughput.CLIENT_LABELS[kind]
    run.calls = calls
    run.calls_per_second = m.calls_per_second
    return run


RTGUARD_GROUPS = {
    "rtguard telemetry (SessionTelemetry, observing events), all": ("SessionTelemetry.",),
    "- a call received: starts the execute_tool span": ("SessionTelemetry._call_received",),
    "- a send attempt: an rtguard.send_output span per attempt": (
        "SessionTelemetry._output_sent",
        "SessionTelemetry._output_send_failed",
    ),
    "- a response created / done: a realtime_inference span per response": (
        "SessionTelemetry._response_created",
        "SessionTelemetry._response_done",
    ),
    "- a call settled: span attributes, end, two histograms with exemplars": (
        "SessionTelemetry._settled",
    ),
    "- outcomes, handoffs, other events": (
        "SessionTelemetry._tool_",
        "SessionTelemetry._handoff",
        "SessionTelemetry.observe",
    ),
    "OpenTelemetry SDK (spans)": ("(opentelemetry/",),
    "prometheus_client (metrics)": ("(prometheus_client/",),
    "JSON (parse and encode)": ("(json/",),
    "websockets (frames in and out)": ("(websockets/",),
}
SDK_GROUPS = {
    "conversation history: linear scans and copies of the whole list per item": (
        "_get_new_history",
        "RealtimeSession.on_event (agents/realtime/session.py) > <genexpr>",
    ),
    "pydantic validation of every server event": ("validate_python", "(pydantic/"),
    "tool invocation identity and approval bookkeeping": (
        "tool_invocation_identity",
        "get_approval_status",
        "_tool_invocation_status",
    ),
    "websockets (frames in and out)": ("(websockets/",),
}


async def run(
    sim: SimulatorProcess, workers: Workers, *, quick: bool, log: Callable[[str], None]
) -> ProfileResult:
    calls = QUICK_CALLS if quick else FULL_CALLS
    result = ProfileResult()
    for kind, groups in (("rtguard-on", RTGUARD_GROUPS), ("sdk", SDK_GROUPS)):
        run_ = await profile(sim, workers, kind, calls, groups)
        result.runs.append(run_)
        top = ", ".join(f"{e.function.split(' ')[0]} {e.self_share:.0%}" for e in run_.entries[:4])
        log(f"profile {kind:12} N={calls}: busy {run_.busy_seconds:.2f} s; own time: {top}")
    return result

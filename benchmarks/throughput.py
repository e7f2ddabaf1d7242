"""Throughput: N trivial tool calls, issued as fast as the client keeps up (the simulator's
closed loop: at most ``max_in_flight`` calls without an output), for each client.

calls/s is measured by the simulator: calls answered / (last first-output - first issue), so
connecting and the session set-up are outside the window and every client is timed by the
same clock. Each client kind runs in its own worker process (workers.py); CPU per call is
that process's CPU time (all its threads) over the session.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rtguard.simulator import CallSpec, Scenario

from .simserver import SimulatorProcess, percentile
from .workers import Workers

__all__ = [
    "CLIENT_LABELS",
    "Measurement",
    "ThroughputResult",
    "measure",
    "run",
]

ECHO = CallSpec("echo", '{"text":"hi"}')
FULL_SIZES = (250, 1_000, 4_000, 100_000)
QUICK_SIZES = (250, 1_000)
QUICK_SDK_CAP = 1_000
FULL_REPEATS = {250: 9, 1_000: 7, 4_000: 5, 100_000: 3}
SDK_MAX_CALLS = 10_000  # the SDK's per-call cost grows with the session; see the report

CLIENT_LABELS = {
    "raw": "raw WebSocket client (simulator ceiling)",
    "sdk": "openai-agents RealtimeSession",
    "rtguard-off": "rtguard, telemetry off",
    "rtguard-on": "rtguard, spans + metrics",
}


@dataclass(frozen=True)
class Measurement:
    client: str
    requested: int
    answered: int
    calls_per_second: float
    cpu_us_per_call: float
    elapsed: float
    duplicated: int
    without_response_create: int
    server_errors: int
    response_creates: int
    refused_response_creates: int
    client_events: int
    session_updates: int
    p50_ms: float = 0.0  # time from the simulator issuing a call to receiving its output
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    first_decile_cps: float = 0.0  # calls/s over the first and the last tenth of the calls
    last_decile_cps: float = 0.0
    client_busy: float = 0.0  # client CPU seconds / wall seconds over the run
    sim_busy: float = 0.0  # the simulator process's CPU seconds / wall seconds
    gc_us_per_call: float = 0.0  # the client's time in garbage collection, per call
    gc_full: int = 0  # full collections during the session
    spans: int = 0
    profile: Any = None  # profiles.ProfiledRun when the run was profiled


@dataclass
class ThroughputResult:
    sizes: tuple[int, ...]
    sdk_cap: int
    runs: dict[tuple[str, int], list[Measurement]] = field(default_factory=dict)

    def median(self, client: str, size: int) -> Measurement | None:
        runs = self.runs.get((client, size))
        if not runs:
            return None
        ordered = sorted(runs, key=lambda m: m.calls_per_second)
        return ordered[(len(ordered) - 1) // 2]

    def spread(self, client: str, size: int) -> float:
        """(max - min) / median of calls/s over the repeats: how noisy the row is."""
        runs = self.runs.get((client, size)) or []
        if len(runs) < 2:
            return 0.0
        rates = [m.calls_per_second for m in runs]
        return (max(rates) - min(rates)) / statistics.median(rates)


async def measure(
    sim: SimulatorProcess,
    workers: Workers,
    kind: str,
    calls: int,
    *,
    rate: float | None = None,
    timeout: float | None = None,
    otlp_endpoint: str | None = None,
    groups: dict[str, tuple[str, ...]] | None = None,
) -> Measurement:
    """One session of ``calls`` echo calls: a fresh simulator, the client in its worker."""
    url = await sim.start(Scenario(calls=(ECHO,) * calls, rate=rate))
    limit = timeout if timeout is not None else max(60.0, calls / 50)
    sim_cpu_before = sim.cpu_seconds()
    sim_cpu = 0.0

    async def answered() -> None:  # the client stays open until the simulator has them all
        nonlocal sim_cpu
        sim_cpu = sim.cpu_seconds() - sim_cpu_before
        await sim.wait_answered(calls, 10.0)

    try:
        worker = workers.get(kind, otlp_endpoint)
        stats = await worker.run(url, calls, limit, groups, before_close=answered)
    finally:
        report = await sim.stop()
    wall = stats.wall_seconds
    per_call = 1e6 / max(1, report.answered)
    return Measurement(
        client=kind,
        requested=calls,
        answered=report.answered,
        calls_per_second=report.calls_per_second,
        cpu_us_per_call=stats.cpu_seconds * per_call,
        elapsed=report.elapsed,
        duplicated=report.duplicated,
        without_response_create=report.without_response_create,
        server_errors=stats.server_errors,
        response_creates=report.response_creates,
        refused_response_creates=report.refused_response_creates,
        client_events=report.client_events,
        session_updates=report.session_updates,
        p50_ms=percentile(report.latencies, 50) * 1e3,
        p95_ms=percentile(report.latencies, 95) * 1e3,
        p99_ms=percentile(report.latencies, 99) * 1e3,
        max_ms=max(report.latencies, default=float("nan")) * 1e3,
        first_decile_cps=report.decile_rates[0] if report.decile_rates else float("nan"),
        last_decile_cps=report.decile_rates[-1] if report.decile_rates else float("nan"),
        client_busy=stats.cpu_seconds / wall,
        sim_busy=sim_cpu / wall,
        gc_us_per_call=stats.gc_seconds * per_call,
        gc_full=stats.gc_full,
        spans=stats.spans,
        profile=stats.profile,
    )


async def run(
    sim: SimulatorProcess, workers: Workers, *, quick: bool, log: Callable[[str], None]
) -> ThroughputResult:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    sdk_cap = QUICK_SDK_CAP if quick else SDK_MAX_CALLS
    result = ThroughputResult(sizes, sdk_cap)
    for kind in CLIENT_LABELS:  # warm-up: imports, schema building, first connections
        await measure(sim, workers, kind, 100)
    for size in sizes:
        repeats = 1 if quick else FULL_REPEATS.get(size, 1)
        for _ in range(repeats):
            for kind in CLIENT_LABELS:  # interleaved, so noise hits every client alike
                calls = min(size, sdk_cap) if kind == "sdk" else size
                if kind == "sdk" and calls < size and result.runs.get((kind, size)):
                    continue  # capped: one run is enough
                m = await measure(sim, workers, kind, calls)
                result.runs.setdefault((kind, size), []).append(m)
                log(
                    f"throughput {kind:12} N={calls:>7}: {m.calls_per_second:8.0f} calls/s, "
                    f"{m.cpu_us_per_call:6.0f} us CPU/call, answered {m.answered}"
                )
    return result

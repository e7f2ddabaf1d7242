"""Throughput: N trivial tool calls, issued as fast as the client keeps up (the simulator's
closed loop: at most ``max_in_flight`` calls without an output), for each client.

calls/s is measured by the simulator: calls answered / (last first-output - first issue), so
connecting and the session set-up are outside the window and every client is timed by the
same clock. CPU per call is the client process's CPU time (all its threads) over the run.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rtguard.simulator import CallSpec, Scenario

from .clients import (
    AgentsSdkClient,
    BenchClient,
    RawClient,
    RtguardClient,
    TelemetrySetup,
    cpu_seconds,
    telemetry_setup,
)
from .simserver import SimulatorProcess, percentile

__all__ = [
    "CLIENT_LABELS",
    "Measurement",
    "ThroughputResult",
    "make_client",
    "measure",
    "run",
]

ECHO = CallSpec("echo", '{"text":"hi"}')
FULL_SIZES = (250, 1_000, 4_000, 100_000)
QUICK_SIZES = (250, 1_000)
QUICK_SDK_CAP = 1_000
FULL_REPEATS = {250: 5, 1_000: 3, 4_000: 3, 100_000: 3}
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
    spans: int = 0


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


def make_client(kind: str) -> tuple[BenchClient, TelemetrySetup | None]:
    if kind == "raw":
        return RawClient(), None
    if kind == "sdk":
        return AgentsSdkClient(), None
    if kind in ("rtguard-off", "rtguard-on"):
        setup = telemetry_setup("off" if kind == "rtguard-off" else "spans+metrics")
        return RtguardClient(setup.telemetry), setup
    raise ValueError(kind)


async def measure(
    sim: SimulatorProcess,
    kind: str,
    calls: int,
    *,
    factory: Callable[[], tuple[BenchClient, TelemetrySetup | None]] | None = None,
    rate: float | None = None,
    timeout: float | None = None,
) -> Measurement:
    """One run of ``calls`` echo calls against a fresh simulator."""
    scenario = Scenario(calls=(ECHO,) * calls, rate=rate)
    url = await sim.start(scenario)
    client, setup = (factory or (lambda: make_client(kind)))()
    limit = timeout if timeout is not None else max(60.0, calls / 50)
    gc.collect()
    sim_cpu_before = sim.cpu_seconds()
    wall_before, cpu_before = time.monotonic(), cpu_seconds()
    try:
        await client.open(url)
        await client.wait_delivered(calls, limit)
        await sim.wait_answered(calls, 10.0)
        cpu = cpu_seconds() - cpu_before
        wall = time.monotonic() - wall_before
        sim_cpu = sim.cpu_seconds() - sim_cpu_before
    finally:
        await client.close()
        if setup is not None:
            setup.shutdown()
    report = await sim.stop()
    return Measurement(
        client=kind,
        requested=calls,
        answered=report.answered,
        calls_per_second=report.calls_per_second,
        cpu_us_per_call=cpu / max(1, report.answered) * 1e6,
        elapsed=report.elapsed,
        duplicated=report.duplicated,
        without_response_create=report.without_response_create,
        server_errors=len(client.server_errors),
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
        client_busy=cpu / wall,
        sim_busy=sim_cpu / wall,
        spans=setup.spans_ended if setup is not None else 0,
    )


async def run(
    sim: SimulatorProcess, *, quick: bool, log: Callable[[str], None]
) -> ThroughputResult:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    sdk_cap = QUICK_SDK_CAP if quick else SDK_MAX_CALLS
    result = ThroughputResult(sizes, sdk_cap)
    for kind in CLIENT_LABELS:  # warm-up: imports, schema building, first connections
        await measure(sim, kind, 100)
    for size in sizes:
        repeats = 1 if quick else FULL_REPEATS.get(size, 1)
        for _ in range(repeats):
            for kind in CLIENT_LABELS:  # interleaved, so noise hits every client alike
                calls = min(size, sdk_cap) if kind == "sdk" else size
                if kind == "sdk" and calls < size and result.runs.get((kind, size)):
                    continue  # capped: one run is enough
                m = await measure(sim, kind, calls)
                result.runs.setdefault((kind, size), []).append(m)
                log(
                    f"throughput {kind:12} N={calls:>7}: {m.calls_per_second:8.0f} calls/s, "
                    f"{m.cpu_us_per_call:6.0f} us CPU/call, answered {m.answered}"
                )
    return result

"""Latency: calls issued at a fixed rate (open loop); the time from the simulator issuing a call
(its ``issued_at``, taken before the call's frames are sent) to the simulator receiving its
output (``first_output_at``), p50/p95/p99, for each client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import throughput
from .simserver import SimulatorProcess
from .workers import Workers

__all__ = ["RATE", "LatencyResult", "run"]

RATE = 200.0  # calls per second
FULL_CALLS = 2_000  # 10 s per client
QUICK_CALLS = 300


@dataclass
class LatencyResult:
    rate: float
    calls: int
    runs: dict[str, throughput.Measurement] = field(default_factory=dict)


async def run(
    sim: SimulatorProcess, workers: Workers, *, quick: bool, log: Callable[[str], None]
) -> LatencyResult:
    calls = QUICK_CALLS if quick else FULL_CALLS
    result = LatencyResult(RATE, calls)
    for kind in throughput.CLIENT_LABELS:
        m = await throughput.measure(sim, workers, kind, calls, rate=RATE)
        result.runs[kind] = m
        log(
            f"latency {kind:12} at {RATE:.0f}/s: p50 {m.p50_ms:.2f} ms, p95 {m.p95_ms:.2f} ms, "
            f"p99 {m.p99_ms:.2f} ms, max {m.max_ms:.2f} ms ({m.answered}/{calls} answered)"
        )
    return result

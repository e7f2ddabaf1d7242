"""Telemetry cost: rtguard's throughput (closed loop, as in throughput.py) with telemetry off
(``Telemetry.disabled()``), with spans and metrics on (an SDK TracerProvider with a
BatchSpanProcessor whose exporter does no I/O, metrics in a private registry), and with OTLP
export over gRPC to a real receiver on 127.0.0.1 in another process. Repeats interleave the
three set-ups; the median run of each is reported. Then the floor under that cost, without
sockets (``hooks.telemetry_floor``): how much of what telemetry adds per call is the SDKs' own
work for the same spans and samples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import hooks, throughput
from .otlp import OtlpReceiverProcess
from .simserver import SimulatorProcess
from .workers import Workers

__all__ = ["KINDS", "TelemetryResult", "run"]

KINDS = ("off", "spans+metrics", "otlp")
WORKER_KINDS = {"off": "rtguard-off", "spans+metrics": "rtguard-on", "otlp": "rtguard-otlp"}
FULL_CALLS, FULL_REPEATS = 4_000, 3
QUICK_CALLS, QUICK_REPEATS = 1_000, 1
QUICK_FLOOR_CALLS = 2_000


@dataclass
class TelemetryResult:
    calls: int
    runs: dict[str, list[throughput.Measurement]] = field(default_factory=dict)
    spans_ended: int = 0  # OTLP runs: spans rtguard finished
    spans_received: int = 0  # OTLP runs: spans the receiver decoded
    floor: hooks.Floor | None = None

    def median(self, kind: str) -> throughput.Measurement | None:
        runs = sorted(self.runs.get(kind, []), key=lambda m: m.calls_per_second)
        return runs[(len(runs) - 1) // 2] if runs else None


async def run(
    sim: SimulatorProcess, workers: Workers, *, quick: bool, log: Callable[[str], None]
) -> TelemetryResult:
    calls = QUICK_CALLS if quick else FULL_CALLS
    repeats = QUICK_REPEATS if quick else FULL_REPEATS
    result = TelemetryResult(calls)
    receiver = OtlpReceiverProcess()
    try:
        for kind in KINDS:  # warm each worker
            await throughput.measure(
                sim, workers, WORKER_KINDS[kind], 100, otlp_endpoint=receiver.endpoint
            )
        for _ in range(repeats):
            for kind in KINDS:
                before = receiver.spans_received()
                m = await throughput.measure(
                    sim, workers, WORKER_KINDS[kind], calls, otlp_endpoint=receiver.endpoint
                )
                result.runs.setdefault(kind, []).append(m)
                if kind == "otlp":  # the worker shut its provider down: the queue is flushed
                    result.spans_ended += m.spans
                    result.spans_received += receiver.spans_received() - before
                log(
                    f"telemetry {kind:14} N={calls}: {m.calls_per_second:7.0f} calls/s, "
                    f"{m.cpu_us_per_call:5.0f} us CPU/call, GC {m.gc_us_per_call:4.0f} us/call, "
                    f"spans {m.spans}"
                )
    finally:
        workers.close("rtguard-otlp")
        receiver.close()
    floor_calls = QUICK_FLOOR_CALLS if quick else hooks.CALLS
    result.floor = floor = hooks.telemetry_floor(floor_calls, repeats)
    log(
        f"telemetry floor, no sockets: off {floor.off_us:.0f}, on {floor.on_us:.0f} us/call; "
        f"the SDKs' own work {floor.sdk_us:.0f} us/call ({floor.sdk_share:.0%} of the cost)"
    )
    return result

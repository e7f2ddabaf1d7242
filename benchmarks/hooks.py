"""What rtguard costs per call without sockets: the session core deciding one call's life
(parse its frames, run the ledger, queue the output and response.create) and telemetry
observing the same events (response span, execute_tool span, one send attempt span, metrics
with exemplars), with telemetry off, on, and on with 10% sampling; then, under cProfile, whose
code the time with spans and metrics on is spent in.

    .venv/bin/python -m benchmarks.hooks
"""

from __future__ import annotations

import cProfile
import json
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry

from rtguard import Agent, SessionConfig, function_tool
from rtguard._core import Prepare, Prepared, Returned, SessionCore
from rtguard._events import RaiseToApp
from rtguard.telemetry import RtguardMetrics, Telemetry

CALLS = 20_000


class _Discard(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@function_tool
async def echo(text: str) -> str:
    return text


AGENT = Agent(name="bench", tools=[echo])


class _Session:
    """The two things SessionTelemetry reads from a session."""

    def __init__(self, core: SessionCore) -> None:
        self.config = core.config
        self.ledger = core.ledger


def _frames(i: int) -> list[str]:
    """What the server sends for one response holding one call, and the call's ack."""
    response, call_id = f"resp_{i}", f"call_{i}"
    item = {"type": "function_call_output", "call_id": call_id, "output": "x"}
    events = [
        {"type": "response.created", "response": {"id": response}},
        {
            "type": "response.function_call_arguments.done",
            "response_id": response,
            "call_id": call_id,
            "name": "echo",
            "arguments": '{"text": "x"}',
        },
        {"type": "response.done", "response": {"id": response, "status": "completed"}},
        {"type": "conversation.item.added", "item": item},
    ]
    return [json.dumps(e) for e in events]


def per_call_us(telemetry: Telemetry) -> float:
    core = SessionCore(AGENT, SessionConfig())
    observer = telemetry.session(_Session(core))  # type: ignore[arg-type]

    def drain() -> None:
        """The asyncio layer's drain, with the tool answering at once and writes succeeding."""
        while True:
            while (event := core.next_event()) is not None:
                if not isinstance(event, RaiseToApp):
                    observer.observe(event)
            if (job := core.next_job()) is not None:
                prepared = Prepared({"text": "x"}, needs_approval=False)
                core.job_done(
                    job.call, prepared if isinstance(job, Prepare) else Returned("x"), 0.0
                )
            elif (frame := core.next_frame()) is not None:
                core.frame_written(frame, 0.0)
            else:
                return

    core.connected(0.0)
    drain()
    frames = [_frames(i) for i in range(CALLS)]
    started = time.process_time()
    for created, arguments, done, ack in frames:
        core.receive_frame(created, 0.0)
        core.receive_frame(arguments, 0.0)
        drain()
        core.receive_frame(done, 0.0)
        core.receive_frame(ack, 0.0)
        drain()
    assert core.ledger.open_count == 0
    return (time.process_time() - started) / CALLS * 1e6


def with_sdk(ratio: float | None) -> Telemetry:
    sampler = ParentBased(TraceIdRatioBased(ratio)) if ratio is not None else None
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=CALLS * 4))
    return Telemetry(tracer_provider=provider, metrics=RtguardMetrics(CollectorRegistry()))


# Where a profiled function's own time is counted: the first part of its file path that
# matches, in this order.
OWNERS = {
    "OpenTelemetry SDK and API": "/opentelemetry/",
    "prometheus_client": "/prometheus_client/",
    "rtguard telemetry (the observer)": "/rtguard/telemetry/",
    "rtguard core, JSON, the drain": "",
}


def time_by_owner(telemetry: Telemetry) -> dict[str, float]:
    """Shares of the profiled run's own time by whose code it is; a built-in (``isinstance``,
    ``dict.get``) counts for the function that called it."""
    profile = cProfile.Profile()
    profile.runcall(per_call_us, telemetry)
    shares = dict.fromkeys(OWNERS, 0.0)
    for entry in profile.getstats():
        owner = _owner(entry.code)
        if owner is None:
            continue
        shares[owner] += entry.inlinetime
        for call in entry.calls or ():
            if _owner(call.code) is None:
                shares[owner] += call.inlinetime
    total = sum(shares.values())
    return {owner: own / total for owner, own in shares.items()}


def _owner(code: object) -> str | None:
    """None for a built-in (the profiler names it with a string, not a code object)."""
    path = getattr(code, "co_filename", None)
    return None if path is None else next(o for o, part in OWNERS.items() if part in path)


def main() -> None:
    runs = {
        "telemetry off": Telemetry.disabled,
        "spans + metrics": lambda: with_sdk(None),
        "spans sampled 10% + metrics": lambda: with_sdk(0.1),
    }
    results = {name: min(per_call_us(make()) for _ in range(3)) for name, make in runs.items()}
    base = results["telemetry off"]
    print(f"rtguard per call without sockets ({CALLS:,} calls, best of 3, CPU time)")
    print("| set-up | us/call | of telemetry off |")
    print("|---|---:|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} | {value / base:.1f}x |")
    print("\nspans + metrics under cProfile: own time by whose code it is")
    print("| code | share |")
    print("|---|---:|")
    for owner, share in time_by_owner(with_sdk(None)).items():
        print(f"| {owner} | {share:.0%} |")


if __name__ == "__main__":
    main()

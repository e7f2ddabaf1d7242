"""What rtguard costs per call without sockets: the session core deciding one call's life
(parse its frames, run the ledger, queue the output and response.create) and telemetry
observing the same events (response span, execute_tool span, one send attempt span, metrics
with exemplars), with telemetry off, on, and on with 10% sampling.

    .venv/bin/python -m benchmarks.hooks
"""

from __future__ import annotations

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


if __name__ == "__main__":
    main()

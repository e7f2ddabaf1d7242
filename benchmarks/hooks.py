"""What telemetry costs per call inside rtguard, without sockets: the ledger's transitions
and the session's telemetry hooks for one call (response span, execute_tool span, one send
attempt span, metrics with exemplars), with telemetry off, on, and on with 10% sampling.

    .venv/bin/python -m benchmarks.hooks
"""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry

from rtguard import Agent, SessionConfig, function_tool
from rtguard._ledger import CallLedger, Outcome, ToolOutput
from rtguard._protocol import FunctionCall, event_ids
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

    config = SessionConfig()
    agent = AGENT

    def __init__(self) -> None:
        self.ledger = CallLedger(event_ids=event_ids())


def per_call_us(telemetry: Telemetry) -> float:
    session = _Session()
    hooks = telemetry.session(session)  # type: ignore[arg-type]
    hooks.session_identified("sess_bench")
    ledger, tool = session.ledger, AGENT.find("echo")
    output = ToolOutput("x", Outcome.SUCCESS)
    started = time.process_time()
    for i in range(CALLS):
        response_id, call_id = f"resp_{i}", f"call_{i}"
        hooks.response_started(response_id)
        call = ledger.receive(FunctionCall(call_id, "echo", "{}", response_id), time.monotonic())
        assert call is not None
        hooks.call_received(call, AGENT, tool)
        with hooks.tool_context(call):
            pass
        hooks.output_ready(call, output)
        ledger.output_ready(call_id, output)
        hooks.send_attempt(call, 1, time.time_ns(), None, will_retry=False)
        ledger.send_succeeded(call_id, 0.0)
        hooks.response_finished(response_id)
        ledger.acknowledged(call_id, time.monotonic())
        hooks.call_settled(call)
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

"""What rtguard costs per call without sockets: the session core deciding one call's life
(parse its frames, run the ledger, queue the output and response.create) and telemetry
observing the same events (response span, execute_tool span, one send attempt span, metrics
with exemplars), with telemetry off, on, and on with 10% sampling; the floor under telemetry's
cost (the same spans and samples made directly with the SDKs after each call of the core with
telemetry off, no observer); then, under cProfile, whose code the time with spans and metrics
on is spent in.

    .venv/bin/python -m benchmarks.hooks
"""

from __future__ import annotations

import cProfile
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram

from rtguard import Agent, SessionConfig, function_tool
from rtguard._core import Prepare, Prepared, Returned, SessionCore
from rtguard._events import RaiseToApp
from rtguard.telemetry import RtguardMetrics, Telemetry

CALLS = 20_000
PATTERN_CALLS = 500  # the floor records rtguard's telemetry for this many calls, then repeats it


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


def per_call_us(
    telemetry: Telemetry, calls: int = CALLS, after_call: Callable[[], None] | None = None
) -> float:
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
    frames = [_frames(i) for i in range(calls)]
    started = time.process_time()
    for created, arguments, done, ack in frames:
        core.receive_frame(created, 0.0)
        core.receive_frame(arguments, 0.0)
        drain()
        core.receive_frame(done, 0.0)
        core.receive_frame(ack, 0.0)
        drain()
        if after_call is not None:
            after_call()
    assert core.ledger.open_count == 0
    return (time.process_time() - started) / calls * 1e6


def with_sdk(ratio: float | None) -> Telemetry:
    sampler = ParentBased(TraceIdRatioBased(ratio)) if ratio is not None else None
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard(), max_queue_size=CALLS * 4))
    return Telemetry(tracer_provider=provider, metrics=RtguardMetrics(CollectorRegistry()))


@dataclass(frozen=True)
class Floor:
    """Per call, without sockets (us of CPU): what telemetry adds, and how much of that is
    the SDKs' own work."""

    off_us: float  # the core, telemetry off
    on_us: float  # the core with spans and metrics
    sdk_work_us: float  # the core, telemetry off, and the same spans and samples made directly

    @property
    def sdk_us(self) -> float:
        return self.sdk_work_us - self.off_us

    @property
    def sdk_share(self) -> float:
        """Of what spans and metrics add per call, the part the SDKs themselves cost."""
        return self.sdk_us / (self.on_us - self.off_us)


def telemetry_floor(calls: int = CALLS, repeats: int = 3) -> Floor:
    """Best of ``repeats`` interleaved runs of each."""
    runs: list[Callable[[], float]] = [
        lambda: per_call_us(Telemetry.disabled(), calls),
        lambda: per_call_us(with_sdk(None), calls),
        lambda: per_call_us(Telemetry.disabled(), calls, SdkReplay().next_call),
    ]
    best = [math.inf] * len(runs)
    for _ in range(repeats):
        best = [min(b, measure()) for b, measure in zip(best, runs, strict=True)]
    return Floor(*best)


class SdkReplay:
    """What telemetry would cost with a free observer. The spans (names, kinds, parents,
    attributes, events, status) and metric samples rtguard's observer made for
    PATTERN_CALLS calls are recorded once, then made again directly with the SDKs, on the
    same set-up as the spans + metrics run: one call's share after each call of a core
    whose telemetry is off, so the core and the SDKs share the CPU's caches as they do with
    the observer between them."""

    def __init__(self) -> None:
        exporter = InMemorySpanExporter()
        recording = TracerProvider()
        recording.add_span_processor(SimpleSpanProcessor(exporter))
        recorded_metrics = RtguardMetrics(CollectorRegistry())
        per_call_us(Telemetry(tracer_provider=recording, metrics=recorded_metrics), PATTERN_CALLS)
        self._spans = _span_plan(exporter.get_finished_spans())
        replay = with_sdk(None)
        self._tracer, metrics = replay.tracer, replay.metrics
        assert metrics is not None
        linked = {"trace_id": "1" * 32, "span_id": "1" * 16}
        self._samples: list[Callable[[], None]] = []
        for name, labels, histogram, count in _samples_made(recorded_metrics):
            child = getattr(metrics, name).labels(**labels) if labels else getattr(metrics, name)
            sample = functools.partial(child.observe, 0.01, linked) if histogram else child.inc
            self._samples += [sample] * count
        self._turn = trace.set_span_in_context(self._tracer.start_span("turn"))  # as rtguard's
        self._contexts: dict[int, Any] = {}  # of the spans that are parents, by position
        self._calls = self._spans_done = self._samples_done = 0

    def next_call(self) -> None:
        self._calls += 1
        spans, samples = self._spans, self._samples
        while self._spans_done < self._calls * len(spans) // PATTERN_CALLS:
            i = self._spans_done % len(spans)
            name, kind, parent, is_parent, attributes, events, status = spans[i]
            span = self._tracer.start_span(
                name, self._contexts.get(parent, self._turn), kind, attributes
            )
            for event_name, event_attributes in events:
                span.add_event(event_name, event_attributes)
            if status.status_code is not StatusCode.UNSET:
                span.set_status(status)
            if is_parent:
                self._contexts[i] = trace.set_span_in_context(span)
            span.end()
            self._spans_done += 1
        while self._samples_done < self._calls * len(samples) // PATTERN_CALLS:
            samples[self._samples_done % len(samples)]()
            self._samples_done += 1


def _span_plan(spans: Sequence[ReadableSpan]) -> list[tuple[Any, ...]]:
    """The spans in the order they started, each with its parent's position (-1: the turn)
    and whether it is a parent."""
    ordered = sorted(spans, key=lambda span: span.start_time or 0)
    position = {span.context.span_id: i for i, span in enumerate(ordered) if span.context}
    parents = [position.get(span.parent.span_id, -1) if span.parent else -1 for span in ordered]
    is_parent, plan = set(parents), []
    for i, (span, parent) in enumerate(zip(ordered, parents, strict=True)):
        assert parent < i, "a parent starts before its child"
        events = [(event.name, dict(event.attributes or {})) for event in span.events]
        attributes = dict(span.attributes or {})
        plan.append((span.name, span.kind, parent, i in is_parent, attributes, events, span.status))
    return plan


def _samples_made(metrics: RtguardMetrics) -> list[tuple[str, dict[str, str], bool, int]]:
    """Every counter increment and histogram observation recorded: (the attribute of
    RtguardMetrics, its labels, whether it is a histogram, how many)."""
    made = []
    for name, metric in vars(metrics).items():
        if not isinstance(metric, Counter | Histogram):
            continue
        histogram = isinstance(metric, Histogram)
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith("_count" if histogram else "_total") and sample.value:
                    made.append((name, sample.labels, histogram, round(sample.value)))
    return made


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
    floor = telemetry_floor()
    results = {
        "telemetry off": floor.off_us,
        "spans + metrics": floor.on_us,
        "spans sampled 10% + metrics": min(per_call_us(with_sdk(0.1)) for _ in range(3)),
        "telemetry off + the SDKs' own work for the same spans and samples": floor.sdk_work_us,
    }
    print(f"rtguard per call without sockets ({CALLS:,} calls, best of 3, CPU time)")
    print("| set-up | us/call | of telemetry off |")
    print("|---|---:|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} | {value / floor.off_us:.1f}x |")
    print(
        f"\nWhat spans + metrics add per call: {floor.on_us - floor.off_us:.1f} us, of which "
        f"the SDKs' own work {floor.sdk_us:.1f} us ({floor.sdk_share:.0%}), rtguard's observer "
        "the rest."
    )
    print("\nspans + metrics under cProfile: own time by whose code it is")
    print("| code | share |")
    print("|---|---:|")
    for owner, share in time_by_owner(with_sdk(None)).items():
        print(f"| {owner} | {share:.0%} |")


if __name__ == "__main__":
    main()

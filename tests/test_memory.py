"""A session's own state is bounded by a small constant, however long it runs.

A voice-agent host carries hundreds of sessions in one process, each for many minutes, so
what one session keeps (its ledger, the ids it remembers, the history it could replay on a
new connection, its telemetry's open spans) must stop growing once its bounds are full, and
stay small. Measured with tracemalloc on the sans-I/O core and its telemetry observer, fed
a voice session's frames: each call is announced, run and acknowledged, and the model then
speaks its answer, whose transcript the history records. The sizes are the Python version's,
not the machine's.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from core_harness import lookup
from rtguard import Agent, SessionConfig
from rtguard._core import Prepare, Prepared, Returned, SessionCore
from rtguard._events import AppFrameDone, RaiseToApp
from rtguard.telemetry import RtguardMetrics, SessionTelemetry, Telemetry

# What one session may keep once its bounds are full (measured on Python 3.11: about 41 KiB,
# half of it the 64 items of history, 6 KiB the 64 call ids it remembers), and how much it
# may still grow over 300 more calls (measured: nothing, give or take an open span).
STATE_BUDGET = 48 * 1024
GROWTH_BUDGET = 1024


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Session:
    """What SessionTelemetry reads from its session."""

    def __init__(self, core: SessionCore) -> None:
        self.config = core.config
        self.ledger = core.ledger


class VoiceSession:
    """A core and its telemetry, fed the frames of a voice session, keeping nothing itself."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.core = SessionCore(Agent(name="voice", tools=[lookup]), SessionConfig())
        self.telemetry: SessionTelemetry = telemetry.session(_Session(self.core))  # type: ignore[arg-type]
        self.now = 0.0  # each frame comes 0.5 s after the last: a call every 4.5 s
        self.core.connected(self.now)
        self.server({"type": "session.updated", "session": {"type": "realtime", "id": "sess_1"}})

    def server(self, event: dict[str, object]) -> None:
        self.now += 0.5
        self.core.receive_frame(json.dumps(event), self.now)
        self.drain()

    def drain(self) -> None:
        """As the asyncio layer does after every input, the timer included."""
        core = self.core
        while True:
            while (event := core.next_event()) is not None:
                if not isinstance(event, RaiseToApp | AppFrameDone):
                    self.telemetry.observe(event)
            if (job := core.next_job()) is not None:
                prepared = isinstance(job, Prepare)
                result = Prepared({"key": "k"}, needs_approval=False) if prepared else Returned("K")
                core.job_done(job.call, result, self.now)
            elif (frame := core.next_frame()) is not None:
                core.frame_written(frame, self.now)
            elif (deadline := core.next_deadline()) is not None and deadline <= self.now:
                core.handle_timer(self.now)
            else:
                return

    def call(self, i: int, *, answered: bool = True) -> None:
        """One call and the spoken answer to its output, with ids as long as the server's.
        Unanswered, the model's next response is the next call: an agent loop, one turn."""
        response, call_id = f"resp_{i:018d}", f"call_{i:016d}"
        self.server({"type": "response.created", "response": {"id": response}})
        item = {
            "id": f"item_{i:018d}c",
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": "lookup",
            "arguments": '{"key": "k"}',
        }
        self.server({"type": "response.output_item.done", "response_id": response, "item": item})
        self.server({"type": "conversation.item.done", "item": item})
        self.server({"type": "response.done", "response": {"id": response, "status": "completed"}})
        output = {"id": f"item_{i:018d}o", "type": "function_call_output", "call_id": call_id}
        output["output"] = "K"
        self.server({"type": "conversation.item.added", "item": output})
        self.server({"type": "conversation.item.done", "item": output})
        if not answered:
            return
        answer = f"resp_{i:018d}a"
        self.server({"type": "response.created", "response": {"id": answer}})
        spoken = {
            "id": f"item_{i:018d}a",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_audio", "transcript": f"The answer to {i} is K."}],
        }
        self.server({"type": "conversation.item.done", "item": spoken})
        self.server({"type": "response.done", "response": {"id": answer, "status": "completed"}})


def _traced() -> int:
    gc.collect()
    return sum(stat.size for stat in tracemalloc.take_snapshot().statistics("filename"))


@pytest.mark.parametrize(
    "answered",
    [
        pytest.param(True, id="each call answered: a turn per call"),
        pytest.param(False, id="the model calls tool after tool: one turn that never ends"),
    ],
)
def test_a_long_voice_session_keeps_a_small_constant_state(answered: bool) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Discard()))
    telemetry = Telemetry(tracer_provider=provider, metrics=RtguardMetrics(CollectorRegistry()))
    warm = VoiceSession(telemetry)  # the process's one-time costs (caches, metric children)
    for i in range(50):
        warm.call(i, answered=answered)
    tracemalloc.start()
    try:
        before = _traced()
        session = VoiceSession(telemetry)
        for i in range(200):  # past every bound: 64 history items, 64 remembered ids
            session.call(i, answered=answered)
        full = _traced()
        for i in range(200, 500):  # 37 minutes in all: before the connection's rollover
            session.call(i, answered=answered)
        later = _traced()
    finally:
        tracemalloc.stop()
    assert session.core.ledger.open_count == 0
    assert len(session.telemetry._turns) == (0 if answered else 1)
    assert full - before < STATE_BUDGET, f"a session keeps {(full - before) / 1024:.1f} KiB"
    assert later - full < GROWTH_BUDGET, f"300 more calls grew it {(later - full) / 1024:.1f} KiB"

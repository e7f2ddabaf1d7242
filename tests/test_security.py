"""What the library lets out: the API key and tool data stay out of every channel."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, generate_latest

from conftest import make_telemetry
from rtguard import Agent, OutputAcknowledged, RealtimeSession, ToolFailed, function_tool, redact
from rtguard.simulator import CallSpec, Scenario, Simulator

KEY = "sk-proj-rtguardTEST0123456789abcdefXYZ"
PRIVATE = "PII-marker-4d2c"


@function_tool
async def leaky(note: str) -> str:
    """Fails with a message that quotes a credential."""
    raise RuntimeError(f"upstream refused: Authorization: Bearer {KEY}")


@function_tool
async def private(note: str) -> str:
    return f"{note} stored"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


async def test_api_key_and_tool_data_never_leave_through_logs_spans_metrics_or_reprs() -> None:
    capture = _Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    registry = CollectorRegistry()
    telemetry, exporter = make_telemetry(registry)
    scenario = Scenario(
        calls=(
            CallSpec("leaky", f'{{"note": "{PRIVATE}"}}'),
            CallSpec("private", f'{{"note": "{PRIVATE}"}}'),
        )
    )
    events: list[object] = []
    try:
        async with Simulator(scenario) as sim:
            session = RealtimeSession(
                Agent(name="a", tools=[leaky, private]),
                url=sim.url,
                api_key=KEY,
                telemetry=telemetry,
            )
            async with session:
                async for event in session:
                    events.append(event)
                    if sum(isinstance(e, OutputAcknowledged) for e in events) == 2:
                        break
            outputs = [o for call in sim.calls.values() for o in call.outputs]
    finally:
        root.removeHandler(capture)
        root.setLevel(previous_level)

    (failed,) = [e for e in events if isinstance(e, ToolFailed)]
    assert KEY in str(failed.error)  # the app gets its original exception, untouched
    channels = {
        "logs": "\n".join(capture.lines),
        "spans": "\n".join(
            f"{s.name} {s.attributes} {s.status.description} {[e.attributes for e in s.events]}"
            for s in exporter.get_finished_spans()
        ),
        "metrics": generate_latest(registry).decode(),
        "events": "\n".join(repr(e) for e in events if e is not failed),
        "model outputs": "\n".join(outputs),
        "session repr": repr(session) + str(session),
    }
    for channel, text in channels.items():
        assert KEY not in text, channel
        assert KEY[8:] not in text, channel  # not even a suffix
    assert "[REDACTED]" in channels["model outputs"]
    assert "[REDACTED]" in channels["spans"]
    # Tool arguments and results stay out of spans and logs unless the app opts in.
    assert PRIVATE not in channels["spans"]
    assert PRIVATE not in channels["logs"]


def test_redaction_patterns() -> None:
    assert redact(f"key={KEY}") == "key=[REDACTED]"
    assert redact("Authorization: Bearer abc.def-ghi_jkl") == "Authorization: Bearer [REDACTED]"
    assert redact('{"api_key": "abcd1234efgh"}') == '{"api_key": "[REDACTED]"}'
    assert redact("nothing secret here") == "nothing secret here"

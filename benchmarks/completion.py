"""Failure completion: for each way a call can fail, does every call still get an output the
model sees, and does the app receive the original error?

Each scenario issues 20 calls at 100 calls/s, alternating a plain ``echo`` call with the
failing kind (10 failing calls), except the send-failure scenario where every call is an
``echo`` whose first output send raises. The simulator counts outputs per call; the client
adapters collect every exception object the app received through the library's API (events,
or raised from the event iterator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rtguard import SessionConfig
from rtguard.simulator import CallSpec, Scenario

from . import clients
from .clients import AgentsSdkClient, BenchClient, RtguardClient, telemetry_setup
from .simserver import SimulatorProcess
from .workers import Workers

__all__ = ["CASES", "CaseResult", "CompletionResult", "FailureCase", "run"]

ECHO = CallSpec("echo", '{"text":"hi"}')
PAIRS = 10
RATE = 100.0


@dataclass(frozen=True)
class FailureCase:
    key: str
    title: str
    failing: CallSpec | None  # None: every call is an echo whose first send fails
    identity: bool  # the original error is an object the test raised (tool, handoff, send)
    error_classes: frozenset[str] = frozenset()  # else: library-made errors that count
    rtguard_config: SessionConfig | None = None
    rtguard_note: str = ""
    sdk_note: str = ""
    fail_first_send: bool = False

    @property
    def calls(self) -> tuple[CallSpec, ...]:
        if self.failing is None:
            return (ECHO,) * (2 * PAIRS)
        return (ECHO, self.failing) * PAIRS

    @property
    def failing_calls(self) -> int:
        return 2 * PAIRS if self.failing is None else PAIRS


CASES = (
    FailureCase(
        "raises",
        "tool raises",
        CallSpec("boom"),
        identity=True,
        sdk_note="default failure_error_function",
    ),
    FailureCase(
        "raises-strict",
        "tool raises, failure handler disabled",
        CallSpec("boom_strict"),
        identity=True,
        rtguard_config=SessionConfig(on_tool_error="raise"),
        rtguard_note='on_tool_error="raise"',
        sdk_note="failure_error_function=None",
    ),
    FailureCase(
        "timeout",
        'timeout, "error_as_result"',
        CallSpec("slow"),
        identity=False,
        error_classes=frozenset({"ToolTimeoutError"}),
    ),
    FailureCase(
        "timeout-raise",
        'timeout, "raise_exception"',
        CallSpec("slow_strict"),
        identity=False,
        error_classes=frozenset({"ToolTimeoutError"}),
    ),
    FailureCase(
        "handoff",
        "handoff fails (on_handoff / agent factory raises)",
        CallSpec("transfer_to_billing"),
        identity=True,
    ),
    FailureCase(
        "unknown-tool",
        "unknown tool name",
        CallSpec("no_such_tool"),
        identity=False,
        error_classes=frozenset({"UnknownToolError", "ModelBehaviorError", "UserError"}),
    ),
    FailureCase(
        "invalid-json",
        "arguments are invalid JSON",
        CallSpec("echo", '{"text": "unterminated'),
        identity=False,
        error_classes=frozenset({"InvalidArgumentsError", "ModelBehaviorError"}),
    ),
    FailureCase(
        "send-fails",
        "first send of every output raises",
        None,
        identity=True,
        fail_first_send=True,
    ),
)


@dataclass(frozen=True)
class CaseResult:
    case: str
    client: str
    scenario_calls: int
    issued: int
    answered: int
    duplicated: int
    without_response_create: int
    failing_calls: int
    error_objects: int  # failing calls whose error reached the app as an exception object
    same_object: bool | None  # identity cases: each original object reached the app
    received_twice: int  # originals the app received more than once
    text_only: int  # error events that carried only text
    channels: tuple[str, ...]
    server_errors: tuple[str, ...]  # the codes of the `error` events the simulator sent this client

    @property
    def unanswered(self) -> int:
        return self.issued - self.answered

    @property
    def never_issued(self) -> int:
        return self.scenario_calls - self.issued


@dataclass
class CompletionResult:
    results: list[CaseResult] = field(default_factory=list)


def _client(kind: str, case: FailureCase) -> BenchClient:
    if kind == "rtguard":
        return RtguardClient(
            telemetry_setup("off").telemetry,
            config=case.rtguard_config,
            fail_first_send=case.fail_first_send,
        )
    return AgentsSdkClient(fail_first_send=case.fail_first_send)


async def run_case(
    sim: SimulatorProcess, kind: str, case: FailureCase, *, quiet: float
) -> CaseResult:
    first_raised = len(clients.RAISED)
    calls = case.calls
    url = await sim.start(Scenario(calls=calls, rate=RATE))
    client = _client(kind, case)
    try:
        await client.open(url)
        await sim.settle(len(calls), quiet=quiet, timeout=30.0)
    finally:
        await client.close()
    report = await sim.stop()
    originals = clients.RAISED[first_raised:]
    objects = [r.error for r in client.received if r.error is not None]
    if case.identity:
        ids = [id(o) for o in objects]
        reached = sum(1 for o in originals if id(o) in ids)
        twice = sum(1 for o in originals if ids.count(id(o)) > 1)
        same: bool | None = bool(originals) and reached == len(originals)
    else:
        reached = sum(1 for o in objects if type(o).__name__ in case.error_classes)
        twice, same = 0, None
    return CaseResult(
        case=case.key,
        client=client.label,
        scenario_calls=len(calls),
        issued=report.issued,
        answered=report.answered,
        duplicated=report.duplicated,
        without_response_create=report.without_response_create,
        failing_calls=case.failing_calls,
        error_objects=min(reached, case.failing_calls),
        same_object=same,
        received_twice=twice,
        text_only=sum(1 for r in client.received if r.error is None and r.text),
        channels=tuple(sorted({r.channel for r in client.received})),
        server_errors=tuple(client.server_errors.elements()),
    )


async def run(
    sim: SimulatorProcess, workers: Workers, *, quick: bool, log: Callable[[str], None]
) -> CompletionResult:
    """In the benchmark process (``workers`` unused): the app's side must see the very
    exception objects the tools raised."""
    result = CompletionResult()
    quiet = 0.4 if quick else 1.0
    for case in CASES:
        for kind in ("rtguard", "sdk"):
            r = await run_case(sim, kind, case, quiet=quiet)
            result.results.append(r)
            log(
                f"completion {case.key:14} {r.client:14}: {r.answered}/{r.issued} answered "
                f"({r.never_issued} never issued), errors to app {r.error_objects}/"
                f"{r.failing_calls} via {', '.join(r.channels) or '-'}"
            )
    return result

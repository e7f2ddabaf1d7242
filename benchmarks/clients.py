"""The three clients measured against the same simulator: rtguard's RealtimeSession, the
OpenAI Agents SDK's realtime session (``openai-agents``, extra ``bench``), and a minimal raw
WebSocket client that shows the simulator's own ceiling.

Each adapter opens a session on a URL, runs the app's side (a consumer that drains the event
stream and keeps only what the benchmark needs), and records every exception object the app
received and how it got it. Both libraries get the same tools under the same names.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import websockets
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry

import rtguard
from rtguard import (
    Agent,
    CallIncomplete,
    EventsDropped,
    OutputAcknowledged,
    OutputSendFailed,
    RealtimeSession,
    ServerEvent,
    SessionConfig,
    ToolFailed,
    Transport,
    WebSocketTransport,
    function_tool,
    handoff,
)
from rtguard.telemetry import RtguardMetrics, Telemetry

__all__ = [
    "RAISED",
    "AgentsSdkClient",
    "BenchClient",
    "InjectedSendError",
    "RawClient",
    "ReceivedError",
    "RtguardClient",
    "TelemetrySetup",
    "quiet_logs",
    "rtguard_agent",
    "sdk_agent",
    "telemetry_setup",
]

AUDIO_DELTA = "response.output_audio.delta"
# What a voice app does with each audio chunk (the PCM bytes): play it; a benchmark reads it.
AudioSink = Callable[[bytes], None]
TOOL_TIMEOUT = 0.05  # seconds, for the timeout scenarios (the tools sleep far longer)
SLOW_TOOL_SLEEP = 5.0
# Every exception a benchmark tool, handoff or injected send failure raised, in order: the
# "original error" the app should receive.
RAISED: list[BaseException] = []


class InjectedSendError(OSError):
    """Raised in place of the first send of each function_call_output."""


def quiet_logs() -> None:
    """Both libraries log every failure; the benchmarks count failures through the API."""
    for name in ("rtguard", "openai.agents", "openai", "websockets"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")


@dataclass(frozen=True)
class ReceivedError:
    """An error the app received: how (the API channel), and the object or text."""

    channel: str
    error: BaseException | None
    text: str = ""


class BenchClient(Protocol):
    label: str
    delivered: int
    received: list[ReceivedError]
    server_errors: Counter[str]  # the server's `error` events, by code (kept small)
    dropped: int

    async def open(self, url: str) -> None: ...

    async def wait_delivered(self, count: int, timeout: float) -> bool: ...

    async def close(self) -> None: ...


class _Target:
    """Counts delivered outputs and wakes a waiter when a target count is reached."""

    def __init__(self) -> None:
        self.delivered = 0
        self.target: int | None = None
        self.reached = asyncio.Event()

    def bump(self) -> None:
        self.delivered += 1
        if self.target is not None and self.delivered >= self.target:
            self.reached.set()

    async def wait(self, count: int, timeout: float) -> bool:
        self.target = count
        if self.delivered >= count:
            return True
        self.reached.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.reached.wait()
        except TimeoutError:
            return False
        return True


# --- telemetry set-ups (rtguard) ------------------------------------------------------------


class _DiscardExporter(SpanExporter):
    """The export end of a BatchSpanProcessor, with no I/O: isolates the cost of making spans."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class _EndedSpans(SpanProcessor):
    def __init__(self) -> None:
        self.ended = 0

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1


@dataclass
class TelemetrySetup:
    """A Telemetry for one run, and what to shut down (and count) afterwards."""

    name: str
    telemetry: Telemetry
    provider: TracerProvider | None = None
    ended: _EndedSpans | None = None
    registry: CollectorRegistry | None = None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    @property
    def spans_ended(self) -> int:
        return self.ended.ended if self.ended is not None else 0


def telemetry_setup(kind: str, otlp_endpoint: str | None = None) -> TelemetrySetup:
    """``off``: Telemetry.disabled(). ``metrics``: metrics in a private registry, no spans.
    ``spans+metrics``: an SDK TracerProvider with a BatchSpanProcessor (exporter without I/O)
    and metrics in a private registry. ``otlp``: the same with the OTLP/gRPC exporter to
    ``otlp_endpoint``."""
    if kind == "off":
        return TelemetrySetup(kind, Telemetry.disabled())
    if kind == "metrics":
        registry = CollectorRegistry()
        metrics = RtguardMetrics(registry)
        telemetry = Telemetry(tracer_provider=NoOpTracerProvider(), metrics=metrics)
        return TelemetrySetup(kind, telemetry, registry=registry)
    provider = TracerProvider(resource=Resource.create({"service.name": "rtguard-bench"}))
    ended = _EndedSpans()
    provider.add_span_processor(ended)
    exporter: SpanExporter
    if kind == "spans+metrics":
        exporter = _DiscardExporter()
    elif kind == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        assert otlp_endpoint is not None, "otlp needs a receiver endpoint"
        exporter = OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)
    else:
        raise ValueError(f"unknown telemetry kind {kind!r}")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    registry = CollectorRegistry()
    telemetry = Telemetry(tracer_provider=provider, metrics=RtguardMetrics(registry))
    return TelemetrySetup(kind, telemetry, provider, ended, registry)


# --- rtguard ---------------------------------------------------------------------------------


@function_tool
async def echo(text: str) -> str:
    """Repeat the text."""
    return text


async def _boom() -> str:
    error = ValueError(f"boom #{len(RAISED)}")
    RAISED.append(error)
    raise error


async def _sleep_long() -> str:
    await asyncio.sleep(SLOW_TOOL_SLEEP)
    return "late"


def _broken_billing() -> Agent:
    error = LookupError(f"billing directory unavailable #{len(RAISED)}")
    RAISED.append(error)
    raise error


def rtguard_agent() -> Agent:
    """echo, boom, boom_strict, slow, slow_strict and a handoff whose target cannot load."""
    return Agent(
        name="support",
        instructions="You help.",
        tools=[
            echo,
            function_tool(name="boom", description="Always fails.")(_boom),
            function_tool(name="boom_strict", description="Always fails.")(_boom),
            function_tool(name="slow", timeout=TOOL_TIMEOUT, description="Too slow.")(_sleep_long),
            function_tool(
                name="slow_strict",
                timeout=TOOL_TIMEOUT,
                timeout_behavior="raise_exception",
                description="Too slow.",
            )(_sleep_long),
        ],
        handoffs=[handoff(_broken_billing, tool_name="transfer_to_billing")],
    )


class _FailFirstOutputSend:
    """An rtguard Transport whose first send of each function_call_output raises."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self._seen: set[str] = set()

    @property
    def is_open(self) -> bool:
        return self._inner.is_open

    async def send(self, frame: str) -> None:
        _maybe_fail(frame, self._seen)
        await self._inner.send(frame)

    async def recv(self) -> str | bytes:
        return await self._inner.recv()

    async def close(self) -> None:
        await self._inner.close()


def _maybe_fail(frame: str | bytes, seen: set[str]) -> None:
    if isinstance(frame, bytes) or '"function_call_output"' not in frame:
        return
    item = json.loads(frame).get("item") or {}
    call_id = item.get("call_id")
    if item.get("type") == "function_call_output" and call_id not in seen:
        seen.add(call_id)
        error = InjectedSendError(f"injected failure of the first send for {call_id}")
        RAISED.append(error)
        raise error


class _SessionClient:
    """What both library adapters share: a session, the task draining its events, and the
    count of calls delivered so far."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._target = _Target()
        self.received: list[ReceivedError] = []
        self.server_errors: Counter[str] = Counter()
        self.dropped = 0  # events the library dropped because the app fell behind
        self._session: Any = None
        self._consumer: asyncio.Task[None] | None = None

    @property
    def delivered(self) -> int:
        return self._target.delivered

    async def wait_delivered(self, count: int, timeout: float) -> bool:
        return await self._target.wait(count, timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._consumer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._consumer, 10)


class RtguardClient(_SessionClient):
    """rtguard's RealtimeSession; the app counts OutputAcknowledged (the server confirmed)."""

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        label: str = "rtguard",
        config: SessionConfig | None = None,
        fail_first_send: bool = False,
        agent: Agent | None = None,
        audio: AudioSink | None = None,
    ) -> None:
        super().__init__(label)
        self._telemetry = telemetry
        self._config = config
        self._fail_first_send = fail_first_send
        self._agent = agent or rtguard_agent()
        self._audio = audio

    async def open(self, url: str) -> None:
        async def connector() -> Transport:
            transport: Transport = await WebSocketTransport.connect(url, {})
            return _FailFirstOutputSend(transport) if self._fail_first_send else transport

        self._session = RealtimeSession(
            self._agent,
            url=url,
            config=self._config,
            connector=connector,
            telemetry=self._telemetry,
        )
        await self._session.connect()
        self._consumer = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        assert self._session is not None
        acknowledged, bump = OutputAcknowledged, self._target.bump
        audio, b64decode = self._audio, base64.b64decode
        while True:
            try:
                async for event in self._session:
                    kind = type(event)
                    if kind is ServerEvent:
                        if audio is not None and event.type == AUDIO_DELTA:
                            audio(b64decode(event.data["delta"]))
                    elif kind is acknowledged:
                        bump()
                    elif kind is ToolFailed or kind is OutputSendFailed:
                        self.received.append(ReceivedError(kind.__name__, event.error))
                    elif kind is CallIncomplete:
                        self.received.append(ReceivedError(kind.__name__, event.last_error))
                    elif kind is rtguard.ServerError:
                        self.server_errors[event.code] += 1
                    elif kind is EventsDropped:
                        self.dropped += event.count
                return
            except Exception as exc:  # on_tool_error="raise": iterate again to continue
                self.received.append(ReceivedError("raised from the iterator", exc))


# --- the OpenAI Agents SDK (openai-agents) -----------------------------------------------------


class _FailFirstOutputConnection:
    """Wraps the SDK's websockets ClientConnection: the first send of each
    function_call_output raises, like rtguard's transport wrapper."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._seen: set[str] = set()

    async def send(self, message: Any, *args: Any, **kwargs: Any) -> None:
        _maybe_fail(message, self._seen)
        await self._inner.send(message, *args, **kwargs)

    def __aiter__(self) -> Any:
        return self._inner.__aiter__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def sdk_agent() -> Any:
    """The same tools as rtguard_agent(), built with the SDK's own decorators."""
    from agents import function_tool as sdk_function_tool
    from agents.realtime import RealtimeAgent, realtime_handoff

    @sdk_function_tool
    async def echo(text: str) -> str:
        """Repeat the text."""
        return text

    async def boom() -> str:
        """Always fails."""
        return await _boom()

    async def slow() -> str:
        """Too slow."""
        return await _sleep_long()

    def broken_billing(ctx: Any) -> None:
        _broken_billing()

    billing = RealtimeAgent(name="billing", instructions="You handle billing.")
    return RealtimeAgent(
        name="support",
        instructions="You help.",
        tools=[
            echo,
            sdk_function_tool(boom),  # the SDK's default failure handler
            sdk_function_tool(boom, name_override="boom_strict", failure_error_function=None),
            sdk_function_tool(slow, timeout=TOOL_TIMEOUT),  # timeout_behavior="error_as_result"
            sdk_function_tool(
                slow,
                name_override="slow_strict",
                timeout=TOOL_TIMEOUT,
                timeout_behavior="raise_exception",
            ),
        ],
        handoffs=[realtime_handoff(billing, on_handoff=broken_billing)],
    )


class AgentsSdkClient(_SessionClient):
    """``agents.realtime``: RealtimeRunner(...).run(model_config={"url": ..., "api_key": ...});
    the app counts ``tool_end`` events (emitted after the output was sent)."""

    def __init__(
        self,
        *,
        label: str = "openai-agents",
        fail_first_send: bool = False,
        agent: Any = None,
        audio: AudioSink | None = None,
    ) -> None:
        super().__init__(label)
        self._fail_first_send = fail_first_send
        self._agent = agent
        self._audio = audio

    async def open(self, url: str) -> None:
        from agents import set_tracing_disabled
        from agents.realtime import OpenAIRealtimeWebSocketModel, RealtimeRunner

        set_tracing_disabled(True)  # the SDK's own trace export would go to api.openai.com

        class FailingModel(OpenAIRealtimeWebSocketModel):
            async def _create_websocket_connection(  # type: ignore[override]
                self, url: str, headers: dict[str, str], transport_config: Any = None
            ) -> Any:
                connection = await super()._create_websocket_connection(
                    url, headers, transport_config
                )
                return _FailFirstOutputConnection(connection)

        model = FailingModel() if self._fail_first_send else OpenAIRealtimeWebSocketModel()
        runner = RealtimeRunner(
            self._agent or sdk_agent(),
            model=model,
            config={"async_tool_calls": True, "tracing_disabled": True},
        )
        self._session = await runner.run(
            model_config={"url": url, "api_key": "sk-benchmark-not-a-key"}
        )
        await self._session.enter()
        self._consumer = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        bump, audio = self._target.bump, self._audio
        try:
            async for event in self._session:
                kind = event.type
                if kind == "audio":
                    if audio is not None:
                        audio(event.audio.data)
                elif kind == "tool_end":
                    bump()
                elif kind == "error":
                    error = event.error
                    if isinstance(error, BaseException):
                        self.received.append(ReceivedError("error event", error))
                    else:
                        text = str(error.get("message") if isinstance(error, dict) else error)
                        self.received.append(ReceivedError("error event (text)", None, text))
                elif kind == "raw_model_event" and event.data.type == "error":
                    self.server_errors[str(event.data.error)[:200]] += 1
        except Exception as exc:  # a stored exception: the SDK closed the session first
            self.received.append(ReceivedError("raised from the iterator", exc))


# --- a minimal raw WebSocket client: the simulator's ceiling -----------------------------------


class RawClient:
    """Answers each call as soon as its arguments are done, and sends response.create when
    outputs are owed and the server has no response in progress (checked after the frames
    already received are read, the rule rtguard follows too). Nothing else: the simulator's
    ceiling for the same protocol work."""

    label = "raw WebSocket client"

    def __init__(self, audio: AudioSink | None = None) -> None:
        self._audio = audio
        self._target = _Target()
        self.received: list[ReceivedError] = []
        self.server_errors: Counter[str] = Counter()
        self.dropped = 0  # never: websockets stops reading instead
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._creator: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._active = False  # the server has a response in progress
        self._owed = False  # outputs sent since the last response.create

    @property
    def delivered(self) -> int:
        return self._target.delivered

    async def open(self, url: str) -> None:
        self._ws = await websockets.connect(url, compression=None, max_size=16 * 1024 * 1024)
        update = {"type": "session.update", "session": {"type": "realtime", "tools": []}}
        await self._ws.send(json.dumps(update))
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        ws, ids, bump = self._ws, self._ids, self._target.bump
        audio, b64decode = self._audio, base64.b64decode
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in ws:
                event = json.loads(frame)
                kind = event["type"]
                if kind == AUDIO_DELTA:
                    if audio is not None:
                        audio(b64decode(event["delta"]))
                elif kind == "response.function_call_arguments.done":
                    item = {"type": "function_call_output", "call_id": event["call_id"]}
                    item["output"] = "ok"
                    out = {"type": "conversation.item.create", "event_id": f"c{next(ids)}"}
                    out["item"] = item
                    await ws.send(json.dumps(out))
                    self._owed = True
                    bump()
                elif kind == "response.created":
                    self._active = True
                elif kind == "response.done":
                    self._active = False
                    if self._owed:
                        self._schedule_create()
                elif kind == "error":
                    code = str(event.get("error", {}).get("code"))
                    self.server_errors[code] += 1
                    if code == "conversation_already_has_active_response":
                        self._owed = True  # refused: ask again once the server is idle
                        if not self._active:
                            self._schedule_create()

    def _schedule_create(self) -> None:
        if self._creator is None or self._creator.done():
            self._creator = asyncio.create_task(self._create_if_idle())

    async def _create_if_idle(self) -> None:
        if self._owed and not self._active:
            self._owed = False
            create = {"type": "response.create", "event_id": f"c{next(self._ids)}"}
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ws.send(json.dumps(create))

    async def wait_delivered(self, count: int, timeout: float) -> bool:
        return await self._target.wait(count, timeout)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        for task in (self._reader, self._creator):
            if task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(task, 10)


def cpu_seconds() -> float:
    """CPU time of this process (all threads: span export threads count against the client)."""
    return time.process_time()

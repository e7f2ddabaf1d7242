"""The realtime session: the asyncio layer that carries out what the call ledger decides.

It owns the transport, runs the tools, turns their results (or exceptions) into one
:class:`ToolOutput` each, and executes the ledger's actions. Telemetry observes the same
points; it never decides anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from . import _protocol as protocol
from ._agent import Agent, Handoff
from ._errors import (
    ConfigurationError,
    ConnectionLostError,
    InvalidArgumentsError,
    ProtocolError,
    ServerRejectedError,
    SessionClosedError,
    ToolTimeoutError,
    UnknownToolError,
)
from ._events import (
    CallIncomplete,
    HandoffCompleted,
    OutputAcknowledged,
    OutputSendFailed,
    OutputSent,
    ProtocolErrorEvent,
    SessionClosed,
    SessionEvent,
    ToolApprovalRequested,
    ToolCallStarted,
    ToolFailed,
    ToolSucceeded,
)
from ._failures import FailureOutput, ToolFailure, default_failure_output, redact
from ._ledger import (
    AckDeadline,
    Action,
    Call,
    CallLedger,
    CallSettled,
    CallState,
    IncompleteReason,
    Outcome,
    ResponseDeadline,
    ResponseEndAssumed,
    RetryPolicy,
    RetrySend,
    SendOutput,
    SendResponseCreate,
    StartTimer,
    TimerKey,
    ToolOutput,
)
from ._tools import FunctionTool, serialize_result
from ._transport import DEFAULT_MAX_FRAME_BYTES, Transport, WebSocketTransport
from .telemetry import SessionTelemetry, Telemetry

__all__ = ["DEFAULT_URL", "RealtimeSession", "SessionConfig"]

logger = logging.getLogger("rtguard")

DEFAULT_URL = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
DEFAULT_REJECTION = "The user declined to run this tool call."

OnToolError = Literal["continue", "raise", "close"]


@dataclass(frozen=True)
class SessionConfig:
    """How a session behaves; every field has a production default.

    ``on_tool_error``: "continue" reports a failed call as a :class:`ToolFailed` event;
    "raise" raises the original exception from the event iterator once the model has the
    failure output; "close" does the same, then closes the session.
    ``async_tool_calls=False`` runs each call to completion before reading the next event.
    """

    async_tool_calls: bool = True
    on_tool_error: OnToolError = "continue"
    failure_output: FailureOutput = default_failure_output
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    close_timeout: float = 5.0
    ack_timeout: float = 10.0
    response_timeout: float = 60.0
    max_argument_bytes: int = 1_000_000
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    remember_settled_calls: int = 10_000
    session_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_tool_error not in ("continue", "raise", "close"):
            raise ConfigurationError(f"unknown on_tool_error {self.on_tool_error!r}")


@dataclass(frozen=True, slots=True)
class _Raise:
    error: BaseException


_END = object()


class RealtimeSession:
    """A guarded realtime session: every call the model issues ends with exactly one
    ``function_call_output`` the model sees, or is reported incomplete with its reason.

    Use it as an async context manager and iterate over it for :data:`SessionEvent` values.
    """

    def __init__(
        self,
        agent: Agent,
        *,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        config: SessionConfig | None = None,
        transport: Transport | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if not isinstance(agent, Agent):
            raise ConfigurationError(f"RealtimeSession needs an Agent, not {type(agent).__name__}")
        self.config = config or SessionConfig()
        self._agent = agent
        self._url = url
        self.__api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._transport = transport
        self._event_ids = protocol.event_ids()
        self.ledger = CallLedger(
            self.config.retry,
            event_ids=self._event_ids,
            remember_settled=self.config.remember_settled_calls,
            ack_timeout=self.config.ack_timeout,
            response_timeout=self.config.response_timeout,
        )
        self._telemetry: SessionTelemetry = (telemetry or Telemetry.default()).session(self)
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._response_timer: asyncio.TimerHandle | None = None
        self._approvals: dict[str, asyncio.Future[str | None]] = {}
        self._receiver: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._settled_all = asyncio.Event()
        self._ended = False
        self.session_id: str | None = None

    def __repr__(self) -> str:
        return f"<RealtimeSession agent={self._agent.name!r} url={self._url.split('?')[0]!r}>"

    @property
    def agent(self) -> Agent:
        """The active agent (changes on a successful handoff)."""
        return self._agent

    @property
    def closed(self) -> bool:
        return self._closing is not None

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> RealtimeSession:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._transport is None:
            if self._url == DEFAULT_URL and not self.__api_key:
                raise ConfigurationError("the OpenAI endpoint needs an api_key (or OPENAI_API_KEY)")
            headers = {"Authorization": f"Bearer {self.__api_key}"} if self.__api_key else {}
            self._transport = await WebSocketTransport.connect(
                self._url, headers, max_frame_bytes=self.config.max_frame_bytes
            )
        try:
            await self._send(self._session_update(self._agent))
        except BaseException:
            await self._transport.close()
            raise
        self._telemetry.session_started()
        self._receiver = asyncio.create_task(self._receive_loop(), name="rtguard-receive")

    async def close(self) -> None:
        """Close gracefully: wait up to ``close_timeout`` for running tools and their outputs,
        then account for every call still open as incomplete (``session_closed``)."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._shutdown(None), name="rtguard-close")
        await asyncio.shield(self._closing)

    async def _shutdown(self, lost: ConnectionLostError | None) -> None:
        if lost is None and self.ledger.open_count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled_all.wait(), self.config.close_timeout)
        for timer in self._timers:
            timer.cancel()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        reason = IncompleteReason.CONNECTION_LOST if lost else IncompleteReason.SESSION_CLOSED
        await self._execute(self.ledger.close_all(reason, time.monotonic()))
        if self._receiver is not None and self._receiver is not asyncio.current_task():
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
        if self._transport is not None:
            try:
                await self._transport.close()
            except Exception as exc:
                self._telemetry.swallowed("transport_close", exc)
        self._telemetry.session_ended()
        self._emit(SessionClosed("connection_lost" if lost else "closed", lost))
        self._events.put_nowait(_END)

    # --- events for the app --------------------------------------------------------------

    def __aiter__(self) -> RealtimeSession:
        return self

    async def __anext__(self) -> SessionEvent:
        if self._ended:
            raise StopAsyncIteration
        item = await self._events.get()
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        if isinstance(item, _Raise):
            raise item.error
        event: SessionEvent = item
        return event

    def _emit(self, event: SessionEvent) -> None:
        self._events.put_nowait(event)

    # --- what the app can send -----------------------------------------------------------

    async def send_message(self, text: str) -> None:
        """Add a user message and ask the model to respond."""
        await self._send(protocol.build_user_message(next(self._event_ids), text))
        await self._execute(self.ledger.request_response())

    async def send_audio(self, pcm: bytes, *, commit: bool = False) -> None:
        """Append audio to the input buffer (server VAD decides turns unless ``commit``)."""
        audio = base64.b64encode(pcm).decode("ascii")
        await self._send(protocol.build_audio_append(next(self._event_ids), audio))
        if commit:
            await self._send(protocol.build_audio_commit(next(self._event_ids)))

    async def interrupt(self) -> None:
        """Cancel the model's current response (the user started talking)."""
        await self._send(protocol.build_response_cancel(next(self._event_ids)))

    def approve(self, call_id: str) -> None:
        self._decide(call_id, None)

    def reject(self, call_id: str, message: str = DEFAULT_REJECTION) -> None:
        """Refuse a call awaiting approval; ``message`` is the output the model gets."""
        self._decide(call_id, message)

    def _decide(self, call_id: str, rejection: str | None) -> None:
        future = self._approvals.get(call_id)
        if future is None or future.done():
            raise KeyError(f"no call awaiting approval with call_id {call_id!r}")
        future.set_result(rejection)

    async def _send(self, event: dict[str, Any]) -> None:
        if self._closing is not None or self._transport is None:
            raise SessionClosedError("the session is closed")
        await self._transport.send(protocol.encode(event))

    def _session_update(self, agent: Agent) -> dict[str, Any]:
        return protocol.build_session_update(
            next(self._event_ids),
            agent.instructions,
            agent.tool_schemas(),
            self.config.session_options,
        )

    # --- what the server sends -----------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._transport is not None
        try:
            while True:
                frame = await self._transport.recv()
                try:
                    event = protocol.parse_server_event(frame)
                except ProtocolError as exc:
                    self._telemetry.protocol_error(exc.reason)
                    logger.warning("skipped a server event: %s", exc)
                    self._emit(ProtocolErrorEvent(exc.reason, exc.detail))
                    continue
                self._emit(event)
                try:
                    await self._dispatch(event)
                except Exception as exc:  # a bug here must not stop the session
                    self._telemetry.swallowed("dispatch", exc)
        except Exception as exc:  # a transport may raise something of its own once it breaks
            lost = exc if isinstance(exc, ConnectionLostError) else ConnectionLostError(repr(exc))
            if self._closing is None:
                logger.warning("realtime connection lost: %s", redact(str(lost)))
                self._closing = asyncio.create_task(self._shutdown(lost), name="rtguard-lost")

    async def _dispatch(self, event: protocol.ServerEvent) -> None:
        now = time.monotonic()
        match event:
            case protocol.FunctionCallReady(call=function_call):
                await self._accept(function_call)
            case protocol.ResponseDone(response_id=response_id, calls=calls):
                for function_call in calls:
                    await self._accept(function_call)
                self._telemetry.response_finished(response_id)
                self._start(self.ledger.response_done(response_id))
            case protocol.ResponseCreated(response_id=response_id):
                self._telemetry.response_started(response_id)
                self._start(self.ledger.response_created(response_id))
            case protocol.FunctionOutputConfirmed(call_id=call_id):
                self._start(self.ledger.acknowledged(call_id, now))
            case protocol.ServerError(code=code, message=message, client_event_id=event_id):
                self._telemetry.server_error(code)
                logger.warning("server error %s: %s (for %s)", code, redact(message), event_id)
                error = ServerRejectedError(code, message)
                self._start(self.ledger.server_error(event_id, error, now))
            case protocol.SessionInfo(session_id=session_id) if session_id:
                self.session_id = session_id
                self._telemetry.session_identified(session_id)

    async def _accept(self, function_call: protocol.FunctionCall) -> None:
        call = self.ledger.receive(function_call, time.monotonic())
        if call is None:
            return  # a call_id we already have: the tool runs once
        self._settled_all.clear()
        self._telemetry.call_received(call, self._agent, self._agent.find(call.tool_name))
        if self.config.async_tool_calls:
            self._spawn(self._run_call(call))
        else:
            await self._run_call(call)

    # --- running a call ------------------------------------------------------------------

    async def _run_call(self, call: Call) -> None:
        output, new_agent = await self._produce_output(call)
        if new_agent is not None:
            output = await self._hand_off(call, new_agent, output)
        self._telemetry.output_ready(call, output)
        if output.outcome is Outcome.SUCCESS:
            self._emit(ToolSucceeded(call.call_id, call.tool_name, output.text))
        elif output.error is not None and not output.raise_to_app:
            self._emit(
                ToolFailed(call.call_id, call.tool_name, output.outcome, output.error, output.text)
            )
        await self._execute(self.ledger.output_ready(call.call_id, output))

    async def _produce_output(self, call: Call) -> tuple[ToolOutput, Agent | None]:
        """The one place a call's result, or its failure, becomes a ToolOutput."""
        if self._closing is not None:  # still answer, so the model is not left waiting
            closing = SessionClosedError("the session is closing; the tool was not run")
            return self._failed(call, Outcome.ERROR, closing), None
        target = self._agent.find(call.tool_name)
        if target is None:
            return self._failed(call, Outcome.UNKNOWN_TOOL, UnknownToolError(call.tool_name)), None
        if isinstance(target, Handoff):
            self.ledger.start(call.call_id)
            try:
                agent = await target.resolve()
            except Exception as exc:
                return self._failed(call, Outcome.HANDOFF_FAILED, exc), None
            return ToolOutput(json.dumps({"assistant": agent.name}), Outcome.SUCCESS), agent
        try:
            kwargs = self._parse_arguments(target, call)
        except InvalidArgumentsError as exc:
            return self._failed(call, Outcome.INVALID_ARGUMENTS, exc, target), None
        try:
            if await target.requires_approval(kwargs):
                rejection = await self._wait_for_approval(call, kwargs)
                if rejection is not None:
                    return ToolOutput(rejection, Outcome.REJECTED), None
            self.ledger.start(call.call_id)
            self._emit(ToolCallStarted(call.call_id, call.tool_name, kwargs))
            with self._telemetry.tool_context(call):
                value = await target.call(kwargs)
            return ToolOutput(serialize_result(target.name, value), Outcome.SUCCESS), None
        except ToolTimeoutError as exc:
            raise_now = target.timeout_behavior == "raise_exception"
            return self._failed(call, Outcome.TIMEOUT, exc, target, raise_to_app=raise_now), None
        except Exception as exc:
            return self._failed(call, Outcome.ERROR, exc, target), None

    def _parse_arguments(self, tool: FunctionTool, call: Call) -> dict[str, Any]:
        size = len(call.arguments.encode()) if call.arguments is not None else 0
        if size > self.config.max_argument_bytes:
            raise InvalidArgumentsError(
                tool.name,
                f"arguments are {size} bytes; the limit is {self.config.max_argument_bytes}",
            )
        return tool.parse_arguments(call.arguments)

    async def _wait_for_approval(self, call: Call, kwargs: dict[str, Any]) -> str | None:
        self.ledger.await_approval(call.call_id)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._approvals[call.call_id] = future
        self._emit(ToolApprovalRequested(call.call_id, call.tool_name, kwargs))
        try:
            return await future
        finally:
            del self._approvals[call.call_id]

    def _failed(
        self,
        call: Call,
        outcome: Outcome,
        error: BaseException,
        tool: FunctionTool | None = None,
        *,
        raise_to_app: bool = False,
    ) -> ToolOutput:
        failure = ToolFailure(call.tool_name, call.call_id, outcome, error)
        formatter = (tool.failure_output if tool else None) or self.config.failure_output
        try:
            text = formatter(failure)
        except Exception as exc:  # a broken formatter must not cost the model its output
            self._telemetry.swallowed("failure_output", exc)
            text = default_failure_output(failure)
        raise_to_app = raise_to_app or self.config.on_tool_error != "continue"
        return ToolOutput(text, outcome, error, raise_to_app)

    async def _hand_off(self, call: Call, agent: Agent, output: ToolOutput) -> ToolOutput:
        """Switch agents: the new instructions and tools reach the server before the output."""
        previous = self._agent
        try:
            await self._send(self._session_update(agent))
        except Exception as exc:
            return self._failed(call, Outcome.HANDOFF_FAILED, exc)
        self._agent = agent
        self._telemetry.handoff(call, previous, agent)
        self._emit(HandoffCompleted(call.call_id, previous.name, agent.name))
        return output

    # --- carrying out the ledger's actions -----------------------------------------------

    async def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case SendOutput():
                    await self._send_output(action)
                case SendResponseCreate(event_id=event_id):
                    await self._send_response_create(event_id)
                case _:
                    self._execute_now(action)

    def _start(self, actions: list[Action]) -> None:
        """Carry out actions from the receive loop or a timer without blocking on I/O."""
        if any(isinstance(a, SendOutput | SendResponseCreate) for a in actions):
            self._spawn(self._execute(actions))
        else:
            for action in actions:
                self._execute_now(action)

    def _execute_now(self, action: Action) -> None:
        match action:
            case StartTimer(key=key, delay=delay):
                self._start_timer(key, delay)
            case CallSettled(call=call):
                self._settled(call)
            case ResponseEndAssumed(response_id=response_id):
                logger.warning("no response.done for %s in time; carrying on", response_id)
                self._telemetry.protocol_error("response_timeout")
                self._telemetry.response_finished(response_id)

    async def _send_output(self, action: SendOutput) -> None:
        call, attempt = action.call, action.call.send_attempts
        assert call.output is not None
        assert self._transport is not None
        frame = protocol.encode(
            protocol.build_function_call_output(action.event_id, call.call_id, call.output.text)
        )
        started_ns = time.time_ns()
        try:
            await self._transport.send(frame)
        except Exception as exc:
            connection_open = self._transport.is_open and not isinstance(exc, ConnectionLostError)
            actions = self.ledger.send_failed(
                call.call_id, exc, connection_open=connection_open, now=time.monotonic()
            )
            will_retry = any(
                isinstance(a, StartTimer) and isinstance(a.key, RetrySend) for a in actions
            )
            self._telemetry.send_attempt(call, attempt, started_ns, exc, will_retry=will_retry)
            logger.warning(
                "sending the output of call %s failed (attempt %d): %s",
                call.call_id,
                attempt,
                redact(repr(exc)),
            )
            self._emit(OutputSendFailed(call.call_id, call.tool_name, attempt, exc, will_retry))
        else:
            self._telemetry.send_attempt(call, attempt, started_ns, None, will_retry=False)
            actions = self.ledger.send_succeeded(call.call_id, time.monotonic())
            self._emit(OutputSent(call.call_id, call.tool_name, attempt))
        await self._execute(actions)

    async def _send_response_create(self, event_id: str) -> None:
        assert self._transport is not None
        try:
            await self._transport.send(protocol.encode(protocol.build_response_create(event_id)))
        except Exception as exc:
            self._telemetry.swallowed("response_create", exc)
            await self._execute(self.ledger.response_create_failed())
        else:
            self.ledger.response_create_sent()

    def _start_timer(self, key: TimerKey, delay: float) -> None:
        call = self.ledger.get(key.call_id) if isinstance(key, RetrySend | AckDeadline) else None
        if call is not None and isinstance(key, RetrySend):
            self._telemetry.retry_scheduled(call, delay)

        def due() -> None:
            self._timers.discard(handle)
            self._start(self.ledger.timer_due(key, time.monotonic()))

        handle = asyncio.get_running_loop().call_later(delay, due)
        self._timers.add(handle)
        # One timer per call, one for the response in progress: a newer one replaces the older,
        # so a long session does not pile up a deadline per response or per output.
        if call is not None:
            self._cancel_timer(call)
            call.annotations["timer"] = handle
        elif isinstance(key, ResponseDeadline):
            if self._response_timer is not None:
                self._response_timer.cancel()
                self._timers.discard(self._response_timer)
            self._response_timer = handle

    def _cancel_timer(self, call: Call) -> None:
        handle = call.annotations.pop("timer", None)
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    def _settled(self, call: Call) -> None:
        self._cancel_timer(call)
        self._telemetry.call_settled(call)
        output = call.output
        if call.state is CallState.ACKNOWLEDGED:
            assert output is not None
            assert call.settled_at is not None
            latency = call.settled_at - call.received_at
            self._emit(OutputAcknowledged(call.call_id, call.tool_name, output.outcome, latency))
        else:
            assert call.incomplete_reason is not None
            logger.error(
                "call %s (%s) ended without output: %s",
                call.call_id,
                call.tool_name,
                call.incomplete_reason.value,
            )
            self._emit(
                CallIncomplete(
                    call.call_id, call.tool_name, call.incomplete_reason, call.last_send_error
                )
            )
        if output is not None and output.raise_to_app and output.error is not None:
            self._events.put_nowait(_Raise(output.error))
            if self.config.on_tool_error == "close" and self._closing is None:
                self._closing = asyncio.create_task(self._shutdown(None), name="rtguard-close")
        if self.ledger.open_count == 0:
            self._settled_all.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._telemetry.swallowed("task", exc)

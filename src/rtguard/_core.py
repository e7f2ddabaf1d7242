"""The session core: every decision of a realtime tool-call session, without I/O.

Shaped like aioquic's ``QuicConnection``. The asyncio layer feeds it inputs (a server frame,
a job's result, a write that completed or failed, the timer, an app call) and after each one
drains what it produced, in order:

- :meth:`next_event`: the facts the app iterates and telemetry observes;
- :meth:`next_frame`: client frames for the single writer;
- :meth:`next_job`: user code to run for a call (arguments and approval policy, the tool,
  a handoff factory), whose result comes back through :meth:`job_done`;
- :meth:`next_link_action`: drop the connection, or open a new one (:class:`Disconnect`,
  :class:`Connect`), answered by :meth:`connected` or :meth:`connect_failed`;
- :meth:`next_deadline` / :meth:`handle_timer`: the one timer; the core owns every deadline
  (send retry, acknowledgement, handoff confirmation, response, close, reconnect, rollover).

Every outcome of a call, success or any failure, flows through :meth:`_finish` into one
``ToolOutput`` and the same send path, and every call ends in :meth:`_settle`.

A connection is only a carrier. When it ends, open calls stay open (their tools keep running)
and the app's frames are held; on the next connection :meth:`connected` derives every frame
the conversation needs from the state, the same way for the first connection and for any
later one: the agent's ``session.update``, the replayed history, each open call's
``function_call`` and then its output, the held frames.
"""

from __future__ import annotations

import enum
import json
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _protocol as protocol
from ._agent import Agent, Handoff
from ._boundary import Raised, call_user_sync, safe_str, type_name
from ._config import SessionConfig
from ._deadlines import Deadlines
from ._errors import (
    ConnectionLostError,
    HandoffError,
    InvalidArgumentsError,
    ProtocolError,
    ServerRejectedError,
    SessionClosedError,
    ToolResultError,
    UnknownToolError,
)
from ._events import (
    AppFrameDone,
    CallIncomplete,
    CoreEvent,
    ErrorSwallowed,
    HandoffCompleted,
    OutputAcknowledged,
    OutputSendFailed,
    OutputSent,
    ProtocolErrorEvent,
    RaiseToApp,
    Reconnecting,
    SessionClosed,
    SessionResumed,
    SessionStarted,
    ToolApprovalRequested,
    ToolCallReceived,
    ToolCallStarted,
    ToolFailed,
    ToolFailedRaised,
    ToolRejected,
    ToolSucceeded,
)
from ._failures import ToolFailure, default_failure_output
from ._history import DEFAULT_REPLAY_ITEMS, History, replay_last
from ._ledger import (
    Call,
    CallLedger,
    CallState,
    IncompleteReason,
    Outcome,
    ToolOutput,
)
from ._reconnect import EXPIRED_ERROR_CODE, FATAL_ERROR_CODES, Loss, classify
from ._tools import FunctionTool
from ._turns import Turns

__all__ = [
    "Connect",
    "CoreState",
    "Disconnect",
    "Execute",
    "Failed",
    "Frame",
    "Job",
    "JobResult",
    "LinkAction",
    "Prepare",
    "Prepared",
    "ResolveHandoff",
    "Resolved",
    "Returned",
    "SessionCore",
]

logger = logging.getLogger("rtguard")


class CoreState(enum.IntEnum):
    IDLE = 0  # not connected yet
    OPEN = 1
    CLOSING = 2  # close() asked: no new tools run, open calls get close_timeout to finish
    # SessionClosed was emitted: nothing is sent or scheduled after it. A call that still
    # arrives while the connection closes is reported incomplete; the asyncio layer passes
    # SessionClosed on once the connection has closed, so the app sees that report first.
    CLOSED = 3


# --- what the asyncio layer carries out ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """A client event to write; ``call`` is set for an output attempt. An ``app`` frame is one
    the app sent (a message, audio): it is held while there is no connection, and its sender
    waits for its :class:`AppFrameDone`."""

    event_id: str
    text: str
    call: Call | None = None
    app: bool = False


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Stop using the connection and close it (it broke, or rtguard rolls over)."""


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a new connection (``attempt``, 1-based, since the last one ended)."""

    attempt: int


LinkAction = Disconnect | Connect


@dataclass(frozen=True, slots=True)
class Prepare:
    """Validate the arguments and ask the tool's approval policy."""

    call: Call
    tool: FunctionTool


@dataclass(frozen=True, slots=True)
class Execute:
    call: Call
    tool: FunctionTool
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResolveHandoff:
    call: Call
    handoff: Handoff


Job = Prepare | Execute | ResolveHandoff


@dataclass(frozen=True, slots=True)
class Prepared:
    kwargs: dict[str, Any]
    needs_approval: bool


@dataclass(frozen=True, slots=True)
class Returned:
    """The tool returned; ``text`` is its value serialised for the model."""

    text: str


@dataclass(frozen=True, slots=True)
class Failed:
    outcome: Outcome
    error: BaseException


@dataclass(frozen=True, slots=True)
class Resolved:
    """A handoff factory returned the agent to switch to."""

    agent: Agent


JobResult = Prepared | Returned | Failed | Resolved

# Deadline keys other than a call's own (the call's key is its Call object).
_CLOSE = "close"
_CREATE_BACKOFF = "response_create_backoff"
_RECONNECT = "reconnect"
_ROLLOVER = "rollover"  # from here, roll over at the first quiet moment
_ROLLOVER_DEADLINE = "rollover_deadline"  # roll over now, quiet or not
# What each unretried loss closes the session as, and what it makes of open calls.
_FINAL_LOSSES = {
    Loss.SERVER_CLOSED: ("server_closed", IncompleteReason.SERVER_CLOSED),
    Loss.REFUSED: ("reconnect_failed", IncompleteReason.RECONNECT_FAILED),
}


@dataclass(frozen=True, slots=True)
class _Response:
    """The deadline key of one response in progress."""

    epoch: int


@dataclass(frozen=True, slots=True)
class _SessionUpdate:
    """A ``session.update`` waiting for the server's ``session.updated`` (or ``error``)."""

    event_id: str
    call: Call | None  # the handoff it applies, if any


@dataclass(slots=True)
class _Outage:
    """The time without a connection, from the loss until a new one opens."""

    reason: Loss
    since: float
    error: ConnectionLostError | None
    attempts: int  # connection attempts so far (the last resume's, until it was confirmed)


class SessionCore:
    def __init__(
        self, agent: Agent, config: SessionConfig, *, random: Callable[[], float] = random.random
    ) -> None:
        self.agent = agent
        self.config = config
        self.state = CoreState.IDLE
        self._has_connection = False  # a connection is up: frames may be handed out
        self.session_id: str | None = None
        self._random = random
        self._turns = Turns()
        self.ledger = CallLedger(
            remember_settled=config.remember_settled_calls, on_move=self._turns.call_moved
        )
        self._deadlines = Deadlines()
        self._event_ids = protocol.event_ids()
        # Lists, not deques, for what is drained after every input or holds a handful: each
        # holds a few items at a time, and an empty deque costs 760 bytes (a list 56).
        self._events: list[CoreEvent] = []
        self._frames: deque[Frame] = deque()  # holds the app's frames through an outage
        self._jobs: list[Job] = []
        self._waiting: deque[Call] = deque()  # RECEIVED calls waiting for a tool slot
        self._attempts: dict[str, Call] = {}  # output event_id -> call, while refusable
        self._updates: list[_SessionUpdate] = []
        self._response_create_id: str | None = None
        self._create_failures = 0
        self._response_deadline: _Response | None = None  # armed for the response in progress
        self._writing: Frame | None = None  # handed to the writer, its fate not reported yet
        self._link_actions: list[LinkAction] = []
        self._outage: _Outage | None = None
        self._unconfirmed_attempts = 0  # of the last resume, until its session.updated
        self._carries: dict[str, Call] = {}  # recreated function_call event_id -> call
        self._server_error_code: str | None = None  # a connection-wide error, for the loss
        self._rollover_due = False
        self._user_turn = False  # the user spoke; no response has started since
        policy = config.reconnect
        self._history = History(policy.history_items, policy.history_bytes) if policy else None
        self._handlers = {
            protocol.SessionInfo: self._on_session_info,
            protocol.ResponseCreated: self._on_response_created,
            protocol.FunctionCallReady: self._on_function_call,
            protocol.ResponseDone: self._on_response_done,
            protocol.ItemConfirmed: self._on_item_confirmed,
            protocol.ItemRemoved: self._on_item_removed,
            protocol.ItemTranscribed: self._on_item_transcribed,
            protocol.UserSpeech: self._on_user_speech,
            protocol.ServerError: self._on_server_error,
        }

    # --- what the asyncio layer drains ------------------------------------------------------

    def next_event(self) -> CoreEvent | None:
        return self._events.pop(0) if self._events else None

    def next_frame(self) -> Frame | None:
        """The next frame to write (None while there is no connection); output attempts that
        went stale in the queue are skipped."""
        while self._has_connection and self._frames:
            frame = self._frames.popleft()
            call = frame.call
            if call is None or (call.in_flight and call.event_id == frame.event_id):
                self._writing = frame
                return frame
        return None

    def next_link_action(self) -> LinkAction | None:
        return self._link_actions.pop(0) if self._link_actions else None

    def next_job(self) -> Job | None:
        return self._jobs.pop(0) if self._jobs else None

    def next_deadline(self) -> float | None:
        return self._deadlines.earliest()

    @property
    def has_frames(self) -> bool:
        return self._has_connection and bool(self._frames)

    # --- inputs: the connection -------------------------------------------------------------

    def connected(self, now: float) -> None:
        """A connection is open (the first one, or one after a loss): queue everything the
        conversation needs on it, in order, before the app's held frames."""
        if self.state is CoreState.CLOSED or self._has_connection:
            return
        if self.state is CoreState.IDLE:
            self.state = CoreState.OPEN
            self._emit(SessionStarted(self.agent.name))
        held, self._frames = self._frames, deque()
        self._has_connection = True
        self._server_error_code = None
        self._user_turn = False
        self._arm_rollover(now)
        self._send_session_update(self.agent, None, now)
        for call in self.ledger:
            if call.state is CallState.HANDING_OFF:
                assert call.handoff_to is not None
                self._send_session_update(call.handoff_to, call, now)
        outage, self._outage = self._outage, None
        replayed = self._replay() if outage is not None else 0
        carried = tuple(self._carry(call) for call in self.ledger)
        for call in self.ledger:
            if call.state is CallState.OUTPUT_READY:
                self._attempt(call)
        self._frames.extend(held)
        if outage is not None:
            self._unconfirmed_attempts = outage.attempts
            gap = now - outage.since
            self._emit(SessionResumed(outage.reason, outage.attempts, gap, replayed, carried))
        self._after_input(now)

    def connect_failed(self, error: ConnectionLostError, now: float) -> None:
        """The attempt a :class:`Connect` asked for failed."""
        outage = self._outage
        if self.state is CoreState.CLOSED or outage is None:
            return
        outage.error = error
        if classify(error) is Loss.REFUSED:
            logger.error("reconnecting refused, giving up: %s", safe_str(error))
            self._close_now("reconnect_failed", IncompleteReason.RECONNECT_FAILED, error, now)
        else:
            self._retry_connection(now)

    def receive_frame(self, frame: str | bytes, now: float) -> bool:
        """A server frame. Returns whether rtguard acted on it; if not (an audio or
        transcript delta, fifty a second while the model speaks, or a frame it skipped) only
        events came out of it, and nothing else needs draining."""
        if self.state is CoreState.CLOSED:
            return self._receive_while_closing(frame, now)
        if not self._has_connection:
            return False
        try:
            event = protocol.parse_server_event(frame)
        except ProtocolError as exc:
            logger.warning("skipped a server event: %s", exc)
            self._emit(ProtocolErrorEvent(exc.reason, exc.detail))
            return False
        self._emit(event)
        handler = self._handlers.get(type(event))
        if handler is None:
            # It changed nothing, so nothing follows from it: every input that changes the
            # state ends with _after_input, which derives only from the state.
            return False
        handler(event, now)  # type: ignore[operator]
        self._after_input(now)
        return True

    def _receive_while_closing(self, frame: str | bytes, now: float) -> bool:
        """What the server sent before it saw our close: the calls in it are accounted for,
        nothing else is passed on."""
        try:
            event = protocol.parse_server_event(frame)
        except ProtocolError:
            return False
        if isinstance(event, protocol.FunctionCallReady):
            self._receive_call(event.call, now)
        elif isinstance(event, protocol.ResponseDone):
            for function_call in event.calls:
                self._receive_call(function_call, now)
        return False

    def frame_written(self, frame: Frame, now: float) -> None:
        if self.state is CoreState.CLOSED:
            return
        self._writing = None
        call = frame.call
        if frame.app:
            self._emit(AppFrameDone(frame.event_id, None))
        elif call is not None and self._current_attempt(call, frame.event_id):
            call.in_flight = False
            self._emit(OutputSent(call.call_id, call.tool_name, call.send_attempts))
            self.ledger.move(call, CallState.OUTPUT_SENT)
            self._deadlines.set(call, now + self.config.ack_timeout)
        elif frame.event_id == self._response_create_id:
            self._create_failures = 0
        self._after_input(now)

    def frame_failed(
        self, frame: Frame, error: BaseException, connection_open: bool, now: float
    ) -> None:
        if self.state is CoreState.CLOSED:
            return
        call = frame.call
        current = call is not None and self._current_attempt(call, frame.event_id)
        if not connection_open:
            if not self._has_connection:
                return  # the loss was already taken in (the reader saw it first)
            lost = error if isinstance(error, ConnectionLostError) else _lost(error)
            reason = classify(lost, self._server_error_code)
            if call is not None and current:
                call.last_send_error = error
                carried = self._reconnects(reason)
                attempt = call.send_attempts
                self._emit(OutputSendFailed(call.call_id, call.tool_name, attempt, error, carried))
            self._lose_connection(reason, lost, now)  # the frame is carried with the rest
            return
        self._writing = None
        if frame.app:
            self._emit(AppFrameDone(frame.event_id, error))
        elif call is not None and current:
            call.in_flight = False
            call.last_send_error = error
            self._attempt_failed(call, error, now)
        elif frame.event_id == self._response_create_id:
            self._response_create_id = None
            self._turns.create_failed()
            self._create_failures += 1
            if self._create_failures < self.config.retry.max_attempts:
                delay = self.config.retry.backoff(self._create_failures)
                self._deadlines.set(_CREATE_BACKOFF, now + delay)
            else:
                self._create_failures = 0
                self._turns.wanted = False
                self._swallowed("response_create", error)
        else:
            self._update_refused(frame.event_id, error)
        self._after_input(now)

    def connection_lost(self, error: ConnectionLostError, now: float) -> None:
        """The connection ended (the reader saw it close or break)."""
        if self.state is CoreState.CLOSED or not self._has_connection:
            return
        self._lose_connection(classify(error, self._server_error_code), error, now)

    # --- inputs: calls ---------------------------------------------------------------------

    def job_done(self, call: Call, result: JobResult, now: float) -> None:
        if call.state is not CallState.RUNNING or self.ledger.get(call.call_id) is not call:
            return  # settled meanwhile (the session closed, the connection was lost)
        match result:
            case Prepared(kwargs=kwargs, needs_approval=True):
                call.kwargs = kwargs
                self.ledger.move(call, CallState.AWAITING_APPROVAL)
                self._emit(ToolApprovalRequested(call.call_id, call.tool_name, kwargs))
            case Prepared(kwargs=kwargs):
                self._execute(call, kwargs)
            case Resolved(agent=agent):
                call.handoff_to = agent
                self.ledger.move(call, CallState.HANDING_OFF)
                self._send_session_update(agent, call, now)
            case Returned(text=text):
                self._finish(call, Outcome.SUCCESS, text=text)
            case Failed(outcome=outcome, error=error):
                self._finish(call, outcome, error=error)
        self._after_input(now)

    def approve(self, call_id: str, now: float) -> None:
        call = self._awaiting_approval(call_id)
        self.ledger.move(call, CallState.RUNNING)
        assert call.kwargs is not None
        self._execute(call, call.kwargs)
        self._after_input(now)

    def reject(self, call_id: str, message: str, now: float) -> None:
        if not isinstance(message, str):
            raise TypeError(f"a rejection message must be a str, not {type_name(message)}")
        self._finish(self._awaiting_approval(call_id), Outcome.REJECTED, text=message)
        self._after_input(now)

    def handle_timer(self, now: float) -> None:
        for key in self._deadlines.pop_due(now):
            if self.state is CoreState.CLOSED:
                return
            if isinstance(key, Call):
                self._call_deadline(key, now)
            elif key == self._response_deadline:
                self._response_deadline = None
                self._response_timed_out()
            elif key == _CLOSE:
                self._close_now("closed", IncompleteReason.SESSION_CLOSED, None, now)
            elif key == _RECONNECT and self._outage is not None:
                self._link_actions.append(Connect(self._outage.attempts))
            elif key == _ROLLOVER:
                self._rollover_due = True
            elif key == _ROLLOVER_DEADLINE and self.state is CoreState.OPEN:
                self._lose_connection(Loss.ROLLOVER, None, now)
        self._after_input(now)

    # --- inputs: the app -------------------------------------------------------------------

    def send_user_message(self, text: str, now: float) -> str:
        event_id = self._send_app_event(protocol.build_user_message, text)
        self._turns.request()
        self._after_input(now)
        return event_id

    def append_audio(self, audio_base64: str) -> str:
        return self._send_app_event(protocol.build_audio_append, audio_base64)

    def commit_audio(self) -> str:
        return self._send_app_event(protocol.build_audio_commit)

    def interrupt(self) -> str | None:
        """Cancel the response in progress; its calls still get outputs, but no response is
        asked for them: whoever interrupted (the user speaking, the app) takes the turn.

        Without a connection there is no response to cancel; the one the loss cut short is
        then not asked for again (None: nothing to send).
        """
        if self.state is CoreState.OPEN and not self._has_connection:
            self._turns.wanted = False
            return None
        return self._send_app_event(protocol.build_response_cancel)

    def close(self, now: float) -> None:
        """Stop running new tools; give open calls ``close_timeout`` to be answered."""
        self._begin_close(now)
        self._after_input(now)

    def report_swallowed(self, place: str, error: BaseException) -> None:
        """The asyncio layer caught ``error`` and carried on (a transport that failed to close)."""
        self._swallowed(place, error)

    # --- server events ---------------------------------------------------------------------

    def _on_session_info(self, event: protocol.SessionInfo, now: float) -> None:
        if event.session_id:
            self.session_id = event.session_id
        if event.type == "session.updated":
            self._unconfirmed_attempts = 0  # the server took the resumed connection
            if self._updates:
                self._update_applied(self._updates.pop(0), now)

    def _on_response_created(self, event: protocol.ResponseCreated, now: float) -> None:
        self._turns.response_created(event.response_id)
        self._user_turn = False  # answered (or pre-empted); being in progress keeps it unquiet

    def _on_function_call(self, event: protocol.FunctionCallReady, now: float) -> None:
        self._receive_call(event.call, now)

    def _on_response_done(self, event: protocol.ResponseDone, now: float) -> None:
        for detail in event.unusable:
            self._emit(ProtocolErrorEvent("invalid_field", detail))
        for function_call in event.calls:
            self._receive_call(function_call, now)
        if event.response_id is not None:
            self.ledger.response_ended(event.response_id)
        self._turns.response_done(event.response_id, event.status)

    def _on_item_confirmed(self, event: protocol.ItemConfirmed, now: float) -> None:
        if event.final and self._history is not None:
            self._history.item_done(event.item)
        if event.output_call_id is None:
            return
        call = self.ledger.get(event.output_call_id)
        if call is None or call.state not in (CallState.OUTPUT_READY, CallState.OUTPUT_SENT):
            return  # not an output of ours, or a second confirmation
        if call.in_flight:  # confirmed before our write returned: it was sent
            call.in_flight = False
            self._emit(OutputSent(call.call_id, call.tool_name, call.send_attempts))
        self._settle(call, CallState.ACKNOWLEDGED, None, now)

    def _on_item_removed(self, event: protocol.ItemRemoved, now: float) -> None:
        if self._history is not None:
            self._history.remove(event.item_id)

    def _on_item_transcribed(self, event: protocol.ItemTranscribed, now: float) -> None:
        if self._history is not None:
            self._history.transcribed(event.item_id, event.content_index, event.transcript)

    def _on_user_speech(self, event: protocol.UserSpeech, now: float) -> None:
        if event.speaking:
            self._user_turn = True

    def _on_server_error(self, event: protocol.ServerError, now: float) -> None:
        logger.warning(
            "server error %s: %s (for %s)", event.code, event.message, event.client_event_id
        )
        event_id = event.client_event_id
        if event_id is None:
            if event.code in FATAL_ERROR_CODES or event.code == EXPIRED_ERROR_CODE:
                self._server_error_code = event.code  # the close that follows is explained
            return
        error = ServerRejectedError(event.code, event.message, event.error_type)
        call = self._attempts.get(event_id)
        carried = self._carries.pop(event_id, None)
        if carried is not None and self.ledger.get(carried.call_id) is carried:
            carried.last_send_error = error
            self._settle(carried, CallState.INCOMPLETE, IncompleteReason.CARRY_FAILED, now)
        elif call is not None and self.ledger.get(call.call_id) is call:
            call.in_flight = False  # refused, whatever our write reports later
            call.last_send_error = error
            self._attempt_failed(call, error, now)
        elif event_id == self._response_create_id:
            self._response_create_id = None
            self._turns.create_refused(event.code)
        else:
            self._update_refused(event_id, error)

    # --- a call's life ---------------------------------------------------------------------

    def _receive_call(self, function_call: protocol.FunctionCall, now: float) -> None:
        call = self.ledger.receive(function_call, self.agent, now)
        if call is None:
            return  # a call_id we already have: the tool runs once
        self._turns.add_call(call, has_response=function_call.response_id is not None)
        self._emit(
            ToolCallReceived(
                call.call_id,
                call.tool_name,
                call.agent,
                call.arguments,
                function_call.response_id,
            )
        )
        if self.state is CoreState.CLOSED:  # the connection is closing: no output can follow
            self._settle(call, CallState.INCOMPLETE, IncompleteReason.SESSION_CLOSED, now)
            return
        target = call.target
        size = len(call.arguments.encode()) if call.arguments is not None else 0
        if self.state is CoreState.CLOSING:
            self._finish_closing(call)
        elif target is None:
            self._finish(call, Outcome.UNKNOWN_TOOL, error=UnknownToolError(call.tool_name))
        elif isinstance(target, FunctionTool) and size > self.config.max_argument_bytes:
            limit = self.config.max_argument_bytes
            error = InvalidArgumentsError(
                call.tool_name, f"arguments are {size} bytes; the limit is {limit}"
            )
            self._finish(call, Outcome.INVALID_ARGUMENTS, error=error)
        else:
            self._waiting.append(call)
            self._start_waiting()

    def _start_waiting(self) -> None:
        limit = None if self.config.async_tool_calls else 1
        while self._waiting and (limit is None or self.ledger.active_count < limit):
            call = self._waiting.popleft()
            self.ledger.move(call, CallState.RUNNING)
            target = call.target
            if isinstance(target, Handoff):
                self._jobs.append(ResolveHandoff(call, target))
            else:
                assert isinstance(target, FunctionTool)
                self._jobs.append(Prepare(call, target))

    def _execute(self, call: Call, kwargs: dict[str, Any]) -> None:
        assert isinstance(call.target, FunctionTool)
        call.kwargs = None
        self._emit(ToolCallStarted(call.call_id, call.tool_name, kwargs))
        self._jobs.append(Execute(call, call.target, kwargs))

    def _awaiting_approval(self, call_id: str) -> Call:
        call = self.ledger.get(call_id)
        if call is None or call.state is not CallState.AWAITING_APPROVAL:
            raise KeyError(f"no call awaiting approval with call_id {call_id!r}")
        return call

    def _finish_closing(self, call: Call) -> None:
        """A call the closing session will not run still gets an output."""
        closing = SessionClosedError("the session is closing; the tool was not run")
        self._finish(call, Outcome.ERROR, error=closing)

    def _finish(
        self,
        call: Call,
        outcome: Outcome,
        *,
        text: str | None = None,
        error: BaseException | None = None,
    ) -> None:
        """The one place a call's result, or its failure, becomes its ToolOutput."""
        limit = self.config.max_output_bytes
        if text is not None and outcome is Outcome.SUCCESS and _too_long(text, limit):
            size = len(text.encode())
            problem = f"the result is {size} bytes; the limit is {limit}"
            error = ToolResultError(call.tool_name, problem)
            outcome, text = Outcome.ERROR, None
        if text is None:
            assert error is not None
            failure = ToolFailure(call.tool_name, call.call_id, outcome, error)
            text = self._failure_text(call, failure)
        raise_to_app = error is not None and self._raises(call, outcome, error)
        call.output = ToolOutput(text, outcome, error, raise_to_app)
        if outcome is Outcome.SUCCESS:
            self._emit(ToolSucceeded(call.call_id, call.tool_name, text))
        elif error is None:
            self._emit(ToolRejected(call.call_id, call.tool_name, text))
        else:
            kind = ToolFailedRaised if raise_to_app else ToolFailed
            self._emit(kind(call.call_id, call.tool_name, outcome, error, text))
        self.ledger.move(call, CallState.OUTPUT_READY)
        self._attempt(call)
        self._start_waiting()

    def _failure_text(self, call: Call, failure: ToolFailure) -> str:
        """The user's failure formatter, behind the boundary: the default if it raises or
        returns something unusable, so a formatter can never cost the model its output."""
        target = call.target
        formatter = (
            target.failure_output if isinstance(target, FunctionTool) else None
        ) or self.config.failure_output
        text = call_user_sync(formatter, failure)
        if isinstance(text, str) and not _too_long(text, self.config.max_output_bytes):
            return text
        if isinstance(text, Raised):
            self._swallowed("failure_output", text.error)
        else:
            problem = "too long" if isinstance(text, str) else f"a {type_name(text)}, not a str"
            self._swallowed("failure_output", TypeError(f"failure_output returned {problem}"))
        return default_failure_output(failure)

    def _raises(self, call: Call, outcome: Outcome, error: BaseException) -> bool:
        """Whether the app gets ``error`` raised from the iterator instead of a ToolFailed."""
        if isinstance(error, StopIteration | StopAsyncIteration):
            return False  # the iterator protocol would swallow them: always an event
        if isinstance(error, KeyboardInterrupt | SystemExit):
            return True  # Python's own "stop now" is never turned into an event
        target = call.target
        strict_timeout = (
            outcome is Outcome.TIMEOUT
            and isinstance(target, FunctionTool)
            and target.timeout_behavior == "raise_exception"
        )
        return strict_timeout or self.config.on_tool_error != "continue"

    def _attempt(self, call: Call) -> None:
        """Queue the call's cached output for (another) attempt; without a connection it
        waits in OUTPUT_READY for the next one."""
        assert call.output is not None
        if not self._has_connection:
            return
        call.send_attempts += 1
        if call.event_id is not None:
            self._attempts.pop(call.event_id, None)
        event_id = call.event_id = next(self._event_ids)
        self._attempts[event_id] = call
        call.in_flight = True
        event = protocol.build_function_call_output(event_id, call.call_id, call.output.text)
        self._frames.append(Frame(event_id, protocol.encode(event), call))

    def _current_attempt(self, call: Call, event_id: str) -> bool:
        current = call.in_flight and call.event_id == event_id
        return current and self.ledger.get(call.call_id) is call

    def _attempt_failed(self, call: Call, error: BaseException, now: float) -> None:
        """A write that raised on an open connection, or a server refusal: retried from the
        cached output if it can succeed (a transient write error, a ``server_error``)."""
        refused = isinstance(error, ServerRejectedError)
        retryable = not isinstance(error, ServerRejectedError) or error.error_type == "server_error"
        call.failed_sends += 1
        will_retry = retryable and call.failed_sends < self.config.retry.max_attempts
        attempt = call.send_attempts
        self._emit(OutputSendFailed(call.call_id, call.tool_name, attempt, error, will_retry))
        if will_retry:
            if call.state is CallState.OUTPUT_SENT:
                self.ledger.move(call, CallState.OUTPUT_READY)
            self._deadlines.set(call, now + self.config.retry.backoff(call.failed_sends))
        else:
            reason = (
                IncompleteReason.REJECTED_BY_SERVER
                if refused
                else IncompleteReason.RETRIES_EXHAUSTED
            )
            self._settle(call, CallState.INCOMPLETE, reason, now)

    def _call_deadline(self, call: Call, now: float) -> None:
        if self.ledger.get(call.call_id) is not call:
            return
        if call.state is CallState.OUTPUT_READY and not call.in_flight:
            self._attempt(call)  # the retry backoff ended
        elif call.state is CallState.OUTPUT_SENT:
            # Resending could give the model two outputs if only the confirmation was lost.
            self._settle(call, CallState.INCOMPLETE, IncompleteReason.UNACKNOWLEDGED, now)
        elif call.state is CallState.HANDING_OFF:
            self._updates = [u for u in self._updates if u.call is not call]
            timeout = self.config.ack_timeout
            error = HandoffError(
                call.tool_name, f"the server did not confirm the handoff within {timeout:g} s"
            )
            self._finish(call, Outcome.HANDOFF_FAILED, error=error)

    def _settle(
        self, call: Call, state: CallState, reason: IncompleteReason | None, now: float
    ) -> None:
        """The one place a call ends: acknowledged, or incomplete with its reason."""
        call.incomplete_reason = reason
        call.settled_at = now
        call.in_flight = False
        self._deadlines.clear(call)
        if call.event_id is not None:
            self._attempts.pop(call.event_id, None)
        if call in self._waiting:
            self._waiting.remove(call)
        self.ledger.move(call, state)
        if reason is None:
            assert call.output is not None
            latency = now - call.received_at
            outcome = call.output.outcome
            self._emit(OutputAcknowledged(call.call_id, call.tool_name, outcome, latency))
        else:
            logger.error(
                "call %s (%s) ended without output: %s", call.call_id, call.tool_name, reason.value
            )
            self._emit(CallIncomplete(call.call_id, call.tool_name, reason, call.last_send_error))
        output = call.output
        if output is not None and output.raise_to_app and output.error is not None:
            self._emit(RaiseToApp(output.error))
            if self.config.on_tool_error == "close":
                self._begin_close(now)
        self._start_waiting()

    # --- handoffs: the new agent's session.update must be confirmed first ------------------

    def _send_session_update(self, agent: Agent, call: Call | None, now: float) -> None:
        """Queue ``agent``'s ``session.update`` (for the handoff ``call``, which waits
        ``ack_timeout`` for its confirmation); without a connection, the next one sends it."""
        if not self._has_connection:
            return
        event_id = next(self._event_ids)
        event = protocol.build_session_update(
            event_id, agent.instructions, agent.tool_schemas(), self.config.session_options
        )
        self._frames.append(Frame(event_id, protocol.encode(event)))
        self._updates.append(_SessionUpdate(event_id, call))
        if call is not None:
            self._deadlines.set(call, now + self.config.ack_timeout)

    def _update_applied(self, update: _SessionUpdate, now: float) -> None:
        call = update.call
        if call is None or call.state is not CallState.HANDING_OFF:
            return
        assert call.handoff_to is not None
        previous, self.agent = self.agent, call.handoff_to
        self._deadlines.clear(call)
        self._emit(HandoffCompleted(call.call_id, previous.name, self.agent.name))
        self._finish(call, Outcome.SUCCESS, text=json.dumps({"assistant": self.agent.name}))

    def _update_refused(self, event_id: str, error: BaseException) -> None:
        """A session.update the server refused, or whose write failed: the agent stays."""
        update = next((u for u in self._updates if u.event_id == event_id), None)
        if update is None:
            return
        self._updates.remove(update)
        call = update.call
        if call is not None and call.state is CallState.HANDING_OFF:
            self._deadlines.clear(call)
            self._finish(call, Outcome.HANDOFF_FAILED, error=error)

    # --- responses -------------------------------------------------------------------------

    def _response_timed_out(self) -> None:
        timeout = self.config.response_timeout
        logger.warning("no response.done within %g s; carrying on", timeout)
        self._emit(ProtocolErrorEvent("response_timeout", f"no response.done within {timeout:g} s"))
        self._turns.response_done(None, None)

    def _after_input(self, now: float) -> None:
        """Derive what follows from the new state: response.create, the response deadline,
        the end of a close."""
        if self.state is CoreState.CLOSED:
            return
        turns = self._turns
        if self._has_connection and _CREATE_BACKOFF not in self._deadlines and turns.take():
            self._response_create_id = self._queue(protocol.build_response_create)
        response = _Response(turns.epoch) if turns.responding else None
        if response != self._response_deadline:
            if self._response_deadline is not None:
                self._deadlines.clear(self._response_deadline)
            if response is not None:
                self._deadlines.set(response, now + self.config.response_timeout)
            self._response_deadline = response
        if self.state is CoreState.CLOSING and self.ledger.open_count == 0:
            self._close_now("closed", None, None, now)
        elif self._rollover_due and self._quiet():
            self._lose_connection(Loss.ROLLOVER, None, now)

    # --- closing ---------------------------------------------------------------------------

    def _begin_close(self, now: float) -> None:
        if self.state is CoreState.IDLE:
            self.state = CoreState.CLOSED  # never connected: nothing started, nothing to report
        if self.state is not CoreState.OPEN:
            return
        self.state = CoreState.CLOSING
        self._turns.enabled = False
        while self._waiting:
            self._finish_closing(self._waiting.popleft())
        self._deadlines.set(_CLOSE, now + self.config.close_timeout)

    def _close_now(
        self,
        reason: str,
        incomplete: IncompleteReason | None,
        error: ConnectionLostError | None,
        now: float,
    ) -> None:
        self.state = CoreState.CLOSING
        self._waiting.clear()
        for call in self.ledger:
            assert incomplete is not None
            if error is not None:  # what ended the connection ended the call too
                call.last_send_error = error
            self._settle(call, CallState.INCOMPLETE, incomplete, now)
        self.state = CoreState.CLOSED
        self._has_connection = False
        self._frames.clear()
        self._jobs.clear()
        self._link_actions.clear()
        self._deadlines = Deadlines()
        self._emit(SessionClosed(reason, error))

    # --- connections: losing one, opening the next, carrying the conversation over --------

    def _reconnects(self, reason: Loss) -> bool:
        return self.config.reconnect is not None and reason.retryable

    def _lose_connection(self, reason: Loss, error: ConnectionLostError | None, now: float) -> None:
        """Stop using the connection; carry the conversation to a new one, or end the session
        if this loss is final."""
        self._has_connection = False
        self._link_actions.append(Disconnect())
        if not self._reconnects(reason):
            level = logging.INFO if reason is Loss.SERVER_CLOSED else logging.WARNING
            logger.log(level, "realtime connection ended (%s): %s", reason, safe_str(error))
            closed, incomplete = _FINAL_LOSSES.get(
                reason, ("connection_lost", IncompleteReason.CONNECTION_LOST)
            )
            self._close_now(closed, incomplete, error, now)
            return
        level = logging.INFO if reason is Loss.ROLLOVER else logging.WARNING
        logger.log(level, "realtime connection ended (%s): %s; reconnecting", reason, error)
        self._suspend()
        self._outage = _Outage(reason, now, error, self._unconfirmed_attempts)
        self._retry_connection(now)

    def _suspend(self) -> None:
        """Forget everything tied to the connection that ended; keep every call open."""
        writing, self._writing = self._writing, None
        held = deque(f for f in self._frames if f.app)
        if writing is not None and writing.app:
            held.appendleft(writing)  # the old conversation is gone: it goes to the new one
        self._frames = held
        for call in self.ledger:
            self._deadlines.clear(call)
            call.in_flight = False
            call.failed_sends = 0
            if call.state is CallState.OUTPUT_SENT:
                self.ledger.move(call, CallState.OUTPUT_READY)
        self._attempts.clear()
        self._carries.clear()
        self._updates.clear()
        self._response_create_id = None
        self._create_failures = 0
        for key in (_CREATE_BACKOFF, _ROLLOVER, _ROLLOVER_DEADLINE):
            self._deadlines.clear(key)
        self._rollover_due = False
        self.ledger.connection_ended()
        self._turns.connection_lost()

    def _retry_connection(self, now: float) -> None:
        outage, policy = self._outage, self.config.reconnect
        assert outage is not None
        assert policy is not None
        outage.attempts += 1
        if outage.attempts > policy.max_attempts:
            logger.error("could not reconnect after %d attempts", policy.max_attempts)
            error = outage.error or ConnectionLostError("could not open a new connection")
            self._close_now("reconnect_failed", IncompleteReason.RECONNECT_FAILED, error, now)
            return
        first_rollover = outage.reason is Loss.ROLLOVER and outage.attempts == 1
        delay = 0.0 if first_rollover else policy.delay(outage.attempts, self._random)
        self._deadlines.set(_RECONNECT, now + delay)
        self._emit(Reconnecting(outage.reason, outage.attempts, delay, outage.error))

    def _arm_rollover(self, now: float) -> None:
        policy = self.config.reconnect
        if policy is not None and policy.rollover_after is not None:
            self._deadlines.set(_ROLLOVER, now + policy.rollover_after)
            self._deadlines.set(_ROLLOVER_DEADLINE, now + policy.rollover_deadline)

    def _quiet(self) -> bool:
        """A moment to move to a new connection without cutting anything short."""
        turns = self._turns
        return (
            self.state is CoreState.OPEN
            and self._has_connection
            and not (turns.responding or turns.wanted or self._user_turn)
            and self.ledger.open_count == 0
        )

    def _replay(self) -> int:
        """Recreate the history the replay policy chooses; returns how many items."""
        history, policy = self._history, self.config.reconnect
        assert history is not None
        assert policy is not None
        default = replay_last(DEFAULT_REPLAY_ITEMS)
        open_calls = {call.call_id for call in self.ledger}
        items = call_user_sync(history.replay, policy.replay or default, open_calls)
        if isinstance(items, Raised):
            self._swallowed("replay_policy", items.error)
            items = history.replay(default, open_calls)
        for item in items:
            self._queue(protocol.build_item_create, item)
        return len(items)

    def _carry(self, call: Call) -> str:
        """Recreate an open call's ``function_call`` on the new connection, before its output
        (a server refuses an output whose call it does not hold)."""
        arguments = call.arguments if call.arguments is not None else ""
        event_id = self._queue(
            protocol.build_function_call, call.call_id, call.tool_name, arguments
        )
        self._carries[event_id] = call
        return call.call_id

    # --- helpers ---------------------------------------------------------------------------

    def _send_app_event(self, build: Any, *args: Any) -> str:
        """Queue a frame of the app's; held while there is no connection, up to a bound."""
        if self.state is not CoreState.OPEN:
            raise SessionClosedError("the session is closed")
        policy = self.config.reconnect
        if not self._has_connection and policy and len(self._frames) >= policy.max_held_frames:
            raise ConnectionLostError(
                f"reconnecting: {len(self._frames)} frames already wait for the connection"
            )
        return self._queue(build, *args, app=True)

    def _queue(self, build: Any, *args: Any, app: bool = False) -> str:
        event_id = next(self._event_ids)
        self._frames.append(Frame(event_id, protocol.encode(build(event_id, *args)), app=app))
        return event_id

    def _emit(self, event: CoreEvent) -> None:
        self._events.append(event)

    def _swallowed(self, place: str, error: BaseException) -> None:
        logger.error("rtguard caught %s in %s and carried on", type_name(error), place)
        self._emit(ErrorSwallowed(place, error))


def _lost(error: BaseException) -> ConnectionLostError:
    return ConnectionLostError(f"{type_name(error)}: {safe_str(error)}")


def _too_long(text: str, limit: int) -> bool:
    # A UTF-8 character is at most 4 bytes: most texts are decided without encoding them.
    return len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit)

"""The realtime session: the asyncio layer around the sans-I/O :class:`SessionCore`.

Its whole job, as in aioquic's ``QuicConnectionProtocol``, is to feed the core inputs and
carry out what it produced, in order, right after each one (:meth:`RealtimeSession._drain`):

- one reader task per connection: each server frame goes into the core; tools never block it;
- one writer task per connection: the only place a frame is written, in the core's order;
- one timer: armed for the core's earliest deadline, whatever it is for;
- a task per job: the user's code for a call, run by :func:`run_job`, which never raises;
- the connections the core asks for: dropping one, opening the next with the connector.

The app iterates the core's events; telemetry observes the same events, behind one guard.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import logging
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context

from ._agent import Agent
from ._boundary import Raised, call_user, safe_str, type_name
from ._config import SessionConfig
from ._core import Connect, CoreState, Disconnect, Job, LinkAction, SessionCore
from ._errors import ConfigurationError, ConnectionLostError, SessionClosedError
from ._event_queue import EventQueue
from ._events import (
    AppFrameDone,
    ErrorSwallowed,
    EventsDropped,
    RaiseToApp,
    SessionClosed,
    SessionEvent,
    ToolFailedRaised,
)
from ._execution import run_job
from ._failures import redact
from ._ledger import CallLedger
from ._protocol import ServerEvent
from ._transport import Connector, Transport, WebSocketTransport
from .telemetry import SessionTelemetry, Telemetry

__all__ = ["DEFAULT_URL", "RealtimeSession"]

logger = logging.getLogger("rtguard")

DEFAULT_URL = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
"""Where a session connects without ``url``: the OpenAI Realtime API (it needs an API key)."""
DEFAULT_REJECTION = "The user declined to run this tool call."
# How long the end of a session waits for tasks it cancelled (a tool may ignore cancellation).
_CANCEL_GRACE = 1.0


class RealtimeSession:
    """A guarded realtime session: every call the model issues ends with exactly one
    ``function_call_output`` the model sees, or is reported incomplete with its reason.

    Use it as an async context manager (entering connects, leaving closes) and iterate over
    it for [`SessionEvent`][rtguard.SessionEvent] values; the iteration ends after
    [`SessionClosed`][rtguard.SessionClosed].

    ``connector`` opens each connection (the first, and any after a loss); by default a
    WebSocket to ``url`` with ``api_key`` (or ``OPENAI_API_KEY``) as a bearer token.

    Args:
        agent: the agent active at the start; a handoff replaces it.
        url: the Realtime endpoint, for instance a simulator's ``sim.url``.
        api_key: the bearer token; by default ``OPENAI_API_KEY``. Never logged, and not in
            ``repr(session)``.
        config: how the session behaves; by default ``SessionConfig()``.
        connector: opens each connection instead of the default WebSocket to ``url``.
        telemetry: where spans, events and metrics go; by default ``Telemetry.default()``.

    Raises:
        ConfigurationError: ``agent`` is not an Agent.
    """

    def __init__(
        self,
        agent: Agent,
        *,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        config: SessionConfig | None = None,
        connector: Connector | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if not isinstance(agent, Agent):
            raise ConfigurationError(f"RealtimeSession needs an Agent, not {type(agent).__name__}")
        self.config = config or SessionConfig()
        """How this session behaves."""
        self._url = url
        self.__api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._connector = connector or self._open_websocket
        self._transport: Transport | None = None
        self._core = SessionCore(agent, self.config)
        self._telemetry: SessionTelemetry = (telemetry or Telemetry.default()).session(self)
        self._observes_plain = self._telemetry.observes(ServerEvent)
        self._events = EventQueue(self.config.max_queued_events)
        self._writes: dict[str, asyncio.Future[None]] = {}  # app frames whose caller waits
        self._jobs: set[asyncio.Task[None]] = set()
        self._link: list[asyncio.Task[None]] = []  # the connection's reader and writer
        self._opening: asyncio.Task[None] | None = None  # a reconnection attempt
        self._dropped: set[asyncio.Task[None]] = set()  # old connections being closed
        self._frames_ready = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._connecting = False
        self._ended: asyncio.Future[None] | None = None
        self._context = contextvars.copy_context()  # tools run in the context that made us

    def __repr__(self) -> str:
        return f"<RealtimeSession agent={self.agent.name!r} url={self._url.split('?')[0]!r}>"

    @property
    def agent(self) -> Agent:
        """The active agent (changes when the server confirms a handoff)."""
        return self._core.agent

    @property
    def ledger(self) -> CallLedger:
        """The calls this session has open (read it; the session alone changes it)."""
        return self._core.ledger

    @property
    def session_id(self) -> str | None:
        """The server's id of the current realtime session (from ``session.created``); a
        new connection brings a new one. None until the server sent it."""
        return self._core.session_id

    @property
    def closed(self) -> bool:
        """Whether the session is closing or closed: no new tool runs."""
        return self._core.state >= CoreState.CLOSING

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
        """Open the connection; the agent's ``session.update`` goes out first. A connection
        that cannot be opened raises here
        ([`ConnectionLostError`][rtguard.ConnectionLostError]); once one was, a loss is the
        reconnect policy's to handle. ``async with`` calls it.

        Raises:
            ConfigurationError: ``connect()`` was already called, or the default endpoint
                has no API key.
            SessionClosedError: the session is closed.
        """
        if self._core.state is CoreState.CLOSED:
            raise SessionClosedError("the session is closed")
        if self._connecting or self._core.state is not CoreState.IDLE:
            raise ConfigurationError("connect() was already called on this session")
        self._connecting = True
        try:
            transport = await self._connector()
        except BaseException:
            self._connecting = False
            raise
        self._ended = asyncio.get_running_loop().create_future()
        self._attach(transport)

    async def _open_websocket(self) -> Transport:
        if self._url == DEFAULT_URL and not self.__api_key:
            raise ConfigurationError("the OpenAI endpoint needs an api_key (or OPENAI_API_KEY)")
        headers = {"Authorization": f"Bearer {self.__api_key}"} if self.__api_key else {}
        return await WebSocketTransport.connect(
            self._url, headers, max_frame_bytes=self.config.max_frame_bytes
        )

    async def close(self) -> None:
        """Close gracefully: wait up to ``close_timeout`` for open calls to be answered, then
        account for every call still open as incomplete (``session_closed``).

        Called from a tool (a hang-up tool), it starts closing and returns at once: the
        tool's own output is sent before the session ends.
        """
        self._core.close(self._now())
        self._drain()
        if self._ended is None or asyncio.current_task() in self._jobs:
            return
        await asyncio.shield(self._ended)

    # --- events for the app ----------------------------------------------------------------

    def __aiter__(self) -> RealtimeSession:
        return self

    async def __anext__(self) -> SessionEvent:
        return await self._events.get()

    # --- what the app can send -------------------------------------------------------------

    async def send_message(self, text: str) -> None:
        """Add a user message and ask the model to respond."""
        await self._send(self._core.send_user_message(text, self._now()))

    async def send_audio(self, pcm: bytes, *, commit: bool = False) -> None:
        """Append audio to the input buffer (server VAD decides turns unless ``commit``)."""
        event_id = self._core.append_audio(base64.b64encode(pcm).decode("ascii"))
        if commit:
            event_id = self._core.commit_audio()
        await self._send(event_id)

    async def interrupt(self) -> None:
        """Cancel the model's current response (the user started talking)."""
        event_id = self._core.interrupt()
        if event_id is not None:
            await self._send(event_id)
        else:
            self._drain()

    def approve(self, call_id: str) -> None:
        """Run a call awaiting approval (announced by a ``ToolApprovalRequested``).

        Raises:
            KeyError: no call with this ``call_id`` is awaiting approval.
        """
        self._core.approve(call_id, self._now())
        self._drain()

    def reject(self, call_id: str, message: str = DEFAULT_REJECTION) -> None:
        """Refuse a call awaiting approval; ``message`` is the output the model gets (by
        default "The user declined to run this tool call.").

        Raises:
            KeyError: no call with this ``call_id`` is awaiting approval.
            TypeError: ``message`` is not a string.
        """
        self._core.reject(call_id, message, self._now())
        self._drain()

    async def _send(self, event_id: str) -> None:
        """Wait until the writer wrote the app's frame (held meanwhile if the connection is
        being replaced); the write's error is raised here."""
        written = self._writes[event_id] = asyncio.get_running_loop().create_future()
        self._drain()
        await written

    # --- the inputs: frames in, frames out, the timer, connections -------------------------

    def _attach(self, transport: Transport) -> None:
        """A connection just opened: tell the core, then write and read. A
        WebSocketTransport hands its frames over as they arrive (those that came before
        now); any other transport gets a reader task."""
        loop = asyncio.get_running_loop()
        self._transport = transport
        self._link = [loop.create_task(self._write(transport), name="rtguard-write")]
        self._feed(self._core.connected)
        if self._transport is not transport:
            return  # dropped at once
        pushed = isinstance(transport, WebSocketTransport) and transport.deliver_to(
            self._pushed, self._read_failed
        )
        if not pushed:
            self._link.append(loop.create_task(self._read(transport), name="rtguard-read"))

    def _detach(self) -> None:
        """Stop using the connection (the core is done with it) and close it meanwhile."""
        link, self._link = self._link, []
        for task in link:
            task.cancel()
        transport, self._transport = self._transport, None
        if isinstance(transport, WebSocketTransport):
            transport.deliver_to(None)  # from here on, what arrives is discarded
        if transport is not None:
            task = asyncio.get_running_loop().create_task(self._drop(transport, link))
            self._dropped.add(task)
            task.add_done_callback(self._dropped.discard)

    async def _drop(self, transport: Transport, link: list[asyncio.Task[None]]) -> None:
        if link:
            await asyncio.wait(link, timeout=_CANCEL_GRACE)  # its reader is done reading
        error = await _close(transport)
        if error is not None and self._core.state is not CoreState.CLOSED:
            self._core.report_swallowed("transport_close", error)
            self._drain()

    async def _reconnect(self) -> None:
        """The attempt the core asked for; its outcome goes back to the core."""
        policy = self.config.reconnect
        assert policy is not None
        try:
            async with asyncio.timeout(policy.connect_timeout):
                # The connector is the app's code: whatever it raises is a failed attempt.
                transport = await call_user(self._connector)
        except TimeoutError as exc:
            transport = Raised(exc)
        if isinstance(transport, Raised):
            error = transport.error
            if isinstance(error, KeyboardInterrupt | SystemExit):
                raise error  # Python's own "stop now" is never an attempt that failed
            lost = error if isinstance(error, ConnectionLostError) else _lost(error)
            self._feed(self._core.connect_failed, lost)
            return
        if self._core.state is CoreState.CLOSED:  # closed while this attempt was under way
            await _close(transport)
            return
        self._attach(transport)

    async def _read(self, transport: Transport) -> None:
        while True:
            try:
                frame = await transport.recv()
            except Exception as exc:  # a transport may raise something of its own once broken
                self._read_failed(exc)
                return
            self._received(frame)

    def _pushed(self, frame: str | bytes) -> None:
        """A frame the WebSocket handed over from its ``data_received`` callback, where
        nothing may be raised."""
        try:
            self._received(frame)
        except Exception as exc:
            logger.error("handling a server frame failed: %s", _describe(exc))

    def _received(self, frame: str | bytes) -> None:
        core = self._core
        try:
            acted = core.receive_frame(frame, self._now())
        except Exception as exc:  # a bug in rtguard must not stop the session
            core.report_swallowed("dispatch", exc)
            acted = True
        if acted:
            self._drain()
        else:  # only events came out (most frames: audio and transcript deltas)
            self._drain_events()

    def _read_failed(self, error: Exception) -> None:
        """The connection ended, or reading from it failed for good."""
        lost = error if isinstance(error, ConnectionLostError) else _lost(error)
        self._feed(self._core.connection_lost, lost)

    async def _write(self, transport: Transport) -> None:
        core = self._core
        while True:
            frame = core.next_frame()
            if frame is None:
                self._frames_ready.clear()
                await self._frames_ready.wait()
                continue
            try:
                await transport.send(frame.text)
            except Exception as exc:
                is_open = transport.is_open and not isinstance(exc, ConnectionLostError)
                self._feed(core.frame_failed, frame, exc, is_open)
            else:
                self._feed(core.frame_written, frame)

    def _on_timer(self) -> None:
        # If call_at fired a hair early, nothing is due yet and the timer is armed again.
        self._timer = self._timer_at = None
        self._feed(self._core.handle_timer)

    def _feed(self, core_input: Callable[..., None], *args: Any) -> None:
        """Give the core one input (its last argument is the time), then carry out
        everything it produced."""
        try:
            core_input(*args, self._now())
        except Exception as exc:  # a bug in rtguard must not stop the session
            self._core.report_swallowed("dispatch", exc)
        self._drain()

    # --- carrying out what the core produced ----------------------------------------------

    def _drain(self) -> None:
        core = self._core
        self._drain_events()
        while (action := core.next_link_action()) is not None:
            self._carry_out(action)
        while (job := core.next_job()) is not None:
            self._start_job(job)
        if core.has_frames:
            self._frames_ready.set()
        self._arm_timer(core.next_deadline())

    def _drain_events(self) -> None:
        core = self._core
        while (event := core.next_event()) is not None:
            if type(event) is ServerEvent:  # a frame rtguard passes on: audio, transcripts
                self._pass_on(event)
            elif isinstance(event, SessionClosed):
                self._end(event)
            elif isinstance(event, AppFrameDone):
                self._frame_done(event)
            else:
                self._deliver(event)

    def _pass_on(self, event: ServerEvent) -> None:
        if self._observes_plain:
            self._observe(event)
        if not self._events.put(event):
            self._observe(EventsDropped(1))

    def _deliver(self, event: SessionEvent | RaiseToApp) -> None:
        if not isinstance(event, RaiseToApp):
            self._observe(event)
        if isinstance(event, ToolFailedRaised):
            return  # the app gets its error raised at the RaiseToApp that follows the settle
        if not self._events.put(event):
            self._observe(EventsDropped(1))

    def _frame_done(self, done: AppFrameDone) -> None:
        future = self._writes.pop(done.event_id, None)
        if future is not None and not future.done():
            if done.error is None:
                future.set_result(None)
            else:
                future.set_exception(done.error)

    def _carry_out(self, action: LinkAction) -> None:
        match action:
            case Disconnect():
                self._detach()
            case Connect(attempt=attempt):
                name = f"rtguard-connect-{attempt}"
                self._opening = asyncio.get_running_loop().create_task(self._reconnect(), name=name)

    def _observe(self, event: SessionEvent) -> None:
        """Telemetry sees every event, and nothing it does can reach a call."""
        try:
            self._telemetry.observe(event)
        except Exception as exc:
            logger.error("telemetry failed on %s: %s", type(event).__name__, _describe(exc))

    def _start_job(self, job: Job) -> None:
        name = f"rtguard-call-{job.call.call_id}"
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run_job(job), name=name, context=self._context.copy())
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _run_job(self, job: Job) -> None:
        context = self._telemetry.call_context(job.call.call_id)
        token = otel_context.attach(context) if context is not None else None
        try:
            result = await run_job(job)
        finally:
            if token is not None:
                otel_context.detach(token)
        self._feed(self._core.job_done, job.call, result)

    def _arm_timer(self, when: float | None) -> None:
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        if when is not None:
            self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)
        else:
            self._timer = None

    def _end(self, closed: SessionClosed) -> None:
        """The core closed: stop every task, close the transport, then tell the app."""
        self._arm_timer(None)
        asyncio.get_running_loop().create_task(self._shut_down(closed), name="rtguard-end")

    async def _shut_down(self, closed: SessionClosed) -> None:
        tasks = [t for t in (*self._jobs, *self._link, self._opening) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks or self._dropped:
            await asyncio.wait([*tasks, *self._dropped], timeout=_CANCEL_GRACE)
        error = closed.error or SessionClosedError("the session is closed")
        for future in self._writes.values():
            if not future.done():
                future.set_exception(error)
        self._writes.clear()
        if self._transport is not None:
            failed = await _close(self._transport, self._received)
            if failed is not None:
                self._deliver(ErrorSwallowed("transport_close", failed))
        self._deliver(closed)
        self._events.end()
        assert self._ended is not None
        self._ended.set_result(None)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


async def _close(
    transport: Transport, received: Callable[[str | bytes], None] | None = None
) -> Exception | None:
    """Close a connection, reading what still arrives meanwhile: a peer whose frames back up
    unread (a WebSocket stops reading past its queue limit) would never get to answer our
    close. What arrives goes to ``received`` (the closing session accounts for the calls in
    it; a WebSocketTransport already hands it over) or is discarded. Returns the error
    closing raised, if any."""

    if received is None and isinstance(transport, WebSocketTransport):
        transport.deliver_to(None)  # it discards what arrives itself

    async def read() -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await transport.recv()
                if received is not None:
                    received(frame)

    draining = asyncio.get_running_loop().create_task(read())
    try:
        await transport.close()
    except Exception as exc:
        logger.warning("closing the transport failed: %s", _describe(exc))
        return exc
    finally:
        draining.cancel()
    return None


def _lost(error: BaseException) -> ConnectionLostError:
    return ConnectionLostError(f"{type_name(error)}: {safe_str(error)}")


def _describe(error: BaseException) -> str:
    return redact(f"{type_name(error)}: {safe_str(error)}")

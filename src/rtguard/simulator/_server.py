"""A realtime server on 127.0.0.1 that speaks the OpenAI Realtime (GA) protocol as far as tool
calling needs it, issues the calls of a :class:`Scenario`, injects its faults, and records what
the client did with every call: the peer rtguard's tests run against, and a tool for users to
test their own tools without an API key.

What it sends, and in which order, follows the real server (frame captures and the ``openai``
package's models; ``tests/conformance.py`` checks every frame against those models). Each
connection has its own conversation, as on the real server, while the scenario's calls are
issued once over the whole simulator, so a client that reconnects finds the script going on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import itertools
import json
import re
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .._failures import redacting_logger
from . import _wire as wire
from ._conversation import Conversation
from ._scenario import CallSpec, Scenario

__all__ = ["MALFORMED_FRAME", "CallRecord", "Simulator"]

# What the ``malformed_before`` fault sends: the one frame the simulator sends on purpose
# that is not a protocol event.
MALFORMED_FRAME = "{this is not json"
"""The frame the ``malformed_before`` fault sends: not JSON, so a client must count it and
skip it (rtguard reports a ``ProtocolErrorEvent``)."""

_REPLY = "All done. Anything else?"  # what the model says when asked to respond
_SILENCE = base64.b64encode(bytes(480)).decode("ascii")  # 10 ms of pcm16, one audio delta
# Spoken answers at real-time pace: 20 ms of pcm16 at 24 kHz per chunk, a transcript word
# every 15 chunks (300 ms, about the pace of speech), the words taken in turn from _SPOKEN.
_CHUNK_SECONDS = 0.02
_CHUNK_BYTES = 960
_CHUNKS_PER_WORD = 15
_SPOKEN = re.findall(r"\S+\s*", "Let me check that for you. Here is what I found. " + _REPLY + " ")
_STAMP = struct.Struct("<d")
_TICK = 0.001  # the metronome's shortest interval
_BACKLOG_BYTES = 64 * 1024  # unread by the client: its audio waits
_ARGUMENT_CHUNK = 16  # characters of arguments per function_call_arguments.delta
_MIN_COMMIT_MS = 100
_RATE_LIMIT_TOKENS = 15_000_000
_CANCELLED = {"type": "cancelled", "reason": "client_cancelled"}
_ITEM_TYPES = ("message", "function_call", "function_call_output")
_ROLES = ("user", "assistant", "system")
# The real server closes with 3000 and "<type>.<code>" when authentication fails.
_AUTH_CLOSE = 3000

_Handler = Callable[[dict[str, Any], int], Awaitable[None]]


@dataclass
class CallRecord:
    """What happened to one issued call, as the server saw it, across connections.

    A call lives in the conversation of the connection that issued it and moves to another
    connection when the client recreates its ``function_call`` item there. ``connections``
    lists, in order, the connections whose conversation held its item; the last one is the
    conversation that continues, and ``outputs`` are about that one. ``responded_on`` are the
    connections where a ``response.create`` followed its output: the model was asked to
    answer it (see ``Simulator.asked_to_answer``).
    """

    call_id: str
    name: str
    arguments: str
    issued_at: float
    index: int  # its position in the scenario's calls
    connections: list[int]
    outputs_by_connection: dict[int, list[str]] = field(default_factory=dict)
    first_output_at: float | None = None  # the first accepted output, in any conversation
    refused_outputs: int = 0
    output_seq: int | None = None  # position of the first accepted output among client events
    function_call_recreated: int = 0  # how often the client recreated its function_call item
    # Connections where a response.create followed the call's output.
    responded_on: set[int] = field(default_factory=set)

    ended_by_server: set[int] = field(default_factory=set, repr=False, compare=False)

    @property
    def outputs(self) -> list[str]:
        """The accepted outputs in the conversation that continues: the latest one holding
        the call, passing over a connection the server cut or expired before the call's
        output arrived there (the client carries the call on, or its replay left it out)."""
        for number in reversed(self.connections):
            outputs = self.outputs_by_connection.get(number, [])
            if outputs or number not in self.ended_by_server:
                return outputs
        return []

    @property
    def latency(self) -> float | None:
        """Seconds from issuing the call to its first accepted output; None without one."""
        return None if self.first_output_at is None else self.first_output_at - self.issued_at


class Simulator:
    """``async with Simulator(scenario) as sim:`` then connect a session to ``sim.url``.

    ``record_frames`` keeps every frame sent and received, as text, in ``frames_sent`` and
    ``frames_received`` (all connections, in order). With ``api_key``, a connection without
    ``Authorization: Bearer <api_key>`` gets the real server's refusal: an ``error``, then a
    close with code 3000.

    The scenario's calls are one script over the whole simulator: a new connection goes on
    with the next call not yet issued. What happened to each call is in ``calls``;
    ``assert_invariant()`` checks that each got exactly one output in the conversation that
    continues, and that the model was asked to answer it.

    Args:
        scenario: what the simulated model does; by default no calls at all.
        host: the address to listen on.
        port: the port to listen on; 0 picks a free one (read it from ``port``).
        record_frames: keep every frame in ``frames_sent`` and ``frames_received``.
        api_key: refuse connections that do not bear it, as the real server does.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record_frames: bool = False,
        api_key: str | None = None,
    ) -> None:
        self.scenario = scenario or Scenario()
        self._host, self._port = host, port
        self._api_key = api_key
        self._server: Server | None = None
        self.calls: dict[str, CallRecord] = {}
        """Every call issued so far, by ``call_id``."""
        self.session_updates: list[tuple[int, dict[str, Any]]] = []  # (client event seq, session)
        """Each accepted ``session.update``: the client event's number, the session after it."""
        self.user_messages: list[str] = []
        """The text of every user message the client created, in order."""
        self.client_events = 0
        """Frames received from clients, over all connections."""
        self.response_creates = 0
        """``response.create`` events accepted."""
        self.latest_response_create_on = 0  # the last connection that got a response.create
        """The highest-numbered connection that got a ``response.create``."""
        self.ended_by_server: set[int] = set()  # connections a fault cut or expired
        """Connections (by number) that a fault cut or expired."""
        self.hung_up: set[int] = set()
        """Connections (by number) the client closed with a close handshake it began."""
        self.refused_response_creates = 0
        """``response.create`` events refused because a response was in progress."""
        self.connections = 0
        """Connections accepted so far; they are numbered from 1."""
        self.conversations: dict[int, Conversation] = {}  # by connection number (from 1)
        """Each connection's conversation, by connection number."""
        self.client_items: dict[int, list[dict[str, Any]]] = {}  # accepted, as the client sent
        """The items each connection accepted from the client, as the client sent them."""
        self.record_frames = record_frames
        """Whether frames are kept in ``frames_sent`` and ``frames_received``."""
        self.frames_sent: list[str] = []
        """With ``record_frames``: every frame sent, all connections, in order."""
        self.frames_received: list[str] = []
        """With ``record_frames``: every frame received, all connections, in order."""
        self.next_call = 0  # the script's position: the first call not issued yet
        """The script's position: the index of the first call not issued yet."""
        # Spoken answers (``speak_seconds``): how many 20 ms chunks went out how many whole
        # milliseconds behind their real-time schedule; a simulator short of CPU falls behind.
        self.audio_late_ms: Counter[int] = Counter()
        """Spoken answers: how many 20 ms chunks went out how many whole milliseconds behind
        their real-time schedule."""
        self._paced: _Metronome | None = None
        self._script = asyncio.Lock()  # one connection at a time takes the script's next calls
        self._session_updates_seen = 0
        self._fired: set[tuple[str, int]] = set()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening (``async with`` does it)."""
        self._server = await serve(
            self._handle,
            self._host,
            self._port,
            max_size=64 * 1024 * 1024,
            compression=None,
            logger=redacting_logger("websockets.server"),
        )

    async def stop(self) -> None:
        """Close every connection and stop listening (leaving ``async with`` does it)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        """The port it listens on, once started."""
        assert self._server is not None, "start the simulator first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """How many client connections are open now."""
        return len(self._server.connections) if self._server is not None else 0

    @property
    def url(self) -> str:
        """Where to connect a session: ``ws://<host>:<port>/v1/realtime``."""
        return f"ws://{self._host}:{self.port}/v1/realtime"

    # --- what tests and the CLI ask -----------------------------------------------------

    def end_script(self) -> None:
        """Issue no more calls: the script ends here (responses under way finish)."""
        self.next_call = max(self.next_call, len(self.scenario.calls))

    def unanswered(self) -> list[CallRecord]:
        """The calls without an accepted output in the conversation that continues."""
        return [c for c in self.calls.values() if not c.outputs]

    def asked_to_answer(self, call: CallRecord) -> bool:
        """Whether a response.create followed the call's output: on a connection whose
        conversation held it, or on a later connection, whose conversation goes on from there
        (even where its replay of the history left this call out). An output on a connection
        the client then closed itself needs none: the app hung up, nobody waits for an
        answer, and none may be asked for after the session closed."""
        delivered_on = max(call.outputs_by_connection, default=0)
        return (
            bool(call.responded_on)
            or self.latest_response_create_on > delivered_on > 0
            or delivered_on in self.hung_up
        )

    def violations(self, excused: Collection[str] = ()) -> list[str]:
        """Every issued call must have exactly one accepted output in the conversation that
        continues, and the model must have been asked to answer it. A call in ``excused``
        (the client reported it incomplete, which no server can see) may have none."""
        problems = []
        for call in self.calls.values():
            if not call.outputs and call.call_id in excused:
                continue
            if len(call.outputs) != 1:
                where = {n: len(call.outputs_by_connection.get(n, ())) for n in call.connections}
                problems.append(
                    f"{call.call_id} ({call.name}): {len(call.outputs)} outputs in the "
                    f"conversation that continues (outputs by connection: {where})"
                )
            elif not self.asked_to_answer(call):
                problems.append(
                    f"{call.call_id} ({call.name}): no response.create after its output"
                )
        return problems

    def assert_invariant(self) -> None:
        """Raise an ``AssertionError`` listing the ``violations()``, if there are any."""
        problems = self.violations()
        if problems:
            raise AssertionError(
                f"{len(problems)} calls broke the invariant: " + "; ".join(problems[:20])
            )

    # --- shared by the connections ------------------------------------------------------

    def _fire(self, fault: str, index: int) -> bool:
        """True the first time a call-indexed fault is due for ``index``: each fires once, so
        the connection after it carries on."""
        if (fault, index) in self._fired:
            return False
        self._fired.add((fault, index))
        return True

    def _metronome(self) -> _Metronome:
        if self._paced is None:
            self._paced = _Metronome(self.audio_late_ms)
        return self._paced

    def _count_session_update(self) -> int:
        """The 0-based position of a session.update over the whole simulator."""
        self._session_updates_seen += 1
        return self._session_updates_seen - 1

    def _auth_refusal(self, ws: ServerConnection) -> tuple[str | None, str, str] | None:
        """The real server's (code, message, close reason) for a connection whose key is
        missing or wrong, or None to let it in."""
        if self._api_key is None:
            return None
        assert ws.request is not None  # the handshake is done when the handler runs
        header = ws.request.headers.get("Authorization")
        if header is None:
            message = "Missing bearer or basic authentication in header"
            return None, message, "invalid_request_error"
        if header == f"Bearer {self._api_key}":
            return None
        message = (
            "Incorrect API key provided. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
        return "invalid_api_key", message, "invalid_request_error.invalid_api_key"

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        await _Connection(self, ws, self.connections).run()


class _Dropped(Exception):
    """The connection is cut or closing: nothing more is sent on it."""


class _Response:
    """One model response in progress; ``response.cancel`` sets ``cancelled`` and the
    streaming stops at its next delta."""

    def __init__(self, response_id: str) -> None:
        self.id = response_id
        self.output: list[dict[str, Any]] = []
        self.cancelled = False


@dataclass(frozen=True)
class _Placed:
    """Where an output item went: its place in the response and the item before it in the
    conversation."""

    response_id: str
    output_index: int
    previous_item_id: str | None

    @property
    def where(self) -> dict[str, Any]:
        return {"response_id": self.response_id, "output_index": self.output_index}


class _Speech:
    """A spoken answer in progress: its next chunk, when it is due, and when to send it."""

    def __init__(
        self, connection: _Connection, response: _Response, part: dict[str, Any], chunks: int
    ) -> None:
        loop = asyncio.get_running_loop()
        self.connection, self.response, self.chunks = connection, response, chunks
        self.stamp = connection.scenario.stamp_audio
        # Fifty a second per connection: only the event id and the audio change between them.
        self.audio = json.dumps({"type": "response.output_audio.delta", **part})[:-1]
        self.words = json.dumps({"type": "response.output_audio_transcript.delta", **part})[:-1]
        self.pcm = bytearray(_CHUNK_BYTES)
        self.silence = base64.b64encode(self.pcm).decode("ascii")
        self.sent, self.said = 0, ""
        self.start = self.send_at = loop.time()
        self.done: asyncio.Future[tuple[str, bool]] = loop.create_future()

    def step(self, late_ms: Counter[int]) -> bool:
        """Send the chunk due (with its transcript word, every 15th); whether more follow."""
        if self.done.done():  # the connection's task was cancelled: the connection ended
            return False
        if self.response.cancelled:
            self.done.set_result((self.said, False))
            return False
        connection = self.connection
        if connection.backed_up:
            self.send_at += _TICK
            return True
        frames, k = [], self.sent
        if k % _CHUNKS_PER_WORD == 0:
            word = _SPOKEN[k // _CHUNKS_PER_WORD % len(_SPOKEN)]
            event_id = connection.new_id("event")
            frames.append(f'{self.words}, "event_id": "{event_id}", "delta": "{word}"}}')
            self.said += word
        now = time.monotonic()
        delta = self.silence
        if self.stamp:
            _STAMP.pack_into(self.pcm, 0, now)
            delta = base64.b64encode(self.pcm).decode("ascii")
        event_id = connection.new_id("event")
        frames.append(f'{self.audio}, "event_id": "{event_id}", "delta": "{delta}"}}')
        try:
            connection.send_now(frames)
        except _Dropped as dropped:
            self.done.set_exception(dropped)
            return False
        due = self.start + k * _CHUNK_SECONDS
        late_ms[int(max(0.0, now - due) * 1000)] += 1
        self.sent = k + 1
        if self.sent == self.chunks:
            self.done.set_result((self.said, True))
            return False
        self.send_at = max(self.send_at, due + _CHUNK_SECONDS)
        return True


class _Metronome:
    """Sends the chunks of every answer being spoken on the simulator, each on its own
    real-time schedule, from one timer that ticks at most every millisecond however many
    connections speak: a task waking for every chunk, fifty a second per connection, would
    cost the simulator more than the client it serves."""

    def __init__(self, late_ms: Counter[int]) -> None:
        self._loop = asyncio.get_running_loop()
        self.late_ms = late_ms  # chunks by whole milliseconds behind their schedule
        self._due: list[tuple[float, int, _Speech]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._ticked = 0.0

    def add(self, speech: _Speech) -> None:
        heapq.heappush(self._due, (speech.send_at, next(self._order), speech))
        self._arm()

    def _arm(self) -> None:
        when = max(self._due[0][0], self._ticked + _TICK)
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._ticked = self._loop.time()
        due, late_ms = self._due, self.late_ms
        while due and due[0][0] <= now:
            speech = heapq.heappop(due)[2]
            if speech.step(late_ms):
                heapq.heappush(due, (speech.send_at, next(self._order), speech))
        if due:
            self._arm()


class _Connection:
    def __init__(self, sim: Simulator, ws: ServerConnection, number: int) -> None:
        self.sim = sim
        self.scenario = sim.scenario
        self.faults = sim.scenario.faults
        self.ws = ws
        self.number = number
        self.ids = itertools.count(1)
        limit = self.faults.max_session_seconds or 3600.0
        self.session = wire.default_session(
            f"sess_sim{number}", _model(ws), int(time.time() + limit)
        )
        self.conversation = Conversation(f"conv_sim{number}")
        self.configured = asyncio.Event()  # the first session.update was accepted
        self.active: _Response | None = None
        self.changed = asyncio.Condition()  # a response ended or a call got its output
        self.awaiting: set[str] = set()  # calls issued here with no output here yet
        self.pending_create: list[CallRecord] = []  # outputs since the last response.create
        self.audio_bytes = 0  # in the input audio buffer
        self.tokens_used = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.cut_off = False  # cut(): the connection is as good as gone
        self.handlers: dict[str, _Handler] = {
            "session.update": self.on_session_update,
            "input_audio_buffer.append": self.on_audio_append,
            "input_audio_buffer.commit": self.on_audio_commit,
            "input_audio_buffer.clear": self.on_audio_clear,
            "conversation.item.create": self.on_item_create,
            "conversation.item.retrieve": self.on_item_retrieve,
            "conversation.item.truncate": self.on_item_truncate,
            "conversation.item.delete": self.on_item_delete,
            "response.create": self.on_response_create,
            "response.cancel": self.on_response_cancel,
        }

    async def run(self) -> None:
        refusal = self.sim._auth_refusal(self.ws)
        if refusal is not None:
            code, message, reason = refusal
            await self.error("invalid_request_error", code, message, None)
            await self.ws.close(_AUTH_CLOSE, reason)
            return
        self.sim.conversations[self.number] = self.conversation
        self.sim.client_items[self.number] = []
        await self.send({"type": "session.created", "session": wire.echo_session(self.session)})
        self.spawn(self.issue_calls())
        if self.faults.max_session_seconds is not None:
            self.spawn(self.expire(self.faults.max_session_seconds))
        try:
            async for frame in self.ws:
                # An answer may find the connection closing or cut; reading goes on until it
                # is closed: frames left unread past websockets' queue limit stop it
                # reading, and the client's answer to our close would never be seen.
                with contextlib.suppress(ConnectionClosed, _Dropped):
                    await self.on_frame(frame)
        except ConnectionClosed:
            pass
        finally:
            if self.ws.protocol.close_rcvd_then_sent:
                self.sim.hung_up.add(self.number)
            tasks = list(self.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", self.new_id("event"))
        await self.send_text(json.dumps(event))

    async def send_text(self, text: str) -> None:
        # Not once closing: websockets would hold the send until the connection is closed.
        if self.cut_off or self.ws.state is not State.OPEN:
            raise _Dropped
        await self.ws.send(text)
        if self.sim.record_frames:
            self.sim.frames_sent.append(text)

    async def error(
        self,
        kind: str,
        code: str | None,
        message: str,
        event_id: str | None,
        param: str | None = None,
    ) -> None:
        await self.send(wire.error_event(kind, code, message, event_id, param))

    def new_id(self, kind: str) -> str:
        return f"{kind}_sim{self.number}_{next(self.ids)}"

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(_until_closed(coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cut(self) -> None:
        """End the connection as a broken network does: no close frame. What was already sent
        still arrives (a FIN follows it, not a reset, which could discard it unread), and from
        here on nothing is read or sent, as if the wire were gone."""
        self.cut_off = True
        self.sim.ended_by_server.add(self.number)
        self.ws.transport.write_eof()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.cut_off:
            return
        if self.faults.expiry_error:
            await self.error("invalid_request_error", "session_expired", wire.EXPIRED, None)
        self.sim.ended_by_server.add(self.number)
        await self.ws.close(1001, wire.EXPIRED)

    # --- the scripted model -------------------------------------------------------------

    async def issue_calls(self) -> None:
        """Respond with the scenario's calls, from the first one not issued yet, once the
        client's session.update is in (a model cannot call tools it was not given)."""
        await self.configured.wait()
        scenario, faults, sim = self.scenario, self.faults, self.sim
        interval = scenario.calls_per_response / scenario.rate if scenario.rate else None
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while sim.next_call < len(scenario.calls):
            if interval is not None:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at += interval
            else:
                async with self.changed:
                    await self.changed.wait_for(lambda: len(self.awaiting) < scenario.max_in_flight)
            async with sim._script:
                issued = await self.issue_batch()
            if self.due(faults.drop_connection_after, "drop_connection_after", issued):
                self.cut()
                return
            if self.due(faults.expire_after, "expire_after", issued):
                await self.expire(0.0)
                return
            ended = () if faults.end_after is None else (faults.end_after,)
            if self.due(ended, "end_after", issued):
                await self.ws.close(1000)
                return

    async def issue_batch(self) -> range:
        """One response with the next ``calls_per_response`` calls (and the duplicates the
        fault asks for); returns the indexes it issued."""
        scenario, faults, sim = self.scenario, self.faults, self.sim
        start = sim.next_call
        if start >= len(scenario.calls):  # another connection issued the last ones meanwhile
            return range(start, start)
        batch = list(enumerate(scenario.calls[start : start + scenario.calls_per_response], start))
        for index, _ in batch:
            if index in faults.malformed_before and sim._fire("malformed_before", index):
                await self.send_text(MALFORMED_FRAME)
        await self.respond(partial(self.stream_calls, batch=batch))
        issued = range(start, sim.next_call)
        for index in issued:
            if index in faults.duplicate and sim._fire("duplicate", index):
                again = partial(
                    self.stream_call,
                    spec=scenario.calls[index],
                    call_id=self.call_id(index),
                    index=None,
                )
                await self.respond(again)
        return issued

    def due(self, indexes: Collection[int], fault: str, issued: range) -> bool:
        """Whether a fault set for one of the calls just ``issued`` fires now (once each)."""
        return any([self.sim._fire(fault, i) for i in issued if i in indexes])

    def call_id(self, index: int) -> str:
        return f"call_sim{self.number}_{index}"

    async def respond(self, stream: Callable[[_Response], Awaitable[object]]) -> None:
        """Wait for no response to be active (one at a time, as on the real server), then
        run one."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.active is None)
            response = self.start_response()
        await self.run_response(response, stream)

    def start_response(self) -> _Response:
        self.active = _Response(self.new_id("resp"))
        return self.active

    async def run_response(
        self, response: _Response, stream: Callable[[_Response], Awaitable[object]]
    ) -> None:
        """``response.created``, what ``stream`` sends, ``response.done`` (``cancelled`` if
        the client cancelled it), then ``rate_limits.updated`` as the real server does."""
        created = self.response_object(response, "in_progress")
        await self.send({"type": "response.created", "response": created})
        await stream(response)
        # Rough token counts in the real shape: the context grows with the conversation.
        instructions = str(self.session.get("instructions") or "")
        usage = wire.usage(
            len(instructions) // 4 + 10 * len(self.conversation),
            max(1, len(json.dumps(response.output)) // 4),
            "audio" in (self.session.get("output_modalities") or ()),
        )
        self.tokens_used += usage["total_tokens"]
        status, details = ("cancelled", _CANCELLED) if response.cancelled else ("completed", None)
        done = self.response_object(response, status, details, usage)
        self.active = None  # over before its response.done leaves, so a reply to it is not refused
        await self.send({"type": "response.done", "response": done})
        await self.notify()
        remaining = max(0, _RATE_LIMIT_TOKENS - self.tokens_used)
        limit = {
            "name": "tokens",
            "limit": _RATE_LIMIT_TOKENS,
            "remaining": remaining,
            "reset_seconds": 0.001,
        }
        await self.send({"type": "rate_limits.updated", "rate_limits": [limit]})

    def response_object(
        self,
        response: _Response,
        status: str,
        details: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return wire.response_object(
            self.session,
            response.id,
            self.conversation.id,
            status,
            list(response.output),
            details,
            usage,
        )

    async def pace(self, response: _Response) -> bool:
        """Before each streamed delta: wait ``stream_delay``; False once cancelled."""
        if self.scenario.stream_delay:
            await asyncio.sleep(self.scenario.stream_delay)
        return not response.cancelled

    async def add_output_item(self, response: _Response, item: dict[str, Any]) -> _Placed:
        placed = _Placed(response.id, len(response.output), self.conversation.insert(item))
        response.output.append(item)
        await self.send({"type": "response.output_item.added", **placed.where, "item": item})
        await self.send(
            {
                "type": "conversation.item.added",
                "previous_item_id": placed.previous_item_id,
                "item": item,
            }
        )
        return placed

    async def finish_output_item(
        self, response: _Response, placed: _Placed, item: dict[str, Any]
    ) -> None:
        """The item's final state: ``conversation.item.done`` then
        ``response.output_item.done``, the order a live capture of the GA server shows."""
        response.output[placed.output_index] = item
        self.conversation.replace(item)
        await self.send(
            {
                "type": "conversation.item.done",
                "previous_item_id": placed.previous_item_id,
                "item": item,
            }
        )
        await self.send({"type": "response.output_item.done", **placed.where, "item": item})

    async def stream_calls(self, response: _Response, batch: list[tuple[int, CallSpec]]) -> None:
        for index, spec in batch:
            if not await self.stream_call(response, spec, self.call_id(index), index):
                return

    async def stream_call(
        self, response: _Response, spec: CallSpec, call_id: str, index: int | None
    ) -> bool:
        """One function call item; ``index`` None delivers an issued call again (the
        ``duplicate`` fault). Returns whether its arguments were done: only then is it issued.
        """
        item = {
            "id": self.new_id("item"),
            "type": "function_call",
            "status": "in_progress",
            "name": spec.name,
            "call_id": call_id,
            "arguments": "",
        }
        placed = await self.add_output_item(response, item)
        faults = self.faults
        if index in faults.drop_during_response and self.sim._fire("drop_during_response", index):
            self.cut()
            raise _Dropped
        streamed = {"item_id": item["id"], "call_id": call_id}
        sent = ""
        for delta in _chunks(spec.arguments, _ARGUMENT_CHUNK):
            if not await self.pace(response):
                cut = {**item, "status": "incomplete", "arguments": sent}
                await self.finish_output_item(response, placed, cut)
                return False
            await self.send(
                {
                    "type": "response.function_call_arguments.delta",
                    **placed.where,
                    **streamed,
                    "delta": delta,
                }
            )
            sent += delta
        if index is not None:
            self.issue(index, spec, call_id)
        await self.send(
            {
                "type": "response.function_call_arguments.done",
                **placed.where,
                **streamed,
                "name": spec.name,
                "arguments": spec.arguments,
            }
        )
        done = {**item, "status": "completed", "arguments": spec.arguments}
        await self.finish_output_item(response, placed, done)
        return True

    def issue(self, index: int, spec: CallSpec, call_id: str) -> None:
        """Record the call before its ``arguments.done`` goes out, so its output cannot
        arrive first."""
        record = CallRecord(
            call_id,
            spec.name,
            spec.arguments,
            time.monotonic(),
            index,
            [self.number],
            ended_by_server=self.sim.ended_by_server,
        )
        self.sim.calls[call_id] = record
        self.sim.next_call = index + 1
        self.awaiting.add(call_id)

    async def stream_reply(self, response: _Response) -> None:
        """The assistant's answer to ``response.create``: text, or audio with its transcript
        when the session's ``output_modalities`` ask for audio (at real-time pace with
        ``speak_seconds``)."""
        audio = "audio" in (self.session.get("output_modalities") or ())
        key, part_type = ("transcript", "audio") if audio else ("text", "text")
        item = {
            "id": self.new_id("item"),
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        placed = await self.add_output_item(response, item)
        part = {**placed.where, "item_id": item["id"], "content_index": 0}
        added = {"type": part_type, key: ""}
        await self.send({"type": "response.content_part.added", **part, "part": added})
        if audio and self.scenario.speak_seconds:
            said, complete = await self.speak(response, part)
        else:
            said, complete = await self.say(response, part, audio)
        if audio:
            await self.send({"type": "response.output_audio.done", **part})
            await self.send(
                {"type": "response.output_audio_transcript.done", **part, "transcript": said}
            )
        else:
            await self.send({"type": "response.output_text.done", **part, "text": said})
        final_part = {"type": part_type, key: said}
        await self.send({"type": "response.content_part.done", **part, "part": final_part})
        content = {"type": "output_audio" if audio else "output_text", key: said}
        done = {**item, "status": "completed" if complete else "incomplete", "content": [content]}
        await self.finish_output_item(response, placed, done)

    async def say(self, response: _Response, part: dict[str, Any], audio: bool) -> tuple[str, bool]:
        """The short answer, a word per delta (``stream_delay`` apart); returns what was said
        and whether to the end (a cancel stops it at the next delta)."""
        said = ""
        for word in re.findall(r"\S+\s*", _REPLY):
            if not await self.pace(response):
                return said, False
            if audio:
                kind = "response.output_audio_transcript.delta"
                await self.send({"type": kind, **part, "delta": word})
                await self.send({"type": "response.output_audio.delta", **part, "delta": _SILENCE})
            else:
                # A live capture shows text deltas padded with an ``obfuscation`` field.
                kind = "response.output_text.delta"
                await self.send({"type": kind, **part, "delta": word, "obfuscation": "rtguardsim"})
            said += word
        return said, True

    async def speak(self, response: _Response, part: dict[str, Any]) -> tuple[str, bool]:
        """``speak_seconds`` of audio at real-time pace with its transcript, sent by the
        simulator's metronome; returns what was said and whether to the end (a cancel stops
        it at the next chunk)."""
        chunks = max(1, round(self.scenario.speak_seconds / _CHUNK_SECONDS))
        speech = _Speech(self, response, part, chunks)
        self.sim._metronome().add(speech)
        return await speech.done

    def send_now(self, texts: list[str]) -> None:
        """Send frames at once, in one write, from outside a coroutine (the metronome)."""
        ws = self.ws
        if self.cut_off or ws.state is not State.OPEN:
            raise _Dropped
        for text in texts:
            ws.protocol.send_text(text.encode())
        for data in ws.protocol.data_to_send():
            ws.transport.write(data)
        if self.sim.record_frames:
            self.sim.frames_sent.extend(texts)

    @property
    def backed_up(self) -> bool:
        """The client has not read what was sent: audio waits, as it must on a real server."""
        return self.ws.transport.get_write_buffer_size() > _BACKLOG_BYTES

    # --- what the client sends ----------------------------------------------------------

    async def on_frame(self, frame: str | bytes) -> None:
        if self.cut_off:
            return
        sim = self.sim
        sim.client_events += 1
        if isinstance(frame, bytes):
            if sim.record_frames:
                sim.frames_received.append(frame.decode("utf-8", "replace"))
            message = "Expected a text WebSocket message; binary frames are not supported."
            await self.error("invalid_request_error", "invalid_event", message, None)
            return
        if sim.record_frames:
            sim.frames_received.append(frame)
        try:
            event = json.loads(frame)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            message = "Invalid event: failed to parse JSON value."
            await self.error("invalid_request_error", "invalid_json", message, None)
            return
        event_type = event.get("type")
        if event_type is None:
            message = "Missing required parameter: 'type'."
            await self.error(
                "invalid_request_error",
                "missing_required_parameter",
                message,
                event.get("event_id"),
                "type",
            )
            return
        handler = self.handlers.get(event_type) if isinstance(event_type, str) else None
        if handler is None:
            message = (
                f"Invalid value: '{event_type}'. Supported values are: {_one_of(self.handlers)}."
            )
            await self.error(
                "invalid_request_error", "invalid_value", message, event.get("event_id"), "type"
            )
            return
        await handler(event, sim.client_events)

    async def on_session_update(self, event: dict[str, Any], seq: int) -> None:
        event_id = event.get("event_id")
        position = self.sim._count_session_update()
        requested = event.get("session")
        problem = wire.session_update_problem(requested)
        if position in self.faults.reject_session_update:
            problem = ("invalid_value", "Session update refused (injected fault).", "session")
        if problem is not None:
            code, message, param = problem
            await self.error("invalid_request_error", code, message, event_id, param)
            return
        assert isinstance(requested, dict)
        self.session = wire.update_session(self.session, requested)
        self.sim.session_updates.append((seq, self.session))
        await self.send({"type": "session.updated", "session": wire.echo_session(self.session)})
        self.configured.set()

    async def on_audio_append(self, event: dict[str, Any], seq: int) -> None:
        try:
            self.audio_bytes += len(base64.b64decode(event.get("audio") or "", validate=True))
        except (binascii.Error, ValueError, TypeError):
            message = "Invalid 'audio'. Expected base64-encoded audio bytes."
            await self.error(
                "invalid_request_error", "invalid_value", message, event.get("event_id"), "audio"
            )

    async def on_audio_commit(self, event: dict[str, Any], seq: int) -> None:
        buffered_ms = self.audio_bytes / wire.audio_bytes_per_ms(self.session)
        if buffered_ms < _MIN_COMMIT_MS:
            message = (
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{_MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio."
            )
            await self.error(
                "invalid_request_error",
                "input_audio_buffer_commit_empty",
                message,
                event.get("event_id"),
            )
            return
        self.audio_bytes = 0
        item = {
            "id": self.new_id("item"),
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = self.conversation.insert(item)
        committed = {"previous_item_id": previous, "item_id": item["id"]}
        await self.send({"type": "input_audio_buffer.committed", **committed})
        await self.confirm_item(item, previous)

    async def on_audio_clear(self, event: dict[str, Any], seq: int) -> None:
        self.audio_bytes = 0
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_item_create(self, event: dict[str, Any], seq: int) -> None:
        event_id = event.get("event_id")
        raw = event.get("item")
        previous_item_id = event.get("previous_item_id") or None  # "" appends, too
        if not isinstance(raw, dict):
            message = "Missing required parameter: 'item'."
            await self.error(
                "invalid_request_error", "missing_required_parameter", message, event_id, "item"
            )
            return
        problem = _item_problem(raw) or self.placement_problem(raw, previous_item_id)
        if problem is not None:
            code, message, param = problem
            await self.error("invalid_request_error", code, message, event_id, param)
            return
        if raw["type"] == "function_call_output" and not await self.admit_output(raw, event_id):
            return
        item = {**raw, "id": raw.get("id") or self.new_id("item"), "status": "completed"}
        previous = self.conversation.insert(item, previous_item_id)
        self.sim.client_items[self.number].append(raw)
        if raw["type"] == "function_call":
            self.on_function_call_item(raw["call_id"])
        elif raw["type"] == "message" and raw["role"] == "user":
            self.sim.user_messages.append(_text(raw))
        elif raw["type"] == "function_call_output":
            record = self.sim.calls.get(raw["call_id"])
            if record is not None and await self.accept_output(record, raw["output"], seq):
                return  # the connection was dropped before the acknowledgement
            if self.faults.ack_delay:
                self.spawn(self.confirm_item(item, previous, self.faults.ack_delay))
                return
        await self.confirm_item(item, previous)

    def placement_problem(
        self, raw: dict[str, Any], previous_item_id: object
    ) -> tuple[str, str, str] | None:
        if not self.conversation.knows(previous_item_id):
            message = (
                f"Error adding item: the previous item with id '{previous_item_id}' does not exist."
            )
            return "item_create_invalid_previous_item_id", message, "previous_item_id"
        item_id = raw.get("id")
        if item_id and self.conversation.get(item_id) is not None:
            # Not seen live: the simulator's answer, so that item ids stay unique.
            return "duplicate_item_id", f"Item with id '{item_id}' already exists.", "item.id"
        return None

    async def admit_output(self, raw: dict[str, Any], event_id: str | None) -> bool:
        """Refuse an output whose call is not in this conversation (the real server's
        ``invalid_tool_call_id``), or one the ``reject_output`` fault refuses."""
        call_id = raw["call_id"]
        record = self.sim.calls.get(call_id)
        if not self.conversation.has_call(call_id):
            if record is not None:
                record.refused_outputs += 1
            message = f"Tool call ID '{call_id}' not found in conversation."
            await self.error("invalid_request_error", "invalid_tool_call_id", message, event_id)
            return False
        faults = self.faults
        if record is None or record.index not in faults.reject_output:
            return True
        if not self.sim._fire("reject_output", record.index):
            return True
        record.refused_outputs += 1
        message = (
            "The server had an error while processing your request. Sorry about that!"
            if faults.reject_type == "server_error"
            else "Output refused (injected fault)."
        )
        await self.error(faults.reject_type, faults.reject_code, message, event_id)
        return False

    async def accept_output(self, record: CallRecord, output: str, seq: int) -> bool:
        """Count an accepted output; True if the ``drop_after_output`` fault then cut the
        connection (before the acknowledgement)."""
        outputs = record.outputs_by_connection.setdefault(self.number, [])
        outputs.append(output)
        if record.first_output_at is None:
            record.first_output_at = time.monotonic()
            record.output_seq = seq
        if len(outputs) == 1:
            self.pending_create.append(record)
            self.awaiting.discard(record.call_id)
            await self.notify()
        if record.index in self.faults.drop_after_output and self.sim._fire(
            "drop_after_output", record.index
        ):
            self.cut()
            return True
        return False

    def on_function_call_item(self, call_id: str) -> None:
        """The client recreated an issued call's item: the call lives here now."""
        record = self.sim.calls.get(call_id)
        if record is None:
            return
        record.function_call_recreated += 1
        if record.connections[-1] != self.number:
            record.connections.append(self.number)

    async def confirm_item(
        self, item: dict[str, Any], previous: str | None, delay: float = 0.0
    ) -> None:
        if delay:
            await asyncio.sleep(delay)
        confirmed = {"previous_item_id": previous, "item": item}
        await self.send({"type": "conversation.item.added", **confirmed})
        await self.send({"type": "conversation.item.done", **confirmed})

    async def on_item_retrieve(self, event: dict[str, Any], seq: int) -> None:
        item = await self.known_item(event, "retrieving", "item_retrieve_invalid_item_id")
        if item is not None:
            await self.send({"type": "conversation.item.retrieved", "item": item})

    async def on_item_truncate(self, event: dict[str, Any], seq: int) -> None:
        item = await self.known_item(event, "truncating", "item_truncate_invalid_item_id")
        if item is not None:
            fields = ("item_id", "content_index", "audio_end_ms")
            truncated = {key: event.get(key) for key in fields}
            await self.send({"type": "conversation.item.truncated", **truncated})

    async def on_item_delete(self, event: dict[str, Any], seq: int) -> None:
        item = await self.known_item(event, "deleting", "item_delete_invalid_item_id")
        if item is not None:
            self.conversation.remove(item["id"])
            await self.send({"type": "conversation.item.deleted", "item_id": item["id"]})

    async def known_item(
        self, event: dict[str, Any], verb: str, code: str
    ) -> dict[str, Any] | None:
        """The item ``event`` names in this conversation, or None after the real server's
        error for an unknown one."""
        item_id = event.get("item_id")
        item = self.conversation.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            message = f"Error {verb} item: the item with id '{item_id}' does not exist."
            await self.error("invalid_request_error", code, message, event.get("event_id"))
        return item

    async def on_response_create(self, event: dict[str, Any], seq: int) -> None:
        if self.active is not None:
            self.sim.refused_response_creates += 1
            message = (
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one."
            )
            await self.error(
                "invalid_request_error",
                "conversation_already_has_active_response",
                message,
                event.get("event_id"),
            )
            return
        self.sim.response_creates += 1
        for record in self.pending_create:
            record.responded_on.add(self.number)
        self.pending_create.clear()
        self.sim.latest_response_create_on = max(self.sim.latest_response_create_on, self.number)
        response = self.start_response()
        self.spawn(self.run_response(response, self.stream_reply))

    async def on_response_cancel(self, event: dict[str, Any], seq: int) -> None:
        active, named = self.active, event.get("response_id")
        if active is None or named not in (None, active.id):
            message = "Cancellation failed: no active response found"
            await self.error(
                "invalid_request_error",
                "response_cancel_not_active",
                message,
                event.get("event_id"),
            )
            return
        active.cancelled = True


async def _until_closed(coro: Coroutine[Any, Any, None]) -> None:
    """Run a connection's background work; a closed or dropped connection just ends it."""
    with contextlib.suppress(ConnectionClosed, _Dropped):
        await coro


def _one_of(values: Iterable[str]) -> str:
    """``'a', 'b', and 'c'``: how the real server lists supported values."""
    quoted = [f"'{value}'" for value in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def _model(ws: ServerConnection) -> str:
    """The model named in the URL (``?model=``), as the real server reads it."""
    assert ws.request is not None
    query = parse_qs(urlsplit(ws.request.path).query)
    return query.get("model", ["gpt-realtime"])[0]


def _chunks(text: str, size: int) -> list[str]:
    """``text`` in deltas of ``size`` characters; one empty delta for empty text."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _text(message: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in message.get("content", []) if isinstance(c, dict))


def _item_problem(raw: dict[str, Any]) -> tuple[str, str, str] | None:
    """Why the real server would refuse this ``conversation.item.create`` item, if it would."""
    item_type = raw.get("type")
    if item_type not in _ITEM_TYPES:
        message = f"Invalid value: '{item_type}'. Supported values are: {_one_of(_ITEM_TYPES)}."
        return "invalid_value", message, "item.type"
    required = {
        "message": ("role", "content"),
        "function_call": ("call_id", "name", "arguments"),
        "function_call_output": ("call_id", "output"),
    }[item_type]
    missing = [key for key in required if key not in raw]
    if missing:
        param = f"item.{missing[0]}"
        return "missing_required_parameter", f"Missing required parameter: '{param}'.", param
    not_text = [key for key in required if key != "content" and not isinstance(raw[key], str)]
    if not_text:
        param = f"item.{not_text[0]}"
        return "invalid_type", f"Invalid type for '{param}': expected a string.", param
    if item_type == "message" and raw["role"] not in _ROLES:
        message = f"Invalid value: '{raw['role']}'. Supported values are: {_one_of(_ROLES)}."
        return "invalid_value", message, "item.role"
    return None

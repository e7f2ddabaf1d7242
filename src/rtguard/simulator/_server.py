"""A realtime server on 127.0.0.1 that speaks the tool-calling subset of the OpenAI Realtime
protocol, issues the calls of a :class:`Scenario`, injects its faults, and records what the
client did with every call: the peer rtguard's tests run against, and a tool for users to
test their own tools without an API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .._failures import redacting_logger
from ._scenario import CallSpec, Scenario

__all__ = ["CallRecord", "Simulator"]

logger = logging.getLogger("rtguard.simulator")

_ACTIVE_RESPONSE = "conversation_already_has_active_response"

# Client events the simulator accepts with nothing but a confirmation: (server event, fields
# echoed from the client event). Clients such as openai-agents send these on barge-in.
_CONFIRMATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "input_audio_buffer.commit": ("input_audio_buffer.committed", ()),
    "input_audio_buffer.clear": ("input_audio_buffer.cleared", ()),
    "output_audio_buffer.clear": ("output_audio_buffer.cleared", ()),
    "conversation.item.truncate": (
        "conversation.item.truncated",
        ("item_id", "content_index", "audio_end_ms"),
    ),
    "conversation.item.delete": ("conversation.item.deleted", ("item_id",)),
}


@dataclass
class CallRecord:
    """What happened to one issued call, as the server saw it."""

    call_id: str
    name: str
    arguments: str
    issued_at: float
    outputs: list[str] = field(default_factory=list)  # accepted function_call_output texts
    first_output_at: float | None = None
    refused_outputs: int = 0
    response_create_after: bool = False  # a response.create arrived after the first output
    output_seq: int | None = None  # position of the first output among client events

    @property
    def latency(self) -> float | None:
        return None if self.first_output_at is None else self.first_output_at - self.issued_at


class Simulator:
    """``async with Simulator(scenario) as sim:`` then connect a session to ``sim.url``."""

    def __init__(
        self, scenario: Scenario | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.scenario = scenario or Scenario()
        self._host, self._port = host, port
        self._server: Server | None = None
        self._connections = itertools.count(1)
        self.calls: dict[str, CallRecord] = {}
        self.session_updates: list[tuple[int, dict[str, Any]]] = []  # (client event seq, session)
        self.user_messages: list[str] = []
        self.client_events = 0
        self.response_creates = 0
        self.refused_response_creates = 0
        self.connections = 0

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
        self._server = await serve(
            self._handle,
            self._host,
            self._port,
            max_size=64 * 1024 * 1024,
            compression=None,
            logger=redacting_logger("websockets.server"),
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the simulator first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._server.connections) if self._server is not None else 0

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self.port}/v1/realtime"

    # --- what tests and the CLI ask -----------------------------------------------------

    def unanswered(self) -> list[CallRecord]:
        return [c for c in self.calls.values() if not c.outputs]

    def violations(self) -> list[str]:
        """Every issued call must have exactly one accepted output, followed by response.create."""
        problems = []
        for call in self.calls.values():
            if len(call.outputs) != 1:
                problems.append(f"{call.call_id} ({call.name}): {len(call.outputs)} outputs")
            elif not call.response_create_after:
                problems.append(
                    f"{call.call_id} ({call.name}): no response.create after its output"
                )
        return problems

    def assert_invariant(self) -> None:
        problems = self.violations()
        if problems:
            raise AssertionError(
                f"{len(problems)} calls broke the invariant: " + "; ".join(problems[:20])
            )

    # --- one client connection ----------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        await _Connection(self, ws, next(self._connections)).run()


class _Connection:
    def __init__(self, sim: Simulator, ws: ServerConnection, number: int) -> None:
        self.sim = sim
        self.scenario = sim.scenario
        self.ws = ws
        self.number = number
        self.session_id = f"sess_sim{number}"
        self.session: dict[str, Any] = {"type": "realtime", "id": self.session_id}
        self.ids = itertools.count(1)
        self.responding = False
        self.response_lock = asyncio.Lock()
        self.in_flight = 0
        self.room = asyncio.Condition()
        self.pending_create: list[
            CallRecord
        ] = []  # outputs received since the last response.create
        self.duplicates: list[tuple[CallRecord, CallSpec]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.session})
        issuer = asyncio.create_task(self.issue_calls())
        try:
            async for frame in self.ws:
                await self.on_client_event(frame)
        except ConnectionClosed:
            pass
        finally:
            issuer.cancel()
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(issuer, *self.tasks, return_exceptions=True)

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", f"event_sim{self.number}_{next(self.ids)}")
        await self.ws.send(json.dumps(event))

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # --- the model issuing calls --------------------------------------------------------

    async def issue_calls(self) -> None:
        scenario, faults = self.scenario, self.scenario.faults
        per_response = scenario.calls_per_response
        interval = per_response / scenario.rate if scenario.rate else None
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for start in range(0, len(scenario.calls), per_response):
            batch = list(enumerate(scenario.calls[start : start + per_response], start))
            if interval is not None:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at += interval
            else:
                async with self.room:
                    await self.room.wait_for(lambda: self.in_flight < scenario.max_in_flight)
            for index, _ in batch:
                if index in faults.malformed_before:
                    await self.ws.send("{this is not json")
            records = await self.respond_with_calls(batch)
            for (index, spec), record in zip(batch, records, strict=True):
                if index in faults.duplicate:
                    self.duplicates.append((record, spec))
            while self.duplicates:
                record, spec = self.duplicates.pop()
                await self.respond_with_calls([(-1, spec)], reuse=record)
            last = batch[-1][0]
            if faults.drop_connection_after is not None and last >= faults.drop_connection_after:
                self.ws.transport.abort()
                return

    @contextlib.asynccontextmanager
    async def response(self) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
        """One model response: ``response.created``, the caller's items, ``response.done``.

        Only one is in progress at a time, as on the real server.
        """
        async with self.response_lock:
            self.responding = True
            response_id = f"resp_sim{self.number}_{next(self.ids)}"
            created = {"id": response_id, "object": "realtime.response", "status": "in_progress"}
            await self.send({"type": "response.created", "response": {**created, "output": []}})
            items: list[dict[str, Any]] = []
            yield response_id, items
            usage = {"total_tokens": 0, "input_tokens": 0, "output_tokens": 0}
            done = {**created, "status": "completed", "output": items, "usage": usage}
            await self.send({"type": "response.done", "response": done})
            self.responding = False

    async def respond_with_calls(
        self, batch: list[tuple[int, CallSpec]], reuse: CallRecord | None = None
    ) -> list[CallRecord]:
        records = []
        async with self.response() as (response_id, items):
            for output_index, (index, spec) in enumerate(batch):
                call_id = reuse.call_id if reuse else f"call_sim{self.number}_{index}"
                item_id = f"item_sim{self.number}_{next(self.ids)}"
                item = {
                    "id": item_id,
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": call_id,
                    "name": spec.name,
                    "arguments": "",
                }
                where = {"response_id": response_id, "output_index": output_index}
                await self.send({"type": "response.output_item.added", **where, "item": item})
                await self.send(
                    {"type": "conversation.item.added", "previous_item_id": None, "item": item}
                )
                record = reuse or CallRecord(
                    call_id, spec.name, spec.arguments, issued_at=time.monotonic()
                )
                if reuse is None:
                    self.sim.calls[call_id] = record
                    self.in_flight += 1
                records.append(record)
                await self.send(
                    {
                        "type": "response.function_call_arguments.done",
                        **where,
                        "item_id": item_id,
                        "call_id": call_id,
                        "name": spec.name,
                        "arguments": spec.arguments,
                    }
                )
                done_item = {**item, "status": "completed", "arguments": spec.arguments}
                await self.send({"type": "response.output_item.done", **where, "item": done_item})
                await self.send({"type": "conversation.item.done", "item": done_item})
                items.append(done_item)
        return records

    async def respond_with_text(self) -> None:
        async with self.response() as (response_id, items):
            item = {
                "id": f"item_sim{self.number}_{next(self.ids)}",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Done."}],
            }
            await self.send(
                {
                    "type": "response.output_item.done",
                    "response_id": response_id,
                    "output_index": 0,
                    "item": item,
                }
            )
            items.append(item)

    # --- what the client sends ----------------------------------------------------------

    async def on_client_event(self, frame: str | bytes) -> None:
        self.sim.client_events += 1
        seq = self.sim.client_events
        try:
            event = json.loads(frame)
            event_type = event["type"]
        except (ValueError, TypeError, KeyError):
            await self.error(
                "invalid_request_error", "invalid_json", "could not parse the event", None
            )
            return
        event_id = event.get("event_id")
        if event_type == "session.update":
            self.session.update(event.get("session") or {})
            self.sim.session_updates.append((seq, dict(self.session)))
            await self.send({"type": "session.updated", "session": self.session})
        elif event_type == "conversation.item.create":
            await self.on_item(event.get("item") or {}, event_id, seq)
        elif event_type == "response.create":
            await self.on_response_create(event_id)
        elif event_type in ("response.cancel", "input_audio_buffer.append"):
            pass
        elif event_type in _CONFIRMATIONS:
            confirmation, fields = _CONFIRMATIONS[event_type]
            echoed = {key: event.get(key) for key in fields}
            if event_type == "input_audio_buffer.commit":
                echoed["item_id"] = f"item_audio_{seq}"
            await self.send({"type": confirmation, **echoed})
        elif event_type == "conversation.item.retrieve":
            # The simulator keeps no conversation items: the real server's answer for an id it
            # does not know.
            message = f"no item with id {event.get('item_id')!r}"
            await self.error("invalid_request_error", "item_not_found", message, event_id)
        else:
            await self.error(
                "invalid_request_error",
                "unknown_event",
                f"unknown event type {event_type!r}",
                event_id,
            )

    async def on_item(self, item: dict[str, Any], event_id: str | None, seq: int) -> None:
        if item.get("type") == "message":
            text = "".join(
                c.get("text", "") for c in item.get("content", []) if isinstance(c, dict)
            )
            self.sim.user_messages.append(text)
            self.spawn(self.acknowledge(item))
            return
        if item.get("type") != "function_call_output":
            await self.error(
                "invalid_request_error", "invalid_value", "unsupported item type", event_id
            )
            return
        call_id = item.get("call_id")
        record = self.sim.calls.get(call_id) if isinstance(call_id, str) else None
        if record is None:
            await self.error(
                "invalid_request_error", "invalid_value", f"no function call {call_id!r}", event_id
            )
            return
        index = int(call_id.rsplit("_", 1)[1]) if isinstance(call_id, str) else -1
        if index in self.scenario.faults.reject_output and record.refused_outputs == 0:
            record.refused_outputs += 1
            await self.error(
                "invalid_request_error",
                self.scenario.faults.reject_code,
                "output refused (injected fault)",
                event_id,
            )
            return
        record.outputs.append(str(item.get("output", "")))
        if len(record.outputs) == 1:
            record.first_output_at = time.monotonic()
            record.output_seq = seq
            self.pending_create.append(record)
            async with self.room:
                self.in_flight -= 1
                self.room.notify_all()
        item = {**item, "id": f"item_sim{self.number}_{next(self.ids)}", "status": "completed"}
        if self.scenario.faults.ack_delay:
            self.spawn(self.acknowledge(item, self.scenario.faults.ack_delay))
        else:
            await self.acknowledge(item)

    async def acknowledge(self, item: dict[str, Any], delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
        await self.send({"type": "conversation.item.done", "item": item})

    async def on_response_create(self, event_id: str | None) -> None:
        if self.responding:
            self.sim.refused_response_creates += 1
            await self.error(
                "invalid_request_error",
                _ACTIVE_RESPONSE,
                "Conversation already has an active response in progress.",
                event_id,
            )
            return
        self.sim.response_creates += 1
        for record in self.pending_create:
            record.response_create_after = True
        self.pending_create.clear()
        self.spawn(self.respond_with_text())

    async def error(self, kind: str, code: str, message: str, event_id: str | None) -> None:
        await self.send(
            {
                "type": "error",
                "error": {
                    "type": kind,
                    "code": code,
                    "message": message,
                    "param": None,
                    "event_id": event_id,
                },
            }
        )

"""Drives a SessionCore the way the asyncio layer does, with a hand-moved clock: shared by
the core tests (calls) and the continuity tests (connections)."""

from __future__ import annotations

import json
from typing import Any

from rtguard import Agent, ConnectionLostError, RetryPolicy, SessionConfig, function_tool
from rtguard._core import (
    Connect,
    Disconnect,
    Frame,
    Job,
    LinkAction,
    Prepare,
    Prepared,
    Returned,
    SessionCore,
)


@function_tool
def lookup(key: str) -> str:
    return key


@function_tool(timeout=1, timeout_behavior="raise_exception")
def strict() -> str:
    return ""


billing = Agent(name="billing", instructions="Billing.", tools=[lookup])
support = Agent(name="support", tools=[lookup, strict], handoffs=[billing])
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.1)


class Core:
    """Drives a SessionCore the way the asyncio layer does, with a hand-moved clock."""

    def __init__(self, *, agent: Agent = support, jitter: float = 0.5, **config: Any) -> None:
        """``jitter`` is what the core's random() returns: backoff delays are reproducible."""
        config.setdefault("retry", FAST)
        self.core = SessionCore(agent, SessionConfig(**config), random=lambda: jitter)
        self.now = 0.0
        self.events: list[Any] = []
        self.frames: list[Frame] = []  # produced, not written yet
        self.produced: list[Frame] = []  # every frame, for take()
        self.jobs: list[Job] = []
        self.actions: list[LinkAction] = []
        self.core.connected(self.now)
        self.drain()
        self.server("session.updated", session={"type": "realtime", "id": "sess_1"})
        self.write_all()
        self.take("session.update")

    def drain(self) -> None:
        core = self.core
        while (event := core.next_event()) is not None:
            self.events.append(event)
        while (frame := core.next_frame()) is not None:
            self.frames.append(frame)
            self.produced.append(frame)
        while (job := core.next_job()) is not None:
            self.jobs.append(job)
        while (action := core.next_link_action()) is not None:
            self.actions.append(action)

    def server(self, event_type: str, **fields: Any) -> None:
        self.core.receive_frame(json.dumps({"type": event_type, **fields}), self.now)
        self.drain()

    def call(self, call_id: str, name: str = "lookup", response: str | None = "resp_1") -> None:
        args = '{"key": "k"}' if name == "lookup" else "{}"
        self.server(
            "response.function_call_arguments.done",
            call_id=call_id,
            name=name,
            arguments=args,
            response_id=response,
        )

    def response_done(self, response: str = "resp_1", status: str = "completed") -> None:
        self.server("response.done", response={"id": response, "status": status, "output": []})

    def finish_job(self, call_id: str, result: Any = None) -> None:
        """Complete the pending job of ``call_id`` (the tool returns "ok" by default)."""
        job = next(j for j in self.jobs if j.call.call_id == call_id)
        self.jobs.remove(job)
        if result is None:
            result = Prepared({}, needs_approval=False) if isinstance(job, Prepare) else None
            result = result or Returned("ok")
        self.core.job_done(job.call, result, self.now)
        self.drain()

    def run(self, call_id: str, result: Any = None) -> None:
        """Prepare and execute a call's tool."""
        self.finish_job(call_id)
        self.finish_job(call_id, result)

    def write_all(self) -> None:
        while self.frames:
            frame = self.frames.pop(0)
            self.core.frame_written(frame, self.now)
            self.drain()

    def take(self, event_type: str) -> list[dict[str, Any]]:
        """The frames of that type produced since the last take() of that type."""
        taken = [f for f in self.produced if json.loads(f.text)["type"] == event_type]
        self.produced = [f for f in self.produced if f not in taken]
        self.frames = [f for f in self.frames if f not in taken]
        return [json.loads(f.text) for f in taken]

    def ack(self, call_id: str) -> None:
        item = {"type": "function_call_output", "call_id": call_id, "output": "ok"}
        self.server("conversation.item.added", item=item)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.core.handle_timer(self.now)
        self.drain()

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if type(e) is kind]

    # --- connections ----------------------------------------------------------------------

    def lose(self, code: int | None = None, reason: str = "") -> None:
        """The reader saw the connection end (``code`` None: no close frame)."""
        error = ConnectionLostError("gone", close_code=code, close_reason=reason)
        self.core.connection_lost(error, self.now)
        self.drain()
        self.frames.clear()  # the old writer is gone with its connection

    def reconnect(self) -> None:
        """Wait for the attempt the core schedules, then let it succeed."""
        self.advance_to_connect()
        self.core.connected(self.now)
        self.drain()

    def advance_to_connect(self) -> Connect:
        deadline = self.core.next_deadline()
        assert deadline is not None
        self.advance(max(0.0, deadline - self.now))
        connect = self.actions.pop()
        assert isinstance(connect, Connect), connect
        return connect

    def disconnects(self) -> int:
        return sum(isinstance(a, Disconnect) for a in self.actions)

    def types(self) -> list[str]:
        """The types of the frames produced and not written yet, in order."""
        return [json.loads(f.text)["type"] for f in self.frames]


def output_frames(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.call is not None]

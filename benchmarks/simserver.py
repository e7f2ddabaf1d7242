"""The rtguard simulator in its own process, so the client under test has a core to itself
and the simulator's per-call records (and its CPU time) are not counted against the client.

The parent sends commands over a pipe: start a fresh Simulator for a scenario, ask how many
calls were issued and answered, and collect a report computed from the simulator's per-call
records (``issued_at`` and ``first_output_at`` are ``time.monotonic()``, one clock for every
process on the machine).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from rtguard.simulator import Scenario, Simulator

from .child import ChildProcess

__all__ = ["SimReport", "SimStatus", "SimulatorProcess", "percentile"]


@dataclass(frozen=True)
class SimStatus:
    issued: int
    answered: int
    open_connections: int


@dataclass(frozen=True)
class SimReport:
    """What the simulator saw during one client's run."""

    issued: int
    answered: int  # calls with at least one accepted output
    duplicated: int  # calls with more than one accepted output in one conversation
    without_response_create: int  # answered calls never followed by a response.create
    refused_outputs: int
    response_creates: int
    refused_response_creates: int
    client_events: int
    session_updates: int
    first_issued_at: float | None
    last_output_at: float | None
    violations: list[str] = field(default_factory=list)  # the first invariant breaches
    latencies: list[float] = field(default_factory=list)  # seconds, answered calls, issue order
    decile_rates: list[float] = field(default_factory=list)  # calls/s in each tenth of the run
    audio_late_ms: dict[int, int] = field(default_factory=dict)  # spoken chunks by ms behind

    @property
    def calls_per_second(self) -> float:
        if self.first_issued_at is None or self.last_output_at is None or not self.answered:
            return 0.0
        elapsed = self.last_output_at - self.first_issued_at
        return self.answered / elapsed if elapsed > 0 else 0.0

    @property
    def elapsed(self) -> float:
        if self.first_issued_at is None or self.last_output_at is None:
            return 0.0
        return self.last_output_at - self.first_issued_at


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class SimulatorProcess(ChildProcess):
    """A child process that runs one Simulator at a time on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__(_serve, "rtguard-bench-sim", farewell=("exit",))
        self._lock = asyncio.Lock()

    async def _ask(self, *command: Any, timeout: float = 60.0) -> Any:
        async with self._lock:
            self._conn.send(command)
            ready = await asyncio.to_thread(self._conn.poll, timeout)
            if not ready:
                raise TimeoutError(f"the simulator process did not answer {command[0]!r}")
            answer = self._conn.recv()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def start(self, scenario: Scenario) -> str:
        """Start a fresh simulator for ``scenario``; returns its WebSocket URL."""
        url: str = await self._ask("start", scenario)
        return url

    async def status(self) -> SimStatus:
        status: SimStatus = await self._ask("status")
        return status

    async def wait_answered(self, count: int, timeout: float) -> SimStatus:
        """Until ``count`` calls have an output (or ``timeout`` seconds pass)."""
        status: SimStatus = await self._ask("wait", count, timeout, timeout=timeout + 30)
        return status

    async def settle(self, expected_issued: int, quiet: float, timeout: float) -> SimStatus:
        """Until every expected call is issued and answered, or nothing changed for ``quiet``
        seconds (calls left without output, or a client that stopped), bounded by ``timeout``."""
        status: SimStatus = await self._ask(
            "settle", expected_issued, quiet, timeout, timeout=timeout + 30
        )
        return status

    async def end_script(self) -> None:
        """The current simulator issues no more calls (responses under way finish)."""
        await self._ask("end_script")

    async def stop(self) -> SimReport:
        """Stop the current simulator and report on its calls."""
        report: SimReport = await self._ask("stop")
        return report


# --- the child process ------------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    asyncio.run(_serve_async(conn))


async def _serve_async(conn: Connection) -> None:
    sim: Simulator | None = None
    while True:
        command = await asyncio.to_thread(conn.recv)
        name = command[0]
        try:
            if name == "exit":
                if sim is not None:
                    await sim.stop()
                return
            if name == "start":
                if sim is not None:
                    await sim.stop()
                sim = Simulator(command[1])
                await sim.start()
                conn.send(sim.url)
            elif name == "status":
                assert sim is not None
                conn.send(_status(sim))
            elif name == "wait":
                assert sim is not None
                conn.send(await _wait(sim, command[1], command[2]))
            elif name == "end_script":
                assert sim is not None
                sim.end_script()
                conn.send(None)
            elif name == "settle":
                assert sim is not None
                conn.send(await _settle(sim, command[1], command[2], command[3]))
            elif name == "stop":
                assert sim is not None
                await sim.stop()
                conn.send(_report(sim))
                sim = None
            else:
                conn.send(ValueError(f"unknown command {name!r}"))
        except Exception as exc:
            conn.send(exc)


def _status(sim: Simulator) -> SimStatus:
    answered = sum(1 for c in sim.calls.values() if c.outputs)
    return SimStatus(len(sim.calls), answered, sim.open_connections)


async def _wait(sim: Simulator, count: int, timeout: float) -> SimStatus:
    deadline = time.monotonic() + timeout
    status = _status(sim)
    while status.answered < count and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        status = _status(sim)
    return status


async def _settle(sim: Simulator, expected: int, quiet: float, timeout: float) -> SimStatus:
    deadline = time.monotonic() + timeout
    status = _status(sim)
    seen = (status.issued, status.answered, sim.client_events)
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        if status.issued >= expected and status.answered >= status.issued:
            break
        if time.monotonic() - last_change >= quiet:
            break
        await asyncio.sleep(0.01)
        status = _status(sim)
        now_seen = (status.issued, status.answered, sim.client_events)
        if now_seen != seen:
            seen, last_change = now_seen, time.monotonic()
    return status


def _report(sim: Simulator) -> SimReport:
    records = list(sim.calls.values())
    answered = [r for r in records if r.outputs]
    latencies = [r.latency for r in answered if r.latency is not None]
    first_outputs = [r.first_output_at for r in answered if r.first_output_at is not None]
    return SimReport(
        issued=len(records),
        answered=len(answered),
        duplicated=sum(
            1 for r in records if any(len(o) > 1 for o in r.outputs_by_connection.values())
        ),
        without_response_create=sum(1 for r in answered if not sim.asked_to_answer(r)),
        refused_outputs=sum(r.refused_outputs for r in records),
        response_creates=sim.response_creates,
        refused_response_creates=sim.refused_response_creates,
        client_events=sim.client_events,
        session_updates=len(sim.session_updates),
        first_issued_at=min((r.issued_at for r in records), default=None),
        last_output_at=max(first_outputs, default=None),
        violations=sim.violations()[:20],
        latencies=latencies,
        decile_rates=_decile_rates(
            min((r.issued_at for r in records), default=0.0), sorted(first_outputs)
        ),
        audio_late_ms=dict(sim.audio_late_ms),
    )


def _decile_rates(start: float, outputs: list[float]) -> list[float]:
    """calls/s over each tenth of the answered calls, in the order they were answered."""
    size = len(outputs) // 10
    if size == 0:
        return []
    rates, previous = [], start
    for k in range(10):
        end = outputs[(k + 1) * size - 1]
        rates.append(size / (end - previous) if end > previous else float("nan"))
        previous = end
    return rates

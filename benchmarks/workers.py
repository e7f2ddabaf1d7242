"""Each client kind in its own process: its heap holds only its own library (the SDK and its
pydantic models would otherwise make every garbage collection in an rtguard run slower), and
its CPU time is its own. A worker is spawned once per kind and runs one session per command.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .clients import (
    AgentsSdkClient,
    AudioSink,
    BenchClient,
    RawClient,
    RtguardClient,
    TelemetrySetup,
    cpu_seconds,
    quiet_logs,
    telemetry_setup,
)

__all__ = ["KINDS", "ClientWorker", "GcClock", "RunStats", "Window", "Workers", "make_client"]

# kind -> the telemetry set-up (rtguard kinds only)
KINDS = {
    "raw": None,
    "sdk": None,
    "rtguard-off": "off",
    "rtguard-metrics": "metrics",
    "rtguard-on": "spans+metrics",
    "rtguard-otlp": "otlp",
}


def make_client(
    kind: str,
    otlp_endpoint: str | None = None,
    *,
    setup: TelemetrySetup | None = None,
    audio: AudioSink | None = None,
    agent: Any = None,
) -> tuple[BenchClient, TelemetrySetup | None]:
    """A client of ``kind``; an rtguard client reports to ``setup`` (one set-up shared by a
    process's sessions, as an app has one tracer provider) or to a new one. ``agent``: the
    library's agent, for sessions that share one (by default each client builds its own)."""
    if kind == "raw":
        return RawClient(audio), None
    if kind == "sdk":
        return AgentsSdkClient(audio=audio, agent=agent), None
    telemetry = KINDS.get(kind)
    if telemetry is None:
        raise ValueError(f"unknown client kind {kind!r}")
    setup = setup or telemetry_setup(telemetry, otlp_endpoint)
    return RtguardClient(setup.telemetry, audio=audio, agent=agent), setup


@dataclass(frozen=True)
class RunStats:
    """What the client's process measured over one session (open until every output)."""

    delivered: int
    cpu_seconds: float
    wall_seconds: float
    gc_seconds: float  # time spent in garbage collection
    gc_full: int  # full (generation 2) collections
    server_errors: int
    spans: int
    profile: Any = None  # profiles.ProfiledRun when asked for


class GcClock:
    """Times garbage collections (a ``gc.callbacks`` entry): in total, the longest, how many."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.longest = 0.0
        self.collections = 0
        self.full = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._started
            self.seconds += pause
            self.longest = max(self.longest, pause)
            self.collections += 1
            self.full += info.get("generation") == 2


class Window:
    """The measured part of a run: its garbage collections timed (``clock``) and, given
    profile ``groups``, the event loop profiled with pyinstrument. ``stop()`` may be called
    again (from a ``finally``); ``profile()`` analyses what was profiled."""

    def __init__(self, groups: dict[str, tuple[str, ...]] | None) -> None:
        self.clock = GcClock()
        self._groups = groups
        self._profiler: Any = None

    def start(self) -> None:
        gc.callbacks.append(self.clock)
        if self._groups is not None:
            from pyinstrument import Profiler

            self._profiler = Profiler(interval=0.001, async_mode="disabled")
            self._profiler.start()

    def stop(self) -> None:
        if self._profiler is not None and self._profiler.is_running:
            self._profiler.stop()
        if self.clock in gc.callbacks:
            gc.callbacks.remove(self.clock)

    def profile(self) -> Any:
        """profiles.ProfiledRun, or None without groups."""
        if self._profiler is None or self._groups is None:
            return None
        from .profiles import analyse

        return analyse(self._profiler, self._groups)


async def _session(
    conn: Connection,
    kind: str,
    endpoint: str | None,
    url: str,
    calls: int,
    timeout: float,
    groups: dict[str, tuple[str, ...]] | None,
) -> RunStats:
    """Open, wait for ``calls`` outputs, report "delivered", then close when the parent says
    (after the simulator has every output: closing earlier could cut off the last frames)."""
    client, setup = make_client(kind, endpoint)
    gc.collect()
    window = Window(groups)
    window.start()
    wall_before, cpu_before = time.monotonic(), cpu_seconds()
    try:
        await client.open(url)
        await client.wait_delivered(calls, timeout)
        cpu, wall = cpu_seconds() - cpu_before, time.monotonic() - wall_before
        window.stop()
        conn.send("delivered")
        await asyncio.to_thread(conn.recv)  # "close"
    finally:
        window.stop()
        await client.close()
        if setup is not None:
            setup.shutdown()
    return RunStats(
        delivered=client.delivered,
        cpu_seconds=cpu,
        wall_seconds=wall,
        gc_seconds=window.clock.seconds,
        gc_full=window.clock.full,
        server_errors=client.server_errors.total(),
        spans=setup.spans_ended if setup is not None else 0,
        profile=window.profile(),
    )


def _serve(kind: str, endpoint: str | None, conn: Connection) -> None:
    quiet_logs()
    asyncio.run(_serve_async(kind, endpoint, conn))


async def _serve_async(kind: str, endpoint: str | None, conn: Connection) -> None:
    while True:
        try:
            command = await asyncio.to_thread(conn.recv)
        except EOFError:
            return
        if command[0] == "exit":
            return
        try:
            if command[0] == "voice":
                from .voice import serve_sessions

                conn.send(await serve_sessions(conn, kind, *command[1:]))
            else:
                conn.send(await _session(conn, kind, endpoint, *command[1:]))
        except Exception as exc:
            conn.send(exc)


class ClientWorker:
    def __init__(self, kind: str, otlp_endpoint: str | None = None) -> None:
        self.kind = kind
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve, args=(kind, otlp_endpoint, child), name=f"bench-{kind}"
        )
        self._process.start()
        child.close()

    async def run(
        self,
        url: str,
        calls: int,
        timeout: float,
        groups: dict[str, tuple[str, ...]] | None = None,
        before_close: Callable[[], Awaitable[object]] | None = None,
    ) -> RunStats:
        """One session: connect to ``url``, wait for ``calls`` outputs, await
        ``before_close()``, close."""
        stats: RunStats = await self.ask(
            ("run", url, calls, timeout, groups), timeout, before_close=before_close
        )
        return stats

    async def ask(
        self,
        command: tuple[Any, ...],
        timeout: float,
        *,
        started: Callable[[], object] | None = None,
        before_close: Callable[[], Awaitable[object]] | None = None,
    ) -> Any:
        """Run a command in the worker, which may say "started" (``started()`` is called:
        the measured part begins) and "delivered" (``before_close()`` is awaited, then the
        worker closes its sessions), then answers with its result."""
        self._conn.send(command)
        answer = await self._receive(timeout + 60)
        if answer == "started":
            if started is not None:
                started()
            answer = await self._receive(timeout + 60)
        if answer == "delivered":
            try:
                if before_close is not None:
                    await before_close()
            finally:
                self._conn.send("close")
            answer = await self._receive(120)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def _receive(self, timeout: float) -> Any:
        if not await asyncio.to_thread(self._conn.poll, timeout):
            raise TimeoutError(f"the {self.kind} client did not answer")
        return self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send(("exit",))
        self._process.join(timeout=15)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._conn.close()


class Workers:
    """One worker per client kind, started on first use."""

    def __init__(self) -> None:
        self._workers: dict[tuple[str, str | None], ClientWorker] = {}

    def get(self, kind: str, otlp_endpoint: str | None = None) -> ClientWorker:
        key = (kind, otlp_endpoint)
        if key not in self._workers:
            self._workers[key] = ClientWorker(kind, otlp_endpoint)
        return self._workers[key]

    def close(self, kind: str | None = None) -> None:
        for key in [k for k in self._workers if kind is None or k[0] == kind]:
            self._workers.pop(key).close()

"""Memory: the client runs in a fresh process (nothing from other benchmarks in its heap) for a
long closed-loop session; its RSS is sampled every 5% of the calls and its live objects
(``gc.get_objects()`` after a collection) at 25/50/75/100%. A per-call leak shows as RSS and
object counts that keep rising over the second half of the run."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

from rtguard.simulator import Scenario

from . import throughput
from .clients import quiet_logs
from .simserver import SimulatorProcess
from .workers import Workers, make_client

__all__ = ["MemoryResult", "MemoryRun", "peak_rss", "run"]

FULL_CALLS, QUICK_CALLS = 100_000, 5_000
SDK_CALLS, QUICK_SDK_CALLS = 4_000, 1_000  # the SDK's per-call cost grows with the session
STEPS = 20


@dataclass(frozen=True)
class MemorySample:
    calls: int
    rss_bytes: int
    objects: int | None


@dataclass
class MemoryRun:
    client: str
    calls: int
    samples: list[MemorySample]
    peak_rss_bytes: int
    answered: int

    def _second_half(self) -> list[MemorySample]:
        return [s for s in self.samples if s.calls >= self.calls // 2]

    @property
    def rss_bytes_per_call(self) -> float:
        """RSS growth per call over the second half (least squares)."""
        points = [(s.calls, s.rss_bytes) for s in self._second_half()]
        return _slope(points)

    @property
    def objects_per_call(self) -> float:
        points = [(s.calls, s.objects) for s in self.samples if s.objects is not None]
        points = [p for p in points if p[0] >= self.calls // 2]
        return _slope([(x, float(y)) for x, y in points])

    def rss_at(self, fraction: float) -> int:
        target = self.calls * fraction
        return min(self.samples, key=lambda s: abs(s.calls - target)).rss_bytes


def _slope(points: list[tuple[int, float]] | list[tuple[int, int]]) -> float:
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    var = sum((p[0] - mean_x) ** 2 for p in points)
    cov = sum((p[0] - mean_x) * (p[1] - mean_y) for p in points)
    return cov / var if var else float("nan")


@dataclass
class MemoryResult:
    runs: list[MemoryRun] = field(default_factory=list)


def _child(kind: str, url: str, calls: int, conn: Connection) -> None:
    quiet_logs()
    try:
        conn.send(asyncio.run(_child_run(kind, url, calls)))
    except Exception as exc:
        conn.send(exc)


async def _child_run(kind: str, url: str, calls: int) -> tuple[list[MemorySample], int]:
    client, setup = make_client(kind)
    process = psutil.Process()
    samples: list[MemorySample] = []
    object_marks = {calls // 4, calls // 2, 3 * calls // 4, calls}
    try:
        await client.open(url)
        for step in range(1, STEPS + 1):
            mark = calls * step // STEPS
            if not await client.wait_delivered(mark, max(120.0, calls / 20)):
                break
            objects = None
            if mark in object_marks:
                gc.collect()
                objects = len(gc.get_objects())
            samples.append(MemorySample(client.delivered, process.memory_info().rss, objects))
    finally:
        await client.close()
        if setup is not None:
            setup.shutdown()
    return samples, peak_rss()


def peak_rss() -> int:
    """VmHWM: this process's peak RSS. (ru_maxrss would not do: Linux carries it across
    fork and exec, so a spawned child starts with its parent's peak.)"""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return psutil.Process().memory_info().rss


async def measure(sim: SimulatorProcess, kind: str, calls: int) -> MemoryRun:
    url = await sim.start(Scenario(calls=(throughput.ECHO,) * calls))
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child, args=(kind, url, calls, child), name="bench-memory")
    process.start()
    child.close()
    try:
        ready = await asyncio.to_thread(parent.poll, max(300.0, calls / 10))
        answer = parent.recv() if ready else TimeoutError("the memory client did not finish")
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
        parent.close()
    report = await sim.stop()
    if isinstance(answer, BaseException):
        raise answer
    samples, peak = answer
    return MemoryRun(throughput.CLIENT_LABELS[kind], calls, samples, peak, report.answered)


async def run(
    sim: SimulatorProcess, workers: Workers, *, quick: bool, log: Callable[[str], None]
) -> MemoryResult:
    """Its own fresh process per run (``workers`` unused): the heap starts clean."""
    result = MemoryResult()
    calls = QUICK_CALLS if quick else FULL_CALLS
    sdk_calls = QUICK_SDK_CALLS if quick else SDK_CALLS
    for kind, n in (("rtguard-on", calls), ("sdk", min(calls, sdk_calls))):
        m = await measure(sim, kind, n)
        result.runs.append(m)
        log(
            f"memory {kind:12} N={n}: peak RSS {m.peak_rss_bytes / 2**20:.1f} MiB, second half "
            f"{m.rss_bytes_per_call:.0f} B/call, {m.objects_per_call:.2f} objects/call"
        )
    return result

"""Soak: one long session with mixed outcomes and full telemetry; resident memory, the
ledger's size, open tasks and per-call latency must stay flat (we report the slopes).

    .venv/bin/python -m benchmarks.soak [--calls 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from rtguard import (
    Agent,
    CallIncomplete,
    OutputAcknowledged,
    RealtimeSession,
    function_tool,
)
from rtguard.telemetry import RtguardMetrics, Telemetry


class _DiscardingExporter(SpanExporter):
    """Spans are built, batched and serialised-ready; only the network hop is left out."""

    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@function_tool(timeout=0.05)
async def mixed(kind: str) -> str:
    if kind == "raise":
        raise RuntimeError("soak failure")
    if kind == "slow":
        await asyncio.sleep(1)
    return kind


@dataclass
class Point:
    calls: int
    rss_mib: float
    ledger: int
    tasks: int
    p99_ms: float


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope(xs: list[float], ys: list[float]) -> float:
    return statistics.linear_regression(xs, ys).slope


KINDS = ["ok"] * 16 + ["raise", "raise", "slow", "bad"]


def scenario_file(total: int, directory: str) -> str:
    """The mix as a scenario file for `rtguard simulate`: the simulator runs in its own
    process, so its per-call records do not count against the session's memory."""
    rng = random.Random(11)
    kinds = rng.sample(KINDS, len(KINDS))
    calls = [{"name": "mixed", "arguments": "{oops" if k == "bad" else {"kind": k}} for k in kinds]
    data = {
        "calls": calls,
        "repeat": total // len(KINDS),
        "calls_per_response": 4,
        "max_in_flight": 64,
        "faults": {"reject_output": list(range(13, total, 100)), "reject_type": "server_error"},
    }
    path = os.path.join(directory, "soak.json")
    with open(path, "w") as file:
        json.dump(data, file)
    return path


@contextlib.contextmanager
def simulator_process(scenario: str) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "rtguard.cli",
        "simulate",
        "--port",
        str(port),
        "--scenario",
        scenario,
    ]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/v1/realtime"
    finally:
        process.terminate()
        process.wait(30)


async def soak(url: str, total: int, every: int) -> list[Point]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DiscardingExporter(), max_queue_size=8192))
    telemetry = Telemetry(tracer_provider=provider, metrics=RtguardMetrics(CollectorRegistry()))
    points: list[Point] = []
    latencies: list[float] = []
    settled = incomplete = 0
    session = RealtimeSession(Agent(name="soak", tools=[mixed]), url=url, telemetry=telemetry)
    async with session:
        async for event in session:
            if not isinstance(event, OutputAcknowledged | CallIncomplete):
                continue
            settled += 1
            if isinstance(event, CallIncomplete):
                incomplete += 1
            else:
                latencies.append(event.latency)
            if settled % every == 0:
                p99 = statistics.quantiles(latencies, n=100)[98] * 1000
                ledger = session.ledger.remembered_count
                points.append(Point(settled, rss_mib(), ledger, len(asyncio.all_tasks()), p99))
                latencies.clear()
            if settled == total:
                break
    provider.shutdown()
    if incomplete:
        raise SystemExit(f"{incomplete} calls ended without output")
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    total = args.calls - args.calls % len(KINDS)
    every = max(1000, total // 20)
    started = time.monotonic()
    directory = tempfile.mkdtemp(prefix="rtguard-soak-")
    with simulator_process(scenario_file(total, directory)) as url:
        points = asyncio.run(soak(url, total, every))
    shutil.rmtree(directory)
    elapsed = time.monotonic() - started
    steady = points[len(points) // 4 :]  # after warm-up (caches, first allocations)
    xs = [p.calls / 1000 for p in steady]
    rate = total / elapsed
    print(f"soak: {total} calls in {elapsed:.1f} s ({rate:.0f} calls/s), 0 without output")
    print("| calls | RSS MiB | ledger entries | asyncio tasks | p99 ms (window) |")
    print("|---:|---:|---:|---:|---:|")
    for p in points:
        print(f"| {p.calls} | {p.rss_mib:.1f} | {p.ledger} | {p.tasks} | {p.p99_ms:.2f} |")
    print()
    print("slopes after warm-up, per 1,000 calls:")
    print(f"- RSS: {slope(xs, [p.rss_mib for p in steady]) * 1024:+.1f} KiB")
    print(f"- ledger entries: {slope(xs, [p.ledger for p in steady]):+.2f}")
    print(f"- asyncio tasks: {slope(xs, [p.tasks for p in steady]):+.3f}")
    print(f"- p99 latency: {slope(xs, [p.p99_ms for p in steady]):+.4f} ms")


if __name__ == "__main__":
    main()

"""Continuity soak: one session answering mixed calls while its connection is dropped at
random moments (a tool running, an output sent but not acknowledged, a response half
streamed) and the server expires it. Every call must end with exactly one output in the
conversation that continues, no tool may run twice, every tool error must reach the app
once, and memory must stay flat. It reports the time from each loss to the first frame
written on the new connection.

    .venv/bin/python -m benchmarks.continuity [--calls 20000 --drops 100 --expiries 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from rtguard import (
    Agent,
    CallIncomplete,
    OutputAcknowledged,
    RealtimeSession,
    Reconnecting,
    SessionConfig,
    SessionResumed,
    ToolFailed,
    Transport,
    WebSocketTransport,
    function_tool,
)
from rtguard.simulator import CallSpec, Faults, Scenario
from rtguard.telemetry import RtguardMetrics, Telemetry

from .clients import quiet_logs
from .simserver import SimReport, SimulatorProcess, percentile
from .soak import rss_mib, slope

KINDS = ["ok"] * 14 + ["slow", "slow", "raise", "bad"]
# What the soak itself keeps is small and fixed, so that the memory measured is rtguard's.
RUNS = bytearray(1_000_000)  # how often each call's tool ran, by its n
RAISED: dict[int, BaseException] = {}  # errors the tools raised, until the app gets them


class SoakError(Exception):
    def __init__(self, n: int) -> None:
        super().__init__(f"continuity failure {n}")
        self.n = n


@function_tool(timeout=1.0)
async def mixed(kind: str, n: int) -> str:
    RUNS[n] += 1
    if kind == "slow":
        await asyncio.sleep(0.05)
    if kind == "raise":
        RAISED[n] = SoakError(n)
        raise RAISED[n]
    return f"{kind} {n}"


def scenario(total: int, drops: int, expiries: int, seed: int) -> Scenario:
    rng = random.Random(seed)
    kinds = [rng.choice(KINDS) for _ in range(total)]
    calls = tuple(
        CallSpec("mixed", "{oops" if k == "bad" else f'{{"kind": "{k}", "n": {n}}}')
        for n, k in enumerate(kinds)
    )
    moments = rng.sample(range(10, total - 10), drops + expiries)
    thirds = [frozenset(moments[i:drops:3]) for i in range(3)]
    faults = Faults(
        drop_connection_after=thirds[0],  # the response's tools are running
        drop_after_output=thirds[1],  # accepted, not acknowledged
        drop_during_response=thirds[2],  # a call half streamed
        expire_after=frozenset(moments[drops:]),
    )
    return Scenario(calls=calls, calls_per_response=2, max_in_flight=32, faults=faults)


@dataclass
class Observed:
    settled: int = 0
    incomplete: Counter[str] = field(default_factory=Counter)  # by reason
    errors: int = 0  # tool errors the app got
    misdelivered: int = 0  # tool errors the app got twice, or not as raised
    losses: list[float] = field(default_factory=list)  # when each loss was reported
    gaps: list[float] = field(default_factory=list)  # loss to the first frame written after it
    reasons: Counter[str] = field(default_factory=Counter)
    resumed: int = 0
    memory: list[tuple[int, float]] = field(default_factory=list)


class _FirstWrite:
    """Times the first frame written on a connection (what a reconnect is waiting for)."""

    def __init__(self, inner: Transport, observed: Observed) -> None:
        self._inner, self._observed, self._first = inner, observed, True

    @property
    def is_open(self) -> bool:
        return self._inner.is_open

    async def send(self, frame: str) -> None:
        await self._inner.send(frame)
        if self._first and self._observed.losses:
            self._observed.gaps.append(time.monotonic() - self._observed.losses[-1])
        self._first = False

    async def recv(self) -> str | bytes:
        return await self._inner.recv()

    async def close(self) -> None:
        await self._inner.close()


async def run(total: int, drops: int, expiries: int, seed: int) -> tuple[Observed, SimReport]:
    simulator = SimulatorProcess()
    observed = Observed()
    try:
        url = await simulator.start(scenario(total, drops, expiries, seed))

        async def connector() -> Transport:
            return _FirstWrite(await WebSocketTransport.connect(url, {}), observed)

        telemetry = Telemetry(metrics=RtguardMetrics(CollectorRegistry()))
        agent = Agent(name="continuity", tools=[mixed])
        session = RealtimeSession(
            agent, connector=connector, config=SessionConfig(), telemetry=telemetry
        )
        every = max(500, total // 20)
        async with session:
            async for event in session:
                if isinstance(event, Reconnecting):
                    observed.reasons[event.reason] += 1
                    if event.attempt == 1:
                        observed.losses.append(time.monotonic())
                elif isinstance(event, SessionResumed):
                    observed.resumed += 1
                elif isinstance(event, ToolFailed) and isinstance(event.error, SoakError):
                    observed.errors += 1
                    observed.misdelivered += RAISED.pop(event.error.n, None) is not event.error
                if isinstance(event, OutputAcknowledged | CallIncomplete):
                    observed.settled += 1
                    if isinstance(event, CallIncomplete):
                        observed.incomplete[event.reason] += 1
                    if observed.settled % every == 0:
                        observed.memory.append((observed.settled, rss_mib()))
                    if observed.settled == total:
                        break
            # A resume may still be recreating the history: a conversation the app closes
            # half replayed holds calls without their outputs, which the simulator counts.
            await asyncio.sleep(0.5)
        await simulator.settle(total, quiet=1.0, timeout=30)
        report = await simulator.stop()
    finally:
        simulator.close()
    return observed, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--drops", type=int, default=100)
    parser.add_argument("--expiries", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    quiet_logs()
    started = time.monotonic()
    observed, report = asyncio.run(run(args.calls, args.drops, args.expiries, args.seed))
    elapsed = time.monotonic() - started
    twice = sum(1 for count in RUNS if count > 1)
    lost = len(RAISED) + observed.misdelivered
    steady = observed.memory[len(observed.memory) // 4 :]
    rss_slope = slope([c / 1000 for c, _ in steady], [m for _, m in steady]) * 1024
    gaps_ms = [g * 1000 for g in observed.gaps]
    print(f"continuity soak: {args.calls} calls in {elapsed:.1f} s, seed {args.seed}")
    print(
        f"- connections lost: {len(observed.losses)} ({dict(observed.reasons)}), "
        f"resumed: {observed.resumed}"
    )
    print(
        f"- simulator: issued {report.issued}, answered {report.answered}, more than one "
        f"output {report.duplicated}, no response.create after "
        f"{report.without_response_create}, refused outputs {report.refused_outputs}"
    )
    print(
        f"- calls without output (client): {sum(observed.incomplete.values())} "
        f"{dict(observed.incomplete)}"
    )
    print(f"- tools run twice: {twice}; tool errors {observed.errors}, not delivered once: {lost}")
    print(
        f"- loss to first frame on the new connection: p50 {percentile(gaps_ms, 50):.0f} ms, "
        f"p99 {percentile(gaps_ms, 99):.0f} ms, max {max(gaps_ms, default=0):.0f} ms"
    )
    for problem in report.violations:
        print(f"  ! {problem}")
    print(
        f"- RSS {observed.memory[0][1]:.1f} -> {observed.memory[-1][1]:.1f} MiB, "
        f"slope after warm-up {rss_slope:+.1f} KiB per 1,000 calls"
    )


if __name__ == "__main__":
    main()

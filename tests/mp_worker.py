"""A worker process for the multiprocess-metrics test: runs calls against its own simulator.

``done`` answers three calls and exits; ``stuck`` leaves one call running and prints
"ready", then waits for its stdin to close.
"""

from __future__ import annotations

import asyncio
import sys

from prometheus_client import CollectorRegistry

from rtguard import Agent, OutputAcknowledged, RealtimeSession, function_tool
from rtguard.simulator import CallSpec, Scenario, Simulator
from rtguard.telemetry import RtguardMetrics, Telemetry


@function_tool
async def quick() -> str:
    return "ok"


@function_tool
async def hang() -> str:
    await asyncio.sleep(3600)
    return "never"


async def main(mode: str) -> None:
    telemetry = Telemetry(metrics=RtguardMetrics(CollectorRegistry()))
    calls = (CallSpec("quick"),) * 3 if mode == "done" else (CallSpec("hang"),)
    agent = Agent(name="worker", tools=[quick, hang])
    async with (
        Simulator(Scenario(calls=calls)) as sim,
        RealtimeSession(agent, url=sim.url, telemetry=telemetry) as session,
    ):
        if mode == "done":
            acked = 0
            async for event in session:
                acked += isinstance(event, OutputAcknowledged)
                if acked == 3:
                    return
        while not sim.calls:
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.2)  # let the per-process gauges refresh at least once
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))

"""A session frees what it is done with by reference counting alone.

Cyclic garbage waits for a collection; a process carrying hundreds of sessions then collects
often and pauses long (docs/operations.md, "Many sessions in one process"). So the frame
path, a call's life and its telemetry must not make reference cycles.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from conftest import make_telemetry
from rtguard import Agent, OutputAcknowledged, RealtimeSession, function_tool
from rtguard.simulator import CallSpec, Scenario, Simulator


@function_tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return key.upper()


@pytest.fixture
def cyclic_garbage() -> Iterator[list[object]]:
    """What the collector would free from here on, kept for inspection instead."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_a_speaking_session_with_calls_makes_no_reference_cycles(
    cyclic_garbage: list[object],
) -> None:
    calls = (CallSpec("lookup", '{"key": "k"}'),) * 3
    scenario = Scenario(calls=calls, rate=4.0, speak_seconds=0.5)
    telemetry, _ = make_telemetry(CollectorRegistry())
    async with (
        Simulator(scenario) as sim,
        RealtimeSession(Agent(name="gc", tools=[lookup]), url=sim.url, telemetry=telemetry) as s,
    ):
        acked, frames = 0, 0
        async with asyncio.timeout(20):
            async for event in s:
                frames += 1
                if isinstance(event, OutputAcknowledged):
                    acked += 1
                    if acked == 1:  # connected and warm: count from here
                        gc.collect()
                        gc.garbage.clear()
                elif acked == len(calls) and getattr(event, "type", "") == "response.done":
                    break  # the model's spoken answer to the last output ended
        gc.collect()  # before the close: closing a connection may keep its exception
        cyclic_garbage.extend(gc.garbage)
    ours = [o for o in cyclic_garbage if _is_ours(type(o).__module__)]
    assert frames > 100  # the model spoke: audio deltas went through
    assert not ours, sorted({type(o).__qualname__ for o in ours})


def _is_ours(module: str) -> bool:
    """The client's code; the simulator (the server, in this process) is not."""
    return module.startswith("rtguard") and not module.startswith("rtguard.simulator")

"""The short variant of the soak (benchmarks/soak.py runs 100,000 calls): with mixed outcomes
and telemetry on, the ledger's size and the number of tasks stay flat over a long session."""

from __future__ import annotations

import asyncio
import random

from conftest import Run, run_scenario
from invariant import assert_invariant
from rtguard import Agent, OutputAcknowledged, SessionConfig, function_tool
from rtguard.simulator import CallSpec, Faults, Scenario

SAMPLES: list[tuple[int, int, int]] = []  # (settled calls, ledger size, tasks)
HEAP: list[int] = []  # deadline entries the core holds (a deadline per response once leaked)


@function_tool(timeout=0.05)
async def mixed(kind: str) -> str:
    if kind == "raise":
        raise RuntimeError("soak failure")
    if kind == "slow":
        await asyncio.sleep(1)
    return kind


def sample(run: Run, event: object) -> None:
    if isinstance(event, OutputAcknowledged):
        settled = len(run.of_type(OutputAcknowledged))
        if settled % 500 == 0:
            SAMPLES.append((settled, run.session.ledger.remembered_count, len(asyncio.all_tasks())))
            HEAP.append(len(run.session._core._deadlines._heap))


async def test_ledger_and_tasks_stay_flat_over_a_long_session() -> None:
    rng = random.Random(5)
    kinds = ["ok"] * 8 + ["raise", "slow"]
    calls = tuple(CallSpec("mixed", f'{{"kind": "{rng.choice(kinds)}"}}') for _ in range(5000))
    scenario = Scenario(
        calls=calls,
        calls_per_response=4,
        max_in_flight=64,
        faults=Faults(reject_output=frozenset(range(7, 5000, 50)), reject_type="server_error"),
    )
    SAMPLES.clear()
    HEAP.clear()
    config = SessionConfig(remember_settled_calls=1000)
    run = await run_scenario(
        scenario, Agent(name="soak", tools=[mixed]), config=config, on_event=sample, timeout=120
    )
    run.sim.assert_invariant()
    assert_invariant(run)
    assert len(SAMPLES) >= 8
    later = SAMPLES[2:]
    # the bounded window of settled ids plus the calls open at that moment (in flight or acking)
    assert max(size for _, size, _ in later) <= 1000 + 200
    tasks = [count for _, _, count in later]
    assert max(tasks) - min(tasks) <= 80, tasks  # at most the calls in flight come and go
    # one per open call and one for the response in progress, plus replaced ones not yet popped
    assert max(HEAP) <= 2 * 200 + 64, HEAP

"""The demo: example tools that succeed, raise, time out and fail a handoff, and a scenario
that calls them, so ``rtguard demo`` shows every path against the built-in simulator."""

from __future__ import annotations

import asyncio
import json
import random

from ._agent import Agent, handoff
from ._tools import function_tool
from .simulator import CallSpec, Faults, Scenario

__all__ = ["demo_agent", "demo_scenario"]


@function_tool(timeout=2.0)
async def get_weather(city: str) -> str:
    """Current weather for a city."""
    await asyncio.sleep(0.001)
    return f"It is sunny and 21 °C in {city}."


@function_tool
def lookup_order(order_id: int) -> dict[str, object]:
    """Look an order up (a sync tool: it runs in a worker thread)."""
    if order_id % 7 == 0:
        raise LookupError(f"order {order_id} is archived")
    return {"order_id": order_id, "status": "shipped"}


@function_tool(timeout=0.1)
async def slow_report(pages: int) -> str:
    """Build a report; long ones take longer than the tool's timeout."""
    await asyncio.sleep(0.01 * pages)
    return f"report with {pages} pages"


def _billing_directory() -> Agent:
    raise ConnectionError("billing directory unavailable")


def _support() -> Agent:
    return support


billing = Agent(
    name="billing",
    instructions="You handle billing questions.",
    tools=[get_weather, lookup_order, slow_report],
    handoffs=[handoff(_support, tool_name="transfer_to_support")],
)
support = Agent(
    name="support",
    instructions="You help customers; hand billing questions over.",
    tools=[get_weather, lookup_order, slow_report],
    handoffs=[billing, handoff(_billing_directory, tool_name="transfer_to_billing_directory")],
)


def demo_agent() -> Agent:
    return support


def demo_scenario(calls: int = 200, rate: float | None = 100.0, seed: int = 7) -> Scenario:
    """A mix: mostly successes, some raising, timing out, handoffs (one kind always fails),
    a tool name the model invents, invalid JSON, and outputs the server refuses once."""
    rng = random.Random(seed)
    specs = []
    for _ in range(calls):
        roll = rng.random()
        if roll < 0.45:
            specs.append(
                CallSpec("get_weather", json.dumps({"city": rng.choice(["Paris", "Lima", "Oslo"])}))
            )
        elif roll < 0.7:
            specs.append(CallSpec("lookup_order", json.dumps({"order_id": rng.randrange(1, 100)})))
        elif roll < 0.82:
            specs.append(CallSpec("slow_report", json.dumps({"pages": rng.choice([1, 2, 30])})))
        elif roll < 0.88:
            specs.append(CallSpec(rng.choice(["transfer_to_billing", "transfer_to_support"])))
        elif roll < 0.92:
            specs.append(CallSpec("transfer_to_billing_directory"))
        elif roll < 0.96:
            specs.append(CallSpec("get_horoscope", '{"sign": "leo"}'))
        else:
            specs.append(CallSpec("get_weather", '{"city": "Par'))
    refused = frozenset(i for i in range(calls) if i % 25 == 3)
    return Scenario(
        calls=tuple(specs),
        rate=rate,
        calls_per_response=2,
        faults=Faults(reject_output=refused, reject_type="server_error"),
    )

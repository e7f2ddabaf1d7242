from __future__ import annotations

from conftest import run_scenario
from rtguard import Agent, ToolSucceeded, function_tool
from rtguard.simulator import CallSpec, Scenario


@function_tool
async def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"


async def test_one_call() -> None:
    scenario = Scenario(calls=(CallSpec("get_weather", '{"city": "Paris"}'),))
    run = await run_scenario(scenario, Agent(name="a", tools=[get_weather]))
    run.sim.assert_invariant()
    assert [e.output for e in run.of_type(ToolSucceeded)] == ["sunny in Paris"]

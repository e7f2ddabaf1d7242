"""function_tool, Agent and handoff: schemas, argument checks, results, and clear mistakes."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import threading
from typing import Literal

import pydantic
import pytest

from rtguard import (
    Agent,
    ConfigurationError,
    FunctionTool,
    InvalidArgumentsError,
    Outcome,
    ToolResultError,
    ToolTimeoutError,
    function_tool,
    handoff,
)
from rtguard._core import Execute, Failed, JobResult, Returned
from rtguard._execution import run_job
from rtguard._ledger import Call
from rtguard._tools import serialize_result


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


class Point(pydantic.BaseModel):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    label: str
    size: int


@function_tool
async def forecast(
    city: str, days: int = 3, unit: Unit = Unit.C, mode: Literal["brief", "full"] = "brief"
) -> str:
    """Forecast for a city.

    More text that is not the description."""
    return f"{city} {days} {unit.value} {mode}"


def test_schema_from_type_hints() -> None:
    schema = forecast.schema
    assert schema["name"] == "forecast"
    assert schema["description"] == "Forecast for a city."
    params = schema["parameters"]
    assert params["required"] == ["city"]
    assert params["additionalProperties"] is False
    assert params["properties"]["city"] == {"type": "string"}
    assert params["properties"]["days"] == {"type": "integer", "default": 3}
    assert params["properties"]["mode"]["enum"] == ["brief", "full"]


def test_arguments_are_validated_and_converted() -> None:
    kwargs = forecast.parse_arguments('{"city": "Oslo", "unit": "fahrenheit"}')
    assert kwargs == {"city": "Oslo", "days": 3, "unit": Unit.F, "mode": "brief"}
    with pytest.raises(InvalidArgumentsError, match="city"):  # empty text means {}
        forecast.parse_arguments("")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("{oops", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ("{}", "city: Field required"),
        ('{"city": "x", "days": "many"}', "days"),
        ('{"city": "x", "wind": true}', "wind: Extra inputs are not permitted"),
        (None, "no arguments"),
    ],
)
def test_bad_arguments_are_clear(arguments: str | None, message: str) -> None:
    with pytest.raises(InvalidArgumentsError, match=message) as caught:
        forecast.parse_arguments(arguments)
    assert caught.value.tool_name == "forecast"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ({"a": 1, "b": [True, None]}, '{"a":1,"b":[true,null]}'),
        (Point(x=1, y=2), '{"x":1,"y":2}'),
        (Box("b", 3), '{"label":"b","size":3}'),
        (42, "42"),
        (None, "null"),
    ],
)
def test_results_serialise_to_json(value: object, text: str) -> None:
    assert serialize_result("t", value) == text


def test_non_serialisable_result_is_a_clear_error() -> None:
    with pytest.raises(ToolResultError, match="returned a lock, which is not JSON-serialisable"):
        serialize_result("t", threading.Lock())


async def run_tool(tool: FunctionTool, **kwargs: object) -> JobResult:
    """Run a tool the way a session does, through the user-code boundary."""
    agent = Agent(name="tools", tools=[tool])
    call = Call("call_1", tool.name, "{}", "call:call_1", agent, tool, received_at=0.0)
    return await run_job(Execute(call, tool, dict(kwargs)))


async def test_sync_tools_run_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()

    @function_tool
    def where() -> int:
        return threading.get_ident()

    result = await run_tool(where)
    assert isinstance(result, Returned)
    assert int(result.text) != loop_thread


async def test_timeouts_are_distinguished_from_a_tools_own_timeout_error() -> None:
    @function_tool(timeout=0.01)
    async def stuck() -> None:
        await asyncio.sleep(1)

    @function_tool(timeout=1)
    async def own_timeout() -> None:
        raise TimeoutError("upstream timed out")

    timed_out = await run_tool(stuck)
    assert isinstance(timed_out, Failed)
    assert timed_out.outcome is Outcome.TIMEOUT
    assert isinstance(timed_out.error, ToolTimeoutError)
    raised = await run_tool(own_timeout)
    assert isinstance(raised, Failed)
    assert raised.outcome is Outcome.ERROR
    assert type(raised.error) is TimeoutError
    assert str(raised.error) == "upstream timed out"


async def test_approval_policy_may_be_a_callable() -> None:
    @function_tool(needs_approval=lambda args: args["amount"] > 100)
    def refund(amount: int) -> str:
        return "ok"

    assert await refund.requires_approval({"amount": 500})
    assert not await refund.requires_approval({"amount": 5})


def test_configuration_mistakes_are_clear() -> None:
    with pytest.raises(ConfigurationError, match="two tools named 'forecast'"):
        Agent(name="a", tools=[forecast, forecast])
    with pytest.raises(ConfigurationError, match="not str"):
        handoff("billing")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must be 1-64 characters"):
        function_tool(name="has space")(lambda: None)
    with pytest.raises(ConfigurationError, match="passable by keyword"):

        @function_tool
        def varargs(*items: int) -> None: ...

    with pytest.raises(ConfigurationError, match="timeout must be"):
        function_tool(timeout=0)
    billing = Agent(name="Billing Team")
    with pytest.raises(ConfigurationError, match="two tools named 'transfer_to_billing_team'"):
        Agent(name="a", handoffs=[billing, billing])


def test_plain_functions_become_tools_and_handoffs_are_named() -> None:
    def ping() -> str:
        return "pong"

    billing = Agent(name="Billing Team")
    agent = Agent(name="a", tools=[ping], handoffs=[billing])
    assert [s["name"] for s in agent.tool_schemas()] == ["ping", "transfer_to_billing_team"]

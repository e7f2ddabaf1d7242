"""Agents (instructions plus tools) and handoffs between them."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigurationError, HandoffError
from ._tools import FunctionTool, function_tool

__all__ = ["Agent", "Handoff", "handoff"]

AgentFactory = Callable[[], "Agent | Awaitable[Agent]"]


@dataclass(frozen=True, eq=False)
class Handoff:
    """A tool that makes another agent the active one (new instructions and tools)."""

    tool_name: str
    description: str
    target: Agent | AgentFactory = field(repr=False)

    @property
    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.tool_name,
            "description": self.description,
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        }

    async def resolve(self) -> Agent:
        """The agent to switch to. Exceptions from a factory propagate unchanged."""
        if isinstance(self.target, Agent):
            return self.target
        result = self.target()
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, Agent):
            raise HandoffError(
                self.tool_name,
                f"handoff {self.tool_name!r} returned a {type(result).__name__}, not an Agent",
            )
        return result


def handoff(
    target: Agent | AgentFactory,
    *,
    tool_name: str | None = None,
    description: str | None = None,
) -> Handoff:
    """A handoff to ``target``: an Agent, or a (sync or async) function returning one."""
    if isinstance(target, Agent):
        name = target.name
    elif callable(target):
        name = getattr(target, "__name__", "agent")
    else:
        kind = type(target).__name__
        raise ConfigurationError(
            f"a handoff target must be an Agent or a function returning one, not {kind}"
        )
    slug = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "agent"
    return Handoff(
        tool_name=tool_name or f"transfer_to_{slug}",
        description=description or f"Hand the conversation over to the {name} agent.",
        target=target,
    )


@dataclass(eq=False)
class Agent:
    """What the model is told (instructions) and what it may call (tools, handoffs)."""

    name: str
    instructions: str = ""
    tools: Sequence[FunctionTool | Callable[..., Any]] = ()
    handoffs: Sequence[Agent | Handoff] = ()
    _by_name: dict[str, FunctionTool | Handoff] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tools = [t if isinstance(t, FunctionTool) else function_tool(t) for t in self.tools]
        handoffs = [h if isinstance(h, Handoff) else handoff(h) for h in self.handoffs]
        self.tools = tools
        self.handoffs = handoffs
        self._by_name = {}
        entries: list[FunctionTool | Handoff] = [*tools, *handoffs]
        for entry in entries:
            entry_name = entry.name if isinstance(entry, FunctionTool) else entry.tool_name
            if entry_name in self._by_name:
                raise ConfigurationError(f"agent {self.name!r} has two tools named {entry_name!r}")
            self._by_name[entry_name] = entry

    def find(self, tool_name: str) -> FunctionTool | Handoff | None:
        return self._by_name.get(tool_name)

    @property
    def tool_names(self) -> list[str]:
        return list(self._by_name)

    def tool_schemas(self) -> list[dict[str, Any]]:
        return [entry.schema for entry in self._by_name.values()]

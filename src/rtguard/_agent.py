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
    """A tool that makes another agent the active one (new instructions and tools).

    Build one with [`handoff`][rtguard.handoff], or put an Agent in ``Agent(handoffs=...)``.
    When the model calls it, the session resolves ``target``, sends the new agent's
    ``session.update``, and waits for the server to confirm it before the call's output and
    [`HandoffCompleted`][rtguard.HandoffCompleted]; a refusal, no answer within
    ``ack_timeout``, or a factory that raises fails the call as ``handoff_failed``, and the
    old agent stays.
    """

    tool_name: str
    """The name the model calls it by."""
    description: str
    """What the model is told the handoff does."""
    target: Agent | AgentFactory = field(repr=False)
    """The agent, or a sync or async function returning one, called at each handoff."""

    @property
    def schema(self) -> dict[str, Any]:
        """The ``tools`` entry for ``session.update``: a function without parameters."""
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
    """A handoff to ``target``: an Agent, or a (sync or async) function returning one.

    Args:
        target: the agent to hand over to, or a function (called at each handoff) that
            returns it; what the function raises fails that call as ``handoff_failed``.
        tool_name: the name the model calls; by default ``transfer_to_<name>``, from the
            agent's (or function's) name in lower case, other characters as ``_``.
        description: what the model is told; by default "Hand the conversation over to the
            <name> agent."

    Raises:
        ConfigurationError: ``target`` is neither an Agent nor callable.
    """
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
    """What the model is told (instructions) and what it may call (tools, handoffs).

    A plain function in ``tools`` is made a tool with
    [`function_tool`][rtguard.function_tool]'s defaults, and an Agent in ``handoffs`` a
    handoff with [`handoff`][rtguard.handoff]'s. The agent's ``session.update`` sends its
    instructions and the schemas of its tools and handoffs.

    Raises:
        ConfigurationError: two tools or handoffs share a name, a function in ``tools``
            cannot be made a tool, or an entry of ``handoffs`` is neither an Agent, a
            Handoff nor a function returning an Agent.
    """

    name: str
    """The agent's name: in events, spans and the default handoff tool name."""
    instructions: str = ""
    """The model's instructions while this agent is active."""
    tools: Sequence[FunctionTool | Callable[..., Any]] = ()
    """What the model may call; after construction, all of them FunctionTools."""
    handoffs: Sequence[Agent | Handoff] = ()
    """The agents the model may hand over to; after construction, all of them Handoffs."""
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
        """The tool or handoff the model calls ``tool_name``, or None if there is none."""
        return self._by_name.get(tool_name)

    @property
    def tool_names(self) -> list[str]:
        """The names the model may call: the tools', then the handoffs'."""
        return list(self._by_name)

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The ``tools`` list of the agent's ``session.update``."""
        return [entry.schema for entry in self._by_name.values()]

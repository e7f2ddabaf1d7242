"""Running a call's user code: arguments, approval policy, the tool, a handoff factory.

Every step goes through the boundary (:mod:`rtguard._boundary`), so :func:`run_job` never
raises (except the session's own cancellation): whatever happens comes back as a
:data:`~rtguard._core.JobResult` for the core to turn into an output.
"""

from __future__ import annotations

import asyncio
import functools
import inspect

from ._agent import Agent
from ._boundary import Raised, call_user, call_user_sync
from ._core import (
    Execute,
    Failed,
    Job,
    JobResult,
    Prepare,
    Prepared,
    Resolved,
    ResolveHandoff,
    Returned,
)
from ._errors import InvalidArgumentsError, ToolTimeoutError
from ._ledger import Outcome
from ._tools import FunctionTool, serialize_result

__all__ = ["run_job"]


async def run_job(job: Job) -> JobResult:
    match job:
        case Prepare(call=call, tool=tool):
            kwargs = call_user_sync(tool.parse_arguments, call.arguments)
            if isinstance(kwargs, Raised):
                invalid = isinstance(kwargs.error, InvalidArgumentsError)
                return Failed(Outcome.INVALID_ARGUMENTS if invalid else Outcome.ERROR, kwargs.error)
            needs_approval = await call_user(tool.requires_approval, kwargs)
            if isinstance(needs_approval, Raised):
                return Failed(Outcome.ERROR, needs_approval.error)
            return Prepared(kwargs, needs_approval)
        case Execute(tool=tool, kwargs=kwargs):
            return await _run_tool(tool, kwargs)
        case ResolveHandoff(handoff=handoff):
            agent = await call_user(handoff.resolve)
            if isinstance(agent, Raised):
                return Failed(Outcome.HANDOFF_FAILED, agent.error)
            assert isinstance(agent, Agent)
            return Resolved(agent)


async def _run_tool(tool: FunctionTool, kwargs: dict[str, object]) -> JobResult:
    """A sync tool runs in a worker thread; past ``timeout`` the call fails as a timeout (a
    sync tool cannot be stopped: its thread finishes in the background, its result unused)."""
    run = functools.partial(tool.func, **kwargs)
    in_thread = not inspect.iscoroutinefunction(tool.func)
    try:
        async with asyncio.timeout(tool.timeout):
            value = await call_user(run, in_thread=in_thread)
    except TimeoutError:  # the tool's own TimeoutError is captured as Raised inside
        assert tool.timeout is not None
        return Failed(Outcome.TIMEOUT, ToolTimeoutError(tool.name, tool.timeout))
    if isinstance(value, Raised):
        return Failed(Outcome.ERROR, value.error)
    text = call_user_sync(serialize_result, tool.name, value)
    if isinstance(text, Raised):
        return Failed(Outcome.ERROR, text.error)
    return Returned(text)

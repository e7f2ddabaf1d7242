"""The one boundary around user code.

Tools, handoff factories, approval policies, failure formatters, result serialisation and
even ``str()`` of an exception are user code, and user code may raise anything: an
``Exception``, ``CancelledError`` because it awaited work someone else cancelled,
``StopIteration`` (which asyncio cannot put into a Future), an exception whose ``__str__``
raises. Everything rtguard runs on the user's behalf goes through here and comes back as a
value or as :class:`Raised`: data that the ledger turns into an output like any other.

Only one exception passes: the cancellation of the session's own task (``close()`` gave up
waiting), which is not the tool's failure.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Raised", "call_user", "call_user_sync", "safe_str", "type_name"]


@dataclass(frozen=True, slots=True)
class Raised:
    """User code raised ``error``; it is carried as data from here on."""

    error: BaseException


async def call_user(func: Callable[..., Any], *args: Any, in_thread: bool = False) -> Any:
    """Run ``func(*args)`` (sync, async, or returning an awaitable); a raise becomes Raised.

    ``in_thread`` runs a sync function in a worker thread, capturing its exception there:
    asyncio cannot carry ``StopIteration`` from a thread into the awaiting task.
    """
    try:
        if in_thread:
            return await asyncio.to_thread(call_user_sync, func, *args)
        result = func(*args)
        if inspect.isawaitable(result):
            result = await result
        return result
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the session cancelled this call: not a failure of the user's code
        return Raised(exc)
    except BaseException as exc:
        return Raised(_original(exc))


def _original(error: BaseException) -> BaseException:
    """The StopIteration a coroutine raised, not the RuntimeError Python put in its place
    (PEP 479): the app gets the exception the user's code raised."""
    cause = error.__cause__
    if (
        type(error) is RuntimeError
        and isinstance(cause, StopIteration)
        and error.args == ("coroutine raised StopIteration",)
    ):
        return cause
    return error


def call_user_sync(func: Callable[..., Any], *args: Any) -> Any:
    """Run a sync user callable; a raise becomes Raised."""
    try:
        return func(*args)
    except BaseException as exc:
        return Raised(exc)


def safe_str(value: object) -> str:
    """``str(value)``, or a placeholder when its ``__str__`` raises or returns a non-string."""
    text = call_user_sync(str, value)
    if isinstance(text, str):
        return text
    return f"<{type_name(value)} object (str() failed)>"


def type_name(value: object) -> str:
    """The class name of ``value``, which even a hostile metaclass cannot make raise here."""
    name = call_user_sync(lambda: type(value).__name__)
    return name if isinstance(name, str) else "object"

"""Function tools: the JSON schema the model sees, argument checking, and running the function.

The schema and the argument validator come from one pydantic model built from the function's
signature, so what the model is told and what is enforced cannot drift apart.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_type_hints, overload

import pydantic
import pydantic_core

from ._errors import ConfigurationError, InvalidArgumentsError, ToolResultError
from ._failures import FailureOutput

__all__ = ["FunctionTool", "TimeoutBehavior", "function_tool", "serialize_result"]

TimeoutBehavior: TypeAlias = Literal["error_as_result", "raise_exception"]
ApprovalPolicy: TypeAlias = bool | Callable[[Mapping[str, Any]], bool | Awaitable[bool]]

_VALID_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, eq=False)
class FunctionTool:
    """A Python function the model can call. Build one with
    [`function_tool`][rtguard.function_tool], which derives the schema and the validator from
    the function's signature; the fields are what it was given and what it derived."""

    name: str
    """The name the model calls it by."""
    description: str
    """What the model is told the tool does."""
    func: Callable[..., Any] = field(repr=False)
    """The function itself, sync (run in a worker thread) or async."""
    timeout: float | None = None
    """Seconds the tool may run before its call fails as ``timeout``; None: no limit."""
    timeout_behavior: TimeoutBehavior = "error_as_result"
    """What a timeout does besides the failure output: see ``function_tool``."""
    needs_approval: ApprovalPolicy = False
    """Whether a call waits for the app's approval, or a function of the arguments that
    decides it per call."""
    failure_output: FailureOutput | None = field(default=None, repr=False)
    """This tool's failure text policy; None: the session's."""
    arguments_model: type[pydantic.BaseModel] = field(default=pydantic.BaseModel, repr=False)
    """The pydantic model the arguments are validated with."""
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)
    """The JSON schema of the arguments, as the model is given it."""

    @property
    def schema(self) -> dict[str, Any]:
        """The ``tools`` entry for ``session.update``."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }

    def parse_arguments(self, arguments: str | None) -> dict[str, Any]:
        """Decode and validate the model's JSON text; raises InvalidArgumentsError."""
        if arguments is None:
            raise InvalidArgumentsError(self.name, "the call carried no arguments string")
        try:
            decoded = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise InvalidArgumentsError(self.name, f"arguments are not valid JSON ({exc})") from exc
        if not isinstance(decoded, dict):
            raise InvalidArgumentsError(self.name, "arguments must be a JSON object")
        try:
            model = self.arguments_model.model_validate(decoded)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidArgumentsError(self.name, problems) from exc
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def requires_approval(self, kwargs: Mapping[str, Any]) -> bool:
        """Whether this call, with these validated arguments, waits for the app's approval.
        A policy function's exception propagates (the session fails the call with it)."""
        policy = self.needs_approval
        if isinstance(policy, bool):
            return policy
        decision = policy(kwargs)
        return bool(await decision) if inspect.isawaitable(decision) else bool(decision)


def serialize_result(tool_name: str, value: Any) -> str:
    """The model-visible text of a return value: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError as exc:
        raise ToolResultError(
            tool_name,
            f"tool {tool_name!r} returned a {type(value).__name__}, which is not JSON-serialisable",
        ) from exc


@overload
def function_tool(func: Callable[..., Any], /) -> FunctionTool: ...


@overload
def function_tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    timeout_behavior: TimeoutBehavior = "error_as_result",
    needs_approval: ApprovalPolicy = False,
    failure_output: FailureOutput | None = None,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def function_tool(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    timeout_behavior: TimeoutBehavior = "error_as_result",
    needs_approval: ApprovalPolicy = False,
    failure_output: FailureOutput | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a function (sync or async) a tool; its type hints become the JSON schema.

    Use it bare (``@function_tool``) or with options (``@function_tool(timeout=2.0)``). The
    same pydantic model gives the schema the model sees and validates the arguments it
    sends, so the two cannot drift apart; arguments that do not fit never reach the function
    (the call fails as ``invalid_arguments``). A sync function runs in a worker thread. The
    return value is the model's output: a string as it is, anything else as JSON.

    Args:
        func: the function, when used bare.
        name: the name the model calls; by default the function's ``__name__``. 1 to 64
            letters, digits, ``_`` or ``-``.
        description: what the model is told; by default the docstring's first paragraph.
        timeout: seconds before the call fails as ``timeout`` (a sync tool's thread cannot
            be stopped: it finishes in the background, its result unused); None: no limit.
        timeout_behavior: ``"error_as_result"`` (the default) reports a timeout like any
            failure. ``"raise_exception"`` still sends the model a failure output first,
            then raises the [`ToolTimeoutError`][rtguard.ToolTimeoutError] from the
            session's event iterator.
        needs_approval: True to make every call wait for ``session.approve`` or
            ``session.reject`` (a [`ToolApprovalRequested`][rtguard.ToolApprovalRequested]
            event asks), or a sync or async function of the validated arguments that
            decides per call.
        failure_output: this tool's failure text policy, in place of the session's
            ``SessionConfig.failure_output``.

    Returns:
        The tool, or (with options) a decorator that makes one.

    Raises:
        ConfigurationError: an invalid name, timeout or ``timeout_behavior``, a parameter
            that cannot be passed by keyword, or a type hint rtguard cannot describe as
            JSON schema.
    """
    if timeout is not None and timeout <= 0:
        raise ConfigurationError("timeout must be a positive number of seconds")
    if timeout_behavior not in ("error_as_result", "raise_exception"):
        raise ConfigurationError(f"unknown timeout_behavior {timeout_behavior!r}")

    def build(f: Callable[..., Any]) -> FunctionTool:
        tool_name = name or f.__name__
        if not _VALID_NAME.match(tool_name):
            raise ConfigurationError(
                f"tool name {tool_name!r} must be 1-64 characters of letters, digits, '_' or '-'"
            )
        model = _arguments_model(tool_name, f)
        return FunctionTool(
            name=tool_name,
            description=description if description is not None else _first_paragraph(f),
            func=f,
            timeout=timeout,
            timeout_behavior=timeout_behavior,
            needs_approval=needs_approval,
            failure_output=failure_output,
            arguments_model=model,
            parameters=_parameters_schema(tool_name, model),
        )

    return build(func) if func is not None else build


def _arguments_model(tool_name: str, func: Callable[..., Any]) -> type[pydantic.BaseModel]:
    try:
        hints = get_type_hints(func)
    except Exception as exc:  # unresolvable forward references
        raise ConfigurationError(
            f"cannot read the type hints of tool {tool_name!r}: {exc}"
        ) from exc
    fields: dict[str, Any] = {}
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ConfigurationError(
                f"tool {tool_name!r}: parameter {param.name!r} must be passable by keyword"
            )
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    config = pydantic.ConfigDict(extra="forbid")
    try:
        return pydantic.create_model(f"{tool_name}_arguments", __config__=config, **fields)
    except (pydantic.PydanticSchemaGenerationError, TypeError) as exc:
        raise ConfigurationError(
            f"tool {tool_name!r} has a parameter type rtguard cannot describe: {exc}"
        ) from exc


def _parameters_schema(tool_name: str, model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """Built once, when the tool is: a type JSON schema cannot describe is a setup mistake."""
    try:
        schema = model.model_json_schema()
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticInvalidForJsonSchema) as exc:
        raise ConfigurationError(
            f"tool {tool_name!r} has a parameter type rtguard cannot describe: {exc}"
        ) from exc
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.setdefault("properties", {})
    return schema


def _first_paragraph(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()

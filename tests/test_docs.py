"""The README's tables are part of the product: check them against the code's declarations."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from rtguard import IncompleteReason, Outcome
from rtguard.telemetry import RtguardMetrics
from rtguard.telemetry import _names as names

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    registry = CollectorRegistry()
    RtguardMetrics(registry)
    exported = {family.name for family in registry.collect()}
    # prometheus_client reports counters without the _total suffix.
    exported = {f"{n}_total" if f"{n}_total" in README else n for n in exported}
    documented = set(re.findall(r"^\| `((?:rtguard|gen_ai)_[a-z_]+)` \|", README, re.MULTILINE))
    assert documented == exported


def test_documented_label_values_match_the_code() -> None:
    reasons = tuple(reason.value for reason in IncompleteReason)
    outcomes = tuple(outcome.value for outcome in Outcome)
    for values in (
        names.SWALLOWED_PLACES,
        names.PROTOCOL_ERROR_KINDS,
        names.SEND_RESULTS,
        reasons,
        outcomes,
    ):
        for value in values:
            assert f"`{value}`" in README, value


def test_span_names_are_documented() -> None:
    for span_name in (
        names.OP_INVOKE_AGENT,
        names.OP_REALTIME_INFERENCE,
        names.OP_EXECUTE_TOOL,
        names.SPAN_SEND_OUTPUT,
        names.EVENT_SESSION_STARTED,
        names.EVENT_SESSION_ENDED,
    ):
        assert f"`{span_name}" in README, span_name


def test_every_span_attribute_is_documented() -> None:
    attributes = [
        value
        for key, value in vars(names).items()
        if key.startswith(("GEN_AI_", "RTGUARD_")) and "." in value
    ]
    for attribute in [*attributes, names.ERROR_TYPE]:
        assert f"`{attribute}" in README, attribute
    for value in (names.END_COMPLETED, names.END_INTERRUPTED, names.END_SESSION_CLOSED):
        assert f"`{value}`" in README, value
    assert f"`{names.OUTCOME_CANCELLED}`" in README


def test_readme_opens_with_the_two_commands() -> None:
    block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()[1:]]
    assert commands == ["make demo", "make test"]

"""The shipped example scenarios, each run through `rtguard demo` as a user runs it, and the
scenario file schema derived from the dataclasses."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from dataclasses import fields, is_dataclass
from importlib import resources

import pytest
import yaml

from demo_summary import summary_rows
from rtguard.demo import demo_scenario
from rtguard.simulator import Scenario

RTGUARD = [sys.executable, "-m", "rtguard.cli"]

# Each shipped scenario: the demo's exit status and every outcome row of its summary.
SHIPPED = {
    "approvals": (0, {"delivered: success": 2, "delivered: rejected": 2}),
    "bad-arguments": (0, {"delivered: invalid_arguments": 5, "delivered: success": 1}),
    "flaky-server": (0, {"delivered: success": 20}),
    "handoffs": (0, {"delivered: success": 5, "delivered: handoff_failed": 2}),
    "refused-outputs": (1, {"delivered: success": 4, "incomplete: rejected_by_server": 2}),
    "timeouts": (0, {"delivered: success": 8, "delivered: timeout": 8}),
    "tool-errors": (0, {"delivered: success": 10, "delivered: error": 10}),
    "unknown-tool": (0, {"delivered: success": 1, "delivered: unknown_tool": 3}),
}
RETRIED = {"flaky-server": 3}


def _demo(scenario: str) -> tuple[int, dict[str, str]]:
    result = subprocess.run(
        [*RTGUARD, "demo", "--scenario", scenario, "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, summary_rows(result.stdout)


def test_every_shipped_scenario_is_run_here() -> None:
    assert set(Scenario.shipped_names()) == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_scenario_through_the_demo(name: str) -> None:
    status, rows = _demo(name)
    expected_status, outcomes = SHIPPED[name]
    assert status == expected_status, rows
    seen = {row: int(n) for row, n in rows.items() if row.startswith(("delivered:", "incomplete:"))}
    assert seen == outcomes
    left_without_output = sum(n for row, n in outcomes.items() if row.startswith("incomplete:"))
    assert rows["incomplete calls"] == str(left_without_output)
    assert rows["sends retried after refusal"] == str(RETRIED.get(name, 0))
    assert rows["connections replaced"] == "0"
    # The simulator's own count agrees: a call rtguard reports incomplete has no output there.
    invariant = f"{left_without_output} violations" if left_without_output else "holds"
    assert rows["simulator invariant"] == invariant


def test_a_scenario_file_path_works_like_its_name_and_rate_0_is_as_fast_as_possible(
    tmp_path: pathlib.Path,
) -> None:
    shipped = resources.files("rtguard.simulator").joinpath("scenarios", "tool-errors.yaml")
    path = tmp_path / "tool-errors.yaml"
    path.write_text(shipped.read_text() + "rate: 0\n")
    status, rows = _demo(str(path))
    assert status == 0
    assert rows["delivered: error"] == "10"
    assert rows["delivered: success"] == "10"


# --- the schema -----------------------------------------------------------------------------


def _plain(value: object) -> object:
    """A dataclass value as a file writes it: mappings, lists, scalars."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def test_every_dataclass_field_is_a_file_key() -> None:
    """The file form writes every field of Scenario, Faults and CallSpec: the schema is derived
    from the dataclasses, so a field added to them is a key the files accept."""
    scenario = demo_scenario(60, rate=25.0)
    assert Scenario.parse(yaml.safe_dump(_plain(scenario))) == scenario


def test_rate_0_means_as_fast_as_the_client_answers() -> None:
    assert Scenario.parse("rate: 0").rate == 0
    with pytest.raises(ValueError, match="rate: must be 0 or more"):
        Scenario(rate=-1)

"""Every mistake a user can make with `rtguard` ends in one line on stderr, naming the option
or the file and key and what was expected, and exit status 2: never a traceback, never a run
that silently does something else."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

RTGUARD = [sys.executable, "-m", "rtguard.cli"]

# (command line, scenario file text or None, what the one line must say); {file} is the
# scenario file written for the case.
MISTAKES = [
    pytest.param(
        ["demo", "--scenario", "{dir}/missing.yaml"],
        None,
        ["missing.yaml", "cannot read the scenario file", "No such file"],
        id="missing-file",
    ),
    pytest.param(
        ["simulate", "--scenario", "handof"],
        None,
        ["handof", "neither a scenario file nor a shipped scenario", "handoffs"],
        id="unknown-shipped-name",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "calls: [get_weather]\n",
        ["scenario.yaml", "calls[0]", "must be a mapping with keys name, arguments", "get_weather"],
        id="call-not-a-mapping",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "call:\n  - {name: get_weather}\n",
        ["scenario.yaml", "call", "unknown key (did you mean calls?)"],
        id="misspelled-key",
    ),
    pytest.param(
        ["simulate", "--scenario", "{file}"],
        "calls: [{name: get_weather}]\nfaults: {reject_ouptut: [1]}\n",
        ["scenario.yaml", "faults.reject_ouptut", "did you mean reject_output?"],
        id="misspelled-fault",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "rate: fast\ncalls: [{name: get_weather}]\n",
        ["scenario.yaml", "rate", "must be a number", "'fast'"],
        id="rate-not-a-number",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "rate: -5\ncalls: [{name: get_weather}]\n",
        ["scenario.yaml", "rate", "must be 0 or more calls per second"],
        id="negative-rate",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "calls: [{name: get_weather}]\nfaults: {reject_output: 3}\n",
        ["scenario.yaml", "faults.reject_output", "must be a list of integers, got 3"],
        id="indexes-not-a-list",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "calls: [{name: get_weather}]\nfaults: {end_after: true}\n",
        ["scenario.yaml", "faults.end_after", "must be an integer, got true"],
        id="boolean-for-integer",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "calls: [{name: get_weather}]\nfaults: {reject_type: rate_limit_error}\n",
        ["scenario.yaml", "faults.reject_type", "invalid_request_error or server_error"],
        id="reject-type-not-a-choice",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "calls: [{arguments: {city: Oslo}}]\n",
        ["scenario.yaml", "calls[0].name", "required"],
        id="call-without-name",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "calls: [{name: get_weather, arguments: 3}]\n",
        ["scenario.yaml", "calls[0].arguments", "a mapping of arguments or a string"],
        id="arguments-not-a-mapping",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "calls: [{name: get_weather}\n",
        ["scenario.yaml", "line 2", "not valid YAML or JSON"],
        id="broken-yaml",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "[1, 2]\n",
        ["scenario.yaml", "must be a mapping with keys calls, rate"],
        id="not-a-mapping",
    ),
    pytest.param(
        ["demo", "--scenario", "{file}"],
        "calls: []\n",
        ["scenario.yaml", "calls", "the demo needs at least one call"],
        id="no-calls",
    ),
    pytest.param(
        ["demo", "--scenario", "handoffs", "--calls", "10"],
        None,
        ["--calls cannot be given with --scenario"],
        id="calls-with-scenario",
    ),
    pytest.param(
        ["simulate", "--scenario", "handoffs", "--calls", "10", "--rate", "0"],
        None,
        ["--calls and --rate cannot be given with --scenario"],
        id="calls-and-rate-with-scenario",
    ),
    pytest.param(
        ["demo", "--calls", "0"], None, ["argument --calls", "at least 1", "got 0"], id="calls-0"
    ),
    pytest.param(
        ["demo", "--rate", "-1"], None, ["argument --rate", "0 or more", "got -1"], id="rate"
    ),
    pytest.param(
        ["simulate", "--port", "70000"], None, ["argument --port", "0 to 65535"], id="port-range"
    ),
    pytest.param(["demo", "--calls", "many"], None, ["--calls", "'many'"], id="calls-not-int"),
    pytest.param(["demo", "--colour"], None, ["unrecognized arguments: --colour"], id="option"),
    pytest.param([], None, ["required: command"], id="no-command"),
]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RTGUARD, *args], capture_output=True, text=True, timeout=60, check=False
    )


def _assert_one_clear_line(result: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("rtguard")
    for needed in expected:
        assert needed in line, line


@pytest.mark.parametrize(("args", "text", "expected"), MISTAKES)
def test_a_mistake_is_one_clear_line_and_status_2(
    tmp_path: pathlib.Path, args: list[str], text: str | None, expected: list[str]
) -> None:
    scenario = tmp_path / "scenario.yaml"
    if text is not None:
        scenario.write_text(text)
    command = [arg.format(file=scenario, dir=tmp_path) for arg in args]
    _assert_one_clear_line(_run(command), expected)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_simulate_on_a_port_in_use(busy_port: int) -> None:
    result = _run(["simulate", "--port", str(busy_port)])
    expected = [f"cannot listen on 127.0.0.1:{busy_port}", "Address already in use", "--port 0"]
    _assert_one_clear_line(result, expected)


def test_demo_with_its_metrics_port_in_use(busy_port: int) -> None:
    result = _run(["demo", "--metrics-port", str(busy_port)])
    expected = ["--metrics-port", f"127.0.0.1:{busy_port}", "Address already in use"]
    _assert_one_clear_line(result, expected)

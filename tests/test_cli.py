"""The `rtguard` command, run as users run it: a subprocess, in a pipe or in a terminal."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from typing import IO

import pytest

from demo_summary import summary_rows
from otlp_receiver import OtlpReceiver
from rtguard import Agent, OutputAcknowledged, RealtimeSession

RTGUARD = [sys.executable, "-m", "rtguard.cli"]
DEMO_TOOLS = {
    "get_weather",
    "lookup_order",
    "refund",
    "slow_report",
    "transfer_to_billing",
    "transfer_to_support",
    "transfer_to_billing_directory",
    "get_horoscope",
}


def test_demo_finishes_with_no_incomplete_calls() -> None:
    result = subprocess.run(
        [*RTGUARD, "demo", "--calls", "120", "--rate", "0", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = summary_rows(result.stdout)
    assert rows["incomplete calls"] == "0"
    assert rows["simulator invariant"] == "holds"
    for outcome in ("timeout", "handoff_failed", "rejected", "error", "unknown_tool"):
        assert f"delivered: {outcome}" in result.stdout


def test_demo_prints_plain_progress_lines_when_not_a_terminal() -> None:
    result = subprocess.run(
        [*RTGUARD, "demo", "--calls", "150", "--rate", "100", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\x1b" not in result.stderr + result.stdout  # no cursor movement, no colour
    assert all(re.match(r"\[ *\d+/150\] delivered ok \d+ ", line) for line in lines), lines
    assert lines[-1].startswith("[   150/150] delivered ok ")
    assert 2 <= len(lines) <= 5  # about one a second over 1.5 s, and the last


def test_demo_draws_a_live_view_in_a_terminal() -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        [*RTGUARD, "demo", "--calls", "200", "--rate", "200", "--metrics-port", "0"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**environment, "TERM": "xterm-256color"},
    )
    os.close(follower)
    try:
        screen = _read_terminal(leader, seconds=60)
        assert process.wait(timeout=10) == 0, screen
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
    redraws = screen.count("\x1b[2K")  # erase a line of the view, to draw it again in place
    assert redraws >= 5, screen
    assert "━" in screen  # the progress bar
    assert "200/200 calls" in screen
    assert "time to output p50 / p99" in screen
    assert "delivered: rejected" in screen
    assert re.search(r"simulator invariant +holds", screen)  # the summary follows the view


def _read_terminal(leader: int, seconds: float) -> str:
    """Everything the program wrote to its terminal, until it closed it (bounded)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _read_until(pipe: IO[str], pattern: re.Pattern[str], seconds: float) -> str:
    """Lines from ``pipe`` up to the first that matches (bounded): the run is under way, its
    signal handlers installed, however slow the machine is to start it."""
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([pipe], [], [], 0.5)
        if not ready:
            continue
        line = pipe.readline()
        lines.append(line)
        if not line or pattern.search(line):
            break
    return "".join(lines)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_shuts_down_gracefully_on_signals(sig: signal.Signals) -> None:
    process = subprocess.Popen(
        [*RTGUARD, "demo", "--calls", "100000", "--rate", "200", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None  # the progress lines
    started = _read_until(process.stderr, re.compile(r"delivered ok [1-9]"), seconds=60)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=30)
    stderr = started + stderr
    assert "interrupted:" in stderr
    rows = summary_rows(stdout)
    # The calls in flight got their outputs as the session closed (no answer was asked for:
    # the app hung up); a call the model issued while the connection closed, which no
    # output can follow, was reported incomplete (session_closed), and nothing else was.
    incomplete = {name for name in rows if name.startswith("incomplete: ")}
    assert incomplete <= {"incomplete: session_closed"}, stdout + stderr
    closed_on = int(rows.get("incomplete: session_closed", "0"))
    assert rows["incomplete calls"] == str(closed_on)
    assert (f"{closed_on} issued as the session closed" in stderr) == bool(closed_on)
    assert rows["simulator invariant"] == "holds", stdout + stderr
    assert process.returncode == 0


async def test_simulate_issues_the_demo_mix_to_an_app_by_default() -> None:
    process = await asyncio.create_subprocess_exec(
        *RTGUARD, "simulate", "--port", "0", "--calls", "12", "--rate", "0", stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    try:
        banner = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
        assert "12 calls to issue" in banner
        found = re.search(r"ws://127\.0\.0\.1:\d+/v1/realtime", banner)
        assert found is not None, banner
        acknowledged: list[OutputAcknowledged] = []
        async with RealtimeSession(Agent(name="my_app"), url=found[0]) as session:
            async with asyncio.timeout(30):
                async for event in session:
                    if isinstance(event, OutputAcknowledged):
                        acknowledged.append(event)
                    if len(acknowledged) == 12:
                        break
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert {event.tool_name for event in acknowledged} <= DEMO_TOOLS
    assert "calls issued 12, without output 0" in stderr.decode()
    assert process.returncode == 0


# --- help ---------------------------------------------------------------------------------


def _help(*command: str) -> str:
    result = subprocess.run(
        [*RTGUARD, *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def _option_help(text: str) -> dict[str, str]:
    """Each option's help, read from argparse's layout: the option's line, then the lines
    indented under it; whitespace collapsed so wrapping does not matter."""
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        start = re.match(r"  (?:-\w, )?(--[\w-]+)", line)
        if start:
            current = start[1]
            blocks[current] = [line[start.end() :]]
        elif current and line.startswith("    "):
            blocks[current].append(line)
        else:
            current = None
    return {option: " ".join(" ".join(lines).split()) for option, lines in blocks.items()}


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (("demo",), ["--scenario", "--calls", "--rate", "--metrics-port", "--metrics-addr"]),
        (("simulate",), ["--scenario", "--calls", "--rate", "--host", "--port"]),
    ],
)
def test_every_option_has_help_with_its_default(
    command: tuple[str, ...], options: list[str]
) -> None:
    text = _help(*command)
    helps = _option_help(text)
    assert set(helps) == {"--help", *options, *(["--otlp"] if command == ("demo",) else [])}
    for option in options:
        assert re.search(r"\(default: [^)]+\)$", helps[option]), (option, helps[option])
        assert len(helps[option].split()) >= 6, (option, helps[option])
    assert "default: None" not in text
    assert "`" not in text  # plain text, not reStructuredText
    assert "calls per second; 0: as fast as the app answers" in helps["--rate"]
    assert "(default: 100)" in helps["--rate"]
    assert "(default: 200)" in helps["--calls"]
    assert "handoffs" in helps["--scenario"]  # the shipped scenarios are named


def test_top_level_help_describes_each_command() -> None:
    text = " ".join(_help().split())
    assert "`" not in text
    assert "demo run example tools against the built-in simulator" in text
    assert "simulate run only the simulator, a WebSocket server for your own app" in text
    assert "exit status: 0 when every call got its output" in text


def test_demo_help_says_where_spans_go_and_what_the_demo_does() -> None:
    text = _help("demo")
    otlp = _option_help(text)["--otlp"]
    for needed in ("OTEL_EXPORTER_OTLP_*", "http://localhost:4317", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        assert needed in otlp
    assert "Exit status 1 if a call was left without an output" in " ".join(text.split())


def test_simulate_help_gives_the_url_and_the_default_behaviour() -> None:
    text = " ".join(_help("simulate").split())
    assert "ws://HOST:PORT/v1/realtime" in text
    assert "Without --scenario it issues the demo's mix" in text


def _demo_exporting_to(endpoint: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    command = [*RTGUARD, "demo", "--calls", "20", "--rate", "0", "--metrics-port", "0", "--otlp"]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    return result, time.monotonic() - started


def test_the_demo_says_its_spans_were_exported() -> None:
    with OtlpReceiver() as receiver:
        result, _ = _demo_exporting_to(receiver.endpoint)
    assert result.returncode == 0, result.stderr
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("span export")]
    assert re.search(r"\d+ spans and events exported$", row), row
    assert receiver.spans


def test_the_demo_says_export_failed_and_exits_promptly_when_the_endpoint_is_down() -> None:
    """The exporter retries a dead endpoint for seconds; the demo bounds its shutdown (2 s)."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    result, elapsed = _demo_exporting_to(dead)
    assert result.returncode == 0, result.stderr  # every call got its output all the same
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("span export")]
    assert "export failed:" in row
    assert "Traceback" not in result.stderr
    assert elapsed < 20  # not the exporter's own retries of a dead endpoint

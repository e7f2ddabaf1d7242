"""The `rtguard` command, run as users run it: a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

RTGUARD = [sys.executable, "-m", "rtguard.cli"]


def test_demo_finishes_with_no_incomplete_calls() -> None:
    result = subprocess.run(
        [*RTGUARD, "demo", "--calls", "120", "--rate", "0", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "incomplete calls              0" in result.stdout
    assert "simulator invariant           holds" in result.stdout
    assert "delivered: timeout" in result.stdout
    assert "delivered: handoff_failed" in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_shuts_down_gracefully_on_signals(sig: signal.Signals) -> None:
    process = subprocess.Popen(
        [*RTGUARD, "demo", "--calls", "100000", "--rate", "200", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=30)
    assert "interrupted:" in stderr
    assert "incomplete calls              0" in stdout, stdout + stderr
    assert process.returncode == 0


def test_bad_options_are_clear() -> None:
    result = subprocess.run(
        [*RTGUARD, "demo", "--calls", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--calls must be positive" in result.stderr

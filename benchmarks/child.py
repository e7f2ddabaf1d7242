"""A helper process the benchmarks spawn (the simulator, the OTLP receiver): started with
a pipe to it, its CPU time read from outside, and stopped politely, then by force."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import psutil

__all__ = ["ChildProcess"]


class ChildProcess:
    def __init__(self, target: Callable[[Connection], None], name: str, farewell: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=target, args=(child,), name=name)
        self._process.start()
        child.close()
        self._farewell = farewell  # the message that asks the child to exit

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the child has used so far."""
        times = psutil.Process(self._process.pid).cpu_times()
        return float(times.user + times.system)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self._conn.send(self._farewell)
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._conn.close()

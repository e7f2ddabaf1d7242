"""``python -m benchmarks``: run every benchmark against the rtguard simulator and rewrite
docs/benchmarks.md. ``--quick`` (small N) and ``--only NAME`` print the report instead,
unless ``--output`` says where to write it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import completion, latency, memory, profiles, telemetry_cost, throughput, voice
from .clients import quiet_logs
from .report import Results, environment, render
from .simserver import SimulatorProcess
from .workers import Workers

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"

Runner = Callable[..., Awaitable[Any]]
BENCHMARKS: dict[str, tuple[str, Runner]] = {
    # name: (attribute of Results, run function); the order of a full run
    "completion": ("completion", completion.run),
    "latency": ("latency", latency.run),
    "throughput": ("throughput", throughput.run),
    "telemetry": ("telemetry", telemetry_cost.run),
    "memory": ("memory", memory.run),
    "profile": ("profiles", profiles.run),
    "voice": ("voice", voice.run),
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="rtguard and the openai-agents realtime session against the same simulator.",
    )
    parser.add_argument("--quick", action="store_true", help="small N: a smoke run")
    parser.add_argument(
        "--only", choices=sorted(BENCHMARKS), action="append", help="run only these (repeatable)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="write the report here (default: docs/benchmarks.md for a full run, "
        "stdout with --quick or --only)",
    )
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace, command: str) -> Results:
    quiet_logs()
    results = Results(command, args.quick, datetime.now(UTC), environment(REPO))
    started = time.monotonic()

    def log(line: str) -> None:
        elapsed = time.monotonic() - started
        print(f"[{elapsed:6.1f}s] {line}", file=sys.stderr, flush=True)
        results.log.append(line)

    names = args.only or list(BENCHMARKS)
    sim, workers = SimulatorProcess(), Workers()
    try:
        for name in BENCHMARKS:
            if name not in names:
                continue
            attribute, run = BENCHMARKS[name]
            log(f"--- {name}")
            setattr(results, attribute, await run(sim, workers, quick=args.quick, log=log))
    finally:
        workers.close()
        sim.close()
    results.duration = time.monotonic() - started
    results.env = dataclasses.replace(results.env, load_after=os.getloadavg())
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    results = asyncio.run(_main(args, command))
    text = render(results)
    output = args.output or (None if args.quick or args.only else DEFAULT_OUTPUT)
    if output is None:
        print(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

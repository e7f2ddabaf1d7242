"""``rtguard demo`` and ``rtguard simulate``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence

from ._events import CallIncomplete, OutputAcknowledged, OutputSendFailed, ToolFailed
from ._ledger import Outcome
from ._session import RealtimeSession
from .demo import demo_agent, demo_scenario
from .simulator import Scenario, Simulator
from .telemetry import Telemetry, configure, start_metrics_server

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtguard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run example tools against the built-in simulator")
    demo.add_argument(
        "--calls", type=int, default=200, help="number of function calls (default 200)"
    )
    demo.add_argument(
        "--rate", type=float, default=100.0, help="calls per second; 0 = as fast as possible"
    )
    demo.add_argument(
        "--scenario", help="a scenario file (JSON or YAML) instead of the built-in mix"
    )
    demo.add_argument("--metrics-port", type=int, default=9464, help="serve /metrics here; 0 = off")
    demo.add_argument("--metrics-addr", default="127.0.0.1")
    demo.add_argument(
        "--otlp", action="store_true", help="export spans with OTLP (OTEL_EXPORTER_OTLP_*)"
    )

    simulate = commands.add_parser("simulate", help="run only the simulator, for your own app")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--scenario", help="a scenario file (JSON or YAML)")

    args = parser.parse_args(argv)
    # Per-call warnings would scroll the progress line away; the summary counts them.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        if args.calls < 1 or args.rate < 0:
            parser.error("--calls must be positive and --rate not negative")
        scenario = (
            Scenario.load(args.scenario)
            if args.scenario
            else demo_scenario(args.calls, args.rate or None)
        )
        if args.otlp:
            configure(service_name="rtguard-demo")
        if args.metrics_port:
            start_metrics_server(args.metrics_port, args.metrics_addr)
            print(
                f"metrics: http://{args.metrics_addr}:{args.metrics_port}/metrics", file=sys.stderr
            )
        return asyncio.run(_demo(scenario))
    scenario = Scenario.load(args.scenario) if args.scenario else Scenario()
    return asyncio.run(_simulate(scenario, args.host, args.port))


async def _demo(scenario: Scenario) -> int:
    outcomes: Counter[str] = Counter()
    incomplete: Counter[str] = Counter()
    latencies: list[float] = []
    send_failures = 0
    total = len(scenario.calls)
    started = time.monotonic()
    async with Simulator(scenario) as sim:
        session = RealtimeSession(demo_agent(), url=sim.url, telemetry=Telemetry.default())
        async with session:
            stop = _stop_on_signals()
            consumer = asyncio.create_task(_consume(session, outcomes, incomplete, latencies))
            while True:
                answered = sum(outcomes.values()) + sum(incomplete.values())
                _progress(answered, total, outcomes, incomplete, send_failures)
                done = answered >= total and len(sim.calls) == total
                if done or stop.is_set() or consumer.done():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
                send_failures = sum(c.refused_outputs for c in sim.calls.values())
        await consumer
    elapsed = time.monotonic() - started
    print(file=sys.stderr)
    if stop.is_set():
        print(f"interrupted: {len(sim.calls)} of {total} calls were issued", file=sys.stderr)
    _summary(outcomes, incomplete, latencies, send_failures, elapsed, sim.violations())
    return 1 if incomplete else 0


async def _consume(
    session: RealtimeSession,
    outcomes: Counter[str],
    incomplete: Counter[str],
    latencies: list[float],
) -> None:
    while True:
        try:
            async for event in session:
                if isinstance(event, OutputAcknowledged):
                    outcomes[event.outcome.value] += 1
                    latencies.append(event.latency)
                elif isinstance(event, CallIncomplete):
                    incomplete[event.reason.value] += 1
                elif isinstance(event, ToolFailed | OutputSendFailed):
                    pass  # counted through their call's settlement
            return
        except Exception:  # raised by a policy; the demo's tools use the event path
            continue


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def _progress(
    answered: int, total: int, outcomes: Counter[str], incomplete: Counter[str], retries: int
) -> None:
    ok = outcomes[Outcome.SUCCESS.value]
    failed = sum(outcomes.values()) - ok
    line = (
        f"\r[{answered:>6}/{total}] delivered ok {ok}  delivered failure {failed}  "
        f"incomplete {sum(incomplete.values())}  refused+retried {retries}"
    )
    if sys.stderr.isatty():
        print(line, end="", file=sys.stderr, flush=True)
    elif answered == total or answered % 100 == 0:
        print(line.strip(), file=sys.stderr, flush=True)


def _summary(
    outcomes: Counter[str],
    incomplete: Counter[str],
    latencies: list[float],
    retries: int,
    elapsed: float,
    violations: list[str],
) -> None:
    rows = [(f"delivered: {outcome}", str(count)) for outcome, count in sorted(outcomes.items())]
    rows += [(f"incomplete: {reason}", str(count)) for reason, count in sorted(incomplete.items())]
    rows.append(("incomplete calls", str(sum(incomplete.values()))))
    rows.append(("sends retried after refusal", str(retries)))
    if latencies:
        cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
        rows.append(("time to output p50", f"{cuts[49] * 1000:.2f} ms"))
        rows.append(("time to output p99", f"{cuts[98] * 1000:.2f} ms"))
    rows.append(("wall time", f"{elapsed:.2f} s"))
    rows.append(
        ("simulator invariant", "holds" if not violations else f"{len(violations)} violations")
    )
    width = max(len(name) for name, _ in rows)
    print(f"{'rtguard demo':<{width}}  result")
    print(f"{'-' * width}  ------")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


async def _simulate(scenario: Scenario, host: str, port: int) -> int:
    async with Simulator(scenario, host=host, port=port) as sim:
        print(f"simulator listening on {sim.url} (Ctrl-C to stop)", file=sys.stderr)
        await _stop_on_signals().wait()
    print(f"calls issued {len(sim.calls)}, without output {len(sim.unanswered())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The rtguard command: the demo, and the realtime simulator on its own.

Every mistake ends in one line on stderr, naming the option or the file and key and what was
expected, and exit status 2: never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from ._version import __version__
from .demo import choose_view, demo_scenario, run_demo, stop_on_signals
from .simulator import Scenario, ScenarioError, Simulator
from .telemetry import configure, start_metrics_server

__all__ = ["main"]

_N = TypeVar("_N", int, float)

DEFAULT_CALLS = 200
DEFAULT_RATE = 100.0

_DESCRIPTION = """\
rtguard is a guarded OpenAI Realtime API tool-call session: every function call the model
issues gets exactly one output the model can see, or is reported incomplete with a reason.
These commands need no API key: they run its demo, or its realtime simulator (a WebSocket
server on your machine that stands in for the Realtime API).

exit status: 0 when every call got its output, 1 when a call was left without one
(demo), 2 for a mistake in the options or a scenario file."""

_EXAMPLES = """\
examples:
  rtguard demo                          the demo mix: 200 calls at 100 per second
  rtguard demo --calls 5000 --rate 0    as fast as the session answers
  rtguard demo --scenario handoffs      a shipped scenario, or a path to a YAML/JSON file
  rtguard simulate --port 8765          point your app at ws://127.0.0.1:8765/v1/realtime"""

_DEMO = """\
Run example tools against the built-in simulator: a weather lookup, an order lookup that
sometimes raises, a report that times out, refunds the app approves or rejects, handoffs
between two agents (one always fails), a tool the model invents, broken JSON arguments, and
outputs the server refuses once. In a terminal the calls are shown live as they settle
(plain progress lines on stderr otherwise); at the end a summary on stdout gives the calls by
outcome, incomplete calls, retried sends and p50/p99 time to output. Exit status 1 if a call
was left without an output. Ctrl-C stops it; the calls in flight are settled first."""

_SIMULATE = """\
Run only the realtime simulator, for your own app: a WebSocket server that speaks the GA
Realtime API's events at ws://HOST:PORT/v1/realtime (?model=NAME is read as the real API
reads it; no API key is needed). It issues function calls to whichever app connects, once
over the whole run: a new connection carries on with the next call not issued yet.
Without --scenario it issues the demo's mix: --calls calls at --rate per second, two per
response, to get_weather, lookup_order, refund, slow_report, transfer_to_billing,
transfer_to_support and transfer_to_billing_directory, to a tool the model invents
(get_horoscope), and with broken JSON arguments; the first output of every 25th call is
refused once with a retryable server_error. An app without those tools answers them with
unknown-tool outputs. Ctrl-C stops it and prints how many calls were issued and how many
got no output."""


class _Parser(argparse.ArgumentParser):
    """Option mistakes end like every other mistake: one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _ErrorsToStderr(logging.Handler):
    """Log errors only: per-call warnings (a reconnect, a retried send) would scroll the view
    away, and the summary counts what they say. Writes to ``sys.stderr`` as it is at the time,
    so under the live view a record prints above it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:
            self.handleError(record)


class _Mistake(Exception):
    """A usage mistake found after parsing (conflicting options, a port in use)."""


_EXPORT_SHUTDOWN_SECONDS = 2.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, handlers=[_ErrorsToStderr()])
    command = f"{parser.prog} {args.command}"
    try:
        scenario = _scenario(args)
        if args.command == "demo":
            return _demo(args, scenario)
        return asyncio.run(_simulate(scenario, args.host, args.port))
    except (_Mistake, ScenarioError) as mistake:
        print(f"{command}: {mistake}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the run listened for signals
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> _Parser:
    parser = _Parser(
        prog="rtguard",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, title="commands")

    demo = commands.add_parser(
        "demo",
        help="run example tools against the built-in simulator and sum up every call",
        description=_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_call_options(demo)
    demo.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        default=9464,
        help="serve Prometheus metrics at http://ADDR:PORT/metrics; 0: no metrics server "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address the metrics server listens on; 0.0.0.0 for every interface "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--otlp",
        action="store_true",
        help="export spans with OTLP, set up by the standard OTEL_EXPORTER_OTLP_* variables: "
        "by default gRPC to http://localhost:4317; OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
        "sends to http://localhost:4318/v1/traces; OTEL_EXPORTER_OTLP_ENDPOINT and "
        "OTEL_EXPORTER_OTLP_HEADERS set where and with what headers (default: off)",
    )

    simulate = commands.add_parser(
        "simulate",
        help="run only the simulator, a WebSocket server for your own app",
        description=_SIMULATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_call_options(simulate)
    simulate.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on; 0.0.0.0 for every interface (default: %(default)s)",
    )
    simulate.add_argument(
        "--port",
        type=_port,
        metavar="PORT",
        default=8765,
        help="the port to listen on; 0: any free port, printed at start (default: %(default)s)",
    )
    return parser


def _add_call_options(command: argparse.ArgumentParser) -> None:
    shipped = ", ".join(Scenario.shipped_names())
    command.add_argument(
        "--scenario",
        metavar="NAME_OR_FILE",
        help=f"what the simulated model does instead of the demo's mix: a shipped scenario "
        f"({shipped}) or a YAML/JSON scenario file; it sets its own calls and rate, so "
        "--calls and --rate cannot be given with it (default: the demo's mix)",
    )
    command.add_argument(
        "--calls",
        type=_positive_int,
        metavar="N",
        help=f"how many calls of the demo's mix to issue (default: {DEFAULT_CALLS})",
    )
    command.add_argument(
        "--rate",
        type=_non_negative_float,
        metavar="PER_SECOND",
        help=f"calls per second; 0: as fast as the app answers, as rate: 0 in a scenario "
        f"file (default: {DEFAULT_RATE:g})",
    )


def _scenario(args: argparse.Namespace) -> Scenario:
    """The scenario the options ask for: a shipped one or a file, or the demo's mix."""
    if args.scenario is None:
        calls = DEFAULT_CALLS if args.calls is None else args.calls
        return demo_scenario(calls, DEFAULT_RATE if args.rate is None else args.rate)
    given = [option for option in ("calls", "rate") if getattr(args, option) is not None]
    if given:
        options = " and ".join(f"--{option}" for option in given)
        raise _Mistake(f"{options} cannot be given with --scenario: the scenario sets its calls")
    value = args.scenario
    if Path(value).is_file() or Path(value).suffix or "/" in value or os.sep in value:
        return Scenario.load(value)
    return Scenario.shipped(value)


def _demo(args: argparse.Namespace, scenario: Scenario) -> int:
    if not scenario.calls:
        raise _Mistake(f"{args.scenario}: calls: the demo needs at least one call")
    export = configure(service_name="rtguard-demo") if args.otlp else None
    if args.metrics_port:
        try:
            start_metrics_server(args.metrics_port, args.metrics_addr)
        except OSError as error:
            where = _listen_failure(error, args.metrics_addr, args.metrics_port)
            raise _Mistake(f"--metrics-port: {where}; --metrics-port 0 turns it off") from None
        url = f"http://{args.metrics_addr}:{args.metrics_port}/metrics"
        print(f"metrics: {url}", file=sys.stderr)
    report = asyncio.run(run_demo(scenario, choose_view()))
    if report.interrupted:
        issued = f"{report.issued} of {len(scenario.calls)} calls were issued"
        if report.closed_on:
            issued += (
                f"; {report.closed_on} issued as the session closed were reported incomplete"
                " (session_closed)"
            )
        print(f"interrupted: {issued}", file=sys.stderr)
    # Bounded: with the endpoint down the exporter would otherwise retry for seconds.
    exported = export.shutdown(timeout=_EXPORT_SHUTDOWN_SECONDS) if export else None
    print(report.summary(exported))
    return report.exit_status


async def _simulate(scenario: Scenario, host: str, port: int) -> int:
    stop = stop_on_signals()
    sim = Simulator(scenario, host=host, port=port)
    try:
        await sim.start()
    except OSError as error:
        where = _listen_failure(error, host, port)
        raise _Mistake(f"--host/--port: {where}; --port 0 picks a free port") from None
    try:
        print(
            f"simulator listening on {sim.url}, {len(scenario.calls)} calls to issue "
            "(Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await sim.stop()
    print(f"calls issued {len(sim.calls)}, without output {len(sim.unanswered())}", file=sys.stderr)
    return 0


def _listen_failure(error: OSError, host: str, port: int) -> str:
    reason = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror
    return f"cannot listen on {host}:{port} ({reason or error})"


def _positive_int(text: str) -> int:
    value = _number(int, text, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(float, text, "a number")
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _port(text: str) -> int:
    value = _number(int, text, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text}")
    return value


def _number(kind: type[_N], text: str, expected: str) -> _N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(main())

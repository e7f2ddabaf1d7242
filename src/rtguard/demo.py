"""The demo: example tools that succeed, raise, time out, need approval and fail a handoff, a
scenario that calls them, and a run against the built-in simulator that shows the calls as
they settle (live in a terminal, plain lines otherwise) and sums them up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import statistics
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from ._agent import Agent, handoff
from ._events import (
    CallIncomplete,
    OutputAcknowledged,
    OutputSendFailed,
    SessionResumed,
    ToolApprovalRequested,
)
from ._ledger import IncompleteReason, Outcome
from ._session import RealtimeSession
from ._tools import function_tool
from .simulator import CallSpec, Faults, Scenario, Simulator
from .telemetry import ExportReport, Telemetry

__all__ = [
    "DemoReport",
    "LiveView",
    "PlainView",
    "Tally",
    "View",
    "choose_view",
    "demo_agent",
    "demo_scenario",
    "run_demo",
    "stop_on_signals",
]

REFUND_LIMIT = 100.0  # the demo app approves refunds up to this amount and rejects larger ones


@function_tool(timeout=2.0)
async def get_weather(city: str) -> str:
    """Current weather for a city."""
    await asyncio.sleep(0.001)
    return f"It is sunny and 21 °C in {city}."


@function_tool
def lookup_order(order_id: int) -> dict[str, object]:
    """Look an order up (a sync tool: it runs in a worker thread)."""
    if order_id % 7 == 0:
        raise LookupError(f"order {order_id} is archived")
    return {"order_id": order_id, "status": "shipped"}


@function_tool(timeout=0.1)
async def slow_report(pages: int) -> str:
    """Build a report; long ones take longer than the tool's timeout."""
    await asyncio.sleep(0.01 * pages)
    return f"report with {pages} pages"


@function_tool(needs_approval=True)
def refund(order_id: int, amount: float) -> dict[str, object]:
    """Refund an order; the app approves or rejects each refund first."""
    return {"order_id": order_id, "refunded": amount}


def _billing_directory() -> Agent:
    raise ConnectionError("billing directory unavailable")


def _support() -> Agent:
    return support


_TOOLS = [get_weather, lookup_order, slow_report, refund]
billing = Agent(
    name="billing",
    instructions="You handle billing questions.",
    tools=_TOOLS,
    handoffs=[handoff(_support, tool_name="transfer_to_support")],
)
support = Agent(
    name="support",
    instructions="You help customers; hand billing questions over.",
    tools=_TOOLS,
    handoffs=[billing, handoff(_billing_directory, tool_name="transfer_to_billing_directory")],
)


def demo_agent() -> Agent:
    return support


def demo_scenario(calls: int = 200, rate: float | None = 100.0, seed: int = 7) -> Scenario:
    """A mix: mostly successes, some raising, timing out, refunds the app rejects, handoffs
    (one kind always fails), a tool name the model invents, invalid JSON, and outputs the
    server refuses once. ``rate`` 0 or None: as fast as the app answers."""
    rng = random.Random(seed)
    specs = []
    for _ in range(calls):
        roll = rng.random()
        if roll < 0.45:
            specs.append(
                CallSpec("get_weather", json.dumps({"city": rng.choice(["Paris", "Lima", "Oslo"])}))
            )
        elif roll < 0.64:
            specs.append(CallSpec("lookup_order", json.dumps({"order_id": rng.randrange(1, 100)})))
        elif roll < 0.70:
            amount = rng.choice([20.0, 80.0, 250.0])
            specs.append(CallSpec("refund", json.dumps({"order_id": 42, "amount": amount})))
        elif roll < 0.82:
            specs.append(CallSpec("slow_report", json.dumps({"pages": rng.choice([1, 2, 30])})))
        elif roll < 0.88:
            specs.append(CallSpec(rng.choice(["transfer_to_billing", "transfer_to_support"])))
        elif roll < 0.92:
            specs.append(CallSpec("transfer_to_billing_directory"))
        elif roll < 0.96:
            specs.append(CallSpec("get_horoscope", '{"sign": "leo"}'))
        else:
            specs.append(CallSpec("get_weather", '{"city": "Par'))
    refused = frozenset(i for i in range(calls) if i % 25 == 3)
    return Scenario(
        calls=tuple(specs),
        rate=rate,
        calls_per_response=2,
        faults=Faults(reject_output=refused, reject_type="server_error"),
    )


# --- the run --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the app saw, counted as the events arrive."""

    total: int
    outcomes: Counter[str] = field(default_factory=Counter)  # delivered outputs, by outcome
    incomplete: Counter[str] = field(default_factory=Counter)  # calls without output, by reason
    latencies: list[float] = field(default_factory=list)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=1000))  # for the live view
    retried_sends: int = 0
    resumed: int = 0  # connections replaced, the conversation carried on
    closed_on: set[str] = field(default_factory=set)  # call ids incomplete: session_closed

    @property
    def settled(self) -> int:
        return self.outcomes.total() + self.incomplete.total()

    def add(self, event: object) -> None:
        if isinstance(event, OutputAcknowledged):
            self.outcomes[event.outcome.value] += 1
            self.latencies.append(event.latency)
            self.recent.append(event.latency)
        elif isinstance(event, CallIncomplete):
            self.incomplete[event.reason.value] += 1
            if event.reason is IncompleteReason.SESSION_CLOSED:
                self.closed_on.add(event.call_id)
        elif isinstance(event, OutputSendFailed) and event.will_retry:
            self.retried_sends += 1
        elif isinstance(event, SessionResumed):
            self.resumed += 1


@dataclass(frozen=True)
class DemoReport:
    """How the run ended; ``exit_status`` is 1 when a call was left without an output,
    except the calls an interrupted run closed on: the model issued them as the session
    closed, and each was reported incomplete (``session_closed``), as asked."""

    tally: Tally
    elapsed: float
    issued: int
    interrupted: bool
    violations: list[str]

    @property
    def closed_on(self) -> int:
        """Calls the interruption left without output (0 for a run that was not stopped)."""
        return len(self.tally.closed_on) if self.interrupted else 0

    @property
    def exit_status(self) -> int:
        return 1 if self.tally.incomplete.total() > self.closed_on else 0

    def summary(self, exported: ExportReport | None = None) -> str:
        """The result table; ``exported`` says what reached the OTLP endpoint, if spans
        were exported."""
        tally = self.tally
        rows = [(f"delivered: {name}", str(n)) for name, n in sorted(tally.outcomes.items())]
        rows += [(f"incomplete: {name}", str(n)) for name, n in sorted(tally.incomplete.items())]
        rows.append(("incomplete calls", str(tally.incomplete.total())))
        rows.append(("sends retried after refusal", str(tally.retried_sends)))
        rows.append(("connections replaced", str(tally.resumed)))
        if tally.latencies:
            p50, p99 = _percentiles(tally.latencies)
            rows.append(("time to output p50", f"{p50 * 1000:.2f} ms"))
            rows.append(("time to output p99", f"{p99 * 1000:.2f} ms"))
        rows.append(("wall time", f"{self.elapsed:.2f} s"))
        invariant = f"{len(self.violations)} violations" if self.violations else "holds"
        rows.append(("simulator invariant", invariant))
        if exported is not None:
            rows.append(("span export", str(exported)))
        width = max(len(name) for name, _ in rows)
        lines = [f"{'rtguard demo':<{width}}  result", f"{'-' * width}  ------"]
        return "\n".join(lines + [f"{name:<{width}}  {value}" for name, value in rows])


async def run_demo(scenario: Scenario, view: View) -> DemoReport:
    """Run the demo agent against ``scenario`` until every call is settled or a signal
    (SIGINT, SIGTERM) asks to stop; closing the session then settles the calls in flight."""
    tally = Tally(total=len(scenario.calls))
    started = time.monotonic()
    async with Simulator(scenario) as sim:
        session = RealtimeSession(demo_agent(), url=sim.url, telemetry=Telemetry.default())
        with view:
            async with session:
                stop = stop_on_signals()
                consumer = asyncio.create_task(_consume(session, tally))
                while not (stop.is_set() or consumer.done()):
                    view.show(tally, time.monotonic() - started)
                    if tally.settled >= tally.total and len(sim.calls) == tally.total:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), view.interval)
            await consumer  # the calls in flight settled as the session closed
            view.show(tally, time.monotonic() - started, final=True)
    interrupted = stop.is_set()
    return DemoReport(
        tally=tally,
        elapsed=time.monotonic() - started,
        issued=len(sim.calls),
        interrupted=interrupted,
        violations=sim.violations(excused=tally.closed_on if interrupted else ()),
    )


async def _consume(session: RealtimeSession, tally: Tally) -> None:
    async for event in session:
        if isinstance(event, ToolApprovalRequested):
            _approve_small_refunds(session, event)
        tally.add(event)


def _approve_small_refunds(session: RealtimeSession, request: ToolApprovalRequested) -> None:
    """The demo app's approval policy: small refunds go through, large ones need a person."""
    if request.arguments["amount"] <= REFUND_LIMIT:
        session.approve(request.call_id)
    else:
        session.reject(request.call_id, f"refunds over {REFUND_LIMIT:g} need a person")


def stop_on_signals() -> asyncio.Event:
    """Set on SIGINT or SIGTERM, so a run can end as it would have: settled and summed up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


def _percentiles(latencies: list[float] | deque[float]) -> tuple[float, float]:
    if len(latencies) == 1:
        return latencies[0], latencies[0]
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49], cuts[98]


# --- the views ------------------------------------------------------------------------------


class View(Protocol):
    """Shows the tally while the demo runs; ``interval`` is how often it wants to."""

    interval: float

    def __enter__(self) -> object: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def show(self, tally: Tally, elapsed: float, *, final: bool = False) -> None: ...


def choose_view() -> View:
    """The live view in a real terminal, plain lines for logs and pipes."""
    console = Console(stderr=True)
    if console.is_terminal and not console.is_dumb_terminal:
        return LiveView(console)
    return PlainView()


class PlainView:
    """A progress line on stderr every second and at the end: fit for CI logs and pipes."""

    interval = 0.25

    def __init__(self, every: float = 1.0) -> None:
        self._every = every
        self._last = -every

    def __enter__(self) -> PlainView:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def show(self, tally: Tally, elapsed: float, *, final: bool = False) -> None:
        if not final and elapsed - self._last < self._every:
            return
        self._last = elapsed
        ok = tally.outcomes[Outcome.SUCCESS.value]
        latency = ""
        if tally.recent:
            p50, p99 = _percentiles(tally.recent)
            latency = f"  p50 {p50 * 1000:.1f} ms  p99 {p99 * 1000:.1f} ms"
        print(
            f"[{tally.settled:>6}/{tally.total}] delivered ok {ok}  "
            f"delivered failure {tally.outcomes.total() - ok}  "
            f"incomplete {tally.incomplete.total()}  retried {tally.retried_sends}"
            f"{latency}  {elapsed:.1f} s",
            file=sys.stderr,
            flush=True,
        )


class LiveView:
    """A progress bar, the outcome counts and recent latency, redrawn in place on stderr."""

    interval = 0.1

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def show(self, tally: Tally, elapsed: float, *, final: bool = False) -> None:
        self._live.update(_live_panel(tally, elapsed), refresh=True)


def _live_panel(tally: Tally, elapsed: float) -> RenderableType:
    progress = Table.grid(padding=(0, 2))
    rate = tally.settled / elapsed if elapsed > 0 else 0.0
    progress.add_row(
        ProgressBar(total=max(tally.total, 1), completed=tally.settled, width=40),
        f"{tally.settled}/{tally.total} calls",
        f"{rate:,.0f} calls/s",
        f"{elapsed:.1f} s",
    )
    counts = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
    counts.add_column("outcome")
    counts.add_column("calls", justify="right")
    for name, n in sorted(tally.outcomes.items()):
        style = "green" if name == Outcome.SUCCESS.value else "yellow"
        counts.add_row(f"[{style}]delivered: {name}[/]", str(n))
    for name, n in sorted(tally.incomplete.items()):
        counts.add_row(f"[red]incomplete: {name}[/]", str(n))
    counts.add_row("sends retried after refusal", str(tally.retried_sends))
    counts.add_row("connections replaced", str(tally.resumed))
    if tally.recent:
        p50, p99 = _percentiles(tally.recent)
        counts.add_row(
            f"time to output p50 / p99 (last {len(tally.recent)})",
            f"{p50 * 1000:.1f} / {p99 * 1000:.1f} ms",
        )
    return Group(progress, counts)

"""Shared test machinery: a simulator run driven by a real session over a real WebSocket,
with spans captured by the SDK's in-memory exporter and metrics in a private registry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from conformance import assert_conforms
from rtguard import (
    Agent,
    RealtimeSession,
    SessionConfig,
    SessionEvent,
    Transport,
    WebSocketTransport,
)
from rtguard.simulator import FaultProxy, FrameFault, Scenario, Simulator
from rtguard.telemetry import RtguardMetrics, Telemetry

TransportWrapper = Callable[[Transport], Transport]


@dataclass
class Run:
    sim: Simulator
    session: RealtimeSession
    events: list[SessionEvent] = field(default_factory=list)
    raised: list[BaseException] = field(default_factory=list)
    spans: list[ReadableSpan] = field(default_factory=list)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    loop_errors: list[dict[str, Any]] = field(default_factory=list)
    leftover_tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    proxy: FaultProxy | None = None

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def spans_named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]


def make_telemetry(registry: CollectorRegistry) -> tuple[Telemetry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(tracer_provider=provider, metrics=RtguardMetrics(registry)), exporter


async def run_scenario(
    scenario: Scenario,
    agent: Agent,
    *,
    config: SessionConfig | None = None,
    wrap: TransportWrapper | None = None,
    done: Callable[[Run], bool] | None = None,
    on_event: Callable[[Run, SessionEvent], Awaitable[None] | None] | None = None,
    timeout: float = 10.0,
    frame_faults: list[FrameFault] | None = None,
) -> Run:
    """Run ``agent`` against ``scenario`` until every call is answered (or ``done``), then close.

    With ``frame_faults``, a FaultProxy sits between the session and the simulator. Every
    frame either side sent is then checked against the official SDK's event models.
    """
    registry = CollectorRegistry()
    telemetry, exporter = make_telemetry(registry)
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    async with Simulator(scenario, record_frames=True) as sim, contextlib.AsyncExitStack() as stack:
        proxy = None
        url = sim.url
        if frame_faults is not None:  # a relay only where a test injects frame faults
            proxy = await stack.enter_async_context(FaultProxy(sim.url, frame_faults))
            url = proxy.url
        limit = (config or SessionConfig()).max_frame_bytes

        async def connector() -> Transport:
            transport: Transport = await WebSocketTransport.connect(url, {}, max_frame_bytes=limit)
            return wrap(transport) if wrap is not None else transport

        session = RealtimeSession(
            agent, url=sim.url, config=config, connector=connector, telemetry=telemetry
        )
        run = Run(sim, session, registry=registry, loop_errors=loop_errors, proxy=proxy)
        finished = done or (
            lambda r: len(r.sim.calls) == len(scenario.calls) and not r.sim.violations()
        )

        async def consume() -> None:
            while True:
                try:
                    async for event in session:
                        run.events.append(event)
                        if on_event is not None:
                            result = on_event(run, event)
                            if result is not None:
                                await result
                    return
                except Exception as exc:  # an error the session raised to the app
                    run.raised.append(exc)

        async with session:
            consumer = asyncio.create_task(consume())
            async with asyncio.timeout(timeout):
                while not finished(run):
                    await asyncio.sleep(0.005)
        await asyncio.wait_for(consumer, timeout)
        await asyncio.sleep(0)  # let cancelled tasks finish unwinding
        run.leftover_tasks = [
            t
            for t in asyncio.all_tasks()
            if not t.done() and "RealtimeSession" in repr(t.get_coro())
        ]
    assert_conforms(sim)
    run.spans = list(exporter.get_finished_spans())
    loop.set_exception_handler(None)
    return run


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()

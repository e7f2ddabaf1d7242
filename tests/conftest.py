"""Shared test machinery: a simulator run driven by a real session over a real WebSocket,
with spans captured by the SDK's in-memory exporter and metrics in a private registry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from rtguard import (
    Agent,
    RealtimeSession,
    SessionConfig,
    SessionEvent,
    Transport,
    WebSocketTransport,
)
from rtguard.simulator import Scenario, Simulator
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
) -> Run:
    """Run ``agent`` against ``scenario`` until every call is answered (or ``done``), then close."""
    registry = CollectorRegistry()
    telemetry, exporter = make_telemetry(registry)
    async with Simulator(scenario) as sim:
        transport: Transport = await WebSocketTransport.connect(sim.url, {})
        if wrap is not None:
            transport = wrap(transport)
        session = RealtimeSession(
            agent, url=sim.url, config=config, transport=transport, telemetry=telemetry
        )
        run = Run(sim, session, registry=registry)
        finished = done or (
            lambda r: (
                not r.sim.unanswered()
                and len(r.sim.calls) == len(scenario.calls)
                and all(c.response_create_after for c in r.sim.calls.values())
            )
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
    run.spans = list(exporter.get_finished_spans())
    return run


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()

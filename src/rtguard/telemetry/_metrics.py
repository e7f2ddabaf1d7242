"""rtguard's Prometheus instruments, each declared once.

An instance binds them to one registry (the process default unless a test or an app passes
its own). Label values stay bounded: tool names come from the app's own agents (a name the
model invents is reported as ``_unknown``), and no label ever holds a call or session id.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._ledger import IncompleteReason, Outcome
from .._reconnect import Loss
from .._version import __version__
from . import _names as n

__all__ = ["RtguardMetrics"]


class _Ledger(Protocol):
    @property
    def open_count(self) -> int: ...

    def oldest_open(self) -> _OpenCall | None: ...


class _OpenCall(Protocol):
    received_at: float


class RtguardMetrics:
    """rtguard's Prometheus instruments, registered in ``registry``: the metrics the
    telemetry guide lists, each a ``prometheus_client`` object as an attribute.

    ``Telemetry.default()`` makes one on the process-wide registry; make your own with a
    ``CollectorRegistry`` of your own (a registry takes each metric name once) and pass it as
    ``Telemetry(metrics=...)``. Every labelled series that alerts key on is exported as 0
    from the start. The two waiting-call gauges are computed at scrape time from the
    sessions it ``watch``es, or, with ``PROMETHEUS_MULTIPROC_DIR`` set, kept as per-process
    gauges that ``refresh`` updates.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.registry = registry
        """Where the instruments are registered; None: nowhere (nothing is exported)."""
        self.tool_duration = Histogram(
            n.METRIC_TOOL_DURATION,
            "Duration of a tool call from the model's call until its output is settled "
            "(gen_ai.execute_tool.duration).",
            ["gen_ai_tool_name", "error_type"],
            buckets=n.TOOL_DURATION_BUCKETS,
            registry=registry,
        )
        """``gen_ai_execute_tool_duration_seconds``: a call from the model's request until it is
        settled, by tool and ``error_type``."""
        self.tool_calls = Counter(
            n.METRIC_TOOL_CALLS,
            "Tool calls by how the tool ended (success, error, timeout, rejected, ...).",
            ["gen_ai_tool_name", "outcome"],
            registry=registry,
        )
        """``rtguard_tool_calls_total``: calls by tool and how the tool ended (``outcome``)."""
        self.output_latency = Histogram(
            n.METRIC_OUTPUT_LATENCY,
            "Time from the model's function call to the server acknowledging its output.",
            ["gen_ai_tool_name"],
            buckets=n.OUTPUT_LATENCY_BUCKETS,
            registry=registry,
        )
        """``rtguard_output_latency_seconds``: the model's call to the server's acknowledgement of
        its output, by tool."""
        self.output_sends = Counter(
            n.METRIC_OUTPUT_SENDS,
            "Attempts to send a function_call_output, by result.",
            ["result"],
            registry=registry,
        )
        """``rtguard_output_sends_total``: send attempts, by ``result``."""
        self.send_retries = Counter(
            n.METRIC_SEND_RETRIES,
            "Output sends scheduled again (from the cached output) after a failed attempt.",
            registry=registry,
        )
        """``rtguard_output_send_retries_total``: sends scheduled again from the cached output."""
        self.calls_without_output = Counter(
            n.METRIC_CALLS_WITHOUT_OUTPUT,
            "Calls that ended without an output the model can see, by reason.",
            ["reason"],
            registry=registry,
        )
        """``rtguard_calls_without_output_total``: calls that ended without output, by
        ``reason``."""
        self.swallowed_errors = Counter(
            n.METRIC_SWALLOWED_ERRORS,
            "Exceptions rtguard caught and did not re-raise, by where.",
            ["place"],
            registry=registry,
        )
        """``rtguard_swallowed_errors_total``: exceptions caught and not re-raised, by ``place``."""
        self.protocol_errors = Counter(
            n.METRIC_PROTOCOL_ERRORS,
            "Server frames rtguard could not use, and server error events, by kind.",
            ["kind"],
            registry=registry,
        )
        """``rtguard_protocol_errors_total``: unusable frames and server errors, by ``kind``."""
        self.handoffs = Counter(
            n.METRIC_HANDOFFS,
            "Handoffs between agents, by result.",
            ["result"],
            registry=registry,
        )
        """``rtguard_handoffs_total``: handoffs, by ``result``."""
        self.events_dropped = Counter(
            n.METRIC_EVENTS_DROPPED,
            "Plain server events (audio and transcript deltas, ...) dropped because the app "
            "fell more than max_queued_events behind.",
            registry=registry,
        )
        """``rtguard_events_dropped_total``: plain server events dropped for an app that fell
        behind."""
        self.sessions_closed = Counter(
            n.METRIC_SESSIONS_CLOSED,
            "Sessions that ended, by reason (closed by the app, server_closed, "
            "connection_lost with reconnecting off, reconnect_failed).",
            ["reason"],
            registry=registry,
        )
        """``rtguard_sessions_closed_total``: sessions that ended, by ``reason``."""
        self.reconnects = Counter(
            n.METRIC_RECONNECTS,
            "Connections replaced, by why the old one ended and whether a new one opened.",
            ["reason", "outcome"],
            registry=registry,
        )
        """``rtguard_reconnects_total``: connections replaced, by ``reason`` and ``outcome``."""
        self.calls_carried = Counter(
            n.METRIC_CALLS_CARRIED,
            "Open calls carried to a new connection (their function_call recreated there).",
            registry=registry,
        )
        """``rtguard_calls_carried_total``: open calls carried to a new connection."""
        self.replayed_items = Counter(
            n.METRIC_REPLAYED_ITEMS,
            "Conversation items recreated on a new connection.",
            registry=registry,
        )
        """``rtguard_replayed_items_total``: conversation items recreated on new connections."""
        self.disconnected = Histogram(
            n.METRIC_DISCONNECTED,
            "Time without a connection, from a connection's end until the next one opened.",
            buckets=n.DISCONNECTED_BUCKETS,
            registry=registry,
        )
        """``rtguard_disconnected_seconds``: time without a connection."""
        self.active_sessions = Gauge(
            n.METRIC_ACTIVE_SESSIONS,
            "Realtime sessions currently connected.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        """``rtguard_active_sessions``: connected sessions."""
        build_info = Gauge(
            n.METRIC_BUILD_INFO,
            "rtguard's version; always 1.",
            ["version"],
            registry=registry,
            multiprocess_mode="max",
        )
        build_info.labels(version=__version__).set(1)
        self._ledgers: weakref.WeakSet[_Ledger] = weakref.WeakSet()
        # Scrape-time gauges need this process's memory, which prometheus_client's
        # multiprocess mode cannot read: there, sessions refresh per-process gauges instead.
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        """Whether prometheus_client's multiprocess mode was on when this was made."""
        if self.multiprocess:
            self._calls_waiting = Gauge(
                n.METRIC_CALLS_WAITING,
                _WAITING_HELP,
                registry=registry,
                multiprocess_mode="livesum",
            )
            self._oldest_age = Gauge(
                n.METRIC_OLDEST_WAITING_AGE,
                _AGE_HELP,
                registry=registry,
                multiprocess_mode="livemax",
            )
        elif registry is not None:
            registry.register(_WaitingCallsCollector(self._ledgers))
        self._export_zeroes()

    def _export_zeroes(self) -> None:
        for reason in IncompleteReason:
            self.calls_without_output.labels(reason=reason.value)
        for place in n.SWALLOWED_PLACES:
            self.swallowed_errors.labels(place=place)
        for kind in n.PROTOCOL_ERROR_KINDS:
            self.protocol_errors.labels(kind=kind)
        for result in n.SEND_RESULTS:
            self.output_sends.labels(result=result)
        for result in ("completed", "failed"):
            self.handoffs.labels(result=result)
        for closed in n.SESSION_CLOSE_REASONS:
            self.sessions_closed.labels(reason=closed)
        for loss in Loss:
            if loss.retryable:
                for outcome in n.RECONNECT_OUTCOMES:
                    self.reconnects.labels(reason=loss.value, outcome=outcome)

    def export_tools(self, tool_names: Iterable[str]) -> None:
        """Create the per-tool series (at 0) before the first call of each tool."""
        for name in tool_names:
            for outcome in Outcome:
                self.tool_calls.labels(name, outcome.value)
            self.output_latency.labels(name)
            self.tool_duration.labels(name, "")

    def watch(self, ledger: _Ledger) -> None:
        """Include a session's open calls in the waiting-calls gauges while it lives."""
        self._ledgers.add(ledger)

    def refresh(self) -> None:
        """Update the multiprocess gauges (a no-op when they are computed at scrape time)."""
        if self.multiprocess:
            count, age = _waiting_now(self._ledgers)
            self._calls_waiting.set(count)
            self._oldest_age.set(age)


_WAITING_HELP = "Calls whose output the server has not acknowledged yet."
_AGE_HELP = "Age of the oldest call still waiting for its output to be acknowledged (0 if none)."


def _waiting_now(ledgers: Iterable[_Ledger]) -> tuple[int, float]:
    count, oldest = 0, None
    for ledger in list(ledgers):
        count += ledger.open_count
        call = ledger.oldest_open()
        if call is not None and (oldest is None or call.received_at < oldest):
            oldest = call.received_at
    return count, 0.0 if oldest is None else time.monotonic() - oldest


class _WaitingCallsCollector(Collector):
    """Computed at scrape time, so a call stuck forever shows an age that keeps growing."""

    def __init__(self, ledgers: weakref.WeakSet[_Ledger]) -> None:
        self._ledgers = ledgers

    def collect(self) -> Iterable[Metric]:
        count, age = _waiting_now(self._ledgers)
        yield GaugeMetricFamily(n.METRIC_CALLS_WAITING, _WAITING_HELP, value=count)
        yield GaugeMetricFamily(n.METRIC_OLDEST_WAITING_AGE, _AGE_HELP, value=age)

    def describe(self) -> Iterable[Metric]:
        return self.collect()

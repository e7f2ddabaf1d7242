"""One-call setup for apps that have no OpenTelemetry SDK configuration of their own.

The session itself only uses the OpenTelemetry API, so an app's own SDK setup wins.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from opentelemetry import _logs, trace
from opentelemetry.sdk._logs import (
    LoggerProvider,
    LogRecordProcessor,
    ReadableLogRecord,
    ReadWriteLogRecord,
)
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from ._metrics import RtguardMetrics

__all__ = ["ExportReport", "OtlpExport", "configure", "start_metrics_server"]

logger = logging.getLogger("rtguard")

DEFAULT_SHUTDOWN_TIMEOUT = 5.0


def configure(
    *,
    service_name: str | None = None,
    exporter: SpanExporter | None = None,
    log_exporter: LogRecordExporter | None = None,
    metrics: RtguardMetrics | None = None,
) -> OtlpExport:
    """Install SDK tracer and logger providers that batch spans and the session events to
    OTLP, make them global, and return the handle to shut them down with.

    Honours the standard variables, which win over the arguments as in the SDK's own
    resource detection: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` over
    ``service_name``; ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``,
    ``..._HEADERS``, ``..._TIMEOUT``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``, the default,
    or ``http/protobuf``); ``OTEL_LOGS_EXPORTER=none`` for a backend that takes no logs.
    Export failures are counted in ``rtguard_swallowed_errors_total{place="span_export"}``
    and in the handle's [`ExportReport`][rtguard.telemetry.ExportReport].

    The providers do not flush at interpreter exit on their own (that waits up to 30 s on a
    dead endpoint); the handle does, bounded by ``DEFAULT_SHUTDOWN_TIMEOUT`` (5 s), unless
    the app calls [`OtlpExport.shutdown`][rtguard.telemetry.OtlpExport.shutdown] first.

    Args:
        service_name: the ``service.name`` resource attribute (``OTEL_SERVICE_NAME`` wins).
        exporter: where spans go, in place of the OTLP exporter the variables describe.
        log_exporter: where the session events (log records) go, in place of OTLP.
        metrics: where export failures are counted; by default the process-wide metrics.

    Returns:
        The handle to shut export down with, and to read what reached the endpoint.
    """
    named = Resource.create({"service.name": service_name} if service_name else {})
    resource = named.merge(OTELResourceDetector().detect())
    counter = _ExportCounter(metrics)
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    spans = _CountingSpanExporter(exporter or _span_exporter(), counter)
    tracer_provider.add_span_processor(_Offered(counter))
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    logger_provider = None
    if log_exporter is not None or os.environ.get("OTEL_LOGS_EXPORTER", "otlp") != "none":
        logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        records = _CountingLogExporter(log_exporter or _log_exporter(), counter)
        logger_provider.add_log_record_processor(_Offered(counter))
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(records))
        _logs.set_logger_provider(logger_provider)
    handle = OtlpExport(tracer_provider, logger_provider, counter)
    atexit.register(handle.shutdown)
    return handle


@dataclass(frozen=True)
class ExportReport:
    """What reached the OTLP endpoint: ``exported`` and ``failed`` count spans and log
    records; ``timed_out`` means shutdown stopped waiting and what was still queued is lost."""

    exported: int
    failed: int
    timed_out: bool

    @property
    def ok(self) -> bool:
        """Nothing was lost: no failed export, and shutdown did not give up waiting."""
        return self.failed == 0 and not self.timed_out

    def __str__(self) -> str:
        if self.ok:
            return f"{self.exported} spans and events exported"
        lost = " (gave up waiting at shutdown)" if self.timed_out else ""
        return (
            f"export failed: {self.failed} of {self.exported + self.failed} spans and events "
            f"not exported{lost}"
        )


class OtlpExport:
    """The providers [`configure`][rtguard.telemetry.configure] installed, and the one
    bounded way to stop them."""

    def __init__(
        self,
        tracer_provider: TracerProvider,
        logger_provider: LoggerProvider | None,
        counter: _ExportCounter,
    ) -> None:
        self.tracer_provider = tracer_provider
        """The SDK tracer provider, made global."""
        self.logger_provider = logger_provider
        """The SDK logger provider for the session events, made global; None with
        ``OTEL_LOGS_EXPORTER=none``."""
        self._counter = counter
        self._report: ExportReport | None = None

    @property
    def report(self) -> ExportReport:
        """The counts so far (final once ``shutdown`` returned)."""
        return self._report or self._counter.report(timed_out=False)

    def shutdown(self, timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> ExportReport:
        """Flush what is queued and stop, within ``timeout`` seconds whatever the endpoint
        does. The SDK's own shutdown has no overall deadline (the OTLP exporter retries a
        dead endpoint for up to its timeout, the batch processor waits up to 30 s), so it
        runs in a daemon thread this call stops waiting for."""
        if self._report is not None:
            return self._report
        worker = threading.Thread(target=self._flush_and_stop, name="rtguard-otlp-shutdown")
        worker.daemon = True
        worker.start()
        worker.join(timeout)
        self._report = self._counter.report(timed_out=worker.is_alive())
        if not self._report.ok:
            logger.warning("OpenTelemetry %s", self._report)
        return self._report

    def _flush_and_stop(self) -> None:
        providers: list[Any] = [self.tracer_provider, self.logger_provider]
        for provider in filter(None, providers):
            provider.force_flush()
            provider.shutdown()


class _ExportCounter:
    """Counts what was handed to the SDK and what the endpoint accepted, instead of letting
    failures vanish into the SDK's log line: the difference, lost for whatever reason
    (refused, unreachable, still queued at shutdown), is what the report calls failed. Each
    failed export also counts in the swallowed-errors metric's ``span_export`` place."""

    def __init__(self, metrics: RtguardMetrics | None) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._offered = 0
        self._exported = 0

    def offered(self) -> None:
        with self._lock:
            self._offered += 1

    def export(self, items: Sequence[object], export: _Export) -> bool:
        try:
            ok = export(items)
        except Exception:
            logger.exception("OpenTelemetry export failed")
            ok = False
        if ok:
            with self._lock:
                self._exported += len(items)
        else:
            (self._metrics or _default_metrics()).swallowed_errors.labels("span_export").inc()
        return ok

    def report(self, *, timed_out: bool) -> ExportReport:
        with self._lock:
            return ExportReport(self._exported, self._offered - self._exported, timed_out)


class _Offered(SpanProcessor, LogRecordProcessor):
    """Counts every span that ends and every log record emitted: what export owes."""

    def __init__(self, counter: _ExportCounter) -> None:
        self._counter = counter

    def on_end(self, span: ReadableSpan) -> None:
        self._counter.offered()

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self._counter.offered()

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _Export(Protocol):
    def __call__(self, items: Sequence[Any], /) -> bool: ...


class _CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, counter: _ExportCounter) -> None:
        self._inner = inner
        self._counter = counter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self._counter.export(
            spans, lambda items: self._inner.export(items) is SpanExportResult.SUCCESS
        )
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _CountingLogExporter(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter, counter: _ExportCounter) -> None:
        self._inner = inner
        self._counter = counter

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        ok = self._counter.export(
            batch, lambda items: self._inner.export(items) is LogRecordExportResult.SUCCESS
        )
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _span_exporter() -> SpanExporter:
    if _protocol("TRACES") == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

    return Grpc()


def _log_exporter() -> LogRecordExporter:
    if _protocol("LOGS") == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        return OTLPLogExporter()
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as Grpc

    return Grpc()


def _protocol(signal: str) -> str:
    """``grpc`` (the default) or ``http/protobuf``, per signal as the SDK reads it."""
    generic = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", generic)


def _default_metrics() -> RtguardMetrics:
    from ._session import Telemetry

    metrics = Telemetry.default().metrics
    assert metrics is not None
    return metrics


def start_metrics_server(
    port: int = 9464,
    addr: str = "127.0.0.1",
    registry: CollectorRegistry = REGISTRY,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` (Prometheus text or OpenMetrics, with exemplars, by negotiation).

    Binds 127.0.0.1 unless told otherwise. With ``PROMETHEUS_MULTIPROC_DIR`` set, it serves
    the samples of every worker process (prometheus_client's multiprocess mode).

    Args:
        port: the TCP port; 9464 is the OpenTelemetry convention for Prometheus exporters.
        addr: the address to bind; ``"0.0.0.0"`` for a scraper on another host.
        registry: what to serve; by default the process-wide registry, which
            ``Telemetry.default()`` uses (ignored in multiprocess mode).

    Returns:
        The HTTP server (``shutdown()`` stops it) and the daemon thread serving it.

    Raises:
        OSError: the port is in use, or the address cannot be bound.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return start_http_server(port, addr, registry)

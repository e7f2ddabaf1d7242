"""One-call setup for apps that have no OpenTelemetry SDK configuration of their own.

The session itself only uses the OpenTelemetry API, so an app's own SDK setup wins.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from ._metrics import RtguardMetrics

__all__ = ["configure", "start_metrics_server"]

logger = logging.getLogger("rtguard")


def configure(
    *,
    service_name: str | None = None,
    exporter: SpanExporter | None = None,
    metrics: RtguardMetrics | None = None,
) -> TracerProvider:
    """Install an SDK tracer provider that batches spans to OTLP and make it global.

    Honours the standard variables: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``, ``..._HEADERS`` and
    ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``, the default, or ``http/protobuf``). Export
    failures are counted in ``rtguard_swallowed_errors_total{place="span_export"}``.
    """
    attributes = {"service.name": service_name} if service_name else {}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = exporter or _otlp_exporter()
    provider.add_span_processor(BatchSpanProcessor(_CountingExporter(exporter, metrics)))
    trace.set_tracer_provider(provider)
    return provider


def _otlp_exporter() -> SpanExporter:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

    return Grpc()


class _CountingExporter(SpanExporter):
    """Counts export failures instead of letting them vanish into the SDK's log line."""

    def __init__(self, inner: SpanExporter, metrics: RtguardMetrics | None) -> None:
        self._inner = inner
        self._metrics = metrics

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            logger.exception("span export failed")
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            (self._metrics or _default_metrics()).swallowed_errors.labels("span_export").inc()
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


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
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return start_http_server(port, addr, registry)

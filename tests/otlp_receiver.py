"""A real OTLP/gRPC trace and log receiver on 127.0.0.1, built on the official protobuf service
definitions: the same protocol Jaeger and the OpenTelemetry Collector ingest."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    service_name: str
    start_ns: int = 0
    end_ns: int = 0
    event_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReceivedEvent:
    """A log record with an event name (how the session start and end events travel)."""

    event_name: str
    attributes: dict[str, Any]
    service_name: str


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self._receiver.add(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=_attributes(span.attributes),
                            status_code=span.status.code,
                            service_name=str(resource.get("service.name", "")),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            event_names=tuple(e.name for e in span.events),
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        for resource_logs in request.resource_logs:
            resource = _attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    event = ReceivedEvent(
                        event_name=record.event_name,
                        attributes=_attributes(record.attributes),
                        service_name=str(resource.get("service.name", "")),
                    )
                    with self._receiver.lock:
                        self._receiver.events.append(event)
        return logs_service_pb2.ExportLogsServiceResponse()


def _attributes(pairs: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        result[pair.key] = getattr(pair.value, kind) if kind else None
    return result


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.events: list[ReceivedEvent] = []
        self.lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        service = _TraceService(self)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, self._server)  # type: ignore[no-untyped-call]
        logs = _LogsService(self)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(logs, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, span: ReceivedSpan) -> None:
        with self.lock:
            self.spans.append(span)

    def __enter__(self) -> OtlpReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

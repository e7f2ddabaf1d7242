"""A real OTLP/gRPC trace receiver on 127.0.0.1 in its own process, built on the official
protobuf service definitions (grpcio + opentelemetry-proto's TraceServiceServicer): the same
protocol the OpenTelemetry Collector and Jaeger ingest. It decodes every request and counts
the spans."""

from __future__ import annotations

import threading
from concurrent import futures
from multiprocessing.connection import Connection
from typing import Any

from .child import ChildProcess

__all__ = ["OtlpReceiverProcess"]


class OtlpReceiverProcess(ChildProcess):
    def __init__(self) -> None:
        super().__init__(_serve, "rtguard-bench-otlp", farewell="exit")
        if not self._conn.poll(30):
            raise TimeoutError("the OTLP receiver did not start")
        self.port: int = self._conn.recv()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spans_received(self) -> int:
        self._conn.send("count")
        count: int = self._conn.recv()
        return count


def _serve(conn: Connection) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    lock = threading.Lock()
    received = [0]

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:  # the gRPC method name
            count = sum(
                len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
            )
            with lock:
                received[0] += count
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    try:
        while True:
            command = conn.recv()
            if command == "count":
                with lock:
                    conn.send(received[0])
            elif command == "exit":
                return
    except EOFError:
        return
    finally:
        server.stop(grace=None)

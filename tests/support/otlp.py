"""A span collector for tests: the OTLP trace service over gRPC (what the platform exports)
and over HTTP with protobuf bodies (what Triton exports), both feeding one list."""

import gzip
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class CollectedSpan:
    """One exported span: who sent it, its name and its ids (hex)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str


@dataclass
class Collector:
    """Spans received so far, and where to send them."""

    grpc_endpoint: str = ""
    """`http://127.0.0.1:PORT` for `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`."""
    http_endpoint: str = ""
    """`127.0.0.1:PORT/v1/traces` for Triton's `--trace-config opentelemetry,url=`."""
    spans: list[CollectedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        collected = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "",
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    collected.append(
                        CollectedSpan(
                            service,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                        )
                    )
        with self._lock:
            self.spans.extend(collected)

    def add_json(self, request: dict[str, Any]) -> None:
        """OTLP/HTTP with a JSON body, whose ids are hex strings (OTLP's JSON mapping)."""
        collected = []
        for resource_spans in request.get("resourceSpans", []):
            attributes = resource_spans.get("resource", {}).get("attributes", [])
            service = next(
                (
                    a.get("value", {}).get("stringValue", "")
                    for a in attributes
                    if a.get("key") == "service.name"
                ),
                "",
            )
            for scope in resource_spans.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    collected.append(
                        CollectedSpan(
                            service,
                            span.get("name", ""),
                            span.get("traceId", "").lower(),
                            span.get("spanId", "").lower(),
                            span.get("parentSpanId", "").lower(),
                        )
                    )
        with self._lock:
            self.spans.extend(collected)

    def of_trace(self, trace_id: str) -> list[CollectedSpan]:
        """The spans of one trace received so far."""
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._collector.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def otlp_collector() -> Iterator[Collector]:
    """A running collector on free loopback ports."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _TraceService(collector), server
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if "json" in (self.headers.get("Content-Type") or ""):
                collector.add_json(json.loads(body))
            else:
                collector.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            return

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    collector.grpc_endpoint = f"http://127.0.0.1:{grpc_port}"
    collector.http_endpoint = f"127.0.0.1:{http.server_address[1]}/v1/traces"
    try:
        yield collector
    finally:
        http.shutdown()
        http.server_close()
        server.stop(0)

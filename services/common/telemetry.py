"""Tracing setup: one SDK `TracerProvider` per process, exporting over OTLP when asked to.

The standard OpenTelemetry variables decide: `OTEL_TRACES_EXPORTER=otlp`, or an
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, turns on a batching OTLP
gRPC exporter, and every span is recorded (parent-based: a caller's unsampled trace stays
unsampled). `OTEL_TRACES_EXPORTER=none` turns export off whatever else is set.

Without an exporter nothing would read a recorded span, so none is recorded: every span still
has its trace and span ids (the request log, the `start` message and Triton's `traceparent`
carry them, and logs correlate by them), but no attributes, events or timings are kept. Recording
a span costs tens of microseconds; a request crosses half a dozen.
"""

import logging
import os
from collections.abc import Mapping

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_ON


def configure_tracing(service_name: str, *, env: Mapping[str, str] | None = None) -> TracerProvider:
    """Returns a new provider for `service_name`; it is not installed as the global one.

    Pass it to `default_interceptors` and `create_channel`; call its `shutdown()` at exit to
    flush. `env` defaults to the process environment.
    """
    env = os.environ if env is None else env
    exporting = otlp_export_requested(env)
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}),
        sampler=DEFAULT_ON if exporting else ALWAYS_OFF,
    )
    if exporting:
        # Imported only when used: the exporter pulls in its own gRPC channel machinery.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter,
        )

        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def configure_event_logging(
    service_name: str, *, env: Mapping[str, str] | None = None
) -> LoggerProvider:
    """Returns a new logs provider for OpenTelemetry events (e.g. `gen_ai.evaluation.result`),
    exporting them over OTLP gRPC when the `OTEL_*` variables ask for logs or for OTLP export
    in general (`OTEL_LOGS_EXPORTER=otlp`, `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`, or
    `OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise events are created and dropped, which costs
    little. `OTEL_LOGS_EXPORTER=none` turns export off."""
    env = os.environ if env is None else env
    provider = LoggerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    exporters = {
        name.strip().lower()
        for name in env.get("OTEL_LOGS_EXPORTER", "").split(",")
        if name.strip()
    }
    endpoint = env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if "none" not in exporters and ("otlp" in exporters or endpoint):
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        provider.add_log_record_processor(
            BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint))
        )
    return provider


def otlp_export_requested(env: Mapping[str, str]) -> bool:
    """True when the `OTEL_*` variables in `env` ask for spans to be exported over OTLP."""
    exporters = {
        name.strip().lower()
        for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    }
    if "none" in exporters:
        return False
    if "otlp" in exporters:
        return True
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class CrossContextDetach(logging.Filter):
    """Drops OpenTelemetry's "Failed to detach context" error when its cause is a token reset in
    another context (ValueError "... was created in a different Context").

    A server-streaming RPC whose client goes away while a response is being written leaves its
    handler's async generators suspended at a `yield`; grpc.aio drops them, and asyncio closes
    them later from a task of its own. The tracing interceptor's `with` blocks then end their span
    as usual, but cannot reset the context variable they set in the RPC's task, which is gone
    already: nothing is left to clean up, yet the SDK logs a traceback each time, for every
    cancelled stream. Any other failure to detach is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != "Failed to detach context" or not record.exc_info:
            return True
        error = record.exc_info[1]
        return not (isinstance(error, ValueError) and "different Context" in str(error))


def quiet_cross_context_detach() -> None:
    """Installs `CrossContextDetach` on OpenTelemetry's context logger (once)."""
    logger = logging.getLogger("opentelemetry.context")
    if not any(isinstance(f, CrossContextDetach) for f in logger.filters):
        logger.addFilter(CrossContextDetach())

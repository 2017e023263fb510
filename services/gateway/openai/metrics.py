"""Prometheus metrics of the OpenAI-compatible HTTP API. What a completion did (tokens, cost,
time to first token) is counted by the gateway's own metrics, as for gRPC; these say what
the HTTP layer answered."""

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.gateway.metrics import OPERATION_DURATION_BUCKETS

SLOW_CLIENT: Final = "slow_client"
"""A stream aborted because the client did not read: a send waited past its timeout."""
CLIENT_GONE: Final = "client_disconnect"
"""A response abandoned because the client disconnected."""
STREAM_ERROR: Final = "error"
"""A stream that failed after its headers went out (ended with an error event)."""


class HttpMetrics:
    """`genai_http_responses_total{route,status}`, `genai_http_request_duration_seconds{route}`
    and `genai_http_stream_aborts_total{reason}`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.responses = Counter(
            "genai_http_responses",
            "HTTP responses of the OpenAI-compatible API, by route template and status code "
            "(the status line sent; a stream that failed later counts under its 200).",
            ("route", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "genai_http_request_duration_seconds",
            "Time from an HTTP request's arrival to the end of its response.",
            ("route",),
            buckets=OPERATION_DURATION_BUCKETS,
            registry=registry,
        )
        self.stream_aborts = Counter(
            "genai_http_stream_aborts",
            "HTTP responses cut short: `slow_client` (a send waited past the send timeout), "
            "`client_disconnect` (the client went away), `error` (a stream that failed after "
            "its headers, ended with an error event).",
            ("reason",),
            registry=registry,
        )

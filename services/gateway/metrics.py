"""The gateway's Prometheus metrics: the OpenTelemetry GenAI client metrics, with the bucket
boundaries the semantic conventions recommend, plus cost, quota and request counters.

Names follow the conventions with dots as underscores and the unit as suffix
(`gen_ai.client.operation.duration` -> `gen_ai_client_operation_duration_seconds`).
"""

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OPERATION_DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_USAGE_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
TIME_TO_FIRST_CHUNK_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
TIME_PER_OUTPUT_CHUNK_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip

_OPERATION: Final = ("gen_ai_operation_name", "gen_ai_request_model", "error_type")
_MODEL: Final = ("gen_ai_operation_name", "gen_ai_request_model")


class GatewayMetrics:
    """Every gateway metric, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration, from the gateway receiving the request to its end.",
            _OPERATION,
            buckets=OPERATION_DURATION_BUCKETS,
            registry=registry,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per request, by type (input or output).",
            (*_MODEL, "gen_ai_token_type"),
            buckets=TOKEN_USAGE_BUCKETS,
            registry=registry,
        )
        self.usage_tokens = Counter(
            "genai_gateway_usage_tokens",
            "Tokens accounted, by type and by who counted them: `provider` (the backend's own "
            "count), `tokenizer` (InferenceService, with the model's tokenizer, for a provider "
            "that sent no usage) or `estimate` (its conservative estimate, without one).",
            ("gen_ai_request_model", "gen_ai_token_type", "usage_source"),
            registry=registry,
        )
        self.time_to_first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from the gateway receiving the request to the first output chunk sent.",
            _MODEL,
            buckets=TIME_TO_FIRST_CHUNK_BUCKETS,
            registry=registry,
        )
        self.time_per_output_chunk = Histogram(
            "gen_ai_client_operation_time_per_output_chunk_seconds",
            "Time between output chunks after the first one.",
            _MODEL,
            buckets=TIME_PER_OUTPUT_CHUNK_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "genai_gateway_in_flight",
            "Completions being served now (streamed or not), by method: what the gateway's "
            "autoscaler scales on (sum over replicas / target per replica).",
            ("method",),
            registry=registry,
        )
        self.cost = Counter(
            "genai_gateway_cost",
            "Cost of completed requests at catalog prices, in units of the catalog currency.",
            ("tenant", "gen_ai_request_model"),
            registry=registry,
        )
        self.requests = Counter(
            "genai_gateway_requests",
            "Gateway completions by final status code.",
            ("tenant", "method", "code"),
            registry=registry,
        )
        self.quota_rejections = Counter(
            "genai_gateway_quota_rejections",
            "Completions refused because a tenant quota was exhausted.",
            ("tenant",),
            registry=registry,
        )
        self.settled_tokens = Counter(
            "genai_gateway_quota_settled_tokens",
            "Tokens (input plus output) booked against tenants' quotas after settlement.",
            ("tenant",),
            registry=registry,
        )
        self.log_unconfirmed = Counter(
            "genai_gateway_request_log_unconfirmed",
            "Completions that ended before their request-log record was confirmed stored (the "
            "request log's store was slow or down; the record is still written).",
            registry=registry,
        )
        self.idempotent_replays = Counter(
            "genai_gateway_idempotent_replays",
            "Completions answered with the stored outcome of an earlier request with the same "
            "request_id (nothing generated, charged or logged).",
            ("tenant", "method"),
            registry=registry,
        )
        self.idempotent_in_progress = Counter(
            "genai_gateway_idempotent_in_progress",
            "Completions refused with ABORTED (REQUEST_IN_PROGRESS) because a request with "
            "the same request_id was still running.",
            ("tenant", "method"),
            registry=registry,
        )
        self.idempotent_unstored = Counter(
            "genai_gateway_idempotent_unstored",
            "Successful completions whose outcome could not be stored for retries (the store "
            "failed, or the claim lapsed); a retry of one runs again.",
            registry=registry,
        )
        self.output_schema_checks = Counter(
            "genai_gateway_output_schema_checks",
            "Outputs checked against their prompt version's output schema, by whether the "
            "first generation decoded under the schema (constrained: true or false) and the "
            "result: valid (at the first try), repaired (valid after the one repair) or invalid "
            "(the request failed with OUTPUT_SCHEMA_VIOLATION).",
            ("gen_ai_request_model", "constrained", "result"),
            registry=registry,
        )
        self.failovers = Counter(
            "genai_gateway_failovers",
            "Attempts that failed before the first token and moved to the next candidate.",
            ("gen_ai_request_model",),
            registry=registry,
        )

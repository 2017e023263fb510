"""Typed settings of GatewayService."""

from typing import Literal

from pydantic import Field

from services.common.config import Settings
from services.common.sql import database_url


class DependencyTargets(Settings):
    """Where the gateway reaches each service it calls. Empty means this very process (the
    embedded default, where every service shares one server)."""

    prompt: str = Field(
        default="",
        description="Target of PromptService: host:port, a list of IP:port, or dns:///name:port.",
    )
    experiment: str = Field(
        default="",
        description="Target of ExperimentService: host:port, a list of IP:port, or dns:///name:port.",
    )
    evaluation: str = Field(
        default="",
        description="Target of EvaluationService: host:port, a list of IP:port, or dns:///name:port.",
    )
    router: str = Field(
        default="",
        description="Target of RouterService: host:port, a list of IP:port, or dns:///name:port.",
    )
    inference: str = Field(
        default="",
        description="Target of InferenceService: host:port, a list of IP:port, or dns:///name:port.",
    )


class QuotaSettings(Settings):
    """Where per-tenant usage is counted."""

    backend: Literal["memory", "redis"] = Field(
        default="memory",
        description="memory: counted in this process (one gateway replica); redis: shared by "
        "every replica through `redis_url`.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis URL for the redis backend."
    )
    key_prefix: str = Field(
        default="genai:quota:", description="Prefix of the Redis keys the quotas use."
    )
    lease_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="redis backend: a replica that stops refreshing its lease for this long "
        "is taken for dead, and another replica settles its unsettled reservations at the "
        "tokens it last reported.",
    )
    report_seconds: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="redis backend: how often a replica reports the tokens its in-flight "
        "requests have used so far (what a dead replica's reservations are settled at).",
    )
    tenant_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long a tenant's limits are used without reading them again; a quota "
        "change takes effect within this time.",
    )


class RequestLogSettings(Settings):
    """The durable log of every gateway request."""

    enabled: bool = Field(default=True, description="Log every request.")
    content: Literal["redacted", "full", "metadata"] = Field(
        default="redacted",
        description="What is kept of inputs and outputs: redacted (e-mail addresses, phone "
        "and card numbers replaced, on top of the version's own redaction), full, or metadata "
        "only (no input or output text).",
    )
    queue_capacity: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Records waiting to be written; more are dropped (and counted), never "
        "waited for.",
    )
    max_batch: int = Field(default=256, ge=1, le=10_000, description="Records per write.")
    max_delay_seconds: float = Field(
        default=0.05, gt=0, le=60, description="Longest a record waits for its batch."
    )
    confirm_before_final: bool = Field(
        default=True,
        description="Store each request's record (group-committed with others, without "
        "waiting for its batch) before settling its quota and sending its final or error, so "
        "that every request a caller saw end is in the log, and the quota agrees with it, "
        "even if the process dies right after; false: records are written in the background "
        "only (lower latency at the end of a stream, records lost with a killed process).",
    )
    confirm_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Longest a request waits for its record; past it the request ends anyway "
        "and genai_gateway_request_log_unconfirmed_total counts it (the record is still "
        "written).",
    )


class OnlineEvaluationSettings(Settings):
    """Scoring a share of live traffic and watching for quality drops."""

    share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of completions scored, chosen by a consistent hash of the trace id "
        "(the same on every replica); 0 turns online evaluation off. User feedback is always "
        "scored.",
    )
    warmup_scores: int = Field(
        default=500,
        ge=25,
        le=1_000_000,
        description="Scores of a prompt version taken as its baseline before drift detection "
        "starts (one-sided CUSUM on batches of 25 scores).",
    )


class IdempotencySettings(Settings):
    """Retries by `request_id` (Complete, StreamComplete): claims and outcomes in the gateway's
    database, shared by every replica."""

    enabled: bool = Field(
        default=True,
        description="Honour request_id: a retry within the retention returns the first "
        "outcome instead of generating (and charging, and logging) again; false: every "
        "request runs.",
    )
    retention_seconds: float = Field(
        default=86_400.0,
        ge=60,
        le=30 * 86_400,
        description="How long a successful outcome is kept for retries with its request_id.",
    )
    lease_seconds: float = Field(
        default=15.0,
        ge=1,
        le=600,
        description="A running request's claim lapses this long after its replica stopped "
        "renewing it (a killed process), and a retry may then run the request again.",
    )
    sweep_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="How often each replica deletes expired outcomes and lapsed claims.",
    )


class ConsoleSettings(Settings):
    """The web console (`/console` on the HTTP server)."""

    enabled: bool = Field(
        default=True, description="Serve the web console under /console on the HTTP port."
    )
    session_hours: float = Field(
        default=8.0,
        gt=0,
        le=720,
        description="How long a console session lasts after signing in (the cookie's expiry).",
    )
    session_secret: str = Field(
        default="",
        description="Secret the session cookies are sealed with (at least 16 bytes); every "
        "replica must share it. Empty: derived from auth.internal_token (which replicas "
        "share), or random per process under auth `none`.",
    )


class GatewaySettings(Settings):
    """Settings of GatewayService."""

    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of tenants, API keys, the request log and idempotent "
        "requests' outcomes: "
        "sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host:5432/db; empty: SQLite "
        "in $XDG_DATA_HOME/genai-platform/gateway.db.",
    )
    database_schema: str = Field(
        default="", description="PostgreSQL schema (search path) of the gateway's tables."
    )
    quota: QuotaSettings = Field(default_factory=QuotaSettings, description="Tenant quotas.")
    request_log: RequestLogSettings = Field(
        default_factory=RequestLogSettings, description="The request log."
    )
    idempotency: IdempotencySettings = Field(
        default_factory=IdempotencySettings, description="Idempotent retries by request_id."
    )
    in_process_calls: bool = Field(
        default=True,
        description="Call RouterService and InferenceService directly when this process hosts "
        "them (no address in `targets`), skipping the loopback gRPC hop; false: always over "
        "gRPC.",
    )
    online_evaluation: OnlineEvaluationSettings = Field(
        default_factory=OnlineEvaluationSettings, description="Online evaluation."
    )
    default_max_output_tokens: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Output tokens assumed for routing and quota reservations when neither "
        "the request nor the prompt version sets max_tokens.",
    )

    targets: DependencyTargets = Field(
        default_factory=DependencyTargets, description="Addresses of the services it calls."
    )
    console: ConsoleSettings = Field(
        default_factory=ConsoleSettings, description="The web console."
    )
    health_check_timeout_seconds: float = Field(
        default=1.0, gt=0, le=30, description="Deadline of one dependency health check."
    )

    def resolved_database_url(self) -> str:
        """`database_url`, or SQLite in $XDG_DATA_HOME/genai-platform/gateway.db."""
        return database_url(self.database_url, "gateway.db")

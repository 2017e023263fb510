"""Typed settings of one platform process, read once at start (YAML file, then GENAI_* env)."""

from typing import Any, Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from services.common.config import Settings
from services.common.http import DEFAULT_HTTP_PORT, HttpSettings
from services.evaluation.config import EvaluationSettings
from services.experiment.config import ExperimentSettings
from services.gateway.config import GatewaySettings
from services.inference.config import InferenceSettings
from services.prompt.config import PromptSettings
from services.router.config import RouterSettings

ServiceKey = Literal["prompt", "experiment", "evaluation", "router", "inference", "gateway"]
"""Short name of one service of the platform."""

ALL_SERVICES: tuple[ServiceKey, ...] = (
    "prompt",
    "experiment",
    "evaluation",
    "router",
    "inference",
    "gateway",
)


def _default_http_port(validated: dict[str, Any]) -> int:
    """8080, or 0 (a free port) when `port` is 0: a process set up to pick free ports (a test,
    a benchmark) never collides with another on 8080."""
    return 0 if validated.get("port") == 0 else DEFAULT_HTTP_PORT


class ServerSettings(Settings):
    """Where and how the process serves gRPC, and HTTP beside it."""

    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(
        default=50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one."
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Processes `genai serve` runs, all serving `port` (SO_REUSEPORT) with "
        "every chosen service, under one supervisor that launches Triton once and serves "
        "their merged metrics; about one per core. 1: one process, no supervisor.",
    )
    grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="On shutdown, how long in-flight RPCs (streams included) may finish.",
    )
    metrics_port: int | None = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the Prometheus endpoint (/metrics) on `host`; 0 picks a free "
        "one, null serves none.",
    )
    http_port: int | None = Field(
        default_factory=_default_http_port,
        validate_default=True,
        ge=0,
        le=65535,
        description="Port of the HTTP server (the gateway's OpenAI-compatible API under /v1) on "
        "`host`, with the gRPC server's TLS; 0 picks a free one, null serves none. Default: "
        "8080, or 0 when `port` is 0.",
    )
    http: HttpSettings = Field(
        default_factory=HttpSettings, description="Limits of the HTTP server and its handlers."
    )
    tls_certificate_file: str = Field(
        default="", description="PEM certificate chain; set with tls_private_key_file for TLS."
    )
    tls_private_key_file: str = Field(default="", description="PEM private key of the certificate.")
    tls_client_ca_file: str = Field(
        default="", description="PEM CA that client certificates must chain to (mutual TLS)."
    )
    tls_terminated_upstream: bool = Field(
        default=False,
        description="TLS ends in front of this server (a load balancer, an ingress, a service "
        "mesh sidecar), so it may listen without TLS on a non-loopback address while API keys "
        "are on; logged at start. Without it, such a start is refused: keys would cross the "
        "network in plaintext.",
    )

    @field_validator("http_port", mode="before")
    @classmethod
    def _null_turns_http_off(cls, value: object) -> object:
        # GENAI_SERVER__HTTP_PORT=null: the environment's way to say null
        return None if isinstance(value, str) and value.strip().lower() == "null" else value

    @field_validator("http_port")
    @classmethod
    def _http_port_is_its_own(cls, value: int | None, info: ValidationInfo) -> int | None:
        for name in ("port", "metrics_port"):  # validated before http_port
            if value and info.data.get(name) == value:
                raise ValueError(f"{value} is also server.{name}: give each its own port")
        return value

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> Self:
        if bool(self.tls_certificate_file) != bool(self.tls_private_key_file):
            raise ValueError("TLS needs both tls_certificate_file and tls_private_key_file")
        if self.tls_client_ca_file and not self.tls_certificate_file:
            raise ValueError("tls_client_ca_file (mutual TLS) needs server TLS configured")
        return self


class ClientSettings(Settings):
    """How this process dials the other services (also the ones it hosts itself)."""

    tls: bool = Field(default=False, description="Dial the other services over TLS.")
    tls_ca_file: str = Field(
        default="", description="PEM CA that verifies their certificates; empty: system roots."
    )
    tls_certificate_file: str = Field(
        default="", description="PEM client certificate, for services that require mutual TLS."
    )
    tls_private_key_file: str = Field(
        default="", description="PEM private key of the client certificate."
    )
    tls_server_name: str = Field(
        default="",
        description="Name the services' certificates are checked against when a target lists "
        "IP addresses (empty: the target's own host name).",
    )

    @model_validator(mode="after")
    def _tls_settings_are_consistent(self) -> Self:
        if bool(self.tls_certificate_file) != bool(self.tls_private_key_file):
            raise ValueError("a client certificate needs both its file and its private key")
        if not self.tls and (self.tls_ca_file or self.tls_certificate_file or self.tls_server_name):
            raise ValueError("TLS settings are set but clients.tls is false")
        return self


class AuthSettings(Settings):
    """How callers prove who they are (see `services.platform.auth`)."""

    mode: Literal["api_key", "none"] = Field(
        default="api_key",
        description="api_key: callers send `authorization: Bearer <key>` and the key's tenant "
        "scopes every call; none: every call is the anonymous caller of the `default` tenant "
        "(single-user development only).",
    )
    internal_token: str = Field(
        default="",
        description="Shared secret the platform's services present when they call each "
        "other on a tenant's behalf. Empty: a random one per process, which suffices when "
        "every service runs in one process; split deployments set the same value everywhere.",
    )
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long a verified key is trusted without a database read: the bound "
        "on a revocation's delay should every push and poll of the tenant feed fail.",
    )
    development_key: bool = Field(
        default=True,
        description="With api_key: `genai serve` makes sure the `default` tenant has a "
        "platform-admin key saved in $XDG_DATA_HOME/genai-platform/dev-api-key, creating one "
        "when the saved one is missing (a single machine's first start). Turn it off where "
        "replicas come and go (Kubernetes): each fresh replica would create a key; the first "
        "key there comes from `genai migrate --bootstrap-admin-key`.",
    )
    change_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="How often each process reads the tenant feed (API-key revocations, quota "
        "changes) when nothing pushed it: on PostgreSQL NOTIFY pushes changes at once and this "
        "is a fallback; on SQLite it bounds how late other processes see them.",
    )


class PlatformSettings(Settings):
    """Settings of one platform process."""

    services: tuple[ServiceKey, ...] = Field(
        default=ALL_SERVICES, description="Services this process hosts; all of them by default."
    )
    server: ServerSettings = Field(default_factory=ServerSettings, description="The gRPC server.")
    clients: ClientSettings = Field(
        default_factory=ClientSettings,
        description="Channels to the other services. With server TLS, the embedded services "
        "reach each other over TLS too, so set clients.tls and clients.tls_ca_file.",
    )
    auth: AuthSettings = Field(
        default_factory=AuthSettings, description="How callers authenticate."
    )
    prompt: PromptSettings = Field(
        default_factory=PromptSettings, description="PromptService, when hosted."
    )
    router: RouterSettings = Field(
        default_factory=RouterSettings, description="RouterService, when hosted."
    )
    experiment: ExperimentSettings = Field(
        default_factory=ExperimentSettings, description="ExperimentService, when hosted."
    )
    evaluation: EvaluationSettings = Field(
        default_factory=EvaluationSettings,
        description="EvaluationService, when hosted (and where the gateway's online "
        "evaluation records quality alerts).",
    )
    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings, description="GatewayService, when hosted."
    )
    inference: InferenceSettings = Field(
        default_factory=InferenceSettings,
        description="InferenceService, when hosted, and the Triton server it launches.",
    )

    @field_validator("services")
    @classmethod
    def _distinct_and_not_empty(cls, value: tuple[ServiceKey, ...]) -> tuple[ServiceKey, ...]:
        if not value:
            raise ValueError("at least one service must be hosted")
        if len(set(value)) != len(value):
            raise ValueError("a service is listed twice")
        return value

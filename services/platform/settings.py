"""Typed settings of one platform process, read once at start (YAML file, then GENAI_* env)."""

from typing import Literal

from pydantic import Field, field_validator

from services.common.config import Settings
from services.gateway.config import GatewaySettings

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


class ServerSettings(Settings):
    """Where and how the process serves gRPC."""

    host: str = Field(default="127.0.0.1", description="Interface to listen on.")
    port: int = Field(
        default=50051, ge=0, le=65535, description="Port to listen on; 0 picks a free one."
    )
    grace_seconds: float = Field(
        default=10.0,
        ge=0,
        le=300,
        description="On shutdown, how long in-flight RPCs (streams included) may finish.",
    )
    tls_certificate_file: str = Field(
        default="", description="PEM certificate chain; set with tls_private_key_file for TLS."
    )
    tls_private_key_file: str = Field(default="", description="PEM private key of the certificate.")
    tls_client_ca_file: str = Field(
        default="", description="PEM CA that client certificates must chain to (mutual TLS)."
    )


class PlatformSettings(Settings):
    """Settings of one platform process."""

    services: tuple[ServiceKey, ...] = Field(
        default=ALL_SERVICES, description="Services this process hosts; all of them by default."
    )
    server: ServerSettings = Field(default_factory=ServerSettings, description="The gRPC server.")
    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings, description="GatewayService, when hosted."
    )

    @field_validator("services")
    @classmethod
    def _distinct_and_not_empty(cls, value: tuple[ServiceKey, ...]) -> tuple[ServiceKey, ...]:
        if not value:
            raise ValueError("at least one service must be hosted")
        if len(set(value)) != len(value):
            raise ValueError("a service is listed twice")
        return value

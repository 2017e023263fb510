"""Typed settings of GatewayService."""

from pydantic import Field

from services.common.config import Settings


class DependencyTargets(Settings):
    """Where the gateway reaches each service it calls. Empty means this very process (the
    embedded default, where every service shares one server)."""

    prompt: str = Field(default="", description="host:port of PromptService.")
    experiment: str = Field(default="", description="host:port of ExperimentService.")
    evaluation: str = Field(default="", description="host:port of EvaluationService.")
    router: str = Field(default="", description="host:port of RouterService.")
    inference: str = Field(default="", description="host:port of InferenceService.")


class GatewaySettings(Settings):
    """Settings of GatewayService."""

    targets: DependencyTargets = Field(
        default_factory=DependencyTargets, description="Addresses of the services it calls."
    )
    health_check_timeout_seconds: float = Field(
        default=1.0, gt=0, le=30, description="Deadline of one dependency health check."
    )

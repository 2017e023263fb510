"""Composition root of GatewayService: settings -> adapters -> core -> servicer."""

from collections.abc import Callable, Sequence

import grpc
from genai.gateway.v1 import gateway_service_pb2_grpc

from services.common.contract import contract_digest
from services.common.server import ServiceRegistration
from services.gateway.adapters.health_probe import GrpcHealthProbe
from services.gateway.config import GatewaySettings
from services.gateway.core.server_info import ServerInfoReporter
from services.gateway.servicer import SERVICE_NAME, GatewayServicer

DEPENDENCIES = {
    "genai.prompt.v1.PromptService": "prompt",
    "genai.experiment.v1.ExperimentService": "experiment",
    "genai.evaluation.v1.EvaluationService": "evaluation",
    "genai.router.v1.RouterService": "router",
    "genai.inference.v1.InferenceService": "inference",
}
"""The services the gateway calls, by full name, with their field in `DependencyTargets`."""


def registration(
    *,
    settings: GatewaySettings,
    version: str,
    hosted_services: Sequence[str],
    local_target: Callable[[], str],
    channel_for: Callable[[str], grpc.aio.Channel],
) -> ServiceRegistration:
    """Returns GatewayService ready to be added to a server.

    A dependency with no configured address is reached at `local_target()` when this process
    hosts it (the embedded default), and is unreachable otherwise.
    """
    hosted = frozenset(hosted_services)

    def target_for(service: str) -> str:
        configured: str = getattr(settings.targets, DEPENDENCIES[service])
        if configured:
            return configured
        return local_target() if service in hosted else ""

    reporter = ServerInfoReporter(
        version=version,
        contract_digest=contract_digest(),
        hosted_services=hosted_services,
        dependencies=list(DEPENDENCIES),
        probe=GrpcHealthProbe(
            target_for=target_for,
            channel_for=channel_for,
            timeout=settings.health_check_timeout_seconds,
        ),
    )
    # The RPCs still pending are installed by @pending_rpcs at import time, which mypy cannot
    # see; the ignore becomes unused (an error) once every RPC is implemented.
    servicer = GatewayServicer(server_info=reporter)  # type: ignore[abstract]
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
            servicer, server
        ),
    )

"""Composition root of EvaluationService: wires its adapters and servicer into a registration."""

from genai.evaluation.v1 import evaluation_service_pb2_grpc

from services.common.server import ServiceRegistration
from services.evaluation.servicer import SERVICE_NAME, EvaluationServicer


def registration() -> ServiceRegistration:
    """Returns EvaluationService ready to be added to a server."""
    # The RPCs still pending are installed by @pending_rpcs at import time, which mypy cannot
    # see; the ignore becomes unused (an error) once every RPC is implemented.
    servicer = EvaluationServicer()  # type: ignore[abstract]
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            evaluation_service_pb2_grpc.add_EvaluationServiceServicer_to_server(servicer, server)
        ),
    )

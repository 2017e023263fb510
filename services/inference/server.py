"""Composition root of InferenceService: wires its adapters and servicer into a registration."""

from genai.inference.v1 import inference_service_pb2_grpc

from services.common.server import ServiceRegistration
from services.inference.servicer import SERVICE_NAME, InferenceServicer


def registration() -> ServiceRegistration:
    """Returns InferenceService ready to be added to a server."""
    # The RPCs still pending are installed by @pending_rpcs at import time, which mypy cannot
    # see; the ignore becomes unused (an error) once every RPC is implemented.
    servicer = InferenceServicer()  # type: ignore[abstract]
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        ),
    )

"""Composition root of InferenceService: wires its adapters and servicer into a registration."""

from genai.inference.v1 import inference_service_pb2_grpc

from services.common.server import ServiceRegistration
from services.inference.servicer import SERVICE_NAME, InferenceServicer


def registration() -> ServiceRegistration:
    """Returns InferenceService ready to be added to a server."""
    servicer = InferenceServicer()
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        ),
    )

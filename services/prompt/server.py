"""Composition root of PromptService: wires its adapters and servicer into a registration."""

from genai.prompt.v1 import prompt_service_pb2_grpc

from services.common.server import ServiceRegistration
from services.prompt.servicer import SERVICE_NAME, PromptServicer


def registration() -> ServiceRegistration:
    """Returns PromptService ready to be added to a server."""
    # The RPCs still pending are installed by @pending_rpcs at import time, which mypy cannot
    # see; the ignore becomes unused (an error) once every RPC is implemented.
    servicer = PromptServicer()  # type: ignore[abstract]
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: prompt_service_pb2_grpc.add_PromptServiceServicer_to_server(
            servicer, server
        ),
    )

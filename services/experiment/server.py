"""Composition root of ExperimentService: wires its adapters and servicer into a registration."""

from genai.experiment.v1 import experiment_service_pb2_grpc

from services.common.server import ServiceRegistration
from services.experiment.servicer import SERVICE_NAME, ExperimentServicer


def registration() -> ServiceRegistration:
    """Returns ExperimentService ready to be added to a server."""
    # The RPCs still pending are installed by @pending_rpcs at import time, which mypy cannot
    # see; the ignore becomes unused (an error) once every RPC is implemented.
    servicer = ExperimentServicer()  # type: ignore[abstract]
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            experiment_service_pb2_grpc.add_ExperimentServiceServicer_to_server(servicer, server)
        ),
    )

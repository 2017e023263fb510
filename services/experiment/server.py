"""Composition root of ExperimentService: settings -> store -> servicer."""

from genai.experiment.v1 import experiment_service_pb2_grpc

from services.common.server import ServiceRegistration
from services.experiment.adapters.sql_store import SqlExperimentStore
from services.experiment.config import ExperimentSettings
from services.experiment.servicer import SERVICE_NAME, ExperimentServicer


def registration(*, settings: ExperimentSettings) -> ServiceRegistration:
    """Returns ExperimentService ready to be added to a server; its store is migrated before
    the server serves and closed after it stops."""
    store = SqlExperimentStore.from_url(
        settings.resolved_database_url(), schema=settings.database_schema or None
    )
    servicer = ExperimentServicer(store)

    async def migrate() -> None:
        await store.migrate()

    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            experiment_service_pb2_grpc.add_ExperimentServiceServicer_to_server(servicer, server)
        ),
        start=migrate,
        stop=store.close,
        servicer=servicer,
    )

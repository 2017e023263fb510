"""Composition root of PromptService: settings -> SQL store -> registry -> servicer."""

from genai.prompt.v1 import prompt_service_pb2_grpc

from services.common.server import ServiceRegistration
from services.prompt.adapters.sql_store import SqlPromptStore
from services.prompt.config import PromptSettings
from services.prompt.core.registry import EvaluationGate, PromptRegistry
from services.prompt.servicer import SERVICE_NAME, PromptServicer


def registration(
    *, settings: PromptSettings, gate: EvaluationGate | None = None
) -> ServiceRegistration:
    """Returns PromptService ready to be added to a server; its start hook brings the database
    schema up to date, its stop hook closes the connections. `gate` checks evaluation reports
    before protected labels move (None: protected labels cannot move)."""
    store = SqlPromptStore.from_url(
        settings.resolved_database_url(), schema=settings.database_schema or None
    )
    servicer = PromptServicer(
        PromptRegistry(store, poll_seconds=settings.watch_poll_seconds, gate=gate)
    )

    async def start() -> None:
        await store.migrate()

    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: prompt_service_pb2_grpc.add_PromptServiceServicer_to_server(
            servicer, server
        ),
        start=start,
        stop=store.close,
    )

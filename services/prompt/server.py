"""Composition root of PromptService: settings -> SQL store -> registry -> servicer."""

from genai.prompt.v1 import prompt_service_pb2_grpc

from services.common.feeds import PushedWakeup
from services.common.server import ServiceRegistration
from services.prompt.adapters.sql_store import (
    LABEL_EVENTS_CHANNEL,
    SqlPromptStore,
    label_event_payload,
)
from services.prompt.config import PromptSettings
from services.prompt.core.registry import EvaluationGate, PromptRegistry
from services.prompt.servicer import PromptServicer
from services.prompt.wire import SERVICE_NAME


def registration(
    *, settings: PromptSettings, gate: EvaluationGate | None = None
) -> ServiceRegistration:
    """Returns PromptService ready to be added to a server; its start hook brings the database
    schema up to date, its stop hook closes the connections. `gate` checks evaluation reports
    before protected labels move (None: protected labels cannot move).

    On PostgreSQL, label moves committed by any replica wake this one's watchers through
    LISTEN/NOTIFY; polling every `watch_poll_seconds` remains the fallback while that
    connection is down (and the only way on SQLite, whose moves from other processes are found
    by polling)."""
    url = settings.resolved_database_url()
    store = SqlPromptStore.from_url(url, schema=settings.database_schema or None)
    ours = label_event_payload(store.schema, "")
    push = PushedWakeup(
        url if store.postgres else None,
        LABEL_EVENTS_CHANNEL,
        lambda payload: payload.startswith(ours),
    )
    servicer = PromptServicer(
        PromptRegistry(
            store,
            poll_seconds=settings.watch_poll_seconds,
            gate=gate,
            wakeup=push.wakeup,
            pushed=push.pushed,
        )
    )

    async def start() -> None:
        await store.migrate()
        await push.start()

    async def stop() -> None:
        await push.close()
        await store.close()

    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: prompt_service_pb2_grpc.add_PromptServiceServicer_to_server(
            servicer, server
        ),
        start=start,
        stop=stop,
    )

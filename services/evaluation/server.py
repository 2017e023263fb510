"""Composition root of EvaluationService: settings -> store -> run orchestrator -> servicer."""

from collections.abc import Callable

from genai.evaluation.v1 import evaluation_service_pb2_grpc
from opentelemetry.trace import TracerProvider

from services.common.server import ServiceRegistration
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.evaluation.config import EvaluationSettings
from services.evaluation.core.model import EvaluationReport
from services.evaluation.runs import (
    EvaluationRunner,
    GatewayStub,
    InferenceStub,
    MetadataFor,
    PromptStub,
)
from services.evaluation.servicer import SERVICE_NAME, EvaluationServicer
from services.prompt.client import PromptClient, PromptClients


def registration(
    *,
    settings: EvaluationSettings,
    gateway: Callable[[], GatewayStub],
    inference: Callable[[], InferenceStub],
    prompts: Callable[[str], PromptClient] | None,
    prompt_service: Callable[[], PromptStub] | None = None,
    metadata_for: MetadataFor = lambda _tenant: (),
    tracer_provider: TracerProvider | None = None,
    on_report: Callable[[str, EvaluationReport], None] | None = None,
) -> ServiceRegistration:
    """Returns EvaluationService ready to be added to a server.

    `gateway()` and `inference()` give the stubs evaluation runs call (made lazily, on first
    use: in process, a local stub; otherwise a stub on a channel). `prompts(tenant)` makes a
    (not yet started) `PromptClient` for a tenant, kept and closed here; None leaves runs
    and example checks failing with FAILED_PRECONDITION. `prompt_service()` is only needed to
    check examples of a prompt without a `production` label against its latest version.
    `metadata_for(tenant)` is the credentials of calls made on a tenant's behalf (empty in
    process, where the caller's principal holds). `on_report(tenant, report)` is called when
    a run of this process finishes (the router of the same process refreshes its scores). The
    store is migrated before the server serves; on stop, runs still going are stopped (marked
    failed) and the store closed.
    """
    store = SqlEvaluationStore.from_url(
        settings.resolved_database_url(), schema=settings.database_schema or None
    )
    clients = PromptClients(prompts) if prompts is not None else None
    runner = EvaluationRunner(
        store,
        gateway=gateway,
        inference=inference,
        prompts=clients,
        prompt_service=prompt_service,
        metadata_for=metadata_for,
        max_concurrency=settings.max_concurrency,
        embedding_model=settings.embedding_model,
        call_timeout_s=settings.generation_timeout_seconds,
        batch_size=settings.result_batch_size,
        flush_seconds=settings.result_flush_seconds,
        tracer_provider=tracer_provider,
        lease_seconds=settings.run_lease_seconds,
    )
    if on_report is not None:
        runner.on_report(on_report)
    servicer = EvaluationServicer(store, runner)

    async def start() -> None:
        await store.migrate()
        runner.start_keeping()

    async def stop() -> None:
        try:
            await runner.close()
            if clients is not None:
                await clients.close()
        finally:
            await store.close()

    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: (
            evaluation_service_pb2_grpc.add_EvaluationServiceServicer_to_server(servicer, server)
        ),
        start=start,
        stop=stop,
        servicer=servicer,
    )

"""Composition root of GatewayService: settings -> adapters -> core -> servicer, and the same
core behind the OpenAI-compatible HTTP routes (`GatewayApi`, `services.gateway.openai`)."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from genai.experiment.v1 import experiment_service_pb2, experiment_service_pb2_grpc
from genai.gateway.v1 import gateway_service_pb2_grpc
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from genai.router.v1 import router_service_pb2, router_service_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from services.common.auth import internal_metadata
from services.common.contract import contract_digest
from services.common.local import local_stub
from services.common.server import ServiceRegistration
from services.console import server as console_server
from services.evaluation.core.online import (
    AlertSink,
    DriftDetector,
    OnlineEvaluator,
    OnlineSampler,
)
from services.gateway.accounting import Accounting
from services.gateway.adapters.health_probe import GrpcHealthProbe
from services.gateway.adapters.idempotency_store import SqlIdempotencyStore
from services.gateway.adapters.redis_quota import RedisQuotaLimiter
from services.gateway.adapters.request_log_store import SqlRequestLogStore
from services.gateway.api import GatewayApi
from services.gateway.completion import CompletionEngine
from services.gateway.config import GatewaySettings
from services.gateway.core.idempotency import Idempotency
from services.gateway.core.quota import InMemoryQuotaLimiter, QuotaLimiter, Usage
from services.gateway.core.request_log import BatchWriter
from services.gateway.core.server_info import ServerInfoReporter
from services.gateway.core.tenant_changes import TenantChanges
from services.gateway.core.tenants import TenantStore
from services.gateway.embeddings import EmbeddingEngine
from services.gateway.metrics import GatewayMetrics
from services.gateway.openai.app import openai_routes
from services.gateway.servicer import SERVICE_NAME, GatewayServicer
from services.gateway.tenancy import GuidedDecodingBook, PriceBook, TenantDirectory
from services.prompt.client import PromptClient
from services.router.failover import RoutedGenerator

if TYPE_CHECKING:
    ExperimentStub = experiment_service_pb2_grpc.ExperimentServiceAsyncStub
    RouterStub = router_service_pb2_grpc.RouterServiceAsyncStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceAsyncStub
else:
    ExperimentStub = experiment_service_pb2_grpc.ExperimentServiceStub
    RouterStub = router_service_pb2_grpc.RouterServiceStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceStub

DEPENDENCIES = {
    "genai.prompt.v1.PromptService": "prompt",
    "genai.experiment.v1.ExperimentService": "experiment",
    "genai.evaluation.v1.EvaluationService": "evaluation",
    "genai.router.v1.RouterService": "router",
    "genai.inference.v1.InferenceService": "inference",
}
"""The services the gateway calls, by full name, with their field in `DependencyTargets`."""


@dataclass(frozen=True)
class _Engines:
    """What serves completions, embeddings and the catalog: built once, on first use."""

    router: RouterStub
    completions: CompletionEngine
    embeddings: EmbeddingEngine


def registration(
    *,
    settings: GatewaySettings,
    version: str,
    hosted_services: Sequence[str],
    local_target: Callable[[], str],
    channel_for: Callable[[str], grpc.aio.Channel],
    tenants: TenantStore,
    internal_token: str,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider | None = None,
    local_servicer: Callable[[str], object | None] = lambda _service: None,
    alert_sink: AlertSink | None = None,
    logger_provider: LoggerProvider | None = None,
    tenant_changes: TenantChanges | None = None,
) -> ServiceRegistration:
    """Returns GatewayService ready to be added to a server.

    A dependency with no configured address is reached at `local_target()` when this process
    hosts it (the embedded default), and is unreachable otherwise. `tenants` is the process's
    tenant store (shared with the API-key authenticator); the gateway calls the other services
    on a tenant's behalf with `internal_token`. Metrics go to `registry`. With
    `in_process_calls`, RouterService, InferenceService and ExperimentService hosted in this process (no address
    configured; `local_servicer(name)` returns their servicer) are called directly
    (`services.common.local`) instead of over loopback gRPC. `tenant_changes` tells the
    gateway about quota changes made by any replica (it drops the tenant's cached limits).
    Its HTTP routes (`http_routes`: the OpenAI-compatible API) call the same engines through a
    `GatewayApi`, with their metrics in `registry`.
    """
    hosted = frozenset(hosted_services)

    def target_for(service: str) -> str:
        configured: str = getattr(settings.targets, DEPENDENCIES[service])
        if configured:
            return configured
        return local_target() if service in hosted else ""

    def channel(service: str) -> grpc.aio.Channel:
        target = target_for(service)
        if not target:
            raise RuntimeError(f"no address for {service}: set gateway.targets")
        return channel_for(target)

    def console_channel(service: str) -> grpc.aio.Channel | None:
        # The console calls every service over gRPC with the visitor's own key, so that the
        # services' access interceptors decide (never in process, never with the internal
        # token); the gateway itself is this process.
        if service == "genai.gateway.v1.GatewayService":
            return channel_for(local_target())
        target = target_for(service)
        return channel_for(target) if target else None

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
    log_settings = settings.request_log
    log_store = (
        SqlRequestLogStore.from_url(
            settings.resolved_database_url(), schema=settings.database_schema or None
        )
        if log_settings.enabled
        else None
    )

    async def logged_usage(tenant_id: str, request_id: str) -> Usage | None:
        record = await log_store.get(tenant_id, request_id) if log_store is not None else None
        if record is None:
            return None
        return Usage(1, record.input_tokens + record.output_tokens, record.cost_micros)

    idempotency_settings = settings.idempotency
    idempotency_store = (
        SqlIdempotencyStore.from_url(
            settings.resolved_database_url(), schema=settings.database_schema or None
        )
        if idempotency_settings.enabled
        else None
    )
    idempotency = (
        Idempotency(
            idempotency_store,
            lease_seconds=idempotency_settings.lease_seconds,
            retention_seconds=idempotency_settings.retention_seconds,
            sweep_seconds=idempotency_settings.sweep_seconds,
        )
        if idempotency_store is not None
        else None
    )

    quota: QuotaLimiter
    if settings.quota.backend == "redis":
        quota = RedisQuotaLimiter(
            settings.quota.redis_url,
            key_prefix=settings.quota.key_prefix,
            lease_seconds=settings.quota.lease_seconds,
            report_seconds=settings.quota.report_seconds,
            sweep_seconds=settings.quota.lease_seconds / 2,
            logged_usage=logged_usage,
        )
    else:
        quota = InMemoryQuotaLimiter()
    writer = (
        BatchWriter(
            log_store,
            capacity=log_settings.queue_capacity,
            max_batch=log_settings.max_batch,
            max_delay_seconds=log_settings.max_delay_seconds,
            registry=registry,
        )
        if log_store is not None
        else None
    )

    def prompt_client(tenant_id: str) -> PromptClient:
        return PromptClient(
            channel("genai.prompt.v1.PromptService"),
            metadata=internal_metadata(internal_token, tenant_id),
        )

    directory = TenantDirectory(
        client_for=prompt_client,
        tenant_lookup=tenants.get_tenant,
        cache_seconds=settings.quota.tenant_cache_seconds,
    )
    if tenant_changes is not None:
        tenant_changes.on_quota_changed(directory.forget)
    state: dict[str, _Engines] = {}
    online_settings = settings.online_evaluation
    online = (
        OnlineEvaluator(
            sampler=OnlineSampler(online_settings.share),
            registry=registry,
            detector=DriftDetector(warmup=online_settings.warmup_scores),
            sink=alert_sink,
            logger_provider=logger_provider,
        )
        if online_settings.share > 0
        else None
    )

    def engines() -> _Engines:
        # Channels are made on first use: this server's own address is known only once bound.
        if "engines" not in state:
            router: RouterStub = stub(router_service_pb2, "RouterService", RouterStub)
            inference: InferenceStub = stub(
                inference_service_pb2, "InferenceService", InferenceStub
            )
            experiments: ExperimentStub | None = (
                stub(experiment_service_pb2, "ExperimentService", ExperimentStub)
                if target_for("genai.experiment.v1.ExperimentService")
                else None
            )
            prices = PriceBook(router)
            accounting = Accounting(
                prices=prices,
                quota=quota,
                log=writer,
                log_content=log_settings.content,
                log_confirm_seconds=log_settings.confirm_timeout_seconds
                if log_settings.confirm_before_final
                else None,
                metrics=metrics,
                online=online,
            )
            state["engines"] = _Engines(
                router=router,
                completions=CompletionEngine(
                    generator=RoutedGenerator(router, inference),
                    directory=directory,
                    accounting=accounting,
                    metrics=metrics,
                    default_max_output_tokens=settings.default_max_output_tokens,
                    experiments=experiments,
                    idempotency=idempotency,
                    guided_decoding=GuidedDecodingBook(inference),
                    tracer_provider=tracer_provider,
                ),
                embeddings=EmbeddingEngine(
                    inference=inference,
                    prices=prices,
                    directory=directory,
                    accounting=accounting,
                    metrics=metrics,
                    tracer_provider=tracer_provider,
                ),
            )
        return state["engines"]

    tracer = trace.get_tracer("genai.gateway", tracer_provider=tracer_provider)

    def stub(module: Any, name: str, remote: Callable[[grpc.aio.Channel], Any]) -> Any:
        descriptor = module.DESCRIPTOR.services_by_name[name]
        local = (
            local_servicer(descriptor.full_name)
            if settings.in_process_calls
            and not getattr(settings.targets, DEPENDENCIES[descriptor.full_name])
            else None
        )
        if local is not None:
            return local_stub(local, descriptor, tracer)
        return remote(channel(descriptor.full_name))

    metrics = GatewayMetrics(registry)
    api = GatewayApi(
        engine=lambda: engines().completions,
        embeddings=lambda: engines().embeddings,
        router=lambda: engines().router,
        internal_token=internal_token,
    )
    servicer = GatewayServicer(
        server_info=reporter,
        engine=lambda: engines().completions,
        tenants=tenants,
        directory=directory,
        logs=log_store,
        api=api,
        idempotency=idempotency,
    )

    async def start() -> None:
        await quota.start()
        if log_store is not None:
            await log_store.migrate()
        if idempotency_store is not None and idempotency is not None:
            await idempotency_store.migrate()
            await idempotency.start()
        if writer is not None:
            writer.start()
        if online is not None:
            online.start()

    async def stop() -> None:
        if "engines" in state:
            await state["engines"].completions.drain()
        if writer is not None:
            await writer.aclose()
        if online is not None:
            await online.aclose()
        if logger_provider is not None:
            logger_provider.shutdown()  # flushes the evaluation events still batched
        await directory.close()
        if log_store is not None:
            await log_store.close()
        if idempotency is not None:
            await idempotency.aclose()
        if idempotency_store is not None:
            await idempotency_store.close()
        await quota.aclose()

    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
            servicer, server
        ),
        start=start,
        stop=stop,
        servicer=servicer,
        http_routes=lambda ctx: [
            *openai_routes(api, ctx, registry=registry, tracer_provider=tracer_provider),
            *console_server.routes(
                ctx,
                settings.console,
                internal_token=internal_token,
                version=version,
                channel=console_channel,
            ),
        ],
    )

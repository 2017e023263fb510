"""Starts and stops one platform process: the chosen services on one gRPC server, and their
HTTP routes (the gateway's OpenAI-compatible API) on one HTTP server beside it.

Every server gets the same interceptor chain, health service and reflection. Services reach
each other only through generated stubs over gRPC channels, also when they share the process,
so the same code runs embedded (one process) or split (a process or pod per service).
"""

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import grpc
from genai.evaluation.v1 import evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2_grpc
from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry, start_http_server
from starlette.applications import Starlette

from services.common.auth import AnonymousAuthenticator, Authenticator, internal_metadata
from services.common.clients import (
    ClientTlsConfig,
    InvalidTargetError,
    channel_target,
    create_channel,
)
from services.common.config import ConfigError
from services.common.feeds import PushedWakeup
from services.common.http import HttpContext, HttpServer
from services.common.interceptors import default_interceptors
from services.common.local import local_stub
from services.common.reflection import enable_documented_reflection
from services.common.server import RunningServer, ServiceRegistration, TlsConfig, start_server
from services.common.sql import database_setting
from services.common.telemetry import configure_event_logging, configure_tracing
from services.common.validation import Validators
from services.evaluation import server as evaluation_server
from services.evaluation.adapters.alerts import StoreAlertSink
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.experiment import server as experiment_server
from services.gateway import server as gateway_server
from services.gateway.adapters.tenant_store import TENANT_EVENTS_CHANNEL, SqlTenantStore
from services.gateway.core.auth import ApiKeyAuthenticator
from services.gateway.core.tenant_changes import TenantChanges
from services.inference import server as inference_server
from services.inference.adapters.triton import triton_channel
from services.inference.adapters.tritonserver import TritonServer
from services.platform.auth import PlatformAuthenticator
from services.platform.consistency import catalog_problems
from services.platform.settings import (
    ClientSettings,
    PlatformSettings,
    ServerSettings,
    ServiceKey,
)
from services.prompt import server as prompt_server
from services.prompt.adapters.evaluation_gate import EvaluationReportGate
from services.prompt.client import PromptClient
from services.router import server as router_server
from services.router.adapters.quality import EvaluationScores
from services.router.config import load_catalog

_logger = logging.getLogger(__name__)

SERVICE_NAMES: dict[ServiceKey, str] = {
    "prompt": "genai.prompt.v1.PromptService",
    "experiment": "genai.experiment.v1.ExperimentService",
    "evaluation": "genai.evaluation.v1.EvaluationService",
    "router": "genai.router.v1.RouterService",
    "inference": "genai.inference.v1.InferenceService",
    "gateway": "genai.gateway.v1.GatewayService",
}
"""Full proto name of each service."""
HTTP_SERVICES: frozenset[ServiceKey] = frozenset({"gateway"})
"""The services that register HTTP routes (`ServiceRegistration.http_routes`)."""


def platform_version() -> str:
    """The installed package's version, or a marker when running from an uninstalled tree."""
    try:
        return metadata.version("genai-platform")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


class ChannelPool:
    """One client channel per target, shared by every service of the process; `factory`
    makes each (default: `create_channel`, traced, with the platform's client TLS).

    With `refresh_seconds`, a `dns:` target's channel is replaced by a new one once it is that
    old: gRPC resolves a name again only when a connection breaks, so a channel to a headless
    Service would never reach pods added after it connected (Triton scaled out), and Triton has
    no connection age limit to break connections for it. The old channel closes once its calls
    end (`drain_seconds` at most); callers get the new one from `get`."""

    def __init__(
        self,
        *,
        tls: ClientTlsConfig | None = None,
        factory: Callable[[str], grpc.aio.Channel] | None = None,
        tracer_provider: TracerProvider | None = None,
        refresh_seconds: float | None = None,
        drain_seconds: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory or (
            lambda target: create_channel(target, tls=tls, tracer_provider=tracer_provider)
        )
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._opened: dict[str, float] = {}
        self._refresh_s = refresh_seconds
        self._drain_s = drain_seconds
        self._clock = clock
        self._retiring: set[asyncio.Task[None]] = set()

    def get(self, target: str) -> grpc.aio.Channel:
        """Returns the channel to `target`, creating it on first use (and again once it is
        `refresh_seconds` old, for a `dns:` target)."""
        channel = self._channels.get(target)
        if channel is not None and self._stale(target):
            self._retire(channel)
            channel = None
        if channel is None:
            channel = self._channels[target] = self._factory(target)
            self._opened[target] = self._clock()
        return channel

    def _stale(self, target: str) -> bool:
        return (
            self._refresh_s is not None
            and target.startswith("dns:")
            and self._clock() - self._opened[target] >= self._refresh_s
        )

    def _retire(self, channel: grpc.aio.Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(self._drain_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Closes every channel (retired ones too, at once)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)


TRITON_CHANNEL_REFRESH_S: Final = 60.0
"""How old a channel to a `dns:` Triton target gets before calls move to a new one, which
resolves the name again (Triton pods added by an autoscaler get calls within this)."""


REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
"""Relative paths in the settings (the Triton model repository) start here."""


@dataclass
class Platform:
    """A running platform process."""

    server: RunningServer
    hosted_services: tuple[str, ...]
    channels: ChannelPool
    triton_channels: ChannelPool
    """InferenceService's channels to Triton servers (see `triton_channel`)."""
    triton: TritonServer | None = None
    """The Triton server this process launched, if any."""
    registrations: tuple[ServiceRegistration, ...] = ()
    """The hosted services, whose `stop` hooks run after the server stops."""
    tenants: SqlTenantStore | None = None
    """The tenant and API-key store (auth `api_key`, or a hosted gateway)."""
    tenant_changes: "TenantFeed | None" = None
    """This process's follower of the tenant feed (revocations, quota changes)."""
    internal_token: str = ""
    """The token this process's services present to each other (auth `api_key`)."""
    metrics_registry: CollectorRegistry | None = None
    """Every Prometheus metric of this process."""
    metrics_port: int | None = None
    """Port of the Prometheus endpoint (`/metrics`), when it serves one."""
    alerts: SqlEvaluationStore | None = None
    """The store the gateway's online evaluation writes quality alerts to."""
    http: HttpServer | None = None
    """The HTTP server of the hosted services' routes, when it serves one."""
    _metrics_server: Any = None

    @property
    def address(self) -> str:
        """A `host:port` that clients on this machine can dial."""
        return self.server.address

    @property
    def http_port(self) -> int | None:
        """Port of the HTTP server (the OpenAI-compatible API), when it serves one."""
        return self.http.port if self.http is not None else None

    async def stop(self, grace: float | None = None) -> None:
        """Drains in-flight RPCs and HTTP responses (streams included) within the grace
        period, then stops the services, Triton, and closes client channels."""
        if self.http is None:
            await self.server.stop(grace)
        else:
            await asyncio.gather(self.server.stop(grace), self.http.stop(grace))
        await _stop_services(self.registrations)
        if self.tenant_changes is not None:
            await self.tenant_changes.close()
        if self.tenants is not None:
            await self.tenants.close()
        if self.alerts is not None:
            await self.alerts.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        if self.triton is not None:
            await self.triton.stop()
        await self.channels.close()
        await self.triton_channels.close()


async def _stop_services(registrations: Sequence[ServiceRegistration]) -> None:
    for registration in reversed(registrations):
        if registration.stop is not None:
            try:
                await registration.stop()
            except Exception:  # one failing hook must not keep the others from running
                _logger.exception("stopping %s failed", registration.name)


async def start_platform(
    settings: PlatformSettings,
    *,
    authenticator: Authenticator | None = None,
    local_triton: str | None = None,
    http_reuse_port: bool = False,
) -> Platform:
    """Starts the services `settings` names on one server and returns once it is serving.

    The hosted services' HTTP routes are served on `server.http_port` (none when it is null
    or no service has routes), with SO_REUSEPORT when `http_reuse_port` is set (the workers of
    `genai serve --workers` share the port); a port that cannot be bound is a `ConfigError`.

    When InferenceService is hosted and `inference.triton.launch` is set, Triton is started
    first and the process owns it: it stops with the platform. When RouterService and
    InferenceService are both hosted, their catalogs must agree (`ConfigError` otherwise).
    `local_triton` is the gRPC address of a Triton another process launched for this one (the
    `genai serve --workers` supervisor): backends with an empty endpoint use it. A store that
    cannot start raises a `DatabaseStartError` naming its setting.
    """
    hosted = tuple(SERVICE_NAMES[key] for key in settings.services)
    if "router" in settings.services and "inference" in settings.services:
        problems = catalog_problems(
            load_catalog(router_server.catalog_path(settings.router)), settings.inference, ""
        )
        if problems:
            raise ConfigError(problems)
    tracer_provider = configure_tracing("genai-platform")
    channels = ChannelPool(tls=client_tls(settings.clients), tracer_provider=tracer_provider)
    triton_channels = ChannelPool(factory=triton_channel, refresh_seconds=TRITON_CHANNEL_REFRESH_S)
    _check_targets(settings)
    api_keys = settings.auth.mode == "api_key"
    check_transport(settings)
    if api_keys and not settings.auth.internal_token:
        _check_internal_token(settings)
    internal_token = (settings.auth.internal_token or secrets.token_urlsafe(32)) if api_keys else ""
    tenants: SqlTenantStore | None = None
    tenant_feed: TenantFeed | None = None
    if api_keys or "gateway" in settings.services:
        tenants = SqlTenantStore.from_url(
            settings.gateway.resolved_database_url(),
            schema=settings.gateway.database_schema or None,
        )
        with database_setting("gateway"):
            await tenants.migrate()
        tenant_feed = TenantFeed(
            tenants, settings.gateway.resolved_database_url(), settings.auth.change_poll_seconds
        )
    if authenticator is None and api_keys:
        assert tenants is not None
        assert tenant_feed is not None
        key_authenticator = ApiKeyAuthenticator(
            tenants, cache_ttl=settings.auth.api_key_cache_seconds
        )
        tenant_feed.changes.on_key_revoked(key_authenticator.forget)
        authenticator = PlatformAuthenticator(key_authenticator, internal_token)
    registry = CollectorRegistry(auto_describe=True)
    alerts: SqlEvaluationStore | None = None
    if "gateway" in settings.services and settings.gateway.online_evaluation.share > 0:
        alerts = SqlEvaluationStore.from_url(
            settings.evaluation.resolved_database_url(),
            schema=settings.evaluation.database_schema or None,
        )
        with database_setting("evaluation"):
            await alerts.migrate()
    triton = await launch_triton(settings) if "inference" in settings.services else None
    if triton is not None:
        local_triton = triton.grpc_address
    local: list[str] = []  # this server's own address, known once it is bound

    def local_target() -> str:
        return local[0] if local else ""

    registrations: list[ServiceRegistration] = []
    clients_of = _Clients(channels, triton_channels, tracer_provider)
    authenticator = authenticator or AnonymousAuthenticator()
    server: RunningServer | None = None
    http: HttpServer | None = None

    def local_servicer(service: str) -> object | None:
        return next((r.servicer for r in registrations if r.name == service), None)

    quality_scores = (
        _quality_scores(settings, hosted, local_target, clients_of, internal_token, local_servicer)
        if "router" in settings.services
        else None
    )

    try:
        registrations = [
            _registration(
                key,
                settings,
                hosted,
                local_target,
                clients_of,
                local_triton,
                _Shared(
                    tenants,
                    tenant_feed.changes if tenant_feed is not None else None,
                    internal_token,
                    api_keys,
                    registry,
                    local_servicer,
                    alerts,
                    quality_scores,
                ),
            )
            for key in settings.services
        ]
        for key, registration in zip(settings.services, registrations, strict=True):
            if registration.start is not None:
                with database_setting(key):  # a store's start-up error names its setting
                    await registration.start()
        if tenant_feed is not None:
            await tenant_feed.start()
        server = await start_server(
            bind=f"{_bracket(settings.server.host)}:{settings.server.port}",
            registrations=registrations,
            interceptors=default_interceptors(
                authenticator=authenticator,
                validators=Validators(),
                tracer_provider=tracer_provider,
                audit=tenants,  # the audit log lives beside the tenants and keys
                registry=registry,
            ),
            tls=_tls(settings.server),
            grace=settings.server.grace_seconds,
            reflection=enable_documented_reflection,
        )
        local.append(server.address)
        http = await _start_http(settings, registrations, authenticator, http_reuse_port)
    except BaseException:
        if server is not None:
            await server.stop(0)
        await _stop_services(registrations)
        if tenant_feed is not None:
            await tenant_feed.close()
        if tenants is not None:
            await tenants.close()
        if alerts is not None:
            await alerts.close()
        if triton is not None:
            await triton.stop()
        await channels.close()
        await triton_channels.close()
        raise
    _logger.info("serving %s on %s", ", ".join(hosted), server.address)
    if http is not None:
        _logger.info("serving HTTP on %s", http.url)
    platform = Platform(
        server=server,
        hosted_services=hosted,
        channels=channels,
        triton_channels=triton_channels,
        triton=triton,
        registrations=tuple(registrations),
        tenants=tenants,
        tenant_changes=tenant_feed,
        internal_token=internal_token,
        metrics_registry=registry,
        alerts=alerts,
        http=http,
    )
    if settings.server.metrics_port is not None:
        metrics, _thread = start_http_server(
            settings.server.metrics_port, addr=settings.server.host, registry=registry
        )
        platform._metrics_server = metrics
        platform.metrics_port = metrics.server_address[1]
        _logger.info("Prometheus metrics on port %d", platform.metrics_port)
    return platform


async def _start_http(
    settings: PlatformSettings,
    registrations: Sequence[ServiceRegistration],
    authenticator: Authenticator,
    reuse_port: bool,
) -> HttpServer | None:
    """The HTTP server of every registration's routes, started; None when `server.http_port`
    is null or no hosted service has routes."""
    server = settings.server
    if server.http_port is None:
        return None
    context = HttpContext(
        authenticator,
        server.http,
        secure=bool(server.tls_certificate_file) or server.tls_terminated_upstream,
    )
    routes = [
        route
        for registration in registrations
        if registration.http_routes is not None
        for route in registration.http_routes(context)
    ]
    if not routes:
        return None
    return await HttpServer.start(
        Starlette(routes=routes),
        host=server.host,
        port=server.http_port,
        tls=_tls(server),
        settings=server.http,
        grace=server.grace_seconds,
        reuse_port=reuse_port,
    )


def serves_http(settings: PlatformSettings) -> bool:
    """Whether a process with `settings` serves HTTP: `server.http_port` is set and it hosts a
    service with HTTP routes (`HTTP_SERVICES`)."""
    return settings.server.http_port is not None and bool(HTTP_SERVICES & set(settings.services))


async def launch_triton(settings: PlatformSettings) -> TritonServer | None:
    """The Triton `inference.triton` describes, started, or None unless `launch` is set."""
    launch = settings.inference.triton
    if not launch.launch:
        return None
    repository = REPOSITORY_ROOT / launch.model_repository
    triton = TritonServer()
    _logger.info("starting Triton with %s", repository)
    await triton.start(
        repository,
        models=list(launch.models) or None,
        grpc_port=launch.grpc_port,
        http_port=launch.http_port,
        metrics_port=launch.metrics_port,
        log_file=launch.log_file or None,
        startup_timeout=launch.startup_timeout_seconds,
        extra_args=launch.trace_args(),
    )
    _logger.info("Triton ready: gRPC %s, log %s", triton.grpc_address, triton.log_file)
    return triton


class TenantFeed:
    """This process's follower of the tenant feed, woken by PostgreSQL NOTIFY when the store
    is PostgreSQL (see `services.gateway.core.tenant_changes`)."""

    def __init__(self, store: SqlTenantStore, url: str, poll_seconds: float) -> None:
        schema = store.schema
        self._push = PushedWakeup(
            url if store.postgres else None,
            TENANT_EVENTS_CHANNEL,
            lambda payload: payload == schema,
        )
        self.changes = TenantChanges(
            store, poll_seconds=poll_seconds, wakeup=self._push.wakeup, pushed=self._push.pushed
        )

    async def start(self) -> None:
        """Starts following (and listening)."""
        await self._push.start()
        await self.changes.start()

    async def close(self) -> None:
        """Stops following (and listening)."""
        await self.changes.close()
        await self._push.close()


@dataclass(frozen=True)
class _Shared:
    """Process-wide state some services need: tenants, the internal token, metrics."""

    tenants: SqlTenantStore | None
    tenant_changes: TenantChanges | None
    """Revocations and quota changes, from any replica."""
    internal_token: str
    api_keys: bool
    registry: CollectorRegistry
    local_servicer: Callable[[str], object | None]
    """The servicer of a service this process hosts, by full name (None if not hosted)."""
    alerts: SqlEvaluationStore | None
    """Where the gateway's online evaluation records quality alerts."""
    quality_scores: EvaluationScores | None = None
    """The router's evaluation scores (quality-floor policy), when it can reach them."""


@dataclass(frozen=True)
class _Clients:
    """What services use to call out: platform channels, Triton channels, the tracer."""

    channels: ChannelPool
    triton_channels: ChannelPool
    tracer_provider: TracerProvider


def _registration(
    key: ServiceKey,
    settings: PlatformSettings,
    hosted: tuple[str, ...],
    local_target: Callable[[], str],
    clients: "_Clients",
    local_triton: str | None,
    shared: _Shared,
) -> ServiceRegistration:
    match key:
        case "prompt":
            return prompt_server.registration(
                settings=settings.prompt, gate=_evaluation_gate(settings, clients, shared)
            )
        case "experiment":
            return experiment_server.registration(settings=settings.experiment)
        case "evaluation":
            return _evaluation(settings, hosted, local_target, clients, shared)
        case "router":
            return router_server.registration(
                settings=settings.router,
                local_triton=local_triton or "",
                channel_for=clients.triton_channels.get,
                scores=shared.quality_scores,
            )
        case "inference":
            return inference_server.registration(
                settings=settings.inference,
                local_triton=local_triton,
                channel_for=clients.triton_channels.get,
                tracer_provider=clients.tracer_provider,
            )
        case "gateway":
            return gateway_server.registration(
                settings=settings.gateway,
                version=platform_version(),
                hosted_services=hosted,
                local_target=local_target,
                channel_for=clients.channels.get,
                tenants=_required(shared.tenants),
                tenant_changes=shared.tenant_changes,
                internal_token=shared.internal_token,
                registry=shared.registry,
                tracer_provider=clients.tracer_provider,
                local_servicer=shared.local_servicer,
                alert_sink=StoreAlertSink(shared.alerts) if shared.alerts is not None else None,
                logger_provider=configure_event_logging("genai-platform"),
            )


def _evaluation(
    settings: PlatformSettings,
    hosted: tuple[str, ...],
    local_target: Callable[[], str],
    clients: "_Clients",
    shared: _Shared,
) -> ServiceRegistration:
    """EvaluationService, running its generations through GatewayService and its embeddings
    through InferenceService, and resolving prompts through PromptService: each at its
    `evaluation.targets` address (over gRPC, with the internal credentials), or in this
    process when the address is empty (a `ConfigError` at start when it is not hosted here)."""
    tracer = trace.get_tracer("genai.evaluation", tracer_provider=clients.tracer_provider)
    targets = settings.evaluation.targets

    def stub_of(
        service: ServiceKey, module: Any, name: str, remote: Callable[[Any], Any], target: str
    ) -> Callable[[], Any]:
        full_name = SERVICE_NAMES[service]
        if target:
            return lambda: remote(clients.channels.get(target))
        if full_name not in hosted:
            raise ConfigError(
                [
                    f"EvaluationService needs {full_name}: host it in this process (services) "
                    f"or give its address in evaluation.targets.{service} "
                    f"(GENAI_EVALUATION__TARGETS__{service.upper()})"
                ]
            )

        def stub() -> Any:
            servicer = shared.local_servicer(full_name)
            if servicer is None:  # registered in this process by the time a run starts
                raise RuntimeError(f"{full_name} is not registered in this process")
            return local_stub(servicer, module.DESCRIPTOR.services_by_name[name], tracer)

        return stub

    def prompt_target() -> str:
        configured = targets.prompt or settings.gateway.targets.prompt
        if configured:
            return configured
        return local_target() if SERVICE_NAMES["prompt"] in hosted else ""

    def prompt_client(tenant_id: str) -> PromptClient:
        return PromptClient(
            clients.channels.get(prompt_target()),
            metadata=internal_metadata(shared.internal_token, tenant_id),
        )

    reachable = bool(targets.prompt or settings.gateway.targets.prompt) or (
        SERVICE_NAMES["prompt"] in hosted
    )
    return evaluation_server.registration(
        settings=settings.evaluation,
        gateway=stub_of(
            "gateway",
            gateway_service_pb2,
            "GatewayService",
            gateway_service_pb2_grpc.GatewayServiceStub,
            targets.gateway,
        ),
        inference=stub_of(
            "inference",
            inference_service_pb2,
            "InferenceService",
            inference_service_pb2_grpc.InferenceServiceStub,
            targets.inference,
        ),
        prompts=prompt_client if reachable else None,
        prompt_service=lambda: prompt_service_pb2_grpc.PromptServiceStub(
            clients.channels.get(prompt_target())
        ),
        metadata_for=lambda tenant: internal_metadata(shared.internal_token, tenant),
        tracer_provider=clients.tracer_provider,
        on_report=_report_pushed(shared.quality_scores),
    )


def _report_pushed(
    scores: EvaluationScores | None,
) -> Callable[[str, Any], None] | None:
    """The evaluation runner's report listener that refreshes this process's router scores
    (None when the router is not hosted here, or reads scores elsewhere)."""
    if scores is None:
        return None
    return lambda tenant, report: scores.invalidate(tenant, report.prompt)


def _quality_scores(
    settings: PlatformSettings,
    hosted: tuple[str, ...],
    local_target: Callable[[], str],
    clients: "_Clients",
    internal_token: str,
    local_servicer: Callable[[str], object | None],
) -> EvaluationScores | None:
    """The router's evaluation scores for the quality-floor policy: EvaluationService at
    `router.evaluation_target` or `gateway.targets.evaluation` (the gateway's, where the router
    lives beside it), else the one in this process (None when none: the policy falls back to
    cost), and the prompts' gate datasets from PromptService at
    `router.prompt_target`, `gateway.targets.prompt`, else this process's (over its own
    address: gate datasets are cached, so the hop is rare)."""
    tracer = trace.get_tracer("genai.router", tracer_provider=clients.tracer_provider)

    def in_process(key: ServiceKey, module: Any, name: str) -> Callable[[], Any]:
        full_name = SERVICE_NAMES[key]
        descriptor = module.DESCRIPTOR.services_by_name[name]

        def stub() -> Any:
            servicer = local_servicer(full_name)
            if servicer is None:
                raise RuntimeError(f"{full_name} is not registered in this process")
            return local_stub(servicer, descriptor, tracer)

        return stub

    router = settings.router
    evaluation: Callable[[], Any]
    evaluation_target = router.evaluation_target or settings.gateway.targets.evaluation
    if evaluation_target:
        evaluation = lambda: evaluation_service_pb2_grpc.EvaluationServiceStub(  # noqa: E731
            clients.channels.get(evaluation_target)
        )
    elif SERVICE_NAMES["evaluation"] in hosted:
        evaluation = in_process("evaluation", evaluation_service_pb2, "EvaluationService")
    else:
        return None
    prompts: Callable[[], Any] | None = None
    configured = router.prompt_target or settings.gateway.targets.prompt
    if configured or SERVICE_NAMES["prompt"] in hosted:
        prompts = lambda: prompt_service_pb2_grpc.PromptServiceStub(  # noqa: E731
            clients.channels.get(configured or local_target())
        )
    return EvaluationScores(
        evaluation,
        prompts,
        lambda tenant: internal_metadata(internal_token, tenant),
        refresh_s=router.quality_scores_seconds,
    )


def remote_targets(settings: PlatformSettings) -> dict[str, str]:
    """The addresses of other processes that this process's services call, by setting."""
    found: dict[str, str] = {}
    if "gateway" in settings.services:
        for name, target in settings.gateway.targets.model_dump().items():
            found[f"gateway.targets.{name}"] = target
    if "evaluation" in settings.services:
        for name, target in settings.evaluation.targets.model_dump().items():
            found[f"evaluation.targets.{name}"] = target
    if "prompt" in settings.services:
        found["prompt.evaluation_target"] = settings.prompt.evaluation_target
    if "router" in settings.services:
        found["router.evaluation_target"] = settings.router.evaluation_target
        found["router.prompt_target"] = settings.router.prompt_target
    return {name: target for name, target in found.items() if target}


def _check_targets(settings: PlatformSettings) -> None:
    """Every configured address can be dialled (`ConfigError` naming each that cannot), so a
    typo fails the start rather than the first call."""
    tls = client_tls(settings.clients)
    problems = []
    for name, target in remote_targets(settings).items():
        try:
            dialled = channel_target(target)
        except InvalidTargetError as error:
            problems.append(f"{name}: {error}")
            continue
        if tls is not None and dialled.listed and not tls.server_name:
            problems.append(
                f"{name}: TLS over a list of IP addresses needs clients.tls_server_name "
                "(GENAI_CLIENTS__TLS_SERVER_NAME), the name in the services' certificates"
            )
    if problems:
        raise ConfigError(problems)


def check_transport(settings: PlatformSettings) -> None:
    """API keys never cross a network in plaintext: with keys on, a server listening on a
    non-loopback address needs TLS, or `server.tls_terminated_upstream` saying a proxy in front
    of it ends TLS (logged, so the choice shows in the log). `ConfigError` otherwise. The HTTP
    server listens on the same host with the same TLS, so this covers it too."""
    server = settings.server
    if settings.auth.mode != "api_key" or server.tls_certificate_file or _loopback(server.host):
        return
    if server.tls_terminated_upstream:
        _logger.warning(
            "serving API keys without TLS on %s: server.tls_terminated_upstream says TLS ends "
            "in front of this server",
            server.host,
        )
        return
    raise ConfigError(
        [
            f"server.host {server.host!r} is not a loopback address and API keys are on, but "
            "TLS is off: API keys would cross the network in plaintext. Set "
            "server.tls_certificate_file and server.tls_private_key_file, or, when a load "
            "balancer or proxy in front of this server ends TLS, "
            "server.tls_terminated_upstream: true (GENAI_SERVER__TLS_TERMINATED_UPSTREAM=true)"
        ]
    )


def _loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def _check_internal_token(settings: PlatformSettings) -> None:
    """With API keys and no `auth.internal_token`, each process makes up a token of its own,
    which no other process knows: refuse to start a process that calls others on a tenant's
    behalf, and warn a process that hosts only some services (others cannot call it)."""
    remote = remote_targets(settings)
    if remote:
        raise ConfigError(
            [
                f"this process calls other processes ({', '.join(sorted(remote))}) on tenants' "
                "behalf: set the same secret in auth.internal_token (GENAI_AUTH__INTERNAL_TOKEN) "
                "in every process of the deployment"
            ]
        )
    if set(settings.services) != set(SERVICE_NAMES):
        _logger.warning(
            "auth.internal_token is not set: other processes' calls on a tenant's behalf "
            "(a gateway, an evaluation service) will be refused; set "
            "GENAI_AUTH__INTERNAL_TOKEN to the same secret everywhere"
        )


def _evaluation_gate(
    settings: PlatformSettings, clients: "_Clients", shared: _Shared
) -> EvaluationReportGate | None:
    """The gate of protected labels: the EvaluationService of this process (called in
    process) or at `prompt.evaluation_target` (over gRPC, with the internal credentials)."""
    service = SERVICE_NAMES["evaluation"]
    descriptor = evaluation_service_pb2.DESCRIPTOR.services_by_name["EvaluationService"]
    tracer = trace.get_tracer("genai.prompt", tracer_provider=clients.tracer_provider)
    if settings.prompt.evaluation_target:
        target = settings.prompt.evaluation_target
        return EvaluationReportGate(
            lambda: evaluation_service_pb2_grpc.EvaluationServiceStub(clients.channels.get(target)),
            lambda tenant: internal_metadata(shared.internal_token, tenant),
        )
    if "evaluation" not in settings.services:
        return None

    def local() -> Any:
        servicer = shared.local_servicer(service)
        if servicer is None:
            raise RuntimeError(f"{service} is not registered in this process")
        return local_stub(servicer, descriptor, tracer)

    return EvaluationReportGate(local)


def _required(tenants: SqlTenantStore | None) -> SqlTenantStore:
    if tenants is None:  # start_platform makes the store whenever the gateway is hosted
        raise RuntimeError("the gateway needs the tenant store")
    return tenants


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _tls(server: ServerSettings) -> TlsConfig | None:
    if not server.tls_certificate_file:  # the settings guarantee cert and key come together
        return None
    return TlsConfig(
        certificate_chain=Path(server.tls_certificate_file),
        private_key=Path(server.tls_private_key_file),
        client_ca=Path(server.tls_client_ca_file) if server.tls_client_ca_file else None,
    )


def client_tls(clients: ClientSettings) -> ClientTlsConfig | None:
    """The client TLS of `clients`, or None for plaintext."""
    if not clients.tls:
        return None

    def path(name: str) -> Path | None:
        return Path(name) if name else None

    return ClientTlsConfig(
        root_ca=path(clients.tls_ca_file),
        certificate_chain=path(clients.tls_certificate_file),
        private_key=path(clients.tls_private_key_file),
        server_name=clients.tls_server_name,
    )

"""Composition root of RouterService: settings -> catalog -> router -> health checks -> servicer."""

from collections.abc import Callable
from pathlib import Path

import grpc
from genai.router.v1 import router_service_pb2_grpc

from services.common.server import ServiceRegistration
from services.router.adapters.health import HealthChecker
from services.router.adapters.quality import QualityScores
from services.router.config import DEFAULT_CATALOG, RouterSettings, load_catalog
from services.router.core.live import BreakerPolicy
from services.router.core.router import Router
from services.router.servicer import SERVICE_NAME, RouterServicer


def catalog_path(settings: RouterSettings) -> Path:
    """The catalog file the router reads: `catalog_file`, or the shipped catalog."""
    return Path(settings.catalog_file) if settings.catalog_file else DEFAULT_CATALOG


def registration(
    *,
    settings: RouterSettings,
    local_triton: str,
    channel_for: Callable[[str], grpc.aio.Channel],
    scores: QualityScores | None = None,
) -> ServiceRegistration:
    """Returns RouterService ready to be added to a server. The catalog is read (and validated)
    here; Triton backends with an empty endpoint are `local_triton`. Health checks start with
    the server and stop with it; the router knows their interval, to tell callers when a
    backend failing them is probed next. `scores` gives the quality-floor policy its
    evaluation scores (`services.router.adapters.quality.EvaluationScores`); without it that
    policy falls back to cost."""
    catalog = load_catalog(catalog_path(settings), local_triton=local_triton)
    router = Router(
        catalog,
        breaker=BreakerPolicy(
            consecutive_failures=settings.breaker_failures,
            failure_rate=settings.breaker_failure_rate,
            window=settings.breaker_window,
            cooldown_s=settings.breaker_cooldown_seconds,
            probes=settings.breaker_probes,
        ),
        health_check_interval_s=settings.health_check_seconds,
    )
    checker = HealthChecker(
        router, interval_s=settings.health_check_seconds, channel_for=channel_for
    )
    servicer = RouterServicer(router, scores)
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: router_service_pb2_grpc.add_RouterServiceServicer_to_server(
            servicer, server
        ),
        start=checker.start,
        stop=checker.stop,
        servicer=servicer,
    )

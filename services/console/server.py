"""Builds the console the gateway serves: its session secret, and stubs over gRPC channels to
every service it shows (with the visitor's key as the credential, never the platform's
internal token)."""

import hashlib
import secrets
from collections.abc import Callable

import grpc
from genai.evaluation.v1 import evaluation_service_pb2_grpc
from genai.experiment.v1 import experiment_service_pb2_grpc
from genai.gateway.v1 import gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2_grpc
from genai.router.v1 import router_service_pb2_grpc
from starlette.routing import BaseRoute

from services.common.http import HttpContext
from services.console.app import console_routes
from services.console.session import SessionCodec
from services.console.web import Console, Stubs
from services.gateway.config import ConsoleSettings


def session_secret(settings: ConsoleSettings, internal_token: str) -> bytes:
    """The secret sessions are sealed with: the configured one, else one derived from the
    internal token (shared by replicas; the HKDF in `SessionCodec` separates its use), else
    random for this process."""
    if settings.session_secret:
        return settings.session_secret.encode("utf-8")
    if internal_token:
        return hashlib.sha256(b"genai-console:" + internal_token.encode("utf-8")).digest()
    return secrets.token_bytes(32)


def routes(
    ctx: HttpContext,
    settings: ConsoleSettings,
    *,
    internal_token: str,
    version: str,
    channel: Callable[[str], grpc.aio.Channel | None],
) -> list[BaseRoute]:
    """The console's routes (none when it is disabled). `channel(service)` reaches a service
    by full name over gRPC, or is None where the platform has none (experiments and
    evaluations are optional)."""
    if not settings.enabled:
        return []
    state: dict[str, Stubs] = {}

    def stubs() -> Stubs:
        # Made on first use: the process's own address is known only once it is bound.
        if "stubs" not in state:
            prompts = channel("genai.prompt.v1.PromptService")
            gateway = channel("genai.gateway.v1.GatewayService")
            if prompts is None or gateway is None:
                raise RuntimeError("the console needs PromptService and the gateway")
            router = channel("genai.router.v1.RouterService")
            experiments = channel("genai.experiment.v1.ExperimentService")
            evaluations = channel("genai.evaluation.v1.EvaluationService")
            state["stubs"] = Stubs(
                prompts=prompt_service_pb2_grpc.PromptServiceStub(prompts),
                experiments=experiment_service_pb2_grpc.ExperimentServiceStub(experiments)
                if experiments is not None
                else None,
                evaluations=evaluation_service_pb2_grpc.EvaluationServiceStub(evaluations)
                if evaluations is not None
                else None,
                router=router_service_pb2_grpc.RouterServiceStub(router)
                if router is not None
                else None,
                gateway=gateway_service_pb2_grpc.GatewayServiceStub(gateway),
            )
        return state["stubs"]

    console = Console(
        authenticator=ctx.authenticator,
        codec=SessionCodec(
            session_secret(settings, internal_token),
            lifetime_seconds=settings.session_hours * 3600,
        ),
        stubs=stubs,
        auth_enabled=bool(internal_token),
        secure_cookie=ctx.secure,
        version=version,
    )
    return console_routes(console)

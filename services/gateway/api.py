"""The gateway's front door for transports other than its gRPC service (the OpenAI-compatible
HTTP API, `services.gateway.openai`): completions, embeddings and the model catalog, wire-free.

A transport authenticates and authorizes the caller itself (with the process's
`Authenticator` and the access policy), makes the principal current
(`set_current_principal`, which in-process callees read), and then calls here with
`caller(principal, method)`. Everything behind is the gRPC service's own pipeline:
`CompletionEngine.stream` (routing, quotas, processing, request log, traces and metrics) and
`EmbeddingEngine.embed`; the catalog comes from RouterService.
"""

from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import grpc
from genai.router.v1 import router_pb2, router_service_pb2, router_service_pb2_grpc

from services.common.auth import Principal, internal_metadata
from services.common.errors import FieldViolation, Internal, InvalidArgument
from services.common.status import remote_error
from services.gateway.completion import CompletionEngine
from services.gateway.embeddings import EmbeddingEngine, EmbeddingRequest, EmbeddingResult
from services.gateway.inline import InlinePrompt
from services.gateway.outcome import Caller, Outcome, Request, Response

if TYPE_CHECKING:
    RouterStub = router_service_pb2_grpc.RouterServiceAsyncStub
else:
    RouterStub = router_service_pb2_grpc.RouterServiceStub

__all__ = ["CATALOG_TIMEOUT_SECONDS", "GatewayApi"]

CATALOG_TIMEOUT_SECONDS: Final = 5.0
"""How long one catalog call (`ListModels` page, `GetModel`) may take."""
_PAGE_SIZE: Final = 1000
_MAX_PAGES: Final = 100
"""A bound on `models()`: a router that kept handing out page tokens would loop forever."""
_ROUTER: Final = "genai.router.v1.RouterService"


class GatewayApi:
    """Completions, embeddings and the catalog for one caller at a time (see the module
    docstring). The engines and the router stub are given as factories: they are made on
    first use, once this process's own address (which in-process dependencies are reached at)
    is known."""

    def __init__(
        self,
        *,
        engine: Callable[[], CompletionEngine],
        embeddings: Callable[[], EmbeddingEngine],
        router: Callable[[], RouterStub],
        internal_token: str,
    ) -> None:
        self._engine = engine
        self._embeddings = embeddings
        self._router = router
        self._internal_token = internal_token

    def caller(self, principal: Principal, method: str) -> Caller:
        """The caller `principal`, calling `method` (the metrics' `method` label; without its
        leading slash, the request log's), on whose behalf the gateway calls the platform
        (the internal token and the principal's tenant)."""
        return Caller(
            tenant_id=principal.tenant_id,
            metadata=tuple(internal_metadata(self._internal_token, principal.tenant_id)),
            method=method,
        )

    def complete(
        self,
        request: Request,
        caller: Caller,
        *,
        time_left: float | None,
        inline: InlinePrompt | None = None,
        output_schema: Mapping[str, Any] | None = None,
        observe: Callable[[Outcome], None] | None = None,
    ) -> AsyncGenerator[Response]:
        """One completion's stream: `start`, the deltas, `final` (`CompletionEngine.stream`,
        whose docstring says what `inline`, `output_schema` and `observe` do). Closing the
        iterator early (`aclose()`) or cancelling its task cancels the generation, which is
        logged as CANCELLED."""
        return self._engine().stream(
            request,
            caller,
            time_left=time_left,
            inline=inline,
            output_schema=output_schema,
            observe=observe,
        )

    async def embed(
        self, request: EmbeddingRequest, caller: Caller, *, time_left: float | None
    ) -> EmbeddingResult:
        """Embeds texts (`EmbeddingEngine.embed`)."""
        return await self._embeddings().embed(request, caller, time_left=time_left)

    async def models(self, caller: Caller) -> list[router_pb2.Model]:
        """Every catalog model, in name order (every page of RouterService `ListModels`)."""
        models: list[router_pb2.Model] = []
        token = ""
        for _ in range(_MAX_PAGES):
            try:
                page = await self._router().ListModels(
                    router_service_pb2.ListModelsRequest(page_size=_PAGE_SIZE, page_token=token),
                    timeout=CATALOG_TIMEOUT_SECONDS,
                    metadata=caller.metadata or None,
                )
            except grpc.aio.AioRpcError as error:
                raise remote_error(error, service=_ROUTER, what="the router") from None
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                return models
        raise Internal(
            f"the router's catalog ran past {_MAX_PAGES} pages of {_PAGE_SIZE} models",
            metadata={"service": _ROUTER},
        )

    async def model(self, name: str, caller: Caller) -> router_pb2.Model:
        """The catalog model `name` (RouterService `GetModel`): NOT_FOUND (MODEL_NOT_FOUND)
        when there is none."""
        if not name:
            raise InvalidArgument(violations=[FieldViolation("model", "is required")])
        try:
            response = await self._router().GetModel(
                router_service_pb2.GetModelRequest(name=name),
                timeout=CATALOG_TIMEOUT_SECONDS,
                metadata=caller.metadata or None,
            )
        except grpc.aio.AioRpcError as error:
            raise remote_error(error, service=_ROUTER, what="the router") from None
        return response.model

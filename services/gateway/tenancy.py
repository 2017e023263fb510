"""What the gateway keeps per tenant and per model: a `PromptClient` per tenant, tenants'
limits (briefly cached), catalog prices (from RouterService) and which models decode under a
constraint (from InferenceService)."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Final

import grpc
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from genai.router.v1 import router_service_pb2, router_service_pb2_grpc

from services.common.errors import NotFound
from services.common.status import remote_error
from services.common.wire import decimal_amount
from services.gateway.core.tenants import UNLIMITED, Tenant, TenantQuota
from services.prompt.client import PromptClient, PromptClients

if TYPE_CHECKING:
    RouterStub = router_service_pb2_grpc.RouterServiceAsyncStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceAsyncStub
else:
    RouterStub = router_service_pb2_grpc.RouterServiceStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceStub

_logger = logging.getLogger(__name__)
MILLION: Final = Decimal(1_000_000)


class TenantDirectory:
    """Per-tenant state of the gateway.

    - `prompts(tenant)`: a started `PromptClient` whose calls carry that tenant's internal
      credentials (`PromptClients`: at most `max_clients` are kept, least recently used closed
      first).
    - `quota(tenant)`: the tenant's limits, read at most every `cache_seconds`; a tenant the
      store does not know (the `default` tenant of auth `none`) has no limits.
    """

    def __init__(
        self,
        *,
        client_for: Callable[[str], PromptClient],
        tenant_lookup: Callable[[str], Awaitable[Tenant]] | None,
        cache_seconds: float,
        max_clients: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = PromptClients(client_for, max_clients=max_clients)
        self._lookup = tenant_lookup
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._quotas: dict[str, tuple[float, TenantQuota]] = {}

    async def prompts(self, tenant_id: str) -> PromptClient:
        """The tenant's prompt client, created and started on first use."""
        return await self._clients.get(tenant_id)

    async def quota(self, tenant_id: str) -> TenantQuota:
        """The tenant's limits (see the class docstring)."""
        now = self._clock()
        cached = self._quotas.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        quota = UNLIMITED
        if self._lookup is not None:
            try:
                quota = (await self._lookup(tenant_id)).quota
            except NotFound:
                quota = UNLIMITED
        self._quotas[tenant_id] = (now + self._cache_seconds, quota)
        return quota

    def forget(self, tenant_id: str) -> None:
        """Drops the cached limits of a tenant (after this process changed them)."""
        self._quotas.pop(tenant_id, None)

    async def close(self) -> None:
        """Closes every prompt client."""
        await self._clients.close()


@dataclass(frozen=True, slots=True)
class Price:
    """A model's catalog prices."""

    input_per_million: Decimal
    output_per_million: Decimal
    currency: str

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        """What these tokens cost."""
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / MILLION


class PriceBook:
    """Catalog prices from RouterService `GetModel`, kept for `ttl_seconds` per model."""

    def __init__(
        self,
        router: RouterStub,
        *,
        ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._router = router
        self._ttl = ttl_seconds
        self._clock = clock
        self._prices: dict[str, tuple[float, Price]] = {}

    async def price(self, model: str, metadata: Sequence[tuple[str, str]]) -> Price:
        """The prices of `model`; raises the router's errors as domain errors."""
        now = self._clock()
        cached = self._prices.get(model)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            response = await self._router.GetModel(
                router_service_pb2.GetModelRequest(name=model),
                timeout=2.0,
                metadata=metadata or None,
            )
        except grpc.aio.AioRpcError as error:
            raise remote_error(
                error, service="genai.router.v1.RouterService", what="the router"
            ) from None
        found = response.model
        price = Price(
            input_per_million=decimal_amount(found.input_price_per_million_tokens),
            output_per_million=decimal_amount(found.output_price_per_million_tokens),
            currency=found.input_price_per_million_tokens.currency_code,
        )
        self._prices[model] = (now + self._ttl, price)
        return price


class GuidedDecodingBook:
    """Which models can decode under an output constraint: `ServedModel.guided_decoding` from
    InferenceService `GetModelStatus`, whose model settings are the one source of this fact
    (the router catalog's `json_output` capability is a routing filter, not this). Answers
    are kept for `ttl_seconds` per model; concurrent look-ups of one model share one call. A
    look-up that fails (InferenceService down, the model unknown to it) answers False, kept
    for `retry_seconds`: the gateway then relies on its output schema check alone."""

    def __init__(
        self,
        inference: InferenceStub,
        *,
        ttl_seconds: float = 60.0,
        retry_seconds: float = 5.0,
        timeout_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inference = inference
        self._ttl = ttl_seconds
        self._retry = retry_seconds
        self._timeout = timeout_seconds
        self._clock = clock
        self._known: dict[str, tuple[float, bool]] = {}
        self._pending: dict[str, asyncio.Future[bool]] = {}

    async def supports(self, model: str, metadata: Sequence[tuple[str, str]]) -> bool:
        """Whether InferenceService constrains the decoding of `model` (see the class)."""
        known = self._known.get(model)
        if known is not None and known[0] > self._clock():
            return known[1]
        pending = self._pending.get(model)
        if pending is None:
            pending = self._pending[model] = asyncio.ensure_future(self._look_up(model, metadata))
            pending.add_done_callback(lambda _: self._pending.pop(model, None))
        return await asyncio.shield(pending)

    async def _look_up(self, model: str, metadata: Sequence[tuple[str, str]]) -> bool:
        try:
            response = await self._inference.GetModelStatus(
                inference_service_pb2.GetModelStatusRequest(model=model),
                timeout=self._timeout,
                metadata=metadata or None,
            )
        except grpc.aio.AioRpcError as error:
            _logger.warning(
                "could not learn whether model %s supports guided decoding (%s); its outputs "
                "are checked against their schemas without constrained decoding",
                model,
                error.code().name,
            )
            self._known[model] = (self._clock() + self._retry, False)
            return False
        guided = any(served.guided_decoding for served in response.models)
        self._known[model] = (self._clock() + self._ttl, guided)
        return guided

"""Active health checks: every backend is asked, on an interval, whether it can serve its
model; the answers go to the router, which stops sending requests to a backend that fails.

Triton backends are asked `ModelReady` for their model, and `ModelStatistics`: the growth of
its cumulative queue time over the growth of its request count since the previous check is the
mean time a request waited in Triton's queue in that interval, which the router adds to its
latency predictions. OpenAI-compatible endpoints are asked
`GET {base}/models`: any answer below 500 (401 included: the catalog holds no API keys) means the
endpoint is up; 5xx, timeouts and refused connections mean it is not. Whether the provider
serves the model, and answers well, is learnt from reported outcomes and the circuit breaker.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
import httpx
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.router.core.catalog import BackendKind
from services.router.core.live import Health
from services.router.core.router import Router

_logger = logging.getLogger(__name__)
CHECK_TIMEOUT_S = 2.0


class HealthChecker:
    """Checks every backend of `router`'s catalog every `interval_s` seconds."""

    def __init__(
        self,
        router: Router,
        *,
        interval_s: float,
        channel_for: Callable[[str], grpc.aio.Channel],
    ) -> None:
        self._router = router
        self._interval_s = interval_s
        self._channel_for = channel_for
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(timeout=CHECK_TIMEOUT_S)
        self._queue_totals: dict[tuple[str, str], tuple[int, int]] = {}
        """(model, backend id) -> Triton's (queued requests, queue nanoseconds) last read."""

    async def start(self) -> None:
        """Runs one round of checks, then keeps checking in the background."""
        await self.check_all()
        self._task = asyncio.create_task(self._loop(), name="router-health-checks")

    async def stop(self) -> None:
        """Stops checking."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._http.aclose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_all()
            except Exception:  # a check round must never end the loop
                _logger.exception("a round of backend health checks failed")

    async def check_all(self) -> None:
        """Checks every backend once, concurrently."""
        checks = [
            self._check(model.name, backend.id, backend.endpoint, backend.backend_model)
            if backend.kind is BackendKind.TRITON
            else self._check_http(model.name, backend.id, backend.endpoint)
            for model in self._router.catalog.models
            for backend in model.backends
            if backend.endpoint
        ]
        await asyncio.gather(*checks)

    async def _check_http(self, model: str, backend_id: str, base_url: str) -> None:
        try:
            response = await self._http.get(f"{base_url.rstrip('/')}/models")
        except httpx.HTTPError as error:
            self._router.set_health(model, backend_id, Health.NOT_SERVING, type(error).__name__)
            return
        if response.status_code >= 500:
            self._router.set_health(
                model, backend_id, Health.NOT_SERVING, f"HTTP {response.status_code}"
            )
        else:
            self._router.set_health(model, backend_id, Health.SERVING)

    async def _check(self, model: str, backend_id: str, endpoint: str, backend_model: str) -> None:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel_for(endpoint))
        try:
            ready = await stub.ModelReady(
                service_pb2.ModelReadyRequest(name=backend_model), timeout=CHECK_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:
            self._router.set_health(model, backend_id, Health.NOT_SERVING, error.code().name)
            return
        if ready.ready:
            self._router.set_health(model, backend_id, Health.SERVING)
            await self._read_queue(stub, model, backend_id, backend_model)
        else:
            self._router.set_health(
                model, backend_id, Health.NOT_SERVING, f"{backend_model} is not ready"
            )

    async def _read_queue(
        self,
        stub: service_pb2_grpc.GRPCInferenceServiceStub,
        model: str,
        backend_id: str,
        backend_model: str,
    ) -> None:
        try:
            statistics = await stub.ModelStatistics(
                service_pb2.ModelStatisticsRequest(name=backend_model), timeout=CHECK_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as error:  # statistics are a refinement: health stands
            _logger.debug("ModelStatistics of %s failed: %s", backend_model, error.code())
            return
        count = ns = 0
        for version in statistics.model_stats:
            count += version.inference_stats.queue.count
            ns += version.inference_stats.queue.ns
        previous = self._queue_totals.get((model, backend_id))
        self._queue_totals[(model, backend_id)] = (count, ns)
        if previous is None or count < previous[0]:  # first reading, or Triton restarted
            return
        requests = count - previous[0]
        self._router.set_queue_time(
            model, backend_id, (ns - previous[1]) / requests / 1e9 if requests else 0.0
        )

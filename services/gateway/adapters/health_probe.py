"""Probes dependencies with the standard `grpc.health.v1.Health/Check` over platform channels."""

import time
from collections.abc import Callable
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.core.server_info import DependencyHealth

UNREACHABLE = "UNREACHABLE"
"""Status of a dependency that has no address or does not answer its health check."""


class GrpcHealthProbe:
    """Asks each dependency's own health service, over the channel the gateway uses for it.

    `target_for` returns a service's address, resolved at check time (the embedded process
    knows its own port only once it is serving); empty means the gateway has no address for
    it. `channel_for` returns the (shared, cached) channel to an address.
    """

    def __init__(
        self,
        *,
        target_for: Callable[[str], str],
        channel_for: Callable[[str], grpc.aio.Channel],
        timeout: float,
    ) -> None:
        self._target_for = target_for
        self._channel_for = channel_for
        self._timeout = timeout

    async def check(self, service: str) -> DependencyHealth:
        """Returns the dependency's serving status and the check's round-trip time."""
        target = self._target_for(service)
        started = time.perf_counter()
        status = UNREACHABLE
        if target:
            stub = health_pb2_grpc.HealthStub(self._channel_for(target))
            try:
                response = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    status = "SERVICE_UNKNOWN"
        return DependencyHealth(
            service=service,
            target=target,
            status=status,
            check_duration=timedelta(seconds=time.perf_counter() - started),
        )

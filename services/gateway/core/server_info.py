"""What a gateway reports about itself: build, contract, hosted services, dependency health."""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DependencyHealth:
    """The health of one service the gateway calls, as seen from the gateway."""

    service: str
    """Fully qualified service name, e.g. `genai.prompt.v1.PromptService`."""
    target: str
    """Address the gateway reaches the service at."""
    status: str
    """`grpc.health.v1` status name, or `UNREACHABLE` when the check itself failed."""
    check_duration: timedelta
    """Round-trip time of the check."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A snapshot of the gateway process."""

    version: str
    contract_digest: str
    hosted_services: tuple[str, ...]
    dependencies: tuple[DependencyHealth, ...]
    start_time: datetime
    uptime: timedelta


class HealthProbe(Protocol):
    """Checks the health of one dependency; never raises for an unhealthy or absent one."""

    async def check(self, service: str) -> DependencyHealth:
        """Returns the dependency's health, `UNREACHABLE` when it cannot be asked."""
        ...


class ServerInfoReporter:
    """Builds `ServerInfo`, probing every dependency concurrently."""

    def __init__(
        self,
        *,
        version: str,
        contract_digest: str,
        hosted_services: Sequence[str],
        dependencies: Sequence[str],
        probe: HealthProbe,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._version = version
        self._contract_digest = contract_digest
        self._hosted = tuple(sorted(hosted_services))
        self._dependencies = tuple(dependencies)
        self._probe = probe
        self._clock = clock
        self._start_time = clock()

    async def report(self) -> ServerInfo:
        """Returns the current snapshot."""
        health = await asyncio.gather(*(self._probe.check(s) for s in self._dependencies))
        now = self._clock()
        return ServerInfo(
            version=self._version,
            contract_digest=self._contract_digest,
            hosted_services=self._hosted,
            dependencies=tuple(health),
            start_time=self._start_time,
            uptime=max(now - self._start_time, timedelta(0)),
        )

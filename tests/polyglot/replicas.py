"""GatewayService replicas in this process for the Node and Go balancing tests: each answers
GetServerInfo with its own name as `version` and counts the attempts it sees; one can fail its
next attempts UNAVAILABLE before any response, which the platform's retry policy retries.

The clients print one JSON line per GetServerInfo call (`replicas.ts`, `genaiclient replicas`):
`{"call": ".../GetServerInfo", "ok": true, "version": NAME}`.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import grpc.aio
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc

from services.common.grpc_types import ServicerContext
from services.common.server import RunningServer, ServiceRegistration, start_server
from tests.polyglot.expect import parse_json_lines

INFO_CALL = "genai.gateway.v1.GatewayService/GetServerInfo"


@dataclass
class InfoReplica:
    """One replica: its name (the `version` it answers), attempts seen, failures to come and
    failures sent."""

    name: str
    attempts: int = 0
    failures: int = 0
    failed: int = 0


class _Info(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self, replica: InfoReplica) -> None:
        self._replica = replica

    async def GetServerInfo(
        self, request: gateway_service_pb2.GetServerInfoRequest, context: ServicerContext
    ) -> gateway_service_pb2.GetServerInfoResponse:
        self._replica.attempts += 1
        if self._replica.failures > 0:
            self._replica.failures -= 1
            self._replica.failed += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self._replica.name} is busy")
        return gateway_service_pb2.GetServerInfoResponse(version=self._replica.name)


@asynccontextmanager
async def info_replicas(*names: str) -> AsyncIterator[tuple[str, list[InfoReplica]]]:
    """Starts one replica per name on 127.0.0.1, port 0; yields the comma-separated target
    of all of them and the replicas."""
    replicas = [InfoReplica(name) for name in names]
    servers: list[RunningServer] = []
    try:
        for replica in replicas:
            servicer = _Info(replica)  # type: ignore[abstract]  # the other RPCs are not called

            def add(server: grpc.aio.Server, servicer: _Info = servicer) -> None:
                gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)

            servers.append(
                await start_server(
                    bind="127.0.0.1:0",
                    registrations=[
                        ServiceRegistration(
                            name="genai.gateway.v1.GatewayService", add_to_server=add
                        )
                    ],
                    interceptors=[],
                    grace=0,
                )
            )
        yield ",".join(server.address for server in servers), replicas
    finally:
        for server in servers:
            await server.stop(0)


async def run_client(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    """Runs a client while this event loop serves the replicas; returns its stdout, failing
    with its output when it exits non-zero."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    output = stdout.decode() + stderr.decode()
    assert process.returncode == 0, output
    return stdout.decode()


def assert_calls_balanced_and_retried(
    stdout: str, replicas: Sequence[InfoReplica], *, calls: int, failed: int
) -> None:
    """Every one of `calls` calls succeeded, every replica answered some (round robin, not
    pick_first), and the `failed` attempts that replicas failed were retried: each replica saw
    the calls it answered plus the failures it sent, and no call failed."""
    lines = parse_json_lines(stdout)
    assert len(lines) == calls, stdout
    assert all(line["call"] == INFO_CALL and line["ok"] is True for line in lines), stdout
    answered = Counter(line["version"] for line in lines)
    assert set(answered) == {replica.name for replica in replicas}, answered
    for replica in replicas:
        assert replica.attempts == answered[replica.name] + replica.failed, replica
    assert sum(replica.failed for replica in replicas) == failed

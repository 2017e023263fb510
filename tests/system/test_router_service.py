"""RouterService over real gRPC with real health checks: two Triton replicas of one model,
one of them killed and restarted; the catalog, decisions with reasons, outcome reports and
precise errors."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import tritonclient.grpc.aio as aioclient
from genai.router.v1 import router_pb2, router_service_pb2, router_service_pb2_grpc

from services.inference.adapters.tritonserver import TritonServer
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from tests.support.triton import (
    CPU_REPOSITORY,
    generation_inputs,
    requires_triton,
    running_triton,
    stream_generation,
)

pytestmark = [pytest.mark.system, requires_triton]
pb = router_service_pb2

if TYPE_CHECKING:
    Stub = router_service_pb2_grpc.RouterServiceAsyncStub
else:
    Stub = router_service_pb2_grpc.RouterServiceStub

CATALOG = """
currency: USD
models:
  - name: zero
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 0, output: 0}}
    quality_tier: 1
    backends:
      - {{id: replica-a, kind: triton, endpoint: "{a}", backend_model: zero_llm}}
      - {{id: replica-b, kind: triton, endpoint: "{b}", backend_model: zero_llm}}
  - name: premium
    capabilities: [chat, streaming, json_output]
    max_context_tokens: 8192
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 2.5, output: 10}}
    quality_tier: 8
    backends:
      - {{id: nowhere, kind: triton, endpoint: "127.0.0.1:1", backend_model: ensemble}}
"""


async def _platform(catalog: Path) -> Platform:
    settings = PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["router"],
            "server": {"port": 0, "grace_seconds": 0},
            "router": {"catalog_file": str(catalog), "health_check_seconds": 0.2},
        }
    )
    return await start_platform(settings)


async def _health(stub: Stub) -> dict[str, int]:
    response = await stub.GetBackendHealth(pb.GetBackendHealthRequest())
    return {s.backend.id: s.health for s in response.backends}


async def _until(stub: Stub, backend: str, state: int, patience_s: float = 10.0) -> float:
    started = time.monotonic()
    while (await _health(stub))[backend] != state:
        if time.monotonic() - started > patience_s:
            pytest.fail(f"{backend} never reached {router_pb2.HealthState.Name(state)}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[TritonServer, TritonServer]]:
    async with (
        running_triton(tmp_path / "a", ["zero_llm"], http_port=None, metrics_port=None) as a,
        running_triton(tmp_path / "b", ["zero_llm"], http_port=None, metrics_port=None) as b,
    ):
        yield a, b


async def test_health_checks_take_a_killed_replica_out_and_let_it_back_in(
    replicas: tuple[TritonServer, TritonServer], tmp_path: Path
) -> None:
    a, b = replicas
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.format(a=a.grpc_address, b=b.grpc_address))
    platform = await _platform(catalog)
    try:
        async with grpc.aio.insecure_channel(platform.address) as channel:
            stub = router_service_pb2_grpc.RouterServiceStub(channel)
            health = await _health(stub)
            assert health == {
                "replica-a": router_pb2.HEALTH_STATE_SERVING,
                "replica-b": router_pb2.HEALTH_STATE_SERVING,
                "nowhere": router_pb2.HEALTH_STATE_NOT_SERVING,
            }
            request = pb.RouteRequest(input_tokens=10, max_output_tokens=10)
            decision = (await stub.Route(request)).decision
            assert [c.model for c in decision.candidates] == ["zero", "zero"]
            assert {c.backend.id for c in decision.candidates} == {"replica-a", "replica-b"}
            [rejected] = decision.rejected
            assert rejected.model == "premium"
            assert rejected.reason == "no available backend: nowhere failing health checks"

            a_port = a.grpc_port
            a.kill()  # SIGKILL to Triton and its Python stubs
            out_after = await _until(stub, "replica-a", router_pb2.HEALTH_STATE_NOT_SERVING)
            decision = (await stub.Route(request)).decision
            assert [c.backend.id for c in decision.candidates] == ["replica-b"]
            [status] = [
                s
                for s in (
                    await stub.GetBackendHealth(pb.GetBackendHealthRequest(model="zero"))
                ).backends
                if s.backend.id == "replica-a"
            ]
            assert status.last_error == "health check: UNAVAILABLE"

            await a.start(
                CPU_REPOSITORY,
                models=["zero_llm"],
                grpc_port=a_port,
                http_port=None,
                metrics_port=None,
                log_file=tmp_path / "a-restarted.log",
            )
            back_after = await _until(stub, "replica-a", router_pb2.HEALTH_STATE_SERVING)
            decision = (await stub.Route(request)).decision
            assert {c.backend.id for c in decision.candidates} == {"replica-a", "replica-b"}
            print(
                f"killed replica out after {out_after * 1000:.0f} ms, restarted replica back "
                f"after {back_after * 1000:.0f} ms (health checks every 200 ms)"
            )
    finally:
        await platform.stop(grace=0)


async def test_health_checks_read_tritons_queue_time(
    replicas: tuple[TritonServer, TritonServer], tmp_path: Path
) -> None:
    """Each check reads Triton's ModelStatistics; from the second reading on, the backend's
    status carries the mean queue wait of the interval (zero_llm queues nothing measurable,
    so the value is small, but it is Triton's own figure)."""
    a, b = replicas
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.format(a=a.grpc_address, b=b.grpc_address))
    platform = await _platform(catalog)
    try:
        async with grpc.aio.insecure_channel(platform.address) as channel:
            stub = router_service_pb2_grpc.RouterServiceStub(channel)
            client = aioclient.InferenceServerClient(a.grpc_address)
            try:
                for _ in range(5):
                    await stream_generation(client, generation_inputs("one two", 4))
            finally:
                await client.close()
            deadline = time.monotonic() + 10
            while True:
                statuses = (
                    await stub.GetBackendHealth(pb.GetBackendHealthRequest(model="zero"))
                ).backends
                queued = {s.backend.id: s.latency.HasField("queue_duration") for s in statuses}
                if all(queued.values()) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
    finally:
        await platform.stop(grace=0)

    assert queued == {"replica-a": True, "replica-b": True}
    by_id = {s.backend.id: s for s in statuses}
    assert by_id["replica-a"].latency.queue_duration.ToNanoseconds() < 50_000_000

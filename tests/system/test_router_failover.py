"""The failover contract end to end: two Triton replicas of one model behind InferenceService
and RouterService, a steady stream of routed generations, one replica SIGKILLed and later
restarted. No request that had not streamed a token is lost, traffic moves to the survivor,
and the restarted replica rejoins."""

import asyncio
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from genai.common.v1 import generation_pb2
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from genai.router.v1 import router_pb2, router_service_pb2, router_service_pb2_grpc

from services.common import reasons
from services.common.errors import Unavailable
from services.platform.runner import start_platform
from services.platform.settings import PlatformSettings
from services.router.failover import RoutedGenerator, RoutedStream
from tests.support.triton import CPU_REPOSITORY, requires_triton, running_triton

pytestmark = [pytest.mark.system, requires_triton]

TOKEN_INTERVAL_US = 5_000
TOKENS = 20
WORKERS = 6
PHASE_S = 2.5

CATALOG = """
currency: USD
models:
  - name: zero
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    quality_tier: 1
    backends:
      - {{id: replica-a, kind: triton, endpoint: "{a}", backend_model: zero_llm}}
      - {{id: replica-b, kind: triton, endpoint: "{b}", backend_model: zero_llm}}
"""


def _paced_repository(root: Path) -> Path:
    """zero_llm, pacing its tokens so that streams are in flight when a replica dies."""
    shutil.copytree(CPU_REPOSITORY / "zero_llm", root / "zero_llm", symlinks=True)
    config = root / "zero_llm" / "config.pbtxt"
    text, count = re.subn(
        r'(key: "token_interval_us"\s*value: \{ string_value: )"\d+"',
        rf'\1"{TOKEN_INTERVAL_US}"',
        config.read_text(),
    )
    assert count == 1
    config.write_text(text)
    return root


async def test_a_killed_replica_loses_no_request_before_its_first_token(tmp_path: Path) -> None:
    repository = _paced_repository(tmp_path / "repository")
    async with (
        running_triton(tmp_path / "a", ["zero_llm"], repository=repository, http_port=None) as a,
        running_triton(tmp_path / "b", ["zero_llm"], repository=repository, http_port=None) as b,
    ):
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(CATALOG.format(a=a.grpc_address, b=b.grpc_address))
        settings = PlatformSettings.model_validate(
            {
                "auth": {"mode": "none"},
                "services": ["router", "inference"],
                "server": {"port": 0, "grace_seconds": 0},
                "router": {
                    "catalog_file": str(catalog),
                    "health_check_seconds": 0.2,
                    "breaker_failures": 3,
                    "breaker_cooldown_seconds": 1.0,
                },
                "inference": {
                    "triton": {"launch": False},
                    "models": [
                        {
                            "name": "zero",
                            "max_context_tokens": 100_000,
                            "max_output_tokens": 1000,
                            "backends": [
                                {
                                    "id": "replica-a",
                                    "endpoint": a.grpc_address,
                                    "triton_model": "zero_llm",
                                },
                                {
                                    "id": "replica-b",
                                    "endpoint": b.grpc_address,
                                    "triton_model": "zero_llm",
                                },
                            ],
                        }
                    ],
                },
            }
        )
        platform = await start_platform(settings)
        phase = ["before"]
        served: Counter[tuple[str, str]] = Counter()
        failovers: Counter[str] = Counter()
        interrupted: Counter[str] = Counter()
        lost: list[str] = []
        stop = asyncio.Event()
        try:
            async with grpc.aio.insecure_channel(platform.address) as channel:
                generator = RoutedGenerator(
                    router_service_pb2_grpc.RouterServiceStub(channel),
                    inference_service_pb2_grpc.InferenceServiceStub(channel),
                )
                request = inference_service_pb2.GenerateStreamRequest(
                    text="go", parameters=generation_pb2.SamplingParameters(max_tokens=TOKENS)
                )
                route = router_service_pb2.RouteRequest(input_tokens=4, max_output_tokens=TOKENS)

                async def worker() -> None:
                    while not stop.is_set():
                        record = RoutedStream()
                        at = phase[0]
                        try:
                            async for message in generator.stream(
                                request, route, record, time_left=10
                            ):
                                if message.WhichOneof("event") == "final":
                                    served[(at, message.final.backend_id)] += 1
                        except Unavailable as error:
                            if error.reason == reasons.STREAM_INTERRUPTED:
                                interrupted[at] += 1  # had streamed tokens: not retried
                            else:
                                lost.append(f"{at}: {error.message}")
                        except grpc.aio.AioRpcError as error:
                            lost.append(f"{at}: {error.code().name} {error.details()}")
                        failovers[at] += len(record.attempts) - 1

                workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
                await asyncio.sleep(PHASE_S)
                phase[0] = "after kill"
                a.kill()
                await asyncio.sleep(PHASE_S)
                health = router_service_pb2_grpc.RouterServiceStub(channel)
                statuses = {
                    s.backend.id: s
                    for s in (
                        await health.GetBackendHealth(router_service_pb2.GetBackendHealthRequest())
                    ).backends
                }
                killed = statuses["replica-a"]
                assert killed.health == router_pb2.HEALTH_STATE_NOT_SERVING
                assert killed.failure_count >= 1  # the interrupted streams were reported
                breaker = router_pb2.CircuitState.Name(killed.circuit)
                phase[0] = "restarting"
                await a.start(
                    repository,
                    models=["zero_llm"],
                    grpc_port=a.grpc_port,
                    http_port=None,
                    log_file=tmp_path / "a-restarted.log",
                )
                restarted_at = time.monotonic()
                while True:
                    statuses = {
                        s.backend.id: s
                        for s in (
                            await health.GetBackendHealth(
                                router_service_pb2.GetBackendHealthRequest()
                            )
                        ).backends
                    }
                    if statuses["replica-a"].health == router_pb2.HEALTH_STATE_SERVING:
                        break
                    assert time.monotonic() - restarted_at < 10, "replica-a never came back"
                    await asyncio.sleep(0.05)
                rejoined_s = time.monotonic() - restarted_at
                phase[0] = "after restart"
                await asyncio.sleep(PHASE_S)
                stop.set()
                await asyncio.gather(*workers)
        finally:
            await platform.stop(grace=0)

    summary = {
        at: {
            "a": served[(at, "replica-a")],
            "b": served[(at, "replica-b")],
            "failovers": failovers[at],
            "interrupted": interrupted[at],
        }
        for at in ("before", "after kill", "restarting", "after restart")
    }
    print(
        f"\nfailover: {summary}; killed replica: {killed.failure_count} failures reported, "
        f"circuit {breaker}; serving again {rejoined_s * 1000:.0f} ms after restart"
    )
    assert lost == []  # nothing that had not streamed a token failed
    assert summary["before"]["a"] > 0
    assert summary["before"]["b"] > 0
    assert summary["after kill"]["b"] > 0
    assert summary["after kill"]["a"] == 0  # traffic moved to the survivor
    assert summary["after restart"]["a"] > 0  # the restarted replica rejoined

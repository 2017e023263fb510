"""Duplicate submissions of one `request_id` racing on two `genai serve` replicas that share a
PostgreSQL schema and Redis, generating on one Triton serving the paced zero-compute model
(20 ms per token): exactly one of them generates (one Triton inference, one request-log row,
the tenant's Redis usage charged once); every other duplicate gets either that very outcome or
ABORTED (REQUEST_IN_PROGRESS) with a RetryInfo; retried after that delay, and again once the
first finished, on either replica, with Complete or StreamComplete, each gets the first
outcome, replayed."""

import asyncio
import json
import secrets
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import sqlalchemy as sa
import tritonclient.grpc
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.deployment import MODEL, TRITON_MODEL, paced_repository, zero_catalog
from services.common import reasons
from services.common.clients import api_key_metadata, create_channel
from services.common.status import error_details
from services.gateway.adapters.redis_quota import RedisQuotaLimiter
from tests.support.databases import Database, database
from tests.support.redis import redis_namespace
from tests.support.serve import genai_serve
from tests.support.triton import requires_triton, running_triton

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

pytestmark = pytest.mark.system

gs = gateway_service_pb2
DUPLICATES = 16
"""Concurrent duplicates: half on each replica, half of those Complete, half StreamComplete."""
OUTPUT_TOKENS = 40
"""Tokens of the one generation: 0.8 s at 20 ms each, so the duplicates overlap it."""


def _request() -> gs.StreamCompleteRequest:
    request = gs.StreamCompleteRequest(prompt="chat", request_id="checkout-7f3a")
    request.variables.update({"message": "Name three colours."})
    request.routing.model = MODEL
    request.parameters.max_tokens = OUTPUT_TOKENS
    return request


async def _call(stub: Stub, streaming: bool) -> tuple[str, Any]:
    """("ok", (CompleteResponse, the stream's events or None)) or ("error", the RPC error)."""
    request = _request()
    try:
        if not streaming:
            unary = gs.CompleteRequest.FromString(request.SerializeToString())
            return "ok", (await stub.Complete(unary, timeout=60), None)
        messages = [m async for m in stub.StreamComplete(request, timeout=60)]
    except grpc.aio.AioRpcError as error:
        return "error", error
    text = "".join(m.delta.text for m in messages if m.WhichOneof("event") == "delta")
    events = [m.WhichOneof("event") for m in messages]
    return "ok", (gs.CompleteResponse(text=text, metadata=messages[-1].final), events)


def _assert_in_progress(error: grpc.aio.AioRpcError) -> float:
    details = error_details(error)
    assert details.code == grpc.StatusCode.ABORTED, (details.code, details.message)
    assert details.reason == reasons.REQUEST_IN_PROGRESS
    assert details.retry_after is not None
    assert 0 < details.retry_after <= 1.0
    return details.retry_after


async def _until_answered(stub: Stub, streaming: bool, retry_after: float) -> tuple[str, Any]:
    """Retries as the RetryInfo says until the outcome comes (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        await asyncio.sleep(retry_after)
        kind, value = await _call(stub, streaming)
        if kind == "ok":
            return kind, value
        retry_after = _assert_in_progress(value)
        assert time.monotonic() < deadline, "the first request never finished"


def _inferences(triton_address: str) -> int:
    """Inference requests Triton served for the zero model (its statistics)."""
    client = tritonclient.grpc.InferenceServerClient(triton_address)
    try:
        stats = client.get_inference_statistics(TRITON_MODEL, as_json=True)
    finally:
        client.close()
    return sum(
        int(model["inference_stats"]["success"].get("count", 0))
        for model in stats.get("model_stats", [])
    )


async def _log_rows(db: Database, request_id: str) -> list[str]:
    engine = create_async_engine(db.url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    f'SELECT status FROM "{db.schema}".gateway_request_log WHERE request_id = :id'
                ),
                {"id": request_id},
            )
            return list(rows.scalars())
    finally:
        await engine.dispose()


@requires_triton
async def test_duplicates_racing_on_two_replicas_generate_charge_and_log_once(
    tmp_path: Path,
) -> None:
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(database("postgres", tmp_path))
        redis = await stack.enter_async_context(redis_namespace())
        repository = paced_repository(tmp_path, 20_000)
        triton = await stack.enter_async_context(
            running_triton(tmp_path, [TRITON_MODEL], repository=repository)
        )
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(zero_catalog([triton.grpc_address]))
        model = {
            "name": MODEL,
            "backends": [
                {"id": "triton-0", "endpoint": triton.grpc_address, "triton_model": TRITON_MODEL}
            ],
            "max_output_tokens": 100_000,
            "chat_template": "builtin:chatml",
        }
        env = {
            "GENAI_AUTH__MODE": "api_key",
            "GENAI_AUTH__INTERNAL_TOKEN": secrets.token_urlsafe(32),
            "GENAI_SERVER__GRACE_SECONDS": "2",
            "GENAI_ROUTER__CATALOG_FILE": str(catalog),
            "GENAI_INFERENCE__TRITON__LAUNCH": "false",
            "GENAI_INFERENCE__MODELS": json.dumps([model]),
            "GENAI_GATEWAY__QUOTA__BACKEND": "redis",
            "GENAI_GATEWAY__QUOTA__REDIS_URL": redis.url,
            "GENAI_GATEWAY__QUOTA__KEY_PREFIX": redis.prefix,
            "GENAI_GATEWAY__ONLINE_EVALUATION__SHARE": "0",
        }
        for service in ("PROMPT", "GATEWAY", "EXPERIMENT", "EVALUATION"):
            env[f"GENAI_{service}__DATABASE_URL"] = db.url
            env[f"GENAI_{service}__DATABASE_SCHEMA"] = db.schema or ""
        with ExitStack() as processes:
            stubs: list[Stub] = []
            for index in range(2):  # the first seeds the sample prompts for both
                workdir = tmp_path / f"replica-{index}"
                workdir.mkdir()
                seeding = () if index == 0 else ("--no-prompts",)
                served = processes.enter_context(
                    genai_serve(
                        workdir,
                        *seeding,
                        env={**env, "XDG_DATA_HOME": str(workdir / "xdg")},
                        timeout=120,
                    )
                )
                channel = create_channel(served.address, metadata=api_key_metadata(served.api_key))
                stack.push_async_callback(channel.close, None)
                stubs.append(gateway_service_pb2_grpc.GatewayServiceStub(channel))
            inferences_before = _inferences(triton.grpc_address)

            calls = [(stubs[i % 2], i % 4 >= 2) for i in range(DUPLICATES)]
            results = await asyncio.gather(*(_call(stub, streams) for stub, streams in calls))
            answered: list[tuple[Any, Any]] = []
            retried = []
            for (stub, streams), (kind, value) in zip(calls, results, strict=True):
                if kind == "ok":
                    answered.append(value)
                else:
                    retried.append(_until_answered(stub, streams, _assert_in_progress(value)))
            assert answered, "no duplicate got the outcome"
            assert retried, "no duplicate overlapped the first: the race was not run"
            answered += [value for _, value in await asyncio.gather(*retried)]
            later = await asyncio.gather(*(_call(stub, streams) for stub, streams in calls))
            assert all(kind == "ok" for kind, _ in later), later
            answered += [value for _, value in later]

            first = answered[0][0]
            assert first.metadata.usage.output_tokens == OUTPUT_TOKENS
            assert all(response == first for response, _ in answered)  # identical, bit for bit
            replays = [events for _, (_, events) in later if events is not None]
            assert replays
            assert all(events == ["start", "delta", "final"] for events in replays), replays
            inferences = _inferences(triton.grpc_address) - inferences_before

        quota = RedisQuotaLimiter(redis.url, key_prefix=redis.prefix)
        try:
            usage = await quota.usage("default")
        finally:
            await quota.aclose()
        log_rows = await _log_rows(db, "checkout-7f3a")

    assert inferences == 1
    assert log_rows == ["OK"]
    assert usage.requests == 1
    assert usage.tokens == first.metadata.usage.input_tokens + OUTPUT_TOKENS

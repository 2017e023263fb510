"""Complete and StreamComplete retried with the same `request_id`, on an in-process platform in
front of an OpenAI-compatible backend (a protocol-faithful local server, which counts the
generations it is asked for): a retry replays the first outcome without generating, charging
(quota usage in Redis) or logging again, whichever of the two RPCs either attempt used; a retry
while the first runs is ABORTED (REQUEST_IN_PROGRESS) with a RetryInfo; a different request
with the same id is refused; a failed or cancelled first attempt lets a retry run again; and a
request without an id never touches the idempotency table."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import sqlalchemy as sa
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc

from services.common import reasons
from services.common.clients import api_key_metadata, create_channel
from services.common.status import error_details
from services.gateway.adapters.idempotency_store import SqlIdempotencyStore, idempotency
from services.gateway.adapters.redis_quota import RedisQuotaLimiter
from services.gateway.adapters.request_log_store import SqlRequestLogStore
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer
from tests.support.redis import redis_namespace

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

gs = gateway_service_pb2
KEY_ENV = "GENAI_TEST_PROVIDER_KEY"
CATALOG = """
currency: USD
models:
  - name: hosted
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: good-0, kind: openai_compatible, endpoint: "{url}", backend_model: {model}}}
"""
PROMPT = """
name: echo
messages:
  - role: user
    content: "Say {{ word }}."
variables:
  - {name: word, type: string, required: true}
"""


class Gateway:
    """A running platform, its gateway stub (the dev tenant's key), the backend and stores."""

    def __init__(
        self, platform: Platform, key: str, backend: OpenAICompatibleServer, data: Path
    ) -> None:
        self.platform = platform
        self.backend = backend
        self.channel = create_channel(platform.address, metadata=api_key_metadata(key))
        self.stub: Stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)
        url = f"sqlite+aiosqlite:///{data / 'gateway.db'}"
        self.log = SqlRequestLogStore.from_url(url)
        self.claims = SqlIdempotencyStore.from_url(url)

    def generations(self) -> int:
        return sum(r.path.endswith("/chat/completions") for r in self.backend.requests)

    async def logged(self, request_id: str) -> list[str]:
        async with self.log._read() as conn:
            rows = await conn.execute(
                sa.text("SELECT status FROM gateway_request_log WHERE request_id = :id"),
                {"id": request_id},
            )
            return list(rows.scalars())

    async def claim_rows(self) -> int:
        async with self.claims._read() as conn:
            return int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(idempotency))
                ).scalar_one()
            )


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    async with (
        OpenAICompatibleServer(Behaviour(pace=0.05), api_key="sk-test") as backend,
        redis_namespace() as redis,
    ):
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(CATALOG.format(url=backend.base_url, model=MODEL))
        settings = PlatformSettings.model_validate(
            {
                "auth": {"mode": "api_key"},
                "server": {"port": 0, "grace_seconds": 2},
                "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}"},
                "gateway": {
                    "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
                    "quota": {
                        "backend": "redis",
                        "redis_url": redis.url,
                        "key_prefix": redis.prefix,
                    },
                    "online_evaluation": {"share": 0},
                },
                "router": {"catalog_file": str(catalog), "health_check_seconds": 60},
                "inference": {
                    "triton": {"launch": False},
                    "models": [
                        {
                            "name": "hosted",
                            "backends": [
                                {
                                    "id": "good-0",
                                    "kind": "openai_compatible",
                                    "endpoint": backend.base_url,
                                    "provider_model": MODEL,
                                    "api_key_env": KEY_ENV,
                                }
                            ],
                        }
                    ],
                },
            }
        )
        platform = await start_platform(settings)
        assert platform.tenants is not None
        credentials = await ensure_dev_credentials(platform.tenants, tmp_path / "dev-key")
        running = Gateway(platform, credentials.secret, backend, tmp_path)
        folder = tmp_path / "prompts"
        folder.mkdir()
        (folder / "echo.yaml").write_text(PROMPT)
        assert (await prompts_cli.seed_prompts(running.channel, folder)).failures == 0
        quota = RedisQuotaLimiter(redis.url, key_prefix=redis.prefix)
        running.usage = quota.usage  # type: ignore[attr-defined]
        try:
            yield running
        finally:
            await running.channel.close(None)
            await platform.stop(grace=1)
            await running.log.close()
            await running.claims.close()
            await quota.aclose()


def _request(request_id: str, word: str = "hello") -> gs.StreamCompleteRequest:
    request = gs.StreamCompleteRequest(prompt="echo", request_id=request_id)
    request.variables.update({"word": word})
    request.tags["team"] = "search"
    return request


def _unary(request: gs.StreamCompleteRequest) -> gs.CompleteRequest:
    return gs.CompleteRequest.FromString(request.SerializeToString())


async def _stream(stub: Stub, request: gs.StreamCompleteRequest) -> list[Any]:
    return [m async for m in stub.StreamComplete(request, timeout=30)]


def _event(message: object) -> str | None:
    assert isinstance(message, gs.StreamCompleteResponse)
    event: str | None = message.WhichOneof("event")
    return event


def _collected(messages: list[Any]) -> gs.CompleteResponse:
    """What Complete would have answered for this stream."""
    text = "".join(m.delta.text for m in messages if m.WhichOneof("event") == "delta")
    return gs.CompleteResponse(text=text, metadata=messages[-1].final)


async def test_retries_replay_the_first_outcome_without_generating_charging_or_logging(
    gateway: Any,
) -> None:
    stub: Stub = gateway.stub
    first = await _stream(stub, _request("order-1"))
    assert [m.WhichOneof("event") for m in first][:2] == ["start", "delta"]
    assert len(first) > 3  # streamed token by token
    answer = _collected(first)
    assert answer.text == "Hello, world!"
    usage = await gateway.usage("default")
    assert usage.requests == 1

    replay = await _stream(stub, _request("order-1"))
    assert [m.WhichOneof("event") for m in replay] == ["start", "delta", "final"]
    assert replay[0].start == first[0].start
    assert replay[1].delta.text == answer.text
    assert replay[2].final == first[-1].final  # the same request id, trace, usage, timings
    assert await stub.Complete(_unary(_request("order-1")), timeout=30) == answer

    unary_first = await stub.Complete(_unary(_request("order-2", "bye")), timeout=30)
    unary_again = await stub.Complete(_unary(_request("order-2", "bye")), timeout=30)
    assert unary_again == unary_first
    assert _collected(await _stream(stub, _request("order-2", "bye"))) == unary_first

    assert gateway.generations() == 2
    assert await gateway.usage("default") == type(usage)(
        requests=2,
        tokens=first[-1].final.usage.input_tokens
        + first[-1].final.usage.output_tokens
        + unary_first.metadata.usage.input_tokens
        + unary_first.metadata.usage.output_tokens,
        cost_micros=usage.cost_micros * 2,
    )
    assert await gateway.logged("order-1") == ["OK"]
    assert await gateway.logged("order-2") == ["OK"]


async def test_a_retry_while_the_first_runs_is_aborted_with_a_retry_delay(gateway: Any) -> None:
    stub: Stub = gateway.stub
    gateway.backend.behaviour = Behaviour(pace=0.3)  # 1.2 s of tokens
    first = stub.StreamComplete(_request("slow"), timeout=30)
    assert _event(await first.read()) == "start"
    for call in (
        stub.Complete(_unary(_request("slow")), timeout=30),
        _stream(stub, _request("slow")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as aborted:
            await call
        details = error_details(aborted.value)
        assert details.code == grpc.StatusCode.ABORTED
        assert details.reason == reasons.REQUEST_IN_PROGRESS
        assert details.retry_after is not None
        assert 0.05 <= details.retry_after <= 1.0
    rest = [m async for m in first]
    assert rest[-1].WhichOneof("event") == "final"
    replay = await stub.Complete(_unary(_request("slow")), timeout=30)
    assert replay.metadata == rest[-1].final
    assert gateway.generations() == 1
    assert await gateway.logged("slow") == ["OK"]
    assert (await gateway.usage("default")).requests == 1


async def test_the_same_id_on_a_different_request_is_refused(gateway: Any) -> None:
    stub: Stub = gateway.stub
    await stub.Complete(_unary(_request("mine")), timeout=30)
    different = _request("mine", "goodbye")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Complete(_unary(different), timeout=30)
    details = error_details(refused.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == reasons.REQUEST_ID_REUSED
    assert details.metadata["field"] == "request_id"
    other_tenant_or_id = _request("not-mine", "goodbye")
    assert (await stub.Complete(_unary(other_tenant_or_id), timeout=30)).text
    assert gateway.generations() == 2


async def test_a_failed_first_attempt_lets_a_retry_run_again(gateway: Any) -> None:
    stub: Stub = gateway.stub
    gateway.backend.behaviour = Behaviour(status=503)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Complete(_unary(_request("flaky")), timeout=30)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    gateway.backend.behaviour = Behaviour()
    answer = await stub.Complete(_unary(_request("flaky")), timeout=30)
    assert answer.text == "Hello, world!"
    assert await stub.Complete(_unary(_request("flaky")), timeout=30) == answer


async def test_a_cancelled_first_attempt_lets_a_retry_run_again(gateway: Any) -> None:
    stub: Stub = gateway.stub
    gateway.backend.behaviour = Behaviour(pace=0.3)
    first = stub.StreamComplete(_request("gone"), timeout=30)
    assert _event(await first.read()) == "start"
    assert _event(await first.read()) == "delta"  # it was generating
    first.cancel()
    gateway.backend.behaviour = Behaviour()
    answer = None
    for _ in range(100):  # the gateway releases the claim once it has seen the cancellation
        try:
            answer = await stub.Complete(_unary(_request("gone")), timeout=30)
        except grpc.aio.AioRpcError as error:
            refused = error_details(error)
        else:
            break
        assert refused.reason == reasons.REQUEST_IN_PROGRESS
        await asyncio.sleep(0.05)
    assert answer is not None, "the cancelled request's claim was never released"
    assert answer.text == "Hello, world!"
    assert gateway.generations() == 2


async def test_requests_without_an_id_never_touch_the_idempotency_table(gateway: Any) -> None:
    stub: Stub = gateway.stub
    answers = [await stub.Complete(_unary(_request("")), timeout=30) for _ in range(2)]
    assert answers[0].metadata.request_id != answers[1].metadata.request_id
    assert gateway.generations() == 2
    assert await gateway.claim_rows() == 0

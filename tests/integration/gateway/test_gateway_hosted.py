"""GatewayService in front of OpenAI-compatible backends (a protocol-faithful local server,
since hosted providers cannot be reached here): output schemas and the one repair attempt,
PII redaction across chunks, failover before the first token, the Prometheus endpoint, the
request log flushed at shutdown and read by `genai logs`, and quotas shared by two gateway
replicas through Redis."""

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from genai.common.v1 import generation_pb2
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2, experiment_service_pb2_grpc
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.router.v1 import router_service_pb2, router_service_pb2_grpc

from services.common import reasons
from services.common.clients import api_key_metadata, create_channel
from services.common.status import error_details
from services.gateway import logs_cli
from services.gateway.adapters.redis_quota import RedisQuotaLimiter
from services.gateway.adapters.request_log_store import SqlRequestLogStore
from services.gateway.core.request_log import RequestLogQuery
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

PROMPTS = {
    "city.yaml": """
name: city
messages:
  - role: user
    content: "Name the capital of {{ country }} as JSON."
variables:
  - {name: country, type: string, required: true}
output_schema:
  type: object
  required: [city]
  properties: {city: {type: string}}
processing:
  repair_invalid_json: true
""",
    "city-strict.yaml": """
name: city-strict
messages:
  - role: user
    content: "Name the capital of {{ country }} as JSON."
variables:
  - {name: country, type: string, required: true}
output_schema:
  type: object
  required: [city]
  properties: {city: {type: string}}
""",
    "contact.yaml": """
name: contact
messages:
  - role: user
    content: "Who do I write to?"
processing:
  pii_redaction:
    kinds: [email]
""",
}

CATALOG = """
currency: USD
models:
  - name: hosted
    capabilities: [chat, streaming, json_output]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: good-0, kind: openai_compatible, endpoint: "{good}", backend_model: {model}}}
  - name: flaky
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    quality_tier: 5
    pinned_only: true
    backends:
      - {{id: bad-0, kind: openai_compatible, endpoint: "{bad}", backend_model: {model}}}
      - {{id: good-1, kind: openai_compatible, endpoint: "{good}", backend_model: {model}}}
"""


def _backend(backend_id: str, endpoint: str) -> dict[str, Any]:
    return {
        "id": backend_id,
        "kind": "openai_compatible",
        "endpoint": endpoint,
        "provider_model": MODEL,
        "api_key_env": KEY_ENV,
    }


def _settings(
    good: OpenAICompatibleServer, bad: OpenAICompatibleServer, data: Path, **gateway: Any
) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(CATALOG.format(good=good.base_url, bad=bad.base_url, model=MODEL))
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
            "server": {"port": 0, "grace_seconds": 5},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
                "request_log": {"max_delay_seconds": 0.01},
                **gateway,
            },
            "router": {
                "catalog_file": str(catalog),
                "health_check_seconds": 60,
                "breaker_failures": 1000,
            },
            "inference": {
                "triton": {"launch": False},
                "models": [
                    {"name": "hosted", "backends": [_backend("good-0", good.base_url)]},
                    {
                        "name": "flaky",
                        "backends": [
                            _backend("bad-0", bad.base_url),
                            _backend("good-1", good.base_url),
                        ],
                    },
                ],
            },
        }
    )


class Running:
    """A platform with the test prompts pushed for the `default` tenant, and its admin key."""

    def __init__(self, platform: Platform, key: str) -> None:
        self.platform = platform
        self.key = key
        self.channel = create_channel(platform.address, metadata=api_key_metadata(key))
        self.stub: Stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channel)


@pytest.fixture
async def servers(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any]]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    async with (
        OpenAICompatibleServer(Behaviour(), api_key="sk-test") as good,
        OpenAICompatibleServer(Behaviour(status=503), api_key="sk-test") as bad,
    ):
        yield good, bad


async def _start(settings: PlatformSettings, data: Path) -> Running:
    platform = await start_platform(settings)
    assert platform.tenants is not None
    credentials = await ensure_dev_credentials(platform.tenants, data / "dev-key")
    running = Running(platform, credentials.secret)
    folder = data / "prompts"
    if not folder.exists():
        folder.mkdir()
        for name, text in PROMPTS.items():
            (folder / name).write_text(text)
    report = await prompts_cli.seed_prompts(running.channel, folder)
    assert report.failures == 0, report.lines
    return running


@pytest.fixture
async def running(servers: tuple[Any, Any], tmp_path: Path) -> AsyncIterator[Running]:
    good, bad = servers
    started = await _start(_settings(good, bad, tmp_path), tmp_path)
    yield started
    await started.channel.close(None)
    await started.platform.stop(grace=1)


def _request(prompt: str, model: str = "hosted", **variables: Any) -> gs.StreamCompleteRequest:
    request = gs.StreamCompleteRequest(prompt=prompt, routing={"model": model})
    request.variables.update(variables)
    return request


async def _stream(stub: Stub, request: gs.StreamCompleteRequest) -> list[Any]:
    return [m async for m in stub.StreamComplete(request, timeout=30)]


async def test_invalid_json_is_repaired_once_and_held_back_until_it_validates(
    running: Running, servers: tuple[OpenAICompatibleServer, Any]
) -> None:
    good, _ = servers
    good.behaviour = Behaviour(replies=[["Paris", " is the capital"], ['{"city": ', '"Paris"}']])

    messages = await _stream(running.stub, _request("city", country="France"))

    deltas = [m.delta.text for m in messages if m.HasField("delta")]
    final = messages[-1].final
    assert deltas == ['{"city": "Paris"}']  # nothing of the invalid first answer went out
    assert (final.processing.schema_valid, final.processing.repaired) == (True, True)
    assert final.output_json.struct_value["city"] == "Paris"
    assert [a.backend_id for a in final.attempts] == ["good-0", "good-0"]
    repair = good.requests[-1].body["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Paris is the capital"}
    assert "does not match the required JSON Schema" in repair[-1]["content"]


async def test_invalid_json_without_repair_fails_with_output_schema_violation(
    running: Running, servers: tuple[OpenAICompatibleServer, Any]
) -> None:
    good, _ = servers
    good.behaviour = Behaviour(tokens=["not", " json"])
    received: list[str] = []

    async def drain() -> None:
        async for message in running.stub.StreamComplete(
            _request("city-strict", country="France"), timeout=30
        ):
            received.append(message.WhichOneof("event"))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await drain()

    error = error_details(raised.value)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == reasons.OUTPUT_SCHEMA_VIOLATION
    assert received[0] == "start"
    assert "final" not in received


async def test_an_email_split_across_chunks_is_redacted_in_the_stream_and_the_log(
    running: Running, servers: tuple[OpenAICompatibleServer, Any]
) -> None:
    good, _ = servers
    good.behaviour = Behaviour(tokens=["Write to al", "ice@exam", "ple.com", " today."])

    messages = await _stream(running.stub, _request("contact"))

    text = "".join(m.delta.text for m in messages if m.HasField("delta"))
    final = messages[-1].final
    assert text == "Write to [EMAIL] today."
    assert final.processing.redaction_count == 1
    logs = await _logs(running.stub, 1)
    assert logs[0].output == "Write to [EMAIL] today."
    assert "alice" not in str(logs[0])


async def _logs(stub: Stub, count: int) -> list[gateway_pb2.RequestLogEntry]:
    for _ in range(200):
        entries = list((await stub.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=5)).entries)
        if len(entries) >= count:
            return entries
        await asyncio.sleep(0.02)
    raise AssertionError(f"the request log has fewer than {count} entries")


async def test_a_backend_failing_before_the_first_token_fails_over_invisibly(
    running: Running,
) -> None:
    finals = [
        (await _stream(running.stub, _request("contact", model="flaky")))[-1].final
        for _ in range(8)
    ]

    assert {f.backend_id for f in finals} == {"good-1"}
    failed_over = [f for f in finals if len(f.attempts) == 2]
    assert failed_over, "the router never put the failing backend first in 8 requests"
    for final in failed_over:
        first, second = final.attempts
        assert (first.backend_id, first.status) == ("bad-0", "UNAVAILABLE")
        assert (second.backend_id, second.status) == ("good-1", "OK")


async def test_a_stop_sequence_the_backend_streams_ends_the_answer_and_its_attempt(
    running: Running, servers: tuple[OpenAICompatibleServer, Any]
) -> None:
    """Some servers (`transformers serve`) stream the stop string itself: the gateway cuts the
    answer there and stops reading, and the attempt still counts as served, for the final and
    for the router (which counts it out of flight)."""
    good, _ = servers
    good.behaviour = Behaviour(tokens=("The", " capital", " is", " Paris", ".", " More"))
    request = _request("contact")
    request.parameters.stop.append("Paris")
    messages = await _stream(running.stub, request)
    final = messages[-1].final

    assert "".join(m.delta.text for m in messages if m.HasField("delta")) == "The capital is "
    assert final.finish_reason == generation_pb2.FINISH_REASON_STOP_SEQUENCE
    assert [(a.backend_id, a.status) for a in final.attempts] == [("good-0", "OK")]
    assert final.usage.output_tokens > 0
    router = router_service_pb2_grpc.RouterServiceStub(running.channel)
    health = await router.GetBackendHealth(
        router_service_pb2.GetBackendHealthRequest(model="hosted"), timeout=5
    )
    (backend,) = health.backends
    assert (backend.backend.id, backend.in_flight, backend.request_count) == ("good-0", 0, 1)


async def test_in_flight_completions_are_counted_while_they_stream(
    running: Running, servers: tuple[OpenAICompatibleServer, Any]
) -> None:
    good, _ = servers
    good.behaviour = Behaviour(tokens=["a"] * 40, pace=0.05)
    port = running.platform.metrics_port
    assert port is not None
    series = 'genai_gateway_in_flight{method="/genai.gateway.v1.GatewayService/StreamComplete"}'

    def in_flight() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        (line,) = [ln for ln in text.splitlines() if ln.startswith(series)]
        return float(line.split()[-1])

    call = running.stub.StreamComplete(_request("contact"), timeout=30)
    first = await call.read()
    assert isinstance(first, gs.StreamCompleteResponse)
    assert first.HasField("start")
    assert await asyncio.to_thread(in_flight) == 1.0
    call.cancel()
    for _ in range(100):  # the cancelled stream ends within a loop turn or two
        if await asyncio.to_thread(in_flight) == 0.0:
            break
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(in_flight) == 0.0
    await _stream(running.stub, _request("contact"))
    assert await asyncio.to_thread(in_flight) == 0.0


async def test_a_provider_sending_no_usage_is_charged_on_the_estimate_and_says_so(
    running: Running, servers: tuple[OpenAICompatibleServer, Any]
) -> None:
    """`hosted` names no tokenizer: a provider that ignores `include_usage` (as llama.cpp's
    server does) is charged on the conservative estimate, never on 0 input tokens, and the
    final, the request log and the metrics say so."""
    good, _ = servers
    good.behaviour = Behaviour(tokens=("Write", " to", " Ann."), usage=False)
    messages = await _stream(running.stub, _request("contact"))
    final = messages[-1].final

    # 64 + 8 per message + bytes of "user" and the message; the output's bytes + 1.
    assert final.usage.input_tokens == 64 + 8 + len("user") + len("Who do I write to?")
    assert final.usage.output_tokens == len("Write to Ann.") + 1
    assert final.usage.usage_source == generation_pb2.USAGE_SOURCE_ESTIMATE
    assert final.cost.nanos > 0
    (entry,) = await _logs(running.stub, 1)
    assert entry.metadata.usage == final.usage

    port = running.platform.metrics_port
    assert port is not None
    url = f"http://127.0.0.1:{port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert (
        'genai_gateway_usage_tokens_total{gen_ai_request_model="hosted",'
        'gen_ai_token_type="input",usage_source="estimate"} '
        f"{float(final.usage.input_tokens)}"
    ) in text


async def test_metrics_endpoint_has_the_genai_metrics_with_their_buckets(
    running: Running,
) -> None:
    await _stream(running.stub, _request("contact"))
    port = running.platform.metrics_port
    assert port is not None

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(scrape)

    assert 'gen_ai_client_operation_duration_seconds_bucket{error_type="",' in text
    assert 'le="0.01"' in text
    assert 'le="81.92"' in text
    assert 'gen_ai_client_token_usage_bucket{gen_ai_operation_name="chat"' in text
    assert 'gen_ai_token_type="output"' in text
    assert "gen_ai_client_operation_time_to_first_chunk_seconds_bucket" in text
    assert 'genai_gateway_requests_total{code="OK"' in text
    assert "genai_gateway_cost_total" in text
    assert 'genai_request_log_records_total{outcome="written"}' in text


async def test_the_request_log_is_flushed_at_shutdown_and_read_by_genai_logs(
    servers: tuple[OpenAICompatibleServer, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, bad = servers
    # A long batch delay, finals not waiting for their records: only the shutdown flush can
    # write these records in time.
    settings = _settings(
        good,
        bad,
        tmp_path,
        request_log={"max_delay_seconds": 60, "confirm_before_final": False},
    )
    started = await _start(settings, tmp_path)
    try:
        finals = await asyncio.gather(
            *(_stream(started.stub, _request("contact")) for _ in range(12))
        )
        ids = {messages[-1].final.request_id for messages in finals}
    finally:
        await started.channel.close(None)
        await started.platform.stop(grace=5)

    store = SqlRequestLogStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    try:
        page = await store.list(RequestLogQuery(tenant_id="default", page_size=100))
    finally:
        await store.close()
    assert {record.request_id for record in page.entries} == ids

    restarted = await _start(settings, tmp_path)
    try:
        target = ["--target", restarted.platform.address, "--api-key", restarted.key, "--json"]
        status = await logs_cli.main_async(target)
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
        one = sorted(ids)[0]
        narrowed = await logs_cli.main_async([*target, "--request-id", one, "--model", "hosted"])
        only = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
        other_model = await logs_cli.main_async([*target, "--model", "no-such-model"])
        none = [line for line in capsys.readouterr().out.splitlines() if line]
    finally:
        await restarted.channel.close(None)
        await restarted.platform.stop(grace=1)
    assert status == narrowed == other_model == 0
    assert {line["requestId"] for line in lines} == ids
    assert [line["requestId"] for line in only] == [one]
    assert none == []


async def test_every_request_whose_final_arrived_is_already_in_the_request_log(
    servers: tuple[OpenAICompatibleServer, Any], tmp_path: Path
) -> None:
    good, bad = servers
    # Batches would wait a minute: a final waits for its own record, group-committed.
    settings = _settings(good, bad, tmp_path, request_log={"max_delay_seconds": 60})
    started = await _start(settings, tmp_path)
    store = SqlRequestLogStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    try:
        finals = await asyncio.gather(
            *(_stream(started.stub, _request("contact")) for _ in range(12))
        )
        ids = {messages[-1].final.request_id for messages in finals}
        page = await store.list(RequestLogQuery(tenant_id="default", page_size=100))
        assert {record.request_id for record in page.entries} == ids  # no waiting, no shutdown
        assert all(record.status == "OK" for record in page.entries)
    finally:
        await store.close()
        await started.channel.close(None)
        await started.platform.stop(grace=1)


async def test_two_gateway_replicas_share_quotas_through_redis(
    servers: tuple[OpenAICompatibleServer, Any], tmp_path: Path
) -> None:
    good, bad = servers
    async with redis_namespace() as redis:
        quota = {"backend": "redis", "redis_url": redis.url, "key_prefix": redis.prefix}
        refused = await _two_replicas(_settings(good, bad, tmp_path, quota=quota), tmp_path)
        assert await redis.keys()  # the counts live in Redis

    error = error_details(refused)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert any("requests_per_minute" in v.description for v in error.quota_violations)


async def test_usage_is_reported_while_streaming_and_settled_before_the_final(
    servers: tuple[OpenAICompatibleServer, Any], tmp_path: Path
) -> None:
    """With quotas in Redis, a stream's tokens so far reach its in-flight reservation while it
    streams (what a sweep would settle were this gateway killed), and the final waits for the
    settlement: with Redis holding writes for 0.8 s from the third delta on, the final arrives
    only after them, although the backend is done well before."""
    good, bad = servers
    good.behaviour = Behaviour(tokens=[f" word{i}" for i in range(6)], pace=0.1)
    async with redis_namespace() as redis:
        quota = {
            "backend": "redis",
            "redis_url": redis.url,
            "key_prefix": redis.prefix,
            "report_seconds": 0.05,
        }
        started = await _start(_settings(good, bad, tmp_path, quota=quota), tmp_path)
        limiter = RedisQuotaLimiter(redis.url, key_prefix=redis.prefix)
        progress_key = f"{redis.prefix}{{default}}:progress"
        reported: list[int] = []
        deltas, paused_at, final_after = 0, 0.0, 0.0
        try:
            async for message in started.stub.StreamComplete(_request("contact"), timeout=30):
                if message.HasField("delta"):
                    deltas += 1
                    values = await cast("Awaitable[list[str]]", redis.client.hvals(progress_key))
                    reported += [int(value) for value in values]
                    if deltas == 3:
                        paused_at = time.monotonic()
                        await redis.client.client_pause(800, all=False)  # writes only
                elif message.HasField("final"):
                    final_after = time.monotonic() - paused_at
                    usage = message.final.usage
            settled = await limiter.usage("default")
            assert settled.tokens == usage.input_tokens + usage.output_tokens
            assert settled.requests == 1
            assert await limiter.in_flight("default") == 0
        finally:
            await redis.client.client_unpause()
            await limiter.aclose()
            await started.channel.close(None)
            await started.platform.stop(grace=1)
    assert final_after >= 0.75, f"the final came {final_after:.2f} s into a 0.8 s write pause"
    assert reported, "no progress was reported while the stream went on"
    assert reported == sorted(reported)
    # What InferenceService counted while streaming (`hosted` names no tokenizer: the
    # estimate, which never undercounts) until the provider's usage replaced it at the end.
    assert reported[-1] > 0


async def _two_replicas(settings: PlatformSettings, tmp_path: Path) -> grpc.aio.AioRpcError:
    """Two platforms on one database and one Redis; tenant `shared` may make 2 requests per
    minute: one on each replica, then a third on the first, which is refused and returned."""
    first = await _start(settings, tmp_path)
    second = await _start(settings, tmp_path)
    try:
        admin = first.stub
        await admin.CreateTenant(
            gs.CreateTenantRequest(
                tenant=gateway_pb2.Tenant(
                    id="shared", quota=gateway_pb2.TenantQuota(requests_per_minute=2)
                )
            ),
            timeout=5,
        )
        key = (
            await admin.CreateApiKey(gs.CreateApiKeyRequest(tenant_id="shared"), timeout=5)
        ).secret
        channels = [
            create_channel(r.platform.address, metadata=api_key_metadata(key))
            for r in (first, second)
        ]
        stubs = [gateway_service_pb2_grpc.GatewayServiceStub(c) for c in channels]
        folder = tmp_path / "prompts"
        assert (await prompts_cli.seed_prompts(channels[0], folder)).failures == 0

        await _stream(stubs[0], _request("contact"))
        await _stream(stubs[1], _request("contact"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _stream(stubs[0], _request("contact"))
        for channel in channels:
            await channel.close(None)
    finally:
        for replica in (first, second):
            await replica.channel.close(None)
            await replica.platform.stop(grace=1)
    return refused.value


async def test_experiment_requests_get_sticky_variants_exposures_and_feedback_outcomes(
    running: Running,
) -> None:
    experiments = experiment_service_pb2_grpc.ExperimentServiceStub(running.channel)
    await experiments.CreateExperiment(
        experiment_service_pb2.CreateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                name="contact-tone",
                prompt="contact",
                variants=[
                    experiment_pb2.Variant(name="control", weight=1),
                    experiment_pb2.Variant(
                        name="treatment", weight=1, parameters={"temperature": 0.3}
                    ),
                ],
                control_variant="control",
                unit=experiment_pb2.ASSIGNMENT_UNIT_USER,
                metrics=[
                    experiment_pb2.MetricSpec(
                        name="thumbs_up", kind=experiment_pb2.METRIC_KIND_BOOLEAN
                    )
                ],
            ),
            start=True,
        ),
        timeout=5,
    )

    def request(user: str) -> gs.StreamCompleteRequest:
        return gs.StreamCompleteRequest(prompt="contact", experiment="contact-tone", user_id=user)

    served = {}
    for index in range(30):
        messages = await _stream(running.stub, request(f"user-{index}"))
        start, final = messages[0].start, messages[-1].final
        assert (start.experiment, start.variant) == ("contact-tone", final.variant)
        served[final.request_id] = final.variant
        await running.stub.RecordFeedback(
            gs.RecordFeedbackRequest(
                request_id=final.request_id,
                metric="thumbs_up",
                boolean_value=final.variant == "treatment",
            ),
            timeout=5,
        )
    again = (await _stream(running.stub, request("user-0")))[-1].final
    first_variant = next(iter(served.values()))
    no_unit = await _failure(
        running.stub.StreamComplete(
            gs.StreamCompleteRequest(prompt="contact", experiment="contact-tone"), timeout=5
        )
    )
    unknown = await _failure_unary(
        running.stub.RecordFeedback(
            gs.RecordFeedbackRequest(request_id="nope", metric="thumbs_up", boolean_value=True)
        )
    )

    assert again.variant == first_variant
    assert {"control", "treatment"} == set(served.values())
    assert no_unit.code == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    for _ in range(100):  # exposures are recorded in the background
        results = (
            await experiments.GetExperimentResults(
                experiment_service_pb2.GetExperimentResultsRequest(name="contact-tone"), timeout=5
            )
        ).results
        if sum(v.exposures for v in results.variants) >= 31:
            break
        await asyncio.sleep(0.02)
    by_variant = {v.variant: v for v in results.variants}
    assert sum(v.exposures for v in results.variants) == 31
    treatment = {m.metric: m for m in by_variant["treatment"].metrics}["thumbs_up"]
    control = {m.metric: m for m in by_variant["control"].metrics}["thumbs_up"]
    assert (control.mean, treatment.mean) == (0.0, 1.0)
    assert treatment.comparison.difference == pytest.approx(1.0)


async def test_feedback_outside_experiments_is_scored_online_if_yes_or_no(
    running: Running,
) -> None:
    """Without an experiment, a thumbs up or down still goes to online evaluation; a numeric
    value has nowhere to go and is refused."""
    final = (await _stream(running.stub, _request("contact")))[-1].final
    await _logs(running.stub, 1)

    await running.stub.RecordFeedback(
        gs.RecordFeedbackRequest(
            request_id=final.request_id, metric="thumbs_up", boolean_value=True
        )
    )
    error = await _failure_unary(
        running.stub.RecordFeedback(
            gs.RecordFeedbackRequest(
                request_id=final.request_id, metric="rating", numeric_value=4.0
            )
        )
    )

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    registry = running.platform.metrics_registry
    assert registry is not None
    for _ in range(100):  # scored in the background
        scored = registry.get_sample_value(
            "genai_online_evaluation_score_count", {"prompt": "contact", "scorer": "user_feedback"}
        )
        if scored:
            break
        await asyncio.sleep(0.02)
    assert scored == 1


async def _failure(call: Any) -> Any:
    async def drain() -> None:
        async for _ in call:
            continue

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await drain()
    return error_details(raised.value)


async def _failure_unary(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return error_details(raised.value)


async def test_a_quality_drop_in_live_traffic_raises_an_alert_and_normal_traffic_does_not(
    servers: tuple[OpenAICompatibleServer, Any], tmp_path: Path
) -> None:
    """Every completion scored (share 1), a 50-score warm-up baseline: 150 normal answers
    raise nothing; then the backend starts refusing and the `no_refusal` stream fires."""
    good, bad = servers
    online = {"share": 1.0, "warmup_scores": 50}
    started = await _start(_settings(good, bad, tmp_path, online_evaluation=online), tmp_path)
    registry = started.platform.metrics_registry
    assert registry is not None

    def firing() -> float | None:
        return registry.get_sample_value(
            "genai_quality_alerts_firing",
            {"prompt": "contact", "version": "1", "scorer": "no_refusal"},
        )

    async def traffic(count: int) -> None:
        for _ in range(count):
            await _stream(started.stub, _request("contact"))

    async def settled() -> None:
        for _ in range(200):
            scored = registry.get_sample_value(
                "genai_online_evaluation_records_total", {"outcome": "scored"}
            )
            if scored is not None and scored >= completions[0]:
                return
            await asyncio.sleep(0.02)

    completions = [150]
    try:
        good.behaviour = Behaviour(tokens=["Write to ", "our team", " today."])
        await traffic(150)
        await settled()
        before = firing()
        good.behaviour = Behaviour(tokens=["I'm sorry, ", "I can't help ", "with that."])
        completions[0] = 300
        await traffic(150)
        await settled()
        after = firing()
        evaluation = evaluation_service_pb2_grpc.EvaluationServiceStub(started.channel)
        for _ in range(100):  # the alert is saved in the background
            alerts = (
                await evaluation.ListQualityAlerts(
                    evaluation_service_pb2.ListQualityAlertsRequest(prompt="contact"), timeout=5
                )
            ).alerts
            if alerts:
                break
            await asyncio.sleep(0.02)
    finally:
        await started.channel.close(None)
        await started.platform.stop(grace=1)

    assert not before
    assert after == 1
    [alert] = alerts
    assert (alert.scorer, alert.prompt_version) == ("no_refusal", 1)
    assert alert.state == evaluation_pb2.ALERT_STATE_FIRING
    assert alert.observed_mean < alert.baseline_mean

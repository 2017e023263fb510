"""RouterService's RPCs over real gRPC (no Triton needed): the catalog, decisions and their
reasons, outcome reports that move live statistics, and precise errors."""

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.common.v1 import generation_pb2, money_pb2, routing_pb2
from genai.router.v1 import router_pb2, router_service_pb2, router_service_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from services.common import reasons
from services.common.status import ParsedError, error_details
from services.platform.runner import start_platform
from services.platform.settings import PlatformSettings
from tests.support.openai_server import OpenAICompatibleServer

pb = router_service_pb2

if TYPE_CHECKING:
    Stub = router_service_pb2_grpc.RouterServiceAsyncStub
else:
    Stub = router_service_pb2_grpc.RouterServiceStub

CATALOG = """
currency: USD
models:
  - name: small
    capabilities: [chat, streaming]
    max_context_tokens: 2048
    max_output_tokens: 512
    price_per_million_tokens: {input: 0.1, output: 0.2}
    quality_tier: 2
    backends: [{id: s-0, kind: openai_compatible, endpoint: "http://127.0.0.1:1/v1", backend_model: s}]
  - name: large
    capabilities: [chat, streaming, json_output]
    max_context_tokens: 32768
    max_output_tokens: 4096
    price_per_million_tokens: {input: 3, output: 15}
    quality_tier: 8
    latency_targets: {first_token_ms: 300, per_output_token_ms: 20}
    backends: [{id: l-0, kind: openai_compatible, endpoint: "http://127.0.0.1:1/v1", backend_model: l}]
"""


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    provider = OpenAICompatibleServer()
    await provider.start()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.replace("http://127.0.0.1:1/v1", provider.base_url))
    settings = PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["router"],
            "server": {"port": 0, "grace_seconds": 0},
            "router": {"catalog_file": str(catalog)},
        }
    )
    platform = await start_platform(settings)
    try:
        async with grpc.aio.insecure_channel(platform.address) as channel:
            yield router_service_pb2_grpc.RouterServiceStub(channel)
    finally:
        await platform.stop(grace=0)
        await provider.stop()


async def _error(call: Awaitable[Any]) -> ParsedError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return error_details(raised.value)


async def test_the_catalog_pages_and_names_its_prices(stub: Stub) -> None:
    first = await stub.ListModels(pb.ListModelsRequest(page_size=1))
    assert [m.name for m in first.models] == ["large"]
    rest = await stub.ListModels(pb.ListModelsRequest(page_token=first.next_page_token))
    assert ([m.name for m in rest.models], rest.next_page_token) == (["small"], "")
    large = (await stub.GetModel(pb.GetModelRequest(name="large"))).model
    assert (large.output_price_per_million_tokens.units, large.quality_tier) == (15, 8)
    assert large.latency_targets.first_token_duration.ToMilliseconds() == 300
    assert routing_pb2.CAPABILITY_JSON_OUTPUT in large.capabilities
    missing = await _error(stub.GetModel(pb.GetModelRequest(name="medium")))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")


async def test_a_decision_ranks_prices_and_explains(stub: Stub) -> None:
    decision = (
        await stub.Route(
            pb.RouteRequest(
                input_tokens=1000,
                max_output_tokens=500,
                preferences=routing_pb2.RoutingPreferences(policy=routing_pb2.ROUTING_POLICY_COST),
            )
        )
    ).decision
    assert [c.model for c in decision.candidates] == ["small", "large"]
    cheapest = decision.candidates[0]
    assert (cheapest.estimated_cost.units, cheapest.estimated_cost.nanos) == (0, 200_000)
    assert cheapest.reason.startswith("cost: best, estimated cost 0.0002 USD")
    assert decision.policy == routing_pb2.ROUTING_POLICY_COST
    assert len(decision.decision_id) == 32

    json_only = (
        await stub.Route(
            pb.RouteRequest(
                input_tokens=10,
                max_output_tokens=10,
                preferences=routing_pb2.RoutingPreferences(
                    required_capabilities=[routing_pb2.CAPABILITY_JSON_OUTPUT],
                    max_cost=money_pb2.Money(currency_code="USD", units=1),
                ),
            )
        )
    ).decision
    assert [c.model for c in json_only.candidates] == ["large"]
    assert [(r.model, r.reason) for r in json_only.rejected] == [("small", "lacks json_output")]


async def test_nothing_eligible_and_bad_requests_are_precise(stub: Stub) -> None:
    none = await _error(stub.Route(pb.RouteRequest(input_tokens=40_000, max_output_tokens=100)))
    assert (none.code, none.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.NO_ELIGIBLE_MODEL,
    )
    assert none.metadata == {
        "small": "context 2048 < 40000 + 100 tokens",
        "large": "context 32768 < 40000 + 100 tokens",
    }
    unknown = await _error(
        stub.Route(
            pb.RouteRequest(
                input_tokens=1,
                max_output_tokens=10,
                preferences=routing_pb2.RoutingPreferences(policy=99),  # type: ignore[arg-type]
            )
        )
    )
    # An enum number the contract does not declare is refused by the contract-wide guard.
    assert unknown.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in unknown.field_violations} == {"preferences.policy"}
    bad = await _error(
        stub.Route(
            pb.RouteRequest(
                input_tokens=-1,
                max_output_tokens=10,
                preferences=routing_pb2.RoutingPreferences(
                    required_capabilities=[routing_pb2.CAPABILITY_UNSPECIFIED],
                    max_cost=money_pb2.Money(currency_code="EUR", units=1),
                ),
            )
        )
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in bad.field_violations} == {
        "preferences.required_capabilities[0]",
        "preferences.max_cost.currency_code",
    }
    negative = await _error(stub.Route(pb.RouteRequest(input_tokens=-1, max_output_tokens=0)))
    assert {v.field for v in negative.field_violations} == {"input_tokens", "max_output_tokens"}
    report = await _error(stub.ReportOutcome(pb.ReportOutcomeRequest()))
    assert {v.field for v in report.field_violations} == {"model", "backend_id", "result"}


async def test_reported_outcomes_feed_statistics_and_the_breaker(stub: Stub) -> None:
    request = pb.RouteRequest(input_tokens=10, max_output_tokens=10)
    decision = (await stub.Route(request)).decision
    before = {
        s.backend.id: s
        for s in (await stub.GetBackendHealth(pb.GetBackendHealthRequest())).backends
    }
    assert before["s-0"].in_flight == 1
    await stub.ReportOutcome(
        pb.ReportOutcomeRequest(
            decision_id=decision.decision_id,
            model="small",
            backend_id="s-0",
            result=pb.ATTEMPT_RESULT_SUCCESS,
            first_token_duration=Duration(nanos=40_000_000),
            total_duration=Duration(nanos=130_000_000),
            usage=generation_pb2.TokenUsage(input_tokens=10, output_tokens=10),
        )
    )
    for _ in range(5):
        await stub.ReportOutcome(
            pb.ReportOutcomeRequest(
                model="small",
                backend_id="s-0",
                result=pb.ATTEMPT_RESULT_FAILED_BEFORE_FIRST_TOKEN,
                error="connection refused",
            )
        )
    [small] = (await stub.GetBackendHealth(pb.GetBackendHealthRequest(model="small"))).backends
    assert small.in_flight == 0
    assert (small.request_count, small.failure_count) == (6, 5)
    assert small.circuit == router_pb2.CIRCUIT_STATE_OPEN
    assert small.latency.first_token_ewma_duration.ToMilliseconds() == 40
    assert small.latency.per_output_token_ewma_duration.ToMilliseconds() == 10
    assert small.last_error == "connection refused"
    decision = (await stub.Route(request)).decision
    assert [c.model for c in decision.candidates] == ["large"]
    assert decision.rejected[0].reason == "no available backend: s-0 circuit open"


async def test_openai_compatible_endpoints_are_health_checked(tmp_path: Path) -> None:
    async with OpenAICompatibleServer(api_key="secret") as provider:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(
            CATALOG.replace("http://127.0.0.1:1/v1", provider.base_url, 1)  # small: reachable
        )
        settings = PlatformSettings.model_validate(
            {
                "auth": {"mode": "none"},
                "services": ["router"],
                "server": {"port": 0, "grace_seconds": 0},
                "router": {"catalog_file": str(catalog), "health_check_seconds": 0.2},
            }
        )
        platform = await start_platform(settings)
        try:
            async with grpc.aio.insecure_channel(platform.address) as channel:
                stub = router_service_pb2_grpc.RouterServiceStub(channel)
                statuses = {
                    s.backend.id: s
                    for s in (await stub.GetBackendHealth(pb.GetBackendHealthRequest())).backends
                }
        finally:
            await platform.stop(grace=0)
    # 401 without a key still proves the endpoint is up; nothing listens on port 1.
    assert statuses["s-0"].health == router_pb2.HEALTH_STATE_SERVING
    assert statuses["l-0"].health == router_pb2.HEALTH_STATE_NOT_SERVING
    assert statuses["l-0"].last_error == "health check: ConnectError"


async def test_qualifying_models_with_every_backend_down_are_unavailable_with_retry_info(
    tmp_path: Path,
) -> None:
    """`large`'s only endpoint refuses connections, so its health check fails at start: a
    route that only `large` could take is UNAVAILABLE (BACKEND_UNAVAILABLE) with a RetryInfo
    until its next probe, naming the backend and keeping the other model's static reason; a
    route `small` can take is served by it."""
    interval = 30.0
    async with OpenAICompatibleServer() as provider:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(CATALOG.replace("http://127.0.0.1:1/v1", provider.base_url, 1))
        settings = PlatformSettings.model_validate(
            {
                "auth": {"mode": "none"},
                "services": ["router"],
                "server": {"port": 0, "grace_seconds": 0},
                "router": {"catalog_file": str(catalog), "health_check_seconds": interval},
            }
        )
        platform = await start_platform(settings)
        try:
            async with grpc.aio.insecure_channel(platform.address) as channel:
                stub: Stub = router_service_pb2_grpc.RouterServiceStub(channel)
                pinned = await _error(
                    stub.Route(
                        pb.RouteRequest(
                            input_tokens=10,
                            max_output_tokens=10,
                            preferences=routing_pb2.RoutingPreferences(model="large"),
                        )
                    )
                )
                json_only = await _error(
                    stub.Route(
                        pb.RouteRequest(
                            input_tokens=10,
                            max_output_tokens=10,
                            preferences=routing_pb2.RoutingPreferences(
                                required_capabilities=[routing_pb2.CAPABILITY_JSON_OUTPUT]
                            ),
                        )
                    )
                )
                served = (
                    await stub.Route(pb.RouteRequest(input_tokens=10, max_output_tokens=10))
                ).decision
        finally:
            await platform.stop(grace=0)

    for error, other in ((pinned, "not the pinned model large"), (json_only, "lacks json_output")):
        assert (error.code, error.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            reasons.BACKEND_UNAVAILABLE,
        )
        assert error.retry_after is not None
        assert interval - 10 < error.retry_after <= interval
        assert set(error.metadata) == {"small", "large/l-0", "next_probe_seconds"}
        assert error.metadata["small"] == other
        assert error.metadata["large/l-0"] == (
            "failing health checks (last check: ConnectError), next probe in "
            f"{error.metadata['next_probe_seconds']} s"
        )
        assert float(error.metadata["next_probe_seconds"]) == pytest.approx(
            error.retry_after, abs=0.051
        )
        assert error.message.startswith(
            "every backend of the models that qualify is out: large/l-0: failing health checks"
        )
    assert [c.model for c in served.candidates] == ["small"]
    assert served.rejected[0].reason == "no available backend: l-0 failing health checks"

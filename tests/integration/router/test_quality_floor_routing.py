"""The quality-floor policy end to end, in one platform process (prompt, router, inference,
gateway, experiment and evaluation) whose two models are scripted OpenAI-compatible servers:
`cheap` always answers wrong, `good` right.

Before any evaluation the policy falls back to cost, saying so; evaluation runs of the prompt
pinned to each model produce reports, and each finished run refreshes the router's scores at
once (pushed in process), so the next route goes to the cheapest model meeting the floor, its
reason naming the report. The floor, dataset and scorer reach the router from the prompt
version's routing and from the request's preferences alike (the gateway's merge)."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.common.v1 import routing_pb2
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from genai.router.v1 import router_service_pb2, router_service_pb2_grpc

from services.common.clients import create_channel
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer

if TYPE_CHECKING:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    RouterStub = router_service_pb2_grpc.RouterServiceAsyncStub
else:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub
    RouterStub = router_service_pb2_grpc.RouterServiceStub

pb = evaluation_pb2
spb = evaluation_service_pb2
FLOOR = routing_pb2.ROUTING_POLICY_QUALITY_FLOOR

PROMPT = """
name: capital
evaluation_gate:
  dataset: capitals
  thresholds: [{scorer: answer, min_mean: 0.5}]
messages:
  - role: user
    content: "Name the capital of {{ country }}."
variables:
  - {name: country, type: string, required: true, max_length: 40}
parameters: {max_tokens: 8}
routing: {policy: quality_floor, min_quality_score: 0.75}
"""

CATALOG = """
currency: USD
models:
  - name: cheap
    capabilities: [chat, streaming]
    max_context_tokens: 4096
    max_output_tokens: 512
    price_per_million_tokens: {{input: 0.1, output: 0.2}}
    backends: [{{id: cheap-0, kind: openai_compatible, endpoint: "{cheap}", backend_model: {model}}}]
  - name: good
    capabilities: [chat, streaming]
    max_context_tokens: 4096
    max_output_tokens: 512
    price_per_million_tokens: {{input: 1, output: 2}}
    backends: [{{id: good-0, kind: openai_compatible, endpoint: "{good}", backend_model: {model}}}]
"""

CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima")]


@dataclass
class Harness:
    platform: Platform
    router: RouterStub
    gateway: GatewayStub
    evaluation: EvaluationStub


def _settings(cheap: str, good: str, data: Path) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(CATALOG.format(cheap=cheap, good=good, model=MODEL))

    def served(name: str, endpoint: str) -> dict[str, Any]:
        return {
            "name": name,
            "backends": [
                {
                    "id": f"{name}-0",
                    "kind": "openai_compatible",
                    "endpoint": endpoint,
                    "provider_model": MODEL,
                }
            ],
        }

    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["prompt", "router", "inference", "gateway", "experiment", "evaluation"],
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "experiment": {"database_url": f"sqlite+aiosqlite:///{data / 'experiments.db'}"},
            "evaluation": {
                "database_url": f"sqlite+aiosqlite:///{data / 'evaluation.db'}",
                "max_concurrency": 1,
            },
            "gateway": {"database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}"},
            "router": {
                "catalog_file": str(catalog),
                "health_check_seconds": 60,
                "quality_scores_seconds": 3600,  # only the push can refresh within the test
            },
            "inference": {
                "triton": {"launch": False},
                "models": [served("cheap", cheap), served("good", good)],
            },
        }
    )


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    wrong = Behaviour(tokens=("I", " do", " not", " know"))
    right = Behaviour(replies=[[city] for _, city in CAPITALS] * 20)
    async with OpenAICompatibleServer(wrong) as cheap, OpenAICompatibleServer(right) as good:
        platform = await start_platform(_settings(cheap.base_url, good.base_url, tmp_path))
        channel = create_channel(platform.address)
        try:
            folder = tmp_path / "prompts"
            folder.mkdir()
            (folder / "capital.yaml").write_text(PROMPT)
            seeded = await prompts_cli.seed_prompts(channel, folder, label="production")
            assert seeded.failures == 0, seeded.lines
            evaluation = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
            await evaluation.CreateDataset(
                spb.CreateDatasetRequest(dataset=pb.Dataset(name="capitals", prompt="capital"))
            )
            examples = []
            for country, city in CAPITALS:
                example = pb.Example(reference=city)
                example.inputs.update({"country": country})
                examples.append(example)
            await evaluation.AddExamples(
                spb.AddExamplesRequest(dataset="capitals", examples=examples)
            )
            yield Harness(
                platform,
                router_service_pb2_grpc.RouterServiceStub(channel),
                gateway_service_pb2_grpc.GatewayServiceStub(channel),
                evaluation,
            )
        finally:
            await channel.close(None)
            await platform.stop(grace=0)


async def _evaluate(stub: EvaluationStub, model: str) -> pb.EvaluationReport:
    run = pb.EvaluationRun(
        prompt="capital",
        dataset="capitals",
        model=model,
        scorers=[
            pb.Scorer(name="latency", latency=pb.LatencyScorer()),
            pb.Scorer(name="answer", contains=pb.ContainsScorer()),
        ],
    )
    events = [
        e async for e in stub.StartEvaluationRun(spb.StartEvaluationRunRequest(run=run), timeout=60)
    ]
    report = events[-1].report
    assert report.id, events[-1]
    return report


async def _route(stub: RouterStub, **preferences: Any) -> Any:
    response = await stub.Route(
        router_service_pb2.RouteRequest(
            prompt="capital",
            input_tokens=10,
            max_output_tokens=8,
            preferences=routing_pb2.RoutingPreferences(**preferences),
        )
    )
    return response.decision


def _models(decision: Any) -> list[str]:
    return [c.model for c in decision.candidates]


async def _served_by(stub: GatewayStub, **routing: Any) -> str:
    request = gateway_service_pb2.CompleteRequest(prompt="capital")
    request.variables.update({"country": "France"})
    if routing:
        request.routing.CopyFrom(routing_pb2.RoutingPreferences(**routing))
    return (await stub.Complete(request, timeout=30)).metadata.model


async def test_scores_learned_from_evaluations_route_to_the_cheapest_model_meeting_the_floor(
    harness: Harness,
) -> None:
    floor = {"policy": FLOOR, "min_quality_score": 0.75}

    # No report yet: visibly cost.
    before = await _route(harness.router, **floor)
    assert before.policy == routing_pb2.ROUTING_POLICY_COST
    assert before.fallback == (
        "no evaluation report for prompt capital on dataset capitals; fell back to cost"
    )
    assert _models(before) == ["cheap", "good"]
    assert before.candidates[0].reason.startswith(before.fallback)
    assert await _served_by(harness.gateway) == "cheap"  # the prompt's own routing

    cheap = await _evaluate(harness.evaluation, "cheap")
    assert {s.scorer: s.mean for s in cheap.summaries}["answer"] == 0.0
    # Only a report below the floor: the highest score, saying so.
    below = await _route(harness.router, **floor)
    assert below.policy == FLOOR
    assert below.fallback.startswith(
        "no model's latest evaluation of prompt capital on dataset capitals meets floor 0.75 "
        f"(best: cheap 0.000 in report {cheap.id})"
    )

    good = await _evaluate(harness.evaluation, "good")
    assert {s.scorer: s.mean for s in good.summaries}["answer"] == 1.0
    after = await _route(harness.router, **floor)  # pushed: no waiting for a refresh
    assert after.policy == FLOOR
    assert after.fallback == ""
    assert _models(after) == ["good"]
    best = after.candidates[0]
    assert (best.quality_report_id, best.quality_score) == (good.id, 1.0)
    assert best.reason.startswith(
        f"quality_floor: best, good: report {good.id} on dataset capitals scored 1.000 >= "
        "floor 0.75 (answer, prompt version 1)"
    )
    assert [(r.model, r.reason) for r in after.rejected] == [
        ("cheap", f"report {cheap.id} on dataset capitals scored 0.000 < floor 0.75 (answer)")
    ]

    # Through the gateway: the prompt version's routing (quality floor, the gate's dataset) ...
    assert await _served_by(harness.gateway) == "good"
    # ... a request's floor of 0 (merged over the version's 0.75) admits the cheap model's
    # score of 0, and it is cheaper ...
    assert await _served_by(harness.gateway, min_quality_score=0.0) == "cheap"
    # ... and a request naming a dataset without reports falls back to cost.
    await harness.evaluation.CreateDataset(
        spb.CreateDatasetRequest(dataset=pb.Dataset(name="empty", prompt="capital"))
    )
    assert await _served_by(harness.gateway, quality_dataset="empty") == "cheap"
    other = await _route(harness.router, quality_dataset="empty", **floor)
    assert other.fallback == (
        "no evaluation report for prompt capital on dataset empty; fell back to cost"
    )


async def test_a_quality_floor_needs_a_floor_and_a_known_dataset(harness: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _route(harness.router, policy=FLOOR)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "preferences.min_quality_score" in (raised.value.details() or "")

    unknown = await harness.router.Route(
        router_service_pb2.RouteRequest(
            prompt="nonexistent",
            input_tokens=10,
            max_output_tokens=8,
            preferences=routing_pb2.RoutingPreferences(policy=FLOOR, min_quality_score=0.5),
        )
    )
    assert unknown.decision.fallback == (
        "prompt nonexistent has no evaluation gate and the request names no quality_dataset; "
        "fell back to cost"
    )

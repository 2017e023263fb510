"""EvaluationService over real gRPC, in front of a platform (prompt, router, inference, gateway,
experiment) whose only model backend is a scripted OpenAI-compatible server: datasets and
example checks, runs with scorers, repeats, failed generations, judges and embeddings,
baseline comparisons, cancellation, idempotent retries and error statuses.

The service runs on a server of its own, wired by `services.evaluation.server.registration`
with gateway and prompt stubs over gRPC to the platform, and a fake InferenceService for
embeddings (the scripted backend serves chat only). Runs use one generation at a time, so the
scripted replies are consumed in dataset order (example by example, repeats together, a judge
call right after the output it grades)."""

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.gateway.v1 import gateway_service_pb2_grpc
from genai.inference.v1 import inference_pb2, inference_service_pb2
from genai.prompt.v1 import prompt_service_pb2_grpc

from services.common import reasons
from services.common.auth import AnonymousAuthenticator
from services.common.clients import create_channel
from services.common.interceptors import default_interceptors
from services.common.server import RunningServer, ServiceRegistration, start_server
from services.common.status import ParsedError, error_details
from services.common.validation import Validators
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.evaluation.config import EvaluationSettings
from services.evaluation.core.model import NewQualityAlert, RunState
from services.evaluation.runs import InferenceStub
from services.evaluation.server import registration
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from services.prompt.client import PromptClient
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer

if TYPE_CHECKING:
    Stub = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
else:
    Stub = evaluation_service_pb2_grpc.EvaluationServiceStub

pb = evaluation_pb2
spb = evaluation_service_pb2

PROMPTS = {
    "capital.yaml": """
name: capital
messages:
  - role: user
    content: "Name the capital of {{ country }} as JSON."
variables:
  - {name: country, type: string, required: true, max_length: 40}
output_schema:
  type: object
  required: [answer]
  properties: {answer: {type: string}}
""",
    "grader.yaml": """
name: grader
messages:
  - role: user
    content: "Grade {{ output }} against {{ reference }} from 0 to 1 as JSON."
variables:
  - {name: output, type: string, required: true}
  - {name: reference, type: string, required: true}
""",
}
DRAFTS = {
    "draft.yaml": """
name: draft
messages:
  - role: user
    content: "Say {{ word }} {{ times }} times."
variables:
  - {name: word, type: string, required: true}
  - {name: times, type: integer, required: true}
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
      - {{id: good-0, kind: openai_compatible, endpoint: "{endpoint}", backend_model: {model}}}
"""

CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
]


def _answer(city: str) -> list[str]:
    return ['{"answer": ', f'"{city}"', "}"]


def _reference(city: str) -> str:
    return f'{{"answer": "{city}"}}'


@dataclass
class FakeInference:
    """InferenceService.Embed for the embedding scorer: texts that mention Kyoto point one
    way, every other text the other way; records the models asked for."""

    models: list[str] = field(default_factory=list)

    async def Embed(
        self,
        request: inference_service_pb2.EmbedRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the stub's signature)
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> inference_service_pb2.EmbedResponse:
        self.models.append(request.model)
        return inference_service_pb2.EmbedResponse(
            embeddings=[
                inference_pb2.Embedding(values=[0.0, 1.0] if "Kyoto" in text else [1.0, 0.0])
                for text in request.inputs
            ],
            dimensions=2,
            model=request.model,
        )


@dataclass
class Harness:
    """The platform, the evaluation server in front of it, and a client of each."""

    backend: OpenAICompatibleServer
    platform: Platform
    evaluation: RunningServer
    stub: Stub
    inference: FakeInference
    database_url: str
    service: ServiceRegistration


def _platform_settings(backend: OpenAICompatibleServer, data: Path) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(CATALOG.format(endpoint=backend.base_url, model=MODEL))
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["prompt", "router", "inference", "gateway", "experiment"],
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "experiment": {"database_url": f"sqlite+aiosqlite:///{data / 'experiments.db'}"},
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
                "request_log": {"max_delay_seconds": 0.01},
            },
            "router": {
                "catalog_file": str(catalog),
                "health_check_seconds": 60,
                "breaker_failures": 1000,
            },
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
                            }
                        ],
                    }
                ],
            },
        }
    )


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)


async def _seed(channel: grpc.aio.Channel, folder: Path, files: dict[str, str], label: str) -> None:
    _write(folder, files)
    report = await prompts_cli.seed_prompts(channel, folder, label=label)
    assert report.failures == 0, report.lines


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with OpenAICompatibleServer(Behaviour()) as backend:
        platform = await start_platform(_platform_settings(backend, tmp_path))
        channel = create_channel(platform.address)
        await _seed(channel, tmp_path / "prompts", PROMPTS, "production")
        await _seed(channel, tmp_path / "drafts", DRAFTS, "staging")
        inference = FakeInference()
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'evaluation.db'}"
        service = registration(
            settings=EvaluationSettings(
                database_url=database_url,
                max_concurrency=1,
                result_batch_size=2,
                result_flush_seconds=0.05,
            ),
            gateway=lambda: gateway_service_pb2_grpc.GatewayServiceStub(channel),
            inference=lambda: cast(InferenceStub, inference),
            prompts=lambda _tenant: PromptClient(channel),
            prompt_service=lambda: prompt_service_pb2_grpc.PromptServiceStub(channel),
        )
        evaluation = await _serve(service)
        client = create_channel(evaluation.address)
        try:
            yield Harness(
                backend,
                platform,
                evaluation,
                evaluation_service_pb2_grpc.EvaluationServiceStub(client),
                inference,
                database_url,
                service,
            )
        finally:
            await client.close(None)
            await evaluation.stop(grace=0)
            assert service.stop is not None
            await service.stop()
            await channel.close(None)
            await platform.stop(grace=0)


async def _serve(service: ServiceRegistration) -> RunningServer:
    assert service.start is not None
    await service.start()
    return await start_server(
        bind="127.0.0.1:0",
        registrations=[service],
        interceptors=default_interceptors(
            authenticator=AnonymousAuthenticator(), validators=Validators()
        ),
        grace=1,
    )


# ------------------------------------------------------------------------------ helpers


async def _failure(call: Any) -> ParsedError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return error_details(raised.value)


async def _stream_failure(stub: Stub, request: spb.StartEvaluationRunRequest) -> ParsedError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub.StartEvaluationRun(request, timeout=30):
            pass
    return error_details(raised.value)


def _example(reference: str = "", **inputs: Any) -> pb.Example:
    example = pb.Example(reference=reference)
    example.inputs.update(inputs)
    return example


async def _dataset(stub: Stub, name: str, countries: Sequence[tuple[str, str]]) -> list[pb.Example]:
    await stub.CreateDataset(
        spb.CreateDatasetRequest(dataset=pb.Dataset(name=name, prompt="capital")), timeout=10
    )
    added = await stub.AddExamples(
        spb.AddExamplesRequest(
            dataset=name,
            examples=[_example(_reference(city), country=country) for country, city in countries],
        ),
        timeout=10,
    )
    return list(added.examples)


def _scorers() -> list[pb.Scorer]:
    return [
        pb.Scorer(name="contains", contains=pb.ContainsScorer()),
        pb.Scorer(name="exact", exact_match=pb.ExactMatchScorer()),
        pb.Scorer(name="latency", latency=pb.LatencyScorer()),
        pb.Scorer(name="schema", json_schema=pb.JsonSchemaScorer()),
    ]


def _run(dataset: str, scorers: Sequence[pb.Scorer] | None = None, **more: Any) -> pb.EvaluationRun:
    return pb.EvaluationRun(
        prompt="capital", dataset=dataset, model="hosted", scorers=scorers or _scorers(), **more
    )


async def _events(
    stub: Stub, run: pb.EvaluationRun, request_id: str = ""
) -> list[spb.StartEvaluationRunResponse]:
    request = spb.StartEvaluationRunRequest(run=run, request_id=request_id)
    return [event async for event in stub.StartEvaluationRun(request, timeout=60)]


def _means(report: pb.EvaluationReport) -> dict[str, float]:
    return {s.scorer: s.mean for s in report.summaries}


async def _first_run(call: Any) -> pb.EvaluationRun:
    message = await call.read()
    assert isinstance(message, spb.StartEvaluationRunResponse)
    return message.run


async def _wait_for(stub: Stub, run_id: str, state: int) -> pb.EvaluationRun:
    for _ in range(300):
        run = (await stub.GetEvaluationRun(spb.GetEvaluationRunRequest(id=run_id))).run
        if run.state == state:
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached state {pb.RunState.Name(state)}")


# ------------------------------------------------------------------------------ datasets


async def test_datasets_are_created_listed_and_hold_checked_examples(harness: Harness) -> None:
    stub = harness.stub
    created = (
        await stub.CreateDataset(
            spb.CreateDatasetRequest(
                dataset=pb.Dataset(name="geo", prompt="capital", description="capitals"),
                request_id="create-geo",
            )
        )
    ).dataset
    assert (created.name, created.prompt, created.example_count) == ("geo", "capital", 0)
    retried = await stub.CreateDataset(
        spb.CreateDatasetRequest(
            dataset=pb.Dataset(name="geo", prompt="capital"), request_id="create-geo"
        )
    )
    assert retried.dataset == created
    duplicate = await _failure(
        stub.CreateDataset(spb.CreateDatasetRequest(dataset=pb.Dataset(name="geo", prompt="x")))
    )
    assert (duplicate.code, duplicate.reason) == (
        grpc.StatusCode.ALREADY_EXISTS,
        reasons.DATASET_ALREADY_EXISTS,
    )

    added = (
        await stub.AddExamples(
            spb.AddExamplesRequest(
                dataset="geo",
                examples=[
                    _example("Paris", country="France"),
                    pb.Example(
                        reference="Rome", inputs={"country": "Italy"}, tags={"topic": "europe"}
                    ),
                ],
            )
        )
    ).examples
    assert [e.reference for e in added] == ["Paris", "Rome"]
    assert all(len(e.id) == 24 for e in added)
    again = await stub.AddExamples(
        spb.AddExamplesRequest(dataset="geo", examples=[_example("Paris", country="France")])
    )
    assert again.examples[0].id == added[0].id  # content-addressed: stored once

    page = await stub.ListExamples(spb.ListExamplesRequest(dataset="geo", page_size=1))
    rest = await stub.ListExamples(
        spb.ListExamplesRequest(dataset="geo", page_token=page.next_page_token)
    )
    assert [e.id for e in [*page.examples, *rest.examples]] == [e.id for e in added]
    assert rest.examples[0].tags == {"topic": "europe"}
    assert rest.next_page_token == ""
    assert (await stub.GetDataset(spb.GetDatasetRequest(name="geo"))).dataset.example_count == 2

    await stub.CreateDataset(
        spb.CreateDatasetRequest(dataset=pb.Dataset(name="words", prompt="draft"))
    )
    everything = await stub.ListDatasets(spb.ListDatasetsRequest())
    assert [d.name for d in everything.datasets] == ["geo", "words"]
    only = await stub.ListDatasets(spb.ListDatasetsRequest(prompt="draft"))
    assert [d.name for d in only.datasets] == ["words"]


async def test_add_examples_names_every_bad_example_input(harness: Harness) -> None:
    stub = harness.stub
    await stub.CreateDataset(
        spb.CreateDatasetRequest(dataset=pb.Dataset(name="geo", prompt="capital"))
    )

    error = await _failure(
        stub.AddExamples(
            spb.AddExamplesRequest(
                dataset="geo",
                examples=[
                    _example(country="France"),
                    _example(),
                    _example(country="Peru", planet="Mars"),
                    _example(country=3),
                    _example(country="x" * 41),
                ],
            )
        )
    )

    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.VARIABLE_INVALID,
    )
    fields = {v.field for v in error.field_violations}
    assert fields == {
        "examples[1].inputs.country",
        "examples[2].inputs.planet",
        "examples[3].inputs.country",
        "examples[4].inputs.country",
    }
    assert (error.metadata["prompt_version"], error.metadata["checked_against"]) == (
        "1",
        "production",
    )
    listed = await stub.ListExamples(spb.ListExamplesRequest(dataset="geo"))
    assert list(listed.examples) == []  # one bad example rejects the batch


async def test_examples_of_a_prompt_without_production_are_checked_against_its_latest(
    harness: Harness,
) -> None:
    stub = harness.stub
    await stub.CreateDataset(
        spb.CreateDatasetRequest(dataset=pb.Dataset(name="words", prompt="draft"))
    )

    error = await _failure(
        stub.AddExamples(
            spb.AddExamplesRequest(dataset="words", examples=[_example(word="hi", times="two")])
        )
    )
    added = await stub.AddExamples(
        spb.AddExamplesRequest(dataset="words", examples=[_example(word="hi", times=2)])
    )

    assert [v.field for v in error.field_violations] == ["examples[0].inputs.times"]
    assert error.metadata["checked_against"] == "latest"
    assert "version 1 (latest)" in error.message
    assert len(added.examples) == 1


async def test_bad_dataset_requests_are_invalid_or_not_found(harness: Harness) -> None:
    stub = harness.stub
    bad = await _failure(
        stub.CreateDataset(spb.CreateDatasetRequest(dataset=pb.Dataset(name="Geo!", prompt="")))
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in bad.field_violations} == {"dataset.name", "dataset.prompt"}
    empty = await _failure(stub.AddExamples(spb.AddExamplesRequest(dataset="geo")))
    assert [v.field for v in empty.field_violations] == ["examples"]

    for call in (
        stub.GetDataset(spb.GetDatasetRequest(name="nope")),
        stub.ListExamples(spb.ListExamplesRequest(dataset="nope")),
        stub.AddExamples(spb.AddExamplesRequest(dataset="nope", examples=[_example(country="x")])),
    ):
        missing = await _failure(call)
        assert (missing.code, missing.reason) == (
            grpc.StatusCode.NOT_FOUND,
            reasons.DATASET_NOT_FOUND,
        )
    required = await _failure(stub.GetDataset(spb.GetDatasetRequest()))
    assert [v.field for v in required.field_violations] == ["name"]


# ------------------------------------------------------------------------------ runs


async def test_a_run_scores_every_output_records_a_failed_generation_and_reports(
    harness: Harness,
) -> None:
    stub = harness.stub
    examples = await _dataset(harness.stub, "geo", CAPITALS)
    harness.backend.behaviour = Behaviour(
        replies=[
            _answer("Paris"),  # exact and contained
            ['{"answer": ', '"TOKYO"}'],  # case-insensitive: exact and contained
            ['{"also": {"answer": "Rome"}, ', '"answer": "Roma"}'],  # contains the reference only
            _answer("Barcelona"),  # wrong
            _answer("Lima"),
            ["Santiago"],  # not JSON: the gateway refuses it (no repair): a failed generation
        ]
    )

    events = await _events(stub, _run("geo"))

    kinds = [e.WhichOneof("event") for e in events]
    assert (kinds[0], kinds[-1]) == ("run", "report")
    assert kinds.count("result") == 6
    assert "progress" in kinds
    first = events[0].run
    assert first.state == pb.RUN_STATE_RUNNING
    assert (first.resolved_prompt_version, first.prompt_label) == (1, "production")
    assert first.progress.total == 6
    progress = [e.progress for e in events if e.HasField("progress")]
    assert progress[-1] == pb.RunProgress(total=6, completed=6, failed=1)

    report = events[-1].report
    means = _means(report)
    assert means["exact"] == pytest.approx(3 / 5)
    assert means["contains"] == pytest.approx(4 / 5)
    assert means["schema"] == pytest.approx(1.0)
    assert means["latency"] > 0
    assert {s.scorer: s.count for s in report.summaries} == {
        "contains": 5,
        "exact": 5,
        "latency": 5,
        "schema": 5,
    }
    exact = next(s for s in report.summaries if s.scorer == "exact")
    assert exact.mean_interval.lower < 0.6 < exact.mean_interval.upper
    assert exact.mean_interval.confidence_level == pytest.approx(0.95)
    assert (report.prompt, report.prompt_version, report.model) == ("capital", 1, "hosted")
    assert len(report.prompt_content_hash) == 64
    assert not report.HasField("baseline_comparison")

    results = {r.example_id: r for r in report.results}
    chile = results[examples[5].id]
    assert chile.error.startswith("FAILED_PRECONDITION (OUTPUT_SCHEMA_VIOLATION)")
    assert [s.scored for s in chile.scores] == [False] * 4
    paris = results[examples[0].id]
    assert paris.output == '{"answer": "Paris"}'
    assert (paris.model, paris.error) == ("hosted", "")
    assert paris.usage.output_tokens == 3
    assert paris.cost.currency_code == "USD"
    assert report.usage.output_tokens > 0
    assert report.cost.currency_code == "USD"

    stored = (await stub.GetEvaluationRun(spb.GetEvaluationRunRequest(id=first.id))).run
    assert stored.state == pb.RUN_STATE_SUCCEEDED
    assert stored.report_id == report.id
    assert stored.progress == pb.RunProgress(total=6, completed=6, failed=1)
    assert stored.HasField("end_time")
    fetched = (await stub.GetEvaluationReport(spb.GetEvaluationReportRequest(id=report.id))).report
    assert _means(fetched) == means
    assert [r.example_id for r in fetched.results] == [r.example_id for r in report.results]
    listed = await stub.ListEvaluationRuns(spb.ListEvaluationRunsRequest(prompt="capital"))
    assert [r.id for r in listed.runs] == [first.id]

    requests = [r for r in harness.backend.requests if r.path.endswith("/chat/completions")]
    assert "capital of France" in json.dumps(requests[0].body["messages"])


async def test_repeats_measure_flakiness(harness: Harness) -> None:
    stub = harness.stub
    await _dataset(harness.stub, "pair", CAPITALS[:2])
    harness.backend.behaviour = Behaviour(
        replies=[
            _answer("Paris"),
            _answer("Paris"),
            _answer("Lyon"),
            _answer("Tokyo"),
            _answer("Tokyo"),
            _answer("Tokyo"),
        ]
    )

    events = await _events(stub, _run("pair", repeats=3))

    report = events[-1].report
    assert events[0].run.progress.total == 6
    assert sorted((r.example_id, r.repeat) for r in report.results) == sorted(
        (e, k) for e in {r.example_id for r in report.results} for k in range(3)
    )
    exact = next(s for s in report.summaries if s.scorer == "exact")
    assert exact.count == 6
    assert exact.mean == pytest.approx((2 / 3 + 1) / 2)
    assert exact.flakiness == pytest.approx(((2 / 9) ** 0.5) / 2)


async def test_a_run_whose_every_generation_fails_fails_with_the_first_error(
    harness: Harness,
) -> None:
    stub = harness.stub
    await _dataset(harness.stub, "pair", CAPITALS[:2])
    harness.backend.behaviour = Behaviour(tokens=["no", " json"])

    call = stub.StartEvaluationRun(spb.StartEvaluationRunRequest(run=_run("pair")), timeout=60)
    run = await _first_run(call)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass

    error = error_details(raised.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.OUTPUT_SCHEMA_VIOLATION,
    )
    assert error.message.startswith("every generation failed; the first: ")
    stored = (await stub.GetEvaluationRun(spb.GetEvaluationRunRequest(id=run.id))).run
    assert stored.state == pb.RUN_STATE_FAILED
    assert stored.error == error.message
    assert stored.progress == pb.RunProgress(total=2, completed=2, failed=2)
    assert stored.report_id == ""


async def test_judge_and_embedding_scorers_call_the_gateway_and_inference(
    harness: Harness,
) -> None:
    stub = harness.stub
    await _dataset(harness.stub, "pair", CAPITALS[:2])
    harness.backend.behaviour = Behaviour(
        replies=[
            _answer("Paris"),
            ['{"score": 0.75, "reason": "close enough"}'],
            _answer("Kyoto"),
            ["nonsense"],
        ]
    )
    scorers = [
        pb.Scorer(name="judge", llm_judge=pb.LlmJudgeScorer(rubric_prompt="grader")),
        pb.Scorer(name="similar", embedding_similarity=pb.EmbeddingSimilarityScorer()),
    ]

    report = (await _events(stub, _run("pair", scorers)))[-1].report

    scores = {
        r.output: {s.scorer: (s.value, s.scored, s.explanation) for s in r.scores}
        for r in report.results
    }
    assert scores['{"answer": "Paris"}']["judge"] == (0.75, True, "close enough")
    assert scores['{"answer": "Paris"}']["similar"][:2] == (1.0, True)
    kyoto = scores['{"answer": "Kyoto"}']
    assert kyoto["judge"][1] is False
    assert "unreadable judge reply" in kyoto["judge"][2]
    assert kyoto["similar"][:2] == (0.0, True)
    assert harness.inference.models == ["all-minilm-l6-v2"] * 2
    judge_request = [r for r in harness.backend.requests if r.path.endswith("/chat/completions")][1]
    assert "Grade" in json.dumps(judge_request.body["messages"])


async def test_a_baseline_comparison_names_the_planted_regression(harness: Harness) -> None:
    stub = harness.stub
    examples = await _dataset(harness.stub, "geo", CAPITALS)
    planted = [_answer(city if country != "Italy" else "Milan") for country, city in CAPITALS]
    # Replies are consumed by the backend's count of completions: the baseline's, then these.
    harness.backend.behaviour = Behaviour(
        replies=[*(_answer(city) for _, city in CAPITALS), *planted]
    )
    baseline = (await _events(stub, _run("geo")))[-1].report

    candidate = (await _events(stub, _run("geo", baseline_report_id=baseline.id)))[-1].report

    comparison = candidate.baseline_comparison
    assert (comparison.baseline_report_id, comparison.candidate_report_id) == (
        baseline.id,
        candidate.id,
    )
    italy = examples[2].id
    assert {(r.example_id, r.scorer) for r in comparison.example_regressions} == {
        (italy, "contains"),
        (italy, "exact"),
    }
    exact = next(s for s in comparison.scorers if s.scorer == "exact")
    assert exact.baseline_mean == 1.0
    assert exact.candidate_mean == pytest.approx(5 / 6)
    assert exact.difference == pytest.approx(-1 / 6)
    assert exact.HasField("difference_interval")
    compared = (
        await stub.CompareEvaluationReports(
            spb.CompareEvaluationReportsRequest(
                baseline_report_id=baseline.id, candidate_report_id=candidate.id
            )
        )
    ).comparison
    assert compared == comparison


async def test_cancel_stops_a_run_and_a_caller_leaving_does_not(harness: Harness) -> None:
    stub = harness.stub
    await _dataset(harness.stub, "geo", CAPITALS)
    harness.backend.behaviour = Behaviour(tokens=_answer("Paris"), pace=0.2)

    call = stub.StartEvaluationRun(spb.StartEvaluationRunRequest(run=_run("geo")), timeout=60)
    first = await _first_run(call)
    cancelled = (await stub.CancelEvaluationRun(spb.CancelEvaluationRunRequest(id=first.id))).run
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass

    assert cancelled.state == pb.RUN_STATE_CANCELLED
    assert raised.value.code() == grpc.StatusCode.CANCELLED
    stored = (await stub.GetEvaluationRun(spb.GetEvaluationRunRequest(id=first.id))).run
    assert stored.state == pb.RUN_STATE_CANCELLED
    assert stored.progress.completed < 6
    again = await stub.CancelEvaluationRun(spb.CancelEvaluationRunRequest(id=first.id))
    assert again.run.state == pb.RUN_STATE_CANCELLED

    harness.backend.behaviour = Behaviour(tokens=_answer("Paris"))
    leaving = stub.StartEvaluationRun(spb.StartEvaluationRunRequest(run=_run("geo")), timeout=60)
    left = await _first_run(leaving)
    leaving.cancel()
    finished = await _wait_for(stub, left.id, pb.RUN_STATE_SUCCEEDED)
    assert finished.progress.completed == 6
    ended = await _failure(stub.CancelEvaluationRun(spb.CancelEvaluationRunRequest(id=left.id)))
    assert ended.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_stopping_the_service_fails_the_runs_still_going(harness: Harness) -> None:
    await _dataset(harness.stub, "geo", CAPITALS)
    harness.backend.behaviour = Behaviour(tokens=_answer("Paris"), pace=0.2)
    call = harness.stub.StartEvaluationRun(
        spb.StartEvaluationRunRequest(run=_run("geo")), timeout=60
    )
    run = await _first_run(call)

    assert harness.service.stop is not None
    await harness.service.stop()

    store = SqlEvaluationStore.from_url(harness.database_url)
    try:
        stopped = await store.get_run("default", run.id)
    finally:
        await store.close()
    assert stopped.state is RunState.FAILED
    assert stopped.error == "the evaluation service stopped before the run finished"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_retry_with_the_same_request_id_attaches_to_the_same_run(
    harness: Harness,
) -> None:
    stub = harness.stub
    await _dataset(harness.stub, "pair", CAPITALS[:2])
    harness.backend.behaviour = Behaviour(tokens=_answer("Paris"))

    first = await _events(stub, _run("pair"), request_id="run-once")
    retried = await _events(stub, _run("pair"), request_id="run-once")

    assert retried[0].run.id == first[0].run.id
    assert retried[0].run.state == pb.RUN_STATE_SUCCEEDED
    assert [e.WhichOneof("event") for e in retried] == ["run", "report"]
    assert retried[-1].report.id == first[-1].report.id
    listed = await stub.ListEvaluationRuns(spb.ListEvaluationRunsRequest())
    assert len(listed.runs) == 1


async def test_a_retry_while_the_run_goes_on_follows_it_to_its_report(
    harness: Harness,
) -> None:
    stub = harness.stub
    await _dataset(harness.stub, "pair", CAPITALS[:2])
    harness.backend.behaviour = Behaviour(tokens=_answer("Paris"), pace=0.1)
    request = spb.StartEvaluationRunRequest(run=_run("pair"), request_id="run-twice")

    first = stub.StartEvaluationRun(request, timeout=60)
    started = await _first_run(first)
    second = [event async for event in stub.StartEvaluationRun(request, timeout=60)]
    rest = [event async for event in first]

    assert second[0].run.id == started.id
    assert second[0].run.state == pb.RUN_STATE_RUNNING
    assert second[-1].report.id == rest[-1].report.id
    assert second[-1].report.run_id == started.id
    completions = [r for r in harness.backend.requests if r.path.endswith("/chat/completions")]
    assert len(completions) == 2  # one generation per example, not two


async def test_bad_run_requests_name_their_fields(harness: Harness) -> None:
    stub = harness.stub
    await _dataset(harness.stub, "geo", CAPITALS[:1])

    bad = await _stream_failure(
        stub,
        spb.StartEvaluationRunRequest(
            run=pb.EvaluationRun(
                prompt="capital",
                dataset="geo",
                repeats=11,
                scorers=[
                    pb.Scorer(name="re", regex=pb.RegexScorer(pattern="(a+)+")),
                    pb.Scorer(name="re"),
                ],
            )
        ),
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in bad.field_violations} == {
        "run.repeats",
        "run.scorers[0].regex.pattern",
        "run.scorers[1].name",
        "run.scorers[1]",
    }
    no_scorers = await _stream_failure(
        stub, spb.StartEvaluationRunRequest(run=pb.EvaluationRun(prompt="capital", dataset="geo"))
    )
    assert [v.field for v in no_scorers.field_violations] == ["run.scorers"]
    other_prompt = await _stream_failure(
        stub,
        spb.StartEvaluationRunRequest(
            run=pb.EvaluationRun(prompt="draft", dataset="geo", scorers=_scorers())
        ),
    )
    assert [v.field for v in other_prompt.field_violations] == ["run.dataset"]
    no_run = await _stream_failure(stub, spb.StartEvaluationRunRequest())
    assert [v.field for v in no_run.field_violations] == ["run"]
    listed = await stub.ListEvaluationRuns(spb.ListEvaluationRunsRequest())
    assert list(listed.runs) == []  # nothing was created


async def test_unknown_datasets_runs_reports_and_versions_are_not_found(
    harness: Harness,
) -> None:
    stub = harness.stub
    await _dataset(harness.stub, "geo", CAPITALS[:1])
    cases = [
        (
            _stream_failure(stub, spb.StartEvaluationRunRequest(run=_run("nope"))),
            reasons.DATASET_NOT_FOUND,
        ),
        (
            _stream_failure(stub, spb.StartEvaluationRunRequest(run=_run("geo", prompt_version=9))),
            reasons.PROMPT_VERSION_NOT_FOUND,
        ),
        (
            _stream_failure(
                stub, spb.StartEvaluationRunRequest(run=_run("geo", prompt_label="qa"))
            ),
            reasons.LABEL_NOT_FOUND,
        ),
        (
            _stream_failure(
                stub, spb.StartEvaluationRunRequest(run=_run("geo", baseline_report_id="f" * 32))
            ),
            reasons.EVALUATION_REPORT_NOT_FOUND,
        ),
        (
            _failure(stub.GetEvaluationRun(spb.GetEvaluationRunRequest(id="f" * 32))),
            reasons.EVALUATION_RUN_NOT_FOUND,
        ),
        (
            _failure(stub.CancelEvaluationRun(spb.CancelEvaluationRunRequest(id="f" * 32))),
            reasons.EVALUATION_RUN_NOT_FOUND,
        ),
        (
            _failure(stub.GetEvaluationReport(spb.GetEvaluationReportRequest(id="f" * 32))),
            reasons.EVALUATION_REPORT_NOT_FOUND,
        ),
        (
            _failure(
                stub.CompareEvaluationReports(
                    spb.CompareEvaluationReportsRequest(
                        baseline_report_id="a" * 32, candidate_report_id="b" * 32
                    )
                )
            ),
            reasons.EVALUATION_REPORT_NOT_FOUND,
        ),
    ]
    for call, reason in cases:
        error = await call
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, reason), error.message
    required = await _failure(stub.CompareEvaluationReports(spb.CompareEvaluationReportsRequest()))
    assert {v.field for v in required.field_violations} == {
        "baseline_report_id",
        "candidate_report_id",
    }


async def test_quality_alerts_list_what_online_evaluation_stored(harness: Harness) -> None:
    store = SqlEvaluationStore.from_url(harness.database_url)
    try:
        older = await store.create_alert("default", _alert("capital", "non_empty"))
        await store.resolve_alert("default", older.id)
        newer = await store.create_alert("default", _alert("capital", "schema_valid"))
        await store.create_alert("default", _alert("grader", "non_empty"))
        await store.create_alert("other-tenant", _alert("capital", "non_empty"))
    finally:
        await store.close()
    stub = harness.stub

    firing = await stub.ListQualityAlerts(
        spb.ListQualityAlertsRequest(prompt="capital", state=pb.ALERT_STATE_FIRING)
    )
    page = await stub.ListQualityAlerts(spb.ListQualityAlertsRequest(prompt="capital", page_size=1))
    rest = await stub.ListQualityAlerts(
        spb.ListQualityAlertsRequest(prompt="capital", page_token=page.next_page_token)
    )
    bad = await _failure(stub.ListQualityAlerts(spb.ListQualityAlertsRequest(page_token="nope")))

    assert [a.id for a in firing.alerts] == [newer.id]
    alert = firing.alerts[0]
    assert (alert.scorer, alert.detector, alert.prompt_version) == ("schema_valid", "cusum", 1)
    assert (alert.baseline_mean, alert.observed_mean, alert.sample_count) == (0.9, 0.5, 40)
    assert (alert.HasField("fire_time"), alert.HasField("resolve_time")) == (True, False)
    assert [a.id for a in [*page.alerts, *rest.alerts]] == [newer.id, older.id]
    assert rest.alerts[0].state == pb.ALERT_STATE_RESOLVED
    assert rest.alerts[0].HasField("resolve_time")
    assert [v.field for v in bad.field_violations] == ["page_token"]


def _alert(prompt: str, scorer: str) -> NewQualityAlert:
    return NewQualityAlert(
        prompt=prompt,
        prompt_version=1,
        scorer=scorer,
        detector="cusum",
        baseline_mean=0.9,
        observed_mean=0.5,
        sample_count=40,
    )

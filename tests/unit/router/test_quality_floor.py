"""The quality-floor policy: the cheapest model whose latest evaluation score for the prompt
meets the floor, reasons naming the report; visible fallbacks to cost (no report, no scores)
and to the highest score (none meets the floor); the choice of each model's latest score; and
the score source over EvaluationService (cache, push invalidation, staleness, failures)."""

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2

from services.common.errors import InvalidArgument
from services.router.adapters.quality import EvaluationScores
from services.router.core.catalog import Catalog
from services.router.core.quality import (
    EvaluatedReport,
    QualityEvidence,
    ReportScore,
    latest_scores,
    served_model,
)
from services.router.core.router import Policy, Router, RouteRequest
from tests.unit.router.test_router import _model

CATALOG = Catalog(
    currency="USD",
    models=(
        _model("tiny", tier=1, price="0.01"),
        _model("small", tier=2, price="0.1"),
        _model("large", tier=9, price="10"),
    ),
)


def score(model: str, value: float, report: str = "", dataset: str = "facts") -> ReportScore:
    return ReportScore(model, report or f"ev-{model}", dataset, "answer", value, 3)


def evidence(*scores: ReportScore, unavailable: str = "") -> QualityEvidence:
    return QualityEvidence("chat", "facts", {s.model: s for s in scores}, unavailable=unavailable)


def floor_request(floor: float, quality: QualityEvidence | None, **kw: Any) -> RouteRequest:
    return RouteRequest(
        100,
        100,
        Policy.QUALITY_FLOOR,
        prompt="chat",
        min_quality_score=floor,
        quality=quality,
        **kw,
    )


def route(request: RouteRequest) -> Any:
    return Router(CATALOG, rng=random.Random(3)).route(request)


def models(decision: Any) -> list[str]:
    seen: list[str] = []
    for candidate in decision.candidates:
        if candidate.model.name not in seen:
            seen.append(candidate.model.name)
    return seen


def test_cheapest_model_meeting_the_floor_wins_and_the_reason_names_its_report() -> None:
    decision = route(
        floor_request(
            0.7, evidence(score("tiny", 0.4), score("small", 0.81, "ev-123"), score("large", 0.95))
        )
    )

    assert decision.policy is Policy.QUALITY_FLOOR
    assert decision.fallback == ""
    assert models(decision) == ["small", "large"]
    best = decision.candidates[0]
    assert best.quality == score("small", 0.81, "ev-123")
    assert (
        "small: report ev-123 on dataset facts scored 0.810 >= floor 0.7 (answer, prompt "
        "version 3)" in best.reason
    )
    assert "cheapest such" in best.reason
    assert {r.model: r.reason for r in decision.rejected} == {
        "tiny": "report ev-tiny on dataset facts scored 0.400 < floor 0.7 (answer)"
    }


def test_a_model_without_a_report_is_rejected_while_another_meets_the_floor() -> None:
    decision = route(floor_request(0.5, evidence(score("large", 0.9))))

    assert models(decision) == ["large"]
    assert {r.model: r.reason for r in decision.rejected} == {
        "tiny": "no evaluation report for prompt chat on dataset facts",
        "small": "no evaluation report for prompt chat on dataset facts",
    }


def test_equal_cost_ties_go_to_the_higher_score() -> None:
    catalog = Catalog("USD", (_model("a", tier=1, price="1"), _model("b", tier=1, price="1")))
    decision = Router(catalog, rng=random.Random(1)).route(
        floor_request(0.5, evidence(score("a", 0.6), score("b", 0.9)))
    )
    assert models(decision) == ["b", "a"]


def test_no_report_at_all_falls_back_to_cost_and_says_so() -> None:
    decision = route(floor_request(0.7, evidence()))

    assert decision.policy is Policy.COST
    assert decision.fallback == (
        "no evaluation report for prompt chat on dataset facts; fell back to cost"
    )
    assert models(decision) == ["tiny", "small", "large"]
    assert decision.candidates[0].reason.startswith(
        "no evaluation report for prompt chat on dataset facts; fell back to cost; cost: best"
    )
    assert decision.rejected == ()


@pytest.mark.parametrize(
    ("quality", "why"),
    [
        (None, "no evaluation scores were read"),
        (
            evidence(unavailable="evaluation scores unavailable (UNAVAILABLE: down)"),
            "evaluation scores unavailable (UNAVAILABLE: down)",
        ),
    ],
)
def test_unreadable_scores_fall_back_to_cost(quality: QualityEvidence | None, why: str) -> None:
    decision = route(floor_request(0.7, quality))

    assert decision.policy is Policy.COST
    assert decision.fallback == f"{why}; fell back to cost"
    assert models(decision)[0] == "tiny"


def test_no_score_meeting_the_floor_falls_back_to_the_highest_score() -> None:
    decision = route(floor_request(0.9, evidence(score("tiny", 0.2), score("large", 0.6))))

    assert decision.policy is Policy.QUALITY_FLOOR
    assert models(decision) == ["large", "tiny", "small"]  # unscored last
    assert decision.fallback == (
        "no model's latest evaluation of prompt chat on dataset facts meets floor 0.9 (best: "
        "large 0.600 in report ev-large); fell back to the highest score"
    )
    assert "scored 0.600 < floor 0.9" in decision.candidates[0].reason
    assert decision.rejected == ()


def test_a_pinned_model_is_not_ranked_by_scores() -> None:
    decision = route(
        floor_request(0.5, evidence(score("small", 0.9), score("large", 0.1)), model="large")
    )
    assert models(decision) == ["large"]
    assert "large: pinned, evaluation scores not consulted" in decision.candidates[0].reason
    assert decision.fallback == ""


@pytest.mark.parametrize(
    ("request_", "field_"),
    [
        (floor_request(1.5, None), "preferences.min_quality_score"),
        (floor_request(-0.1, None), "preferences.min_quality_score"),
        (floor_request(float("nan"), None), "preferences.min_quality_score"),
        (
            RouteRequest(1, 1, Policy.QUALITY_FLOOR, prompt="chat"),
            "preferences.min_quality_score",
        ),
        (floor_request(0.5, None, quality_dataset="x" * 65), "preferences.quality_dataset"),
        (floor_request(0.5, None, quality_scorer="x" * 65), "preferences.quality_scorer"),
    ],
)
def test_invalid_floors(request_: RouteRequest, field_: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        route(request_)
    assert [v.field for v in raised.value.violations] == [field_]


# ------------------------------------------------------------------------- latest scores


def report(
    report_id: str, model: str, means: dict[str, float], scorers: tuple[str, ...] = ("answer",)
) -> EvaluatedReport:
    return EvaluatedReport(report_id, model, "facts", 2, means, scorers)


def test_each_model_scores_by_its_newest_report_with_the_scorer() -> None:
    newest_first = [
        report("r4", "a", {"answer": 0.5, "latency": 2.0}),
        report("r3", "b", {"other": 1.0}, ("other",)),  # no `answer`
        report("r2", "a", {"answer": 0.9}),
        report("r1", "b", {"answer": 0.7}),
        report("r0", "", {"answer": 1.0}),  # no single model
    ]

    named = latest_scores(newest_first, "answer")
    assert {m: (s.report_id, s.score) for m, s in named.items()} == {
        "a": ("r4", 0.5),
        "b": ("r1", 0.7),
    }
    default = latest_scores(newest_first)  # each report's first quality scorer
    assert {m: (s.report_id, s.scorer) for m, s in default.items()} == {
        "a": ("r4", "answer"),
        "b": ("r3", "other"),
    }


@pytest.mark.parametrize(
    ("requested", "served", "expected"),
    [
        ("pinned", ["x", "y"], "pinned"),
        ("", ["x", "x", ""], "x"),
        ("", ["x", "y"], ""),
        ("", [], ""),
    ],
)
def test_the_model_a_run_evaluated(requested: str, served: list[str], expected: str) -> None:
    assert served_model(requested, served) == expected


# ------------------------------------------------------------------------- score source


def _run(
    run_id: str,
    model: str,
    dataset: str = "facts",
    state: evaluation_pb2.RunState = evaluation_pb2.RUN_STATE_SUCCEEDED,
) -> evaluation_pb2.EvaluationRun:
    return evaluation_pb2.EvaluationRun(
        id=run_id,
        prompt="chat",
        model=model,
        dataset=dataset,
        state=state,
        report_id=f"rep-{run_id}" if state == evaluation_pb2.RUN_STATE_SUCCEEDED else "",
        scorers=[
            evaluation_pb2.Scorer(name="latency", latency=evaluation_pb2.LatencyScorer()),
            evaluation_pb2.Scorer(name="answer", contains=evaluation_pb2.ContainsScorer()),
        ],
    )


def _report(run: evaluation_pb2.EvaluationRun, mean: float, served: str = "") -> Any:
    return evaluation_pb2.EvaluationReport(
        id=run.report_id,
        run_id=run.id,
        prompt="chat",
        prompt_version=4,
        model=run.model,
        dataset=run.dataset,
        summaries=[
            evaluation_pb2.ScorerSummary(scorer="latency", count=2, mean=1.5),
            evaluation_pb2.ScorerSummary(scorer="answer", count=2, mean=mean),
        ],
        results=[evaluation_pb2.ExampleResult(example_id="e", model=served or run.model)],
    )


class _Unary:
    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self.calls: list[Any] = []

    async def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the generated stubs' signature)
        metadata: Any = None,
    ) -> Any:
        self.calls.append((request, metadata))
        return self._handler(request)


@dataclass
class FakeEvaluation:
    runs: list[evaluation_pb2.EvaluationRun] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)
    down: bool = False

    def __post_init__(self) -> None:
        self.ListEvaluationRuns = _Unary(self._list)
        self.GetEvaluationReport = _Unary(self._get)

    def add(self, run: evaluation_pb2.EvaluationRun, mean: float, served: str = "") -> None:
        self.runs.insert(0, run)  # newest first
        self.reports[run.report_id] = _report(run, mean, served)

    def _list(self, request: Any) -> Any:
        if self.down:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down", ""
            )
        return evaluation_service_pb2.ListEvaluationRunsResponse(
            runs=[r for r in self.runs if r.prompt == request.prompt]
        )

    def _get(self, request: Any) -> Any:
        return evaluation_service_pb2.GetEvaluationReportResponse(report=self.reports[request.id])


class FakePrompts:
    def __init__(self, gate: str) -> None:
        self.GetPrompt = _Unary(self._get)
        self.gate = gate

    def _get(self, request: Any) -> Any:
        prompt = prompt_pb2.Prompt(name=request.name)
        if self.gate:
            prompt.evaluation_gate.dataset = self.gate
        return prompt_service_pb2.GetPromptResponse(prompt=prompt)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(
    evaluation: FakeEvaluation,
    prompts: FakePrompts | None = None,
    clock: Clock | None = None,
) -> EvaluationScores:
    return EvaluationScores(
        lambda: evaluation,  # type: ignore[arg-type, return-value]
        (lambda: prompts) if prompts is not None else None,  # type: ignore[arg-type, return-value]
        lambda tenant: (("x-genai-tenant", tenant),),
        refresh_s=10.0,
        clock=clock or Clock(),
    )


def _scores(found: QualityEvidence) -> dict[str, tuple[str, float]]:
    return {m: (s.report_id, s.score) for m, s in found.scores.items()}


async def test_the_source_reads_each_models_newest_finished_report_on_the_dataset() -> None:
    evaluation = FakeEvaluation()
    evaluation.add(_run("1", "small"), 0.4)
    evaluation.add(_run("2", "large"), 0.9)
    evaluation.add(_run("3", "small"), 0.8)
    evaluation.add(_run("4", "small", dataset="other"), 0.1)
    evaluation.add(_run("5", "", state=evaluation_pb2.RUN_STATE_FAILED), 0.0)
    evaluation.add(_run("6", ""), 0.3, served="tiny")  # routed run: the one model that served
    source = _source(evaluation)

    found = await source.evidence("acme", "chat", "facts", "")

    assert found.unavailable == ""
    assert _scores(found) == {
        "tiny": ("rep-6", 0.3),
        "small": ("rep-3", 0.8),
        "large": ("rep-2", 0.9),
    }
    assert found.scores["small"].scorer == "answer"  # the first quality scorer, not latency
    assert found.scores["small"].prompt_version == 4
    # Only the newest report of a pinned model is read (rep-1 is older than rep-3).
    read = [request.id for request, _ in evaluation.GetEvaluationReport.calls]
    assert "rep-1" not in read
    assert "rep-4" not in read
    assert evaluation.ListEvaluationRuns.calls[0][1] == (("x-genai-tenant", "acme"),)


async def test_scores_are_cached_until_refresh_or_a_pushed_report() -> None:
    evaluation = FakeEvaluation()
    evaluation.add(_run("1", "small"), 0.4)
    clock = Clock()
    source = _source(evaluation, clock=clock)
    assert _scores(await source.evidence("t", "chat", "facts", "")) == {"small": ("rep-1", 0.4)}

    evaluation.add(_run("2", "small"), 0.9)
    clock.now += 9.9  # within the staleness bound: the cached scores
    assert _scores(await source.evidence("t", "chat", "facts", "")) == {"small": ("rep-1", 0.4)}
    assert source.reads == 1

    source.invalidate("t", "chat")  # a run of the prompt finished in this process
    assert _scores(await source.evidence("t", "chat", "facts", "")) == {"small": ("rep-2", 0.9)}
    assert source.reads == 2

    evaluation.add(_run("3", "small"), 0.5)
    clock.now += 10.0  # past the bound: read again
    assert _scores(await source.evidence("t", "chat", "facts", "")) == {"small": ("rep-3", 0.5)}
    assert source.reads == 3
    # Tenants are apart.
    await source.evidence("other", "chat", "facts", "")
    assert source.reads == 4


async def test_concurrent_routes_share_one_read() -> None:
    evaluation = FakeEvaluation()
    evaluation.add(_run("1", "small"), 0.4)
    source = _source(evaluation)

    results = await asyncio.gather(*(source.evidence("t", "chat", "facts", "") for _ in range(5)))

    assert source.reads == 1
    assert all(_scores(r) == {"small": ("rep-1", 0.4)} for r in results)


async def test_an_unreachable_service_serves_the_last_scores_or_says_why() -> None:
    evaluation = FakeEvaluation(down=True)
    clock = Clock()
    source = _source(evaluation, clock=clock)

    found = await source.evidence("t", "chat", "facts", "")
    assert found.unavailable == "evaluation scores unavailable (UNAVAILABLE: down)"
    # A failed read is not retried by every route: the failure holds until the refresh.
    again = await source.evidence("t", "chat", "facts", "")
    assert again.unavailable == found.unavailable
    assert len(evaluation.ListEvaluationRuns.calls) == 1

    evaluation.down = False
    evaluation.add(_run("1", "small"), 0.4)
    clock.now += 10
    assert _scores(await source.evidence("t", "chat", "facts", "")) == {"small": ("rep-1", 0.4)}
    evaluation.down = True
    clock.now += 60
    stale = await source.evidence("t", "chat", "facts", "")
    assert stale.unavailable == ""
    assert _scores(stale) == {"small": ("rep-1", 0.4)}
    calls = len(evaluation.ListEvaluationRuns.calls)
    assert _scores(await source.evidence("t", "chat", "facts", "")) == {"small": ("rep-1", 0.4)}
    assert len(evaluation.ListEvaluationRuns.calls) == calls  # stale, without another try


async def test_the_gate_dataset_is_the_default() -> None:
    evaluation = FakeEvaluation()
    evaluation.add(_run("1", "small", dataset="chat-basics"), 0.7)
    with_gate = _source(evaluation, FakePrompts("chat-basics"))

    found = await with_gate.evidence("t", "chat", "", "")
    assert (found.dataset, _scores(found)) == ("chat-basics", {"small": ("rep-1", 0.7)})

    without_gate = await _source(evaluation, FakePrompts("")).evidence("t", "chat", "", "")
    assert without_gate.unavailable == (
        "prompt chat has no evaluation gate and the request names no quality_dataset"
    )
    no_prompt_service = await _source(evaluation).evidence("t", "chat", "", "")
    assert no_prompt_service.unavailable.startswith("prompt chat has no evaluation gate")
    no_prompt = await with_gate.evidence("t", "", "facts", "")
    assert no_prompt.unavailable == "the request names no prompt to read scores of"

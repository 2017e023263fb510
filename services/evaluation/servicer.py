"""genai.evaluation.v1.EvaluationService: converts between protos and evaluation domain types.

Datasets, runs, reports and alerts live in `SqlEvaluationStore`; runs execute in
`services.evaluation.runs.EvaluationRunner`. Every call acts within the caller's tenant.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any, Final, cast

import grpc
from genai.common.v1 import generation_pb2, statistics_pb2
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from google.protobuf import json_format

from services.common import reasons
from services.common.auth import current_principal
from services.common.errors import FieldViolation, InvalidArgument
from services.common.validation import refuse_oversized
from services.common.wire import duration, money, timestamp
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.evaluation.core.datasets import check_examples
from services.evaluation.core.model import (
    MAX_REQUEST_ID,
    MAX_SCORERS,
    AlertState,
    Contains,
    Cost,
    Dataset,
    EmbeddingSimilarity,
    EvaluationReport,
    EvaluationRun,
    ExactMatch,
    Example,
    ExampleRegression,
    ExampleResult,
    JsonSchema,
    Latency,
    LlmJudge,
    NewDataset,
    NewExample,
    QualityAlert,
    Regex,
    ReportComparison,
    RunProgress,
    RunSpec,
    RunState,
    Score,
    ScorerSettings,
    ScorerSpec,
    ScorerSummary,
    TokenUsage,
    example_violations,
    length_violations,
    raise_if,
)
from services.evaluation.core.reports import compare_reports
from services.evaluation.runs import EvaluationRunner, RunEvent
from services.experiment.core.statistics import Interval

SERVICE_NAME = "genai.evaluation.v1.EvaluationService"

pb = evaluation_pb2
spb = evaluation_service_pb2
Context = grpc.aio.ServicerContext[Any, Any]

INLINE_CHECK_EXAMPLES: Final = 20
"""AddExamples renders up to this many examples on the event loop; more in a worker thread."""


class EvaluationServicer(evaluation_service_pb2_grpc.EvaluationServiceServicer):
    """Serves EvaluationService from the evaluation store and the run orchestrator."""

    def __init__(self, store: SqlEvaluationStore, runner: EvaluationRunner) -> None:
        self._store = store
        self._runner = runner

    # ------------------------------------------------------------------------------ datasets

    async def CreateDataset(
        self, request: spb.CreateDatasetRequest, context: Context
    ) -> spb.CreateDatasetResponse:
        """Creates an empty dataset (idempotent per request id)."""
        if not request.HasField("dataset"):
            raise InvalidArgument(violations=[FieldViolation("dataset", "required")])
        new = NewDataset(
            name=request.dataset.name,
            prompt=request.dataset.prompt,
            description=request.dataset.description,
        )
        created = await self._store.create_dataset(_tenant(), new, request_id=request.request_id)
        return spb.CreateDatasetResponse(dataset=dataset_proto(created))

    async def GetDataset(
        self, request: spb.GetDatasetRequest, context: Context
    ) -> spb.GetDatasetResponse:
        """One dataset by name."""
        _require(("name", request.name))
        found = await self._store.get_dataset(_tenant(), request.name)
        return spb.GetDatasetResponse(dataset=dataset_proto(found))

    async def ListDatasets(
        self, request: spb.ListDatasetsRequest, context: Context
    ) -> spb.ListDatasetsResponse:
        """The tenant's datasets in name order, optionally of one prompt."""
        found, token = await self._store.list_datasets(
            _tenant(),
            prompt=request.prompt,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return spb.ListDatasetsResponse(
            datasets=[dataset_proto(d) for d in found], next_page_token=token
        )

    async def AddExamples(
        self, request: spb.AddExamplesRequest, context: Context
    ) -> spb.AddExamplesResponse:
        """Adds examples after checking every one's inputs against the dataset's prompt: its
        `production` version, or its latest version when it has no production label. One bad
        example rejects the batch, naming each `examples[i].inputs.<var>`. Examples are
        content-addressed, so a retry (with or without `request_id`) adds nothing more."""
        _require(("dataset", request.dataset))
        new = [new_example(e) for e in request.examples]
        raise_if(
            example_violations(new)
            + length_violations("request_id", request.request_id, MAX_REQUEST_ID)
        )
        tenant = _tenant()
        dataset = await self._store.get_dataset(tenant, request.dataset)
        schema = await self._runner.schema_version(tenant, dataset.prompt)
        content = schema.version.content
        if len(new) > INLINE_CHECK_EXAMPLES:
            violations = await asyncio.to_thread(check_examples, content, new)
        else:
            violations = check_examples(content, new)
        if violations:
            version = schema.version.number
            raise InvalidArgument(
                f"{len({v.field.split('.')[0] for v in violations})} example(s) do not fit "
                f"version {version} ({schema.source}) of prompt {dataset.prompt!r}: "
                + "; ".join(f"{v.field}: {v.description}" for v in violations[:20]),
                violations=violations,
                reason=reasons.VARIABLE_INVALID,
                metadata={
                    "prompt": dataset.prompt,
                    "prompt_version": str(version),
                    "checked_against": schema.source,
                },
            )
        added = await self._store.add_examples(tenant, request.dataset, new)
        return spb.AddExamplesResponse(examples=[example_proto(e) for e in added])

    async def ListExamples(
        self, request: spb.ListExamplesRequest, context: Context
    ) -> spb.ListExamplesResponse:
        """A dataset's examples in insertion order."""
        _require(("dataset", request.dataset))
        found, token = await self._store.list_examples(
            _tenant(), request.dataset, page_size=request.page_size, page_token=request.page_token
        )
        return spb.ListExamplesResponse(
            examples=[example_proto(e) for e in found], next_page_token=token
        )

    # ------------------------------------------------------------------------------ runs

    async def StartEvaluationRun(
        self, request: spb.StartEvaluationRunRequest, context: Context
    ) -> AsyncIterator[spb.StartEvaluationRunResponse]:
        """Starts a run (or attaches to the run of the same request id) and streams the run,
        progress, results and finally the report; a failed run ends the stream with its
        error. A caller that goes away stops its stream, not the run."""
        if not request.HasField("run"):
            raise InvalidArgument(violations=[FieldViolation("run", "required")])
        refuse_oversized((("run.scorers", request.run.scorers, MAX_SCORERS),))
        events = await self._runner.start(
            _tenant(), run_spec(request.run), request_id=request.request_id
        )
        async with contextlib.aclosing(events):
            async for event in events:
                yield event_proto(event)

    async def GetEvaluationRun(
        self, request: spb.GetEvaluationRunRequest, context: Context
    ) -> spb.GetEvaluationRunResponse:
        """One run with its progress."""
        _require(("id", request.id))
        found = await self._store.get_run(_tenant(), request.id)
        return spb.GetEvaluationRunResponse(run=run_proto(found))

    async def ListEvaluationRuns(
        self, request: spb.ListEvaluationRunsRequest, context: Context
    ) -> spb.ListEvaluationRunsResponse:
        """The tenant's runs, newest first, optionally of one prompt."""
        found, token = await self._store.list_runs(
            _tenant(),
            prompt=request.prompt,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return spb.ListEvaluationRunsResponse(
            runs=[run_proto(r) for r in found], next_page_token=token
        )

    async def CancelEvaluationRun(
        self, request: spb.CancelEvaluationRunRequest, context: Context
    ) -> spb.CancelEvaluationRunResponse:
        """Cancels a queued or running run (FAILED_PRECONDITION once it succeeded or
        failed); cancelling a cancelled run returns it as it is."""
        _require(("id", request.id))
        cancelled = await self._runner.cancel(_tenant(), request.id)
        return spb.CancelEvaluationRunResponse(run=run_proto(cancelled))

    # ------------------------------------------------------------------------------ reports

    async def GetEvaluationReport(
        self, request: spb.GetEvaluationReportRequest, context: Context
    ) -> spb.GetEvaluationReportResponse:
        """One report with every result."""
        _require(("id", request.id))
        found = await self._store.get_report(_tenant(), request.id)
        return spb.GetEvaluationReportResponse(report=report_proto(found))

    async def CompareEvaluationReports(
        self, request: spb.CompareEvaluationReportsRequest, context: Context
    ) -> spb.CompareEvaluationReportsResponse:
        """The candidate against the baseline, scorer by scorer, with the examples that got
        worse."""
        _require(
            ("baseline_report_id", request.baseline_report_id),
            ("candidate_report_id", request.candidate_report_id),
        )
        tenant = _tenant()
        baseline = await self._store.get_report(tenant, request.baseline_report_id)
        candidate = await self._store.get_report(tenant, request.candidate_report_id)
        comparison = compare_reports(baseline, candidate)
        return spb.CompareEvaluationReportsResponse(comparison=comparison_proto(comparison))

    async def ListQualityAlerts(
        self, request: spb.ListQualityAlertsRequest, context: Context
    ) -> spb.ListQualityAlertsResponse:
        """The tenant's quality alerts, newest first, optionally of one prompt and state."""
        found, token = await self._store.list_alerts(
            _tenant(),
            prompt=request.prompt,
            state=_ALERT_STATES.get(request.state),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return spb.ListQualityAlertsResponse(
            alerts=[alert_proto(a) for a in found], next_page_token=token
        )


# ------------------------------------------------------------------------------------------
# Proto -> domain
# ------------------------------------------------------------------------------------------


class _NoKind:
    """Settings of a scorer whose `kind` is unset: `scorer_violations` reports it."""


def scorer_spec(message: pb.Scorer) -> ScorerSpec:
    """A `Scorer` proto as its domain spec (an unset kind fails validation)."""
    settings: object
    match message.WhichOneof("kind"):
        case "exact_match":
            found = message.exact_match
            settings = ExactMatch(found.case_sensitive, found.keep_whitespace)
        case "contains":
            settings = Contains(tuple(message.contains.substrings), message.contains.case_sensitive)
        case "regex":
            settings = Regex(message.regex.pattern)
        case "json_schema":
            settings = JsonSchema()
        case "embedding_similarity":
            settings = EmbeddingSimilarity(message.embedding_similarity.model)
        case "latency":
            settings = Latency()
        case "cost":
            settings = Cost()
        case "llm_judge":
            judge = message.llm_judge
            settings = LlmJudge(judge.rubric_prompt, judge.rubric_label, judge.model)
        case _:
            settings = _NoKind()
    return ScorerSpec(message.name, cast(ScorerSettings, settings))


def run_spec(message: pb.EvaluationRun) -> RunSpec:
    """The caller's part of an `EvaluationRun` proto (output-only fields ignored)."""
    selector = message.WhichOneof("version_selector")
    return RunSpec(
        prompt=message.prompt,
        dataset=message.dataset,
        scorers=tuple(scorer_spec(s) for s in message.scorers),
        prompt_version=message.prompt_version if selector == "prompt_version" else 0,
        prompt_label=message.prompt_label if selector == "prompt_label" else "",
        model=message.model,
        repeats=message.repeats,
        baseline_report_id=message.baseline_report_id,
    )


def new_example(message: pb.Example) -> NewExample:
    """An `Example` proto to add (its id ignored); inputs read as the gateway reads
    variables."""
    return NewExample(
        inputs=json_format.MessageToDict(message.inputs),
        reference=message.reference,
        tags=dict(message.tags),
    )


# ------------------------------------------------------------------------------------------
# Domain -> proto
# ------------------------------------------------------------------------------------------

_RUN_STATES: Final = {
    RunState.QUEUED: pb.RUN_STATE_QUEUED,
    RunState.RUNNING: pb.RUN_STATE_RUNNING,
    RunState.SUCCEEDED: pb.RUN_STATE_SUCCEEDED,
    RunState.FAILED: pb.RUN_STATE_FAILED,
    RunState.CANCELLED: pb.RUN_STATE_CANCELLED,
}
_ALERT_STATES: Final = {
    pb.ALERT_STATE_FIRING: AlertState.FIRING,
    pb.ALERT_STATE_RESOLVED: AlertState.RESOLVED,
}
_ALERT_STATE_PROTO: Final = {state: number for number, state in _ALERT_STATES.items()}


def dataset_proto(dataset: Dataset) -> pb.Dataset:
    """A `Dataset` as its proto."""
    return pb.Dataset(
        name=dataset.name,
        description=dataset.description,
        prompt=dataset.prompt,
        example_count=dataset.example_count,
        create_time=timestamp(dataset.create_time),
    )


def example_proto(example: Example) -> pb.Example:
    """An `Example` as its proto."""
    message = pb.Example(id=example.id, reference=example.reference, tags=dict(example.tags))
    json_format.ParseDict(dict(example.inputs), message.inputs)
    return message


def scorer_proto(spec: ScorerSpec) -> pb.Scorer:
    """A `ScorerSpec` as its proto."""
    message = pb.Scorer(name=spec.name)
    match spec.settings:
        case ExactMatch(case_sensitive=case_sensitive, keep_whitespace=keep_whitespace):
            message.exact_match.CopyFrom(
                pb.ExactMatchScorer(case_sensitive=case_sensitive, keep_whitespace=keep_whitespace)
            )
        case Contains(substrings=substrings, case_sensitive=case_sensitive):
            message.contains.CopyFrom(
                pb.ContainsScorer(substrings=list(substrings), case_sensitive=case_sensitive)
            )
        case Regex(pattern=pattern):
            message.regex.pattern = pattern
        case JsonSchema():
            message.json_schema.SetInParent()
        case EmbeddingSimilarity(model=model):
            message.embedding_similarity.CopyFrom(pb.EmbeddingSimilarityScorer(model=model))
        case Latency():
            message.latency.SetInParent()
        case Cost():
            message.cost.SetInParent()
        case LlmJudge(rubric_prompt=rubric, rubric_label=label, model=model):
            message.llm_judge.CopyFrom(
                pb.LlmJudgeScorer(rubric_prompt=rubric, rubric_label=label, model=model)
            )
    return message


def progress_proto(progress: RunProgress) -> pb.RunProgress:
    """A `RunProgress` as its proto."""
    return pb.RunProgress(
        total=progress.total, completed=progress.completed, failed=progress.failed
    )


def run_proto(run: EvaluationRun) -> pb.EvaluationRun:
    """An `EvaluationRun` as its proto: the version selector as the run was started with
    (the label it defaulted to included)."""
    spec = run.spec
    message = pb.EvaluationRun(
        id=run.id,
        prompt=spec.prompt,
        model=spec.model,
        dataset=spec.dataset,
        scorers=[scorer_proto(s) for s in spec.scorers],
        repeats=spec.repeats,
        baseline_report_id=spec.baseline_report_id,
        state=_RUN_STATES[run.state],
        progress=progress_proto(run.progress),
        resolved_prompt_version=run.resolved_prompt_version,
        report_id=run.report_id,
        error=run.error,
        create_time=timestamp(run.create_time),
    )
    if spec.prompt_version:
        message.prompt_version = spec.prompt_version
    elif spec.prompt_label:
        message.prompt_label = spec.prompt_label
    if run.end_time is not None:
        message.end_time.CopyFrom(timestamp(run.end_time))
    return message


def score_proto(score: Score) -> pb.Score:
    """A `Score` as its proto."""
    return pb.Score(
        scorer=score.scorer, value=score.value, scored=score.scored, explanation=score.explanation
    )


def result_proto(result: ExampleResult) -> pb.ExampleResult:
    """An `ExampleResult` as its proto; a failed generation has no cost."""
    message = pb.ExampleResult(
        example_id=result.example_id,
        repeat=result.repeat,
        output=result.output,
        scores=[score_proto(s) for s in result.scores],
        usage=_usage(result.usage),
        latency=duration(result.latency_seconds),
        model=result.model,
        error=result.error,
    )
    if result.currency or result.cost:
        message.cost.CopyFrom(money(result.cost, result.currency))
    return message


def summary_proto(summary: ScorerSummary) -> pb.ScorerSummary:
    """A `ScorerSummary` as its proto; an undefined interval stays unset."""
    message = pb.ScorerSummary(
        scorer=summary.scorer,
        count=summary.count,
        mean=summary.mean,
        flakiness=summary.flakiness,
    )
    if summary.mean_interval.defined:
        message.mean_interval.CopyFrom(_interval(summary.mean_interval))
    return message


def comparison_proto(comparison: ReportComparison) -> pb.ReportComparison:
    """A `ReportComparison` as its proto; undefined intervals stay unset."""
    message = pb.ReportComparison(
        baseline_report_id=comparison.baseline_report_id,
        candidate_report_id=comparison.candidate_report_id,
        example_regressions=[_regression(r) for r in comparison.example_regressions],
        regressed=comparison.regressed,
    )
    for scorer in comparison.scorers:
        proto = message.scorers.add(
            scorer=scorer.scorer,
            baseline_mean=scorer.baseline_mean,
            candidate_mean=scorer.candidate_mean,
            difference=scorer.difference,
            p_value=scorer.p_value,
            regressed=scorer.regressed,
        )
        if scorer.difference_interval.defined:
            proto.difference_interval.CopyFrom(_interval(scorer.difference_interval))
    return message


def report_proto(report: EvaluationReport) -> pb.EvaluationReport:
    """An `EvaluationReport` as its proto."""
    message = pb.EvaluationReport(
        id=report.id,
        run_id=report.run_id,
        prompt=report.prompt,
        prompt_version=report.prompt_version,
        prompt_content_hash=report.prompt_content_hash,
        model=report.model,
        dataset=report.dataset,
        summaries=[summary_proto(s) for s in report.summaries],
        results=[result_proto(r) for r in report.results],
        usage=_usage(report.usage),
        create_time=timestamp(report.create_time),
    )
    if report.currency or report.cost != Decimal(0):
        message.cost.CopyFrom(money(report.cost, report.currency))
    if report.baseline_comparison is not None:
        message.baseline_comparison.CopyFrom(comparison_proto(report.baseline_comparison))
    return message


def alert_proto(alert: QualityAlert) -> pb.QualityAlert:
    """A `QualityAlert` as its proto."""
    message = pb.QualityAlert(
        id=alert.id,
        prompt=alert.prompt,
        prompt_version=alert.prompt_version,
        scorer=alert.scorer,
        detector=alert.detector,
        baseline_mean=alert.baseline_mean,
        observed_mean=alert.observed_mean,
        sample_count=alert.sample_count,
        state=_ALERT_STATE_PROTO[alert.state],
        fire_time=timestamp(alert.fire_time),
    )
    if alert.resolve_time is not None:
        message.resolve_time.CopyFrom(timestamp(alert.resolve_time))
    return message


def event_proto(event: RunEvent) -> spb.StartEvaluationRunResponse:
    """One run event as a `StartEvaluationRunResponse`."""
    match event:
        case EvaluationRun():
            return spb.StartEvaluationRunResponse(run=run_proto(event))
        case RunProgress():
            return spb.StartEvaluationRunResponse(progress=progress_proto(event))
        case ExampleResult():
            return spb.StartEvaluationRunResponse(result=result_proto(event))
        case EvaluationReport():
            return spb.StartEvaluationRunResponse(report=report_proto(event))


def _regression(regression: ExampleRegression) -> pb.ExampleRegression:
    return pb.ExampleRegression(
        example_id=regression.example_id,
        scorer=regression.scorer,
        baseline_value=regression.baseline_value,
        candidate_value=regression.candidate_value,
    )


def _usage(usage: TokenUsage) -> generation_pb2.TokenUsage:
    return generation_pb2.TokenUsage(
        input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
    )


def _interval(interval: Interval) -> statistics_pb2.ConfidenceInterval:
    return statistics_pb2.ConfidenceInterval(
        lower=interval.lower, upper=interval.upper, confidence_level=interval.confidence_level
    )


def _require(*fields: tuple[str, str]) -> None:
    """InvalidArgument naming every required field that is empty."""
    missing: Sequence[FieldViolation] = [
        FieldViolation(name, "required") for name, value in fields if not value
    ]
    raise_if(missing)


def _tenant() -> str:
    return current_principal().tenant_id

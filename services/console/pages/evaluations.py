"""The Evaluations pages: datasets and their examples, runs with live progress, reports with
each scorer's interval and every output beside its example, comparisons of two reports, and a
form that starts a run.

| route | what it calls (EvaluationService, with the visitor's key) |
|---|---|
| `GET /evaluations` (`?prompt=`) | `ListDatasets`, `ListEvaluationRuns` |
| `GET /evaluations/datasets/{name}` | `GetDataset`, `ListExamples` (a page) |
| `GET /evaluations/runs/{id}` | `GetEvaluationRun` |
| `GET /evaluations/runs/{id}/progress` | `GetEvaluationRun`, as JSON (`static/progress.js`) |
| `POST /evaluations/runs/{id}/cancel` | `CancelEvaluationRun` |
| `GET /evaluations/reports/{id}` | `GetEvaluationReport`, `GetEvaluationRun`, `ListExamples` |
| `GET /evaluations/compare?baseline=&candidate=` | `CompareEvaluationReports`, both reports |
| `GET /evaluations/new`, `POST /evaluations/runs` | `StartEvaluationRun` |

Starting a run opens `StartEvaluationRun`'s stream, reads its first event (the accepted run)
and closes the stream: the run goes on in the service ("a caller that goes away stops its
stream, not the run"), and the browser is sent to the run's page, which polls its progress.

A report holds outputs by example id only: the examples' inputs and references come from the
dataset and the scorers' units from the run (`services.evaluation.report_view`). A report is
still shown when either cannot be read, with example ids only or units read from the values.
Quality scores (0 to 1), seconds and money are each plotted on an axis of their own.

Where the platform has no EvaluationService (it is optional), every page says so (503).
"""

import asyncio
import dataclasses
import json
import math
import uuid
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
import yaml
from genai.common.v1 import statistics_pb2
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2
from genai.router.v1 import router_service_pb2
from google.protobuf import json_format
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.common import reasons
from services.common.wire import seconds as duration_seconds
from services.console import charts, formatting
from services.console.pages import common
from services.console.pages.common import Paged, link, optional, pages, quote, status_of, unread
from services.console.web import (
    PREFIX,
    Console,
    EvaluationStub,
    Failure,
    Visitor,
    form_text,
    redirect,
)
from services.evaluation.report_view import (
    ExampleRow,
    RegressedExampleRow,
    ScoreUnit,
    example_rows,
    latency_seconds,
    regressed_example_rows,
    scorer_units,
)

pb = evaluation_pb2
esb = evaluation_service_pb2
Interval = statistics_pb2.ConfidenceInterval

_SERVICE: Final = "/genai.evaluation.v1.EvaluationService/"
START_RUN: Final = _SERVICE + "StartEvaluationRun"
CANCEL_RUN: Final = _SERVICE + "CancelEvaluationRun"
BASE: Final = f"{PREFIX}/evaluations"

DATASETS_PAGE: Final = 50
RUNS_PAGE: Final = 25
EXAMPLES_PAGE: Final = 50
EXAMPLES_READ_PAGE: Final = 1000
MAX_EXAMPLE_PAGES: Final = 20
"""A report page reads at most this many pages of its dataset's examples (20,000 examples);
outputs of examples beyond them are shown without inputs."""
OTHER_REPORTS: Final = 100
"""Runs of the report's prompt read to offer as the other side of a comparison."""

DEFAULT_SCORERS: Final = """\
- name: answer
  contains: {}        # the example's reference must appear (case-insensitive)
- name: latency
  latency: {}
- name: cost
  cost: {}
"""
"""The scorers the start form offers first: those of `prompts/evals/*.run.yaml`."""

FORM_FIELDS: Final[Mapping[str, str]] = {
    "prompt": "run.prompt",
    "version": "run.prompt_version",
    "label": "run.prompt_label",
    "dataset": "run.dataset",
    "model": "run.model",
    "repeats": "run.repeats",
    "baseline": "run.baseline_report_id",
    "scorers": "run.scorers",
}
"""Each field of the start form and the `EvaluationRun` field its violations name."""

NOT_DEPLOYED: Final = Failure(
    503,
    "UNAVAILABLE",
    "This platform runs no EvaluationService: add `evaluation` to its services to use "
    "datasets, evaluation runs and reports.",
    reason="SERVICE_NOT_DEPLOYED",
    metadata={"service": "genai.evaluation.v1.EvaluationService"},
)

_STATES: Final[Mapping[int, tuple[str, str]]] = {
    pb.RUN_STATE_QUEUED: ("queued", "state-warn"),
    pb.RUN_STATE_RUNNING: ("running", ""),
    pb.RUN_STATE_SUCCEEDED: ("succeeded", "state-good"),
    pb.RUN_STATE_FAILED: ("failed", "state-bad"),
    pb.RUN_STATE_CANCELLED: ("cancelled", "state-warn"),
}
_TERMINAL: Final = frozenset({pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED})
_UNIT_LABELS: Final[Mapping[ScoreUnit, str]] = {
    ScoreUnit.QUALITY: "score (0 to 1)",
    ScoreUnit.SECONDS: "seconds",
    ScoreUnit.CURRENCY: "currency",
}
_MEAN_OF: Final[Mapping[ScoreUnit, str]] = {
    ScoreUnit.QUALITY: "Mean score",
    ScoreUnit.SECONDS: "Mean latency",
    ScoreUnit.CURRENCY: "Mean cost per output",
}
"""What a report's chart of each unit plots."""
_NOUNS: Final[Mapping[ScoreUnit, str]] = {
    ScoreUnit.QUALITY: "score",
    ScoreUnit.SECONDS: "latency",
    ScoreUnit.CURRENCY: "cost",
}
"""What a comparison's chart of each unit plots the difference of."""
_NOT_FOUND_FIELDS: Final[Mapping[str, str]] = {
    reasons.DATASET_NOT_FOUND: "run.dataset",
    reasons.PROMPT_VERSION_NOT_FOUND: "run.prompt_version",
    reasons.LABEL_NOT_FOUND: "run.prompt_label",
    reasons.EVALUATION_REPORT_NOT_FOUND: "run.baseline_report_id",
    reasons.MODEL_NOT_FOUND: "run.model",
}
"""Where a start refused for a missing resource shows the refusal in the form."""


# ------------------------------------------------------------------------------------------
# What the templates show
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """An evaluation run as the pages show it."""

    run: pb.EvaluationRun

    @property
    def state(self) -> str:
        return _STATES.get(self.run.state, ("unknown", ""))[0]

    @property
    def tone(self) -> str:
        """The CSS class of the state."""
        return _STATES.get(self.run.state, ("unknown", ""))[1]

    @property
    def terminal(self) -> bool:
        return self.run.state in _TERMINAL

    @property
    def selector(self) -> str:
        """How the run chose its prompt version: `v3`, `label production`."""
        match self.run.WhichOneof("version_selector"):
            case "prompt_version":
                return f"v{self.run.prompt_version}"
            case "prompt_label":
                return f"label {self.run.prompt_label}"
        return "label production"

    @property
    def by_label(self) -> bool:
        """Whether the run chose its version by a label (the default one included)."""
        selector: str | None = self.run.WhichOneof("version_selector")
        return selector != "prompt_version"

    @property
    def version(self) -> int:
        """The prompt version evaluated: the resolved one, else the requested number, else 0."""
        return self.run.resolved_prompt_version or self.run.prompt_version

    @property
    def done(self) -> int:
        """Outputs finished, failed ones included."""
        return self.run.progress.completed

    @property
    def percent(self) -> str:
        total = self.run.progress.total
        return formatting.percent(self.done / total, 0) if total else "0 %"

    @property
    def progress_text(self) -> str:
        progress = self.run.progress
        if not progress.total:
            return "not started" if not self.terminal else "no outputs"
        failed = f", {progress.failed} failed" if progress.failed else ""
        return f"{progress.completed} of {progress.total} outputs{failed}"

    def scorers(self) -> list[tuple[str, str, str]]:
        """(name, kind, settings as JSON or '') of each scorer."""
        return [_describe_scorer(s) for s in self.run.scorers]

    def progress_json(self) -> dict[str, Any]:
        """What `GET .../progress` answers."""
        progress = self.run.progress
        return {
            "id": self.run.id,
            "state": self.state,
            "terminal": self.terminal,
            "progress": {
                "total": progress.total,
                "completed": progress.completed,
                "failed": progress.failed,
            },
            "text": self.progress_text,
            "report_id": self.run.report_id,
            "report_url": f"{BASE}/reports/{quote(self.run.report_id)}"
            if self.run.report_id
            else "",
            "error": self.run.error,
        }


@dataclass(frozen=True)
class ScoreCell:
    """One score of one output, written in its scorer's unit."""

    scorer: str
    text: str
    tone: str
    explanation: str


@dataclass(frozen=True)
class ResultView:
    """One output of a report beside its example, with its scores."""

    row: ExampleRow
    scores: list[ScoreCell]
    model: str
    latency: str
    known: bool
    """Whether the example was found in the dataset (else no inputs or reference)."""

    @property
    def inputs_json(self) -> str:
        return formatting.pretty_json(self.row.inputs)


@dataclass(frozen=True)
class SummaryView:
    """One scorer's summary, in its unit."""

    scorer: str
    unit: str
    count: int
    mean: str
    interval: str
    flakiness: str


@dataclass(frozen=True)
class ComparisonRow:
    """One scorer of a comparison, in its unit."""

    scorer: str
    unit: str
    baseline: str
    candidate: str
    difference: str
    interval: str
    p_value: str
    regressed: bool


@dataclass(frozen=True)
class RegressedView:
    """An example that got worse, with its inputs, reference and both reports' outputs."""

    row: RegressedExampleRow
    baseline: str
    candidate: str
    baseline_outputs: list[str]
    candidate_outputs: list[str]
    known: bool

    @property
    def inputs_json(self) -> str:
        return formatting.pretty_json(self.row.inputs)


@dataclass(frozen=True)
class Chart:
    """One plot and what it shows (for its caption)."""

    svg: Markup
    caption: str


@dataclass
class StartForm:
    """The start form's values, as typed."""

    values: dict[str, str]
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def of(cls, source: Mapping[str, Any]) -> "StartForm":
        values = {name: form_text(source, name).strip() for name in FORM_FIELDS}
        values["scorers"] = form_text(source, "scorers")  # as typed: YAML minds its spaces
        return cls(values)


# ------------------------------------------------------------------------------------------
# Routes
# ------------------------------------------------------------------------------------------


def routes(console: Console) -> list[BaseRoute]:
    """The Evaluations pages (paths under the console's mount)."""
    guarded = common.guarded(
        console, lambda stubs: stubs.evaluations, NOT_DEPLOYED, "Evaluations are not available"
    )

    @guarded
    async def index(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        query = request.query_params
        prompt = query.get("prompt", "").strip()
        datasets, runs = await asyncio.gather(
            stub.ListDatasets(
                esb.ListDatasetsRequest(
                    page_size=DATASETS_PAGE,
                    page_token=query.get("datasets_page", ""),
                    prompt=prompt,
                ),
                **visitor.read(),
            ),
            stub.ListEvaluationRuns(
                esb.ListEvaluationRunsRequest(
                    page_size=RUNS_PAGE, page_token=query.get("runs_page", ""), prompt=prompt
                ),
                **visitor.read(),
            ),
        )
        return console.render(
            request,
            "evaluations.html",
            visitor,
            title="Evaluations",
            prompt=prompt,
            datasets=list(datasets.datasets),
            runs=[RunView(r) for r in runs.runs],
            next_datasets=_next(BASE, datasets, prompt=prompt, token_name="datasets_page"),
            next_runs=_next(BASE, runs, prompt=prompt, token_name="runs_page"),
            may_start=visitor.may(START_RUN),
            done=query.get("done", ""),
        )

    @guarded
    async def dataset(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        name = request.path_params["name"]
        token = request.query_params.get("page_token", "")
        found, page = await asyncio.gather(
            stub.GetDataset(esb.GetDatasetRequest(name=name), **visitor.read()),
            stub.ListExamples(
                esb.ListExamplesRequest(dataset=name, page_size=EXAMPLES_PAGE, page_token=token),
                **visitor.read(),
            ),
        )
        path = f"{BASE}/datasets/{quote(name)}"
        return console.render(
            request,
            "dataset.html",
            visitor,
            title=f"Dataset {name}",
            dataset=found.dataset,
            examples=[(e, formatting.pretty_json(e.inputs)) for e in page.examples],
            first_url=path if token else "",
            next_url=_next(path, page),
            may_start=visitor.may(START_RUN),
            start_url=link(f"{BASE}/new", prompt=found.dataset.prompt, dataset=name),
        )

    @guarded
    async def run_page(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        run = await _get_run(stub, visitor, request.path_params["run_id"])
        return _render_run(request, visitor, RunView(run))

    def _render_run(
        request: Request, visitor: Visitor, view: RunView, *, failure: Failure | None = None
    ) -> Response:
        return console.render(
            request,
            "evaluation_run.html",
            visitor,
            status=status_of(failure),
            title=f"Evaluation run {view.run.id}",
            view=view,
            failure=failure,
            may_cancel=visitor.may(CANCEL_RUN) and not view.terminal,
            progress_url=f"{BASE}/runs/{quote(view.run.id)}/progress",
            done=request.query_params.get("done", ""),
        )

    async def run_progress(request: Request, visitor: Visitor) -> Response:
        """The run's progress as JSON (`static/progress.js` polls it): errors as JSON too."""
        stub = visitor.stubs.evaluations
        if stub is None:
            return JSONResponse({"error": NOT_DEPLOYED.message}, status_code=503)
        try:
            run = await _get_run(stub, visitor, request.path_params["run_id"])
        except grpc.aio.AioRpcError as error:
            failure = Failure.of_rpc(error)
            return JSONResponse(
                {"error": failure.message, "code": failure.code}, status_code=failure.http_status
            )
        return JSONResponse(RunView(run).progress_json())

    @guarded
    async def cancel(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        run_id = request.path_params["run_id"]
        try:
            await stub.CancelEvaluationRun(
                esb.CancelEvaluationRunRequest(id=run_id), **visitor.write()
            )
        except grpc.aio.AioRpcError as error:
            run = await _get_run(stub, visitor, run_id)
            return _render_run(request, visitor, RunView(run), failure=Failure.of_rpc(error))
        return redirect(f"{BASE}/runs/{quote(run_id)}", done=f"Run {run_id} cancelled.")

    @guarded
    async def report(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        found = (
            await stub.GetEvaluationReport(
                esb.GetEvaluationReportRequest(id=request.path_params["report_id"]),
                **visitor.read(),
            )
        ).report
        (
            (run, run_failure),
            (examples, examples_failure),
            (others, others_failure),
        ) = await asyncio.gather(
            optional(_get_run(stub, visitor, found.run_id)),
            optional(_all_examples(stub, visitor, found.dataset)),
            optional(_other_reports(stub, visitor, found)),
        )
        units = Units.of(found, list(run.scorers) if run is not None else [])
        comparison = found.baseline_comparison if found.HasField("baseline_comparison") else None
        known = examples or {}
        return console.render(
            request,
            "report.html",
            visitor,
            title=f"Evaluation report {found.id}",
            report=found,
            run=RunView(run) if run is not None else None,
            units=units.by_scorer,
            summaries=_summaries(found, units),
            charts=_report_charts(found, units),
            results=_results(found, known, units),
            examples_missing=unread(examples_failure, f"the examples of dataset {found.dataset}"),
            run_missing=unread(run_failure, f"run {found.run_id}"),
            others_missing=unread(others_failure, f"the other runs of {found.prompt}"),
            comparison=comparison,
            comparison_rows=_comparison_rows(comparison, units) if comparison else [],
            regressed=_regressed(comparison, known, None, found, units) if comparison else [],
            others=others or [],
            cost=formatting.money(found.cost) if found.HasField("cost") else "",
        )

    @guarded
    async def compare(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        baseline_id = request.query_params.get("baseline", "").strip()
        candidate_id = request.query_params.get("candidate", "").strip()
        context: dict[str, Any] = {
            "baseline_id": baseline_id,
            "candidate_id": candidate_id,
            "comparison": None,
            "baseline": None,
            "candidate": None,
            "rows": [],
            "charts": [],
            "regressed": [],
            "examples_missing": "",
        }
        if not baseline_id and not candidate_id:
            return _render_compare(request, visitor, context, None)
        if not baseline_id or not candidate_id:
            missing = [
                name
                for name, value in (
                    ("baseline_report_id", baseline_id),
                    ("candidate_report_id", candidate_id),
                )
                if not value
            ]
            failure = Failure(
                400,
                "INVALID_ARGUMENT",
                "Give both reports to compare.",
                field_errors={name: ["required"] for name in missing},
            )
            return _render_compare(request, visitor, context, failure)
        try:
            comparison = (
                await stub.CompareEvaluationReports(
                    esb.CompareEvaluationReportsRequest(
                        baseline_report_id=baseline_id, candidate_report_id=candidate_id
                    ),
                    **visitor.read(),
                )
            ).comparison
        except grpc.aio.AioRpcError as error:
            failure = _compare_failure(error, baseline_id)
            return _render_compare(request, visitor, context, failure)
        baseline, candidate = await asyncio.gather(
            _get_report(stub, visitor, baseline_id), _get_report(stub, visitor, candidate_id)
        )
        examples, examples_failure = await optional(_all_examples(stub, visitor, candidate.dataset))
        units = Units.of(candidate, currency=baseline.cost.currency_code)
        context.update(
            comparison=comparison,
            baseline=baseline,
            candidate=candidate,
            rows=_comparison_rows(comparison, units),
            charts=_comparison_charts(comparison, units),
            regressed=_regressed(comparison, examples or {}, baseline, candidate, units),
            examples_missing=unread(
                examples_failure, f"the examples of dataset {candidate.dataset}"
            ),
        )
        return _render_compare(request, visitor, context, None)

    def _render_compare(
        request: Request, visitor: Visitor, context: dict[str, Any], failure: Failure | None
    ) -> Response:
        return console.render(
            request,
            "report_compare.html",
            visitor,
            status=status_of(failure),
            title="Compare evaluation reports",
            failure=failure,
            errors={
                "baseline": failure.errors_for("baseline_report_id") if failure else [],
                "candidate": failure.errors_for("candidate_report_id") if failure else [],
            },
            **context,
        )

    @guarded
    async def new_run(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        if not visitor.may(START_RUN):
            return console.failure_page(
                request,
                visitor,
                Failure(
                    403,
                    "PERMISSION_DENIED",
                    f"Starting an evaluation run needs the member role; you are a "
                    f"{visitor.role.label}.",
                    reason="PERMISSION_DENIED",
                ),
                title="Not allowed",
            )
        form = StartForm.of(request.query_params)
        if not form.values["scorers"].strip():
            form.values["scorers"] = DEFAULT_SCORERS
        if not form.values["repeats"]:
            form.values["repeats"] = "1"
        return await _render_start(request, visitor, stub, form, None)

    @guarded
    async def start_run(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        submitted = await request.form()
        form = StartForm.of(submitted)
        run, problems = run_from_form(form.values)
        if problems:
            failure = Failure(
                400,
                "INVALID_ARGUMENT",
                "The run was not started: correct the fields marked below.",
                field_errors=problems,
            )
            return await _render_start(request, visitor, stub, form, failure)
        try:
            started = await start(stub, visitor, run, form_text(submitted, "request_id")[:128])
        except grpc.aio.AioRpcError as error:
            failure = _start_failure(error, run)
            return await _render_start(request, visitor, stub, form, failure)
        return redirect(f"{BASE}/runs/{quote(started.id)}", done=f"Run {started.id} started.")

    async def _render_start(
        request: Request,
        visitor: Visitor,
        stub: EvaluationStub,
        form: StartForm,
        failure: Failure | None,
    ) -> Response:
        (datasets, datasets_failure), (models, models_failure) = await asyncio.gather(
            optional(_dataset_names(stub, visitor)), optional(_model_names(visitor))
        )
        return console.render(
            request,
            "evaluation_new.html",
            visitor,
            status=status_of(failure),
            title="Start an evaluation run",
            form=form,
            failure=failure,
            errors={
                name: failure.errors_for(path) if failure else []
                for name, path in FORM_FIELDS.items()
            },
            dataset_options=datasets or [],
            model_options=models or [],
            options_missing="; ".join(
                text
                for text in (
                    unread(datasets_failure, "the datasets"),
                    unread(models_failure, "the models"),
                )
                if text
            ),
        )

    return [
        Route("/evaluations", console.page(index), methods=["GET"]),
        Route("/evaluations/new", console.page(new_run), methods=["GET"]),
        Route("/evaluations/compare", console.page(compare), methods=["GET"]),
        Route("/evaluations/datasets/{name}", console.page(dataset), methods=["GET"]),
        Route("/evaluations/runs", console.action(START_RUN, start_run), methods=["POST"]),
        Route("/evaluations/runs/{run_id}", console.page(run_page), methods=["GET"]),
        Route("/evaluations/runs/{run_id}/progress", console.page(run_progress), methods=["GET"]),
        Route(
            "/evaluations/runs/{run_id}/cancel",
            console.action(CANCEL_RUN, cancel),
            methods=["POST"],
        ),
        Route("/evaluations/reports/{report_id}", console.page(report), methods=["GET"]),
    ]


# ------------------------------------------------------------------------------------------
# Starting a run
# ------------------------------------------------------------------------------------------


async def start(
    stub: EvaluationStub, visitor: Visitor, run: pb.EvaluationRun, request_id: str
) -> pb.EvaluationRun:
    """Starts `run` and returns it as accepted: opens `StartEvaluationRun`'s stream, reads its
    first event and closes the stream, which stops the stream, not the run."""
    call = stub.StartEvaluationRun(
        esb.StartEvaluationRunRequest(run=run, request_id=request_id), **visitor.write()
    )
    try:
        event = await call.read()
    finally:
        call.cancel()
    if isinstance(event, esb.StartEvaluationRunResponse) and event.WhichOneof("event") == "run":
        return event.run
    raise RuntimeError("StartEvaluationRun ended before it sent the accepted run")


def run_from_form(values: Mapping[str, str]) -> tuple[pb.EvaluationRun, dict[str, list[str]]]:
    """The `EvaluationRun` the start form describes, and what is wrong with the form, by the
    run field it concerns (what the service checks, names and references, is left to it)."""
    problems: dict[str, list[str]] = {}
    run = pb.EvaluationRun(
        prompt=values.get("prompt", ""),
        dataset=values.get("dataset", ""),
        model=values.get("model", ""),
        baseline_report_id=values.get("baseline", ""),
    )
    for path, value in (("run.prompt", run.prompt), ("run.dataset", run.dataset)):
        if not value:
            problems[path] = ["required"]
    version, label = values.get("version", ""), values.get("label", "")
    if version and label:
        problems["run.prompt_label"] = ["give a version or a label, not both"]
    elif version:
        number = _whole(version)
        if number is None or number < 1:
            problems["run.prompt_version"] = ["must be a whole number, 1 or more"]
        else:
            run.prompt_version = number
    elif label:
        run.prompt_label = label
    repeats = values.get("repeats", "")
    if repeats:
        count = _whole(repeats)
        if count is None:
            problems["run.repeats"] = ["must be a whole number"]
        else:
            run.repeats = count
    scorers, scorer_problems = parse_scorers(values.get("scorers", ""))
    if scorer_problems:
        problems["run.scorers"] = scorer_problems
    run.scorers.extend(scorers)
    return run, problems


def parse_scorers(text: str) -> tuple[list[pb.Scorer], list[str]]:
    """The scorers of `text`, in the YAML of `genai eval run`'s spec (`prompts/evals/*.run.yaml`):
    a list of `Scorer` fields (`- {name: answer, contains: {}}`), or a whole spec with a
    `scorers` list; and what is wrong with it."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        return [], [f"is not YAML: {getattr(error, 'problem', None) or error}"]
    if isinstance(document, dict) and "scorers" in document:
        document = document["scorers"]
    if not isinstance(document, list) or not document:
        return [], ["give a YAML list of scorers, for example `- {name: answer, contains: {}}`"]
    scorers: list[pb.Scorer] = []
    problems: list[str] = []
    for index, item in enumerate(document, start=1):
        if not isinstance(item, dict):
            problems.append(f"scorer {index} is not a mapping of Scorer fields")
            continue
        try:
            scorers.append(json_format.ParseDict(item, pb.Scorer()))
        except json_format.ParseError as error:
            # The first line names the field; the rest lists every field in camelCase.
            problems.append(f"scorer {index}: {str(error).splitlines()[0]}")
    return scorers, problems


def _start_failure(error: grpc.aio.AioRpcError, run: pb.EvaluationRun) -> Failure:
    """The service's refusal, with a missing resource shown at the field that names it."""
    failure = Failure.of_rpc(error)
    if failure.field_errors or failure.reason is None:
        return failure
    path = _NOT_FOUND_FIELDS.get(failure.reason)
    if failure.reason == reasons.PROMPT_NOT_FOUND:
        named = failure.metadata.get("prompt", run.prompt)
        path = "run.prompt" if named == run.prompt else "run.scorers"
    return _at_field(failure, path) if path is not None else failure


def _compare_failure(error: grpc.aio.AioRpcError, baseline_id: str) -> Failure:
    """A comparison's refusal, a missing report shown at the field that names it."""
    failure = Failure.of_rpc(error)
    if failure.field_errors or failure.reason != reasons.EVALUATION_REPORT_NOT_FOUND:
        return failure
    missing = failure.metadata.get("report_id", "")
    baseline_missing = bool(missing) and missing == baseline_id
    return _at_field(failure, "baseline_report_id" if baseline_missing else "candidate_report_id")


def _at_field(failure: Failure, path: str) -> Failure:
    """`failure` with its message shown as a violation of the field `path`."""
    return dataclasses.replace(failure, field_errors={path: [failure.message]})


# ------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Units:
    """Each scorer's unit, and the report's currency: how its values are written."""

    by_scorer: Mapping[str, ScoreUnit]
    currency: str

    @classmethod
    def of(
        cls, report: pb.EvaluationReport, scorers: Sequence[pb.Scorer] = (), currency: str = ""
    ) -> "Units":
        """The units of `report`'s scorers (read from `scorers` where given, else from the
        values) and its currency (`currency` where the report has none)."""
        return cls(scorer_units(report, list(scorers)), report.cost.currency_code or currency)

    def of_scorer(self, scorer: str) -> ScoreUnit:
        return self.by_scorer.get(scorer, ScoreUnit.QUALITY)

    def value(self, value: float, scorer: str, *, signed: bool = False) -> str:
        """`value` of `scorer` in its unit: a score to 3 decimals, seconds, or money."""
        if not math.isfinite(value):
            return "n/a"
        sign = "+" if signed and value > 0 else "-" if signed and value < 0 else ""
        magnitude = abs(value) if signed else value
        match self.of_scorer(scorer):
            case ScoreUnit.SECONDS:
                return f"{sign}{magnitude:.3f} s"
            case ScoreUnit.CURRENCY:
                return f"{sign}{magnitude:.6f} {self.currency}".rstrip()
        return f"{sign}{magnitude:.3f}"

    def interval(self, interval: Interval | None, scorer: str, *, signed: bool = False) -> str:
        """`lower to upper` in `scorer`'s unit; `undefined` without an interval."""
        if interval is None:
            return "undefined"
        lower = self.value(interval.lower, scorer, signed=signed)
        return f"{lower} to {self.value(interval.upper, scorer, signed=signed)}"

    def label(self, unit: ScoreUnit) -> str:
        """How an axis or a column names `unit`."""
        if unit is ScoreUnit.CURRENCY:
            return f"cost ({self.currency})" if self.currency else "cost"
        return _UNIT_LABELS[unit]

    def grouped(
        self, rows: Iterable[tuple[str, charts.IntervalRow]]
    ) -> list[tuple[ScoreUnit, list[charts.IntervalRow]]]:
        """The chart rows of (scorer, row) pairs by their scorer's unit, in `ScoreUnit`'s
        order: one chart each, since values of different units never share an axis."""
        by_unit: dict[ScoreUnit, list[charts.IntervalRow]] = {}
        for scorer, row in rows:
            by_unit.setdefault(self.of_scorer(scorer), []).append(row)
        return [(unit, by_unit[unit]) for unit in ScoreUnit if unit in by_unit]


def _summaries(report: pb.EvaluationReport, units: Units) -> list[SummaryView]:
    return [
        SummaryView(
            scorer=summary.scorer,
            unit=units.label(units.of_scorer(summary.scorer)),
            count=summary.count,
            mean=units.value(summary.mean, summary.scorer),
            interval=units.interval(_field(summary, "mean_interval"), summary.scorer),
            flakiness=units.value(summary.flakiness, summary.scorer),
        )
        for summary in report.summaries
    ]


def _report_charts(report: pb.EvaluationReport, units: Units) -> list[Chart]:
    """One interval chart per unit of the scorers' means, and the latency distribution."""
    level = _level(_field(s, "mean_interval") for s in report.summaries)
    rows = (
        (s.scorer, _interval_row(s.scorer, s.mean, _field(s, "mean_interval")))
        for s in report.summaries
    )
    found: list[Chart] = []
    for unit, unit_rows in units.grouped(rows):
        title = f"{_MEAN_OF[unit]} per scorer with its {level} interval"
        axis = units.label(unit)
        svg = charts.interval_chart(
            unit_rows,
            title=title,
            axis_label=axis,
            domain=(0.0, 1.0) if unit is ScoreUnit.QUALITY else None,
        )
        found.append(Chart(svg, f"{title}, in {axis}."))
    latencies = latency_seconds(report)
    if latencies:
        svg = charts.histogram(
            latencies, title="Latency of each output", axis_label="seconds", bins=12
        )
        found.append(
            Chart(
                svg,
                "How long each output took end to end, in seconds (failed generations left out).",
            )
        )
    return found


def _results(
    report: pb.EvaluationReport, examples: Mapping[str, pb.Example], units: Units
) -> list[ResultView]:
    return [
        ResultView(
            row=row,
            scores=[_score_cell(score, units) for score in result.scores],
            model=result.model,
            latency=formatting.seconds(duration_seconds(result.latency))
            if result.HasField("latency")
            else "",
            known=result.example_id in examples,
        )
        for row, result in zip(example_rows(report, examples), report.results, strict=True)
    ]


def _score_cell(score: pb.Score, units: Units) -> ScoreCell:
    """One score in its unit; a quality score of 1 is good and of 0 bad."""
    if not score.scored:
        return ScoreCell(score.scorer, "not scored", "state-warn", score.explanation)
    tone = ""
    if units.of_scorer(score.scorer) is ScoreUnit.QUALITY:
        tone = "state-good" if score.value >= 1.0 else "state-bad" if score.value <= 0.0 else ""
    return ScoreCell(score.scorer, units.value(score.value, score.scorer), tone, score.explanation)


def _comparison_rows(comparison: pb.ReportComparison, units: Units) -> list[ComparisonRow]:
    return [
        ComparisonRow(
            scorer=scorer.scorer,
            unit=units.label(units.of_scorer(scorer.scorer)),
            baseline=units.value(scorer.baseline_mean, scorer.scorer),
            candidate=units.value(scorer.candidate_mean, scorer.scorer),
            difference=units.value(scorer.difference, scorer.scorer, signed=True),
            interval=units.interval(
                _field(scorer, "difference_interval"), scorer.scorer, signed=True
            ),
            p_value=_p_value(scorer.p_value),
            regressed=scorer.regressed,
        )
        for scorer in comparison.scorers
    ]


def _comparison_charts(comparison: pb.ReportComparison, units: Units) -> list[Chart]:
    """The difference (candidate minus baseline) of each scorer with its interval, one chart
    per unit, with a line at no difference."""
    level = _level(_field(s, "difference_interval") for s in comparison.scorers)
    rows = (
        (
            s.scorer,
            _interval_row(
                s.scorer,
                s.difference,
                _field(s, "difference_interval"),
                tone="bad" if s.regressed else "",
            ),
        )
        for s in comparison.scorers
    )
    found: list[Chart] = []
    for unit, unit_rows in units.grouped(rows):
        title = (
            f"Difference in mean {_NOUNS[unit]}, candidate minus baseline, "
            f"with its {level} interval"
        )
        svg = charts.interval_chart(
            unit_rows,
            title=title,
            axis_label=f"difference ({units.label(unit)})",
            domain=(-1.0, 1.0) if unit is ScoreUnit.QUALITY else None,
            reference=0.0,
        )
        found.append(Chart(svg, f"{title}. Regressed scorers are drawn in red."))
    return found


def _regressed(
    comparison: pb.ReportComparison,
    examples: Mapping[str, pb.Example],
    baseline: pb.EvaluationReport | None,
    candidate: pb.EvaluationReport,
    units: Units,
) -> list[RegressedView]:
    """The comparison's worse examples with their inputs and, where the reports are at hand,
    both outputs (one per repeat)."""
    before = _outputs(baseline) if baseline is not None else {}
    after = _outputs(candidate)
    return [
        RegressedView(
            row=row,
            baseline=units.value(row.baseline_value, row.scorer),
            candidate=units.value(row.candidate_value, row.scorer),
            baseline_outputs=before.get(row.example_id, []),
            candidate_outputs=after.get(row.example_id, []),
            known=row.example_id in examples,
        )
        for row in regressed_example_rows(comparison, examples)
    ]


def _outputs(report: pb.EvaluationReport) -> dict[str, list[str]]:
    """Each example's outputs (a failure's error in their place), in the order of repeats."""
    found: dict[str, list[str]] = {}
    for result in sorted(report.results, key=lambda r: r.repeat):
        found.setdefault(result.example_id, []).append(
            result.output if not result.error else f"(failed: {result.error})"
        )
    return found


def _interval_row(
    label: str, estimate: float, interval: Interval | None, *, tone: str = ""
) -> charts.IntervalRow:
    return charts.IntervalRow(
        label=label,
        estimate=estimate,
        lower=interval.lower if interval is not None else None,
        upper=interval.upper if interval is not None else None,
        tone=tone,
    )


def _field(message: Any, name: str) -> Interval | None:
    """The interval field `name` of `message`; None when unset."""
    return getattr(message, name) if message.HasField(name) else None


def _level(intervals: Iterable[Interval | None]) -> str:
    """The confidence level of the first interval, as `95%` (95% when there is none)."""
    for interval in intervals:
        if interval is not None and interval.confidence_level:
            return f"{interval.confidence_level * 100:.0f}%"
    return "95%"


def _p_value(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


# ------------------------------------------------------------------------------------------
# Reads
# ------------------------------------------------------------------------------------------


async def _get_run(stub: EvaluationStub, visitor: Visitor, run_id: str) -> pb.EvaluationRun:
    found = await stub.GetEvaluationRun(esb.GetEvaluationRunRequest(id=run_id), **visitor.read())
    return found.run


async def _get_report(
    stub: EvaluationStub, visitor: Visitor, report_id: str
) -> pb.EvaluationReport:
    found = await stub.GetEvaluationReport(
        esb.GetEvaluationReportRequest(id=report_id), **visitor.read()
    )
    return found.report


async def _all_examples(
    stub: EvaluationStub, visitor: Visitor, dataset: str
) -> dict[str, pb.Example]:
    """The dataset's examples by id, page by page (at most `MAX_EXAMPLE_PAGES` pages)."""

    def fetch(token: str) -> Awaitable[esb.ListExamplesResponse]:
        return stub.ListExamples(
            esb.ListExamplesRequest(
                dataset=dataset, page_size=EXAMPLES_READ_PAGE, page_token=token
            ),
            **visitor.read(),
        )

    return {
        example.id: example
        async for page in pages(fetch, limit=MAX_EXAMPLE_PAGES)
        for example in page.examples
    }


async def _other_reports(
    stub: EvaluationStub, visitor: Visitor, report: pb.EvaluationReport
) -> list[tuple[str, str]]:
    """(report id, description) of the other reports of recent runs of the report's prompt,
    newest first: what the comparison form offers."""
    runs = await stub.ListEvaluationRuns(
        esb.ListEvaluationRunsRequest(prompt=report.prompt, page_size=OTHER_REPORTS),
        **visitor.read(),
    )
    return [
        (
            run.report_id,
            f"{run.report_id} · v{run.resolved_prompt_version} on {run.dataset}"
            + (f" · {run.model}" if run.model else "")
            + f" · {formatting.timestamp(run.create_time)}",
        )
        for run in runs.runs
        if run.report_id and run.report_id != report.id
    ]


async def _dataset_names(stub: EvaluationStub, visitor: Visitor) -> list[tuple[str, str]]:
    """(name, prompt) of the tenant's datasets (the first 1000), for the start form."""
    page = await stub.ListDatasets(esb.ListDatasetsRequest(page_size=1000), **visitor.read())
    return [(d.name, d.prompt) for d in page.datasets]


async def _model_names(visitor: Visitor) -> list[str]:
    """The catalog's models (the first 1000), for the start form; none without a router."""
    if visitor.stubs.router is None:
        return []
    page = await visitor.stubs.router.ListModels(
        router_service_pb2.ListModelsRequest(page_size=1000), **visitor.read()
    )
    return [m.name for m in page.models]


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def _next(path: str, page: Paged, *, token_name: str = "page_token", **query: str) -> str:
    """The link to the page after `page` of a list (with `query`); '' after the last one."""
    if not page.next_page_token:
        return ""
    return link(path, **query, **{token_name: page.next_page_token})


def _describe_scorer(scorer: pb.Scorer) -> tuple[str, str, str]:
    """(name, kind, settings as JSON or '') of a scorer."""
    kind = scorer.WhichOneof("kind")
    if kind is None:
        return scorer.name, "unset", ""
    settings = json_format.MessageToDict(getattr(scorer, kind), preserving_proto_field_name=True)
    return scorer.name, kind, json.dumps(settings, ensure_ascii=False) if settings else ""


def _whole(text: str) -> int | None:
    try:
        return int(text, 10)
    except ValueError:
        return None

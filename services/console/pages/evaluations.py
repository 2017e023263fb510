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
import json
import math
import urllib.parse
import uuid
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import grpc
import yaml
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
from services.console.web import (
    PREFIX,
    Console,
    EvaluationStub,
    Failure,
    View,
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
T = TypeVar("T")

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
            "report_url": f"{BASE}/reports/{_q(self.run.report_id)}" if self.run.report_id else "",
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
        return json.dumps(self.row.inputs, indent=2, ensure_ascii=False)


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
        return json.dumps(self.row.inputs, indent=2, ensure_ascii=False)


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
        values = {name: _text(source.get(name)).strip() for name in FORM_FIELDS}
        values["scorers"] = _text(source.get("scorers"))
        return cls(values)


# ------------------------------------------------------------------------------------------
# Routes
# ------------------------------------------------------------------------------------------


def routes(console: Console) -> list[BaseRoute]:
    """The Evaluations pages (paths under the console's mount)."""

    def guarded(view: View) -> View:
        async def run(request: Request, visitor: Visitor) -> Response:
            if visitor.stubs.evaluations is None:
                return console.failure_page(
                    request, visitor, NOT_DEPLOYED, title="Evaluations are not available"
                )
            return await view(request, visitor)

        return run

    async def index(request: Request, visitor: Visitor) -> Response:
        stub = _stub(visitor)
        query = request.query_params
        prompt = query.get("prompt", "").strip()
        datasets, runs = await asyncio.gather(
            _call(
                stub.ListDatasets(
                    esb.ListDatasetsRequest(
                        page_size=DATASETS_PAGE,
                        page_token=query.get("datasets_page", ""),
                        prompt=prompt,
                    ),
                    **visitor.read(),
                )
            ),
            _call(
                stub.ListEvaluationRuns(
                    esb.ListEvaluationRunsRequest(
                        page_size=RUNS_PAGE, page_token=query.get("runs_page", ""), prompt=prompt
                    ),
                    **visitor.read(),
                )
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
            next_datasets=_url(BASE, prompt=prompt, datasets_page=datasets.next_page_token)
            if datasets.next_page_token
            else "",
            next_runs=_url(BASE, prompt=prompt, runs_page=runs.next_page_token)
            if runs.next_page_token
            else "",
            may_start=visitor.may(START_RUN),
            done=query.get("done", ""),
        )

    async def dataset(request: Request, visitor: Visitor) -> Response:
        stub = _stub(visitor)
        name = request.path_params["name"]
        token = request.query_params.get("page_token", "")
        found, page = await asyncio.gather(
            _call(stub.GetDataset(esb.GetDatasetRequest(name=name), **visitor.read())),
            _call(
                stub.ListExamples(
                    esb.ListExamplesRequest(
                        dataset=name, page_size=EXAMPLES_PAGE, page_token=token
                    ),
                    **visitor.read(),
                )
            ),
        )
        return console.render(
            request,
            "dataset.html",
            visitor,
            title=f"Dataset {name}",
            dataset=found.dataset,
            examples=[
                (e, json.dumps(json_format.MessageToDict(e.inputs), indent=2, ensure_ascii=False))
                for e in page.examples
            ],
            first_page=not token,
            next_page=_url(f"{BASE}/datasets/{_q(name)}", page_token=page.next_page_token)
            if page.next_page_token
            else "",
            may_start=visitor.may(START_RUN),
            start_url=_url(f"{BASE}/new", prompt=found.dataset.prompt, dataset=name),
        )

    async def run_page(request: Request, visitor: Visitor) -> Response:
        stub = _stub(visitor)
        run_id = request.path_params["run_id"]
        found = await stub.GetEvaluationRun(
            esb.GetEvaluationRunRequest(id=run_id), **visitor.read()
        )
        return _render_run(request, visitor, RunView(found.run))

    def _render_run(
        request: Request,
        visitor: Visitor,
        view: RunView,
        *,
        failure: Failure | None = None,
    ) -> Response:
        return console.render(
            request,
            "evaluation_run.html",
            visitor,
            status=failure.http_status if failure else 200,
            title=f"Evaluation run {view.run.id}",
            view=view,
            failure=failure,
            may_cancel=visitor.may(CANCEL_RUN) and not view.terminal,
            progress_url=f"{BASE}/runs/{_q(view.run.id)}/progress",
            done=request.query_params.get("done", ""),
        )

    async def run_progress(request: Request, visitor: Visitor) -> Response:
        stub = visitor.stubs.evaluations
        if stub is None:
            return JSONResponse({"error": NOT_DEPLOYED.message}, status_code=503)
        run_id = request.path_params["run_id"]
        try:
            found = await stub.GetEvaluationRun(
                esb.GetEvaluationRunRequest(id=run_id), **visitor.read()
            )
        except grpc.aio.AioRpcError as error:
            failure = Failure.of_rpc(error)
            return JSONResponse(
                {"error": failure.message, "code": failure.code}, status_code=failure.http_status
            )
        return JSONResponse(RunView(found.run).progress_json())

    async def cancel(request: Request, visitor: Visitor) -> Response:
        stub = _stub(visitor)
        run_id = request.path_params["run_id"]
        try:
            await stub.CancelEvaluationRun(
                esb.CancelEvaluationRunRequest(id=run_id), **visitor.write()
            )
        except grpc.aio.AioRpcError as error:
            failure = Failure.of_rpc(error)
            found = await stub.GetEvaluationRun(
                esb.GetEvaluationRunRequest(id=run_id), **visitor.read()
            )
            return _render_run(request, visitor, RunView(found.run), failure=failure)
        return redirect(f"{BASE}/runs/{_q(run_id)}", done=f"Run {run_id} cancelled.")

    async def report(request: Request, visitor: Visitor) -> Response:
        stub = _stub(visitor)
        report_id = request.path_params["report_id"]
        found = (
            await stub.GetEvaluationReport(
                esb.GetEvaluationReportRequest(id=report_id), **visitor.read()
            )
        ).report
        run, examples, others = await asyncio.gather(
            _optional(
                _call(
                    stub.GetEvaluationRun(
                        esb.GetEvaluationRunRequest(id=found.run_id), **visitor.read()
                    )
                )
            ),
            _optional(_all_examples(stub, visitor, found.dataset)),
            _optional(_other_reports(stub, visitor, found)),
        )
        scorers = list(run[0].run.scorers) if run[0] is not None else []
        units = scorer_units(found, scorers)
        currency = found.cost.currency_code
        comparison = found.baseline_comparison if found.HasField("baseline_comparison") else None
        known = examples[0] or {}
        return console.render(
            request,
            "report.html",
            visitor,
            title=f"Evaluation report {found.id}",
            report=found,
            run=RunView(run[0].run) if run[0] is not None else None,
            units=units,
            summaries=_summaries(found, units, currency),
            charts=_report_charts(found, units, currency),
            results=_results(found, known, units, currency),
            examples_missing=_why(examples[1], f"the examples of dataset {found.dataset}"),
            run_missing=_why(run[1], f"run {found.run_id}"),
            comparison=comparison,
            comparison_rows=_comparison_rows(comparison, units, currency) if comparison else [],
            regressed=_regressed(comparison, known, None, found, units, currency)
            if comparison
            else [],
            others=others[0] or [],
            cost=formatting.money(found.cost) if found.HasField("cost") else "",
        )

    async def compare(request: Request, visitor: Visitor) -> Response:
        stub = _stub(visitor)
        baseline_id = request.query_params.get("baseline", "").strip()
        candidate_id = request.query_params.get("candidate", "").strip()
        failure: Failure | None = None
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
            failure = Failure(
                400,
                "INVALID_ARGUMENT",
                "Give both reports to compare.",
                field_errors={
                    name: ["required"]
                    for name, value in (
                        ("baseline_report_id", baseline_id),
                        ("candidate_report_id", candidate_id),
                    )
                    if not value
                },
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
            return _render_compare(request, visitor, context, _report_failure(error, context))
        baseline, candidate = await asyncio.gather(
            _call(
                stub.GetEvaluationReport(
                    esb.GetEvaluationReportRequest(id=baseline_id), **visitor.read()
                )
            ),
            _call(
                stub.GetEvaluationReport(
                    esb.GetEvaluationReportRequest(id=candidate_id), **visitor.read()
                )
            ),
        )
        examples = await _optional(_all_examples(stub, visitor, candidate.report.dataset))
        units = scorer_units(candidate.report)
        currency = candidate.report.cost.currency_code or baseline.report.cost.currency_code
        context.update(
            comparison=comparison,
            baseline=baseline.report,
            candidate=candidate.report,
            rows=_comparison_rows(comparison, units, currency),
            charts=_comparison_charts(comparison, units, currency),
            regressed=_regressed(
                comparison, examples[0] or {}, baseline.report, candidate.report, units, currency
            ),
            examples_missing=_why(
                examples[1], f"the examples of dataset {candidate.report.dataset}"
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
            status=failure.http_status if failure else 200,
            title="Compare evaluation reports",
            failure=failure,
            errors={
                "baseline": failure.errors_for("baseline_report_id") if failure else [],
                "candidate": failure.errors_for("candidate_report_id") if failure else [],
            },
            **context,
        )

    async def new_run(request: Request, visitor: Visitor) -> Response:
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
        return await _render_start(request, visitor, form, None)

    async def start_run(request: Request, visitor: Visitor) -> Response:
        stub = _stub(visitor)
        submitted = await request.form()
        form = StartForm.of(submitted)
        request_id = form_text(submitted, "request_id")[:128]
        run, problems = run_from_form(form.values)
        if problems:
            failure = Failure(
                400,
                "INVALID_ARGUMENT",
                "The run was not started: correct the fields marked below.",
                field_errors=problems,
            )
            return await _render_start(request, visitor, form, failure)
        try:
            started = await start(stub, visitor, run, request_id)
        except grpc.aio.AioRpcError as error:
            return await _render_start(request, visitor, form, _start_failure(error, run))
        return redirect(f"{BASE}/runs/{_q(started.id)}", done=f"Run {started.id} started.")

    async def _render_start(
        request: Request, visitor: Visitor, form: StartForm, failure: Failure | None
    ) -> Response:
        datasets, models = await asyncio.gather(
            _optional(_dataset_names(_stub(visitor), visitor)),
            _optional(_model_names(visitor)),
        )
        return console.render(
            request,
            "evaluation_new.html",
            visitor,
            status=failure.http_status if failure else 200,
            title="Start an evaluation run",
            form=form,
            failure=failure,
            errors={
                name: failure.errors_for(path) if failure else []
                for name, path in FORM_FIELDS.items()
            },
            dataset_options=datasets[0] or [],
            model_options=models[0] or [],
        )

    return [
        Route("/evaluations", console.page(guarded(index)), methods=["GET"]),
        Route("/evaluations/new", console.page(guarded(new_run)), methods=["GET"]),
        Route("/evaluations/compare", console.page(guarded(compare)), methods=["GET"]),
        Route("/evaluations/datasets/{name}", console.page(guarded(dataset)), methods=["GET"]),
        Route(
            "/evaluations/runs",
            console.action(START_RUN, guarded(start_run)),
            methods=["POST"],
        ),
        Route("/evaluations/runs/{run_id}", console.page(guarded(run_page)), methods=["GET"]),
        Route(
            "/evaluations/runs/{run_id}/progress",
            console.page(run_progress),
            methods=["GET"],
        ),
        Route(
            "/evaluations/runs/{run_id}/cancel",
            console.action(CANCEL_RUN, guarded(cancel)),
            methods=["POST"],
        ),
        Route("/evaluations/reports/{report_id}", console.page(guarded(report)), methods=["GET"]),
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
    if path is None:
        return failure
    return Failure(
        failure.http_status,
        failure.code,
        failure.message,
        reason=failure.reason,
        metadata=failure.metadata,
        field_errors={path: [failure.message]},
    )


def _report_failure(error: grpc.aio.AioRpcError, context: Mapping[str, Any]) -> Failure:
    """A comparison's refusal, a missing report shown at the field that names it."""
    failure = Failure.of_rpc(error)
    if failure.field_errors or failure.reason != reasons.EVALUATION_REPORT_NOT_FOUND:
        return failure
    missing = failure.metadata.get("report_id", "")
    path = (
        "baseline_report_id"
        if missing and missing == context["baseline_id"]
        else "candidate_report_id"
    )
    return Failure(
        failure.http_status,
        failure.code,
        failure.message,
        reason=failure.reason,
        metadata=failure.metadata,
        field_errors={path: [failure.message]},
    )


# ------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------


def _summaries(
    report: pb.EvaluationReport, units: Mapping[str, ScoreUnit], currency: str
) -> list[SummaryView]:
    views = []
    for summary in report.summaries:
        unit = units.get(summary.scorer, ScoreUnit.QUALITY)
        interval = (
            f"{_value(summary.mean_interval.lower, unit, currency)} to "
            f"{_value(summary.mean_interval.upper, unit, currency)}"
            if summary.HasField("mean_interval")
            else "undefined"
        )
        views.append(
            SummaryView(
                scorer=summary.scorer,
                unit=_unit_label(unit, currency),
                count=summary.count,
                mean=_value(summary.mean, unit, currency),
                interval=interval,
                flakiness=_value(summary.flakiness, unit, currency),
            )
        )
    return views


def _report_charts(
    report: pb.EvaluationReport, units: Mapping[str, ScoreUnit], currency: str
) -> list[Chart]:
    """One interval chart per unit of the scorers' means, and the latency distribution."""
    found: list[Chart] = []
    level = _level(s.mean_interval for s in report.summaries if s.HasField("mean_interval"))
    for unit in ScoreUnit:
        rows = [
            charts.IntervalRow(
                label=s.scorer,
                estimate=s.mean,
                lower=s.mean_interval.lower if s.HasField("mean_interval") else None,
                upper=s.mean_interval.upper if s.HasField("mean_interval") else None,
            )
            for s in report.summaries
            if units.get(s.scorer, ScoreUnit.QUALITY) is unit
        ]
        if not rows:
            continue
        what = {
            ScoreUnit.QUALITY: "Mean score",
            ScoreUnit.SECONDS: "Mean latency",
            ScoreUnit.CURRENCY: "Mean cost per output",
        }[unit]
        title = f"{what} per scorer with its {level} interval"
        found.append(
            Chart(
                charts.interval_chart(
                    rows,
                    title=title,
                    axis_label=_unit_label(unit, currency),
                    domain=(0.0, 1.0) if unit is ScoreUnit.QUALITY else None,
                ),
                f"{title}, in {_unit_label(unit, currency)}.",
            )
        )
    latencies = latency_seconds(report)
    if latencies:
        found.append(
            Chart(
                charts.histogram(
                    latencies, title="Latency of each output", axis_label="seconds", bins=12
                ),
                "How long each output took end to end, in seconds (failed generations left out).",
            )
        )
    return found


def _results(
    report: pb.EvaluationReport,
    examples: Mapping[str, pb.Example],
    units: Mapping[str, ScoreUnit],
    currency: str,
) -> list[ResultView]:
    views = []
    for row, result in zip(example_rows(report, examples), report.results, strict=True):
        cells = []
        for score in result.scores:
            unit = units.get(score.scorer, ScoreUnit.QUALITY)
            if not score.scored:
                cells.append(ScoreCell(score.scorer, "not scored", "state-warn", score.explanation))
                continue
            tone = ""
            if unit is ScoreUnit.QUALITY:
                tone = (
                    "state-good"
                    if score.value >= 1.0
                    else "state-bad"
                    if score.value <= 0.0
                    else ""
                )
            cells.append(
                ScoreCell(
                    score.scorer, _value(score.value, unit, currency), tone, score.explanation
                )
            )
        views.append(
            ResultView(
                row=row,
                scores=cells,
                model=result.model,
                latency=formatting.seconds(duration_seconds(result.latency))
                if result.HasField("latency")
                else "",
                known=result.example_id in examples,
            )
        )
    return views


def _comparison_rows(
    comparison: pb.ReportComparison, units: Mapping[str, ScoreUnit], currency: str
) -> list[ComparisonRow]:
    rows = []
    for scorer in comparison.scorers:
        unit = units.get(scorer.scorer, ScoreUnit.QUALITY)
        interval = (
            f"{_value(scorer.difference_interval.lower, unit, currency, signed=True)} to "
            f"{_value(scorer.difference_interval.upper, unit, currency, signed=True)}"
            if scorer.HasField("difference_interval")
            else "undefined"
        )
        rows.append(
            ComparisonRow(
                scorer=scorer.scorer,
                unit=_unit_label(unit, currency),
                baseline=_value(scorer.baseline_mean, unit, currency),
                candidate=_value(scorer.candidate_mean, unit, currency),
                difference=_value(scorer.difference, unit, currency, signed=True),
                interval=interval,
                p_value=_p_value(scorer.p_value),
                regressed=scorer.regressed,
            )
        )
    return rows


def _comparison_charts(
    comparison: pb.ReportComparison, units: Mapping[str, ScoreUnit], currency: str
) -> list[Chart]:
    """The difference (candidate minus baseline) of each scorer with its interval, one chart
    per unit, with a line at no difference."""
    found = []
    level = _level(
        s.difference_interval for s in comparison.scorers if s.HasField("difference_interval")
    )
    for unit in ScoreUnit:
        rows = [
            charts.IntervalRow(
                label=s.scorer,
                estimate=s.difference,
                lower=s.difference_interval.lower if s.HasField("difference_interval") else None,
                upper=s.difference_interval.upper if s.HasField("difference_interval") else None,
                tone="bad" if s.regressed else "",
            )
            for s in comparison.scorers
            if units.get(s.scorer, ScoreUnit.QUALITY) is unit
        ]
        if not rows:
            continue
        label = _unit_label(unit, currency)
        noun = {
            ScoreUnit.QUALITY: "score",
            ScoreUnit.SECONDS: "latency",
            ScoreUnit.CURRENCY: "cost",
        }
        title = (
            f"Difference in mean {noun[unit]}, candidate minus baseline, with its {level} interval"
        )
        found.append(
            Chart(
                charts.interval_chart(
                    rows,
                    title=title,
                    axis_label=f"difference ({label})",
                    domain=(-1.0, 1.0) if unit is ScoreUnit.QUALITY else None,
                    reference=0.0,
                ),
                f"{title}. Regressed scorers are drawn in red.",
            )
        )
    return found


def _regressed(
    comparison: pb.ReportComparison,
    examples: Mapping[str, pb.Example],
    baseline: pb.EvaluationReport | None,
    candidate: pb.EvaluationReport,
    units: Mapping[str, ScoreUnit],
    currency: str,
) -> list[RegressedView]:
    """The comparison's worse examples with their inputs and, where the reports are at hand,
    both outputs (one per repeat)."""
    before = _outputs(baseline) if baseline is not None else {}
    after = _outputs(candidate)
    views = []
    for row in regressed_example_rows(comparison, examples):
        unit = units.get(row.scorer, ScoreUnit.QUALITY)
        views.append(
            RegressedView(
                row=row,
                baseline=_value(row.baseline_value, unit, currency),
                candidate=_value(row.candidate_value, unit, currency),
                baseline_outputs=before.get(row.example_id, []),
                candidate_outputs=after.get(row.example_id, []),
                known=row.example_id in examples,
            )
        )
    return views


def _outputs(report: pb.EvaluationReport) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for result in sorted(report.results, key=lambda r: r.repeat):
        found.setdefault(result.example_id, []).append(
            result.output if not result.error else f"(failed: {result.error})"
        )
    return found


# ------------------------------------------------------------------------------------------
# Reads
# ------------------------------------------------------------------------------------------


async def _all_examples(
    stub: EvaluationStub, visitor: Visitor, dataset: str
) -> dict[str, pb.Example]:
    """The dataset's examples by id, page by page (at most `MAX_EXAMPLE_PAGES` pages)."""
    examples: dict[str, pb.Example] = {}
    token = ""
    for _ in range(MAX_EXAMPLE_PAGES):
        page = await stub.ListExamples(
            esb.ListExamplesRequest(
                dataset=dataset, page_size=EXAMPLES_READ_PAGE, page_token=token
            ),
            **visitor.read(),
        )
        examples.update((e.id, e) for e in page.examples)
        token = page.next_page_token
        if not token:
            break
    return examples


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


async def _call(awaitable: Awaitable[T]) -> T:
    """`awaitable` as a coroutine (for `asyncio.gather`)."""
    return await awaitable


async def _optional(
    awaitable: Awaitable[T],
) -> tuple[T | None, Failure | None]:
    """The value of a read a page can go without, or why it failed."""
    try:
        return await awaitable, None
    except grpc.aio.AioRpcError as error:
        return None, Failure.of_rpc(error)


def _why(failure: Failure | None, what: str) -> str:
    return f"{what} could not be read ({failure.code}: {failure.message})" if failure else ""


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def _stub(visitor: Visitor) -> EvaluationStub:
    stub = visitor.stubs.evaluations
    if stub is None:  # the views are guarded: this is a bug
        raise RuntimeError("no EvaluationService")
    return stub


def _describe_scorer(scorer: pb.Scorer) -> tuple[str, str, str]:
    kind = scorer.WhichOneof("kind") or "unset"
    settings = (
        json_format.MessageToDict(getattr(scorer, kind), preserving_proto_field_name=True)
        if kind != "unset"
        else {}
    )
    return scorer.name, kind, json.dumps(settings, ensure_ascii=False) if settings else ""


def _value(value: float, unit: ScoreUnit, currency: str, *, signed: bool = False) -> str:
    """A value in its unit: a score to 3 decimals, seconds, or money."""
    if not math.isfinite(value):
        return "n/a"
    sign = "+" if signed and value > 0 else "-" if signed and value < 0 else ""
    magnitude = abs(value) if signed else value
    if unit is ScoreUnit.SECONDS:
        return f"{sign}{magnitude:.3f} s"
    if unit is ScoreUnit.CURRENCY:
        return f"{sign}{magnitude:.6f} {currency}".rstrip()
    return f"{sign}{magnitude:.3f}"


def _unit_label(unit: ScoreUnit, currency: str) -> str:
    if unit is ScoreUnit.CURRENCY:
        return f"cost ({currency})" if currency else "cost"
    return _UNIT_LABELS[unit]


def _p_value(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _level(intervals: Iterable[Any]) -> str:
    """The confidence level of the first interval, as `95%` (95% when there is none)."""
    for interval in intervals:
        if interval.confidence_level:
            return f"{interval.confidence_level * 100:.0f}%"
    return "95%"


def _whole(text: str) -> int | None:
    try:
        return int(text, 10)
    except ValueError:
        return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _url(path: str, **query: str) -> str:
    present = {k: v for k, v in query.items() if v}
    return path + (f"?{urllib.parse.urlencode(present)}" if present else "")

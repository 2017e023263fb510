"""The request log, quality alerts and models pages.

| page | what it calls (with the visitor's key) |
|---|---|
| `/logs` | GatewayService `ListRequestLogs`: a search form (a GET, so a search is a link) |
| `/logs/{request_id}` | GatewayService `ListRequestLogs` by `request_id` |
| `/alerts` | EvaluationService `ListQualityAlerts` |
| `/models` | RouterService `ListModels`, `GetBackendHealth` |

Every search field is a filter of `ListRequestLogs` (prompt, model, status, arrival time,
request id), so a page is one call and its next-page link carries the RPC's token. Entries are
shown as the gateway logged them: redacted by its `request_log.content` policy.
"""

import argparse
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import grpc
from genai.common.v1 import generation_pb2, routing_pb2
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2
from genai.router.v1 import router_pb2, router_service_pb2
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.common.wire import MAX_PAGE_SIZE, counted_by, timestamp, usage_source_name
from services.console import formatting
from services.console.charts import IntervalRow, interval_chart
from services.console.pages.common import guarded, link, pages, quote, status_of
from services.console.web import (
    PREFIX,
    Console,
    EvaluationStub,
    Failure,
    RouterStub,
    Visitor,
    redirect,
)
from services.gateway.logs_cli import STATUS_NAMES, parse_since

PAGE_SIZE: Final = 50
"""Entries on one page of the request log (and alerts on one page)."""
MODEL_PAGES: Final = 20
"""Pages of `MAX_PAGE_SIZE` the models page reads the catalog in, at most."""
SEARCH_FIELDS: Final = ("start_time", "end_time", "prompt", "model", "status")
"""The request log's search fields, as query parameters (the RPC's own names where it has
them)."""
ALERT_STATES: Final[Mapping[str, int]] = {
    "": evaluation_pb2.ALERT_STATE_UNSPECIFIED,
    "firing": evaluation_pb2.ALERT_STATE_FIRING,
    "resolved": evaluation_pb2.ALERT_STATE_RESOLVED,
}
"""The alert page's `state` values and the states they ask for ("" is every state)."""
NOT_SET: Final = "—"
"""What a cell without a value shows."""


def routes(console: Console) -> list[BaseRoute]:
    """The pages of this module, relative to the console's mount."""

    async def logs_page(request: Request, visitor: Visitor) -> Response:
        search = LogSearch.of(request.query_params)
        if search.request_id:
            return redirect(f"{PREFIX}/logs/{quote(search.request_id)}")
        failure = search.failure()
        result = LogResult()
        if failure is None:
            try:
                result = await _search(visitor, search)
            except grpc.aio.AioRpcError as error:
                failure = Failure.of_rpc(error)
        return console.render(
            request,
            "logs.html",
            visitor,
            status=status_of(failure),
            title="Request log",
            search=search,
            failure=failure,
            result=result,
            statuses=STATUS_NAMES,
            next_url=search.link(page_token=result.next_page_token)
            if result.next_page_token
            else "",
            first_url=search.link() if search.page_token else "",
        )

    async def log_page(request: Request, visitor: Visitor) -> Response:
        request_id = request.path_params["request_id"]
        found = await visitor.stubs.gateway.ListRequestLogs(
            gateway_service_pb2.ListRequestLogsRequest(request_id=request_id, page_size=1),
            **visitor.read(),
        )
        if not found.entries:
            return console.failure_page(
                request,
                visitor,
                Failure(
                    404,
                    "NOT_FOUND",
                    f"Request {request_id!r} is not in your tenant's request log.",
                    reason="REQUEST_LOG_ENTRY_NOT_FOUND",
                ),
                title="Request not found",
            )
        entry = found.entries[0]
        return console.render(
            request,
            "log_detail.html",
            visitor,
            title=f"Request {request_id}",
            entry=entry,
            view=EntryView.of(entry),
        )

    @guarded(
        console,
        lambda stubs: stubs.evaluations,
        not_deployed("genai.evaluation.v1.EvaluationService", "Quality alerts"),
        "Quality alerts are not available",
    )
    async def alerts_page(request: Request, visitor: Visitor, stub: EvaluationStub) -> Response:
        params = request.query_params
        prompt = params.get("prompt", "").strip()
        state = params.get("state", "").strip().lower()
        page_token = params.get("page_token", "")
        failure: Failure | None = None
        response = evaluation_service_pb2.ListQualityAlertsResponse()
        if state not in ALERT_STATES:
            failure = Failure(
                400,
                "INVALID_ARGUMENT",
                "Check the filter.",
                field_errors={"state": ["must be firing, resolved or empty (every state)"]},
            )
        else:
            try:
                response = await stub.ListQualityAlerts(
                    evaluation_service_pb2.ListQualityAlertsRequest(
                        page_size=PAGE_SIZE,
                        page_token=page_token,
                        prompt=prompt,
                        state=ALERT_STATES[state],  # type: ignore[arg-type]
                    ),
                    **visitor.read(),
                )
            except grpc.aio.AioRpcError as error:
                failure = Failure.of_rpc(error)
        path = f"{PREFIX}/alerts"
        return console.render(
            request,
            "alerts.html",
            visitor,
            status=status_of(failure),
            title="Quality alerts",
            failure=failure,
            prompt=prompt,
            state=state,
            alerts=[AlertRow.of(alert) for alert in response.alerts],
            next_url=link(path, prompt=prompt, state=state, page_token=response.next_page_token)
            if response.next_page_token
            else "",
            first_url=link(path, prompt=prompt, state=state) if page_token else "",
        )

    @guarded(
        console,
        lambda stubs: stubs.router,
        not_deployed("genai.router.v1.RouterService", "The model catalog"),
        "Models are not available",
    )
    async def models_page(request: Request, visitor: Visitor, router: RouterStub) -> Response:
        models = await _catalog(visitor, router)
        health: router_service_pb2.GetBackendHealthResponse = await router.GetBackendHealth(
            router_service_pb2.GetBackendHealthRequest(), **visitor.read()
        )
        return console.render(
            request,
            "models.html",
            visitor,
            title="Models",
            models=[ModelRow.of(model) for model in models],
            backends=backend_rows(models, health.backends),
            first_token_chart=first_token_chart(health.backends),
        )

    return [
        Route("/logs", console.page(logs_page), methods=["GET"]),
        Route("/logs/{request_id:path}", console.page(log_page), methods=["GET"]),
        Route("/alerts", console.page(alerts_page), methods=["GET"]),
        Route("/models", console.page(models_page), methods=["GET"]),
    ]


def not_deployed(service: str, what: str) -> Failure:
    """The failure a page shows when the platform runs no `service` (a full name)."""
    name = service.rsplit(".", 1)[-1]
    return Failure(
        503,
        "UNAVAILABLE",
        f"{what} come{'' if what.endswith('s') else 's'} from {name}, which this platform "
        "does not run.",
        reason="SERVICE_NOT_DEPLOYED",
        metadata={"service": service},
    )


# ---------------------------------------------------------------------------------- searching


@dataclass(frozen=True)
class LogSearch:
    """The request log's search form, as its query parameters say."""

    start_time: str = ""
    end_time: str = ""
    prompt: str = ""
    model: str = ""
    status: str = ""
    request_id: str = ""
    page_token: str = ""

    @classmethod
    def of(cls, params: Mapping[str, str]) -> "LogSearch":
        return cls(
            start_time=params.get("start_time", "").strip(),
            end_time=params.get("end_time", "").strip(),
            prompt=params.get("prompt", "").strip(),
            model=params.get("model", "").strip(),
            status=params.get("status", "").strip().upper(),
            request_id=params.get("request_id", "").strip(),
            page_token=params.get("page_token", ""),
        )

    @property
    def filtered(self) -> bool:
        """Whether any filter is set."""
        return any(getattr(self, name) for name in SEARCH_FIELDS)

    def times(self) -> tuple[datetime | None, datetime | None, dict[str, list[str]]]:
        """The time bounds, and the violations of the fields that do not parse."""
        errors: dict[str, list[str]] = {}
        bounds: list[datetime | None] = []
        for name in ("start_time", "end_time"):
            text = getattr(self, name)
            moment = None
            if text:
                try:
                    moment = parse_since(text)
                except argparse.ArgumentTypeError:
                    errors[name] = [
                        "is not a time: give a date and time (UTC), for example "
                        "2026-01-31T14:30, or an age such as 2h"
                    ]
            bounds.append(moment)
        start, end = bounds
        if start is not None and end is not None and end <= start:
            errors.setdefault("end_time", []).append("must be after the start")
        return start, end, errors

    def failure(self) -> Failure | None:
        """Why the form cannot be searched as it is, field by field; None when it can."""
        _, _, errors = self.times()
        if self.status and self.status not in STATUS_NAMES:
            errors["status"] = ["is not a status code name (OK, UNAVAILABLE, ...)"]
        if not errors:
            return None
        return Failure(400, "INVALID_ARGUMENT", "Check the search fields.", field_errors=errors)

    def rpc_request(self, page_size: int) -> gateway_service_pb2.ListRequestLogsRequest:
        """The `ListRequestLogs` request of this search."""
        start, end, _ = self.times()
        request = gateway_service_pb2.ListRequestLogsRequest(
            page_size=page_size,
            page_token=self.page_token,
            prompt=self.prompt,
            status=self.status,
            model=self.model,
        )
        if start is not None:
            request.start_time.CopyFrom(timestamp(start))
        if end is not None:
            request.end_time.CopyFrom(timestamp(end))
        return request

    def link(self, **changes: str) -> str:
        """The request log's URL of this search with `changes` (empty values left out)."""
        values = {name: getattr(self, name) for name in SEARCH_FIELDS}
        values.update(changes)
        return link(f"{PREFIX}/logs", **values)


@dataclass(frozen=True)
class LogRow:
    """One request of the results table."""

    request_id: str
    href: str
    time: str
    iso: str
    prompt: str
    prompt_href: str
    model: str
    backend: str
    status: str
    ok: bool
    figures: "Figures"

    @classmethod
    def of(cls, entry: gateway_pb2.RequestLogEntry) -> "LogRow":
        meta = entry.metadata
        return cls(
            request_id=entry.request_id,
            href=entry_href(entry),
            time=formatting.timestamp(entry.create_time),
            iso=formatting.iso(entry.create_time),
            prompt=f"{meta.prompt}@{meta.prompt_version}" if meta.prompt_version else meta.prompt,
            prompt_href=_prompt_href(meta.prompt, meta.prompt_version),
            model=meta.model or _attempted_model(meta),
            backend=meta.backend_id,
            status=entry.status,
            ok=entry.status == "OK",
            figures=Figures.of(meta),
        )


@dataclass(frozen=True)
class Figures:
    """What a request used and took, as the results table and the detail page write it."""

    tokens: str
    cost: str
    first_token: str
    total: str

    @classmethod
    def of(cls, meta: gateway_pb2.CompletionMetadata) -> "Figures":
        return cls(
            tokens=tokens_text(meta.usage),
            cost=formatting.money(meta.cost) if meta.HasField("cost") else NOT_SET,
            first_token=duration_text(meta, "first_token_duration"),
            total=duration_text(meta, "total_duration"),
        )


@dataclass
class LogResult:
    """One page of search results."""

    rows: list[LogRow] = field(default_factory=list)
    next_page_token: str = ""
    searched: bool = False


async def _search(visitor: Visitor, search: LogSearch) -> LogResult:
    """One page of the search: one call."""
    response = await visitor.stubs.gateway.ListRequestLogs(
        search.rpc_request(PAGE_SIZE), **visitor.read()
    )
    return LogResult(
        rows=[LogRow.of(entry) for entry in response.entries],
        next_page_token=response.next_page_token,
        searched=True,
    )


@dataclass(frozen=True)
class ChatTurn:
    """One message of a logged chat input."""

    role: str
    content: str


@dataclass(frozen=True)
class AttemptRow:
    """One try of the request on one backend."""

    number: int
    model: str
    backend: str
    status: str
    ok: bool
    error: str


@dataclass(frozen=True)
class EntryView:
    """What the detail page shows of an entry, beyond its plain fields."""

    status_ok: bool
    messages: list[ChatTurn]
    input_text: str | None
    input_json: str | None
    input_kept: bool
    output_json: str | None
    prompt_href: str
    experiment_href: str
    usage_source: str
    figures: Figures
    finish_reason: str
    attempts: list[AttemptRow]
    processing: list[tuple[str, str]]
    tags: list[tuple[str, str]]

    @classmethod
    def of(cls, entry: gateway_pb2.RequestLogEntry) -> "EntryView":
        meta = entry.metadata
        messages, text, other = _input_of(entry)
        processing = meta.processing
        return cls(
            status_ok=entry.status == "OK",
            messages=messages,
            input_text=text,
            input_json=other,
            input_kept=entry.HasField("input"),
            output_json=formatting.pretty_json(meta.output_json)
            if meta.HasField("output_json")
            else None,
            prompt_href=_prompt_href(meta.prompt, meta.prompt_version),
            experiment_href=f"{PREFIX}/experiments/{quote(meta.experiment)}"
            if meta.experiment
            else "",
            usage_source=_known(usage_source_name(meta.usage)),
            figures=Figures.of(meta),
            finish_reason=_known(
                formatting.enum_name(
                    generation_pb2.FinishReason.Name(meta.finish_reason), "FINISH_REASON_"
                )
            ),
            attempts=[
                AttemptRow(
                    number=number,
                    model=attempt.model,
                    backend=attempt.backend_id,
                    status=attempt.status,
                    ok=attempt.status == "OK",
                    error=attempt.error,
                )
                for number, attempt in enumerate(meta.attempts, start=1)
            ],
            processing=[
                ("Redactions by the prompt's processing", str(processing.redaction_count)),
                ("Stop sequence matched", _yes(processing.stop_sequence_matched)),
                ("Truncated at the maximum length", _yes(processing.truncated)),
                ("Valid against an output schema", _yes(processing.schema_valid)),
                ("Repair attempt used", _yes(processing.repaired)),
                ("Constrained decoding", _yes(processing.constrained_decoding)),
            ],
            tags=sorted(entry.tags.items()),
        )


def _input_of(
    entry: gateway_pb2.RequestLogEntry,
) -> tuple[list[ChatTurn], str | None, str | None]:
    """The logged input as chat turns, or as the rendered text, or else as JSON."""
    if not entry.HasField("input"):
        return [], None, None
    value: Any = json_format.MessageToDict(entry.input)
    if isinstance(value, list) and all(
        isinstance(item, dict) and isinstance(item.get("role"), str) for item in value
    ):
        return (
            [
                ChatTurn(
                    role=item["role"],
                    content=item["content"]
                    if isinstance(item.get("content"), str)
                    else formatting.pretty_json(item.get("content")),
                )
                for item in value
            ],
            None,
            None,
        )
    if isinstance(value, dict) and set(value) == {"text"} and isinstance(value["text"], str):
        return [], value["text"], None
    return [], None, formatting.pretty_json(value)


def entry_href(entry: gateway_pb2.RequestLogEntry) -> str:
    """The detail page of `entry`."""
    return f"{PREFIX}/logs/{quote(entry.request_id)}"


# ---------------------------------------------------------------------------------- alerts


@dataclass(frozen=True)
class AlertRow:
    """One quality alert."""

    fired: str
    fired_iso: str
    resolved: str
    resolved_iso: str
    prompt: str
    prompt_version: int
    prompt_href: str
    scorer: str
    detector: str
    baseline: str
    observed: str
    change: str
    samples: int
    firing: bool
    state: str

    @classmethod
    def of(cls, alert: evaluation_pb2.QualityAlert) -> "AlertRow":
        return cls(
            fired=formatting.timestamp(alert.fire_time),
            fired_iso=formatting.iso(alert.fire_time),
            resolved=formatting.timestamp(alert.resolve_time),
            resolved_iso=formatting.iso(alert.resolve_time),
            prompt=alert.prompt,
            prompt_version=alert.prompt_version,
            prompt_href=_prompt_href(alert.prompt, alert.prompt_version),
            scorer=alert.scorer,
            detector=alert.detector,
            baseline=formatting.number(alert.baseline_mean),
            observed=formatting.number(alert.observed_mean),
            change=_signed(alert.observed_mean - alert.baseline_mean),
            samples=alert.sample_count,
            firing=alert.state == evaluation_pb2.ALERT_STATE_FIRING,
            state=formatting.enum_name(evaluation_pb2.AlertState.Name(alert.state), "ALERT_STATE_"),
        )


# ---------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelRow:
    """One catalog model."""

    name: str
    display_name: str
    capabilities: list[str]
    languages: str
    context: str
    max_output: str
    input_price: str
    output_price: str
    quality_tier: int
    expected_first_token: str
    expected_per_token: str
    weight: str
    backend_count: int

    @classmethod
    def of(cls, model: router_pb2.Model) -> "ModelRow":
        targets = model.latency_targets
        return cls(
            name=model.name,
            display_name=model.display_name,
            capabilities=[
                formatting.enum_name(routing_pb2.Capability.Name(c), "CAPABILITY_")
                for c in model.capabilities
            ],
            languages=", ".join(model.languages) or NOT_SET,
            context=f"{model.max_context_tokens:,}",
            max_output=f"{model.max_output_tokens:,}",
            input_price=_price(model, "input_price_per_million_tokens"),
            output_price=_price(model, "output_price_per_million_tokens"),
            quality_tier=model.quality_tier,
            expected_first_token=duration_text(targets, "first_token_duration"),
            expected_per_token=duration_text(targets, "per_output_token_duration"),
            weight=formatting.number(model.weight),
            backend_count=len(model.backends),
        )


@dataclass(frozen=True)
class BackendRow:
    """One backend of a model, with its live status."""

    model: str
    backend_id: str
    kind: str
    endpoint: str
    verdict: str
    """healthy, unhealthy, recovering, unchecked or unknown (no status from the router)."""
    tone: str
    """good, bad or warn."""
    health: str
    circuit: str
    in_flight: str
    requests: str
    failures: str
    last_check: str
    last_check_iso: str
    last_error: str
    first_token_ewma: str
    first_token_p95: str
    per_token_ewma: str
    per_token_p95: str
    queue: str
    samples: str


def backend_rows(
    models: Sequence[router_pb2.Model], statuses: Iterable[router_pb2.BackendStatus]
) -> list[BackendRow]:
    """Every backend of the catalog with its status, by model then backend id, and any
    backend the router reports that the catalog pages did not list."""
    by_key = {(status.model, status.backend.id): status for status in statuses}
    rows: list[BackendRow] = []
    for model in models:
        for backend in model.backends:
            rows.append(
                _backend_row(model.name, backend, by_key.pop((model.name, backend.id), None))
            )
    rows.extend(_backend_row(status.model, status.backend, status) for status in by_key.values())
    return rows


def _backend_row(
    model: str, backend: router_pb2.Backend, status: router_pb2.BackendStatus | None
) -> BackendRow:
    kind = formatting.enum_name(router_pb2.BackendKind.Name(backend.kind), "BACKEND_KIND_")
    if status is None:
        return BackendRow(
            model=model,
            backend_id=backend.id,
            kind=kind,
            endpoint=backend.endpoint,
            verdict="unknown",
            tone="warn",
            health="no status",
            circuit=NOT_SET,
            in_flight=NOT_SET,
            requests=NOT_SET,
            failures=NOT_SET,
            last_check=NOT_SET,
            last_check_iso="",
            last_error=NOT_SET,
            first_token_ewma=NOT_SET,
            first_token_p95=NOT_SET,
            per_token_ewma=NOT_SET,
            per_token_p95=NOT_SET,
            queue=NOT_SET,
            samples=NOT_SET,
        )
    verdict, tone = health_verdict(status)
    latency = status.latency
    return BackendRow(
        model=model,
        backend_id=backend.id,
        kind=kind,
        endpoint=backend.endpoint,
        verdict=verdict,
        tone=tone,
        health=formatting.enum_name(router_pb2.HealthState.Name(status.health), "HEALTH_STATE_")
        if status.health
        else "not checked yet",
        circuit=formatting.enum_name(
            router_pb2.CircuitState.Name(status.circuit), "CIRCUIT_STATE_"
        ),
        in_flight=str(status.in_flight),
        requests=f"{status.request_count:,}",
        failures=f"{status.failure_count:,}",
        last_check=formatting.timestamp(status.last_check_time) or NOT_SET,
        last_check_iso=formatting.iso(status.last_check_time),
        last_error=status.last_error or NOT_SET,
        first_token_ewma=duration_text(latency, "first_token_ewma_duration"),
        first_token_p95=duration_text(latency, "first_token_p95_duration"),
        per_token_ewma=duration_text(latency, "per_output_token_ewma_duration"),
        per_token_p95=duration_text(latency, "per_output_token_p95_duration"),
        queue=duration_text(latency, "queue_duration"),
        samples=str(latency.sample_count),
    )


def health_verdict(status: router_pb2.BackendStatus) -> tuple[str, str]:
    """(verdict, tone) of a backend: unhealthy when its circuit is open or its last health
    check failed, recovering while half-open, unchecked before any check, else healthy."""
    if status.circuit == router_pb2.CIRCUIT_STATE_OPEN:
        return "unhealthy", "bad"
    if status.health == router_pb2.HEALTH_STATE_NOT_SERVING:
        return "unhealthy", "bad"
    if status.circuit == router_pb2.CIRCUIT_STATE_HALF_OPEN:
        return "recovering", "warn"
    if status.health == router_pb2.HEALTH_STATE_UNSPECIFIED:
        return "unchecked", "warn"
    return "healthy", "good"


def first_token_chart(statuses: Iterable[router_pb2.BackendStatus]) -> Markup | None:
    """The moving average of each backend's time to first token, in milliseconds, as a chart;
    None when no backend has one yet."""
    rows = [
        IntervalRow(
            label=f"{status.model} / {status.backend.id}",
            estimate=status.latency.first_token_ewma_duration.ToNanoseconds() / 1e6,
            tone={"good": "good", "bad": "bad"}.get(health_verdict(status)[1], ""),
        )
        for status in statuses
        if status.latency.HasField("first_token_ewma_duration")
    ]
    if not rows:
        return None
    return interval_chart(
        rows,
        title="Time to first token by backend (moving average)",
        axis_label="milliseconds",
        domain=(0.0, max(row.estimate for row in rows) * 1.1 or 1.0),
    )


async def _catalog(visitor: Visitor, router: RouterStub) -> list[router_pb2.Model]:
    """The whole catalog, in name order (at most `MODEL_PAGES` pages)."""

    def fetch(token: str) -> Awaitable[router_service_pb2.ListModelsResponse]:
        return router.ListModels(
            router_service_pb2.ListModelsRequest(page_size=MAX_PAGE_SIZE, page_token=token),
            **visitor.read(),
        )

    return [model async for page in pages(fetch, limit=MODEL_PAGES) for model in page.models]


# ---------------------------------------------------------------------------------- formatting


def tokens_text(usage: generation_pb2.TokenUsage) -> str:
    """`in / out`, with who counted them when it was not the provider: `12 / 30 tokenizer`."""
    return f"{usage.input_tokens:,} / {usage.output_tokens:,} {counted_by(usage)}".rstrip()


def duration_text(message: object, name: str) -> str:
    """The Duration field `name` of `message` in milliseconds (or seconds past ten); `—`
    when unset."""
    if not message.HasField(name):  # type: ignore[attr-defined]
        return NOT_SET
    value: Duration = getattr(message, name)
    ms = value.ToNanoseconds() / 1e6
    if ms >= 10_000:
        return formatting.seconds(ms / 1000)
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _price(model: router_pb2.Model, name: str) -> str:
    return formatting.money(getattr(model, name)) if model.HasField(name) else NOT_SET


def _attempted_model(meta: gateway_pb2.CompletionMetadata) -> str:
    return meta.attempts[-1].model if meta.attempts else ""


def _prompt_href(prompt: str, version: int) -> str:
    if not prompt:
        return ""
    base = f"{PREFIX}/prompts/{quote(prompt)}"
    return f"{base}/versions/{version}" if version else base


def _signed(value: float) -> str:
    return ("+" if value > 0 else "") + formatting.number(value)


def _known(name: str) -> str:
    """An enum value's name, or `NOT_SET` for an unspecified one."""
    return NOT_SET if name == "unspecified" else name


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"

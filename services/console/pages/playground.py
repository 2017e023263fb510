"""The playground: render a prompt version with variables, then run it on a chosen model or
routing policy, the answer streamed into the page.

| route | RPCs (the visitor's key) |
|---|---|
| `GET /prompts/{name}/playground?version=N` (or `label=`) | `GetPrompt`, `GetPromptVersion`, RouterService `ListModels` |
| `POST /prompts/{name}/playground` (`do=render` or `do=run`) | `RenderPrompt`; `StreamComplete`, collected into the page |
| `POST /prompts/{name}/playground/stream` | `StreamComplete` as server-sent events |

The form has one field per declared variable, typed by its spec (text, number, a choice, a
yes/no, a list with one item per line). The console converts what it can and passes the rest
as typed: the values are checked by PromptService against the version's schema, and its field
violations (`variables.<name>`) are shown next to the fields. With script, Run streams
(`static/console.js` posts the same form to `/stream`); without, the page waits for the whole
answer. Either way the run is the gateway's StreamComplete: routing, quotas, processing, the
request log (linked from the result) and the trace are those of any API call.
"""

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import grpc
from genai.common.v1 import generation_pb2, routing_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2
from genai.router.v1 import router_service_pb2
from google.protobuf import json_format, struct_pb2
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from services.common import wire
from services.console import formatting
from services.console.web import PREFIX, Console, Failure, Visitor, form_text

psb = prompt_service_pb2
gsb = gateway_service_pb2
STREAM_COMPLETE_RPC: Final = "/genai.gateway.v1.GatewayService/StreamComplete"
RENDER_RPC: Final = "/genai.prompt.v1.PromptService/RenderPrompt"
RUN_TIMEOUT_SECONDS: Final = 300.0
"""How long one playground run may take."""
POLICIES: Final = (
    ("", "the version's routing"),
    ("cost", "cheapest that suffices"),
    ("latency", "fastest healthy backend"),
    ("quality", "best quality"),
)
_POLICY: Final = {
    "cost": routing_pb2.ROUTING_POLICY_COST,
    "latency": routing_pb2.ROUTING_POLICY_LATENCY,
    "quality": routing_pb2.ROUTING_POLICY_QUALITY,
}
_GENERATES: Final = {routing_pb2.CAPABILITY_CHAT, routing_pb2.CAPABILITY_COMPLETION}
"""Models that generate text (the playground offers no embedding models)."""
_TEXT_AREA_LENGTH: Final = 200
"""Strings longer than this (or unbounded) get a text area."""


@dataclass(frozen=True)
class Field:
    """One variable's form field."""

    name: str
    type: str
    required: bool
    widget: str
    """`text`, `textarea`, `number`, `select`, `boolean` or `lines`."""
    value: str
    choices: tuple[str, ...] = ()
    hint: str = ""


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/prompts/{name}/playground", console.page(_page(console)), methods=["GET"]),
        Route(
            "/prompts/{name}/playground",
            # Render is a viewer's read; Run (do=run) is checked against StreamComplete inside.
            console.action(RENDER_RPC, _submit(console)),
            methods=["POST"],
        ),
        Route(
            "/prompts/{name}/playground/stream",
            console.action(STREAM_COMPLETE_RPC, _stream(console)),
            methods=["POST"],
        ),
    ]


def _page(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        query = request.query_params
        return await playground_page(
            console,
            request,
            visitor,
            values={key: query.get(key, "") for key in ("version", "label", "model", "policy")},
        )

    return view


async def playground_page(
    console: Console,
    request: Request,
    visitor: Visitor,
    *,
    values: dict[str, str],
    form: FormData | None = None,
    failure: Failure | None = None,
    rendered: psb.RenderPromptResponse | None = None,
    answer: dict[str, Any] | None = None,
    version: prompt_pb2.PromptVersion | None = None,
) -> Response:
    """The playground of the version `values` selects (a version number, a label, else the
    production label or the latest; `version` when the caller has it already), with the
    form's values kept."""
    name = request.path_params["name"]
    router = visitor.stubs.router
    prompt_response, models = await asyncio.gather(
        visitor.stubs.prompts.GetPrompt(psb.GetPromptRequest(name=name), **visitor.read()),
        router.ListModels(router_service_pb2.ListModelsRequest(page_size=1000), **visitor.read())
        if router is not None
        else _no_models(),
    )
    prompt = prompt_response.prompt
    if version is None:
        version = (
            await visitor.stubs.prompts.GetPromptVersion(
                psb.GetPromptVersionRequest(prompt=name, version=_selector(prompt, values)),
                **visitor.read(),
            )
        ).version
    status = failure.http_status if failure else 200
    return console.render(
        request,
        "playground.html",
        visitor,
        status=status,
        title=f"Playground: {name}",
        prompt=prompt,
        version=version,
        fields=[_field(spec, form) for spec in version.variables],
        models=[
            m.name
            for m in models.models
            if _GENERATES & set(m.capabilities) or m.name == values["model"]
        ],
        policies=POLICIES,
        values=values,
        max_tokens=form_text(form, "max_tokens") if form else "",
        temperature=form_text(form, "temperature") if form else "",
        failure=failure,
        rendered=[(wire.chat_role_name(m.role), m.content) for m in rendered.messages]
        if rendered is not None
        else None,
        rendered_text=rendered.text if rendered is not None else "",
        answer=answer,
        may_run=visitor.may(STREAM_COMPLETE_RPC),
    )


def _submit(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        form = await request.form()
        values = _values(form)
        name = request.path_params["name"]
        if not values["version"].isdigit():
            return _no_version(console, request, visitor)
        number = int(values["version"])
        render = form_text(form, "do") == "render"
        if not render and not visitor.may(STREAM_COMPLETE_RPC):
            return console.role_refused(request, visitor, STREAM_COMPLETE_RPC)
        version: prompt_pb2.PromptVersion | None = None
        try:
            version, variables = await _variables(visitor, name, number, form)
            if render:
                rendered = await visitor.stubs.prompts.RenderPrompt(
                    psb.RenderPromptRequest(prompt=name, version=number, variables=variables),
                    **visitor.read(),
                )
                return await playground_page(
                    console,
                    request,
                    visitor,
                    values=values,
                    form=form,
                    rendered=rendered,
                    version=version,
                )
            answer: dict[str, Any] = {"text": "", "final": None}
            async for event in _run(visitor, name, number, variables, form):
                if event["event"] == "delta":
                    answer["text"] += event["text"]
                elif event["event"] == "final":
                    answer["final"] = event
        except grpc.aio.AioRpcError as error:
            failure = Failure.of_rpc(error)
        except _BadForm as error:
            failure = error.failure
        else:
            return await playground_page(
                console, request, visitor, values=values, form=form, answer=answer, version=version
            )
        return await playground_page(
            console, request, visitor, values=values, form=form, failure=failure, version=version
        )

    return view


def _stream(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        form = await request.form()
        values = _values(form)
        name = request.path_params["name"]
        if not values["version"].isdigit():
            return _no_version(console, request, visitor)
        version = int(values["version"])

        async def events() -> AsyncIterator[str]:
            try:
                _, variables = await _variables(visitor, name, version, form)
                async for event in _run(visitor, name, version, variables, form):
                    yield _sse(event)
            except grpc.aio.AioRpcError as error:
                yield _sse({"event": "error", **_failure_json(Failure.of_rpc(error))})
            except _BadForm as error:
                yield _sse({"event": "error", **_failure_json(error.failure)})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    return view


class _BadForm(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


async def _variables(
    visitor: Visitor, name: str, version: int, form: FormData
) -> tuple[prompt_pb2.PromptVersion, struct_pb2.Struct]:
    """The version, and the form's variables as its schema types them (what cannot be
    converted is passed as text, for PromptService to refuse with a precise violation)."""
    found = (
        await visitor.stubs.prompts.GetPromptVersion(
            psb.GetPromptVersionRequest(prompt=name, version=version), **visitor.read()
        )
    ).version
    variables: dict[str, Any] = {}
    for spec in found.variables:
        raw = form_text(form, f"var.{spec.name}")
        value = _convert(spec, raw)
        if value is not None:
            variables[spec.name] = value
    struct = struct_pb2.Struct()
    struct.update(variables)
    return found, struct


async def _no_models() -> router_service_pb2.ListModelsResponse:
    """The catalog where no RouterService is deployed: no model to offer."""
    return router_service_pb2.ListModelsResponse()


def _convert(spec: prompt_pb2.VariableSpec, raw: str) -> Any:
    """`raw` (a form field's text) as the JSON value `spec` asks for; None for an empty
    field (not supplied: the default applies, or the service says it is required)."""
    kind = spec.type
    if kind == prompt_pb2.VARIABLE_TYPE_STRING_LIST:
        items = [line.strip() for line in raw.splitlines() if line.strip()]
        return items or None
    if raw == "":
        return None
    if kind == prompt_pb2.VARIABLE_TYPE_INTEGER:
        try:
            return int(raw.strip())
        except ValueError:
            return raw
    if kind == prompt_pb2.VARIABLE_TYPE_NUMBER:
        try:
            return float(raw.strip())
        except ValueError:
            return raw
    if kind == prompt_pb2.VARIABLE_TYPE_BOOLEAN:
        return {"true": True, "false": False}.get(raw, raw)
    return raw


async def _run(
    visitor: Visitor, name: str, version: int, variables: struct_pb2.Struct, form: FormData
) -> AsyncIterator[dict[str, Any]]:
    """One StreamComplete of the form's run, as plain events: `start`, `delta`s, `final`."""
    request = gsb.StreamCompleteRequest(prompt=name, version=version, variables=variables)
    model = form_text(form, "model").strip()
    policy = form_text(form, "policy").strip()
    if model:
        request.routing.model = model
    if policy in _POLICY:
        request.routing.policy = _POLICY[policy]
    violations: dict[str, list[str]] = {}
    max_tokens = form_text(form, "max_tokens").strip()
    if max_tokens:
        if max_tokens.isdigit():
            request.parameters.max_tokens = int(max_tokens)
        else:
            violations["max_tokens"] = ["must be a whole number"]
    temperature = form_text(form, "temperature").strip()
    if temperature:
        try:
            request.parameters.temperature = float(temperature)
        except ValueError:
            violations["temperature"] = ["must be a number"]
    if violations:
        raise _BadForm(
            Failure(400, "INVALID_ARGUMENT", "Check the run's settings.", field_errors=violations)
        )
    request.tags["source"] = "console-playground"
    call = visitor.stubs.gateway.StreamComplete(
        request, metadata=visitor.metadata, timeout=RUN_TIMEOUT_SECONDS
    )
    try:
        async for response in call:
            kind = response.WhichOneof("event")
            if kind == "start":
                yield {
                    "event": "start",
                    "request_id": response.start.request_id,
                    "trace_id": response.start.trace_id,
                    "prompt_version": response.start.prompt_version,
                }
            elif kind == "delta":
                yield {"event": "delta", "text": response.delta.text}
            elif kind == "final":
                yield {"event": "final", **_final(response.final)}
    finally:
        call.cancel()  # a client gone mid-stream cancels the generation


def _final(final: gateway_pb2.CompletionMetadata) -> dict[str, Any]:
    return {
        "request_id": final.request_id,
        "trace_id": final.trace_id,
        "model": final.model,
        "backend": final.backend_id,
        "finish_reason": formatting.enum_name(
            generation_pb2.FinishReason.Name(final.finish_reason), "FINISH_REASON_"
        ),
        "input_tokens": final.usage.input_tokens,
        "output_tokens": final.usage.output_tokens,
        "usage_source": wire.usage_source_name(final.usage),
        "cost": formatting.money(final.cost),
        "first_token": formatting.seconds(final.first_token_duration.ToTimedelta().total_seconds()),
        "total": formatting.seconds(final.total_duration.ToTimedelta().total_seconds()),
        "log_url": f"{PREFIX}/logs/{urllib.parse.quote(final.request_id, safe='')}",
    }


def _sse(event: dict[str, Any]) -> str:
    return f"event: {event['event']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"


def _failure_json(failure: Failure) -> dict[str, Any]:
    return {
        "status": failure.http_status,
        "code": failure.code,
        "reason": failure.reason or "",
        "message": failure.message,
        "field_errors": {name: list(messages) for name, messages in failure.field_errors.items()},
    }


def _values(form: FormData) -> dict[str, str]:
    return {key: form_text(form, key) for key in ("version", "label", "model", "policy")}


def _no_version(console: Console, request: Request, visitor: Visitor) -> Response:
    return console.failure_page(
        request,
        visitor,
        Failure(400, "INVALID_ARGUMENT", "The form has no version number to run."),
    )


def _selector(prompt: prompt_pb2.Prompt, values: dict[str, str]) -> int:
    if values.get("version", "").isdigit():
        return int(values["version"])
    label = values.get("label") or "production"
    if label in prompt.labels:
        return prompt.labels[label]
    return prompt.latest_version


def _field(spec: prompt_pb2.VariableSpec, form: FormData | None) -> Field:
    name = spec.name
    value = form_text(form, f"var.{name}") if form is not None else ""
    if form is None and spec.HasField("default_value"):
        default: Any = json_format.MessageToDict(spec.default_value)
        value = "\n".join(map(str, default)) if isinstance(default, list) else _text(default)
    kind = prompt_pb2.VariableType.Name(spec.type).removeprefix("VARIABLE_TYPE_").lower()
    hints = []
    if spec.max_length:
        hints.append(f"at most {spec.max_length} characters")
    if spec.max_items:
        hints.append(f"at most {spec.max_items} items")
    if spec.type == prompt_pb2.VARIABLE_TYPE_ENUM:
        widget, choices = "select", tuple(spec.enum_values)
    elif spec.type == prompt_pb2.VARIABLE_TYPE_BOOLEAN:
        widget, choices = "select", ("true", "false")
    elif spec.type in (prompt_pb2.VARIABLE_TYPE_INTEGER, prompt_pb2.VARIABLE_TYPE_NUMBER):
        widget, choices = "number", ()
    elif spec.type == prompt_pb2.VARIABLE_TYPE_STRING_LIST:
        widget, choices = "lines", ()
        hints.insert(0, "one item per line")
    elif spec.max_length and spec.max_length <= _TEXT_AREA_LENGTH:
        widget, choices = "text", ()
    else:
        widget, choices = "textarea", ()
    return Field(
        name=name,
        type=kind.replace("_", " "),
        required=spec.required,
        widget=widget,
        value=value,
        choices=choices,
        hint=", ".join(hints),
    )


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

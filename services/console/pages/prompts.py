"""Prompts: the list, one prompt with its versions and labels, one version, a side-by-side diff
of two versions or labels, label history, and promoting or rolling back a label.

| route | RPCs (the visitor's key) |
|---|---|
| `GET /prompts` | `ListPrompts` |
| `GET /prompts/{name}` | `GetPrompt`, `ListPromptVersions` |
| `GET /prompts/{name}/versions/{v}` | `GetPrompt`, `GetPromptVersion`; the gate's verdict from EvaluationService |
| `GET /prompts/{name}/diff?from=&to=` | `GetPrompt`, `DiffPromptVersions` (a side may be a label) |
| `GET /prompts/{name}/labels` | `ListLabelHistory` |
| `POST /prompts/{name}/labels/set` | `SetLabel` with `expected_version` |
| `POST /prompts/{name}/labels/rollback` | `RollbackLabel` with `expected_version` |

A promotion always names the version the label is expected to point to (the one the page
showed), so two people promoting at once cannot overwrite each other unseen: the second gets
the service's ABORTED/FAILED_PRECONDITION with what the label points to now. A protected
label's gate verdict is computed before the button, by the same check the service applies
(`EvaluationReportGate`); the service still decides, and its refusal is shown with its reason.
"""

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from services.common.errors import DomainError, FieldViolation
from services.common.wire import chat_role_name
from services.console.web import PREFIX, Console, Failure, Visitor, form_text, redirect
from services.prompt.adapters.evaluation_gate import EvaluationReportGate
from services.prompt.core.registry import GateVerdict

psb = prompt_service_pb2
SET_LABEL_RPC: Final = "/genai.prompt.v1.PromptService/SetLabel"
ROLLBACK_LABEL_RPC: Final = "/genai.prompt.v1.PromptService/RollbackLabel"
START_RUN_RPC: Final = "/genai.evaluation.v1.EvaluationService/StartEvaluationRun"
PAGE_SIZE: Final = 100
"""Prompts per page of the list (the name filter finds the rest): a page of 1,000 rows is
400 KB of HTML, which a browser takes longer to lay out than the 300 ms a list may take."""
VERSIONS_PAGE: Final = 100
HISTORY_PAGE: Final = 100
EVENT_KINDS: Final = {
    prompt_pb2.LABEL_EVENT_KIND_CREATED: "created",
    prompt_pb2.LABEL_EVENT_KIND_MOVED: "moved",
    prompt_pb2.LABEL_EVENT_KIND_ROLLED_BACK: "rolled back",
    prompt_pb2.LABEL_EVENT_KIND_DELETED: "deleted",
}
_HUNK: Final = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass(frozen=True)
class DiffRow:
    """One row of a side-by-side diff: the old line and the new line (None where a side has
    none), their numbers, and how they differ: `same`, `changed`, `removed`, `added` or
    `hunk` (a hunk's header)."""

    kind: str
    old_number: int | None = None
    old: str | None = None
    new_number: int | None = None
    new: str | None = None


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/prompts", console.page(_list(console)), methods=["GET"]),
        Route("/prompts/{name}", console.page(_prompt(console)), methods=["GET"]),
        Route(
            "/prompts/{name}/versions/{version:int}",
            console.page(_version(console)),
            methods=["GET"],
        ),
        Route("/prompts/{name}/diff", console.page(_diff(console)), methods=["GET"]),
        Route("/prompts/{name}/labels", console.page(_history(console)), methods=["GET"]),
        Route(
            "/prompts/{name}/labels/set",
            console.action(SET_LABEL_RPC, _set_label(console)),
            methods=["POST"],
        ),
        Route(
            "/prompts/{name}/labels/rollback",
            console.action(ROLLBACK_LABEL_RPC, _rollback(console)),
            methods=["POST"],
        ),
    ]


def _list(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        prefix = request.query_params.get("prefix", "").strip()
        token = request.query_params.get("page_token", "")
        page = await visitor.stubs.prompts.ListPrompts(
            psb.ListPromptsRequest(page_size=PAGE_SIZE, page_token=token, name_prefix=prefix),
            **visitor.read(),
        )
        return console.render(
            request,
            "prompts.html",
            visitor,
            title="Prompts",
            prompts=page.prompts,
            prefix=prefix,
            next_page_token=page.next_page_token,
            first_page=not token,
        )

    return view


def _prompt(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        name = request.path_params["name"]
        token = request.query_params.get("page_token", "")
        prompt = (
            await visitor.stubs.prompts.GetPrompt(psb.GetPromptRequest(name=name), **visitor.read())
        ).prompt
        page = await visitor.stubs.prompts.ListPromptVersions(
            psb.ListPromptVersionsRequest(prompt=name, page_size=VERSIONS_PAGE, page_token=token),
            **visitor.read(),
        )
        by_version: dict[int, list[str]] = {}
        for label, number in sorted(prompt.labels.items()):
            by_version.setdefault(number, []).append(label)
        return console.render(
            request,
            "prompt.html",
            visitor,
            title=name,
            prompt=prompt,
            versions=page.versions,
            labels_of=by_version,
            next_page_token=page.next_page_token,
            done=request.query_params.get("done", ""),
        )

    return view


def _version(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        return await version_page(
            console, request, visitor, request.path_params["name"], request.path_params["version"]
        )

    return view


async def version_page(
    console: Console,
    request: Request,
    visitor: Visitor,
    name: str,
    number: int,
    *,
    failure: Failure | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    """Version `number` of prompt `name`, with the promotion forms (and the `failure` of a
    refused one, with the form's `form` values kept)."""
    prompt = (
        await visitor.stubs.prompts.GetPrompt(psb.GetPromptRequest(name=name), **visitor.read())
    ).prompt
    version = (
        await visitor.stubs.prompts.GetPromptVersion(
            psb.GetPromptVersionRequest(prompt=name, version=number), **visitor.read()
        )
    ).version
    verdicts = await _gate_verdicts(visitor, prompt, number)
    return console.render(
        request,
        "prompt_version.html",
        visitor,
        status=failure.http_status if failure else 200,
        title=f"{name} v{number}",
        prompt=prompt,
        version=version,
        here=sorted(label for label, at in prompt.labels.items() if at == number),
        messages=[(chat_role_name(m.role), m.content) for m in version.messages],
        variables=[_variable(spec) for spec in version.variables],
        parameters=_fields(version, "parameters"),
        routing=_fields(version, "routing"),
        processing=_fields(version, "processing"),
        output_schema=_fields(version, "output_schema"),
        verdicts=verdicts,
        gate=prompt.evaluation_gate if prompt.HasField("evaluation_gate") else None,
        label_choices=label_choices(prompt),
        may_set=visitor.may(SET_LABEL_RPC),
        may_rollback=visitor.may(ROLLBACK_LABEL_RPC),
        may_evaluate=visitor.stubs.evaluations is not None and visitor.may(START_RUN_RPC),
        failure=failure,
        form=form or {},
        done=request.query_params.get("done", ""),
    )


async def _gate_verdicts(
    visitor: Visitor, prompt: prompt_pb2.Prompt, version: int
) -> dict[str, GateVerdict | Failure]:
    """The gate's verdict on `version` for each protected label: the check the service makes
    before moving one (a protected label without a gate, or without EvaluationService, is
    refused by the service; the page says so)."""
    if not prompt.protected_labels:
        return {}
    evaluations = visitor.stubs.evaluations
    if not prompt.HasField("evaluation_gate") or not prompt.evaluation_gate.dataset:
        verdict: GateVerdict | Failure = GateVerdict(
            False, "", "cannot pass: the prompt has no evaluation gate (dataset and thresholds)"
        )
    elif evaluations is None:
        verdict = GateVerdict(False, "", "cannot be checked: EvaluationService is not deployed")
    else:
        gate = json_format.MessageToDict(prompt.evaluation_gate, preserving_proto_field_name=True)
        checker = EvaluationReportGate(lambda: evaluations, lambda _tenant: visitor.metadata)
        try:
            verdict = await checker.check(prompt.tenant_id, prompt.name, version, gate)
        except DomainError as error:  # the remote call failed: shown, not raised
            verdict = Failure(503, "UNAVAILABLE", f"the gate could not be checked: {error}")
    return dict.fromkeys(prompt.protected_labels, verdict)


def _diff(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        name = request.path_params["name"]
        prompt = (
            await visitor.stubs.prompts.GetPrompt(psb.GetPromptRequest(name=name), **visitor.read())
        ).prompt
        old_text = request.query_params.get("from", "").strip()
        new_text = request.query_params.get("to", "").strip()
        if not old_text and not new_text:
            old_text = str(max(prompt.latest_version - 1, 1))
            new_text = str(prompt.latest_version)
        violations: list[FieldViolation] = []
        old = _side(prompt, old_text, "from", violations)
        new = _side(prompt, new_text, "to", violations)
        context: dict[str, Any] = {
            "title": f"{name}: diff",
            "prompt": prompt,
            "old_text": old_text,
            "new_text": new_text,
            "rows": [],
            "changes": [],
            "old": old,
            "new": new,
            "failure": None,
        }
        if violations:
            failure = Failure(
                400,
                "INVALID_ARGUMENT",
                "Pick two versions or labels of this prompt.",
                field_errors={v.field: [v.description] for v in violations},
            )
            context["failure"] = failure
            return console.render(request, "prompt_diff.html", visitor, status=400, **context)
        assert old is not None
        assert new is not None
        try:
            diff = await visitor.stubs.prompts.DiffPromptVersions(
                psb.DiffPromptVersionsRequest(prompt=name, from_version=old, to_version=new),
                **visitor.read(),
            )
        except grpc.aio.AioRpcError as error:
            failure = Failure.of_rpc(error)
            context["failure"] = failure
            return console.render(
                request, "prompt_diff.html", visitor, status=failure.http_status, **context
            )
        context["rows"] = side_by_side(diff.unified_diff)
        context["changes"] = [
            {
                "path": change.path,
                "kind": prompt_pb2.ChangeKind.Name(change.kind),
                "old": _value(change, "old_value"),
                "new": _value(change, "new_value"),
            }
            for change in diff.changes
        ]
        return console.render(request, "prompt_diff.html", visitor, **context)

    return view


def _history(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        name = request.path_params["name"]
        label = request.query_params.get("label", "").strip()
        token = request.query_params.get("page_token", "")
        prompt = (
            await visitor.stubs.prompts.GetPrompt(psb.GetPromptRequest(name=name), **visitor.read())
        ).prompt
        page = await visitor.stubs.prompts.ListLabelHistory(
            psb.ListLabelHistoryRequest(
                prompt=name, label=label, page_size=HISTORY_PAGE, page_token=token
            ),
            **visitor.read(),
        )
        return console.render(
            request,
            "prompt_labels.html",
            visitor,
            title=f"{name}: label history",
            prompt=prompt,
            label=label,
            events=page.events,
            next_page_token=page.next_page_token,
            may_rollback=visitor.may(ROLLBACK_LABEL_RPC),
            kinds=EVENT_KINDS,
            done=request.query_params.get("done", ""),
        )

    return view


def _set_label(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        name = request.path_params["name"]
        form = await request.form()
        # "production@3": the label and the version the page showed it at (0: no such label
        # yet), which the move expects.
        label, _, expected_text = form_text(form, "label").strip().rpartition("@")
        version_text = form_text(form, "version")
        reason = form_text(form, "reason").strip()
        fields = {"label": label, "reason": reason, "expected_version": expected_text}
        if not version_text.isdigit() or not expected_text.isdigit():
            return console.failure_page(
                request,
                visitor,
                Failure(
                    400,
                    "INVALID_ARGUMENT",
                    "The form must give a version and a label as LABEL@EXPECTED_VERSION.",
                ),
            )
        number = int(version_text)
        message = psb.SetLabelRequest(
            prompt=name,
            label=label,
            version=number,
            reason=reason,
            expected_version=int(expected_text),
        )
        try:
            await visitor.stubs.prompts.SetLabel(message, **visitor.write())
        except grpc.aio.AioRpcError as error:
            return await version_page(
                console, request, visitor, name, number, failure=Failure.of_rpc(error), form=fields
            )
        return redirect(
            f"{PREFIX}/prompts/{_q(name)}/versions/{number}",
            done=f"Label {label} now points to version {number}.",
        )

    return view


def _rollback(console: Console) -> Any:
    async def view(request: Request, visitor: Visitor) -> Response:
        name = request.path_params["name"]
        form = await request.form()
        label = form_text(form, "label").strip()
        expected_text = form_text(form, "expected_version").strip()
        message = psb.RollbackLabelRequest(
            prompt=name, label=label, reason=form_text(form, "reason").strip()
        )
        if expected_text.isdigit():
            message.expected_version = int(expected_text)
        try:
            response = await visitor.stubs.prompts.RollbackLabel(message, **visitor.write())
        except grpc.aio.AioRpcError as error:
            return console.failure_page(
                request, visitor, Failure.of_rpc(error), title="Rollback refused"
            )
        return redirect(
            f"{PREFIX}/prompts/{_q(name)}/labels",
            done=f"Label {label} rolled back to version {response.label.version}.",
        )

    return view


def side_by_side(unified: str) -> list[DiffRow]:
    """A unified diff as side-by-side rows: runs of removed and added lines are paired line by
    line (`changed`), the rest stand alone (`removed`, `added`), context lines are `same`."""
    rows: list[DiffRow] = []
    old_number = new_number = 0
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []

    def flush() -> None:
        for index in range(max(len(removed), len(added))):
            left = removed[index] if index < len(removed) else None
            right = added[index] if index < len(added) else None
            kind = "changed" if left and right else "removed" if left else "added"
            rows.append(
                DiffRow(
                    kind,
                    left[0] if left else None,
                    left[1] if left else None,
                    right[0] if right else None,
                    right[1] if right else None,
                )
            )
        removed.clear()
        added.clear()

    for line in unified.splitlines():
        if line.startswith(("---", "+++")) and not rows and not removed and not added:
            continue
        hunk = _HUNK.match(line)
        if hunk:
            flush()
            old_number, new_number = int(hunk.group(1)), int(hunk.group(2))
            rows.append(DiffRow("hunk", old=line, new=line))
        elif line.startswith("-"):
            removed.append((old_number, line[1:]))
            old_number += 1
        elif line.startswith("+"):
            added.append((new_number, line[1:]))
            new_number += 1
        elif line.startswith("\\"):
            continue  # "\ No newline at end of file"
        else:
            flush()
            text = line[1:] if line.startswith(" ") else line
            rows.append(DiffRow("same", old_number, text, new_number, text))
            old_number += 1
            new_number += 1
    flush()
    return rows


def _side(
    prompt: prompt_pb2.Prompt, text: str, field: str, violations: list[FieldViolation]
) -> int | None:
    """A diff side: a version number or a label of `prompt`."""
    if text.isdigit() and 1 <= int(text) <= prompt.latest_version:
        return int(text)
    if text in prompt.labels:
        return prompt.labels[text]
    violations.append(
        FieldViolation(
            field,
            f"{text!r} is neither a version (1 to {prompt.latest_version}) nor a label"
            if text
            else "pick a version or a label",
        )
    )
    return None


def _variable(spec: prompt_pb2.VariableSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "type": prompt_pb2.VariableType.Name(spec.type).removeprefix("VARIABLE_TYPE_").lower(),
        "required": spec.required,
        "default": json_format.MessageToJson(spec.default_value)
        if spec.HasField("default_value")
        else "",
        "enum_values": list(spec.enum_values),
        "max_length": spec.max_length,
        "max_items": spec.max_items,
    }


def _fields(version: prompt_pb2.PromptVersion, field: str) -> dict[str, Any] | None:
    if not version.HasField(field):
        return None
    value: dict[str, Any] = json_format.MessageToDict(
        getattr(version, field), preserving_proto_field_name=True
    )
    return value or None


def _value(change: prompt_pb2.FieldChange, field: str) -> str:
    if not change.HasField(field):
        return ""
    return json_format.MessageToJson(getattr(change, field), indent=None)


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def label_choices(prompt: prompt_pb2.Prompt) -> Sequence[str]:
    """Labels a promotion form offers: the prompt's labels and protected labels, then the
    usual two."""
    names = set(prompt.labels) | set(prompt.protected_labels) | {"production", "staging"}
    return sorted(names)

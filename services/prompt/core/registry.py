"""The prompt registry: the rules of prompts, versions and labels over a `PromptStore`.

A version's content is a JSON document with the fields of `genai.prompt.v1.PromptVersion`
that define behaviour (proto field names, enums by name): `messages` (a chat prompt) or
`text_template` (a text prompt), `variables`, `parameters`, `routing`, `output_schema`,
`processing`. The registry reads `messages`, `text_template` and `variables` to check and
render templates; the rest it stores, hashes and diffs as it is. A field at its default is
absent from the document (protobuf's JSON mapping), so a chat version's document, and with it
its content hash, is the same as before `text_template` existed.
"""

import difflib
import json
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from services.common import reasons
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.common.feeds import Wakeup
from services.prompt.core.model import (
    UNSET,
    JsonObject,
    Label,
    LabelEvent,
    LabelMove,
    NewPrompt,
    NewVersion,
    Prompt,
    PromptChanges,
    PromptVersion,
)
from services.prompt.core.processing_config import (
    PiiKind,
    PiiRedaction,
    ProcessingConfig,
    RedactionPattern,
    config_violations,
)
from services.prompt.core.templates import (
    MessageTemplate,
    RenderedMessage,
    VariableSpec,
    VariableType,
    check_version,
    render,
    render_text,
)

NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9._-]{0,63}")
"""Prompt and label names: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter."""
DEFAULT_LABEL: Final = "production"
MAX_DESCRIPTION: Final = 1024
MAX_AUTHOR: Final = 256
MAX_COMMIT_MESSAGE: Final = 4096
MAX_REQUEST_ID: Final = 128
MAX_REASON: Final = 1024
MAX_PAGE_SIZE: Final = 1000
MAX_VARIABLES: Final = 128
"""Template variables of one version."""
DEFAULT_PAGE_SIZE: Final = 100
CONTENT_FIELDS: Final = (
    "messages",
    "text_template",
    "variables",
    "parameters",
    "routing",
    "output_schema",
    "processing",
)
ROLES: Final = {
    "CHAT_ROLE_SYSTEM": "system",
    "CHAT_ROLE_USER": "user",
    "CHAT_ROLE_ASSISTANT": "assistant",
}
_TYPES: Final = {f"VARIABLE_TYPE_{t.name}": t for t in VariableType}


class PromptStore(Protocol):
    """Where prompts live (`services.prompt.adapters.sql_store.SqlPromptStore`)."""

    async def create_prompt(self, new: NewPrompt, request_id: str = "") -> Prompt: ...
    async def get_prompt(self, tenant_id: str, name: str) -> Prompt: ...
    async def list_prompts(
        self, tenant_id: str, *, name_prefix: str = "", after_name: str = "", limit: int = 100
    ) -> list[Prompt]: ...
    async def update_prompt(self, tenant_id: str, name: str, changes: PromptChanges) -> Prompt: ...
    async def create_version(
        self, tenant_id: str, prompt: str, new: NewVersion, request_id: str = ""
    ) -> tuple[PromptVersion, bool]: ...
    async def get_version(self, tenant_id: str, prompt: str, version: int) -> PromptVersion: ...
    async def get_labelled_version(
        self, tenant_id: str, prompt: str, label: str
    ) -> PromptVersion: ...
    async def list_versions(
        self, tenant_id: str, prompt: str, *, before_version: int = 0, limit: int = 100
    ) -> list[PromptVersion]: ...
    async def set_label(self, move: LabelMove, version: int) -> tuple[Label, LabelEvent]: ...
    async def delete_label(self, move: LabelMove) -> LabelEvent: ...
    async def rollback_label(self, move: LabelMove) -> tuple[Label, LabelEvent]: ...
    async def label_history(
        self, tenant_id: str, prompt: str, label: str, *, before_sequence: int = 0, limit: int = 100
    ) -> list[LabelEvent]: ...
    async def events_after(
        self, tenant_id: str, sequence: int, *, prompts_: Sequence[str] = (), limit: int = 500
    ) -> list[LabelEvent]: ...
    async def label_snapshot(
        self, tenant_id: str, prompts_: Sequence[str] = ()
    ) -> tuple[list[Label], int]: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The watched labels at one point of the event log."""

    labels: list[Label]
    sequence: int


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two versions' content, at a JSON path."""

    path: str
    kind: str
    """"added", "removed" or "modified"."""
    old_value: Any
    new_value: Any


@dataclass(frozen=True, slots=True)
class RenderedContent:
    """A version's templates, rendered: the messages of a chat prompt, or the text of a text
    prompt (`text` None: a chat prompt)."""

    messages: list[RenderedMessage]
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered version."""

    version: PromptVersion
    messages: list[RenderedMessage]
    text: str | None = None
    """The rendered text template of a text prompt; None for a chat prompt."""


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """Whether a version passes a prompt's evaluation gate, and on what evidence."""

    passed: bool
    report_id: str = ""
    """The passing report, or the best failing one; empty when there is none."""
    detail: str = ""
    """Why it fails, for people: e.g. `has no evaluation report on dataset d`, or
    `fails report r: accuracy mean 0.61 < 0.80`."""


class EvaluationGate(Protocol):
    """Looks for evaluation reports of a prompt version (the evaluation service)."""

    async def check(
        self, tenant_id: str, prompt: str, version: int, gate: Mapping[str, Any]
    ) -> GateVerdict:
        """The verdict for `version` against `gate` (`{"dataset": ..., "thresholds":
        [{"scorer": ..., "min_mean": ...}]}`, the proto's field names)."""
        ...


class PromptRegistry:
    """Validates and carries out every PromptService operation for one tenant at a time."""

    def __init__(
        self,
        store: PromptStore,
        *,
        poll_seconds: float = 0.25,
        gate: "EvaluationGate | None" = None,
        clock: Callable[[], float] = time.monotonic,
        wakeup: Wakeup | None = None,
        pushed: Callable[[], bool] = lambda: False,
        pushed_poll_seconds: float = 5.0,
    ) -> None:
        """`gate` checks evaluation reports before a protected label moves (None: no
        evaluation service is reachable, and protected labels cannot move).

        Watchers wake when `wakeup` fires: at once for moves made through this registry, and
        for other replicas' moves when the composition root wires a push (PostgreSQL
        LISTEN/NOTIFY) to it. Otherwise they look every `poll_seconds`; while `pushed()` says
        the push is up, only every `pushed_poll_seconds` (a safety net)."""
        self._store = store
        self._gate = gate
        self._poll_seconds = poll_seconds
        self._pushed = pushed
        self._pushed_poll_seconds = max(poll_seconds, pushed_poll_seconds)
        self._clock = clock
        self._notifier = wakeup or Wakeup()

    # ------------------------------------------------------------------------------ prompts

    async def create_prompt(self, new: NewPrompt, request_id: str = "") -> Prompt:
        """Creates a prompt with no versions."""
        violations = _name_violations("prompt.name", new.name)
        violations += _text_violations("prompt.description", new.description, MAX_DESCRIPTION)
        violations += _label_list_violations("prompt.protected_labels", new.protected_labels)
        violations += _request_id_violations(request_id)
        _raise_if(violations)
        return await self._store.create_prompt(new, request_id)

    async def get_prompt(self, tenant_id: str, name: str) -> Prompt:
        """One prompt with its labels."""
        _raise_if(_name_violations("name", name))
        return await self._store.get_prompt(tenant_id, name)

    async def list_prompts(
        self, tenant_id: str, *, name_prefix: str, page_size: int, page_token: str
    ) -> tuple[list[Prompt], str]:
        """One page of prompts in name order, and the next page's token."""
        size = _page_size(page_size)
        after = _decode_token(page_token, "n")
        found = await self._store.list_prompts(
            tenant_id, name_prefix=name_prefix, after_name=after, limit=size + 1
        )
        page = found[:size]
        return page, _token("n", page[-1].name) if len(found) > size else ""

    async def update_prompt(self, tenant_id: str, name: str, changes: PromptChanges) -> Prompt:
        """Updates a prompt's description, protected labels or evaluation gate."""
        violations = _name_violations("prompt.name", name)
        if changes.description is not None:
            violations += _text_violations(
                "prompt.description", changes.description, MAX_DESCRIPTION
            )
        if changes.protected_labels is not None:
            violations += _label_list_violations(
                "prompt.protected_labels", changes.protected_labels
            )
        _raise_if(violations)
        return await self._store.update_prompt(tenant_id, name, changes)

    # ------------------------------------------------------------------------------ versions

    async def create_version(
        self, tenant_id: str, prompt: str, new: NewVersion, request_id: str = ""
    ) -> tuple[PromptVersion, bool]:
        """Checks the content (templates against the variable schema) and stores it as the
        next version, unless it equals the latest (idempotent push)."""
        violations = _name_violations("prompt", prompt)
        violations += _text_violations("version.author", new.author, MAX_AUTHOR)
        violations += _text_violations(
            "version.commit_message", new.commit_message, MAX_COMMIT_MESSAGE
        )
        violations += _request_id_violations(request_id)
        template_problems = content_violations(new.content)
        violations += output_schema_violations(new.content.get("output_schema"))
        violations += processing_violations(new.content)
        if violations or template_problems:
            reason = reasons.TEMPLATE_INVALID if template_problems else None
            raise InvalidArgument(violations=[*violations, *template_problems], reason=reason)
        return await self._store.create_version(tenant_id, prompt, new, request_id)

    async def get_version(
        self, tenant_id: str, prompt: str, *, version: int = 0, label: str = ""
    ) -> PromptVersion:
        """A version by number, through a label, or (neither) the latest."""
        _raise_if(_name_violations("prompt", prompt) + _selector_violations(version, label))
        if label:
            return await self._store.get_labelled_version(tenant_id, prompt, label)
        if not version:
            version = (await self._store.get_prompt(tenant_id, prompt)).latest_version
        return await self._store.get_version(tenant_id, prompt, version)

    async def list_versions(
        self, tenant_id: str, prompt: str, *, page_size: int, page_token: str
    ) -> tuple[list[PromptVersion], str]:
        """One page of versions, newest first, and the next page's token."""
        _raise_if(_name_violations("prompt", prompt))
        size = _page_size(page_size)
        before = _decode_int_token(page_token, "v")
        found = await self._store.list_versions(
            tenant_id, prompt, before_version=before, limit=size + 1
        )
        page = found[:size]
        return page, _token("v", str(page[-1].version)) if len(found) > size else ""

    async def diff(
        self, tenant_id: str, prompt: str, from_version: int, to_version: int
    ) -> tuple[list[Change], str]:
        """What changed from one version to another, field by field, and a unified diff of
        the canonical content."""
        violations = _name_violations("prompt", prompt)
        for field, value in (("from_version", from_version), ("to_version", to_version)):
            if value < 1:
                violations.append(FieldViolation(field, "must be a version number (>= 1)"))
        _raise_if(violations)
        old = await self._store.get_version(tenant_id, prompt, from_version)
        new = await self._store.get_version(tenant_id, prompt, to_version)
        return diff_content(old.content, new.content), unified_diff(old, new)

    # ------------------------------------------------------------------------------ labels

    async def set_label(self, move: LabelMove, version: int) -> tuple[Label, LabelEvent]:
        """Points a label at a version (see `SqlPromptStore.set_label`)."""
        violations = _move_violations(move)
        if version < 1:
            violations.append(FieldViolation("version", "must be a version number (>= 1)"))
        _raise_if(violations)
        prompt = await self._store.get_prompt(move.tenant_id, move.prompt)
        if move.label in prompt.protected_labels:
            await self._check_gate(prompt, move.label, version)
        result = await self._store.set_label(move, version)
        self._notifier.notify()
        return result

    async def _check_gate(self, prompt: Prompt, label: str, version: int) -> None:
        """Refuses (FAILED_PRECONDITION, EVALUATION_GATE_FAILED) to move a protected label to a
        version without a passing evaluation report for the prompt's gate."""
        metadata = {"prompt": prompt.name, "label": label, "version": str(version)}
        gate = prompt.evaluation_gate
        if not gate:
            raise FailedPrecondition(
                f"label {label!r} of prompt {prompt.name!r} is protected, but the prompt has "
                "no evaluation_gate to pass: set one (dataset and thresholds) first",
                reason=reasons.EVALUATION_GATE_FAILED,
                metadata=metadata,
            )
        if self._gate is None:
            raise FailedPrecondition(
                f"label {label!r} is protected and no EvaluationService is reachable to check "
                "its gate",
                reason=reasons.EVALUATION_GATE_FAILED,
                metadata=metadata,
            )
        verdict = await self._gate.check(prompt.tenant_id, prompt.name, version, gate)
        if not verdict.passed:
            raise FailedPrecondition(
                f"label {label!r} of prompt {prompt.name!r} is protected: version {version} "
                f"{verdict.detail}",
                reason=reasons.EVALUATION_GATE_FAILED,
                metadata={
                    **metadata,
                    "dataset": str(gate.get("dataset", "")),
                    "report_id": verdict.report_id,
                },
            )

    async def delete_label(self, move: LabelMove) -> LabelEvent:
        """Deletes a label; its history stays."""
        _raise_if(_move_violations(move))
        event = await self._store.delete_label(move)
        self._notifier.notify()
        return event

    async def rollback_label(self, move: LabelMove) -> tuple[Label, LabelEvent]:
        """Moves a label back one move (see `SqlPromptStore.rollback_label`)."""
        _raise_if(_move_violations(move))
        result = await self._store.rollback_label(move)
        self._notifier.notify()
        return result

    async def label_history(
        self, tenant_id: str, prompt: str, label: str, *, page_size: int, page_token: str
    ) -> tuple[list[LabelEvent], str]:
        """One page of a prompt's label events, newest first, and the next page's token."""
        violations = _name_violations("prompt", prompt)
        if label:
            violations += _name_violations("label", label)
        _raise_if(violations)
        size = _page_size(page_size)
        before = _decode_int_token(page_token, "s")
        found = await self._store.label_history(
            tenant_id, prompt, label, before_sequence=before, limit=size + 1
        )
        page = found[:size]
        return page, _token("s", str(page[-1].sequence)) if len(found) > size else ""

    async def watch(
        self, tenant_id: str, prompts: Sequence[str], after_sequence: int
    ) -> AsyncGenerator[Snapshot | LabelEvent, None]:
        """Checks a watch request and returns its stream: a snapshot (unless resuming after
        `after_sequence`), then every committed label event in order, without end, never
        skipping or repeating one (the store commits a tenant's events in sequence order).
        Moves made here arrive at once, other replicas' when pushed (see `__init__`) or within
        the poll interval.

        Raises `InvalidArgument` for a bad request and `FailedPrecondition` when
        `after_sequence` is beyond the event log (a restored database): resume from 0.
        """
        violations = [
            v for i, p in enumerate(prompts) for v in _name_violations(f"prompts[{i}]", p)
        ]
        if after_sequence < 0:
            violations.append(FieldViolation("after_sequence", "must be >= 0"))
        _raise_if(violations)
        if after_sequence:
            _, last = await self._store.label_snapshot(tenant_id, prompts)
            if after_sequence > last:
                raise FailedPrecondition(
                    f"after_sequence {after_sequence} is beyond the last label event ({last}); "
                    "start a new watch from 0",
                    metadata={"after_sequence": str(after_sequence), "last_sequence": str(last)},
                )
        return self._watch(tenant_id, prompts, after_sequence)

    async def _watch(
        self, tenant_id: str, prompts: Sequence[str], after_sequence: int
    ) -> AsyncGenerator[Snapshot | LabelEvent, None]:
        sequence = after_sequence
        if not after_sequence:
            labels, sequence = await self._store.label_snapshot(tenant_id, prompts)
            yield Snapshot(labels, sequence)
        while True:
            generation = self._notifier.generation
            events = await self._store.events_after(tenant_id, sequence, prompts_=prompts)
            for event in events:
                yield event
            if events:
                sequence = events[-1].sequence
                continue
            patience = self._pushed_poll_seconds if self._pushed() else self._poll_seconds
            await self._notifier.wait(generation, patience)

    # ------------------------------------------------------------------------------ render

    async def render(
        self,
        tenant_id: str,
        prompt: str,
        values: Mapping[str, object],
        *,
        version: int = 0,
        label: str = "",
    ) -> Rendered:
        """Renders a version (by number or label; neither: the `production` label)."""
        _raise_if(_name_violations("prompt", prompt) + _selector_violations(version, label))
        if version:
            found = await self._store.get_version(tenant_id, prompt, version)
        else:
            found = await self._store.get_labelled_version(
                tenant_id, prompt, label or DEFAULT_LABEL
            )
        rendered = render_content(found.content, values)
        return Rendered(found, rendered.messages, rendered.text)


def render_content(content: JsonObject, values: Mapping[str, object]) -> RenderedContent:
    """Renders a stored version: its messages, or its text template (also what clients do
    from their cache)."""
    messages, variables, shape = parse_content(content)
    if shape:  # stored content was checked when created; this is a corrupted store
        raise InvalidArgument(violations=shape, reason=reasons.TEMPLATE_INVALID)
    text = text_template(content)
    if text:
        return RenderedContent([], render_text(text, variables, values))
    return RenderedContent(render(messages, variables, values))


def render_version(content: JsonObject, values: Mapping[str, object]) -> list[RenderedMessage]:
    """Renders a stored chat version's messages (see `render_content`, which renders text
    versions too)."""
    return render_content(content, values).messages


def text_template(content: JsonObject) -> str:
    """The text template of a content document; empty for a chat prompt."""
    value = content.get("text_template")
    return value if isinstance(value, str) else ""


def content_violations(content: JsonObject) -> list[FieldViolation]:
    """What is wrong with a content document's templates and variable schema: its shape,
    then `check_version` (messages or text template, variables)."""
    messages, variables, shape = parse_content(content)
    return shape or check_version(messages, variables, text_template=text_template(content))


def parse_content(
    content: JsonObject,
) -> tuple[list[MessageTemplate], list[VariableSpec], list[FieldViolation]]:
    """The templates and variable schema of a content document, and what is malformed in
    its shape (unknown roles or types, wrong JSON types)."""
    problems: list[FieldViolation] = []
    messages: list[MessageTemplate] = []
    for index, message in enumerate(_list(content.get("messages"))):
        path = f"version.messages[{index}]"
        if not isinstance(message, Mapping):
            problems.append(FieldViolation(path, "must be a message"))
            continue
        role = ROLES.get(str(message.get("role", "")), "")
        if not role:
            problems.append(FieldViolation(f"{path}.role", "must be system, user or assistant"))
        messages.append(MessageTemplate(role, str(message.get("content", ""))))
    variables: list[VariableSpec] = []
    if len(_list(content.get("variables"))) > MAX_VARIABLES:
        problems.append(
            FieldViolation("version.variables", f"at most {MAX_VARIABLES} variables are allowed")
        )
    for index, spec in enumerate(_list(content.get("variables"))[:MAX_VARIABLES]):
        path = f"version.variables[{index}]"
        if not isinstance(spec, Mapping):
            problems.append(FieldViolation(path, "must be a variable"))
            continue
        kind = _TYPES.get(str(spec.get("type", "VARIABLE_TYPE_UNSPECIFIED")))
        if kind is None:
            problems.append(FieldViolation(f"{path}.type", "is not a variable type"))
            continue
        variables.append(
            VariableSpec(
                name=str(spec.get("name", "")),
                type=kind,
                required=bool(spec.get("required", False)),
                default=spec.get("default_value"),
                enum_values=tuple(str(v) for v in _list(spec.get("enum_values"))),
                max_length=int(spec.get("max_length", 0)),
                max_items=int(spec.get("max_items", 0)),
                description=str(spec.get("description", "")),
            )
        )
    return messages, variables, problems


def output_schema_violations(schema: Any) -> list[FieldViolation]:
    """Why a version's output schema is not a valid JSON Schema (draft 2020-12), if it is not."""
    if schema is None:
        return []
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(p) for p in error.absolute_path)
        return [
            FieldViolation(
                "version.output_schema",
                f"is not a valid JSON Schema (draft 2020-12){f' at {where}' if where else ''}: "
                f"{error.message[:300]}",
            )
        ]
    return []


def processing_violations(content: JsonObject) -> list[FieldViolation]:
    """What the gateway's response processing would reject in a version (stop sequences,
    maximum length, PII kinds and redaction patterns), so such a version never gets a number.
    The output schema is checked by `output_schema_violations`."""
    parameters = content.get("parameters")
    processing = content.get("processing")
    stop = _list(parameters.get("stop")) if isinstance(parameters, Mapping) else []
    processing = processing if isinstance(processing, Mapping) else {}
    redaction = processing.get("pii_redaction")
    redaction = redaction if isinstance(redaction, Mapping) else {}
    violations = []
    if text_template(content) and processing.get("repair_invalid_json"):
        violations.append(
            FieldViolation(
                "version.processing.repair_invalid_json",
                "a text prompt (text_template) cannot ask for a repair, which is a chat turn; "
                "an output_schema still constrains decoding on models with guided decoding",
            )
        )
    kinds = []
    for index, kind in enumerate(_list(redaction.get("kinds"))):
        name = str(kind).removeprefix("PII_KIND_")
        if name in PiiKind.__members__:
            kinds.append(PiiKind[name])
        else:
            violations.append(
                FieldViolation(f"version.processing.pii_redaction.kinds[{index}]", "is not set")
            )
    config = ProcessingConfig(
        stop=tuple(str(s) for s in stop),
        max_output_chars=int(processing.get("max_output_chars", 0)),
        pii_redaction=PiiRedaction(
            kinds=tuple(kinds),
            patterns=tuple(
                RedactionPattern(
                    name=str(p.get("name", "")),
                    regex=str(p.get("regex", "")),
                    max_match_length=int(p.get("max_match_length", 0)),
                )
                for p in _list(redaction.get("patterns"))
                if isinstance(p, Mapping)
            ),
        ),
    )
    return violations + config_violations(config, prefix="version.")


def diff_content(old: JsonObject, new: JsonObject) -> list[Change]:
    """Field-level differences between two content documents, in path order. Variables are
    keyed by name (`variables.city.type`), messages by position (`messages[1].content`)."""
    before, after = dict(_flatten(_by_name(old))), dict(_flatten(_by_name(new)))
    changes = []
    for path in sorted(before.keys() | after.keys(), key=_path_key):
        if path not in after:
            changes.append(Change(path, "removed", before[path], None))
        elif path not in before:
            changes.append(Change(path, "added", None, after[path]))
        elif before[path] != after[path]:
            changes.append(Change(path, "modified", before[path], after[path]))
    return changes


def _by_name(content: JsonObject) -> JsonObject:
    variables = _list(content.get("variables"))
    names = [v.get("name") for v in variables if isinstance(v, Mapping)]
    if len(names) != len(variables) or len(set(names)) != len(names):
        return content  # not a valid schema (never stored): compare by position
    keyed = {str(v["name"]): {k: x for k, x in v.items() if k != "name"} for v in variables}
    return {**content, "variables": keyed}


def unified_diff(old: PromptVersion, new: PromptVersion) -> str:
    """A unified diff of two versions' content, pretty-printed JSON, for review."""
    lines = [
        json.dumps(v.content, indent=2, sort_keys=True, ensure_ascii=False).splitlines(True)
        for v in (old, new)
    ]
    return "".join(
        difflib.unified_diff(
            lines[0], lines[1], f"{old.prompt}@{old.version}", f"{new.prompt}@{new.version}"
        )
    )


def _flatten(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        if not value and path:
            return [(path, {})]
        return [
            pair
            for key in sorted(value)
            for pair in _flatten(value[key], f"{path}.{key}" if path else str(key))
        ]
    if isinstance(value, list) and value and not all(_scalar(v) for v in value):
        return [pair for i, v in enumerate(value) for pair in _flatten(v, f"{path}[{i}]")]
    return [(path, value)]


def _scalar(value: Any) -> bool:
    return not isinstance(value, Mapping | list)


def _path_key(path: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", path) if p]


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


# -------------------------------------------------------------------------------- validation


def _raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations=violations)


def _name_violations(field: str, name: str) -> list[FieldViolation]:
    if not name:
        return [FieldViolation(field, "is required")]
    if NAME_PATTERN.fullmatch(name) is None:
        return [
            FieldViolation(
                field, "must be 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter"
            )
        ]
    return []


def _text_violations(field: str, text: str, limit: int) -> list[FieldViolation]:
    if len(text) > limit:
        return [FieldViolation(field, f"at most {limit} characters")]
    return []


def _label_list_violations(field: str, names: Sequence[str]) -> list[FieldViolation]:
    violations = [v for i, n in enumerate(names) for v in _name_violations(f"{field}[{i}]", n)]
    if len(set(names)) != len(names):
        violations.append(FieldViolation(field, "lists a label twice"))
    return violations


def _request_id_violations(request_id: str) -> list[FieldViolation]:
    return _text_violations("request_id", request_id, MAX_REQUEST_ID)


def _selector_violations(version: int, label: str) -> list[FieldViolation]:
    if version < 0:
        return [FieldViolation("version", "must be a version number (>= 1)")]
    return _name_violations("label", label) if label else []


def _move_violations(move: LabelMove) -> list[FieldViolation]:
    violations = _name_violations("prompt", move.prompt) + _name_violations("label", move.label)
    if move.expected_version < 0 and move.expected_version != UNSET:
        violations.append(FieldViolation("expected_version", "must be >= 0"))
    violations += _text_violations("reason", move.reason, MAX_REASON)
    return violations


def _page_size(page_size: int) -> int:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            violations=[FieldViolation("page_size", f"must be in [0, {MAX_PAGE_SIZE}]")]
        )
    return page_size or DEFAULT_PAGE_SIZE


def _token(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def _decode_token(token: str, kind: str) -> str:
    if not token:
        return ""
    prefix, _, value = token.partition(":")
    if prefix != kind or not value:
        raise InvalidArgument(
            violations=[FieldViolation("page_token", "is not a token this service issued")]
        )
    return value


def _decode_int_token(token: str, kind: str) -> int:
    value = _decode_token(token, kind)
    if value and not value.isdigit():
        raise InvalidArgument(
            violations=[FieldViolation("page_token", "is not a token this service issued")]
        )
    return int(value or 0)

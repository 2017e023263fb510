"""genai.prompt.v1.PromptService: converts between protos and the registry's domain types.

Every call acts in the caller's tenant (`current_principal().tenant_id`); label moves record
the caller's subject as their actor.
"""

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from genai.common.v1 import chat_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format, struct_pb2

from services.common.auth import current_principal
from services.common.errors import FieldViolation, InvalidArgument, NotFound
from services.common.grpc_types import ServicerContext
from services.common.policy import elevate
from services.common.validation import refuse_oversized
from services.common.wire import timestamp
from services.prompt.core.model import (
    UNSET,
    Label,
    LabelEvent,
    LabelEventKind,
    LabelMove,
    NewPrompt,
    NewVersion,
    Prompt,
    PromptChanges,
    PromptVersion,
)
from services.prompt.core.processing_config import MAX_REDACTION_PATTERNS
from services.prompt.core.registry import (
    MAX_VARIABLES,
    Change,
    PromptRegistry,
    Snapshot,
)
from services.prompt.core.templates import MAX_MESSAGES
from services.prompt.wire import version_content

UPDATABLE_FIELDS = ("description", "protected_labels", "evaluation_gate")

_ROLES = {
    "system": chat_pb2.CHAT_ROLE_SYSTEM,
    "user": chat_pb2.CHAT_ROLE_USER,
    "assistant": chat_pb2.CHAT_ROLE_ASSISTANT,
}
_EVENT_KINDS = {
    LabelEventKind.CREATED: prompt_pb2.LABEL_EVENT_KIND_CREATED,
    LabelEventKind.MOVED: prompt_pb2.LABEL_EVENT_KIND_MOVED,
    LabelEventKind.ROLLED_BACK: prompt_pb2.LABEL_EVENT_KIND_ROLLED_BACK,
    LabelEventKind.DELETED: prompt_pb2.LABEL_EVENT_KIND_DELETED,
}
_CHANGE_KINDS = {
    "added": prompt_pb2.CHANGE_KIND_ADDED,
    "removed": prompt_pb2.CHANGE_KIND_REMOVED,
    "modified": prompt_pb2.CHANGE_KIND_MODIFIED,
}

pb = prompt_service_pb2


class PromptServicer(prompt_service_pb2_grpc.PromptServiceServicer):
    """Serves PromptService from a `PromptRegistry`."""

    def __init__(self, registry: PromptRegistry) -> None:
        self._registry = registry

    async def CreatePrompt(
        self, request: pb.CreatePromptRequest, context: ServicerContext
    ) -> pb.CreatePromptResponse:
        """Creates a prompt with no versions."""
        p = request.prompt
        new = NewPrompt(
            tenant_id=_tenant(),
            name=p.name,
            description=p.description,
            protected_labels=tuple(p.protected_labels),
            evaluation_gate=_gate(p),
        )
        created = await self._registry.create_prompt(new, request.request_id)
        return pb.CreatePromptResponse(prompt=_prompt(created))

    async def GetPrompt(
        self, request: pb.GetPromptRequest, context: ServicerContext
    ) -> pb.GetPromptResponse:
        """One prompt with its labels."""
        return pb.GetPromptResponse(
            prompt=_prompt(await self._registry.get_prompt(_tenant(), request.name))
        )

    async def ListPrompts(
        self, request: pb.ListPromptsRequest, context: ServicerContext
    ) -> pb.ListPromptsResponse:
        """One page of the tenant's prompts."""
        page, token = await self._registry.list_prompts(
            _tenant(),
            name_prefix=request.name_prefix,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListPromptsResponse(prompts=[_prompt(p) for p in page], next_page_token=token)

    async def UpdatePrompt(
        self, request: pb.UpdatePromptRequest, context: ServicerContext
    ) -> pb.UpdatePromptResponse:
        """Updates the fields named in the update mask."""
        paths = list(request.update_mask.paths)
        violations = [
            FieldViolation(
                "update_mask", f"cannot update {path!r}; updatable: " + ", ".join(UPDATABLE_FIELDS)
            )
            for path in paths
            if path not in UPDATABLE_FIELDS
        ]
        if not paths:
            violations.append(FieldViolation("update_mask", "name at least one field"))
        if violations:
            raise InvalidArgument(violations=violations)
        p = request.prompt
        if "protected_labels" in paths or "evaluation_gate" in paths:
            elevate(f"prompt/{p.name}")  # changing what protects labels is a tenant admin's
        gate = _gate(p)
        changes = PromptChanges(
            description=p.description if "description" in paths else None,
            protected_labels=tuple(p.protected_labels) if "protected_labels" in paths else None,
            evaluation_gate=gate if "evaluation_gate" in paths else None,
            clear_evaluation_gate="evaluation_gate" in paths and gate is None,
        )
        updated = await self._registry.update_prompt(_tenant(), p.name, changes)
        return pb.UpdatePromptResponse(prompt=_prompt(updated))

    async def CreatePromptVersion(
        self, request: pb.CreatePromptVersionRequest, context: ServicerContext
    ) -> pb.CreatePromptVersionResponse:
        """Checks and stores the next version (or returns the equal latest one)."""
        v = request.version
        refuse_oversized(
            (
                ("version.messages", v.messages, MAX_MESSAGES),
                ("version.variables", v.variables, MAX_VARIABLES),
                (
                    "version.processing.pii_redaction.patterns",
                    v.processing.pii_redaction.patterns,
                    MAX_REDACTION_PATTERNS,
                ),
            )
        )
        new = NewVersion(
            content=version_content(v), author=v.author, commit_message=v.commit_message
        )
        version, created = await self._registry.create_version(
            _tenant(), request.prompt, new, request.request_id
        )
        return pb.CreatePromptVersionResponse(version=version_proto(version), created=created)

    async def GetPromptVersion(
        self, request: pb.GetPromptVersionRequest, context: ServicerContext
    ) -> pb.GetPromptVersionResponse:
        """A version by number or label; the latest when neither is set."""
        version = await self._registry.get_version(
            _tenant(), request.prompt, version=request.version, label=request.label
        )
        return pb.GetPromptVersionResponse(version=version_proto(version))

    async def ListPromptVersions(
        self, request: pb.ListPromptVersionsRequest, context: ServicerContext
    ) -> pb.ListPromptVersionsResponse:
        """One page of versions, newest first."""
        page, token = await self._registry.list_versions(
            _tenant(), request.prompt, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListPromptVersionsResponse(
            versions=[version_proto(v) for v in page], next_page_token=token
        )

    async def DiffPromptVersions(
        self, request: pb.DiffPromptVersionsRequest, context: ServicerContext
    ) -> pb.DiffPromptVersionsResponse:
        """Field changes and a unified diff between two versions."""
        changes, unified = await self._registry.diff(
            _tenant(), request.prompt, request.from_version, request.to_version
        )
        return pb.DiffPromptVersionsResponse(
            changes=[_change(c) for c in changes], unified_diff=unified
        )

    async def SetLabel(
        self, request: pb.SetLabelRequest, context: ServicerContext
    ) -> pb.SetLabelResponse:
        """Points a label at a version."""
        await self._elevate_if_protected(request.prompt, request.label)
        expected = request.expected_version if request.HasField("expected_version") else UNSET
        label, event = await self._registry.set_label(
            _move(request.prompt, request.label, expected, request.reason), request.version
        )
        return pb.SetLabelResponse(label=_label(label), event=_event(event))

    async def DeleteLabel(
        self, request: pb.DeleteLabelRequest, context: ServicerContext
    ) -> pb.DeleteLabelResponse:
        """Deletes a label; its history stays."""
        await self._elevate_if_protected(request.prompt, request.label)
        expected = request.expected_version if request.HasField("expected_version") else UNSET
        event = await self._registry.delete_label(
            _move(request.prompt, request.label, expected, request.reason)
        )
        return pb.DeleteLabelResponse(event=_event(event))

    async def RollbackLabel(
        self, request: pb.RollbackLabelRequest, context: ServicerContext
    ) -> pb.RollbackLabelResponse:
        """Moves a label back one move."""
        await self._elevate_if_protected(request.prompt, request.label)
        expected = request.expected_version if request.HasField("expected_version") else UNSET
        label, event = await self._registry.rollback_label(
            _move(request.prompt, request.label, expected, request.reason)
        )
        return pb.RollbackLabelResponse(label=_label(label), event=_event(event))

    async def _elevate_if_protected(self, prompt: str, label: str) -> None:
        """A move of a protected label needs a tenant admin and is audited (see
        `services.common.policy.elevate`); an unknown prompt is left to the move to report."""
        try:
            found = await self._registry.get_prompt(_tenant(), prompt)
        except (NotFound, InvalidArgument):
            return
        if label in found.protected_labels:
            elevate(f"prompt/{prompt}/label/{label}")

    async def ListLabelHistory(
        self, request: pb.ListLabelHistoryRequest, context: ServicerContext
    ) -> pb.ListLabelHistoryResponse:
        """One page of label events, newest first."""
        page, token = await self._registry.label_history(
            _tenant(),
            request.prompt,
            request.label,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListLabelHistoryResponse(events=[_event(e) for e in page], next_page_token=token)

    async def RenderPrompt(
        self, request: pb.RenderPromptRequest, context: ServicerContext
    ) -> pb.RenderPromptResponse:
        """Renders a version with typed variables."""
        values = struct_values(request.variables)
        rendered = await self._registry.render(
            _tenant(), request.prompt, values, version=request.version, label=request.label
        )
        version = version_proto(rendered.version)
        response = pb.RenderPromptResponse(
            prompt=version.prompt,
            version=version.version,
            content_hash=version.content_hash,
            messages=[
                chat_pb2.ChatMessage(role=_ROLES[m.role], content=m.content)
                for m in rendered.messages
            ],
            text=rendered.text or "",
        )
        for field in ("parameters", "routing", "output_schema", "processing"):
            if version.HasField(field):
                getattr(response, field).CopyFrom(getattr(version, field))
        return response

    async def WatchLabels(
        self, request: pb.WatchLabelsRequest, context: ServicerContext
    ) -> AsyncIterator[pb.WatchLabelsResponse]:
        """A snapshot, then every label event as it commits."""
        updates = await self._registry.watch(
            _tenant(), list(request.prompts), request.after_sequence
        )
        # Tell the caller at once that the watch is established: a resumed watch may have
        # nothing to send for a long time.
        await context.send_initial_metadata(())
        async with aclosing(updates):
            async for update in updates:
                if isinstance(update, Snapshot):
                    yield pb.WatchLabelsResponse(
                        snapshot=pb.LabelSnapshot(
                            labels=[_label(label) for label in update.labels],
                            sequence=update.sequence,
                        )
                    )
                else:
                    yield pb.WatchLabelsResponse(event=_event(update))


# ------------------------------------------------------------------------------ conversions


def struct_values(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as Python values, keeping every number as it is (NaN and infinities too, for
    the variable checks to reject with a precise message)."""
    return {key: _python(value) for key, value in struct.fields.items()}


def _python(value: struct_pb2.Value) -> Any:
    match value.WhichOneof("kind"):
        case "number_value":
            return value.number_value
        case "string_value":
            return value.string_value
        case "bool_value":
            return value.bool_value
        case "struct_value":
            return struct_values(value.struct_value)
        case "list_value":
            return [_python(v) for v in value.list_value.values]
        case _:
            return None


def version_proto(version: PromptVersion) -> prompt_pb2.PromptVersion:
    """A stored version as the proto."""
    message = prompt_pb2.PromptVersion()
    json_format.ParseDict(dict(version.content), message)
    message.prompt = version.prompt
    message.version = version.version
    message.author = version.author
    message.commit_message = version.commit_message
    message.content_hash = version.content_hash
    message.create_time.CopyFrom(timestamp(version.create_time))
    return message


def _tenant() -> str:
    return current_principal().tenant_id


def _move(prompt: str, label: str, expected: int, reason: str) -> LabelMove:
    principal = current_principal()
    return LabelMove(
        tenant_id=principal.tenant_id,
        prompt=prompt,
        label=label,
        expected_version=expected,
        actor=principal.subject,
        reason=reason,
    )


def _gate(prompt: prompt_pb2.Prompt) -> Mapping[str, Any] | None:
    if not prompt.HasField("evaluation_gate"):
        return None
    return json_format.MessageToDict(prompt.evaluation_gate, preserving_proto_field_name=True)


def _prompt(prompt: Prompt) -> prompt_pb2.Prompt:
    message = prompt_pb2.Prompt(
        name=prompt.name,
        description=prompt.description,
        tenant_id=prompt.tenant_id,
        latest_version=prompt.latest_version,
        labels=dict(prompt.labels),
        protected_labels=list(prompt.protected_labels),
        create_time=timestamp(prompt.create_time),
        update_time=timestamp(prompt.update_time),
    )
    if prompt.evaluation_gate is not None:
        json_format.ParseDict(dict(prompt.evaluation_gate), message.evaluation_gate)
    return message


def _label(label: Label) -> prompt_pb2.Label:
    return prompt_pb2.Label(
        prompt=label.prompt,
        name=label.name,
        version=label.version,
        protected=label.protected,
        update_time=timestamp(label.update_time),
    )


def _event(event: LabelEvent) -> prompt_pb2.LabelEvent:
    return prompt_pb2.LabelEvent(
        sequence=event.sequence,
        prompt=event.prompt,
        label=event.label,
        kind=_EVENT_KINDS[event.kind],
        from_version=event.from_version,
        to_version=event.to_version,
        actor=event.actor,
        reason=event.reason,
        event_time=timestamp(event.event_time),
    )


def _value(value: Any) -> struct_pb2.Value | None:
    if value is None:
        return None
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def _change(change: Change) -> prompt_pb2.FieldChange:
    return prompt_pb2.FieldChange(
        path=change.path,
        kind=_CHANGE_KINDS[change.kind],
        old_value=_value(change.old_value),
        new_value=_value(change.new_value),
    )

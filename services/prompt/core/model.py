"""The prompt registry's domain: prompts, immutable versions, movable labels and their history.

A version's content is kept as one canonical JSON document (messages, variables, parameters,
routing, output schema, processing): it is what gets hashed, stored, diffed and rendered, so the
registry never loses a field it does not interpret itself.
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

JsonObject = Mapping[str, Any]


def canonical_json(document: JsonObject) -> str:
    """The canonical text of a JSON document: sorted keys, no insignificant whitespace."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(content: JsonObject) -> str:
    """Hex SHA-256 of a version's canonical content: equal hashes, equal behaviour."""
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Prompt:
    """A named prompt of one tenant, with its labels."""

    tenant_id: str
    name: str
    description: str
    latest_version: int
    """0 until the first version exists."""
    labels: Mapping[str, int]
    protected_labels: tuple[str, ...]
    evaluation_gate: JsonObject | None
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True, slots=True)
class PromptVersion:
    """One immutable version of a prompt."""

    prompt: str
    version: int
    content: JsonObject
    content_hash: str
    author: str
    commit_message: str
    create_time: datetime


@dataclass(frozen=True, slots=True)
class Label:
    """A label and the version it points to."""

    prompt: str
    name: str
    version: int
    protected: bool
    update_time: datetime


class LabelEventKind(StrEnum):
    """What happened to a label."""

    CREATED = "created"
    MOVED = "moved"
    ROLLED_BACK = "rolled_back"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class LabelEvent:
    """One committed label change; `sequence` orders all of a registry's events."""

    sequence: int
    tenant_id: str
    prompt: str
    label: str
    kind: LabelEventKind
    from_version: int
    """0 when the label did not exist before."""
    to_version: int
    """0 when the label was deleted."""
    actor: str
    reason: str
    event_time: datetime


@dataclass(frozen=True, slots=True)
class PromptChanges:
    """The fields of an update; None leaves a field as it is."""

    description: str | None = None
    protected_labels: tuple[str, ...] | None = None
    evaluation_gate: JsonObject | None = None
    clear_evaluation_gate: bool = False


@dataclass(frozen=True, slots=True)
class NewPrompt:
    """A prompt to create."""

    tenant_id: str
    name: str
    description: str = ""
    protected_labels: tuple[str, ...] = ()
    evaluation_gate: JsonObject | None = None


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A version to create; its number and time come from the registry."""

    content: JsonObject
    author: str = ""
    commit_message: str = ""
    hash: str = field(default="")

    def __post_init__(self) -> None:
        if not self.hash:
            object.__setattr__(self, "hash", content_hash(self.content))


UNSET = -1
"""`expected_version` meaning "no precondition" (0 means "the label must not exist")."""


@dataclass(frozen=True, slots=True)
class LabelMove:
    """A label change with an optimistic precondition on where the label points now."""

    tenant_id: str
    prompt: str
    label: str
    expected_version: int = UNSET
    actor: str = ""
    reason: str = ""

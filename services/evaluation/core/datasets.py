"""Dataset files and example checks: examples read from JSONL or YAML with their line numbers,
content-derived example ids, and every example's inputs checked against a prompt version's
variable schema.

File format: JSONL holds one example object per line (blank lines skipped); YAML holds a list
of example objects, or a mapping whose `examples` key holds that list. An example object has
`inputs` (an object of template variables, required), `reference` (a string; any other JSON
value is stored as its canonical JSON text, for JSON outputs) and `tags` (an object of scalar
values, kept as strings). Other keys are errors.

Inputs are checked by rendering the version's templates with them (`services.prompt.core.
templates.render`, the prompt package's own check): a variable that is unknown, missing, of
the wrong type or out of bounds is reported as `<example>.inputs.<name>`, and inputs the
templates cannot render with are reported as `<example>.inputs`. Rendering is CPU work
(bounded per example by the template sandbox): run big batches off the event loop.

This module imports neither grpc nor generated code.
"""

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import yaml

from services.common import reasons
from services.common.errors import FieldViolation, InvalidArgument
from services.evaluation.core.model import NewExample, single_example_violations
from services.prompt.core.model import JsonObject, canonical_json
from services.prompt.core.registry import parse_content
from services.prompt.core.templates import render

FileFormat = Literal["jsonl", "yaml"]
EXAMPLE_KEYS: Final = frozenset({"inputs", "reference", "tags"})
EXAMPLE_ID_CHARS: Final = 24
"""Hex characters of an example id (96 bits of SHA-256)."""


@dataclass(frozen=True, slots=True)
class SourcedExample:
    """An example read from a file, with the line its object starts on (from 1)."""

    line: int
    example: NewExample


def example_id(example: NewExample) -> str:
    """The example's id: a hash of its canonical content (inputs, reference, tags), so that
    importing a file twice, or retrying a batch, stores each example once."""
    document = {
        "inputs": dict(example.inputs),
        "reference": example.reference,
        "tags": dict(example.tags),
    }
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()[:EXAMPLE_ID_CHARS]


def format_of(filename: str) -> FileFormat:
    """The format a file name implies (`.jsonl`/`.ndjson`, `.yaml`/`.yml`); ValueError for
    any other."""
    lowered = filename.lower()
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if lowered.endswith((".yaml", ".yml")):
        return "yaml"
    raise ValueError(f"{filename}: not a .jsonl or .yaml file")


def parse_examples(text: str, file_format: FileFormat, source: str) -> list[SourcedExample]:
    """The examples of a file's `text`; InvalidArgument listing every malformed example as
    `<source>:<line>` (`.inputs`, `.reference`, `.tags` where the problem is in one key)."""
    violations: list[FieldViolation] = []
    if file_format == "jsonl":
        items = _jsonl_items(text, source, violations)
    else:
        items = _yaml_items(text, source)
    examples: list[SourcedExample] = []
    for line, item in items:
        at = f"{source}:{line}"
        example, problems = _example(item, at)
        violations += problems
        if example is not None:
            violations += single_example_violations(example, at)
            examples.append(SourcedExample(line, example))
    if violations:
        raise InvalidArgument(violations=violations)
    if not examples:
        raise InvalidArgument(violations=[FieldViolation(source, "holds no examples")])
    return examples


def check_examples(
    content: JsonObject, examples: Sequence[NewExample], field: str = "examples"
) -> list[FieldViolation]:
    """Every violation of a batch's inputs against the version `content`'s variable
    schema, as `<field>[<i>].inputs.<name>`; `[]` when every example renders."""
    return _check(content, ((f"{field}[{i}]", e) for i, e in enumerate(examples)))


def check_sourced_examples(
    content: JsonObject, examples: Sequence[SourcedExample], source: str
) -> list[FieldViolation]:
    """As `check_examples`, for examples read from a file: paths are
    `<source>:<line>.inputs.<name>`."""
    return _check(content, ((f"{source}:{e.line}", e.example) for e in examples))


def raise_for_examples(violations: Sequence[FieldViolation]) -> None:
    """InvalidArgument (VARIABLE_INVALID) listing `violations`, if there are any: what
    AddExamples reports when one example's inputs do not fit the prompt."""
    if violations:
        raise InvalidArgument(violations=violations, reason=reasons.VARIABLE_INVALID)


# ------------------------------------------------------------------------------- checks


def _check(content: JsonObject, examples: Iterable[tuple[str, NewExample]]) -> list[FieldViolation]:
    messages, variables, shape = parse_content(content)
    if shape:  # stored versions were checked when created: this is a corrupted store
        raise InvalidArgument(violations=shape, reason=reasons.TEMPLATE_INVALID)
    violations: list[FieldViolation] = []
    for at, example in examples:
        try:
            render(messages, variables, example.inputs, values_field=f"{at}.inputs")
        except InvalidArgument as e:
            if e.reason == reasons.VARIABLE_INVALID:
                violations += e.violations
            else:
                violations += [
                    FieldViolation(
                        f"{at}.inputs",
                        f"the prompt does not render with these inputs: {v.description}",
                    )
                    for v in e.violations
                ]
    return violations


# -------------------------------------------------------------------------------- files


def _jsonl_items(
    text: str, source: str, violations: list[FieldViolation]
) -> list[tuple[int, object]]:
    """The parsed lines with their numbers; a line that is not JSON is added to
    `violations`."""
    items: list[tuple[int, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except ValueError as e:
            violations.append(FieldViolation(f"{source}:{number}", f"is not JSON: {e}"))
    return items


def _yaml_items(text: str, source: str) -> list[tuple[int, object]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        document = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise InvalidArgument(
            violations=[FieldViolation(where, f"is not YAML: {getattr(e, 'problem', e)}")]
        ) from None
    finally:
        loader.dispose()
    if isinstance(document, dict) and isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        key, value = node.value[0]
        if key.value == "examples":
            document, node = document.get("examples"), value
    if not isinstance(document, list) or not isinstance(node, yaml.SequenceNode):
        raise InvalidArgument(
            violations=[
                FieldViolation(source, "must be a list of examples (or hold one in 'examples')")
            ]
        )
    return [
        (item.start_mark.line + 1, value) for item, value in zip(node.value, document, strict=True)
    ]


def _example(item: object, at: str) -> tuple[NewExample | None, list[FieldViolation]]:
    if not isinstance(item, Mapping):
        return None, [FieldViolation(at, "must be an object with 'inputs'")]
    violations = [
        FieldViolation(f"{at}.{str(key)[:64]}", "is not an example field (inputs, reference, tags)")
        for key in item
        if key not in EXAMPLE_KEYS
    ]
    inputs = item.get("inputs")
    if not isinstance(inputs, Mapping):
        violations.append(FieldViolation(f"{at}.inputs", "required, an object of variables"))
    else:
        try:
            json.dumps(_plain(inputs), allow_nan=False)
        except (TypeError, ValueError):
            violations.append(FieldViolation(f"{at}.inputs", "must hold JSON values only"))
    reference = item.get("reference")
    if reference is None:
        reference = ""
    elif not isinstance(reference, str):
        reference = json.dumps(
            reference, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        )
    tags: dict[str, str] = {}
    raw_tags = item.get("tags") or {}
    if not isinstance(raw_tags, Mapping):
        violations.append(FieldViolation(f"{at}.tags", "must be an object of strings"))
    else:
        for key, value in raw_tags.items():
            if isinstance(value, Mapping | list) or value is None:
                violations.append(FieldViolation(f"{at}.tags.{str(key)[:64]}", "must be a scalar"))
            else:
                tags[str(key)] = _scalar_text(value)
    if violations or not isinstance(inputs, Mapping):
        return None, violations
    return NewExample(inputs=_plain(inputs), reference=reference, tags=tags), []


def _scalar_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _plain(value: Mapping[Any, Any]) -> dict[str, Any]:
    """The inputs with string keys (YAML allows others)."""
    return {str(key): item for key, item in value.items()}

"""Prompt files: one prompt per `<name>.yaml`, the "prompts as code" format of `genai prompts`.

A file holds the prompt's own fields and the content of the version to push::

    name: support-answer            # optional; must equal the file name without `.yaml`
    description: Answers a customer's support question.
    protected_labels: []            # labels that move only past the evaluation gate
    evaluation_gate:                # optional
      dataset: support-golden
      thresholds: [{scorer: exact_match, min_mean: 0.8}]
    messages:                       # a chat prompt: role system | user | assistant, Jinja content
      - role: system
        content: You answer questions about {{ product }}.
    # text: "Q: {{ question }}\nA:"  # or a text prompt: one Jinja template of raw text
    variables:                      # every variable the templates use
      - name: product
        type: string                # string | integer | number | boolean | enum | string_list
        required: true
        max_length: 80
    parameters: {temperature: 0.2, max_tokens: 512, stop: ["###"]}
    routing: {policy: quality, required_capabilities: [chat]}
    output_schema: {type: object}   # optional JSON Schema
    processing: {max_output_chars: 4000, pii_redaction: {kinds: [email]}}

Keys are the proto field names of `genai.prompt.v1.Prompt` / `PromptVersion` (and of the
messages they contain), with enums written as their short lower-case names (`system`,
`string_list`, `json_output`, `card_number`) and 64-bit integers as plain numbers. Three keys
differ: a version's `text_template` is written `text`, a variable's `default_value` is written
`default`, and `values` is accepted for `enum_values`. A file has exactly one of `messages`
(a chat prompt) and `text` (a text prompt). Durations are proto JSON strings (`"1.5s"`) or numbers of seconds. Unknown keys,
duplicate keys and values of the wrong type are errors, each reported with the file's path.

`dump_prompt_file` writes a stored version back in this format so that loading the written file
gives the same protos, hence the same content hash: pull, then push, creates nothing.
"""

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from genai.prompt.v1 import prompt_pb2
from google.protobuf import duration_pb2, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from services.prompt.core.model import content_hash
from services.prompt.core.registry import CONTENT_FIELDS, NAME_PATTERN
from services.prompt.wire import version_content

SUFFIXES: Final = (".yaml", ".yml")
"""File name endings of prompt files; other files in a prompt folder are ignored."""
PROMPT_FIELDS: Final = ("name", "description", "protected_labels", "evaluation_gate")
"""Keys of a file that belong to the prompt rather than to the version."""

_RENAMED: Final = {
    ("genai.prompt.v1.PromptVersion", "text_template"): "text",
    ("genai.prompt.v1.VariableSpec", "default_value"): "default",
}
"""Proto field -> its key in a file, where the two differ."""
_ALIASES: Final = {("genai.prompt.v1.VariableSpec", "values"): "enum_values"}
"""Further keys accepted in a file -> the proto field they set."""
_INT_RANGES: Final = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_MESSAGES: Final = prompt_pb2.DESCRIPTOR.message_types_by_name
_VERSION: Final = "genai.prompt.v1.PromptVersion"
_FLOATS: Final = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
_MAX_EXACT_INT: Final = 2**53
INVALID: Final[Any] = object()
"""What a conversion returns after recording a problem (None is a valid JSON value)."""
_INLINE_LIST_CHARS: Final = 72
_UNICODE_BREAKS: Final = "\x85\u2028\u2029"
"""Characters YAML reads as line breaks that only a double-quoted scalar keeps as they are."""


class PromptFileError(ValueError):
    """A prompt file that cannot be used; every line of the message starts with its path."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{path}: {problem}" for problem in self.problems))


@dataclass(frozen=True)
class PromptFile:
    """One loaded prompt file: the prompt's fields and the content of its next version."""

    path: Path
    prompt: prompt_pb2.Prompt
    """`name`, `description`, `protected_labels` and `evaluation_gate`."""
    version: prompt_pb2.PromptVersion
    """The content fields only (no author, commit message or output-only fields)."""

    @property
    def name(self) -> str:
        """The prompt's name."""
        return self.prompt.name

    @property
    def content_hash(self) -> str:
        """The content hash the registry gives this version (see `PromptVersion.content_hash`)."""
        return version_hash(self.version)


def version_hash(version: prompt_pb2.PromptVersion) -> str:
    """The registry's content hash of a version proto: equal hashes, equal behaviour."""
    return content_hash(version_content(version))


# ------------------------------------------------------------------------------------ loading


def find_prompt_files(paths: Iterable[Path]) -> list[Path]:
    """The prompt files among `paths`: a folder stands for its `*.yaml`/`*.yml` files (not its
    sub-folders), in name order; a file stands for itself. Raises `FileNotFoundError` for a
    path that does not exist."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def load_prompt_file(path: Path) -> PromptFile:
    """Reads and checks one prompt file; raises `PromptFileError` listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(path, [f"cannot read: {error}"]) from error
    return parse_prompt_file(text, path)


def parse_prompt_file(text: str, path: Path) -> PromptFile:
    """Checks the text of a prompt file read from `path` (whose stem is the prompt's name)."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise PromptFileError(path, [f"invalid YAML: {error.problem}{where}"]) from error
    except yaml.YAMLError as error:
        raise PromptFileError(path, [f"invalid YAML: {error}"]) from error
    if document is None:
        raise PromptFileError(path, ["is empty; a prompt file needs `messages` or `text`"])
    if not isinstance(document, Mapping):
        raise PromptFileError(path, ["must be a mapping of keys (name, messages, ...)"])

    problems: list[str] = []
    prompt_json: dict[str, Any] = {}
    version_json: dict[str, Any] = {}
    prompt_fields = _MESSAGES["Prompt"].fields_by_name
    version_fields = _MESSAGES["PromptVersion"].fields_by_name
    content_keys = {_RENAMED.get((_VERSION, field), field): field for field in CONTENT_FIELDS}
    allowed = (*PROMPT_FIELDS, *content_keys)
    for key, value in document.items():
        if key not in allowed:
            problems.append(f"{key}: unknown key; expected one of: {', '.join(allowed)}")
            continue
        if key in PROMPT_FIELDS:
            converted = _field_from_yaml(value, prompt_fields[key], key, problems)
            target, field = prompt_json, key
        else:
            field = content_keys[key]
            converted = _field_from_yaml(value, version_fields[field], key, problems)
            target = version_json
        if converted is not INVALID:
            target[field] = converted

    stem = path.stem
    name = prompt_json.setdefault("name", stem)
    if name != stem:
        problems.append(f"name: {name!r} differs from the file name; name the file {name}.yaml")
    elif NAME_PATTERN.fullmatch(name) is None:
        problems.append(
            f"name: {name!r} is not a prompt name: 1 to 64 of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter (the file name without .yaml is the name)"
        )
    if "messages" not in document and "text" not in document:
        problems.append("messages: required (at least one message), or text for a text prompt")
    elif "messages" in document and "text" in document:
        problems.append(
            "text: a file has either messages (a chat prompt) or text (a text prompt), not both"
        )
    if problems:
        raise PromptFileError(path, problems)

    prompt = prompt_pb2.Prompt()
    version = prompt_pb2.PromptVersion()
    try:
        json_format.ParseDict(prompt_json, prompt)
        json_format.ParseDict(version_json, version)
    except json_format.ParseError as error:  # the checks above should have caught it
        raise PromptFileError(path, [str(error)]) from error
    return PromptFile(path=path, prompt=prompt, version=version)


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last)."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable: construct_mapping reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def _field_from_yaml(value: Any, field: FieldDescriptor, path: str, problems: list[str]) -> Any:
    """The proto JSON of one field's YAML value, or INVALID after recording problems."""
    if field.is_repeated:
        if not isinstance(value, list):
            problems.append(f"{path}: must be a list")
            return INVALID
        items = [
            _value_from_yaml(item, field, f"{path}[{index}]", problems)
            for index, item in enumerate(value)
        ]
        return items if all(item is not INVALID for item in items) else INVALID
    return _value_from_yaml(value, field, path, problems)


def _value_from_yaml(value: Any, field: FieldDescriptor, path: str, problems: list[str]) -> Any:
    problem = None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message_from_yaml(value, field.message_type, path, problems)
    if field.type == FieldDescriptor.TYPE_ENUM:
        names = _enum_names(field.enum_type)
        if isinstance(value, str) and value in names:
            return names[value]
        problem = f"must be one of {', '.join(names)}"
    elif field.type == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        problem = "must be a string" + (" (quote it)" if value is not None else "")
    elif field.type == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        problem = "must be true or false"
    elif field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        problem = "must be a whole number" + (" >= 0" if low == 0 else "")
    elif field.type in _FLOATS:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
        problem = "must be a finite number"
    else:  # bytes: no such field in the format
        problem = "is not supported in prompt files"
    problems.append(f"{path}: {problem} (got {_shown(value)})")
    return INVALID


def _message_from_yaml(value: Any, descriptor: Descriptor, path: str, problems: list[str]) -> Any:
    full_name = descriptor.full_name
    if full_name == "google.protobuf.Struct":
        if not isinstance(value, Mapping):
            problems.append(f"{path}: must be a mapping (a JSON object)")
            return INVALID
        return value if _json_ok(value, path, problems) else None
    if full_name == "google.protobuf.Value":
        return value if _json_ok(value, path, problems) else None
    if full_name == "google.protobuf.Duration":
        return _duration_from_yaml(value, path, problems)
    if not isinstance(value, Mapping):
        problems.append(f"{path}: must be a mapping (got {_shown(value)})")
        return INVALID
    fields = {_RENAMED.get((full_name, f.name), f.name): f for f in descriptor.fields}
    keys = ", ".join(fields)
    for (message, key), name in _ALIASES.items():
        if message == full_name:
            fields[key] = descriptor.fields_by_name[name]
    result: dict[str, Any] = {}
    for key, item in value.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            problems.append(f"{path}.{key}: unknown key; expected one of: {keys}")
            continue
        if field.name in result:
            problems.append(f"{path}.{key}: sets {field.name} a second time")
            continue
        converted = _field_from_yaml(item, field, f"{path}.{key}", problems)
        if converted is not INVALID:
            result[field.name] = converted
    return result


def _duration_from_yaml(value: Any, path: str, problems: list[str]) -> Any:
    duration = duration_pb2.Duration()
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                raise ValueError("negative or not finite")
            duration.FromNanoseconds(round(value * 1e9))
        elif isinstance(value, str):
            duration.FromJsonString(value)
        else:
            raise ValueError("wrong type")
    except ValueError:
        problems.append(
            f"{path}: must be a duration: seconds as a number, or a string like '1.5s' "
            f"(got {_shown(value)})"
        )
        return INVALID
    return duration.ToJsonString()


def _json_ok(value: Any, path: str, problems: list[str]) -> bool:
    """Whether `value` is plain JSON (YAML also has dates, binary and non-string keys)."""
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        if math.isfinite(value):
            return True
        problems.append(f"{path}: must be a finite number (got {_shown(value)})")
        return False
    if isinstance(value, list):
        results = [_json_ok(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
        return all(results)  # every item checked, so that every problem is reported
    if isinstance(value, Mapping):
        ok = True
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{path}: key {key!r} must be a string (quote it)")
                ok = False
            elif not _json_ok(item, f"{path}.{key}", problems):
                ok = False
        return ok
    problems.append(f"{path}: must be a JSON value (got {_shown(value)}; quote it)")
    return False


def _enum_names(enum: EnumDescriptor) -> dict[str, str]:
    """Short lower-case names (`string_list`) -> full names (`VARIABLE_TYPE_STRING_LIST`),
    without the UNSPECIFIED value."""
    prefix = _enum_prefix(enum)
    return {
        value.name.removeprefix(prefix).lower(): value.name
        for value in enum.values
        if value.number != 0
    }


def _enum_prefix(enum: EnumDescriptor) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------ writing


def dump_prompt_file(
    prompt: prompt_pb2.Prompt, version: prompt_pb2.PromptVersion, *, header: str = ""
) -> str:
    """The text of a prompt file for `prompt`'s fields and `version`'s content; `header`
    becomes a comment on top. Loading it gives back equal protos (the same content hash)."""
    document: dict[str, Any] = {"name": prompt.name}
    if prompt.description:
        document["description"] = prompt.description
    if prompt.protected_labels:
        document["protected_labels"] = list(prompt.protected_labels)
    if prompt.HasField("evaluation_gate"):
        document["evaluation_gate"] = _message_to_yaml(
            json_format.MessageToDict(prompt.evaluation_gate, preserving_proto_field_name=True),
            _MESSAGES["EvaluationGate"],
        )
    content = _message_to_yaml(
        version_content(version), _MESSAGES["PromptVersion"], only=CONTENT_FIELDS
    )
    document.update(content)
    text = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,
    )
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + text


def write_prompt_file(
    directory: Path,
    prompt: prompt_pb2.Prompt,
    version: prompt_pb2.PromptVersion,
    *,
    header: str = "",
) -> Path:
    """Writes `<directory>/<name>.yaml` (see `dump_prompt_file`) and returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prompt.name}.yaml"
    path.write_text(dump_prompt_file(prompt, version, header=header), encoding="utf-8")
    return path


def _message_to_yaml(
    document: Mapping[str, Any], descriptor: Descriptor, *, only: Sequence[str] = ()
) -> dict[str, Any]:
    """A message's proto JSON (proto field names) as file keys and values, in field order."""
    result: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.name not in document or (only and field.name not in only):
            continue
        key = _RENAMED.get((descriptor.full_name, field.name), field.name)
        value = document[field.name]
        if field.is_repeated:
            result[key] = [_value_to_yaml(item, field) for item in value]
        else:
            result[key] = _value_to_yaml(value, field)
    return result


def _value_to_yaml(value: Any, field: FieldDescriptor) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name in ("google.protobuf.Struct", "google.protobuf.Value"):
            return _tidy_json(value)
        if name == "google.protobuf.Duration":
            return value
        return _message_to_yaml(value, field.message_type)
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        return value.removeprefix(_enum_prefix(field.enum_type)).lower()
    if field.type in _INT_RANGES and isinstance(value, str):  # 64-bit integers are JSON strings
        return int(value)
    return value


def _tidy_json(value: Any) -> Any:
    """Struct numbers are doubles: writes whole ones as integers (`5`, not `5.0`), which read
    back as the same double (zero stays a float: it has a sign); sorts object keys."""
    if isinstance(value, float) and value.is_integer() and 0 < abs(value) <= _MAX_EXACT_INT:
        return int(value)
    if isinstance(value, list):
        return [_tidy_json(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _tidy_json(value[key]) for key in sorted(value)}
    return value


class _Dumper(yaml.SafeDumper):
    """Writes multi-line text (templates) as literal blocks, everything else as usual."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Text over several lines as a literal block (PyYAML falls back to a quoted style by itself
    # where a block cannot hold the text exactly: trailing spaces, special characters); bare
    # line breaks double-quoted, as escapes.
    style = None
    if any(c in data for c in _UNICODE_BREAKS):  # only double quotes keep them (as escapes)
        style = '"'
    elif "\n" in data:
        style = "|" if data.strip() else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.SequenceNode:
    # Short lists of one-line scalars (enum values, stop sequences, kinds) on one line.
    inline = (
        all(isinstance(item, str | int | float | bool) and not _text_block(item) for item in data)
        and sum(len(str(item)) + 2 for item in data) <= _INLINE_LIST_CHARS
    )
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=inline)


def _text_block(item: object) -> bool:
    return isinstance(item, str) and "\n" in item and bool(item.strip())


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)

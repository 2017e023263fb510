"""The contract-wide request guard: values that no field of any request may hold.

Per-method validators know what each field means; this guard knows only the field *types*, and
rejects what no method can use:

- a `google.protobuf.Timestamp` outside 0001-01-01..9999-12-31 or with nanos outside [0, 1e9);
- a `google.protobuf.Duration` outside +-10,000 years, with nanos outside (-1e9, 1e9), or with
  seconds and nanos of opposite signs;
- NaN or an infinity in a `float`/`double` field (`Value.number_value` included: JSON has no
  such numbers);
- an enum number that the enum does not declare (proto3 enums keep unknown numbers);
- `google.protobuf.Struct`/`Value`/`ListValue` nested deeper than `MAX_STRUCT_DEPTH`, and a
  `Value` that sets no kind (JSON has no such value).

It walks a request through its descriptor, following only the fields that can reach such
values: the plan of each message type is built once and cached, and a request type that
cannot hold any of them costs one dictionary look-up. Violations name the field path the way
`FieldViolation` does: `start_time`, `messages[2].parameters.temperature`, `labels["env"]`,
`variables.a.b` (inside a Struct, keys are path segments).

This module imports no grpc.
"""

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum, auto
from functools import cache
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from services.common.errors import FieldViolation

MAX_STRUCT_DEPTH: Final = 32
"""How deep `Struct`/`ListValue` values may nest inside one field (`{"a": {"b": 1}}` is 2)."""

MAX_VIOLATIONS: Final = 20
"""At most this many violations are reported; a hostile request may hold millions."""

TIMESTAMP_MIN_SECONDS: Final = -62_135_596_800
"""0001-01-01T00:00:00Z, the smallest Timestamp the well-known type allows."""
TIMESTAMP_MAX_SECONDS: Final = 253_402_300_799
"""9999-12-31T23:59:59Z, the largest."""
DURATION_MAX_SECONDS: Final = 315_576_000_000
"""About 10,000 years, the largest magnitude the well-known type allows."""
NANOS_PER_SECOND: Final = 1_000_000_000

_TIMESTAMP: Final = "google.protobuf.Timestamp"
_DURATION: Final = "google.protobuf.Duration"
_STRUCT: Final = "google.protobuf.Struct"
_VALUE: Final = "google.protobuf.Value"
_LIST_VALUE: Final = "google.protobuf.ListValue"
_JSON_TYPES: Final = frozenset({_STRUCT, _VALUE, _LIST_VALUE})
_FLOATS: Final = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
_MAX_KEY_IN_PATH: Final = 64
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Kind(Enum):
    TIMESTAMP = auto()
    DURATION = auto()
    JSON = auto()  # Struct, Value or ListValue
    FLOAT = auto()
    ENUM = auto()
    MESSAGE = auto()  # any other message type that can reach a checked value


@dataclass(frozen=True, slots=True)
class _Check:
    field: FieldDescriptor
    kind: _Kind
    repeated: bool
    map_value: FieldDescriptor | None
    """The `value` field of a map entry (then `field` is the map field)."""
    known_numbers: frozenset[int] = frozenset()
    """The numbers an enum declares (ENUM only)."""


class _Violations:
    """Collects violations up to `MAX_VIOLATIONS`."""

    def __init__(self) -> None:
        self.found: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        if not self.full():
            self.found.append(FieldViolation(field, description))

    def full(self) -> bool:
        return len(self.found) >= MAX_VIOLATIONS


def guards(descriptor: Descriptor) -> bool:
    """True when messages of `descriptor` can hold a value the guard checks (else checking
    them is a no-op)."""
    return bool(_plan(descriptor))


def request_violations(message: Message) -> list[FieldViolation]:
    """Returns the violations of the contract-wide rules in `message` (empty when none)."""
    plan = _plan(message.DESCRIPTOR)
    if not plan:
        return []
    violations = _Violations()
    _check_message(message, plan, "", violations)
    return violations.found


@cache
def _plan(descriptor: Descriptor) -> tuple[_Check, ...]:
    """The checks of one message type: its fields that are, or can reach, a checked value."""
    if descriptor.full_name in (_TIMESTAMP, _DURATION) or descriptor.full_name in _JSON_TYPES:
        return ()  # checked where a field holds one; no request of the contract is one
    reaching = _reaching()
    checks: list[_Check] = []
    for field in descriptor.fields:
        map_value = _map_value(field)
        target = map_value if map_value is not None else field
        kind = _kind(target, reaching)
        if kind is None:
            continue
        numbers: frozenset[int] = frozenset()
        if kind is _Kind.ENUM:
            numbers = frozenset(target.enum_type.values_by_number)
        checks.append(
            _Check(
                field=field,
                kind=kind,
                repeated=_is_repeated(field) and map_value is None,
                map_value=map_value,
                known_numbers=numbers,
            )
        )
    return tuple(checks)


def _kind(field: FieldDescriptor, reaching: "_Reaching") -> _Kind | None:
    if field.type in _FLOATS:
        return _Kind.FLOAT
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _Kind.ENUM
    message_type = field.message_type
    if message_type is None:
        return None
    name = message_type.full_name
    if name == _TIMESTAMP:
        return _Kind.TIMESTAMP
    if name == _DURATION:
        return _Kind.DURATION
    if name in _JSON_TYPES:
        return _Kind.JSON
    return _Kind.MESSAGE if reaching(message_type) else None


class _Reaching:
    """Whether a message type can reach a checked field, memoized; recursive types are fine."""

    def __init__(self) -> None:
        self._known: dict[str, bool] = {}

    def __call__(self, descriptor: Descriptor) -> bool:
        known = self._known.get(descriptor.full_name)
        if known is not None:
            return known
        # Every type reachable from `descriptor`; it reaches a checked field iff one of them
        # has one directly.
        seen: dict[str, Descriptor] = {}
        pending = [descriptor]
        while pending:
            current = pending.pop()
            if current.full_name in seen:
                continue
            seen[current.full_name] = current
            pending.extend(f.message_type for f in current.fields if f.message_type is not None)
        result = any(_checks_directly(d) for d in seen.values())
        self._known[descriptor.full_name] = result
        return result


def _checks_directly(descriptor: Descriptor) -> bool:
    if descriptor.full_name in (_TIMESTAMP, _DURATION) or descriptor.full_name in _JSON_TYPES:
        return True
    return any(f.type in _FLOATS or f.type == FieldDescriptor.TYPE_ENUM for f in descriptor.fields)


@cache
def _reaching() -> _Reaching:
    return _Reaching()


def _map_value(field: FieldDescriptor) -> FieldDescriptor | None:
    entry = field.message_type
    if entry is None or not entry.GetOptions().map_entry:
        return None
    value: FieldDescriptor = entry.fields_by_name["value"]
    return value


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _check_message(
    message: Message, plan: tuple[_Check, ...], prefix: str, violations: _Violations
) -> None:
    for check in plan:
        field = check.field
        path = prefix + field.name
        for item_path, value in _values(message, check, path):
            _check_value(check, value, item_path, violations)
            if violations.full():
                return


def _values(message: Message, check: _Check, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of each value `check` applies to in `message`; unset singular messages
    and oneof members are skipped."""
    field = check.field
    if check.map_value is not None:
        for key, value in getattr(message, field.name).items():
            yield f"{path}[{_quoted_key(key)}]", value
    elif check.repeated:
        for index, value in enumerate(getattr(message, field.name)):
            yield f"{path}[{index}]", value
    elif field.message_type is not None or field.containing_oneof is not None:
        if message.HasField(field.name):
            yield path, getattr(message, field.name)
    else:
        yield path, getattr(message, field.name)


def _check_value(check: _Check, value: Any, path: str, violations: _Violations) -> None:
    match check.kind:
        case _Kind.FLOAT:
            if not math.isfinite(value):
                violations.add(path, f"must be a finite number, not {value}")
        case _Kind.ENUM:
            if value not in check.known_numbers:
                enum_type = (check.map_value or check.field).enum_type
                violations.add(path, f"{value} is not a value of {enum_type.full_name}")
        case _Kind.TIMESTAMP:
            _check_timestamp(value, path, violations)
        case _Kind.DURATION:
            _check_duration(value, path, violations)
        case _Kind.JSON:
            _check_json(value, path, 0, violations)
        case _Kind.MESSAGE:
            _check_message(value, _plan(value.DESCRIPTOR), path + ".", violations)


def _check_timestamp(value: Any, path: str, violations: _Violations) -> None:
    if not TIMESTAMP_MIN_SECONDS <= value.seconds <= TIMESTAMP_MAX_SECONDS:
        violations.add(
            path,
            f"seconds {value.seconds} is outside the Timestamp range "
            f"[{TIMESTAMP_MIN_SECONDS}, {TIMESTAMP_MAX_SECONDS}] (0001-01-01 to 9999-12-31)",
        )
    elif not 0 <= value.nanos < NANOS_PER_SECOND:
        violations.add(path, f"nanos {value.nanos} must be in [0, 999999999]")


def _check_duration(value: Any, path: str, violations: _Violations) -> None:
    seconds, nanos = value.seconds, value.nanos
    if not -DURATION_MAX_SECONDS <= seconds <= DURATION_MAX_SECONDS:
        violations.add(
            path,
            f"seconds {seconds} is outside the Duration range "
            f"[-{DURATION_MAX_SECONDS}, {DURATION_MAX_SECONDS}] (about 10,000 years)",
        )
    elif not -NANOS_PER_SECOND < nanos < NANOS_PER_SECOND:
        violations.add(path, f"nanos {nanos} must be in [-999999999, 999999999]")
    elif (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        violations.add(path, f"seconds {seconds} and nanos {nanos} must have the same sign")


def _check_json(value: Any, path: str, depth: int, violations: _Violations) -> None:
    """Checks a Struct, Value or ListValue; `depth` counts the Structs and ListValues around
    it."""
    name = value.DESCRIPTOR.full_name
    if name == _STRUCT:
        _check_struct(value, path, depth + 1, violations)
    elif name == _LIST_VALUE:
        _check_list(value, path, depth + 1, violations)
    else:
        _check_json_value(value, path, depth, violations)


def _check_struct(value: Any, path: str, depth: int, violations: _Violations) -> None:
    if depth > MAX_STRUCT_DEPTH:
        violations.add(path, f"nests deeper than {MAX_STRUCT_DEPTH} levels")
        return
    for key, item in value.fields.items():
        _check_json_value(item, _struct_path(path, key), depth, violations)
        if violations.full():
            return


def _check_list(value: Any, path: str, depth: int, violations: _Violations) -> None:
    if depth > MAX_STRUCT_DEPTH:
        violations.add(path, f"nests deeper than {MAX_STRUCT_DEPTH} levels")
        return
    for index, item in enumerate(value.values):
        _check_json_value(item, f"{path}[{index}]", depth, violations)
        if violations.full():
            return


def _check_json_value(value: Any, path: str, depth: int, violations: _Violations) -> None:
    match value.WhichOneof("kind"):
        case "number_value":
            if not math.isfinite(value.number_value):
                violations.add(path, f"must be a finite number, not {value.number_value}")
        case "null_value":
            if value.null_value != 0:
                violations.add(path, f"{value.null_value} is not a value of NullValue")
        case "struct_value":
            _check_struct(value.struct_value, path, depth + 1, violations)
        case "list_value":
            _check_list(value.list_value, path, depth + 1, violations)
        case None:
            violations.add(path, "must set a kind (null, number, string, bool, struct or list)")
        case _:  # string_value, bool_value
            pass


def _struct_path(path: str, key: str) -> str:
    if _IDENTIFIER.match(key) and len(key) <= _MAX_KEY_IN_PATH:
        return f"{path}.{key}" if path else key
    return f"{path}[{_quoted_key(key)}]"


def _quoted_key(key: object) -> str:
    if not isinstance(key, str):
        return str(key).lower() if isinstance(key, bool) else str(key)
    if len(key) > _MAX_KEY_IN_PATH:
        key = key[:_MAX_KEY_IN_PATH] + "..."
    return json.dumps(key, ensure_ascii=False)

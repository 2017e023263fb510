"""Guided decoding (structured outputs) on a real Triton 2.51: the CPU repository's `ensemble`
facade over gRPC with `guided_decoding_guide_type` and `guided_decoding_guide`, SmolLM2-135M
constrained by xgrammar inside `tensorrt_llm`."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import jsonschema
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from genai_triton.tokenization import TextTokenizer
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from services.inference.adapters.tritonserver import TritonServer
from tests.support.smollm2 import smollm2_dir
from tests.support.triton import (
    Chunk,
    generation_inputs,
    requires_triton,
    stream_generation,
    text_tensor,
    triton_server,
)

pytestmark = [pytest.mark.system, requires_triton]

MODELS = ["preprocessing", "tensorrt_llm", "postprocessing", "ensemble"]
INVOICE = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "maxLength": 40},
        "total": {"type": "number"},
        "items": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string", "maxLength": 40},
                    "quantity": {"type": "integer"},
                    "price": {"type": "number"},
                },
                "required": ["description", "quantity", "price"],
            },
        },
    },
    "required": ["customer", "total", "items"],
}
INVOICE_QUESTION = "Write an invoice for Alice: 2 apples at 0.5 dollars and 3 pears at 1 dollar."


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(smollm2_dir())


@pytest.fixture(scope="module")
def triton(
    tokenizer: TextTokenizer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    started = time.monotonic()
    with triton_server(tmp_path_factory.mktemp("triton-guided"), MODELS) as server:
        print(f"Triton with SmolLM2 ready in {time.monotonic() - started:.1f} s")
        yield server


@pytest.fixture
async def client(triton: TritonServer) -> AsyncIterator[aioclient.InferenceServerClient]:
    client = aioclient.InferenceServerClient(triton.grpc_address)
    try:
        yield client
    finally:
        await client.close()


def chatml(tokenizer: TextTokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}])


def guided_inputs(
    prompt: str, max_tokens: int, guide_type: str, guide: str | None = None, **options: Any
) -> list[grpcclient.InferInput]:
    inputs = generation_inputs(prompt, max_tokens, **options)
    inputs.append(text_tensor("guided_decoding_guide_type", [guide_type], [1, 1]))
    if guide is not None:
        inputs.append(text_tensor("guided_decoding_guide", [guide], [1, 1]))
    return inputs


def text_of(chunks: Sequence[Chunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


async def test_a_streamed_json_schema_request_returns_schema_valid_json(
    client: aioclient.InferenceServerClient, tokenizer: TextTokenizer
) -> None:
    prompt = chatml(tokenizer, INVOICE_QUESTION)
    chunks = await stream_generation(
        client,
        guided_inputs(prompt, 256, "json_schema", json.dumps(INVOICE)),
        model="ensemble",
    )

    assert len(chunks) > 2, "not streamed"
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(chunks)), INVOICE)

    (whole,) = await stream_generation(
        client,
        guided_inputs(prompt, 256, "json_schema", json.dumps(INVOICE), stream=False),
        model="ensemble",
    )
    assert whole.text == text_of(chunks)


async def test_regex_and_grammar_guides_beside_an_unconstrained_stream(
    client: aioclient.InferenceServerClient, tokenizer: TextTokenizer
) -> None:
    free_prompt = chatml(tokenizer, "Write a haiku about the sea.")
    alone = text_of(
        await stream_generation(client, generation_inputs(free_prompt, 24), model="ensemble")
    )
    question = chatml(tokenizer, "Is the sky blue?")

    free, regex, grammar = await asyncio.gather(
        stream_generation(client, generation_inputs(free_prompt, 24), model="ensemble"),
        stream_generation(
            client, guided_inputs(question, 16, "regex", r"(yes|no)\."), model="ensemble"
        ),
        stream_generation(
            client,
            guided_inputs(
                question, 16, "ebnf_grammar", 'root ::= "The sky is " ("blue" | "grey") "."'
            ),
            model="ensemble",
        ),
    )

    assert text_of(free) == alone
    assert re.fullmatch(r"(yes|no)\.", text_of(regex))
    assert re.fullmatch(r"The sky is (blue|grey)\.", text_of(grammar))
    assert regex[-1].finish_reason == grammar[-1].finish_reason == "stop"


async def test_an_invalid_schema_is_an_invalid_argument(
    client: aioclient.InferenceServerClient, tokenizer: TextTokenizer
) -> None:
    prompt = chatml(tokenizer, INVOICE_QUESTION)
    inputs = guided_inputs(prompt, 32, "json_schema", '{"type": "object", "required": 5}')
    message = r"^\[FIELD_VIOLATION\] guided_decoding_guide: invalid json_schema: "

    with pytest.raises(InferenceServerException, match=message):
        await stream_generation(client, inputs, model="ensemble")

    # With Triton's gRPC error mode the tag's code becomes the stream's status.
    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "ensemble", "inputs": inputs}

    async def first_error() -> None:
        stream = client.stream_infer(requests(), headers={"triton_grpc_error": "true"})
        async for _, error in stream:
            if error is not None:
                raise error

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await first_error()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.match(message, caught.value.details() or "")


@pytest.mark.parametrize(
    ("guide_type", "guide", "message"),
    [
        ("xml", "<a/>", r"^\[FIELD_VIOLATION\] guided_decoding_guide_type: unknown guide type"),
        ("regex", None, r"^\[FIELD_VIOLATION\] guided_decoding_guide: is required for guide type"),
    ],
)
async def test_malformed_guides_are_field_violations(
    client: aioclient.InferenceServerClient, guide_type: str, guide: str | None, message: str
) -> None:
    with pytest.raises(InferenceServerException, match=message):
        await stream_generation(client, guided_inputs("hi", 8, guide_type, guide), model="ensemble")


async def test_tensorrt_llm_takes_the_guide_directly(
    client: aioclient.InferenceServerClient, tokenizer: TextTokenizer
) -> None:
    """The engine's own tensors, as TensorRT-LLM clients send them."""
    prompt = tokenizer.encode(chatml(tokenizer, "Is the sky blue?"))

    def tensor(name: str, datatype: str, values: NDArray[Any]) -> grpcclient.InferInput:
        infer_input = grpcclient.InferInput(name, list(values.shape), datatype)
        infer_input.set_data_from_numpy(values)
        return infer_input

    inputs = [
        tensor("input_ids", "INT32", np.array([prompt], dtype=np.int32)),
        tensor("input_lengths", "INT32", np.array([[len(prompt)]], dtype=np.int32)),
        tensor("request_output_len", "INT32", np.array([[8]], dtype=np.int32)),
        tensor("end_id", "INT32", np.array([[tokenizer.eos_id]], dtype=np.int32)),
        tensor("streaming", "BOOL", np.array([[True]], dtype=np.bool_)),
        text_tensor("guided_decoding_guide_type", ["regex"], [1, 1]),
        text_tensor("guided_decoding_guide", ["(yes|no)"], [1, 1]),
    ]

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "tensorrt_llm", "inputs": inputs}

    ids: list[int] = []
    reasons: list[bytes] = []
    async with asyncio.timeout(60):
        async for result, error in client.stream_infer(requests()):
            assert error is None
            step = result.as_numpy("output_ids")
            reason = result.as_numpy("finish_reason")
            if step is not None:
                ids.extend(step.reshape(-1).tolist())
            if reason is not None:
                reasons.append(reason.reshape(-1)[0])
            if reasons and reasons[-1]:
                break

    assert tokenizer.decode(ids) in ("yes", "no")
    assert reasons[-1] == b"stop"

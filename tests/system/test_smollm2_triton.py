"""SmolLM2-135M-Instruct on a real Triton 2.51: the CPU repository's `ensemble` facade (BLS)
over `preprocessing` -> `tensorrt_llm` (in-flight batching) -> detokenization, streamed with
tritonclient.grpc.aio, one stream per request. Also `postprocessing` and `tensorrt_llm`
called directly, the way TensorRT-LLM clients call them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from genai_triton.tokenization import TextTokenizer
from tritonclient.utils import InferenceServerException

from services.inference.adapters.tritonserver import TritonServer
from tests.support.smollm2 import smollm2_dir
from tests.support.triton import (
    Chunk,
    generation_inputs,
    metric_value,
    parse_chunk,
    requires_triton,
    stream_generation,
    triton_server,
)

pytestmark = [pytest.mark.system, requires_triton]

MODELS = ["preprocessing", "tensorrt_llm", "postprocessing", "ensemble"]
ENGINE_LABELS = {"model": "tensorrt_llm", "version": "1"}
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return smollm2_dir()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer(model_dir)


@pytest.fixture(scope="module")
def triton(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    started = time.monotonic()
    with triton_server(tmp_path_factory.mktemp("triton-smollm2"), MODELS) as server:
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


def tensor(name: str, datatype: str, values: np.ndarray[Any, Any]) -> grpcclient.InferInput:
    infer_input = grpcclient.InferInput(name, list(values.shape), datatype)
    infer_input.set_data_from_numpy(values)
    return infer_input


def sampled_inputs(prompt: str, max_tokens: int, seed: int) -> list[grpcclient.InferInput]:
    return [
        *generation_inputs(prompt, max_tokens, temperature=0.9),
        tensor("top_p", "FP32", np.array([[0.95]], dtype=np.float32)),
        tensor("seed", "UINT64", np.array([[seed]], dtype=np.uint64)),
    ]


def text_of(chunks: Sequence[Chunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


async def engine_metric(triton: TritonServer, name: str) -> float:
    assert triton.metrics_url is not None
    return await asyncio.to_thread(metric_value, triton.metrics_url, name, ENGINE_LABELS)


# --------------------------------------------------------------------------------------------
# The facade
# --------------------------------------------------------------------------------------------


async def test_streams_the_answer_greedily(client, tokenizer: TextTokenizer) -> None:
    prompt = chatml(tokenizer, QUESTION)
    chunks = await stream_generation(client, generation_inputs(prompt, 48), model="ensemble")

    text = text_of(chunks)
    assert "Paris" in text
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert [c.finish_reason for c in chunks[:-1]] == [""] * (len(chunks) - 1)
    assert chunks[-1].finish_reason in ("stop", "length")
    assert {c.num_input_tokens for c in chunks} == {len(tokenizer.encode(prompt))}
    # One response per decoding step; the end token (finish reason "stop") is not counted.
    counts = [c.num_output_tokens for c in chunks]
    assert counts[:-1] == list(range(1, len(chunks)))
    assert counts[-1] == len(chunks) - (chunks[-1].finish_reason == "stop")

    (whole,) = await stream_generation(
        client, generation_inputs(prompt, 48, stream=False), model="ensemble"
    )
    assert whole.final
    assert whole.text == text
    assert whole.num_output_tokens == counts[-1]
    assert whole.finish_reason == chunks[-1].finish_reason


async def test_the_stream_concatenates_to_the_non_streamed_text(
    client, tokenizer: TextTokenizer
) -> None:
    prompt = chatml(tokenizer, "Write one sentence about the sea.")
    streamed = await stream_generation(client, generation_inputs(prompt, 24), model="ensemble")
    whole = await stream_generation(
        client, generation_inputs(prompt, 24, stream=False), model="ensemble"
    )

    assert len(whole) == 1
    assert whole[0].final
    assert text_of(streamed) == whole[0].text
    assert streamed[-1].num_output_tokens == whole[0].num_output_tokens == 24
    assert streamed[-1].finish_reason == whole[0].finish_reason == "length"


async def test_the_prompt_leads_a_non_streamed_text_unless_excluded(
    client, tokenizer: TextTokenizer
) -> None:
    prompt = chatml(tokenizer, QUESTION)
    inputs = generation_inputs(prompt, 3, stream=False, exclude_input_in_output=None)
    (with_prompt,) = await stream_generation(client, inputs, model="ensemble")
    (without,) = await stream_generation(
        client, generation_inputs(prompt, 3, stream=False), model="ensemble"
    )
    # The prompt's special tokens are text here: it is echoed as sent.
    assert with_prompt.text == prompt + without.text


async def test_same_seed_same_text(client, tokenizer: TextTokenizer) -> None:
    prompt = chatml(tokenizer, "Tell me a short story.")
    first, second, other = await asyncio.gather(
        stream_generation(client, sampled_inputs(prompt, 20, seed=7), model="ensemble"),
        stream_generation(client, sampled_inputs(prompt, 20, seed=7), model="ensemble"),
        stream_generation(client, sampled_inputs(prompt, 20, seed=8), model="ensemble"),
    )
    assert text_of(first) == text_of(second)
    assert text_of(first) != text_of(other)


async def test_concurrent_streams_give_their_single_stream_texts(
    client, tokenizer: TextTokenizer
) -> None:
    questions = [QUESTION, "Name a fruit.", "What is 2 + 2?", "Say hello."]
    prompts = [chatml(tokenizer, q) for q in questions]
    alone = [
        text_of(await stream_generation(client, generation_inputs(p, 12), model="ensemble"))
        for p in prompts
    ]
    together = await asyncio.gather(
        *(stream_generation(client, generation_inputs(p, 12), model="ensemble") for p in prompts)
    )
    assert [text_of(chunks) for chunks in together] == alone


async def test_stop_words_end_the_stream_and_are_not_returned(
    client, tokenizer: TextTokenizer
) -> None:
    prompt = chatml(tokenizer, QUESTION)
    free = text_of(await stream_generation(client, generation_inputs(prompt, 16), model="ensemble"))
    assert "Paris" in free
    chunks = await stream_generation(
        client, generation_inputs(prompt, 16, stop_words=["aris"]), model="ensemble"
    )
    assert chunks[-1].finish_reason == "stop_words"
    assert text_of(chunks) == free[: free.index("aris")]


async def test_max_tokens_and_end_id(client, tokenizer: TextTokenizer) -> None:
    prompt = chatml(tokenizer, "Count from one to twenty.")
    chunks = await stream_generation(client, generation_inputs(prompt, 5), model="ensemble")
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].num_output_tokens == 5
    first_token = tokenizer.encode(text_of(chunks))[0]
    stopped = await stream_generation(
        client, generation_inputs(prompt, 5, end_id=first_token), model="ensemble"
    )
    assert stopped[-1].finish_reason == "stop"
    assert stopped[-1].num_output_tokens == 0
    assert text_of(stopped) == ""


async def test_context_length_exceeded_is_a_tagged_error(client, tokenizer: TextTokenizer) -> None:
    prompt = chatml(tokenizer, QUESTION)
    with pytest.raises(InferenceServerException, match=r"^\[CONTEXT_LENGTH_EXCEEDED\] prompt has"):
        await stream_generation(client, generation_inputs(prompt, 8190), model="ensemble")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_tokens": 0}, r"^\[FIELD_VIOLATION\] max_tokens must be >= 1"),
        ({"temperature": -1.0}, r"^\[FIELD_VIOLATION\] temperature must be >= 0"),
    ],
)
async def test_bad_parameters_are_field_violations(
    client, extra: dict[str, float], message: str
) -> None:
    inputs = generation_inputs("hi", int(extra.get("max_tokens", 4)))
    if "temperature" in extra:
        inputs.append(tensor("temperature", "FP32", np.array([[extra["temperature"]]], np.float32)))
    with pytest.raises(InferenceServerException, match=message):
        await stream_generation(client, inputs, model="ensemble")


async def test_cancelling_the_stream_stops_generation_within_200_ms(
    client, triton: TritonServer, tokenizer: TextTokenizer
) -> None:
    prompt = chatml(tokenizer, "Write a very long story about a dragon.")
    before = await engine_metric(triton, "genai_llm_requests_cancelled_total")

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "ensemble", "inputs": generation_inputs(prompt, 1000)}

    stream = client.stream_infer(requests())
    received: list[Chunk] = []
    async for result, error in stream:
        assert error is None
        received.append(parse_chunk(result))
        if len(received) == 3:
            break
    stream.cancel()
    cancelled_at = time.monotonic()
    while await engine_metric(triton, "genai_llm_requests_cancelled_total") <= before:
        assert time.monotonic() - cancelled_at < 0.2, "the cancellation was not recorded in time"
        await asyncio.sleep(0.005)
    assert not received[-1].final
    # The batch slot is free again.
    deadline = time.monotonic() + 5
    while await engine_metric(triton, "genai_llm_active_sequences") > 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------------
# The steps called directly
# --------------------------------------------------------------------------------------------


async def test_postprocessing_keeps_characters_and_spaces_whole(
    client, tokenizer: TextTokenizer
) -> None:
    text = " Caf\u00e9 \u4f60\u597d \U0001f600 done"
    ids = tokenizer.encode(text)
    pieces = []
    for end in range(1, len(ids) + 1):
        inputs = [
            tensor("TOKENS_BATCH", "INT32", np.array([[ids[:end]]], dtype=np.int32)),
            tensor("SEQUENCE_LENGTH", "INT32", np.array([[end]], dtype=np.int32)),
            tensor("PREVIOUS_LENGTH", "INT32", np.array([[end - 1]], dtype=np.int32)),
            tensor("FINAL", "BOOL", np.array([[end == len(ids)]], dtype=np.bool_)),
        ]
        result = await client.infer("postprocessing", inputs)
        output = result.as_numpy("OUTPUT")
        assert output is not None
        pieces.append(output.reshape(-1)[0].decode("utf-8"))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


async def test_tensorrt_llm_streams_ids_and_notices_a_cancelled_client(
    client, triton: TritonServer, tokenizer: TextTokenizer
) -> None:
    prompt = tokenizer.encode(chatml(tokenizer, "Write a long poem."))
    inputs = [
        tensor("input_ids", "INT32", np.array([prompt], dtype=np.int32)),
        tensor("input_lengths", "INT32", np.array([[len(prompt)]], dtype=np.int32)),
        tensor("request_output_len", "INT32", np.array([[500]], dtype=np.int32)),
        tensor("streaming", "BOOL", np.array([[True]], dtype=np.bool_)),
    ]
    before = await engine_metric(triton, "genai_llm_requests_cancelled_total")

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "tensorrt_llm", "inputs": inputs}

    stream = client.stream_infer(requests())
    ids: list[int] = []
    async for result, error in stream:
        assert error is None
        step = result.as_numpy("output_ids")
        assert step is not None
        assert step.shape == (1, 1, 1)
        ids.extend(step.reshape(-1).tolist())
        if len(ids) == 4:
            break
    stream.cancel()
    cancelled_at = time.monotonic()
    while await engine_metric(triton, "genai_llm_requests_cancelled_total") <= before:
        assert time.monotonic() - cancelled_at < 1.0
        await asyncio.sleep(0.01)
    assert tokenizer.decode(ids)

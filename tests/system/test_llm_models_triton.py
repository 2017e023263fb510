"""The one-stub LLM models of the CPU repository on a real Triton 2.51, side by side:
`smollm2` (SmolLM2-135M-Instruct, chat-templated prompts) and `gemma3_270m` (Gemma 3 270M, a
base model: plain text, `<bos>` put first by the model's tokenizer), on the engine with the
precisions they ship with (`int8_dynamic` for SmolLM2, `int8` weight-only for Gemma), streamed with tritonclient.grpc.aio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import tritonclient.grpc.aio as aioclient
from genai_triton.tokenization import TextTokenizer

from services.inference.adapters.tritonserver import TritonServer
from tests.support.smollm2 import smollm2_dir
from tests.support.triton import (
    generation_inputs,
    metric_value,
    requires_triton,
    stream_generation,
    triton_server,
)

pytestmark = [pytest.mark.system, requires_triton]

MODELS = ["smollm2", "gemma3_270m"]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    started = time.monotonic()
    with triton_server(tmp_path_factory.mktemp("triton-llms"), MODELS) as server:
        print(f"Triton with SmolLM2 and Gemma 3 ready in {time.monotonic() - started:.1f} s")
        yield server


@pytest.fixture
async def client(triton: TritonServer) -> AsyncIterator[aioclient.InferenceServerClient]:
    client = aioclient.InferenceServerClient(triton.grpc_address)
    try:
        yield client
    finally:
        await client.close()


async def test_smollm2_answers_a_chat_prompt(client: aioclient.InferenceServerClient) -> None:
    tokenizer = TextTokenizer(smollm2_dir())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    chunks = await stream_generation(client, generation_inputs(prompt, 48), model="smollm2")
    assert "Paris" in "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason in ("stop", "length")
    assert chunks[-1].num_input_tokens == len(tokenizer.encode(prompt))


async def test_gemma_completes_text(client: aioclient.InferenceServerClient) -> None:
    chunks = await stream_generation(
        client, generation_inputs("The capital of France is", 12), model="gemma3_270m"
    )
    text = "".join(c.text for c in chunks)
    # Greedy, int8 weights: the same words as fp32 and transformers (" the capital of the
    # country of France. It is the largest").
    assert text.startswith(" the capital of the country of France.")
    assert chunks[-1].finish_reason in ("length", "stop")
    # "<bos>The capital of France is": the tokenizer's <bos> plus five words.
    assert chunks[-1].num_input_tokens == 6


async def test_both_models_stream_at_once(client: aioclient.InferenceServerClient) -> None:
    gemma, smol = await asyncio.gather(
        stream_generation(client, generation_inputs("Once upon a time", 16), model="gemma3_270m"),
        stream_generation(client, generation_inputs("Once upon a time", 16), model="smollm2"),
    )
    assert gemma[-1].num_output_tokens == 16
    assert smol[-1].num_output_tokens >= 1
    assert "".join(c.text for c in gemma).strip()


async def test_a_cancelled_stream_stops_the_gemma_engine(
    client: aioclient.InferenceServerClient, triton: TritonServer
) -> None:
    assert triton.metrics_url is not None
    labels = {"model": "gemma3_270m", "version": "1"}

    def cancelled() -> float:
        return metric_value(triton.metrics_url or "", "genai_llm_requests_cancelled_total", labels)

    before = await asyncio.to_thread(cancelled)

    async def requests() -> AsyncIterator[dict[str, object]]:
        yield {"model_name": "gemma3_270m", "inputs": generation_inputs("Write a story:", 1000)}

    received = 0
    stream = client.stream_infer(requests())
    async for _result, error in stream:
        assert error is None
        received += 1
        if received == 3:
            break
    stream.cancel()
    deadline = time.monotonic() + 10
    while await asyncio.to_thread(cancelled) == before:
        assert time.monotonic() < deadline, "the engine never saw the cancellation"
        await asyncio.sleep(0.05)

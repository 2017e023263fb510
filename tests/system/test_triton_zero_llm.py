"""zero_llm on a real Triton 2.51: the generation facade of triton_models/README.md, streamed
through tritonclient.grpc.aio with one stream per request."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from services.inference.adapters.tritonserver import TritonServer
from tests.support.triton import (
    Chunk,
    generation_inputs,
    metric_value,
    requires_triton,
    stream_generation,
    triton_server,
)

pytestmark = [pytest.mark.system, requires_triton]

LABELS = {"model": "zero_llm", "version": "1"}


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with triton_server(tmp_path_factory.mktemp("triton-zero-llm"), ["zero_llm"]) as server:
        yield server


@pytest.fixture
async def client(triton: TritonServer) -> AsyncIterator[aioclient.InferenceServerClient]:
    client = aioclient.InferenceServerClient(triton.grpc_address)
    try:
        yield client
    finally:
        await client.close()


def tokens(count: int, start: int = 0) -> list[str]:
    return [f"tok{i} " for i in range(start, start + count)]


async def metric(triton: TritonServer, name: str) -> float:
    assert triton.metrics_url is not None
    return await asyncio.to_thread(metric_value, triton.metrics_url, name, LABELS)


async def test_streaming_sends_one_response_per_token_and_ends_with_length(client) -> None:
    chunks = await stream_generation(client, generation_inputs("one two three", 5))

    assert [c.text for c in chunks] == tokens(5)
    assert [c.num_output_tokens for c in chunks] == [1, 2, 3, 4, 5]
    assert {c.num_input_tokens for c in chunks} == {3}
    assert [c.finish_reason for c in chunks] == ["", "", "", "", "length"]
    assert [c.final for c in chunks] == [False, False, False, False, True]


async def test_non_streaming_sends_one_final_response_with_all_the_text(client) -> None:
    chunks = await stream_generation(client, generation_inputs("a b", 4, stream=False))

    assert chunks == [
        Chunk(
            text="".join(tokens(4)),
            num_input_tokens=2,
            num_output_tokens=4,
            finish_reason="length",
            final=True,
        )
    ]


async def test_without_exclude_input_in_output_the_prompt_leads_the_text(client) -> None:
    inputs = generation_inputs("Say: ", 2, stream=False, exclude_input_in_output=None)

    (chunk,) = await stream_generation(client, inputs)

    assert chunk.text == "Say: tok0 tok1 "


async def test_every_request_ends_with_exactly_one_final_response(client) -> None:
    """`stream_generation` reads each stream until Triton ends it: nothing follows the final
    response."""
    for stream, max_tokens in ((True, 1), (True, 7), (False, 7)):
        chunks = await stream_generation(client, generation_inputs("x", max_tokens, stream=stream))

        assert [c.final for c in chunks].count(True) == 1
        assert chunks[-1].final
        assert "".join(c.text for c in chunks) == "".join(tokens(max_tokens))


@pytest.mark.parametrize("stream", [True, False])
async def test_stop_words_end_generation_before_the_stop_word(client, stream: bool) -> None:
    inputs = generation_inputs("p", 10, stream=stream, stop_words=["tok3"])

    chunks = await stream_generation(client, inputs)

    assert "".join(c.text for c in chunks) == "tok0 tok1 tok2 "
    assert chunks[-1].finish_reason == "stop_words"
    assert chunks[-1].final
    assert sum(c.final for c in chunks) == 1


async def test_a_stop_word_across_tokens_is_never_partly_streamed(client) -> None:
    inputs = generation_inputs("p", 10, stop_words=["", "1 tok2"])

    chunks = await stream_generation(client, inputs)

    assert [c.text for c in chunks] == ["tok0 ", "tok", ""]
    assert chunks[-1].finish_reason == "stop_words"


async def test_end_id_finishes_with_stop_before_the_end_token(client) -> None:
    chunks = await stream_generation(client, generation_inputs("p", 10, end_id=3))

    assert "".join(c.text for c in chunks) == "tok0 tok1 tok2 "
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].num_output_tokens == 3


async def test_a_stop_word_never_reached_ends_with_length_and_all_the_text(client) -> None:
    chunks = await stream_generation(client, generation_inputs("p", 3, stop_words=["tok9"]))

    assert "".join(c.text for c in chunks) == "tok0 tok1 tok2 "
    assert chunks[-1].finish_reason == "length"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (generation_inputs("p", 0), "[FIELD_VIOLATION] max_tokens must be >= 1"),
        (generation_inputs("p", -3, stream=False), "[FIELD_VIOLATION] max_tokens must be >= 1"),
        (generation_inputs("p", 2, temperature=-1.0), "[FIELD_VIOLATION] temperature must be"),
        (
            generation_inputs("p q", 1_000_000),
            "[CONTEXT_LENGTH_EXCEEDED] prompt has 2 tokens and max_tokens is 1000000",
        ),
    ],
)
async def test_bad_requests_get_a_tagged_in_band_error(client, inputs, message: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        await stream_generation(client, inputs)

    assert caught.value.message().startswith(message)


async def test_a_bad_pace_parameter_is_a_field_violation(client) -> None:
    with pytest.raises(InferenceServerException) as caught:
        await stream_generation(
            client, generation_inputs("p", 2), parameters={"token_interval_us": -5}
        )

    assert caught.value.message().startswith("[FIELD_VIOLATION] token_interval_us")


async def test_a_missing_required_input_is_refused(client) -> None:
    inputs = [i for i in generation_inputs("p", 2) if i.name() != "max_tokens"]

    with pytest.raises(InferenceServerException) as caught:
        await stream_generation(client, inputs)

    assert "max_tokens" in caught.value.message()


async def test_the_pace_parameter_spaces_the_tokens(client) -> None:
    started = time.monotonic()
    chunks = await stream_generation(
        client, generation_inputs("p", 5), parameters={"token_interval_us": 40_000}
    )

    assert len(chunks) == 5
    assert time.monotonic() - started >= 0.2


async def test_cancelling_a_stream_frees_the_model(triton: TritonServer, client) -> None:
    cancelled_before = await metric(triton, "genai_llm_requests_cancelled_total")
    assert await metric(triton, "genai_llm_requests_in_flight") == 0

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {
            "model_name": "zero_llm",
            "inputs": generation_inputs("p", 100_000),
            "parameters": {"token_interval_us": 10_000},
        }

    stream = client.stream_infer(requests())
    received = 0
    async for _, error in stream:
        assert error is None
        received += 1
        if received == 3:
            break
    assert await metric(triton, "genai_llm_requests_in_flight") == 1

    stream.cancel()
    cancelled_at = time.monotonic()
    while await metric(triton, "genai_llm_requests_in_flight") != 0:
        assert time.monotonic() - cancelled_at < 0.2, "the request is still in flight"
        await asyncio.sleep(0.005)

    assert await metric(triton, "genai_llm_requests_cancelled_total") == cancelled_before + 1
    # The model serves the next request as usual.
    chunks = await stream_generation(client, generation_inputs("p", 2))
    assert chunks[-1].finish_reason == "length"


async def test_32_concurrent_streams_all_complete(triton: TritonServer, client) -> None:
    async def one(index: int) -> list[Chunk]:
        return await stream_generation(
            client,
            generation_inputs(f"request {index}", 16),
            parameters={"token_interval_us": 5_000},
        )

    tokens_before = await metric(triton, "genai_llm_output_tokens_total")
    started = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(32)))
    elapsed = time.monotonic() - started

    for chunks in results:
        assert [c.text for c in chunks] == tokens(16)
        assert [c.final for c in chunks].count(True) == 1
        assert chunks[-1].finish_reason == "length"
    # Interleaved, not one after the other (32 x 16 x 5 ms would be 2.6 s).
    assert elapsed < 2.0
    assert await metric(triton, "genai_llm_requests_in_flight") == 0
    assert await metric(triton, "genai_llm_output_tokens_total") == tokens_before + 32 * 16

"""The Triton adapter's coalescing (services/inference/adapters/triton.py): a chunk carries
every response that arrived while the consumer was busy, never waits for one more, keeps the
text, counts and finish reason exact, and hands errors on after what came before them."""

import asyncio
import struct
from collections.abc import AsyncIterator

import grpc
import pytest
from tritonclient.grpc import service_pb2

from services.common.errors import Internal, InvalidArgument
from services.inference.adapters.triton import ResponseReader, TritonBackend, coalesce
from services.inference.core.model import (
    BackendChunk,
    BackendRequest,
    BackendSpec,
    FinishReason,
    Sampling,
)

SPEC = BackendSpec(id="t-0", endpoint="127.0.0.1:1", backend_model="zero_llm", max_in_flight=8)


def _bytes(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<I", len(raw)) + raw


def response(
    index: int, *, finish: str = "", final: bool = False, error: str = ""
) -> service_pb2.ModelStreamInferResponse:
    """zero_llm's response for token `index` (`tok{index} `)."""
    if error:
        return service_pb2.ModelStreamInferResponse(error_message=error)
    infer = service_pb2.ModelInferResponse(model_name="zero_llm")
    outputs = [
        ("text_output", "BYTES", _bytes(f"tok{index} ")),
        ("num_input_tokens", "INT32", struct.pack("<i", 3)),
        ("num_output_tokens", "INT32", struct.pack("<i", index + 1)),
    ]
    if finish:
        outputs.append(("finish_reason", "BYTES", _bytes(finish)))
    for name, datatype, raw in outputs:
        infer.outputs.append(
            service_pb2.ModelInferResponse.InferOutputTensor(
                name=name, datatype=datatype, shape=[1, 1]
            )
        )
        infer.raw_output_contents.append(raw)
    if final:
        infer.parameters["triton_final_response"].bool_param = True
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


class FakeCall:
    """A streaming call whose responses the test releases one by one (or all at once)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        self.cancelled = False

    def send(self, *responses: service_pb2.ModelStreamInferResponse | None) -> None:
        for item in responses:
            self.queue.put_nowait(item)

    def __aiter__(self) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        while (item := await self.queue.get()) is not None:
            yield item

    def cancel(self) -> bool:
        self.cancelled = True
        return True


def _length(tokens: int) -> list[service_pb2.ModelStreamInferResponse]:
    return [
        response(i, finish="length" if i == tokens - 1 else "", final=i == tokens - 1)
        for i in range(tokens)
    ]


def test_a_batch_becomes_one_chunk_with_the_joined_text_and_the_last_counts() -> None:
    chunk, error = coalesce(SPEC, _length(3))

    assert error is None
    assert chunk == BackendChunk("tok0 tok1 tok2 ", 3, 3, FinishReason.LENGTH)


def test_an_error_ends_the_batch_after_what_came_before_it() -> None:
    chunk, error = coalesce(
        SPEC, [response(0), response(1), response(2, error="[FIELD_VIOLATION] top_k")]
    )

    assert chunk == BackendChunk("tok0 tok1 ", 3, 2, None)
    assert isinstance(error, InvalidArgument)
    alone, first = coalesce(SPEC, [response(0, error="boom")])
    assert alone is None
    assert isinstance(first, Internal)


def test_a_final_response_without_a_finish_reason_is_the_backends_fault() -> None:
    chunk, error = coalesce(SPEC, [response(0), response(1, final=True)])

    assert chunk == BackendChunk("tok0 ", 3, 1, None)
    assert isinstance(error, Internal)


async def test_the_reader_hands_over_everything_waiting_and_waits_only_when_nothing_is() -> None:
    call = FakeCall()
    reader = ResponseReader(call)  # type: ignore[arg-type]
    call.send(response(0))
    assert [r.infer_response.raw_output_contents[0] for r in await reader.batch()] == [
        _bytes("tok0 ")
    ]
    call.send(response(1), response(2), response(3))
    await asyncio.sleep(0)  # the pump reads all three while the consumer is "busy"
    await asyncio.sleep(0)
    assert len(await reader.batch()) == 3
    waiting = asyncio.ensure_future(reader.batch())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # nothing arrived: it waits
    call.send(response(4))
    assert len(await waiting) == 1
    call.send(None)  # the call ends
    assert await reader.batch() == []
    reader.close(cancel=False)
    assert not call.cancelled


async def test_the_reader_raises_the_calls_error_after_the_responses_before_it() -> None:
    class Failing(FakeCall):
        async def _iterate(self) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
            yield response(0)
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "gone",
                "test",
            )

    reader = ResponseReader(Failing())  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert len(await reader.batch()) == 1
    with pytest.raises(grpc.aio.AioRpcError):
        await reader.batch()


class _Streamer:
    def __init__(self, call: FakeCall) -> None:
        self.call = call

    def __call__(self, *args: object, **kwargs: object) -> FakeCall:
        return self.call


async def _generate(call: FakeCall, consume_pause: float) -> list[BackendChunk]:
    backend = TritonBackend(channel_for=lambda endpoint: None)  # type: ignore[arg-type,return-value]
    backend._streamer = lambda spec: _Streamer(call)  # type: ignore[method-assign,assignment,return-value]
    request = BackendRequest(
        prompt="a b c", max_tokens=8, sampling=Sampling(), request_id="r", stream=True, timeout=5
    )
    chunks = []
    async for chunk in backend.generate(SPEC, request):
        chunks.append(chunk)
        await asyncio.sleep(consume_pause)
    return chunks


@pytest.mark.parametrize("pause", [0.0, 0.02])
async def test_generate_keeps_text_counts_and_finish_whatever_the_consumers_pace(
    pause: float,
) -> None:
    call = FakeCall()

    async def triton() -> None:
        for item in _length(8):
            call.send(item)
            await asyncio.sleep(0.005)
        call.send(None)

    sender = asyncio.ensure_future(triton())
    chunks = await _generate(call, pause)
    await sender

    assert "".join(c.text for c in chunks) == "".join(f"tok{i} " for i in range(8))
    assert chunks[-1].output_tokens == 8
    assert chunks[-1].finish_reason is FinishReason.LENGTH
    assert all(c.finish_reason is None for c in chunks[:-1])
    if pause:  # a slow consumer gets fewer, larger chunks
        assert len(chunks) < 8
    assert not call.cancelled  # a finished stream is read to its end, not cancelled


async def test_closing_generate_early_cancels_the_triton_request() -> None:
    call = FakeCall()
    call.send(*_length(8)[:3])
    backend = TritonBackend(channel_for=lambda endpoint: None)  # type: ignore[arg-type,return-value]
    backend._streamer = lambda spec: _Streamer(call)  # type: ignore[method-assign,assignment,return-value]
    request = BackendRequest(
        prompt="a", max_tokens=8, sampling=Sampling(), request_id="r", stream=True, timeout=5
    )
    stream = backend.generate(SPEC, request)
    first = await anext(stream)
    await stream.aclose()

    assert first.text.startswith("tok0 ")
    assert call.cancelled


async def test_a_call_whose_final_response_arrived_is_read_to_its_end_not_cancelled() -> None:
    """Triton 2.51 can crash when a cancellation meets a stream it is closing
    (triton-inference-server/server#7368): once the final response is in, closing the reader
    lets it read the call to its end instead."""
    call = FakeCall()
    reader = ResponseReader(call)  # type: ignore[arg-type]
    call.send(*_length(2))
    await asyncio.sleep(0)
    await asyncio.sleep(0)

    reader.close(cancel=True)  # the consumer went away with the final response unread
    call.send(None)
    await asyncio.sleep(0.01)

    assert not call.cancelled
    assert await reader.batch() == []  # ended, what was unread discarded


async def test_a_call_without_its_final_response_is_cancelled_on_close() -> None:
    call = FakeCall()
    reader = ResponseReader(call)  # type: ignore[arg-type]
    call.send(response(0))
    await asyncio.sleep(0)

    reader.close(cancel=True)

    assert call.cancelled

"""A stand-in for Triton's KServe v2 gRPC, for tests that need a Triton backend that answers
without a real server: every model is ready, and `ModelStreamInfer` records each request's
`text_input` (the prompt exactly as InferenceService sent it: raw text, or a conversation
rendered with a chat template) and streams the generation facade's responses for a fixed
reply: one response per token, the last with `finish_reason` "stop" and
`triton_final_response`. Input tokens are counted as words, as `zero_llm` does."""

import struct
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


class _Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, owner: "FakeTriton") -> None:
        self._owner = owner

    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: Any
    ) -> service_pb2.ModelReadyResponse:
        return service_pb2.ModelReadyResponse(ready=True)

    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: Any
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: Any
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: Any
    ) -> service_pb2.ModelStatisticsResponse:
        return service_pb2.ModelStatisticsResponse()

    async def ModelStreamInfer(
        self, requests: AsyncIterator[service_pb2.ModelInferRequest], context: Any
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        async for request in requests:
            inputs = {
                tensor.name: raw
                for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=False)
            }
            prompt = _first_string(inputs["text_input"])
            self._owner.prompts.append(prompt)
            self._owner.models.append(request.model_name)
            input_tokens = len(prompt.split())
            reply = self._owner.reply
            for index, token in enumerate(reply):
                last = index == len(reply) - 1
                yield service_pb2.ModelStreamInferResponse(
                    infer_response=_response(
                        request, token, input_tokens, index + 1, "stop" if last else "", last
                    )
                )


class FakeTriton:
    """`async with FakeTriton(reply=[" Paris", "."]) as triton:` serves on `triton.address`;
    `prompts` lists the `text_input` of every generation request, `models` their model names."""

    def __init__(self, reply: Sequence[str] = (" Paris", ".")) -> None:
        self.reply = list(reply)
        self.prompts: list[str] = []
        self.models: list[str] = []
        self._server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(self), self._server)
        self._port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        """`host:port` of the server."""
        return f"127.0.0.1:{self._port}"

    async def __aenter__(self) -> Self:
        await self._server.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._server.stop(grace=None)


def _first_string(raw: bytes) -> str:
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length].decode()


def _bytes_tensor(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<I", len(data)) + data


def _response(
    request: service_pb2.ModelInferRequest,
    text: str,
    input_tokens: int,
    output_tokens: int,
    finish_reason: str,
    final: bool,
) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version="1", id=request.id
    )
    outputs = (
        ("text_output", "BYTES", _bytes_tensor(text)),
        ("num_input_tokens", "INT32", struct.pack("<i", input_tokens)),
        ("num_output_tokens", "INT32", struct.pack("<i", output_tokens)),
        ("finish_reason", "BYTES", _bytes_tensor(finish_reason)),
    )
    for name, datatype, raw in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=[1, 1])
        response.raw_output_contents.append(raw)
    response.parameters["triton_final_response"].bool_param = final
    return response

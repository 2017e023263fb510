"""The Triton backend: KServe v2 gRPC (`ModelStreamInfer`) against the generation facade.

One `ModelStreamInfer` call per caller request, so cancelling it cancels exactly that request
in Triton. Requests are built as protobufs with raw tensor contents (no numpy on the hot path);
channels are shared per endpoint. The facade is described in `triton_models/README.md`.
"""

import re
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common import reasons
from services.common.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    Unavailable,
)
from services.inference.core.model import (
    BackendChunk,
    BackendRequest,
    BackendSpec,
    Embeddings,
    FinishReason,
    ModelState,
)

UNAVAILABLE_RETRY_AFTER = 1.0
"""Seconds a caller should wait before retrying a backend that is down."""
EMBED_BATCH = 32
"""Texts per embedding request (the facade's max_batch_size is larger)."""
EMBEDDING_DIMENSIONS_OUTPUT = "embedding"

_TAG = re.compile(r"^\[([A-Z_]+)\]\s*(.*)$", re.DOTALL)
_FINISH_REASONS = {reason.value: reason for reason in FinishReason}

InferInput = service_pb2.ModelInferRequest.InferInputTensor


class TritonBackend:
    """Generates and embeds through Triton servers; `channel_for(endpoint)` gives the
    (shared) grpc.aio channel of each endpoint."""

    def __init__(self, *, channel_for: Callable[[str], grpc.aio.Channel]) -> None:
        self._channel_for = channel_for

    def _stub(self, spec: BackendSpec) -> service_pb2_grpc.GRPCInferenceServiceStub:
        return service_pb2_grpc.GRPCInferenceServiceStub(self._channel_for(spec.endpoint))

    async def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        """Streams the facade's responses as chunks; cancels the Triton request when the
        consumer stops early or is cancelled."""
        call = self._stub(spec).ModelStreamInfer(
            _single(generation_request(spec, request)), timeout=request.timeout
        )
        finished = False
        try:
            async for response in call:
                if response.error_message:
                    raise backend_error(spec, response.error_message)
                chunk = parse_generation_response(response.infer_response)
                if chunk.finish_reason is None and _is_final(response.infer_response):
                    # A final response without a finish reason: the facade broke its contract.
                    raise Internal(
                        f"backend {spec.id} ended a stream without a finish reason",
                        reason=reasons.BACKEND_ERROR,
                        metadata={"backend_id": spec.id},
                    )
                if chunk.finish_reason is not None:
                    # Read the stream to its end before handing over the last chunk: cancelling
                    # (or dropping) a call right after Triton's final response races the end of
                    # the stream in Triton 2.51 and can leave the model unable to unload.
                    async for _ in call:
                        pass
                    finished = True
                    yield chunk
                    return
                yield chunk
            raise Unavailable(
                f"backend {spec.id} closed the stream before the final response",
                reason=reasons.BACKEND_ERROR,
                retry_after=UNAVAILABLE_RETRY_AFTER,
                metadata={"backend_id": spec.id},
            )
        except grpc.aio.AioRpcError as error:
            raise rpc_error(spec, error) from None
        finally:
            if not finished:
                call.cancel()

    async def embed(self, spec: BackendSpec, texts: Sequence[str]) -> Embeddings:
        """Embeds `texts` in batches of `EMBED_BATCH`."""
        vectors: list[tuple[float, ...]] = []
        input_tokens = 0
        stub = self._stub(spec)
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start : start + EMBED_BATCH]
            infer = service_pb2.ModelInferRequest(model_name=spec.backend_model)
            _add_bytes(infer, "text_input", [t.encode() for t in batch], [len(batch), 1])
            try:
                response = await stub.ModelInfer(infer)
            except grpc.aio.AioRpcError as error:
                raise rpc_error(spec, error) from None
            outputs = _outputs(response)
            shape, raw = outputs[EMBEDDING_DIMENSIONS_OUTPUT]
            dimensions = shape[-1]
            flat = struct.unpack(f"<{len(raw) // 4}f", raw)
            vectors.extend(
                tuple(flat[i * dimensions : (i + 1) * dimensions]) for i in range(len(batch))
            )
            _, tokens = outputs["num_input_tokens"]
            input_tokens += sum(struct.unpack(f"<{len(tokens) // 4}i", tokens))
        return Embeddings(vectors=tuple(vectors), input_tokens=input_tokens)

    async def model_state(self, spec: BackendSpec) -> ModelState:
        """READY when Triton says the facade model is ready; UNAVAILABLE when it is not or
        cannot be asked."""
        try:
            ready = await self._stub(spec).ModelReady(
                service_pb2.ModelReadyRequest(name=spec.backend_model), timeout=2.0
            )
        except grpc.aio.AioRpcError:
            return ModelState.UNAVAILABLE
        return ModelState.READY if ready.ready else ModelState.UNAVAILABLE


async def _single(request: service_pb2.ModelInferRequest) -> AsyncIterator[object]:
    yield request


def generation_request(spec: BackendSpec, request: BackendRequest) -> service_pb2.ModelInferRequest:
    """The facade request for `request`: shape [1, 1] tensors (batching dimension on)."""
    infer = service_pb2.ModelInferRequest(model_name=spec.backend_model, id=request.request_id)
    _add_bytes(infer, "text_input", [request.prompt.encode()], [1, 1])
    _add_scalar(infer, "max_tokens", "INT32", "<i", request.max_tokens)
    _add_scalar(infer, "stream", "BOOL", "<?", request.stream)
    _add_scalar(infer, "exclude_input_in_output", "BOOL", "<?", True)
    s = request.sampling
    if s.temperature is not None:
        _add_scalar(infer, "temperature", "FP32", "<f", s.temperature)
    if s.top_p is not None:
        _add_scalar(infer, "top_p", "FP32", "<f", s.top_p)
    if s.top_k is not None:
        _add_scalar(infer, "top_k", "INT32", "<i", s.top_k)
    if s.seed is not None:
        _add_scalar(infer, "seed", "UINT64", "<Q", s.seed)
    if s.repetition_penalty is not None:
        _add_scalar(infer, "repetition_penalty", "FP32", "<f", s.repetition_penalty)
    if s.presence_penalty is not None:
        _add_scalar(infer, "presence_penalty", "FP32", "<f", s.presence_penalty)
    if s.frequency_penalty is not None:
        _add_scalar(infer, "frequency_penalty", "FP32", "<f", s.frequency_penalty)
    if s.stop:
        _add_bytes(infer, "stop_words", [w.encode() for w in s.stop], [1, len(s.stop)])
    return infer


def _add_scalar(
    infer: service_pb2.ModelInferRequest, name: str, datatype: str, fmt: str, value: object
) -> None:
    infer.inputs.append(InferInput(name=name, datatype=datatype, shape=[1, 1]))
    infer.raw_input_contents.append(struct.pack(fmt, value))


def _add_bytes(
    infer: service_pb2.ModelInferRequest, name: str, values: Sequence[bytes], shape: list[int]
) -> None:
    infer.inputs.append(InferInput(name=name, datatype="BYTES", shape=shape))
    infer.raw_input_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in values))


def _outputs(response: service_pb2.ModelInferResponse) -> dict[str, tuple[list[int], bytes]]:
    return {
        output.name: (list(output.shape), raw)
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def _first_bytes(raw: bytes) -> bytes:
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length]


def _is_final(response: service_pb2.ModelInferResponse) -> bool:
    parameter = response.parameters.get("triton_final_response")
    return parameter is not None and parameter.bool_param


def parse_generation_response(response: service_pb2.ModelInferResponse) -> BackendChunk:
    """One facade response as a chunk (see the output table of triton_models/README.md)."""
    outputs = _outputs(response)
    text = _first_bytes(outputs["text_output"][1]).decode() if "text_output" in outputs else ""
    finish = (
        _first_bytes(outputs["finish_reason"][1]).decode() if "finish_reason" in outputs else ""
    )
    return BackendChunk(
        text=text,
        input_tokens=_first_int(outputs, "num_input_tokens"),
        output_tokens=_first_int(outputs, "num_output_tokens"),
        finish_reason=_FINISH_REASONS.get(finish) if finish else None,
    )


def _first_int(outputs: dict[str, tuple[list[int], bytes]], name: str) -> int:
    if name not in outputs:
        return 0
    (value,) = struct.unpack_from("<i", outputs[name][1])
    return int(value)


def backend_error(spec: BackendSpec, message: str) -> DomainError:
    """A Triton in-band error as a domain error: a `[REASON]` tag from the facade's models
    becomes that reason; anything else is the backend's fault (BACKEND_ERROR)."""
    metadata = {"backend_id": spec.id}
    match = _TAG.match(message)
    if match is not None:
        reason, text = match.groups()
        if reason in (reasons.FIELD_VIOLATION, reasons.CONTEXT_LENGTH_EXCEEDED):
            field = "text" if reason == reasons.CONTEXT_LENGTH_EXCEEDED else "parameters"
            return InvalidArgument(
                text, violations=[FieldViolation(field, text)], reason=reason, metadata=metadata
            )
        if reason == reasons.FAILED_PRECONDITION:
            return FailedPrecondition(text, metadata=metadata)
        return Internal(text, reason=reasons.BACKEND_ERROR, metadata=metadata)
    if "unknown model" in message or "is not found" in message or "not ready" in message:
        return Unavailable(
            f"backend {spec.id} does not serve {spec.backend_model!r} now: {message}",
            reason=reasons.BACKEND_UNAVAILABLE,
            retry_after=UNAVAILABLE_RETRY_AFTER,
            metadata=metadata,
        )
    return Internal(
        f"backend {spec.id} failed: {message}", reason=reasons.BACKEND_ERROR, metadata=metadata
    )


def rpc_error(spec: BackendSpec, error: grpc.aio.AioRpcError) -> DomainError:
    """A failed call to Triton as a domain error."""
    metadata = {"backend_id": spec.id}
    code = error.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(
            f"backend {spec.id} did not finish within the deadline", metadata=metadata
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(
            f"backend {spec.id} at {spec.endpoint} is unavailable",
            reason=reasons.BACKEND_UNAVAILABLE,
            retry_after=UNAVAILABLE_RETRY_AFTER,
            metadata=metadata,
        )
    return backend_error(spec, error.details() or code.name)

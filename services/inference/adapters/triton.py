"""The Triton backend: KServe v2 gRPC (`ModelStreamInfer`) against the generation facade.

One `ModelStreamInfer` call per caller request, so cancelling it cancels exactly that request
in Triton. The call is read in a task of its own (`ResponseReader`): each chunk handed on
carries every response that arrived since the last one (`coalesce`), so that a caller that
falls behind under load gets fewer, larger chunks rather than a queue of one-token ones. Requests are built as protobufs with raw tensor contents (no numpy on the hot path);
channels are shared per endpoint. The facade is described in `triton_models/README.md`.

This is InferenceService's hot path, so it takes the short way through grpc.aio: channels to
Triton carry no client interceptors (each costs extra tasks and loop turns per message); the
adapter opens its own client span per request and hands Triton its W3C `traceparent`.
"""

import asyncio
import json
import re
import struct
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Final

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
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
from services.common.server import MAX_MESSAGE_BYTES
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
GUIDE_TYPE_INPUT: Final = "guided_decoding_guide_type"
"""The facade's guided-decoding type: `json`, `json_schema`, `regex` or `ebnf_grammar`."""
GUIDE_INPUT: Final = "guided_decoding_guide"
"""The facade's guide: the schema as JSON, the expression or the grammar."""

TRITON_CHANNEL_OPTIONS: Final = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Triton's gRPC server, by default, permits no pings without calls and at most one ping
    # per 5 minutes without data (it answers more with GOAWAY "too_many_pings"): ping only
    # during calls, at its pace. A dead Triton shows as the request's deadline or UNAVAILABLE.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # Reconnect to a restarted Triton within about 2 s, not after gRPC's default backoff of
    # up to 2 minutes: the router's health checks and failover depend on it.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)
STREAM_INFER_METHOD: Final = "/inference.GRPCInferenceService/ModelStreamInfer"

_TAG = re.compile(r"^\[([A-Z_]+)\]\s*(.*)$", re.DOTALL)
_FINISH_REASONS = {reason.value: reason for reason in FinishReason}
_TRACE_CONTEXT = TraceContextTextMapPropagator()
_INT32 = struct.Struct("<i")
_UINT32 = struct.Struct("<I")

InferInput = service_pb2.ModelInferRequest.InferInputTensor
StreamInfer = grpc.aio.UnaryStreamMultiCallable[
    service_pb2.ModelInferRequest, service_pb2.ModelStreamInferResponse
]


ROUND_ROBIN: Final = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""Service config of a target that names several Tritons (`dns:///triton-headless:8001` for
every pod behind a headless Service, or an `ipv4:`/`ipv6:` list): each request goes to the
next one, instead of every request to the first (gRPC's default, pick_first)."""


def triton_channel(target: str) -> grpc.aio.Channel:
    """A channel to the Triton server at `target` (`host:port`, or `dns:///name:port` and
    `ipv4:a:p,b:p` for several, balanced round robin), with Triton-friendly keepalive and no
    interceptors (see the module docstring)."""
    options: tuple[tuple[str, int | str], ...] = TRITON_CHANNEL_OPTIONS
    if target.startswith(("dns:", "ipv4:", "ipv6:")):
        options = (*options, ("grpc.service_config", ROUND_ROBIN))
    return grpc.aio.insecure_channel(target, options=options)


class TritonBackend:
    """Generates and embeds through Triton servers; `channel_for(endpoint)` gives the
    (shared) grpc.aio channel of each endpoint; `tracer` makes a client span per call."""

    def __init__(
        self,
        *,
        channel_for: Callable[[str], grpc.aio.Channel],
        tracer: Tracer | None = None,
    ) -> None:
        self._channel_for = channel_for
        self._tracer = tracer or trace.get_tracer(__name__)
        # Per endpoint: the channel they were made on (the pool may replace it) and the callable.
        self._stubs: dict[str, tuple[grpc.aio.Channel, service_pb2_grpc.GRPCInferenceServiceStub]]
        self._stubs = {}
        self._stream_infer: dict[str, tuple[grpc.aio.Channel, StreamInfer]] = {}

    def _stub(self, spec: BackendSpec) -> service_pb2_grpc.GRPCInferenceServiceStub:
        channel = self._channel_for(spec.endpoint)
        cached = self._stubs.get(spec.endpoint)
        if cached is not None and cached[0] is channel:
            return cached[1]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._stubs[spec.endpoint] = (channel, stub)
        return stub

    def _streamer(self, spec: BackendSpec) -> StreamInfer:
        # ModelStreamInfer is bidirectional; a request of ours is one message and a half-close,
        # which a unary-stream call sends in one batch with the call's start. On the wire it
        # is the same stream, and cancelling the call cancels the request in Triton.
        channel = self._channel_for(spec.endpoint)
        cached = self._stream_infer.get(spec.endpoint)
        if cached is not None and cached[0] is channel:
            return cached[1]
        streamer = channel.unary_stream(
            STREAM_INFER_METHOD,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        self._stream_infer[spec.endpoint] = (channel, streamer)
        return streamer

    async def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        """Streams the facade's responses as chunks; cancels the Triton request when the
        consumer stops early or is cancelled."""
        span = self._tracer.start_span(
            "inference.GRPCInferenceService/ModelStreamInfer",
            kind=SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "inference.GRPCInferenceService",
                "rpc.method": "ModelStreamInfer",
                "server.address": spec.endpoint,
                "genai.backend.id": spec.id,
                "genai.backend.model": spec.backend_model,
            },
        )
        carrier: dict[str, str] = {}
        _TRACE_CONTEXT.inject(carrier, context=trace.set_span_in_context(span))
        call = self._streamer(spec)(
            generation_request(spec, request),
            timeout=request.timeout,
            metadata=tuple(carrier.items()),
        )
        responses = ResponseReader(call)
        finished = False
        try:
            while batch := await responses.batch():
                chunk, error = coalesce(spec, batch)
                if chunk is not None and chunk.finish_reason is not None:
                    responses.final_taken = True
                    # Read the stream to its end before handing over the last chunk:
                    # cancelling (or dropping) a call right after Triton's final response
                    # races the end of the stream in Triton 2.51 and can leave the model
                    # unable to unload.
                    await responses.drain()
                    finished = True
                    yield chunk
                    return
                if error is not None:
                    responses.final_taken = True  # an error response ends its stream
                if chunk is not None:
                    yield chunk
                if error is not None:
                    raise error
            raise Unavailable(
                f"backend {spec.id} closed the stream before the final response",
                reason=reasons.BACKEND_ERROR,
                retry_after=UNAVAILABLE_RETRY_AFTER,
                metadata={"backend_id": spec.id},
            )
        except grpc.aio.AioRpcError as error:
            span.set_status(Status(StatusCode.ERROR, error.code().name))
            raise rpc_error(spec, error) from None
        except DomainError as error:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            responses.close(cancel=not finished)
            span.end()

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
    constraint = request.constraint
    if constraint is not None and constraint.kind is not None:
        _add_bytes(infer, GUIDE_TYPE_INPUT, [constraint.kind.value.encode()], [1, 1])
        guide = constraint.guide
        if guide:  # the built-in JSON grammar takes no guide
            _add_bytes(infer, GUIDE_INPUT, [guide.encode()], [1, 1])
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
    (length,) = _UINT32.unpack_from(raw)
    return raw[4 : 4 + length]


def parse_generation_response(response: service_pb2.ModelInferResponse) -> BackendChunk:
    """One facade response as a chunk (see the output table of triton_models/README.md).

    One pass over the outputs, reading only the first element of each: this runs for every
    response of every stream. `final` is Triton's own flag (`triton_final_response`), which
    a decoupled model sets on its last response; the facade sets a finish reason on the same
    one."""
    text = finish = ""
    input_tokens = output_tokens = 0
    for output, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        match output.name:
            case "text_output":
                text = _first_bytes(raw).decode()
            case "num_output_tokens":
                (output_tokens,) = _INT32.unpack_from(raw)
            case "num_input_tokens":
                (input_tokens,) = _INT32.unpack_from(raw)
            case "finish_reason":
                finish = _first_bytes(raw).decode()
    return BackendChunk(
        text=text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        finish_reason=_FINISH_REASONS.get(finish) if finish else None,
    )


def _is_final(response: service_pb2.ModelInferResponse) -> bool:
    parameter = response.parameters.get("triton_final_response")
    return parameter is not None and parameter.bool_param


def coalesce(
    spec: BackendSpec, batch: Sequence[service_pb2.ModelStreamInferResponse]
) -> tuple[BackendChunk | None, DomainError | None]:
    """The responses of `batch` (in arrival order) as one chunk: their texts joined, the last
    counts (the facade counts cumulatively) and the finish reason, if one came. A response that
    is an error ends the batch: the chunk then holds what came before it (None if nothing did)
    and the error is returned beside it, for the caller to raise after handing the chunk on."""
    texts: list[str] = []
    last: BackendChunk | None = None
    for response in batch:
        if response.error_message:
            return _joined(last, texts), backend_error(spec, response.error_message)
        infer = response.infer_response
        chunk = parse_generation_response(infer)
        if chunk.finish_reason is None and _is_final(infer):
            # A final response without a finish reason: the facade broke its contract.
            broken = Internal(
                f"backend {spec.id} ended a stream without a finish reason",
                reason=reasons.BACKEND_ERROR,
                metadata={"backend_id": spec.id},
            )
            return _joined(last, texts), broken
        if chunk.text:
            texts.append(chunk.text)
        last = chunk
        if chunk.finish_reason is not None:
            break  # nothing follows a final response
    return _joined(last, texts), None


def _joined(last: BackendChunk | None, texts: list[str]) -> BackendChunk | None:
    if last is None:
        return None
    if len(texts) == 1 and texts[0] is last.text:
        return last
    return BackendChunk("".join(texts), last.input_tokens, last.output_tokens, last.finish_reason)


class ResponseReader:
    """Reads a streaming call in a task of its own, so that its consumer takes, at each turn,
    every response that arrived meanwhile (`batch`), and never waits for one more.

    This is how a delta carries every token already waiting: while the layers above relay one
    chunk (to InferenceService's caller, through the gateway, onto the wire), the tokens that
    Triton sends in the meantime pile up here and go on as the next chunk. A relay that keeps
    up sends one chunk per token; one that falls behind sends fewer, larger chunks instead of
    queueing messages, so its CPU per token falls as load rises."""

    __slots__ = (
        "_buffer",
        "_call",
        "_discard",
        "_done",
        "_error",
        "_task",
        "_waiter",
        "final_taken",
    )

    def __init__(self, call: grpc.aio.UnaryStreamCall[Any, Any]) -> None:
        self._call = call
        self._buffer: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._discard = False
        self._error: BaseException | None = None
        self.final_taken = False
        """Set by the consumer once it took the final response (see `close`)."""
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for response in self._call:
                if not self._discard:
                    self._buffer.append(response)
                    self._wake()
        except asyncio.CancelledError:
            pass  # closed by the consumer
        except BaseException as error:  # handed to the consumer, after what came before it
            self._error = error
        finally:
            self._done = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def batch(self) -> list[Any]:
        """Every response received and not yet taken, waiting only when there is none; empty
        when the call has ended. Raises the call's error once the responses before it are
        taken."""
        while not self._buffer and not self._done:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._buffer:
            batch, self._buffer = self._buffer, []
            return batch
        if self._error is not None:
            raise self._error
        return []

    async def drain(self) -> None:
        """Waits for the end of the call, dropping what else comes (nothing, after a final
        response)."""
        while await self.batch():
            pass

    def close(self, *, cancel: bool) -> None:
        """Stops reading; with `cancel`, cancels the call too (the Triton request). A call whose
        final response arrived already (taken or not, see `final_taken`) is never cancelled,
        whatever `cancel` says, but read to its end in the background: Triton 2.51's gRPC
        server can crash when a cancellation meets a stream it is closing
        (triton-inference-server/server#7368). Cancelling the reading task would cancel the
        call too (grpc.aio cancels a call whose read is cancelled), so it is left running."""
        if self._done:
            return
        if not cancel or self.final_taken or any(_ends_stream(r) for r in self._buffer):
            self._buffer = []
            self._discard = True
            _DRAINING.add(self._task)  # asyncio keeps only weak references to tasks
            self._task.add_done_callback(_DRAINING.discard)
            return
        self._call.cancel()
        self._task.cancel()


_DRAINING: set["asyncio.Task[None]"] = set()
"""Readers left to read their call to its end after their consumer went away."""


def _ends_stream(response: service_pb2.ModelStreamInferResponse) -> bool:
    """Whether `response` is the last of its stream (an error, or Triton's final flag)."""
    return bool(response.error_message) or _is_final(response.infer_response)


def backend_error(spec: BackendSpec, message: str) -> DomainError:
    """A Triton in-band error as a domain error: a `[REASON]` tag from the facade's models
    becomes that reason; anything else is the backend's fault (BACKEND_ERROR)."""
    metadata = {"backend_id": spec.id}
    match = _TAG.match(message)
    if match is not None:
        reason, text = match.groups()
        if reason in (reasons.FIELD_VIOLATION, reasons.CONTEXT_LENGTH_EXCEEDED):
            field = "text" if reason == reasons.CONTEXT_LENGTH_EXCEEDED else "parameters"
            if text.startswith((GUIDE_TYPE_INPUT, GUIDE_INPUT)):
                field = "constraint"  # the engine could not compile the schema or grammar
            return InvalidArgument(
                text, violations=[FieldViolation(field, text)], reason=reason, metadata=metadata
            )
        if reason == reasons.FAILED_PRECONDITION:
            return FailedPrecondition(text, metadata=metadata)
        return Internal(text, reason=reasons.BACKEND_ERROR, metadata=metadata)
    if "unexpected inference input" in message and GUIDE_TYPE_INPUT in message:
        # InferenceService's settings say guided_decoding, the model on Triton has no such
        # input: a configuration mismatch, not a fault of the request or a passing outage.
        return FailedPrecondition(
            f"backend {spec.id}: {spec.backend_model!r} on Triton takes no guided-decoding "
            "inputs, although the model's settings say guided_decoding: true",
            metadata={**metadata, "field": "constraint"},
        )
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

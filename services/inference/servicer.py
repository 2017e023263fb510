"""genai.inference.v1.InferenceService: converts between protos and inference domain types."""

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from genai.common.v1 import chat_pb2, generation_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc
from google.protobuf import json_format

from services.common.errors import FieldViolation, InvalidArgument
from services.common.grpc_types import ServicerContext
from services.common.wire import duration, next_offset_token, offset_page
from services.inference.core.engine import (
    MAX_GUIDE_BYTES,
    BackendStatus,
    Delta,
    Finished,
    InferenceEngine,
    Started,
)
from services.inference.core.model import (
    ChatTurn,
    ConstraintKind,
    FinishReason,
    GenerationRequest,
    InputKind,
    ModelState,
    OutputConstraint,
    Sampling,
    Task,
)
from services.inference.core.usage import UsageSource

SERVICE_NAME = "genai.inference.v1.InferenceService"

_ROLES = {
    chat_pb2.CHAT_ROLE_SYSTEM: "system",
    chat_pb2.CHAT_ROLE_USER: "user",
    chat_pb2.CHAT_ROLE_ASSISTANT: "assistant",
}
_FINISH_REASONS = {
    FinishReason.STOP: generation_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: generation_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CONTENT_FILTER: generation_pb2.FINISH_REASON_CONTENT_FILTER,
    # A cancelled request never gets a final message; listed for completeness.
    FinishReason.CANCELLED: generation_pb2.FINISH_REASON_UNSPECIFIED,
}
_STATES = {
    ModelState.READY: inference_pb2.MODEL_STATE_READY,
    ModelState.LOADING: inference_pb2.MODEL_STATE_LOADING,
    ModelState.UNAVAILABLE: inference_pb2.MODEL_STATE_UNAVAILABLE,
}
_TASKS = {
    Task.GENERATION: inference_pb2.MODEL_TASK_GENERATION,
    Task.EMBEDDING: inference_pb2.MODEL_TASK_EMBEDDING,
}

USAGE_SOURCES = {
    UsageSource.PROVIDER: generation_pb2.USAGE_SOURCE_PROVIDER,
    UsageSource.TOKENIZER: generation_pb2.USAGE_SOURCE_TOKENIZER,
    UsageSource.ESTIMATE: generation_pb2.USAGE_SOURCE_ESTIMATE,
}
_INPUT_KINDS = {
    InputKind.TEXT: inference_pb2.INPUT_KIND_TEXT,
    InputKind.CHAT: inference_pb2.INPUT_KIND_CHAT,
}

GenerationMessage = (
    inference_service_pb2.GenerateRequest | inference_service_pb2.GenerateStreamRequest
)
_SCHEMA_WIRE_FACTOR = 8
"""A `json_schema` Struct this many times `MAX_GUIDE_BYTES` on the wire is over the limit as
compact JSON too (a Struct's encoding is at most about 5.5 times its JSON, for a list of
zeros): it is refused before it is converted."""
_MAX_EXACT_INT = 2**53


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Serves InferenceService from an `InferenceEngine`."""

    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    async def GenerateStream(
        self,
        request: inference_service_pb2.GenerateStreamRequest,
        context: ServicerContext,
    ) -> AsyncIterator[inference_service_pb2.GenerateStreamResponse]:
        """Streams one start, the deltas, and one final."""
        Response = inference_service_pb2.GenerateStreamResponse
        events = self._engine.stream(_generation(request), time_left=context.time_remaining())
        # aclosing: a cancelled caller releases the backend slot and the Triton request now,
        # not whenever the garbage collector finalizes the generator.
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Delta):
                    yield Response(
                        delta=inference_pb2.TokenDelta(
                            text=event.text, token_count=event.token_count
                        )
                    )
                elif isinstance(event, Started):
                    yield Response(
                        start=inference_pb2.GenerationStart(
                            model=event.model,
                            backend_id=event.backend_id,
                            input_tokens=event.input_tokens,
                            input_tokens_source=USAGE_SOURCES[event.input_source],
                        )
                    )
                else:
                    yield Response(final=_final(event))

    async def Generate(
        self, request: inference_service_pb2.GenerateRequest, context: ServicerContext
    ) -> inference_service_pb2.GenerateResponse:
        """Runs the same stream and returns its text at once."""
        parts: list[str] = []
        final = inference_pb2.GenerationFinal()
        events = self._engine.stream(_generation(request), time_left=context.time_remaining())
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Delta):
                    parts.append(event.text)
                elif isinstance(event, Finished):
                    final = _final(event)
        return inference_service_pb2.GenerateResponse(text="".join(parts), final=final)

    async def Embed(
        self, request: inference_service_pb2.EmbedRequest, context: ServicerContext
    ) -> inference_service_pb2.EmbedResponse:
        """Embeds the inputs, in order."""
        model, embeddings = await self._engine.embed(request.model, list(request.inputs))
        return inference_service_pb2.EmbedResponse(
            embeddings=[inference_pb2.Embedding(values=v) for v in embeddings.vectors],
            dimensions=len(embeddings.vectors[0]) if embeddings.vectors else 0,
            usage=generation_pb2.TokenUsage(
                input_tokens=embeddings.input_tokens,
                usage_source=generation_pb2.USAGE_SOURCE_PROVIDER,
            ),
            model=model.name,
        )

    async def ListModels(
        self, request: inference_service_pb2.ListModelsRequest, context: ServicerContext
    ) -> inference_service_pb2.ListModelsResponse:
        """One page of every model on every backend."""
        offset, size = offset_page(request.page_size, request.page_token)
        statuses = await self._engine.status()
        page = statuses[offset : offset + size]
        return inference_service_pb2.ListModelsResponse(
            models=[_served(s) for s in page],
            next_page_token=next_offset_token(offset, len(page), len(statuses)),
        )

    async def GetModelStatus(
        self, request: inference_service_pb2.GetModelStatusRequest, context: ServicerContext
    ) -> inference_service_pb2.GetModelStatusResponse:
        """The model on each of its backends (or the one asked for)."""
        if not request.model:
            raise InvalidArgument(violations=[FieldViolation("model", "is required")])
        statuses = await self._engine.status(request.model, request.backend_id)
        return inference_service_pb2.GetModelStatusResponse(models=[_served(s) for s in statuses])


def _generation(request: GenerationMessage) -> GenerationRequest:
    text: str | None = None
    messages: tuple[ChatTurn, ...] | None = None
    match request.WhichOneof("input"):
        case "text":
            text = request.text
        case "chat":
            messages = tuple(
                ChatTurn(_ROLES.get(m.role, ""), m.content) for m in request.chat.messages
            )
    p = request.parameters
    return GenerationRequest(
        model=request.model,
        text=text,
        messages=messages,
        sampling=Sampling(
            max_tokens=p.max_tokens if p.HasField("max_tokens") else None,
            temperature=p.temperature if p.HasField("temperature") else None,
            top_p=p.top_p if p.HasField("top_p") else None,
            top_k=p.top_k if p.HasField("top_k") else None,
            seed=p.seed if p.HasField("seed") else None,
            repetition_penalty=p.repetition_penalty if p.HasField("repetition_penalty") else None,
            presence_penalty=p.presence_penalty if p.HasField("presence_penalty") else None,
            frequency_penalty=p.frequency_penalty if p.HasField("frequency_penalty") else None,
            stop=tuple(p.stop),
        ),
        backend_id=request.backend_id,
        request_id=request.request_id,
        constraint=_constraint(request),
    )


def _constraint(request: GenerationMessage) -> OutputConstraint | None:
    if not request.HasField("constraint"):
        return None
    constraint = request.constraint
    match constraint.WhichOneof("kind"):
        case "json_object":
            # json_object false names no language: the engine refuses it as "no kind".
            return OutputConstraint(ConstraintKind.JSON if constraint.json_object else None)
        case "json_schema":
            if constraint.json_schema.ByteSize() > _SCHEMA_WIRE_FACTOR * MAX_GUIDE_BYTES:
                raise InvalidArgument(
                    violations=[
                        FieldViolation(
                            "constraint.json_schema",
                            f"at most {MAX_GUIDE_BYTES:,} bytes as compact JSON; this one "
                            f"is {constraint.json_schema.ByteSize():,} bytes on the wire",
                        )
                    ]
                )
            schema = _integral(json_format.MessageToDict(constraint.json_schema))
            return OutputConstraint(ConstraintKind.JSON_SCHEMA, schema=schema)
        case "regex":
            return OutputConstraint(ConstraintKind.REGEX, text=constraint.regex)
        case "ebnf_grammar":
            return OutputConstraint(ConstraintKind.EBNF_GRAMMAR, text=constraint.ebnf_grammar)
    return OutputConstraint(None)


def _integral(value: Any) -> Any:
    """A Struct's JSON with whole numbers as ints: a Struct holds every number as a double, and
    engines and providers refuse `"minLength": 3.0` where the schema means 3."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT_INT:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _final(event: Finished) -> inference_pb2.GenerationFinal:
    return inference_pb2.GenerationFinal(
        finish_reason=_FINISH_REASONS[event.finish_reason],
        usage=generation_pb2.TokenUsage(
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            usage_source=USAGE_SOURCES[event.usage_source],
        ),
        timings=generation_pb2.GenerationTimings(
            first_token_duration=duration(event.first_token_seconds),
            total_duration=duration(event.total_seconds),
        ),
        model=event.model,
        backend_id=event.backend_id,
        constrained=event.constrained,
    )


def _served(status: BackendStatus) -> inference_pb2.ServedModel:
    return inference_pb2.ServedModel(
        name=status.model.name,
        backend_id=status.backend.id,
        backend_model=status.backend.backend_model,
        state=_STATES[status.state],
        task=_TASKS[status.model.task],
        max_context_tokens=status.model.max_context_tokens,
        max_output_tokens=status.model.max_output_tokens,
        streaming=status.model.streaming,
        in_flight=status.in_flight,
        max_in_flight=status.backend.max_in_flight,
        guided_decoding=status.model.guided_decoding,
        input_kinds=[_INPUT_KINDS[k] for k in status.model.input_kinds(status.backend)],
    )

from genai.common.v1 import chat_pb2 as _chat_pb2
from genai.common.v1 import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_READY: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_UNAVAILABLE: _ClassVar[ModelState]

class ModelTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_TASK_UNSPECIFIED: _ClassVar[ModelTask]
    MODEL_TASK_GENERATION: _ClassVar[ModelTask]
    MODEL_TASK_EMBEDDING: _ClassVar[ModelTask]

class InputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_KIND_UNSPECIFIED: _ClassVar[InputKind]
    INPUT_KIND_TEXT: _ClassVar[InputKind]
    INPUT_KIND_CHAT: _ClassVar[InputKind]
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_READY: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_UNAVAILABLE: ModelState
MODEL_TASK_UNSPECIFIED: ModelTask
MODEL_TASK_GENERATION: ModelTask
MODEL_TASK_EMBEDDING: ModelTask
INPUT_KIND_UNSPECIFIED: InputKind
INPUT_KIND_TEXT: InputKind
INPUT_KIND_CHAT: InputKind

class ChatInput(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ...) -> None: ...

class GenerationStart(_message.Message):
    __slots__ = ("model", "backend_id", "input_tokens", "input_tokens_source")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend_id: str
    input_tokens: int
    input_tokens_source: _generation_pb2.UsageSource
    def __init__(self, model: _Optional[str] = ..., backend_id: _Optional[str] = ..., input_tokens: _Optional[int] = ..., input_tokens_source: _Optional[_Union[_generation_pb2.UsageSource, str]] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("text", "token_count")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_count: int
    def __init__(self, text: _Optional[str] = ..., token_count: _Optional[int] = ...) -> None: ...

class GenerationFinal(_message.Message):
    __slots__ = ("finish_reason", "usage", "timings", "model", "backend_id", "constrained")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINED_FIELD_NUMBER: _ClassVar[int]
    finish_reason: _generation_pb2.FinishReason
    usage: _generation_pb2.TokenUsage
    timings: _generation_pb2.GenerationTimings
    model: str
    backend_id: str
    constrained: bool
    def __init__(self, finish_reason: _Optional[_Union[_generation_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_generation_pb2.TokenUsage, _Mapping]] = ..., timings: _Optional[_Union[_generation_pb2.GenerationTimings, _Mapping]] = ..., model: _Optional[str] = ..., backend_id: _Optional[str] = ..., constrained: _Optional[bool] = ...) -> None: ...

class ServedModel(_message.Message):
    __slots__ = ("name", "backend_id", "backend_model", "state", "task", "max_context_tokens", "max_output_tokens", "streaming", "in_flight", "max_in_flight", "guided_decoding", "input_kinds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STREAMING_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    GUIDED_DECODING_FIELD_NUMBER: _ClassVar[int]
    INPUT_KINDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend_id: str
    backend_model: str
    state: ModelState
    task: ModelTask
    max_context_tokens: int
    max_output_tokens: int
    streaming: bool
    in_flight: int
    max_in_flight: int
    guided_decoding: bool
    input_kinds: _containers.RepeatedScalarFieldContainer[InputKind]
    def __init__(self, name: _Optional[str] = ..., backend_id: _Optional[str] = ..., backend_model: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., task: _Optional[_Union[ModelTask, str]] = ..., max_context_tokens: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., streaming: _Optional[bool] = ..., in_flight: _Optional[int] = ..., max_in_flight: _Optional[int] = ..., guided_decoding: _Optional[bool] = ..., input_kinds: _Optional[_Iterable[_Union[InputKind, str]]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

from genai.common.v1 import generation_pb2 as _generation_pb2
from genai.inference.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("model", "backend_id", "text", "chat", "parameters", "request_id", "constraint")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend_id: str
    text: str
    chat: _inference_pb2.ChatInput
    parameters: _generation_pb2.SamplingParameters
    request_id: str
    constraint: _generation_pb2.OutputConstraint
    def __init__(self, model: _Optional[str] = ..., backend_id: _Optional[str] = ..., text: _Optional[str] = ..., chat: _Optional[_Union[_inference_pb2.ChatInput, _Mapping]] = ..., parameters: _Optional[_Union[_generation_pb2.SamplingParameters, _Mapping]] = ..., request_id: _Optional[str] = ..., constraint: _Optional[_Union[_generation_pb2.OutputConstraint, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "final")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    text: str
    final: _inference_pb2.GenerationFinal
    def __init__(self, text: _Optional[str] = ..., final: _Optional[_Union[_inference_pb2.GenerationFinal, _Mapping]] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("model", "backend_id", "text", "chat", "parameters", "request_id", "constraint")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend_id: str
    text: str
    chat: _inference_pb2.ChatInput
    parameters: _generation_pb2.SamplingParameters
    request_id: str
    constraint: _generation_pb2.OutputConstraint
    def __init__(self, model: _Optional[str] = ..., backend_id: _Optional[str] = ..., text: _Optional[str] = ..., chat: _Optional[_Union[_inference_pb2.ChatInput, _Mapping]] = ..., parameters: _Optional[_Union[_generation_pb2.SamplingParameters, _Mapping]] = ..., request_id: _Optional[str] = ..., constraint: _Optional[_Union[_generation_pb2.OutputConstraint, _Mapping]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("start", "delta", "final")
    START_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    start: _inference_pb2.GenerationStart
    delta: _inference_pb2.TokenDelta
    final: _inference_pb2.GenerationFinal
    def __init__(self, start: _Optional[_Union[_inference_pb2.GenerationStart, _Mapping]] = ..., delta: _Optional[_Union[_inference_pb2.TokenDelta, _Mapping]] = ..., final: _Optional[_Union[_inference_pb2.GenerationFinal, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "inputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    inputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., inputs: _Optional[_Iterable[str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "dimensions", "usage", "model")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[_inference_pb2.Embedding]
    dimensions: int
    usage: _generation_pb2.TokenUsage
    model: str
    def __init__(self, embeddings: _Optional[_Iterable[_Union[_inference_pb2.Embedding, _Mapping]]] = ..., dimensions: _Optional[int] = ..., usage: _Optional[_Union[_generation_pb2.TokenUsage, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_inference_pb2.ServedModel]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[_inference_pb2.ServedModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelStatusRequest(_message.Message):
    __slots__ = ("model", "backend_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend_id: str
    def __init__(self, model: _Optional[str] = ..., backend_id: _Optional[str] = ...) -> None: ...

class GetModelStatusResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_inference_pb2.ServedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[_inference_pb2.ServedModel, _Mapping]]] = ...) -> None: ...

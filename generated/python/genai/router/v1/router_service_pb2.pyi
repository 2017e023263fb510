import datetime

from genai.common.v1 import generation_pb2 as _generation_pb2
from genai.common.v1 import routing_pb2 as _routing_pb2
from genai.router.v1 import router_pb2 as _router_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttemptResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTEMPT_RESULT_UNSPECIFIED: _ClassVar[AttemptResult]
    ATTEMPT_RESULT_SUCCESS: _ClassVar[AttemptResult]
    ATTEMPT_RESULT_FAILED_BEFORE_FIRST_TOKEN: _ClassVar[AttemptResult]
    ATTEMPT_RESULT_FAILED_AFTER_FIRST_TOKEN: _ClassVar[AttemptResult]
    ATTEMPT_RESULT_OVERLOADED: _ClassVar[AttemptResult]
    ATTEMPT_RESULT_CANCELLED: _ClassVar[AttemptResult]
ATTEMPT_RESULT_UNSPECIFIED: AttemptResult
ATTEMPT_RESULT_SUCCESS: AttemptResult
ATTEMPT_RESULT_FAILED_BEFORE_FIRST_TOKEN: AttemptResult
ATTEMPT_RESULT_FAILED_AFTER_FIRST_TOKEN: AttemptResult
ATTEMPT_RESULT_OVERLOADED: AttemptResult
ATTEMPT_RESULT_CANCELLED: AttemptResult

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
    models: _containers.RepeatedCompositeFieldContainer[_router_pb2.Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[_router_pb2.Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _router_pb2.Model
    def __init__(self, model: _Optional[_Union[_router_pb2.Model, _Mapping]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("preferences", "input_tokens", "max_output_tokens", "prompt", "unit_id", "exclude_backends")
    PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_BACKENDS_FIELD_NUMBER: _ClassVar[int]
    preferences: _routing_pb2.RoutingPreferences
    input_tokens: int
    max_output_tokens: int
    prompt: str
    unit_id: str
    exclude_backends: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, preferences: _Optional[_Union[_routing_pb2.RoutingPreferences, _Mapping]] = ..., input_tokens: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., prompt: _Optional[str] = ..., unit_id: _Optional[str] = ..., exclude_backends: _Optional[_Iterable[str]] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: _router_pb2.RouteDecision
    def __init__(self, decision: _Optional[_Union[_router_pb2.RouteDecision, _Mapping]] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "model", "backend_id", "result", "first_token_duration", "total_duration", "usage", "error")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    model: str
    backend_id: str
    result: AttemptResult
    first_token_duration: _duration_pb2.Duration
    total_duration: _duration_pb2.Duration
    usage: _generation_pb2.TokenUsage
    error: str
    def __init__(self, decision_id: _Optional[str] = ..., model: _Optional[str] = ..., backend_id: _Optional[str] = ..., result: _Optional[_Union[AttemptResult, str]] = ..., first_token_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., usage: _Optional[_Union[_generation_pb2.TokenUsage, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBackendHealthRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetBackendHealthResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[_router_pb2.BackendStatus]
    def __init__(self, backends: _Optional[_Iterable[_Union[_router_pb2.BackendStatus, _Mapping]]] = ...) -> None: ...

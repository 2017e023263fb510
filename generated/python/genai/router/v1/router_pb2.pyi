import datetime

from genai.common.v1 import money_pb2 as _money_pb2
from genai.common.v1 import routing_pb2 as _routing_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackendKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_KIND_UNSPECIFIED: _ClassVar[BackendKind]
    BACKEND_KIND_TRITON: _ClassVar[BackendKind]
    BACKEND_KIND_OPENAI_COMPATIBLE: _ClassVar[BackendKind]

class HealthState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_STATE_UNSPECIFIED: _ClassVar[HealthState]
    HEALTH_STATE_SERVING: _ClassVar[HealthState]
    HEALTH_STATE_NOT_SERVING: _ClassVar[HealthState]

class CircuitState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CIRCUIT_STATE_UNSPECIFIED: _ClassVar[CircuitState]
    CIRCUIT_STATE_CLOSED: _ClassVar[CircuitState]
    CIRCUIT_STATE_OPEN: _ClassVar[CircuitState]
    CIRCUIT_STATE_HALF_OPEN: _ClassVar[CircuitState]
BACKEND_KIND_UNSPECIFIED: BackendKind
BACKEND_KIND_TRITON: BackendKind
BACKEND_KIND_OPENAI_COMPATIBLE: BackendKind
HEALTH_STATE_UNSPECIFIED: HealthState
HEALTH_STATE_SERVING: HealthState
HEALTH_STATE_NOT_SERVING: HealthState
CIRCUIT_STATE_UNSPECIFIED: CircuitState
CIRCUIT_STATE_CLOSED: CircuitState
CIRCUIT_STATE_OPEN: CircuitState
CIRCUIT_STATE_HALF_OPEN: CircuitState

class Model(_message.Message):
    __slots__ = ("name", "display_name", "capabilities", "languages", "max_context_tokens", "max_output_tokens", "input_price_per_million_tokens", "output_price_per_million_tokens", "quality_tier", "latency_targets", "weight", "backends")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUT_PRICE_PER_MILLION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PRICE_PER_MILLION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_TIER_FIELD_NUMBER: _ClassVar[int]
    LATENCY_TARGETS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    capabilities: _containers.RepeatedScalarFieldContainer[_routing_pb2.Capability]
    languages: _containers.RepeatedScalarFieldContainer[str]
    max_context_tokens: int
    max_output_tokens: int
    input_price_per_million_tokens: _money_pb2.Money
    output_price_per_million_tokens: _money_pb2.Money
    quality_tier: int
    latency_targets: LatencyTargets
    weight: float
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., capabilities: _Optional[_Iterable[_Union[_routing_pb2.Capability, str]]] = ..., languages: _Optional[_Iterable[str]] = ..., max_context_tokens: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., input_price_per_million_tokens: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., output_price_per_million_tokens: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., quality_tier: _Optional[int] = ..., latency_targets: _Optional[_Union[LatencyTargets, _Mapping]] = ..., weight: _Optional[float] = ..., backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ...) -> None: ...

class LatencyTargets(_message.Message):
    __slots__ = ("first_token_duration", "per_output_token_duration")
    FIRST_TOKEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    PER_OUTPUT_TOKEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    first_token_duration: _duration_pb2.Duration
    per_output_token_duration: _duration_pb2.Duration
    def __init__(self, first_token_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., per_output_token_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("id", "kind", "endpoint", "backend_model")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_MODEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: BackendKind
    endpoint: str
    backend_model: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[BackendKind, str]] = ..., endpoint: _Optional[str] = ..., backend_model: _Optional[str] = ...) -> None: ...

class BackendStatus(_message.Message):
    __slots__ = ("backend", "model", "health", "circuit", "in_flight", "latency", "request_count", "failure_count", "last_check_time", "last_error")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CIRCUIT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    model: str
    health: HealthState
    circuit: CircuitState
    in_flight: int
    latency: LatencyStats
    request_count: int
    failure_count: int
    last_check_time: _timestamp_pb2.Timestamp
    last_error: str
    def __init__(self, backend: _Optional[_Union[Backend, _Mapping]] = ..., model: _Optional[str] = ..., health: _Optional[_Union[HealthState, str]] = ..., circuit: _Optional[_Union[CircuitState, str]] = ..., in_flight: _Optional[int] = ..., latency: _Optional[_Union[LatencyStats, _Mapping]] = ..., request_count: _Optional[int] = ..., failure_count: _Optional[int] = ..., last_check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("first_token_ewma_duration", "first_token_p95_duration", "per_output_token_ewma_duration", "per_output_token_p95_duration", "sample_count", "queue_duration")
    FIRST_TOKEN_EWMA_DURATION_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_P95_DURATION_FIELD_NUMBER: _ClassVar[int]
    PER_OUTPUT_TOKEN_EWMA_DURATION_FIELD_NUMBER: _ClassVar[int]
    PER_OUTPUT_TOKEN_P95_DURATION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DURATION_FIELD_NUMBER: _ClassVar[int]
    first_token_ewma_duration: _duration_pb2.Duration
    first_token_p95_duration: _duration_pb2.Duration
    per_output_token_ewma_duration: _duration_pb2.Duration
    per_output_token_p95_duration: _duration_pb2.Duration
    sample_count: int
    queue_duration: _duration_pb2.Duration
    def __init__(self, first_token_ewma_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., first_token_p95_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., per_output_token_ewma_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., per_output_token_p95_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., sample_count: _Optional[int] = ..., queue_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RouteCandidate(_message.Message):
    __slots__ = ("model", "backend", "estimated_cost", "predicted_first_token_duration", "predicted_total_duration", "reason", "quality_report_id", "quality_score")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIRST_TOKEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUALITY_REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: Backend
    estimated_cost: _money_pb2.Money
    predicted_first_token_duration: _duration_pb2.Duration
    predicted_total_duration: _duration_pb2.Duration
    reason: str
    quality_report_id: str
    quality_score: float
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[_Union[Backend, _Mapping]] = ..., estimated_cost: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., predicted_first_token_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., predicted_total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ..., quality_report_id: _Optional[str] = ..., quality_score: _Optional[float] = ...) -> None: ...

class RejectedModel(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RouteDecision(_message.Message):
    __slots__ = ("decision_id", "policy", "candidates", "rejected", "fallback")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    policy: _routing_pb2.RoutingPolicy
    candidates: _containers.RepeatedCompositeFieldContainer[RouteCandidate]
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedModel]
    fallback: str
    def __init__(self, decision_id: _Optional[str] = ..., policy: _Optional[_Union[_routing_pb2.RoutingPolicy, str]] = ..., candidates: _Optional[_Iterable[_Union[RouteCandidate, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[RejectedModel, _Mapping]]] = ..., fallback: _Optional[str] = ...) -> None: ...

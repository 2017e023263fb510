import datetime

from genai.common.v1 import money_pb2 as _money_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Capability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPABILITY_UNSPECIFIED: _ClassVar[Capability]
    CAPABILITY_CHAT: _ClassVar[Capability]
    CAPABILITY_JSON_OUTPUT: _ClassVar[Capability]
    CAPABILITY_STREAMING: _ClassVar[Capability]
    CAPABILITY_EMBEDDINGS: _ClassVar[Capability]
    CAPABILITY_COMPLETION: _ClassVar[Capability]

class RoutingPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTING_POLICY_UNSPECIFIED: _ClassVar[RoutingPolicy]
    ROUTING_POLICY_COST: _ClassVar[RoutingPolicy]
    ROUTING_POLICY_LATENCY: _ClassVar[RoutingPolicy]
    ROUTING_POLICY_QUALITY: _ClassVar[RoutingPolicy]
    ROUTING_POLICY_WEIGHTED: _ClassVar[RoutingPolicy]
    ROUTING_POLICY_QUALITY_FLOOR: _ClassVar[RoutingPolicy]
CAPABILITY_UNSPECIFIED: Capability
CAPABILITY_CHAT: Capability
CAPABILITY_JSON_OUTPUT: Capability
CAPABILITY_STREAMING: Capability
CAPABILITY_EMBEDDINGS: Capability
CAPABILITY_COMPLETION: Capability
ROUTING_POLICY_UNSPECIFIED: RoutingPolicy
ROUTING_POLICY_COST: RoutingPolicy
ROUTING_POLICY_LATENCY: RoutingPolicy
ROUTING_POLICY_QUALITY: RoutingPolicy
ROUTING_POLICY_WEIGHTED: RoutingPolicy
ROUTING_POLICY_QUALITY_FLOOR: RoutingPolicy

class RoutingPreferences(_message.Message):
    __slots__ = ("model", "policy", "required_capabilities", "min_quality_tier", "max_cost", "max_first_token_duration", "max_total_duration", "min_quality_score", "quality_dataset", "quality_scorer")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MIN_QUALITY_TIER_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    MAX_FIRST_TOKEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    MIN_QUALITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_DATASET_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SCORER_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy: RoutingPolicy
    required_capabilities: _containers.RepeatedScalarFieldContainer[Capability]
    min_quality_tier: int
    max_cost: _money_pb2.Money
    max_first_token_duration: _duration_pb2.Duration
    max_total_duration: _duration_pb2.Duration
    min_quality_score: float
    quality_dataset: str
    quality_scorer: str
    def __init__(self, model: _Optional[str] = ..., policy: _Optional[_Union[RoutingPolicy, str]] = ..., required_capabilities: _Optional[_Iterable[_Union[Capability, str]]] = ..., min_quality_tier: _Optional[int] = ..., max_cost: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., max_first_token_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., min_quality_score: _Optional[float] = ..., quality_dataset: _Optional[str] = ..., quality_scorer: _Optional[str] = ...) -> None: ...

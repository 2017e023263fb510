import datetime

from genai.common.v1 import generation_pb2 as _generation_pb2
from genai.common.v1 import money_pb2 as _money_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_VIEWER: _ClassVar[Role]
    ROLE_MEMBER: _ClassVar[Role]
    ROLE_TENANT_ADMIN: _ClassVar[Role]
    ROLE_PLATFORM_ADMIN: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_VIEWER: Role
ROLE_MEMBER: Role
ROLE_TENANT_ADMIN: Role
ROLE_PLATFORM_ADMIN: Role

class CompletionStart(_message.Message):
    __slots__ = ("request_id", "trace_id", "prompt", "prompt_version", "experiment", "variant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    trace_id: str
    prompt: str
    prompt_version: int
    experiment: str
    variant: str
    def __init__(self, request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_version: _Optional[int] = ..., experiment: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("model", "backend_id", "status", "error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend_id: str
    status: str
    error: str
    def __init__(self, model: _Optional[str] = ..., backend_id: _Optional[str] = ..., status: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ProcessingSummary(_message.Message):
    __slots__ = ("redaction_count", "stop_sequence_matched", "truncated", "schema_valid", "repaired", "constrained_decoding")
    REDACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCE_MATCHED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VALID_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINED_DECODING_FIELD_NUMBER: _ClassVar[int]
    redaction_count: int
    stop_sequence_matched: bool
    truncated: bool
    schema_valid: bool
    repaired: bool
    constrained_decoding: bool
    def __init__(self, redaction_count: _Optional[int] = ..., stop_sequence_matched: _Optional[bool] = ..., truncated: _Optional[bool] = ..., schema_valid: _Optional[bool] = ..., repaired: _Optional[bool] = ..., constrained_decoding: _Optional[bool] = ...) -> None: ...

class CompletionMetadata(_message.Message):
    __slots__ = ("request_id", "trace_id", "prompt", "prompt_version", "label", "experiment", "variant", "model", "backend_id", "finish_reason", "usage", "cost", "first_token_duration", "total_duration", "attempts", "processing", "output_json")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_DURATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    trace_id: str
    prompt: str
    prompt_version: int
    label: str
    experiment: str
    variant: str
    model: str
    backend_id: str
    finish_reason: _generation_pb2.FinishReason
    usage: _generation_pb2.TokenUsage
    cost: _money_pb2.Money
    first_token_duration: _duration_pb2.Duration
    total_duration: _duration_pb2.Duration
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    processing: ProcessingSummary
    output_json: _struct_pb2.Value
    def __init__(self, request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_version: _Optional[int] = ..., label: _Optional[str] = ..., experiment: _Optional[str] = ..., variant: _Optional[str] = ..., model: _Optional[str] = ..., backend_id: _Optional[str] = ..., finish_reason: _Optional[_Union[_generation_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_generation_pb2.TokenUsage, _Mapping]] = ..., cost: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., first_token_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., processing: _Optional[_Union[ProcessingSummary, _Mapping]] = ..., output_json: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class ServiceDependency(_message.Message):
    __slots__ = ("service", "target", "status", "check_duration")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHECK_DURATION_FIELD_NUMBER: _ClassVar[int]
    service: str
    target: str
    status: str
    check_duration: _duration_pb2.Duration
    def __init__(self, service: _Optional[str] = ..., target: _Optional[str] = ..., status: _Optional[str] = ..., check_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("id", "display_name", "quota", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    display_name: str
    quota: TenantQuota
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., display_name: _Optional[str] = ..., quota: _Optional[_Union[TenantQuota, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TenantQuota(_message.Message):
    __slots__ = ("requests_per_minute", "tokens_per_minute", "cost_per_day")
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    COST_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    requests_per_minute: int
    tokens_per_minute: int
    cost_per_day: _money_pb2.Money
    def __init__(self, requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., cost_per_day: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "tenant_id", "display_name", "admin", "create_time", "revoke_time", "role", "expire_time", "rotate_time", "previous_secret_expire_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    ROTATE_TIME_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    display_name: str
    admin: bool
    create_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    role: Role
    expire_time: _timestamp_pb2.Timestamp
    rotate_time: _timestamp_pb2.Timestamp
    previous_secret_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., display_name: _Optional[str] = ..., admin: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., role: _Optional[_Union[Role, str]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rotate_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_secret_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "time", "tenant_id", "actor", "actor_tenant_id", "actor_role", "action", "target", "request_id", "outcome", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTOR_TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_ROLE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    tenant_id: str
    actor: str
    actor_tenant_id: str
    actor_role: Role
    action: str
    target: str
    request_id: str
    outcome: str
    detail: str
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant_id: _Optional[str] = ..., actor: _Optional[str] = ..., actor_tenant_id: _Optional[str] = ..., actor_role: _Optional[_Union[Role, str]] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., request_id: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RequestLogEntry(_message.Message):
    __slots__ = ("request_id", "trace_id", "tenant_id", "method", "status", "input", "output", "metadata", "user_id", "session_id", "tags", "create_time")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    trace_id: str
    tenant_id: str
    method: str
    status: str
    input: _struct_pb2.Value
    output: str
    metadata: CompletionMetadata
    user_id: str
    session_id: str
    tags: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., method: _Optional[str] = ..., status: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., output: _Optional[str] = ..., metadata: _Optional[_Union[CompletionMetadata, _Mapping]] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

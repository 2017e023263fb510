import datetime

from genai.common.v1 import chat_pb2 as _chat_pb2
from genai.common.v1 import generation_pb2 as _generation_pb2
from genai.common.v1 import routing_pb2 as _routing_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VariableType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VARIABLE_TYPE_UNSPECIFIED: _ClassVar[VariableType]
    VARIABLE_TYPE_STRING: _ClassVar[VariableType]
    VARIABLE_TYPE_INTEGER: _ClassVar[VariableType]
    VARIABLE_TYPE_NUMBER: _ClassVar[VariableType]
    VARIABLE_TYPE_BOOLEAN: _ClassVar[VariableType]
    VARIABLE_TYPE_ENUM: _ClassVar[VariableType]
    VARIABLE_TYPE_STRING_LIST: _ClassVar[VariableType]

class PiiKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PII_KIND_UNSPECIFIED: _ClassVar[PiiKind]
    PII_KIND_EMAIL: _ClassVar[PiiKind]
    PII_KIND_PHONE: _ClassVar[PiiKind]
    PII_KIND_CARD_NUMBER: _ClassVar[PiiKind]

class LabelEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_EVENT_KIND_UNSPECIFIED: _ClassVar[LabelEventKind]
    LABEL_EVENT_KIND_CREATED: _ClassVar[LabelEventKind]
    LABEL_EVENT_KIND_MOVED: _ClassVar[LabelEventKind]
    LABEL_EVENT_KIND_ROLLED_BACK: _ClassVar[LabelEventKind]
    LABEL_EVENT_KIND_DELETED: _ClassVar[LabelEventKind]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    CHANGE_KIND_ADDED: _ClassVar[ChangeKind]
    CHANGE_KIND_REMOVED: _ClassVar[ChangeKind]
    CHANGE_KIND_MODIFIED: _ClassVar[ChangeKind]
VARIABLE_TYPE_UNSPECIFIED: VariableType
VARIABLE_TYPE_STRING: VariableType
VARIABLE_TYPE_INTEGER: VariableType
VARIABLE_TYPE_NUMBER: VariableType
VARIABLE_TYPE_BOOLEAN: VariableType
VARIABLE_TYPE_ENUM: VariableType
VARIABLE_TYPE_STRING_LIST: VariableType
PII_KIND_UNSPECIFIED: PiiKind
PII_KIND_EMAIL: PiiKind
PII_KIND_PHONE: PiiKind
PII_KIND_CARD_NUMBER: PiiKind
LABEL_EVENT_KIND_UNSPECIFIED: LabelEventKind
LABEL_EVENT_KIND_CREATED: LabelEventKind
LABEL_EVENT_KIND_MOVED: LabelEventKind
LABEL_EVENT_KIND_ROLLED_BACK: LabelEventKind
LABEL_EVENT_KIND_DELETED: LabelEventKind
CHANGE_KIND_UNSPECIFIED: ChangeKind
CHANGE_KIND_ADDED: ChangeKind
CHANGE_KIND_REMOVED: ChangeKind
CHANGE_KIND_MODIFIED: ChangeKind

class Prompt(_message.Message):
    __slots__ = ("name", "description", "tenant_id", "latest_version", "labels", "protected_labels", "evaluation_gate", "create_time", "update_time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_LABELS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_GATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tenant_id: str
    latest_version: int
    labels: _containers.ScalarMap[str, int]
    protected_labels: _containers.RepeatedScalarFieldContainer[str]
    evaluation_gate: EvaluationGate
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tenant_id: _Optional[str] = ..., latest_version: _Optional[int] = ..., labels: _Optional[_Mapping[str, int]] = ..., protected_labels: _Optional[_Iterable[str]] = ..., evaluation_gate: _Optional[_Union[EvaluationGate, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EvaluationGate(_message.Message):
    __slots__ = ("dataset", "thresholds")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    thresholds: _containers.RepeatedCompositeFieldContainer[GateThreshold]
    def __init__(self, dataset: _Optional[str] = ..., thresholds: _Optional[_Iterable[_Union[GateThreshold, _Mapping]]] = ...) -> None: ...

class GateThreshold(_message.Message):
    __slots__ = ("scorer", "min_mean")
    SCORER_FIELD_NUMBER: _ClassVar[int]
    MIN_MEAN_FIELD_NUMBER: _ClassVar[int]
    scorer: str
    min_mean: float
    def __init__(self, scorer: _Optional[str] = ..., min_mean: _Optional[float] = ...) -> None: ...

class PromptVersion(_message.Message):
    __slots__ = ("prompt", "version", "messages", "text_template", "variables", "parameters", "routing", "output_schema", "processing", "author", "commit_message", "create_time", "content_hash")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    COMMIT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    version: int
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    text_template: str
    variables: _containers.RepeatedCompositeFieldContainer[VariableSpec]
    parameters: _generation_pb2.SamplingParameters
    routing: _routing_pb2.RoutingPreferences
    output_schema: _struct_pb2.Struct
    processing: ResponseProcessing
    author: str
    commit_message: str
    create_time: _timestamp_pb2.Timestamp
    content_hash: str
    def __init__(self, prompt: _Optional[str] = ..., version: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ..., text_template: _Optional[str] = ..., variables: _Optional[_Iterable[_Union[VariableSpec, _Mapping]]] = ..., parameters: _Optional[_Union[_generation_pb2.SamplingParameters, _Mapping]] = ..., routing: _Optional[_Union[_routing_pb2.RoutingPreferences, _Mapping]] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., processing: _Optional[_Union[ResponseProcessing, _Mapping]] = ..., author: _Optional[str] = ..., commit_message: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., content_hash: _Optional[str] = ...) -> None: ...

class VariableSpec(_message.Message):
    __slots__ = ("name", "type", "required", "default_value", "enum_values", "max_length", "max_items", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    ENUM_VALUES_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: VariableType
    required: bool
    default_value: _struct_pb2.Value
    enum_values: _containers.RepeatedScalarFieldContainer[str]
    max_length: int
    max_items: int
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[VariableType, str]] = ..., required: _Optional[bool] = ..., default_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., enum_values: _Optional[_Iterable[str]] = ..., max_length: _Optional[int] = ..., max_items: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class ResponseProcessing(_message.Message):
    __slots__ = ("max_output_chars", "pii_redaction", "repair_invalid_json")
    MAX_OUTPUT_CHARS_FIELD_NUMBER: _ClassVar[int]
    PII_REDACTION_FIELD_NUMBER: _ClassVar[int]
    REPAIR_INVALID_JSON_FIELD_NUMBER: _ClassVar[int]
    max_output_chars: int
    pii_redaction: PiiRedaction
    repair_invalid_json: bool
    def __init__(self, max_output_chars: _Optional[int] = ..., pii_redaction: _Optional[_Union[PiiRedaction, _Mapping]] = ..., repair_invalid_json: _Optional[bool] = ...) -> None: ...

class PiiRedaction(_message.Message):
    __slots__ = ("kinds", "patterns")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[PiiKind]
    patterns: _containers.RepeatedCompositeFieldContainer[RedactionPattern]
    def __init__(self, kinds: _Optional[_Iterable[_Union[PiiKind, str]]] = ..., patterns: _Optional[_Iterable[_Union[RedactionPattern, _Mapping]]] = ...) -> None: ...

class RedactionPattern(_message.Message):
    __slots__ = ("name", "regex", "max_match_length")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    MAX_MATCH_LENGTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    regex: str
    max_match_length: int
    def __init__(self, name: _Optional[str] = ..., regex: _Optional[str] = ..., max_match_length: _Optional[int] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("prompt", "name", "version", "protected", "update_time")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    name: str
    version: int
    protected: bool
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, prompt: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., protected: _Optional[bool] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LabelEvent(_message.Message):
    __slots__ = ("sequence", "prompt", "label", "kind", "from_version", "to_version", "actor", "reason", "event_time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    prompt: str
    label: str
    kind: LabelEventKind
    from_version: int
    to_version: int
    actor: str
    reason: str
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., prompt: _Optional[str] = ..., label: _Optional[str] = ..., kind: _Optional[_Union[LabelEventKind, str]] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FieldChange(_message.Message):
    __slots__ = ("path", "kind", "old_value", "new_value")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    path: str
    kind: ChangeKind
    old_value: _struct_pb2.Value
    new_value: _struct_pb2.Value
    def __init__(self, path: _Optional[str] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., old_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., new_value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

from genai.common.v1 import chat_pb2 as _chat_pb2
from genai.common.v1 import generation_pb2 as _generation_pb2
from genai.common.v1 import routing_pb2 as _routing_pb2
from genai.prompt.v1 import prompt_pb2 as _prompt_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreatePromptRequest(_message.Message):
    __slots__ = ("prompt", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: _prompt_pb2.Prompt
    request_id: str
    def __init__(self, prompt: _Optional[_Union[_prompt_pb2.Prompt, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreatePromptResponse(_message.Message):
    __slots__ = ("prompt",)
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: _prompt_pb2.Prompt
    def __init__(self, prompt: _Optional[_Union[_prompt_pb2.Prompt, _Mapping]] = ...) -> None: ...

class GetPromptRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetPromptResponse(_message.Message):
    __slots__ = ("prompt",)
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: _prompt_pb2.Prompt
    def __init__(self, prompt: _Optional[_Union[_prompt_pb2.Prompt, _Mapping]] = ...) -> None: ...

class ListPromptsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "name_prefix")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    name_prefix: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., name_prefix: _Optional[str] = ...) -> None: ...

class ListPromptsResponse(_message.Message):
    __slots__ = ("prompts", "next_page_token")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_prompt_pb2.Prompt]
    next_page_token: str
    def __init__(self, prompts: _Optional[_Iterable[_Union[_prompt_pb2.Prompt, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdatePromptRequest(_message.Message):
    __slots__ = ("prompt", "update_mask")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    prompt: _prompt_pb2.Prompt
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, prompt: _Optional[_Union[_prompt_pb2.Prompt, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdatePromptResponse(_message.Message):
    __slots__ = ("prompt",)
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: _prompt_pb2.Prompt
    def __init__(self, prompt: _Optional[_Union[_prompt_pb2.Prompt, _Mapping]] = ...) -> None: ...

class CreatePromptVersionRequest(_message.Message):
    __slots__ = ("prompt", "version", "request_id")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    version: _prompt_pb2.PromptVersion
    request_id: str
    def __init__(self, prompt: _Optional[str] = ..., version: _Optional[_Union[_prompt_pb2.PromptVersion, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreatePromptVersionResponse(_message.Message):
    __slots__ = ("version", "created")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    version: _prompt_pb2.PromptVersion
    created: bool
    def __init__(self, version: _Optional[_Union[_prompt_pb2.PromptVersion, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetPromptVersionRequest(_message.Message):
    __slots__ = ("prompt", "version", "label")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    version: int
    label: str
    def __init__(self, prompt: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class GetPromptVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _prompt_pb2.PromptVersion
    def __init__(self, version: _Optional[_Union[_prompt_pb2.PromptVersion, _Mapping]] = ...) -> None: ...

class ListPromptVersionsRequest(_message.Message):
    __slots__ = ("prompt", "page_size", "page_token")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    page_size: int
    page_token: str
    def __init__(self, prompt: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPromptVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_prompt_pb2.PromptVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[_prompt_pb2.PromptVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DiffPromptVersionsRequest(_message.Message):
    __slots__ = ("prompt", "from_version", "to_version")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    from_version: int
    to_version: int
    def __init__(self, prompt: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class DiffPromptVersionsResponse(_message.Message):
    __slots__ = ("changes", "unified_diff")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    UNIFIED_DIFF_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[_prompt_pb2.FieldChange]
    unified_diff: str
    def __init__(self, changes: _Optional[_Iterable[_Union[_prompt_pb2.FieldChange, _Mapping]]] = ..., unified_diff: _Optional[str] = ...) -> None: ...

class SetLabelRequest(_message.Message):
    __slots__ = ("prompt", "label", "version", "expected_version", "reason")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    label: str
    version: int
    expected_version: int
    reason: str
    def __init__(self, prompt: _Optional[str] = ..., label: _Optional[str] = ..., version: _Optional[int] = ..., expected_version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SetLabelResponse(_message.Message):
    __slots__ = ("label", "event")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    label: _prompt_pb2.Label
    event: _prompt_pb2.LabelEvent
    def __init__(self, label: _Optional[_Union[_prompt_pb2.Label, _Mapping]] = ..., event: _Optional[_Union[_prompt_pb2.LabelEvent, _Mapping]] = ...) -> None: ...

class DeleteLabelRequest(_message.Message):
    __slots__ = ("prompt", "label", "expected_version", "reason")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    label: str
    expected_version: int
    reason: str
    def __init__(self, prompt: _Optional[str] = ..., label: _Optional[str] = ..., expected_version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteLabelResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _prompt_pb2.LabelEvent
    def __init__(self, event: _Optional[_Union[_prompt_pb2.LabelEvent, _Mapping]] = ...) -> None: ...

class RollbackLabelRequest(_message.Message):
    __slots__ = ("prompt", "label", "expected_version", "reason")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    label: str
    expected_version: int
    reason: str
    def __init__(self, prompt: _Optional[str] = ..., label: _Optional[str] = ..., expected_version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackLabelResponse(_message.Message):
    __slots__ = ("label", "event")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    label: _prompt_pb2.Label
    event: _prompt_pb2.LabelEvent
    def __init__(self, label: _Optional[_Union[_prompt_pb2.Label, _Mapping]] = ..., event: _Optional[_Union[_prompt_pb2.LabelEvent, _Mapping]] = ...) -> None: ...

class ListLabelHistoryRequest(_message.Message):
    __slots__ = ("prompt", "label", "page_size", "page_token")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    label: str
    page_size: int
    page_token: str
    def __init__(self, prompt: _Optional[str] = ..., label: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLabelHistoryResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_prompt_pb2.LabelEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[_prompt_pb2.LabelEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RenderPromptRequest(_message.Message):
    __slots__ = ("prompt", "version", "label", "variables")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    version: int
    label: str
    variables: _struct_pb2.Struct
    def __init__(self, prompt: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ..., variables: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RenderPromptResponse(_message.Message):
    __slots__ = ("prompt", "version", "content_hash", "messages", "parameters", "routing", "output_schema", "processing", "text")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    version: int
    content_hash: str
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    parameters: _generation_pb2.SamplingParameters
    routing: _routing_pb2.RoutingPreferences
    output_schema: _struct_pb2.Struct
    processing: _prompt_pb2.ResponseProcessing
    text: str
    def __init__(self, prompt: _Optional[str] = ..., version: _Optional[int] = ..., content_hash: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ..., parameters: _Optional[_Union[_generation_pb2.SamplingParameters, _Mapping]] = ..., routing: _Optional[_Union[_routing_pb2.RoutingPreferences, _Mapping]] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., processing: _Optional[_Union[_prompt_pb2.ResponseProcessing, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class WatchLabelsRequest(_message.Message):
    __slots__ = ("prompts", "after_sequence")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    after_sequence: int
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchLabelsResponse(_message.Message):
    __slots__ = ("snapshot", "event")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    snapshot: LabelSnapshot
    event: _prompt_pb2.LabelEvent
    def __init__(self, snapshot: _Optional[_Union[LabelSnapshot, _Mapping]] = ..., event: _Optional[_Union[_prompt_pb2.LabelEvent, _Mapping]] = ...) -> None: ...

class LabelSnapshot(_message.Message):
    __slots__ = ("labels", "sequence")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[_prompt_pb2.Label]
    sequence: int
    def __init__(self, labels: _Optional[_Iterable[_Union[_prompt_pb2.Label, _Mapping]]] = ..., sequence: _Optional[int] = ...) -> None: ...

import datetime

from genai.common.v1 import generation_pb2 as _generation_pb2
from genai.common.v1 import money_pb2 as _money_pb2
from genai.common.v1 import statistics_pb2 as _statistics_pb2
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

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_QUEUED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]

class AlertState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_STATE_UNSPECIFIED: _ClassVar[AlertState]
    ALERT_STATE_FIRING: _ClassVar[AlertState]
    ALERT_STATE_RESOLVED: _ClassVar[AlertState]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_QUEUED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELLED: RunState
ALERT_STATE_UNSPECIFIED: AlertState
ALERT_STATE_FIRING: AlertState
ALERT_STATE_RESOLVED: AlertState

class Dataset(_message.Message):
    __slots__ = ("name", "description", "prompt", "example_count", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    prompt: str
    example_count: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., prompt: _Optional[str] = ..., example_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("id", "inputs", "reference", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    inputs: _struct_pb2.Struct
    reference: str
    tags: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., reference: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Scorer(_message.Message):
    __slots__ = ("name", "exact_match", "contains", "regex", "json_schema", "embedding_similarity", "latency", "cost", "llm_judge")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXACT_MATCH_FIELD_NUMBER: _ClassVar[int]
    CONTAINS_FIELD_NUMBER: _ClassVar[int]
    REGEX_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    LLM_JUDGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    exact_match: ExactMatchScorer
    contains: ContainsScorer
    regex: RegexScorer
    json_schema: JsonSchemaScorer
    embedding_similarity: EmbeddingSimilarityScorer
    latency: LatencyScorer
    cost: CostScorer
    llm_judge: LlmJudgeScorer
    def __init__(self, name: _Optional[str] = ..., exact_match: _Optional[_Union[ExactMatchScorer, _Mapping]] = ..., contains: _Optional[_Union[ContainsScorer, _Mapping]] = ..., regex: _Optional[_Union[RegexScorer, _Mapping]] = ..., json_schema: _Optional[_Union[JsonSchemaScorer, _Mapping]] = ..., embedding_similarity: _Optional[_Union[EmbeddingSimilarityScorer, _Mapping]] = ..., latency: _Optional[_Union[LatencyScorer, _Mapping]] = ..., cost: _Optional[_Union[CostScorer, _Mapping]] = ..., llm_judge: _Optional[_Union[LlmJudgeScorer, _Mapping]] = ...) -> None: ...

class ExactMatchScorer(_message.Message):
    __slots__ = ("case_sensitive", "keep_whitespace")
    CASE_SENSITIVE_FIELD_NUMBER: _ClassVar[int]
    KEEP_WHITESPACE_FIELD_NUMBER: _ClassVar[int]
    case_sensitive: bool
    keep_whitespace: bool
    def __init__(self, case_sensitive: _Optional[bool] = ..., keep_whitespace: _Optional[bool] = ...) -> None: ...

class ContainsScorer(_message.Message):
    __slots__ = ("substrings", "case_sensitive")
    SUBSTRINGS_FIELD_NUMBER: _ClassVar[int]
    CASE_SENSITIVE_FIELD_NUMBER: _ClassVar[int]
    substrings: _containers.RepeatedScalarFieldContainer[str]
    case_sensitive: bool
    def __init__(self, substrings: _Optional[_Iterable[str]] = ..., case_sensitive: _Optional[bool] = ...) -> None: ...

class RegexScorer(_message.Message):
    __slots__ = ("pattern",)
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    def __init__(self, pattern: _Optional[str] = ...) -> None: ...

class JsonSchemaScorer(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmbeddingSimilarityScorer(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class LatencyScorer(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CostScorer(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LlmJudgeScorer(_message.Message):
    __slots__ = ("rubric_prompt", "rubric_label", "model")
    RUBRIC_PROMPT_FIELD_NUMBER: _ClassVar[int]
    RUBRIC_LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    rubric_prompt: str
    rubric_label: str
    model: str
    def __init__(self, rubric_prompt: _Optional[str] = ..., rubric_label: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class EvaluationRun(_message.Message):
    __slots__ = ("id", "prompt", "prompt_version", "prompt_label", "model", "dataset", "scorers", "repeats", "baseline_report_id", "state", "progress", "resolved_prompt_version", "report_id", "error", "create_time", "end_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    REPEATS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    prompt_version: int
    prompt_label: str
    model: str
    dataset: str
    scorers: _containers.RepeatedCompositeFieldContainer[Scorer]
    repeats: int
    baseline_report_id: str
    state: RunState
    progress: RunProgress
    resolved_prompt_version: int
    report_id: str
    error: str
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_version: _Optional[int] = ..., prompt_label: _Optional[str] = ..., model: _Optional[str] = ..., dataset: _Optional[str] = ..., scorers: _Optional[_Iterable[_Union[Scorer, _Mapping]]] = ..., repeats: _Optional[int] = ..., baseline_report_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., progress: _Optional[_Union[RunProgress, _Mapping]] = ..., resolved_prompt_version: _Optional[int] = ..., report_id: _Optional[str] = ..., error: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunProgress(_message.Message):
    __slots__ = ("total", "completed", "failed")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    total: int
    completed: int
    failed: int
    def __init__(self, total: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("scorer", "value", "scored", "explanation")
    SCORER_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCORED_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    scorer: str
    value: float
    scored: bool
    explanation: str
    def __init__(self, scorer: _Optional[str] = ..., value: _Optional[float] = ..., scored: _Optional[bool] = ..., explanation: _Optional[str] = ...) -> None: ...

class ExampleResult(_message.Message):
    __slots__ = ("example_id", "repeat", "output", "scores", "usage", "cost", "latency", "model", "error")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    REPEAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    repeat: int
    output: str
    scores: _containers.RepeatedCompositeFieldContainer[Score]
    usage: _generation_pb2.TokenUsage
    cost: _money_pb2.Money
    latency: _duration_pb2.Duration
    model: str
    error: str
    def __init__(self, example_id: _Optional[str] = ..., repeat: _Optional[int] = ..., output: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[Score, _Mapping]]] = ..., usage: _Optional[_Union[_generation_pb2.TokenUsage, _Mapping]] = ..., cost: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., model: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ScorerSummary(_message.Message):
    __slots__ = ("scorer", "count", "mean", "mean_interval", "flakiness")
    SCORER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MEAN_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    FLAKINESS_FIELD_NUMBER: _ClassVar[int]
    scorer: str
    count: int
    mean: float
    mean_interval: _statistics_pb2.ConfidenceInterval
    flakiness: float
    def __init__(self, scorer: _Optional[str] = ..., count: _Optional[int] = ..., mean: _Optional[float] = ..., mean_interval: _Optional[_Union[_statistics_pb2.ConfidenceInterval, _Mapping]] = ..., flakiness: _Optional[float] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("id", "run_id", "prompt", "prompt_version", "prompt_content_hash", "model", "dataset", "summaries", "results", "baseline_comparison", "usage", "cost", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_COMPARISON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    run_id: str
    prompt: str
    prompt_version: int
    prompt_content_hash: str
    model: str
    dataset: str
    summaries: _containers.RepeatedCompositeFieldContainer[ScorerSummary]
    results: _containers.RepeatedCompositeFieldContainer[ExampleResult]
    baseline_comparison: ReportComparison
    usage: _generation_pb2.TokenUsage
    cost: _money_pb2.Money
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., run_id: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_version: _Optional[int] = ..., prompt_content_hash: _Optional[str] = ..., model: _Optional[str] = ..., dataset: _Optional[str] = ..., summaries: _Optional[_Iterable[_Union[ScorerSummary, _Mapping]]] = ..., results: _Optional[_Iterable[_Union[ExampleResult, _Mapping]]] = ..., baseline_comparison: _Optional[_Union[ReportComparison, _Mapping]] = ..., usage: _Optional[_Union[_generation_pb2.TokenUsage, _Mapping]] = ..., cost: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReportComparison(_message.Message):
    __slots__ = ("baseline_report_id", "candidate_report_id", "scorers", "example_regressions", "regressed")
    BASELINE_REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_REGRESSIONS_FIELD_NUMBER: _ClassVar[int]
    REGRESSED_FIELD_NUMBER: _ClassVar[int]
    baseline_report_id: str
    candidate_report_id: str
    scorers: _containers.RepeatedCompositeFieldContainer[ScorerComparison]
    example_regressions: _containers.RepeatedCompositeFieldContainer[ExampleRegression]
    regressed: bool
    def __init__(self, baseline_report_id: _Optional[str] = ..., candidate_report_id: _Optional[str] = ..., scorers: _Optional[_Iterable[_Union[ScorerComparison, _Mapping]]] = ..., example_regressions: _Optional[_Iterable[_Union[ExampleRegression, _Mapping]]] = ..., regressed: _Optional[bool] = ...) -> None: ...

class ScorerComparison(_message.Message):
    __slots__ = ("scorer", "baseline_mean", "candidate_mean", "difference", "difference_interval", "p_value", "regressed")
    SCORER_FIELD_NUMBER: _ClassVar[int]
    BASELINE_MEAN_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_MEAN_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    REGRESSED_FIELD_NUMBER: _ClassVar[int]
    scorer: str
    baseline_mean: float
    candidate_mean: float
    difference: float
    difference_interval: _statistics_pb2.ConfidenceInterval
    p_value: float
    regressed: bool
    def __init__(self, scorer: _Optional[str] = ..., baseline_mean: _Optional[float] = ..., candidate_mean: _Optional[float] = ..., difference: _Optional[float] = ..., difference_interval: _Optional[_Union[_statistics_pb2.ConfidenceInterval, _Mapping]] = ..., p_value: _Optional[float] = ..., regressed: _Optional[bool] = ...) -> None: ...

class ExampleRegression(_message.Message):
    __slots__ = ("example_id", "scorer", "baseline_value", "candidate_value")
    EXAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VALUE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VALUE_FIELD_NUMBER: _ClassVar[int]
    example_id: str
    scorer: str
    baseline_value: float
    candidate_value: float
    def __init__(self, example_id: _Optional[str] = ..., scorer: _Optional[str] = ..., baseline_value: _Optional[float] = ..., candidate_value: _Optional[float] = ...) -> None: ...

class QualityAlert(_message.Message):
    __slots__ = ("id", "prompt", "prompt_version", "scorer", "detector", "baseline_mean", "observed_mean", "sample_count", "state", "fire_time", "resolve_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORER_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    BASELINE_MEAN_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_MEAN_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    prompt_version: int
    scorer: str
    detector: str
    baseline_mean: float
    observed_mean: float
    sample_count: int
    state: AlertState
    fire_time: _timestamp_pb2.Timestamp
    resolve_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_version: _Optional[int] = ..., scorer: _Optional[str] = ..., detector: _Optional[str] = ..., baseline_mean: _Optional[float] = ..., observed_mean: _Optional[float] = ..., sample_count: _Optional[int] = ..., state: _Optional[_Union[AlertState, str]] = ..., fire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolve_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

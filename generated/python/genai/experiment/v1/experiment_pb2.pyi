import datetime

from genai.common.v1 import generation_pb2 as _generation_pb2
from genai.common.v1 import statistics_pb2 as _statistics_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExperimentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATE_UNSPECIFIED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_DRAFT: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_RUNNING: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_STOPPED: _ClassVar[ExperimentState]

class AssignmentUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ASSIGNMENT_UNIT_UNSPECIFIED: _ClassVar[AssignmentUnit]
    ASSIGNMENT_UNIT_USER: _ClassVar[AssignmentUnit]
    ASSIGNMENT_UNIT_SESSION: _ClassVar[AssignmentUnit]

class MetricKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_KIND_UNSPECIFIED: _ClassVar[MetricKind]
    METRIC_KIND_NUMERIC: _ClassVar[MetricKind]
    METRIC_KIND_BOOLEAN: _ClassVar[MetricKind]
EXPERIMENT_STATE_UNSPECIFIED: ExperimentState
EXPERIMENT_STATE_DRAFT: ExperimentState
EXPERIMENT_STATE_RUNNING: ExperimentState
EXPERIMENT_STATE_STOPPED: ExperimentState
ASSIGNMENT_UNIT_UNSPECIFIED: AssignmentUnit
ASSIGNMENT_UNIT_USER: AssignmentUnit
ASSIGNMENT_UNIT_SESSION: AssignmentUnit
METRIC_KIND_UNSPECIFIED: MetricKind
METRIC_KIND_NUMERIC: MetricKind
METRIC_KIND_BOOLEAN: MetricKind

class Experiment(_message.Message):
    __slots__ = ("name", "description", "state", "prompt", "variants", "control_variant", "holdout_share", "salt", "unit", "metrics", "create_time", "start_time", "stop_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_VARIANT_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_SHARE_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    STOP_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    state: ExperimentState
    prompt: str
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    control_variant: str
    holdout_share: float
    salt: str
    unit: AssignmentUnit
    metrics: _containers.RepeatedCompositeFieldContainer[MetricSpec]
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    stop_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., state: _Optional[_Union[ExperimentState, str]] = ..., prompt: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., control_variant: _Optional[str] = ..., holdout_share: _Optional[float] = ..., salt: _Optional[str] = ..., unit: _Optional[_Union[AssignmentUnit, str]] = ..., metrics: _Optional[_Iterable[_Union[MetricSpec, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stop_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "weight", "prompt_version", "model", "parameters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    prompt_version: int
    model: str
    parameters: _generation_pb2.SamplingParameters
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ..., prompt_version: _Optional[int] = ..., model: _Optional[str] = ..., parameters: _Optional[_Union[_generation_pb2.SamplingParameters, _Mapping]] = ...) -> None: ...

class MetricSpec(_message.Message):
    __slots__ = ("name", "kind", "higher_is_better")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: MetricKind
    higher_is_better: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[MetricKind, str]] = ..., higher_is_better: _Optional[bool] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("experiment", "unit_id", "bucket", "holdout", "variant", "prompt_version", "model", "parameters")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    UNIT_ID_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    unit_id: str
    bucket: int
    holdout: bool
    variant: str
    prompt_version: int
    model: str
    parameters: _generation_pb2.SamplingParameters
    def __init__(self, experiment: _Optional[str] = ..., unit_id: _Optional[str] = ..., bucket: _Optional[int] = ..., holdout: _Optional[bool] = ..., variant: _Optional[str] = ..., prompt_version: _Optional[int] = ..., model: _Optional[str] = ..., parameters: _Optional[_Union[_generation_pb2.SamplingParameters, _Mapping]] = ...) -> None: ...

class ExperimentResults(_message.Message):
    __slots__ = ("experiment", "variants", "sample_ratio", "compute_time")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATIO_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantResult]
    sample_ratio: SampleRatioCheck
    compute_time: _timestamp_pb2.Timestamp
    def __init__(self, experiment: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantResult, _Mapping]]] = ..., sample_ratio: _Optional[_Union[SampleRatioCheck, _Mapping]] = ..., compute_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class VariantResult(_message.Message):
    __slots__ = ("variant", "units", "exposures", "metrics")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    EXPOSURES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    variant: str
    units: int
    exposures: int
    metrics: _containers.RepeatedCompositeFieldContainer[MetricResult]
    def __init__(self, variant: _Optional[str] = ..., units: _Optional[int] = ..., exposures: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[MetricResult, _Mapping]]] = ...) -> None: ...

class MetricResult(_message.Message):
    __slots__ = ("metric", "kind", "count", "mean", "mean_interval", "comparison")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MEAN_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    metric: str
    kind: MetricKind
    count: int
    mean: float
    mean_interval: _statistics_pb2.ConfidenceInterval
    comparison: ControlComparison
    def __init__(self, metric: _Optional[str] = ..., kind: _Optional[_Union[MetricKind, str]] = ..., count: _Optional[int] = ..., mean: _Optional[float] = ..., mean_interval: _Optional[_Union[_statistics_pb2.ConfidenceInterval, _Mapping]] = ..., comparison: _Optional[_Union[ControlComparison, _Mapping]] = ...) -> None: ...

class ControlComparison(_message.Message):
    __slots__ = ("difference", "difference_interval", "p_value", "sequential_p_value", "test")
    DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    SEQUENTIAL_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    difference: float
    difference_interval: _statistics_pb2.ConfidenceInterval
    p_value: float
    sequential_p_value: float
    test: str
    def __init__(self, difference: _Optional[float] = ..., difference_interval: _Optional[_Union[_statistics_pb2.ConfidenceInterval, _Mapping]] = ..., p_value: _Optional[float] = ..., sequential_p_value: _Optional[float] = ..., test: _Optional[str] = ...) -> None: ...

class SampleRatioCheck(_message.Message):
    __slots__ = ("chi_square", "p_value", "mismatch")
    CHI_SQUARE_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    MISMATCH_FIELD_NUMBER: _ClassVar[int]
    chi_square: float
    p_value: float
    mismatch: bool
    def __init__(self, chi_square: _Optional[float] = ..., p_value: _Optional[float] = ..., mismatch: _Optional[bool] = ...) -> None: ...

from genai.evaluation.v1 import evaluation_pb2 as _evaluation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateDatasetRequest(_message.Message):
    __slots__ = ("dataset", "request_id")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    dataset: _evaluation_pb2.Dataset
    request_id: str
    def __init__(self, dataset: _Optional[_Union[_evaluation_pb2.Dataset, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: _evaluation_pb2.Dataset
    def __init__(self, dataset: _Optional[_Union[_evaluation_pb2.Dataset, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: _evaluation_pb2.Dataset
    def __init__(self, dataset: _Optional[_Union[_evaluation_pb2.Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "prompt")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    prompt: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., prompt: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[_evaluation_pb2.Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AddExamplesRequest(_message.Message):
    __slots__ = ("dataset", "examples", "request_id")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    examples: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.Example]
    request_id: str
    def __init__(self, dataset: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[_evaluation_pb2.Example, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class AddExamplesResponse(_message.Message):
    __slots__ = ("examples",)
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.Example]
    def __init__(self, examples: _Optional[_Iterable[_Union[_evaluation_pb2.Example, _Mapping]]] = ...) -> None: ...

class ListExamplesRequest(_message.Message):
    __slots__ = ("dataset", "page_size", "page_token")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    page_size: int
    page_token: str
    def __init__(self, dataset: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListExamplesResponse(_message.Message):
    __slots__ = ("examples", "next_page_token")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.Example]
    next_page_token: str
    def __init__(self, examples: _Optional[_Iterable[_Union[_evaluation_pb2.Example, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StartEvaluationRunRequest(_message.Message):
    __slots__ = ("run", "request_id")
    RUN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run: _evaluation_pb2.EvaluationRun
    request_id: str
    def __init__(self, run: _Optional[_Union[_evaluation_pb2.EvaluationRun, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class StartEvaluationRunResponse(_message.Message):
    __slots__ = ("run", "progress", "result", "report")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    run: _evaluation_pb2.EvaluationRun
    progress: _evaluation_pb2.RunProgress
    result: _evaluation_pb2.ExampleResult
    report: _evaluation_pb2.EvaluationReport
    def __init__(self, run: _Optional[_Union[_evaluation_pb2.EvaluationRun, _Mapping]] = ..., progress: _Optional[_Union[_evaluation_pb2.RunProgress, _Mapping]] = ..., result: _Optional[_Union[_evaluation_pb2.ExampleResult, _Mapping]] = ..., report: _Optional[_Union[_evaluation_pb2.EvaluationReport, _Mapping]] = ...) -> None: ...

class GetEvaluationRunRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetEvaluationRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _evaluation_pb2.EvaluationRun
    def __init__(self, run: _Optional[_Union[_evaluation_pb2.EvaluationRun, _Mapping]] = ...) -> None: ...

class ListEvaluationRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "prompt")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    prompt: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., prompt: _Optional[str] = ...) -> None: ...

class ListEvaluationRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.EvaluationRun]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[_evaluation_pb2.EvaluationRun, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelEvaluationRunRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelEvaluationRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _evaluation_pb2.EvaluationRun
    def __init__(self, run: _Optional[_Union[_evaluation_pb2.EvaluationRun, _Mapping]] = ...) -> None: ...

class GetEvaluationReportRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetEvaluationReportResponse(_message.Message):
    __slots__ = ("report",)
    REPORT_FIELD_NUMBER: _ClassVar[int]
    report: _evaluation_pb2.EvaluationReport
    def __init__(self, report: _Optional[_Union[_evaluation_pb2.EvaluationReport, _Mapping]] = ...) -> None: ...

class CompareEvaluationReportsRequest(_message.Message):
    __slots__ = ("baseline_report_id", "candidate_report_id")
    BASELINE_REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    baseline_report_id: str
    candidate_report_id: str
    def __init__(self, baseline_report_id: _Optional[str] = ..., candidate_report_id: _Optional[str] = ...) -> None: ...

class CompareEvaluationReportsResponse(_message.Message):
    __slots__ = ("comparison",)
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    comparison: _evaluation_pb2.ReportComparison
    def __init__(self, comparison: _Optional[_Union[_evaluation_pb2.ReportComparison, _Mapping]] = ...) -> None: ...

class ListQualityAlertsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "prompt", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    prompt: str
    state: _evaluation_pb2.AlertState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., prompt: _Optional[str] = ..., state: _Optional[_Union[_evaluation_pb2.AlertState, str]] = ...) -> None: ...

class ListQualityAlertsResponse(_message.Message):
    __slots__ = ("alerts", "next_page_token")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.QualityAlert]
    next_page_token: str
    def __init__(self, alerts: _Optional[_Iterable[_Union[_evaluation_pb2.QualityAlert, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

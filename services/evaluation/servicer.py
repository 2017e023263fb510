"""genai.evaluation.v1.EvaluationService: converts between protos and evaluation domain types."""

from genai.evaluation.v1 import evaluation_service_pb2_grpc

from services.common.unimplemented import pending_rpcs

SERVICE_NAME = "genai.evaluation.v1.EvaluationService"

_DATASETS = "dataset storage with schema-checked examples (issue #7)"
_RUNS = "evaluation runs with scorers and streamed progress (issue #7)"
_REPORTS = "evaluation reports and their comparison (issue #7)"


@pending_rpcs(
    SERVICE_NAME,
    {
        "CreateDataset": _DATASETS,
        "GetDataset": _DATASETS,
        "ListDatasets": _DATASETS,
        "AddExamples": _DATASETS,
        "ListExamples": _DATASETS,
        "StartEvaluationRun": _RUNS,
        "GetEvaluationRun": _RUNS,
        "ListEvaluationRuns": _RUNS,
        "CancelEvaluationRun": _RUNS,
        "GetEvaluationReport": _REPORTS,
        "CompareEvaluationReports": _REPORTS,
        "ListQualityAlerts": "online evaluation with drift detection (issue #7)",
    },
)
class EvaluationServicer(evaluation_service_pb2_grpc.EvaluationServiceServicer):
    """Serves EvaluationService. Every RPC waits on the evaluation pipeline of issue #7."""

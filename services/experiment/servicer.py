"""genai.experiment.v1.ExperimentService: converts between protos and experiment domain types."""

from genai.experiment.v1 import experiment_service_pb2_grpc

from services.common.unimplemented import pending_rpcs

SERVICE_NAME = "genai.experiment.v1.ExperimentService"

_LIFECYCLE = "experiment storage and lifecycle (issue #7)"
_ASSIGNMENT = "sticky hash(salt, unit) assignment into 10,000 buckets (issue #7)"
_STATISTICS = "Welch/two-proportion tests, sequential p-values and the SRM check (issue #7)"


@pending_rpcs(
    SERVICE_NAME,
    {
        "CreateExperiment": _LIFECYCLE,
        "GetExperiment": _LIFECYCLE,
        "ListExperiments": _LIFECYCLE,
        "StartExperiment": _LIFECYCLE,
        "StopExperiment": _LIFECYCLE,
        "SetVariantWeights": _ASSIGNMENT,
        "AssignVariant": _ASSIGNMENT,
        "RecordExposure": "exposure recording (issue #7)",
        "RecordOutcome": "outcome recording (issue #7)",
        "GetExperimentResults": _STATISTICS,
    },
)
class ExperimentServicer(experiment_service_pb2_grpc.ExperimentServiceServicer):
    """Serves ExperimentService. Every RPC waits on the experiment engine of issue #7."""

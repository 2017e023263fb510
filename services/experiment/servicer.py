"""genai.experiment.v1.ExperimentService: converts between protos and experiment domain types."""

from datetime import UTC, datetime
from typing import Any

import grpc
from genai.common.v1 import statistics_pb2
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2, experiment_service_pb2_grpc
from google.protobuf import json_format

from services.common.auth import current_principal
from services.common.errors import FieldViolation, InvalidArgument
from services.common.validation import refuse_oversized
from services.common.wire import timestamp
from services.experiment.adapters.sql_store import (
    ExperimentTally,
    MeanSums,
    SqlExperimentStore,
)
from services.experiment.core.assignment import Assignment
from services.experiment.core.model import (
    MAX_METRICS,
    MAX_VARIANTS,
    AssignmentUnit,
    Experiment,
    ExperimentState,
    MetricKind,
    MetricSpec,
    NewExperiment,
    Variant,
)
from services.experiment.core.results import (
    ExperimentResults,
    MetricData,
    VariantData,
    analyze_experiment,
)
from services.experiment.core.statistics import Interval, MeanSummary, ProportionSummary

SERVICE_NAME = "genai.experiment.v1.ExperimentService"

pb = experiment_pb2
spb = experiment_service_pb2
Context = grpc.aio.ServicerContext[Any, Any]

_STATES = {
    pb.EXPERIMENT_STATE_DRAFT: ExperimentState.DRAFT,
    pb.EXPERIMENT_STATE_RUNNING: ExperimentState.RUNNING,
    pb.EXPERIMENT_STATE_STOPPED: ExperimentState.STOPPED,
}
_UNITS = {
    pb.ASSIGNMENT_UNIT_UNSPECIFIED: AssignmentUnit.UNSPECIFIED,
    pb.ASSIGNMENT_UNIT_USER: AssignmentUnit.USER,
    pb.ASSIGNMENT_UNIT_SESSION: AssignmentUnit.SESSION,
}
_KINDS = {
    pb.METRIC_KIND_UNSPECIFIED: MetricKind.UNSPECIFIED,
    pb.METRIC_KIND_NUMERIC: MetricKind.NUMERIC,
    pb.METRIC_KIND_BOOLEAN: MetricKind.BOOLEAN,
}


class ExperimentServicer(experiment_service_pb2_grpc.ExperimentServiceServicer):
    """Serves ExperimentService from the experiment store; results are computed on request."""

    def __init__(self, store: SqlExperimentStore) -> None:
        self._store = store
        self._previous: dict[tuple[str, str], ExperimentResults] = {}
        """(tenant, experiment) -> the last results reported: sequential p-values only go
        down (the running minimum keeps them always valid)."""

    async def CreateExperiment(
        self, request: spb.CreateExperimentRequest, context: Context
    ) -> spb.CreateExperimentResponse:
        """Creates an experiment (and starts it with `start`)."""
        if not request.HasField("experiment"):
            raise InvalidArgument(violations=[FieldViolation("experiment", "is required")])
        refuse_oversized(
            (
                ("experiment.variants", request.experiment.variants, MAX_VARIANTS),
                ("experiment.metrics", request.experiment.metrics, MAX_METRICS),
            )
        )
        created = await self._store.create_experiment(
            _tenant(), _new_experiment(request.experiment), start=request.start,
            request_id=request.request_id,
        )  # fmt: skip
        return spb.CreateExperimentResponse(experiment=_experiment(created))

    async def GetExperiment(
        self, request: spb.GetExperimentRequest, context: Context
    ) -> spb.GetExperimentResponse:
        """One experiment by name."""
        found = await self._store.get_experiment(_tenant(), request.name)
        return spb.GetExperimentResponse(experiment=_experiment(found))

    async def ListExperiments(
        self, request: spb.ListExperimentsRequest, context: Context
    ) -> spb.ListExperimentsResponse:
        """The tenant's experiments by name, optionally of one state."""
        state = _STATES.get(request.state)
        experiments, token = await self._store.list_experiments(
            _tenant(), state=state, page_size=request.page_size, page_token=request.page_token
        )
        return spb.ListExperimentsResponse(
            experiments=[_experiment(e) for e in experiments], next_page_token=token
        )

    async def StartExperiment(
        self, request: spb.StartExperimentRequest, context: Context
    ) -> spb.StartExperimentResponse:
        """Starts assigning units."""
        started = await self._store.start_experiment(_tenant(), request.name)
        return spb.StartExperimentResponse(experiment=_experiment(started))

    async def StopExperiment(
        self, request: spb.StopExperimentRequest, context: Context
    ) -> spb.StopExperimentResponse:
        """Stops it; existing data stays for the results."""
        stopped = await self._store.stop_experiment(_tenant(), request.name, request.reason)
        return spb.StopExperimentResponse(experiment=_experiment(stopped))

    async def SetVariantWeights(
        self, request: spb.SetVariantWeightsRequest, context: Context
    ) -> spb.SetVariantWeightsResponse:
        """New weights for new units; assigned units keep their variant."""
        changed = await self._store.set_weights(
            _tenant(), request.experiment, dict(request.weights)
        )
        return spb.SetVariantWeightsResponse(experiment=_experiment(changed))

    async def AssignVariant(
        self, request: spb.AssignVariantRequest, context: Context
    ) -> spb.AssignVariantResponse:
        """The unit's variant: its stored one, or a new deterministic assignment."""
        assigned = await self._store.assign(_tenant(), request.experiment, request.unit_id)
        return spb.AssignVariantResponse(assignment=assignment_proto(assigned))

    async def RecordExposure(
        self, request: spb.RecordExposureRequest, context: Context
    ) -> spb.RecordExposureResponse:
        """Records that the unit was served its variant (idempotent per request id)."""
        await self._store.record_exposure(
            _tenant(), request.experiment, request.unit_id, request.variant, request.request_id
        )
        return spb.RecordExposureResponse()

    async def RecordOutcome(
        self, request: spb.RecordOutcomeRequest, context: Context
    ) -> spb.RecordOutcomeResponse:
        """Records a metric value of a unit (idempotent per request id and metric)."""
        kind = request.WhichOneof("value")
        if kind is None:
            raise InvalidArgument(
                violations=[FieldViolation("value", "set numeric_value or boolean_value")]
            )
        value: float | bool = (
            request.boolean_value if kind == "boolean_value" else request.numeric_value
        )
        await self._store.record_outcome(
            _tenant(), request.experiment, request.unit_id, request.metric, value,
            request.request_id,
        )  # fmt: skip
        return spb.RecordOutcomeResponse()

    async def GetExperimentResults(
        self, request: spb.GetExperimentResultsRequest, context: Context
    ) -> spb.GetExperimentResultsResponse:
        """Per-variant units, exposures and metrics against control, and the sample-ratio
        check, computed now from the stored data."""
        confidence = request.confidence_level or 0.95
        if not 0.5 <= confidence < 1:
            raise InvalidArgument(
                violations=[FieldViolation("confidence_level", "must be in [0.5, 1); 0 means 0.95")]
            )
        tenant = _tenant()
        tally = await self._store.tally(tenant, request.name)
        key = (tenant, request.name)
        results = analyze(tally, confidence=confidence, previous=self._previous.get(key))
        self._previous[key] = results
        return spb.GetExperimentResultsResponse(results=results_proto(results))


# ------------------------------------------------------------------------------------------
# Domain <-> proto
# ------------------------------------------------------------------------------------------


def analyze(
    tally: ExperimentTally, *, confidence: float = 0.95, previous: ExperimentResults | None = None
) -> ExperimentResults:
    """The statistics of a tally (see `analyze_experiment`)."""
    experiment = tally.experiment
    kinds = {metric.name: metric.kind for metric in experiment.metrics}
    variants = []
    for counts in tally.variants:
        metrics = {}
        for name, sums in counts.metrics.items():
            summary: MeanSummary | ProportionSummary = (
                MeanSummary(sums.n, sums.total, sums.total_squares)
                if isinstance(sums, MeanSums)
                else ProportionSummary(sums.n, sums.successes)
            )
            metrics[name] = MetricData(summary, sums.outcomes)
        variants.append(
            VariantData(
                name=counts.variant,
                units=counts.assigned_units,
                exposures=counts.exposures,
                exposed_units=counts.exposed_units,
                expected_exposed_units=counts.expected_exposed_units,
                metrics=metrics,
            )
        )
    return analyze_experiment(
        experiment.name,
        variants,
        kinds,
        control=experiment.control_variant,
        compute_time=datetime.now(UTC),
        confidence=confidence,
        previous=previous,
    )


def results_proto(results: ExperimentResults) -> pb.ExperimentResults:
    """`ExperimentResults` as its proto; undefined intervals and comparisons stay unset."""
    message = pb.ExperimentResults(
        experiment=results.experiment,
        sample_ratio=pb.SampleRatioCheck(
            chi_square=results.sample_ratio.chi_square,
            p_value=results.sample_ratio.p_value,
            mismatch=results.sample_ratio.mismatch,
        ),
        compute_time=timestamp(results.compute_time),
    )
    for variant in results.variants:
        proto = message.variants.add(
            variant=variant.variant, units=variant.units, exposures=variant.exposures
        )
        for metric in variant.metrics:
            result = proto.metrics.add(
                metric=metric.metric,
                kind=_KIND_PROTO[metric.kind],
                count=metric.count,
                mean=metric.mean,
            )
            if metric.mean_interval.defined:
                result.mean_interval.CopyFrom(_interval(metric.mean_interval))
            comparison = metric.comparison
            if comparison is not None and comparison.defined:
                result.comparison.CopyFrom(
                    pb.ControlComparison(
                        difference=comparison.difference,
                        p_value=comparison.p_value,
                        sequential_p_value=comparison.sequential_p_value,
                        test=comparison.test,
                    )
                )
                if comparison.difference_interval.defined:
                    result.comparison.difference_interval.CopyFrom(
                        _interval(comparison.difference_interval)
                    )
    return message


def assignment_proto(assigned: Assignment) -> pb.Assignment:
    """An `Assignment` as its proto (a held-out unit has no variant)."""
    message = pb.Assignment(
        experiment=assigned.experiment,
        unit_id=assigned.unit_id,
        bucket=assigned.bucket,
        holdout=assigned.holdout,
    )
    variant = assigned.variant
    if variant is not None:
        message.variant = variant.name
        message.prompt_version = variant.prompt_version
        message.model = variant.model
        if variant.parameters:
            json_format.ParseDict(dict(variant.parameters), message.parameters)
    return message


_KIND_PROTO = {kind: number for number, kind in _KINDS.items()}
_STATE_PROTO = {state: number for number, state in _STATES.items()}
_UNIT_PROTO = {unit: number for number, unit in _UNITS.items()}


def _interval(interval: Interval) -> statistics_pb2.ConfidenceInterval:
    return statistics_pb2.ConfidenceInterval(
        lower=interval.lower, upper=interval.upper, confidence_level=interval.confidence_level
    )


def _tenant() -> str:
    return current_principal().tenant_id


def _new_experiment(message: pb.Experiment) -> NewExperiment:
    return NewExperiment(
        name=message.name,
        description=message.description,
        prompt=message.prompt,
        variants=tuple(
            Variant(
                name=v.name,
                weight=v.weight,
                prompt_version=v.prompt_version,
                model=v.model,
                parameters=json_format.MessageToDict(v.parameters, preserving_proto_field_name=True)
                if v.HasField("parameters")
                else {},
            )
            for v in message.variants
        ),
        control_variant=message.control_variant,
        unit=_UNITS.get(message.unit, AssignmentUnit.UNSPECIFIED),
        holdout_share=message.holdout_share,
        salt=message.salt,
        metrics=tuple(
            MetricSpec(m.name, _KINDS.get(m.kind, MetricKind.UNSPECIFIED), m.higher_is_better)
            for m in message.metrics
        ),
    )


def _experiment(experiment: Experiment) -> pb.Experiment:
    message = pb.Experiment(
        name=experiment.name,
        description=experiment.description,
        state=_STATE_PROTO[experiment.state],
        prompt=experiment.prompt,
        control_variant=experiment.control_variant,
        holdout_share=experiment.holdout_share,
        salt=experiment.salt,
        unit=_UNIT_PROTO[experiment.unit],
        metrics=[
            pb.MetricSpec(
                name=m.name, kind=_KIND_PROTO[m.kind], higher_is_better=m.higher_is_better
            )
            for m in experiment.metrics
        ],
        create_time=timestamp(experiment.create_time),
    )
    for variant in experiment.variants:
        proto = message.variants.add(
            name=variant.name,
            weight=variant.weight,
            prompt_version=variant.prompt_version,
            model=variant.model,
        )
        if variant.parameters:
            json_format.ParseDict(
                dict(variant.parameters), proto.parameters, ignore_unknown_fields=False
            )
    if experiment.start_time is not None:
        message.start_time.CopyFrom(timestamp(experiment.start_time))
    if experiment.stop_time is not None:
        message.stop_time.CopyFrom(timestamp(experiment.stop_time))
    return message

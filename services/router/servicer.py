"""genai.router.v1.RouterService: converts between protos and routing domain types."""

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from genai.common.v1 import money_pb2, routing_pb2
from genai.router.v1 import router_pb2, router_service_pb2, router_service_pb2_grpc
from google.protobuf.duration_pb2 import Duration

from services.common import reasons
from services.common.auth import current_principal
from services.common.errors import FieldViolation, InvalidArgument, NotFound
from services.common.grpc_types import ServicerContext
from services.common.wire import (
    decimal_amount,
    duration,
    money,
    next_offset_token,
    offset_page,
    seconds,
    timestamp,
)
from services.router.adapters.quality import NoQualityScores, QualityScores
from services.router.core.catalog import BackendKind, Capability, ModelEntry
from services.router.core.live import Circuit, Health, Outcome
from services.router.core.router import (
    Candidate,
    Policy,
    Report,
    Router,
    RouteRequest,
    Status,
)

SERVICE_NAME = "genai.router.v1.RouterService"

pb = router_service_pb2
_CAPABILITIES = {
    routing_pb2.CAPABILITY_CHAT: Capability.CHAT,
    routing_pb2.CAPABILITY_JSON_OUTPUT: Capability.JSON_OUTPUT,
    routing_pb2.CAPABILITY_STREAMING: Capability.STREAMING,
    routing_pb2.CAPABILITY_EMBEDDINGS: Capability.EMBEDDINGS,
    routing_pb2.CAPABILITY_COMPLETION: Capability.COMPLETION,
}
_CAPABILITY_PROTOS = {v: k for k, v in _CAPABILITIES.items()}
_POLICIES = {
    routing_pb2.ROUTING_POLICY_COST: Policy.COST,
    routing_pb2.ROUTING_POLICY_LATENCY: Policy.LATENCY,
    routing_pb2.ROUTING_POLICY_QUALITY: Policy.QUALITY,
    routing_pb2.ROUTING_POLICY_WEIGHTED: Policy.WEIGHTED,
    routing_pb2.ROUTING_POLICY_QUALITY_FLOOR: Policy.QUALITY_FLOOR,
}
_POLICY_PROTOS = {v: k for k, v in _POLICIES.items()}
_OUTCOMES = {
    pb.ATTEMPT_RESULT_SUCCESS: Outcome.SUCCESS,
    pb.ATTEMPT_RESULT_FAILED_BEFORE_FIRST_TOKEN: Outcome.FAILED_BEFORE_FIRST_TOKEN,
    pb.ATTEMPT_RESULT_FAILED_AFTER_FIRST_TOKEN: Outcome.FAILED_AFTER_FIRST_TOKEN,
    pb.ATTEMPT_RESULT_OVERLOADED: Outcome.OVERLOADED,
    pb.ATTEMPT_RESULT_CANCELLED: Outcome.CANCELLED,
}
_KINDS = {
    BackendKind.TRITON: router_pb2.BACKEND_KIND_TRITON,
    BackendKind.OPENAI_COMPATIBLE: router_pb2.BACKEND_KIND_OPENAI_COMPATIBLE,
}
_HEALTH = {
    Health.UNKNOWN: router_pb2.HEALTH_STATE_UNSPECIFIED,
    Health.SERVING: router_pb2.HEALTH_STATE_SERVING,
    Health.NOT_SERVING: router_pb2.HEALTH_STATE_NOT_SERVING,
}
_CIRCUITS = {
    Circuit.CLOSED: router_pb2.CIRCUIT_STATE_CLOSED,
    Circuit.OPEN: router_pb2.CIRCUIT_STATE_OPEN,
    Circuit.HALF_OPEN: router_pb2.CIRCUIT_STATE_HALF_OPEN,
}


class RouterServicer(router_service_pb2_grpc.RouterServiceServicer):
    """Serves RouterService from a `Router`; `scores` gives the evaluation scores of
    quality-floor routes (none without it: those fall back to cost, saying why)."""

    def __init__(self, router: Router, scores: QualityScores | None = None) -> None:
        self._router = router
        self._currency = router.catalog.currency
        self._scores: QualityScores = scores or NoQualityScores()

    async def ListModels(
        self, request: pb.ListModelsRequest, context: ServicerContext
    ) -> pb.ListModelsResponse:
        """One page of the catalog in name order."""
        offset, size = offset_page(request.page_size, request.page_token)
        models = sorted(self._router.catalog.models, key=lambda m: m.name)
        page = models[offset : offset + size]
        return pb.ListModelsResponse(
            models=[self._model(m) for m in page],
            next_page_token=next_offset_token(offset, len(page), len(models)),
        )

    async def GetModel(
        self, request: pb.GetModelRequest, context: ServicerContext
    ) -> pb.GetModelResponse:
        """One catalog model."""
        if not request.name:
            raise InvalidArgument(violations=[FieldViolation("name", "is required")])
        model = self._router.catalog.model(request.name)
        if model is None:
            raise NotFound(
                f"no catalog model named {request.name!r}",
                reason=reasons.MODEL_NOT_FOUND,
                metadata={"model": request.name},
            )
        return pb.GetModelResponse(model=self._model(model))

    async def Route(self, request: pb.RouteRequest, context: ServicerContext) -> pb.RouteResponse:
        """Ranks the eligible models and backends (a quality-floor route reads the caller's
        tenant's evaluation scores first)."""
        route = self._route_request(request)
        floor = route.min_quality_score
        if (
            route.policy is Policy.QUALITY_FLOOR
            and not route.model
            and floor is not None
            and 0.0 <= floor <= 1.0
        ):
            evidence = await self._scores.evidence(
                current_principal().tenant_id,
                route.prompt,
                route.quality_dataset,
                route.quality_scorer,
            )
            route = replace(route, quality=evidence)
        decision = self._router.route(route)
        return pb.RouteResponse(
            decision=router_pb2.RouteDecision(
                decision_id=decision.decision_id,
                policy=_POLICY_PROTOS[decision.policy],
                candidates=[self._candidate(c) for c in decision.candidates],
                rejected=[
                    router_pb2.RejectedModel(model=r.model, reason=r.reason)
                    for r in decision.rejected
                ],
                fallback=decision.fallback,
            )
        )

    async def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: ServicerContext
    ) -> pb.ReportOutcomeResponse:
        """Learns from one attempt."""
        violations = []
        if not request.model:
            violations.append(FieldViolation("model", "is required"))
        if not request.backend_id:
            violations.append(FieldViolation("backend_id", "is required"))
        outcome = _OUTCOMES.get(request.result)
        if outcome is None:
            violations.append(FieldViolation("result", "is required"))
        for name in ("first_token_duration", "total_duration"):
            if request.HasField(name) and getattr(request, name).ToNanoseconds() < 0:
                violations.append(FieldViolation(name, "must not be negative"))
        if violations or outcome is None:
            raise InvalidArgument(violations=violations)
        self._router.report(
            Report(
                model=request.model,
                backend_id=request.backend_id,
                outcome=outcome,
                decision_id=request.decision_id,
                first_token_s=seconds(request.first_token_duration)
                if request.HasField("first_token_duration")
                else None,
                total_s=seconds(request.total_duration)
                if request.HasField("total_duration")
                else None,
                output_tokens=request.usage.output_tokens,
                error=request.error,
            )
        )
        return pb.ReportOutcomeResponse()

    async def GetBackendHealth(
        self, request: pb.GetBackendHealthRequest, context: ServicerContext
    ) -> pb.GetBackendHealthResponse:
        """Live status of every backend (of one model when named)."""
        return pb.GetBackendHealthResponse(
            backends=[self._status(s) for s in self._router.statuses(request.model)]
        )

    # ------------------------------------------------------------------------------ conversions

    def _route_request(self, request: pb.RouteRequest) -> RouteRequest:
        p = request.preferences
        violations = []
        required = set()
        for index, capability in enumerate(p.required_capabilities):
            known = _CAPABILITIES.get(capability)
            if known is None:
                violations.append(
                    FieldViolation(f"preferences.required_capabilities[{index}]", "is not set")
                )
            else:
                required.add(known)
        max_cost = None
        if p.HasField("max_cost"):
            max_cost = decimal_amount(p.max_cost)
            if p.max_cost.currency_code != self._currency:
                violations.append(
                    FieldViolation(
                        "preferences.max_cost.currency_code",
                        f"must be {self._currency}, the catalog's currency",
                    )
                )
        if p.policy != routing_pb2.ROUTING_POLICY_UNSPECIFIED and p.policy not in _POLICIES:
            violations.append(FieldViolation("preferences.policy", "is not a routing policy"))
        if violations:
            raise InvalidArgument(violations=violations)
        return RouteRequest(
            input_tokens=request.input_tokens,
            max_output_tokens=request.max_output_tokens,
            policy=_POLICIES.get(p.policy),
            model=p.model,
            required=frozenset(required),
            min_quality_tier=p.min_quality_tier,
            max_cost=max_cost,
            max_first_token_s=seconds(p.max_first_token_duration)
            if p.HasField("max_first_token_duration")
            else None,
            max_total_s=seconds(p.max_total_duration) if p.HasField("max_total_duration") else None,
            unit_id=request.unit_id,
            prompt=request.prompt,
            exclude_backends=frozenset(request.exclude_backends),
            min_quality_score=p.min_quality_score if p.HasField("min_quality_score") else None,
            quality_dataset=p.quality_dataset,
            quality_scorer=p.quality_scorer,
        )

    def _money(self, amount: Decimal) -> money_pb2.Money:
        return money(amount, self._currency)

    def _model(self, model: ModelEntry) -> router_pb2.Model:
        return router_pb2.Model(
            name=model.name,
            display_name=model.display_name,
            capabilities=[_CAPABILITY_PROTOS[c] for c in sorted(model.capabilities)],
            languages=list(model.languages),
            max_context_tokens=model.max_context_tokens,
            max_output_tokens=model.max_output_tokens,
            input_price_per_million_tokens=self._money(model.input_price),
            output_price_per_million_tokens=self._money(model.output_price),
            quality_tier=model.quality_tier,
            latency_targets=router_pb2.LatencyTargets(
                first_token_duration=duration(model.first_token_target_s),
                per_output_token_duration=duration(model.per_token_target_s),
            ),
            weight=model.weight,
            backends=[
                router_pb2.Backend(
                    id=b.id, kind=_KINDS[b.kind], endpoint=b.endpoint, backend_model=b.backend_model
                )
                for b in model.backends
            ],
        )

    def _candidate(self, candidate: Candidate) -> router_pb2.RouteCandidate:
        b = candidate.backend
        return router_pb2.RouteCandidate(
            model=candidate.model.name,
            backend=router_pb2.Backend(
                id=b.id, kind=_KINDS[b.kind], endpoint=b.endpoint, backend_model=b.backend_model
            ),
            estimated_cost=self._money(candidate.estimated_cost),
            predicted_first_token_duration=duration(candidate.predicted_first_token_s),
            predicted_total_duration=duration(candidate.predicted_total_s),
            reason=candidate.reason,
            quality_report_id=candidate.quality.report_id if candidate.quality else "",
            quality_score=candidate.quality.score if candidate.quality else None,
        )

    def _status(self, status: Status) -> router_pb2.BackendStatus:
        live = status.live
        b = status.backend
        message = router_pb2.BackendStatus(
            backend=router_pb2.Backend(
                id=b.id, kind=_KINDS[b.kind], endpoint=b.endpoint, backend_model=b.backend_model
            ),
            model=status.model.name,
            health=_HEALTH[live.health],
            circuit=_CIRCUITS[live.breaker.state],
            in_flight=live.in_flight,
            latency=router_pb2.LatencyStats(
                first_token_ewma_duration=_optional_duration(live.first_token.ewma),
                first_token_p95_duration=_optional_duration(live.first_token.p95()),
                per_output_token_ewma_duration=_optional_duration(live.per_token.ewma),
                per_output_token_p95_duration=_optional_duration(live.per_token.p95()),
                sample_count=live.first_token.count,
                queue_duration=_optional_duration(live.queue_s),
            ),
            request_count=live.requests,
            failure_count=live.failures,
            last_error=live.last_error,
        )
        if live.last_check_time is not None:
            message.last_check_time.CopyFrom(
                timestamp(datetime.fromtimestamp(live.last_check_time, tz=UTC))
            )
        return message


def _optional_duration(value: float | None) -> Duration | None:
    return None if value is None else duration(value)

"""Routing decisions: the capability filter, then a ranking policy, then a backend per model by
power-of-two-choices on requests in flight, every choice with a reason a person can read.

The quality-floor policy ranks by evaluation scores the caller read beforehand
(`RouteRequest.quality`, see `services.router.core.quality`): the cheapest model whose latest
score meets the floor, the reason naming the report. Without scores it falls back to cost,
and without a score meeting the floor to the highest score, saying so (`Decision.fallback`).

Candidates come model by model in policy order; within a model the picked backend comes first
and its other available replicas follow, so a caller failing over before the first token tries
another replica of the same model before the next model (the failover contract of
`genai.router.v1.RouterService`).

When no model is ranked, the error says whether a retry can help: FAILED_PRECONDITION
(NO_ELIGIBLE_MODEL) when every model was rejected for what the request asks, UNAVAILABLE
(BACKEND_UNAVAILABLE) with a retry delay when some model qualified but none of its backends
could take requests (failing health checks, circuit open, excluded by the caller). The delay is
the time until the earliest of those backends may be back: its next health probe, or its
circuit half-opening.
"""

import hashlib
import itertools
import math
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from services.common import reasons
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.router.core.catalog import BackendEntry, Capability, Catalog, ModelEntry
from services.router.core.live import BackendLive, BreakerPolicy, Health, Outcome
from services.router.core.quality import QualityEvidence, ReportScore

WEIGHT_BUCKETS = 10_000
CANDIDATE_MODELS = 4
"""Models a decision lists candidates for (each with all its available replicas): enough to
fail over, and routing stays cheap with large catalogs."""
MAX_QUALITY_NAME = 64
"""Longest `quality_dataset` and `quality_scorer` (evaluation names are 1 to 64 characters)."""
MAX_OPEN_DECISIONS = 100_000
"""Decisions remembered for their outcome reports (oldest forgotten first)."""
DEFAULT_RETRY_S = 1.0
"""When a backend may be back where nothing scheduled says: one the caller excluded, a
half-open circuit whose probe is out, failing health checks while none run."""
MIN_RETRY_S = 0.1
MAX_RETRY_S = 60.0
"""Bounds of BACKEND_UNAVAILABLE's retry delay: an overdue probe does not invite a retry storm,
and a long cool-down does not park the caller."""


class Policy(StrEnum):
    """How eligible models are ranked (`genai.common.v1.RoutingPolicy`)."""

    COST = "cost"
    LATENCY = "latency"
    QUALITY = "quality"
    WEIGHTED = "weighted"
    QUALITY_FLOOR = "quality_floor"


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a request needs and prefers."""

    input_tokens: int
    max_output_tokens: int
    policy: Policy | None = None
    """None: the router's default (cost)."""
    model: str = ""
    """Pins one model (the filters still apply)."""
    required: frozenset[Capability] = frozenset()
    min_quality_tier: int = 0
    max_cost: Decimal | None = None
    max_first_token_s: float | None = None
    max_total_s: float | None = None
    unit_id: str = ""
    prompt: str = ""
    exclude_backends: frozenset[str] = frozenset()
    min_quality_score: float | None = None
    """The evaluation score floor of QUALITY_FLOOR, in [0, 1]."""
    quality_dataset: str = ""
    """The dataset whose reports QUALITY_FLOOR reads; empty: the prompt's gate dataset."""
    quality_scorer: str = ""
    """The scorer whose mean is a report's score; empty: the run's first quality scorer."""
    quality: QualityEvidence | None = None
    """The scores QUALITY_FLOOR ranks with, read before routing (`QualityScores`); None when
    none were read."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One ranked choice."""

    model: ModelEntry
    backend: BackendEntry
    estimated_cost: Decimal
    predicted_first_token_s: float
    predicted_total_s: float
    reason: str
    quality: ReportScore | None = None
    """The evaluation score QUALITY_FLOOR ranked the model by, if any."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A model the filters excluded."""

    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class BackendOutage:
    """Why one backend of a model that qualified took no request, and when it may again."""

    model: str
    backend_id: str
    why: str
    """E.g. `circuit open, half-opens in 7.9 s`."""
    back_in_s: float
    """Seconds until it may take requests again (`DEFAULT_RETRY_S` where nothing says)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The ranked answer for one request."""

    decision_id: str
    policy: Policy
    candidates: tuple[Candidate, ...]
    rejected: tuple[Rejection, ...]
    fallback: str = ""
    """Why the requested policy could not rank and which did instead; "" when it did."""


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of one attempt."""

    model: str
    backend_id: str
    outcome: Outcome
    decision_id: str = ""
    first_token_s: float | None = None
    total_s: float | None = None
    output_tokens: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class Status:
    """The live view of one backend."""

    model: ModelEntry
    backend: BackendEntry
    live: BackendLive


_Replica = tuple[BackendEntry, BackendLive]


@dataclass(slots=True)
class _Ranked:
    model: ModelEntry
    cost: Decimal
    first_token_s: float
    total_s: float
    misses_target: bool
    backends: list[_Replica] = field(default_factory=list)
    score: ReportScore | None = None


class Router:
    """Routes over one catalog and learns from reported outcomes and health checks."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        breaker: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        health_check_interval_s: float | None = None,
    ) -> None:
        self.catalog = catalog
        self._clock = clock
        self._health_check_interval_s = health_check_interval_s
        """Seconds between active health checks (`HealthChecker`); None when none run."""
        self._rng = rng or random.Random()
        policy = breaker or BreakerPolicy()
        self._live: dict[tuple[str, str], BackendLive] = {
            (m.name, b.id): BackendLive.new(policy, clock)
            for m in catalog.models
            for b in m.backends
        }
        """Live state by (model, backend id): one Triton serves several models."""
        self._replicas = [
            (m, tuple((b, self._live[(m.name, b.id)]) for b in m.backends)) for m in catalog.models
        ]
        """Each model with its backends' live state, in catalog order (the hot loop's view)."""
        self._id_prefix = uuid.uuid4().hex[:20]
        self._ids = itertools.count(1)
        """Decision ids: a random per-router prefix and a counter (unique, and cheap)."""
        self._open: OrderedDict[str, tuple[str, str]] = OrderedDict()
        """decision id -> the (model, backend) counted in flight for it."""

    # ------------------------------------------------------------------------------ routing

    def route(self, request: RouteRequest) -> Decision:
        """Ranks the eligible models and backends; raises `InvalidArgument` for a bad request
        and `NotFound` for an unknown pinned model. When no model is ranked it raises
        `Unavailable` (BACKEND_UNAVAILABLE) if some model was rejected only for having no
        available backend, else `FailedPrecondition` (NO_ELIGIBLE_MODEL); see
        `_no_candidate`."""
        _validate(request, self.catalog)
        policy = request.policy or Policy.COST
        rejected: list[Rejection] = []
        down: list[ModelEntry] = []  # rejected only for having no available backend
        ranked: list[_Ranked] = []
        exclude = request.exclude_backends
        outputs_after_first = max(request.max_output_tokens - 1, 0)
        max_first, max_total = request.max_first_token_s, request.max_total_s
        # The hot loop: every model, every replica. Predictions are inlined (see `_predict`).
        for model, replicas in self._replicas:
            reason, cost = self._rejection(model, request)
            if reason:
                rejected.append(Rejection(model.name, reason))
                continue
            available: list[_Replica] = []
            best_first = best_total = math.inf
            for replica in replicas:
                backend, live = replica
                if backend.id in exclude or not live.available:
                    continue
                available.append(replica)
                first_token = live.first_token.ewma
                if first_token is None:
                    first_token = model.first_token_target_s
                per_token = live.per_token.ewma
                if per_token is None:
                    per_token = model.per_token_target_s
                first_token *= 1 + 0.1 * live.in_flight
                if live.queue_s is not None:
                    first_token += live.queue_s
                total = first_token + per_token * outputs_after_first
                if total < best_total:
                    best_first, best_total = first_token, total
            if not available:
                rejected.append(Rejection(model.name, self._no_backend(model, request)))
                down.append(model)
                continue
            misses = (max_first is not None and best_first > max_first) or (
                max_total is not None and best_total > max_total
            )
            ranked.append(_Ranked(model, cost, best_first, best_total, misses, available))
        if not ranked:
            raise self._no_candidate(rejected, down, request)
        fallback = ""
        if policy is Policy.QUALITY_FLOOR and not request.model:
            ranked, policy, fallback, below = _quality_floor(ranked, request)
            rejected += below
        if policy is Policy.QUALITY_FLOOR:
            ordered = ranked[:CANDIDATE_MODELS]  # in `_quality_floor`'s order
        else:
            ordered = self._order(ranked, policy, request)[:CANDIDATE_MODELS]
        # None: a pinned model, not ranked by scores.
        floor = None if request.model else request.min_quality_score or 0.0
        candidates = [
            c
            for position, r in enumerate(ordered)
            for c in self._candidates(r, policy, position, floor, fallback)
        ]
        decision = Decision(
            decision_id=f"{self._id_prefix}{next(self._ids):012x}",
            policy=policy,
            candidates=tuple(candidates),
            rejected=tuple(rejected),
            fallback=fallback,
        )
        first = (candidates[0].model.name, candidates[0].backend.id)
        live = self._live[first]
        live.breaker.take()
        live.in_flight += 1
        self._open[decision.decision_id] = first
        while len(self._open) > MAX_OPEN_DECISIONS:
            _, forgotten = self._open.popitem(last=False)
            self._live[forgotten].in_flight = max(0, self._live[forgotten].in_flight - 1)
        return decision

    def _rejection(self, model: ModelEntry, request: RouteRequest) -> tuple[str, Decimal]:
        """Why `model` cannot take `request` ("" when it can), and the request's cost there."""
        cost = model.cost(request.input_tokens, request.max_output_tokens)
        return self._rejection_reason(model, request, cost), cost

    def _rejection_reason(self, model: ModelEntry, request: RouteRequest, cost: Decimal) -> str:
        if request.model and model.name != request.model:
            return f"not the pinned model {request.model}"
        if model.pinned_only and not request.model:
            return "routed only when pinned by name"
        missing = request.required - model.capabilities
        if missing:
            return "lacks " + ", ".join(sorted(c.value for c in missing))
        needed = request.input_tokens + request.max_output_tokens
        if needed > model.max_context_tokens:
            return (
                f"context {model.max_context_tokens} < {request.input_tokens} + "
                f"{request.max_output_tokens} tokens"
            )
        if request.max_output_tokens > model.max_output_tokens:
            return f"max output {model.max_output_tokens} < {request.max_output_tokens} tokens"
        if model.quality_tier < request.min_quality_tier:
            return f"quality tier {model.quality_tier} < floor {request.min_quality_tier}"
        if request.max_cost is not None and cost > request.max_cost:
            return f"estimated cost {_money(cost, self.catalog.currency)} > ceiling " + _money(
                request.max_cost, self.catalog.currency
            )
        return ""

    def _no_backend(self, model: ModelEntry, request: RouteRequest) -> str:
        parts = [
            f"{b.id} excluded"
            if b.id in request.exclude_backends
            else f"{b.id} {self._live[(model.name, b.id)].unavailable_reason()}"
            for b in model.backends
        ]
        return "no available backend: " + ", ".join(parts)

    def _no_candidate(
        self, rejected: list[Rejection], down: list[ModelEntry], request: RouteRequest
    ) -> FailedPrecondition | Unavailable:
        """The error for a request no model was ranked for.

        With no model in `down`, every rejection is about the request itself and a retry
        cannot help: FAILED_PRECONDITION (NO_ELIGIBLE_MODEL), every model's reason in the
        metadata. Otherwise the request can succeed once a backend is back: UNAVAILABLE
        (BACKEND_UNAVAILABLE), retry after the earliest backend may be back (clamped to
        [`MIN_RETRY_S`, `MAX_RETRY_S`]); the metadata has each of those backends under
        `<model>/<backend id>`, the other models' reasons under their names, and
        `next_probe_seconds`."""
        if not down:
            return FailedPrecondition(
                "no model qualifies: " + "; ".join(f"{r.model}: {r.reason}" for r in rejected),
                reason=reasons.NO_ELIGIBLE_MODEL,
                metadata={r.model: r.reason for r in rejected},
            )
        outages = [
            self._outage(model, backend, backend.id in request.exclude_backends)
            for model in down
            for backend in model.backends
        ]
        retry_s = min(max(min(o.back_in_s for o in outages), MIN_RETRY_S), MAX_RETRY_S)
        out = {f"{o.model}/{o.backend_id}": o.why for o in outages}
        down_names = {model.name for model in down}
        metadata = {r.model: r.reason for r in rejected if r.model not in down_names}
        metadata.update(out)
        metadata["next_probe_seconds"] = f"{retry_s:.1f}"
        return Unavailable(
            "every backend of the models that qualify is out: "
            + "; ".join(f"{key}: {why}" for key, why in out.items())
            + f"; next probe due in {retry_s:.1f} s",
            retry_after=retry_s,
            reason=reasons.BACKEND_UNAVAILABLE,
            metadata=metadata,
        )

    def _outage(self, model: ModelEntry, backend: BackendEntry, excluded: bool) -> BackendOutage:
        """Why `backend` took no request now, and when it may again: its next health probe
        (the last check plus the health-check interval) and its circuit half-opening, the
        later of the two where both keep it out."""
        if excluded:
            return BackendOutage(model.name, backend.id, "excluded by the caller", DEFAULT_RETRY_S)
        live = self._live[(model.name, backend.id)]
        causes: list[str] = []
        back_in = 0.0
        if live.health is Health.NOT_SERVING:
            interval = self._health_check_interval_s
            if interval is None or live.last_check_at is None:
                back_in = DEFAULT_RETRY_S
            else:
                back_in = max(live.last_check_at + interval - self._clock(), 0.0)
            causes.append(
                f"failing health checks (last check: {live.health_error or 'not serving'}), "
                f"next probe in {back_in:.1f} s"
            )
        half_opens = live.breaker.half_opens_in()
        if half_opens is not None:
            causes.append(f"circuit open, half-opens in {half_opens:.1f} s")
            back_in = max(back_in, half_opens)
        elif not live.breaker.allows() or not causes:
            # Half-open with its probes out (or half-opened since the decision looked).
            causes.append("circuit half-open, its probe still out")
            back_in = max(back_in, DEFAULT_RETRY_S)
        return BackendOutage(model.name, backend.id, " and ".join(causes), back_in)

    def _order(self, ranked: list[_Ranked], policy: Policy, request: RouteRequest) -> list[_Ranked]:
        match policy:
            case Policy.COST:
                key = lambda r: (r.misses_target, r.cost, -r.model.quality_tier, r.model.name)  # noqa: E731
            case Policy.LATENCY:
                key = lambda r: (r.misses_target, r.total_s, r.first_token_s, r.model.name)  # noqa: E731
            case Policy.QUALITY:
                key = lambda r: (r.misses_target, -r.model.quality_tier, r.cost, r.model.name)  # noqa: E731
            case Policy.QUALITY_FLOOR:  # ordered by `_quality_floor` instead; here for mypy
                key = lambda r: (r.misses_target, r.cost, 0, r.model.name)  # noqa: E731
            case Policy.WEIGHTED:
                chosen = self._weighted_pick(ranked, request.unit_id)
                rest = sorted(
                    (r for r in ranked if r is not chosen), key=lambda r: (r.cost, r.model.name)
                )
                return [chosen, *rest]
        return sorted(ranked, key=key)

    def _weighted_pick(self, ranked: list[_Ranked], unit_id: str) -> _Ranked:
        weighted = [r for r in ranked if r.model.weight > 0] or ranked
        total = sum(r.model.weight for r in weighted) or len(weighted)
        if unit_id:  # sticky: the same unit lands in the same bucket
            digest = hashlib.sha256(unit_id.encode()).digest()
            point = int.from_bytes(digest[:8], "big") % WEIGHT_BUCKETS / WEIGHT_BUCKETS * total
        else:
            point = self._rng.random() * total
        for r in sorted(weighted, key=lambda r: r.model.name):
            point -= r.model.weight or 1
            if point < 0:
                return r
        return weighted[-1]

    def _candidates(
        self, ranked: _Ranked, policy: Policy, position: int, floor: float | None, fallback: str
    ) -> list[Candidate]:
        replicas = self._power_of_two(ranked.backends)
        why = _why(ranked, policy, position, self.catalog.currency, floor)
        if fallback:
            why = f"{fallback}; {why}"
        out = []
        for index, (backend, live) in enumerate(replicas):
            first_token_s, _ = _predict(ranked.model, live, 1)
            total_s = ranked.total_s - ranked.first_token_s + first_token_s
            where = (
                f"backend {backend.id}: {live.in_flight} in flight"
                if index == 0
                else f"fallback replica {backend.id}"
            )
            out.append(
                Candidate(
                    model=ranked.model,
                    backend=backend,
                    estimated_cost=ranked.cost,
                    predicted_first_token_s=first_token_s,
                    predicted_total_s=total_s,
                    reason=f"{why}; {where}",
                    quality=ranked.score,
                )
            )
        return out

    def _power_of_two(self, replicas: list[_Replica]) -> list[_Replica]:
        """Two random replicas, the less loaded first, then the rest by load."""
        if len(replicas) == 1:
            return replicas

        def load(replica: _Replica) -> int:
            return replica[1].in_flight

        first = min(self._rng.sample(replicas, 2), key=load)
        return [first, *sorted((r for r in replicas if r is not first), key=load)]

    # ------------------------------------------------------------------------------ learning

    def report(self, report: Report) -> None:
        """Learns from one attempt: latency statistics, failure counts, the circuit breaker, and
        the end of the decision's in-flight count."""
        model = self.catalog.model(report.model)
        if model is None:
            raise NotFound(
                f"no catalog model named {report.model!r}",
                reason=reasons.MODEL_NOT_FOUND,
                metadata={"model": report.model},
            )
        if all(b.id != report.backend_id for b in model.backends):
            raise NotFound(
                f"model {report.model!r} has no backend {report.backend_id!r}",
                metadata={"model": report.model, "backend_id": report.backend_id},
            )
        live = self._live[(report.model, report.backend_id)]
        counted = self._open.pop(report.decision_id, None) if report.decision_id else None
        if counted is not None:
            self._live[counted].in_flight = max(0, self._live[counted].in_flight - 1)
        if report.outcome is Outcome.CANCELLED:
            return
        live.requests += 1
        if report.outcome is Outcome.SUCCESS:
            if report.first_token_s is not None:
                live.first_token.add(report.first_token_s)
                if report.total_s is not None and report.output_tokens > 1:
                    live.per_token.add(
                        max(report.total_s - report.first_token_s, 0) / (report.output_tokens - 1)
                    )
        elif report.outcome is not Outcome.OVERLOADED:
            live.failures += 1
            live.last_error = report.error[:500]
        live.breaker.record(report.outcome)

    def set_health(self, model: str, backend_id: str, health: Health, error: str = "") -> None:
        """Records an active health check's result; `error` is what a failing check found
        (`HTTP 503`), also kept as the backend's last error (`health check: HTTP 503`)."""
        live = self._live[(model, backend_id)]
        live.health = health
        live.health_error = error[:500] if health is Health.NOT_SERVING else ""
        live.last_check_time = time.time()
        live.last_check_at = self._clock()
        if error:
            live.last_error = f"health check: {error}"[:500]

    def set_queue_time(self, model: str, backend_id: str, seconds: float) -> None:
        """Records the backend's current queueing delay (see `BackendLive.queue_s`)."""
        self._live[(model, backend_id)].queue_s = max(seconds, 0.0)

    def statuses(self, model_name: str = "") -> list[Status]:
        """Every backend's live view (of one model when named), by model then backend id."""
        if model_name and self.catalog.model(model_name) is None:
            raise NotFound(
                f"no catalog model named {model_name!r}",
                reason=reasons.MODEL_NOT_FOUND,
                metadata={"model": model_name},
            )
        return [
            Status(m, b, self._live[(m.name, b.id)])
            for m in sorted(self.catalog.models, key=lambda m: m.name)
            if not model_name or m.name == model_name
            for b in sorted(m.backends, key=lambda b: b.id)
        ]


def _predict(model: ModelEntry, live: BackendLive, outputs: int) -> tuple[float, float]:
    """Predicted (time to first token, total time for `outputs` tokens) on a backend: live
    EWMAs when there are samples, the catalog's targets before; requests this router has in
    flight there add queueing, and so does the wait the backend reports in its own queue now
    (Triton's statistics see every client's load, which this router's counts cannot)."""
    first = live.first_token.ewma
    if first is None:
        first = model.first_token_target_s
    per_token = live.per_token.ewma
    if per_token is None:
        per_token = model.per_token_target_s
    first *= 1 + 0.1 * live.in_flight
    if live.queue_s is not None:
        first += live.queue_s
    return first, first + per_token * max(outputs - 1, 0)


def _quality_floor(
    ranked: list[_Ranked], request: RouteRequest
) -> tuple[list[_Ranked], Policy, str, list[Rejection]]:
    """QUALITY_FLOOR over the eligible models: (them in order, the policy that ordered them,
    the fallback text, the models it rejected).

    The models whose latest score meets the floor, cheapest first; the others are rejected,
    each saying why. With no score for any eligible model (or none readable) it falls back to
    COST; when no score meets the floor, to the highest score (models without one last)."""
    evidence = request.quality
    floor = request.min_quality_score or 0.0
    if evidence is None or evidence.unavailable:
        why = evidence.unavailable if evidence is not None else "no evaluation scores were read"
        return ranked, Policy.COST, f"{why}; fell back to cost", []
    for r in ranked:
        r.score = evidence.scores.get(r.model.name)
    if all(r.score is None for r in ranked):
        return (
            ranked,
            Policy.COST,
            f"no evaluation report for prompt {evidence.prompt} on dataset {evidence.dataset}; "
            "fell back to cost",
            [],
        )
    passing = [r for r in ranked if r.score is not None and r.score.score >= floor]
    if passing:
        passing.sort(key=lambda r: (r.misses_target, r.cost, -_score(r), r.model.name))
        kept = {id(r) for r in passing}
        rejected = [
            Rejection(r.model.name, _below_floor(r.score, evidence, floor))
            for r in ranked
            if id(r) not in kept
        ]
        return passing, Policy.QUALITY_FLOOR, "", rejected
    ordered = sorted(
        ranked, key=lambda r: (r.score is None, -_score(r), r.misses_target, r.cost, r.model.name)
    )
    best = ordered[0]
    assert best.score is not None  # some model has a score
    return (
        ordered,
        Policy.QUALITY_FLOOR,
        f"no model's latest evaluation of prompt {evidence.prompt} on dataset "
        f"{evidence.dataset} meets floor {floor:g} (best: {best.model.name} "
        f"{best.score.score:.3f} in report {best.score.report_id}); fell back to the highest "
        "score",
        [],
    )


def _below_floor(score: ReportScore | None, evidence: QualityEvidence, floor: float) -> str:
    if score is None:
        return f"no evaluation report for prompt {evidence.prompt} on dataset {evidence.dataset}"
    return (
        f"report {score.report_id} on dataset {score.dataset} scored {score.score:.3f} < floor "
        f"{floor:g} ({score.scorer})"
    )


def _score(ranked: _Ranked) -> float:
    return ranked.score.score if ranked.score is not None else -1.0


def _why(ranked: _Ranked, policy: Policy, position: int, currency: str, floor: float | None) -> str:
    rank = "best" if position == 0 else f"rank {position + 1}"
    cost = _money(ranked.cost, currency)
    miss = ", predicted to miss the latency target" if ranked.misses_target else ""
    match policy:
        case Policy.COST:
            detail = f"estimated cost {cost}, quality tier {ranked.model.quality_tier}"
        case Policy.LATENCY:
            detail = (
                f"predicted first token {ranked.first_token_s * 1000:.0f} ms, total "
                f"{ranked.total_s * 1000:.0f} ms"
            )
        case Policy.QUALITY:
            detail = f"quality tier {ranked.model.quality_tier}, estimated cost {cost}"
        case Policy.WEIGHTED:
            detail = (
                f"weight {ranked.model.weight:g}"
                if position == 0
                else f"by cost {cost} after the split"
            )
        case Policy.QUALITY_FLOOR:
            score = ranked.score
            if floor is None:
                detail = f"{ranked.model.name}: pinned, evaluation scores not consulted"
            elif score is None:
                detail = f"{ranked.model.name}: no evaluation report, estimated cost {cost}"
            else:
                meets = score.score >= floor
                detail = (
                    f"{ranked.model.name}: report {score.report_id} on dataset {score.dataset} "
                    f"scored {score.score:.3f} {'>=' if meets else '<'} floor {floor:g} "
                    f"({score.scorer}, prompt version {score.prompt_version}), "
                    f"estimated cost {cost}"
                )
                if meets and position == 0:
                    detail += ", cheapest such"
    return f"{policy.value}: {rank}, {detail}{miss}"


def _money(amount: Decimal, currency: str) -> str:
    return f"{amount.normalize():f} {currency}"


def _validate(request: RouteRequest, catalog: Catalog) -> None:
    violations = []
    if request.input_tokens < 0:
        violations.append(FieldViolation("input_tokens", "must be >= 0"))
    if request.max_output_tokens < 1:
        violations.append(FieldViolation("max_output_tokens", "must be >= 1"))
    if not 0 <= request.min_quality_tier <= 10:
        violations.append(FieldViolation("preferences.min_quality_tier", "must be in [0, 10]"))
    score = request.min_quality_score
    if score is not None and not 0.0 <= score <= 1.0:  # NaN fails too
        violations.append(FieldViolation("preferences.min_quality_score", "must be in [0, 1]"))
    elif score is None and request.policy is Policy.QUALITY_FLOOR and not request.model:
        violations.append(
            FieldViolation(
                "preferences.min_quality_score", "is required with ROUTING_POLICY_QUALITY_FLOOR"
            )
        )
    if request.max_cost is not None and request.max_cost < 0:
        violations.append(FieldViolation("preferences.max_cost", "must be >= 0"))
    for field_name, name in (
        ("preferences.quality_dataset", request.quality_dataset),
        ("preferences.quality_scorer", request.quality_scorer),
    ):
        if len(name) > MAX_QUALITY_NAME:
            violations.append(FieldViolation(field_name, f"at most {MAX_QUALITY_NAME} characters"))
    for field_name, value in (
        ("preferences.max_first_token_duration", request.max_first_token_s),
        ("preferences.max_total_duration", request.max_total_s),
    ):
        if value is not None and value <= 0:
            violations.append(FieldViolation(field_name, "must be positive"))
    if violations:
        raise InvalidArgument(violations=violations)
    if request.model and catalog.model(request.model) is None:
        raise NotFound(
            f"no catalog model named {request.model!r}",
            reason=reasons.MODEL_NOT_FOUND,
            metadata={"model": request.model},
        )

"""The router's decisions, table-driven: the capability filter and its reasons, each policy,
their composition, power-of-two-choices, learning from outcomes, and the circuit breaker."""

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

from services.common.config import ConfigError
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.router.config import DEFAULT_CATALOG, load_catalog
from services.router.core.catalog import (
    BackendEntry,
    BackendKind,
    Capability,
    Catalog,
    ModelEntry,
)
from services.router.core.live import BreakerPolicy, Circuit, Health, Outcome
from services.router.core.router import Policy, Report, Router, RouteRequest

C = Capability


def _model(
    name: str,
    *,
    tier: int,
    price: str,
    context: int = 8192,
    caps: frozenset[Capability] = frozenset({C.CHAT, C.STREAMING}),
    first_token_ms: float = 100,
    weight: float = 1,
    replicas: int = 1,
) -> ModelEntry:
    return ModelEntry(
        name=name,
        display_name=name,
        capabilities=caps,
        languages=("en",),
        max_context_tokens=context,
        max_output_tokens=min(context, 4096),
        input_price=Decimal(price),
        output_price=Decimal(price) * 2,
        quality_tier=tier,
        first_token_target_s=first_token_ms / 1000,
        per_token_target_s=0.02,
        weight=weight,
        backends=tuple(
            BackendEntry(f"{name}-{i}", BackendKind.TRITON, f"10.0.0.{i}:8001", "ensemble")
            for i in range(replicas)
        ),
    )


CATALOG = Catalog(
    currency="USD",
    models=(
        _model("small", tier=2, price="0.1", context=2048, first_token_ms=50),
        _model("medium", tier=5, price="1", caps=frozenset({C.CHAT, C.STREAMING, C.JSON_OUTPUT})),
        _model("large", tier=9, price="10", context=128_000, first_token_ms=400, replicas=3),
    ),
)


def _router(**kw: object) -> Router:
    return Router(CATALOG, rng=random.Random(7), **kw)  # type: ignore[arg-type]


def _names(router: Router, request: RouteRequest) -> list[str]:
    seen: list[str] = []
    for candidate in router.route(request).candidates:
        if candidate.model.name not in seen:
            seen.append(candidate.model.name)
    return seen


@pytest.mark.parametrize(
    ("request_", "expected", "rejected"),
    [
        (RouteRequest(100, 100, Policy.COST), ["small", "medium", "large"], {}),
        (RouteRequest(100, 100, Policy.QUALITY), ["large", "medium", "small"], {}),
        (RouteRequest(100, 100, Policy.LATENCY), ["small", "medium", "large"], {}),
        (
            RouteRequest(1500, 1000, Policy.COST),
            ["medium", "large"],
            {"small": "context 2048 < 1500 + 1000 tokens"},
        ),
        (
            RouteRequest(100, 100, Policy.COST, required=frozenset({C.JSON_OUTPUT})),
            ["medium"],
            {"small": "lacks json_output", "large": "lacks json_output"},
        ),
        (
            RouteRequest(100, 100, Policy.COST, min_quality_tier=5),
            ["medium", "large"],
            {"small": "quality tier 2 < floor 5"},
        ),
        (
            RouteRequest(1000, 1000, Policy.QUALITY, max_cost=Decimal("0.01")),
            ["medium", "small"],
            {"large": "estimated cost 0.03 USD > ceiling 0.01 USD"},
        ),
        (
            RouteRequest(100, 100, Policy.COST, model="large"),
            ["large"],
            {"small": "not the pinned model large", "medium": "not the pinned model large"},
        ),
        (
            # Latency targets rank the models predicted to miss them last, whatever the policy.
            RouteRequest(100, 100, Policy.QUALITY, max_first_token_s=0.2),
            ["medium", "small", "large"],
            {},
        ),
        (
            RouteRequest(100, 100, Policy.COST, exclude_backends=frozenset({"small-0"})),
            ["medium", "large"],
            {"small": "no available backend: small-0 excluded"},
        ),
    ],
    ids=[
        "cost",
        "quality",
        "latency",
        "context",
        "capability",
        "quality-floor",
        "cost-ceiling",
        "pinned",
        "latency-target",
        "excluded",
    ],
)
def test_policies_filters_and_their_reasons(
    request_: RouteRequest, expected: list[str], rejected: dict[str, str]
) -> None:
    router = _router()
    decision = router.route(request_)
    assert _names(router, request_) == expected
    assert {r.model: r.reason for r in decision.rejected} == rejected
    best = decision.candidates[0]
    assert best.reason.startswith(f"{(request_.policy or Policy.COST).value}: best")
    assert best.estimated_cost == best.model.cost(request_.input_tokens, request_.max_output_tokens)


def test_each_replica_of_a_model_is_a_candidate_in_order_before_the_next_model() -> None:
    decision = _router().route(RouteRequest(100, 100, Policy.QUALITY))
    models = [c.model.name for c in decision.candidates]
    assert models == ["large", "large", "large", "medium", "small"]
    assert {c.backend.id for c in decision.candidates[:3]} == {"large-0", "large-1", "large-2"}
    assert "in flight" in decision.candidates[0].reason
    assert "fallback replica" in decision.candidates[1].reason


def test_power_of_two_choices_spreads_load_over_replicas() -> None:
    router = _router()
    picks = Counter(
        router.route(RouteRequest(100, 100, Policy.QUALITY)).candidates[0].backend.id
        for _ in range(300)
    )  # no outcome reported: every decision stays in flight
    assert set(picks) == {"large-0", "large-1", "large-2"}
    assert max(picks.values()) - min(picks.values()) <= 2


def test_nothing_eligible_is_failed_precondition_with_every_reason() -> None:
    with pytest.raises(FailedPrecondition) as raised:
        _router().route(RouteRequest(200_000, 100, Policy.COST))
    assert raised.value.reason == "NO_ELIGIBLE_MODEL"
    assert set(raised.value.metadata) == {"small", "medium", "large"}
    assert raised.value.metadata["large"] == "context 128000 < 200000 + 100 tokens"


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (RouteRequest(-1, 0), {"input_tokens", "max_output_tokens"}),
        (RouteRequest(1, 1, min_quality_tier=11), {"preferences.min_quality_tier"}),
        (RouteRequest(1, 1, max_total_s=0.0), {"preferences.max_total_duration"}),
    ],
)
def test_bad_requests_name_every_field(request_: RouteRequest, fields: set[str]) -> None:
    with pytest.raises(InvalidArgument) as raised:
        _router().route(request_)
    assert {v.field for v in raised.value.violations} == fields


def test_an_unknown_pinned_model_is_not_found() -> None:
    with pytest.raises(NotFound):
        _router().route(RouteRequest(1, 1, model="nope"))


def test_weighted_splits_follow_weights_and_stick_to_the_unit() -> None:
    catalog = replace(
        CATALOG,
        models=tuple(replace(m, weight=w) for m, w in zip(CATALOG.models, (3, 1, 0), strict=True)),
    )
    router = Router(catalog, rng=random.Random(1))
    firsts = Counter(
        router.route(RouteRequest(10, 10, Policy.WEIGHTED, unit_id=f"user-{i}"))
        .candidates[0]
        .model.name
        for i in range(4000)
    )
    assert firsts["large"] == 0
    assert 0.70 < firsts["small"] / 4000 < 0.80
    again = {
        router.route(RouteRequest(10, 10, Policy.WEIGHTED, unit_id="user-42"))
        .candidates[0]
        .model.name
        for _ in range(20)
    }
    assert len(again) == 1


def test_live_statistics_steer_the_latency_policy() -> None:
    router = _router()
    request = RouteRequest(100, 100, Policy.LATENCY)
    assert router.route(request).candidates[0].model.name == "small"
    for _ in range(20):  # small turns out slow, medium fast
        router.report(
            Report(
                "small",
                "small-0",
                Outcome.SUCCESS,
                first_token_s=2.0,
                total_s=4.0,
                output_tokens=100,
            )
        )
        router.report(
            Report(
                "medium",
                "medium-0",
                Outcome.SUCCESS,
                first_token_s=0.01,
                total_s=0.5,
                output_tokens=100,
            )
        )
    decision = router.route(request)
    assert decision.candidates[0].model.name == "medium"
    assert "predicted first token 10 ms" in decision.candidates[0].reason
    [status] = router.statuses("medium")
    assert status.live.first_token.p95() == pytest.approx(0.01)
    assert status.live.per_token.ewma == pytest.approx(0.49 / 99)


def test_the_breaker_opens_moves_traffic_and_half_opens_after_the_cooldown() -> None:
    now = [0.0]
    router = Router(
        CATALOG,
        breaker=BreakerPolicy(consecutive_failures=3, cooldown_s=5.0),
        clock=lambda: now[0],
        rng=random.Random(3),
    )
    request = RouteRequest(100, 100, Policy.COST)
    for _ in range(3):
        decision = router.route(request)
        assert decision.candidates[0].backend.id == "small-0"
        router.report(
            Report(
                "small",
                "small-0",
                Outcome.FAILED_BEFORE_FIRST_TOKEN,
                decision.decision_id,
                error="boom",
            )
        )

    def circuit() -> Circuit:
        return router.statuses("small")[0].live.breaker.state

    assert circuit() is Circuit.OPEN
    decision = router.route(request)
    assert decision.candidates[0].model.name == "medium"
    assert decision.rejected[0].reason == "no available backend: small-0 circuit open"
    now[0] = 5.0  # cool-down over: one probe goes to small
    probe = router.route(request)
    assert probe.candidates[0].backend.id == "small-0"
    assert router.route(request).candidates[0].model.name == "medium"  # only one probe
    router.report(
        Report("small", "small-0", Outcome.SUCCESS, probe.decision_id, first_token_s=0.05)
    )
    assert circuit() is Circuit.CLOSED
    assert router.route(request).candidates[0].backend.id == "small-0"


def test_cancellations_and_overloads_do_not_open_the_breaker() -> None:
    router = Router(CATALOG, breaker=BreakerPolicy(consecutive_failures=2))
    for outcome in [Outcome.CANCELLED, Outcome.OVERLOADED] * 5:
        router.report(Report("small", "small-0", outcome))
    [status] = router.statuses("small")
    assert status.live.breaker.state is Circuit.CLOSED
    assert status.live.failures == 0


def test_a_failing_health_check_takes_a_backend_out() -> None:
    router = _router()
    router.set_health("small", "small-0", Health.NOT_SERVING, "ModelReady: UNAVAILABLE")
    decision = router.route(RouteRequest(100, 100, Policy.COST))
    assert decision.candidates[0].model.name == "medium"
    assert decision.rejected[0].reason == "no available backend: small-0 failing health checks"


def test_in_flight_counts_end_with_the_reported_outcome() -> None:
    router = _router()
    decision = router.route(RouteRequest(100, 100, Policy.COST))
    [status] = router.statuses("small")
    assert status.live.in_flight == 1
    router.report(Report("small", "small-0", Outcome.SUCCESS, decision.decision_id))
    assert status.live.in_flight == 0


def test_the_shipped_catalog_loads(tmp_path: Path) -> None:
    catalog = load_catalog(DEFAULT_CATALOG, local_triton="127.0.0.1:8001")
    assert [m.name for m in catalog.models] == [
        "smollm2-135m-instruct",
        "gemma3-270m",
        "zero",
        "all-minilm-l6-v2",
    ]
    assert catalog.models[0].backends[0].endpoint == "127.0.0.1:8001"
    router = Router(catalog)
    decision = router.route(RouteRequest(100, 100, Policy.COST, required=frozenset({C.CHAT})))
    assert [c.model.name for c in decision.candidates] == ["smollm2-135m-instruct"]
    assert [(r.model, r.reason) for r in decision.rejected] == [
        ("gemma3-270m", "lacks chat"),
        ("zero", "routed only when pinned by name"),
        ("all-minilm-l6-v2", "routed only when pinned by name"),
    ]
    text = router.route(RouteRequest(100, 100, Policy.COST, required=frozenset({C.COMPLETION})))
    assert {c.model.name for c in text.candidates} == {"smollm2-135m-instruct", "gemma3-270m"}
    unrequired = router.route(RouteRequest(100, 100, Policy.COST))
    assert "all-minilm-l6-v2" not in {c.model.name for c in unrequired.candidates}
    pinned = router.route(RouteRequest(100, 100, model="zero"))
    assert [c.model.name for c in pinned.candidates] == ["zero"]
    embedding = catalog.model("all-minilm-l6-v2")
    assert embedding is not None
    assert (embedding.capabilities, embedding.output_price) == (
        frozenset({C.EMBEDDINGS}),
        Decimal(0),
    )
    assert embedding.input_price > 0
    assert embedding.backends[0].backend_model == "minilm"

    bad = tmp_path / "catalog.yaml"
    bad.write_text(
        "currency: usd\nmodels:\n  - name: Bad Name\n    colour: red\n    backends: []\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_catalog(bad)
    problems = "\n".join(raised.value.problems)
    for expected in ("currency", "models.0.name", "models.0.colour", "models.0.backends"):
        assert expected in problems


def test_a_backends_own_queue_time_moves_the_latency_policy() -> None:
    """Triton's queue wait (read from its statistics by the health checks) counts even when
    this router has nothing in flight there: other clients' load makes a backend slower."""
    request = RouteRequest(100, 100, Policy.LATENCY)
    plain, queued = _router(), _router()
    queued.set_queue_time("small", "small-0", 5.0)

    before = plain.route(request)
    after = queued.route(request)

    assert before.candidates[0].model.name == "small"
    assert after.candidates[0].model.name != "small"
    small_before = next(c for c in before.candidates if c.model.name == "small")
    small_after = next(c for c in after.candidates if c.model.name == "small")
    assert small_after.predicted_first_token_s == pytest.approx(
        small_before.predicted_first_token_s + 5.0
    )


# ------------------------------------------------------------------ no candidate: down or never


def _clocked(now: list[float], *, interval: float | None = 5.0, cooldown: float = 10.0) -> Router:
    """A router on a fake clock whose circuits open at the first failure."""
    return Router(
        CATALOG,
        breaker=BreakerPolicy(consecutive_failures=1, cooldown_s=cooldown),
        clock=lambda: now[0],
        rng=random.Random(7),
        health_check_interval_s=interval,
    )


def _fails(router: Router, model: str, backend_id: str) -> None:
    router.report(Report(model, backend_id, Outcome.FAILED_BEFORE_FIRST_TOKEN, error="boom"))


def _health_fails(now: list[float], router: Router) -> RouteRequest:
    router.set_health("small", "small-0", Health.NOT_SERVING, "HTTP 503")
    now[0] += 1.8
    return RouteRequest(100, 100, model="small")


def _circuit_opens(now: list[float], router: Router) -> RouteRequest:
    _fails(router, "small", "small-0")
    now[0] += 2.1
    return RouteRequest(100, 100, model="small")


def _all_excluded(now: list[float], router: Router) -> RouteRequest:
    return RouteRequest(
        100, 100, model="large", exclude_backends=frozenset({"large-0", "large-1", "large-2"})
    )


def _one_lacks_a_capability_the_other_is_down(now: list[float], router: Router) -> RouteRequest:
    router.set_health("medium", "medium-0", Health.NOT_SERVING, "UNAVAILABLE")
    now[0] += 4.0
    return RouteRequest(100, 100, required=frozenset({C.JSON_OUTPUT}))


def _the_earliest_replica_counts(now: list[float], router: Router) -> RouteRequest:
    _fails(router, "large", "large-0")  # half-opens at 10
    router.set_health("large", "large-1", Health.NOT_SERVING, "HTTP 502")  # probed at 5
    now[0] += 3.0
    router.set_health("large", "large-2", Health.NOT_SERVING, "HTTP 500")  # probed at 8
    now[0] += 1.0
    return RouteRequest(100, 100, model="large")


def _failing_and_open_until_the_later(now: list[float], router: Router) -> RouteRequest:
    router.set_health("small", "small-0", Health.NOT_SERVING, "HTTP 503")  # probed at 5
    _fails(router, "small", "small-0")  # half-opens at 10
    now[0] += 4.0
    return RouteRequest(100, 100, model="small")


def _probe_out(now: list[float], router: Router) -> RouteRequest:
    _fails(router, "small", "small-0")
    now[0] += 10.0
    request = RouteRequest(100, 100, model="small")
    router.route(request)  # half-open: this decision takes the one probe
    return request


def _overdue_probe(now: list[float], router: Router) -> RouteRequest:
    router.set_health("small", "small-0", Health.NOT_SERVING, "HTTP 503")
    now[0] += 9.0  # the check due at 5 has not answered yet
    return RouteRequest(100, 100, model="small")


NOT_PINNED_SMALL = {"medium": "not the pinned model small", "large": "not the pinned model small"}
NOT_PINNED_LARGE = {"small": "not the pinned model large", "medium": "not the pinned model large"}


@pytest.mark.parametrize(
    ("setup", "retry_after", "metadata"),
    [
        (
            _health_fails,
            3.2,
            {
                **NOT_PINNED_SMALL,
                "small/small-0": "failing health checks (last check: HTTP 503), next probe in "
                "3.2 s",
            },
        ),
        (
            _circuit_opens,
            7.9,
            {**NOT_PINNED_SMALL, "small/small-0": "circuit open, half-opens in 7.9 s"},
        ),
        (
            _all_excluded,
            1.0,
            {
                **NOT_PINNED_LARGE,
                "large/large-0": "excluded by the caller",
                "large/large-1": "excluded by the caller",
                "large/large-2": "excluded by the caller",
            },
        ),
        (
            _one_lacks_a_capability_the_other_is_down,
            1.0,
            {
                "small": "lacks json_output",
                "large": "lacks json_output",
                "medium/medium-0": "failing health checks (last check: UNAVAILABLE), next "
                "probe in 1.0 s",
            },
        ),
        (
            _the_earliest_replica_counts,
            1.0,
            {
                **NOT_PINNED_LARGE,
                "large/large-0": "circuit open, half-opens in 6.0 s",
                "large/large-1": "failing health checks (last check: HTTP 502), next probe in "
                "1.0 s",
                "large/large-2": "failing health checks (last check: HTTP 500), next probe in "
                "4.0 s",
            },
        ),
        (
            _failing_and_open_until_the_later,
            6.0,
            {
                **NOT_PINNED_SMALL,
                "small/small-0": "failing health checks (last check: HTTP 503), next probe in "
                "1.0 s and circuit open, half-opens in 6.0 s",
            },
        ),
        (
            _probe_out,
            1.0,
            {**NOT_PINNED_SMALL, "small/small-0": "circuit half-open, its probe still out"},
        ),
        (
            _overdue_probe,
            0.1,
            {
                **NOT_PINNED_SMALL,
                "small/small-0": "failing health checks (last check: HTTP 503), next probe in "
                "0.0 s",
            },
        ),
    ],
    ids=[
        "failing-health-checks",
        "circuit-open",
        "all-excluded",
        "mixed",
        "earliest-replica",
        "health-and-circuit",
        "half-open-probe-out",
        "overdue-probe",
    ],
)
def test_qualifying_models_whose_backends_are_all_out_are_unavailable_until_one_is_back(
    setup: Callable[[list[float], Router], RouteRequest],
    retry_after: float,
    metadata: dict[str, str],
) -> None:
    now = [100.0]
    router = _clocked(now)
    request = setup(now, router)

    with pytest.raises(Unavailable) as raised:
        router.route(request)

    error = raised.value
    assert error.reason == "BACKEND_UNAVAILABLE"
    assert error.retry_after == pytest.approx(retry_after)
    assert error.metadata == {**metadata, "next_probe_seconds": f"{retry_after:.1f}"}
    for key, why in metadata.items():
        if "/" in key:
            assert f"{key}: {why}" in error.message
    assert error.message.endswith(f"; next probe due in {retry_after:.1f} s")


@pytest.mark.parametrize(
    ("interval", "cooldown", "retry_after", "why"),
    [
        (None, 10.0, 1.0, "failing health checks (last check: HTTP 503), next probe in 1.0 s"),
        (5.0, 600.0, 60.0, "circuit open, half-opens in 600.0 s"),
    ],
    ids=["no-health-checks-running", "long-cooldown-clamped"],
)
def test_the_retry_delay_has_a_default_and_a_ceiling(
    interval: float | None, cooldown: float, retry_after: float, why: str
) -> None:
    now = [0.0]
    router = _clocked(now, interval=interval, cooldown=cooldown)
    if interval is None:
        router.set_health("small", "small-0", Health.NOT_SERVING, "HTTP 503")
    else:
        _fails(router, "small", "small-0")

    with pytest.raises(Unavailable) as raised:
        router.route(RouteRequest(100, 100, model="small"))

    assert raised.value.retry_after == pytest.approx(retry_after)
    assert raised.value.metadata["small/small-0"] == why


def test_a_request_no_model_fits_stays_failed_precondition_with_backends_down() -> None:
    """The static filters come first: a model too small for the request is rejected for that,
    whatever its backends' state, so a retry is never invited for a request that cannot fit."""
    now = [0.0]
    router = _clocked(now)
    for model in CATALOG.models:
        for backend in model.backends:
            router.set_health(model.name, backend.id, Health.NOT_SERVING, "HTTP 503")

    with pytest.raises(FailedPrecondition) as raised:
        router.route(RouteRequest(200_000, 100, Policy.COST))

    assert raised.value.reason == "NO_ELIGIBLE_MODEL"
    assert raised.value.metadata == {
        "small": "context 2048 < 200000 + 100 tokens",
        "medium": "context 8192 < 200000 + 100 tokens",
        "large": "context 128000 < 200000 + 100 tokens",
    }


def test_a_health_check_keeps_its_finding_apart_from_reported_errors() -> None:
    """The last error names the health check; once a check passes, its finding is gone."""
    router = _router()
    router.set_health("small", "small-0", Health.NOT_SERVING, "HTTP 503")
    router.report(Report("small", "small-0", Outcome.FAILED_BEFORE_FIRST_TOKEN, error="boom"))
    [status] = router.statuses("small")
    assert (status.live.health_error, status.live.last_error) == ("HTTP 503", "boom")
    router.set_health("small", "small-0", Health.SERVING)
    assert status.live.health_error == ""

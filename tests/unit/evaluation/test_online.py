"""Online evaluation: the trace-hash sampler agrees with itself and hits its share, each scorer
judges its table of records, the drift detector catches a simulated drop quickly and stays quiet
on steady streams, alerts resolve only after recovery, the alert book filters and pages, and the
evaluator end to end counts, scores, alerts, persists and emits `gen_ai.evaluation.result`
events carrying the request's trace."""

import asyncio
import itertools
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from prometheus_client import CollectorRegistry

from services.common.errors import InvalidArgument
from services.evaluation.core.online import (
    EVALUATION_RESULT_EVENT,
    REFUSAL_PHRASES,
    Alert,
    AlertBook,
    AlertChange,
    AlertState,
    Baseline,
    DriftDetector,
    FeedbackRecord,
    FeedbackScorer,
    LatencyScorer,
    LengthScorer,
    NonEmptyScorer,
    OnlineEvaluator,
    OnlineRecord,
    OnlineSampler,
    OnlineScore,
    OnlineScorer,
    RefusalScorer,
    SchemaValidScorer,
    StreamKey,
    Verdict,
    default_scorers,
    request_context,
)

TENANT = "acme"
PROMPT = "summarize"
DROP_AT = 500
"""Observations before the simulated drop."""
MAX_DELAY = 150
"""Most observations after the drop before the alert must fire (simulated p99 is 100)."""


def _hex_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


def _record(**overrides: Any) -> OnlineRecord:
    fields: dict[str, Any] = {
        "tenant_id": TENANT,
        "request_id": "req-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "prompt": PROMPT,
        "prompt_version": 3,
        "model": "smollm2-135m-instruct",
        "output": "The cat sat on the mat.",
        "total_ms": 800.0,
        "first_token_ms": 120.0,
    }
    fields.update(overrides)
    return OnlineRecord(**fields)


def _score(value: float, *, version: int = 3, scorer: str = "no_refusal") -> OnlineScore:
    return OnlineScore(
        scorer, value, PROMPT, version, "m", "", "req", tenant_id=TENANT, label="pass"
    )


def _stream(seed: int, rates: list[tuple[float, int]]) -> Iterator[float]:
    """Bernoulli pass/fail scores: `count` at `rate` for each (rate, count), in order."""
    rng = np.random.default_rng(seed)
    for rate, count in rates:
        yield from (float(x) for x in rng.random(count) < rate)


def _feed(detector: DriftDetector, values: Iterator[float]) -> list[tuple[int, AlertChange]]:
    """Observes every value; returns (1-based observation number, change) of each change."""
    changes = []
    for n, value in enumerate(values, start=1):
        change = detector.observe(_score(value))
        if change is not None:
            changes.append((n, change))
    return changes


# ------------------------------------------------------------------------------------------
# Sampler
# ------------------------------------------------------------------------------------------


def test_sampler_is_consistent_across_instances_and_case() -> None:
    ids = _hex_ids(2_000, seed=1)
    first, second = OnlineSampler(0.3), OnlineSampler(0.3)
    picks = [first.sampled(i) for i in ids]
    assert picks == [second.sampled(i) for i in ids]
    assert picks == [first.sampled(i.upper()) for i in ids]
    assert picks == [first.sampled(i) for i in ids]  # a later look agrees


@pytest.mark.parametrize("share", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_sampler_hits_its_share_within_binomial_tolerance(share: float) -> None:
    n = 100_000
    sampler = OnlineSampler(share)
    hits = sum(sampler.sampled(i) for i in _hex_ids(n, seed=7))
    sd = math.sqrt(n * share * (1 - share))
    assert abs(hits - n * share) < 4 * sd, (hits, n * share)


def test_sampler_buckets_are_uniform_chi_square() -> None:
    """Ten decile bands of the hash, from differences of nested shares, are equally full."""
    ids = _hex_ids(100_000, seed=3)
    cumulative = [sum(OnlineSampler(d / 10).sampled(i) for i in ids) for d in range(11)]
    bands = [b - a for a, b in itertools.pairwise(cumulative)]
    expected = len(ids) / 10
    chi2 = sum((b - expected) ** 2 / expected for b in bands)
    assert cumulative[0] == 0
    assert cumulative[10] == len(ids)
    assert chi2 < 27.88, bands  # chi-square, 9 degrees of freedom, p = 0.001


def test_sampler_smaller_share_is_a_subset() -> None:
    ids = _hex_ids(5_000, seed=5)
    small = {i for i in ids if OnlineSampler(0.1).sampled(i)}
    large = {i for i in ids if OnlineSampler(0.2).sampled(i)}
    assert small
    assert small < large


@pytest.mark.parametrize("share", [-0.1, 1.5, math.nan])
def test_sampler_rejects_shares_outside_unit_interval(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        OnlineSampler(share)


# ------------------------------------------------------------------------------------------
# Scorers
# ------------------------------------------------------------------------------------------

SCORER_CASES: list[tuple[str, OnlineScorer, dict[str, Any], float | None]] = [
    ("schema valid", SchemaValidScorer(), {"schema_valid": True}, 1.0),
    ("schema invalid", SchemaValidScorer(), {"schema_valid": False}, 0.0),
    ("schema violation", SchemaValidScorer(), {"schema_valid": False, "status": "ABORTED"}, 0.0),
    ("no schema", SchemaValidScorer(), {"schema_valid": None}, None),
    ("non-empty", NonEmptyScorer(), {"output": "ok"}, 1.0),
    ("empty", NonEmptyScorer(), {"output": ""}, 0.0),
    ("blank", NonEmptyScorer(), {"output": " \n\t"}, 0.0),
    ("failed request", NonEmptyScorer(), {"output": "", "status": "UNAVAILABLE"}, None),
    ("answer", RefusalScorer(), {"output": "Paris is the capital of France."}, 1.0),
    ("sorry", RefusalScorer(), {"output": "I'm sorry, but I can't help with that."}, 0.0),
    ("curly apostrophe", RefusalScorer(), {"output": "  I\u2019m unable to do this."}, 0.0),
    ("upper case", RefusalScorer(), {"output": "I APOLOGIZE for the confusion."}, 0.0),
    ("as an AI", RefusalScorer(), {"output": "As an AI language model, I ..."}, 0.0),
    ("late apology", RefusalScorer(), {"output": "x" * 200 + " I'm sorry"}, 1.0),
    ("custom phrase", RefusalScorer(["nope"]), {"output": "Nope."}, 0.0),
    ("refusal, empty", RefusalScorer(), {"output": ""}, None),
    ("refusal, failed", RefusalScorer(), {"status": "INTERNAL"}, None),
    ("length ok", LengthScorer(min_chars=5, max_chars=30), {"output": "x" * 30}, 1.0),
    ("too short", LengthScorer(min_chars=5, max_chars=30), {"output": "x" * 4}, 0.0),
    ("too long", LengthScorer(min_chars=5, max_chars=30), {"output": "x" * 31}, 0.0),
    ("truncated", LengthScorer(), {"truncated": True}, 0.0),
    ("length, failed", LengthScorer(), {"status": "CANCELLED"}, None),
    ("fast", LatencyScorer(1_000.0), {"total_ms": 1_000.0}, 1.0),
    ("slow", LatencyScorer(1_000.0), {"total_ms": 1_000.5}, 0.0),
    ("ttft fast", LatencyScorer(200.0, first_token=True), {"first_token_ms": 150.0}, 1.0),
    ("ttft slow", LatencyScorer(200.0, first_token=True), {"first_token_ms": 250.0}, 0.0),
    ("ttft none", LatencyScorer(200.0, first_token=True), {"first_token_ms": None}, None),
    ("latency, failed", LatencyScorer(), {"status": "DEADLINE_EXCEEDED"}, None),
]


@pytest.mark.parametrize(
    ("scorer", "fields", "expected"),
    [case[1:] for case in SCORER_CASES],
    ids=[case[0] for case in SCORER_CASES],
)
def test_scorer(scorer: OnlineScorer, fields: dict[str, Any], expected: float | None) -> None:
    verdict = scorer.score(_record(**fields))
    if expected is None:
        assert verdict is None
        return
    assert verdict is not None
    assert verdict.value == expected
    assert verdict.label == ("pass" if expected == 1.0 else "fail")
    assert bool(verdict.explanation) == (expected == 0.0 and scorer.name != "non_empty")


def test_refusal_explanation_names_the_phrase() -> None:
    verdict = RefusalScorer().score(_record(output="I cannot assist with that request."))
    assert verdict == Verdict(0.0, "fail", "opens with 'i cannot assist'")
    assert all(p == p.lower() for p in REFUSAL_PHRASES)


@pytest.mark.parametrize(("thumbs_up", "value"), [(True, 1.0), (False, 0.0)])
def test_feedback_scorer(thumbs_up: bool, value: float) -> None:
    record = FeedbackRecord(
        tenant_id=TENANT, request_id="r", prompt=PROMPT, prompt_version=1, thumbs_up=thumbs_up
    )
    assert FeedbackScorer().score(record).value == value


def test_scorer_names_are_distinct() -> None:
    names = [s.name for s in default_scorers()] + [FeedbackScorer().name]
    assert names == ["json_valid", "non_empty", "no_refusal", "length_ok", "latency_ok", "user_feedback"]  # fmt: skip
    assert LatencyScorer(first_token=True).name == "ttft_ok"


@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan])
def test_scores_outside_unit_interval_are_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="score"):
        _score(value)
    with pytest.raises(ValueError, match="score"):
        Verdict(value, "x")


# ------------------------------------------------------------------------------------------
# Drift detector
# ------------------------------------------------------------------------------------------


def _detector_with_baseline(mean: float = 0.9, **kwargs: Any) -> DriftDetector:
    detector = DriftDetector(**kwargs)
    detector.set_baseline(StreamKey(TENANT, PROMPT, 3, "no_refusal"), Baseline(mean))
    return detector


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_drop_from_report_baseline_fires_soon_after_the_change(seed: int) -> None:
    detector = _detector_with_baseline()
    changes = _feed(detector, _stream(seed, [(0.9, DROP_AT), (0.6, 500)]))
    assert changes, "the drop was never detected"
    at, change = changes[0]
    assert change.kind == "raised"
    assert DROP_AT < at <= DROP_AT + MAX_DELAY
    alert = change.alert
    assert alert.state is AlertState.FIRING
    assert alert.resolve_time is None
    assert (alert.tenant_id, alert.prompt, alert.prompt_version, alert.scorer) == (
        TENANT,
        PROMPT,
        3,
        "no_refusal",
    )
    assert alert.baseline_mean == 0.9
    assert alert.baseline_std == pytest.approx(0.3)
    assert alert.cusum > alert.threshold == 8.0  # the value that crossed h
    live = detector.alert(StreamKey(TENANT, PROMPT, 3, "no_refusal"))
    assert live is not None
    assert live.id == alert.id
    assert live.cusum <= 8.0  # capped at h while firing
    assert alert.observed_mean < 0.85
    assert alert.sample_count == at
    assert "dropped" in alert.message
    assert [c.kind for _, c in changes] == ["raised"]  # still dropped: no resolve, no re-raise


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_a_drop_from_warmup_baseline_fires_soon_after_the_change(seed: int) -> None:
    detector = DriftDetector()  # warm-up: the first 500 scores
    key = StreamKey(TENANT, PROMPT, 3, "no_refusal")
    changes = _feed(detector, _stream(seed, [(0.9, 800), (0.6, 500)]))
    status = detector.status(key)
    assert status is not None
    assert status.baseline is not None
    assert status.baseline.source == "warmup"
    assert status.baseline.count == 500
    # The warm-up mean less two standard errors (0.3 / sqrt(500) each).
    assert status.baseline.mean == pytest.approx(0.9 - 2 * 0.3 / math.sqrt(500), abs=0.04)
    assert status.baseline.std == pytest.approx(0.3, abs=0.03)
    assert changes
    assert changes[0][1].kind == "raised"
    assert 800 < changes[0][0] <= 800 + MAX_DELAY


@pytest.mark.parametrize("mean", [0.9, 0.5])
@pytest.mark.parametrize("seed", [20, 21, 22, 23, 24])
def test_a_steady_stream_never_fires(seed: int, mean: float) -> None:
    detector = _detector_with_baseline(mean)
    assert _feed(detector, _stream(seed, [(mean, DROP_AT + 500)])) == []
    status = detector.status(StreamKey(TENANT, PROMPT, 3, "no_refusal"))
    assert status is not None
    assert status.sample_count == DROP_AT + 500
    assert status.cusum <= 8.0
    assert status.ewma == pytest.approx(mean, abs=0.2)


def test_nothing_fires_during_warmup() -> None:
    detector = DriftDetector(warmup=300)
    assert _feed(detector, iter([0.0] * 299)) == []
    status = detector.status(StreamKey(TENANT, PROMPT, 3, "no_refusal"))
    assert status is not None
    assert status.baseline is None


@pytest.mark.parametrize("seed", [30, 31, 32])
def test_an_alert_resolves_after_recovery_with_the_same_id(seed: int) -> None:
    detector = _detector_with_baseline()
    changes = _feed(detector, _stream(seed, [(0.9, DROP_AT), (0.6, 300), (0.9, 1_500)]))
    assert [c.kind for _, c in changes] == ["raised", "resolved"]
    (_, raised), (resolved_at, resolved) = changes
    recovered_at = DROP_AT + 300
    assert recovered_at < resolved_at <= recovered_at + 1_000
    assert resolved.alert.id == raised.alert.id
    assert resolved.alert.state is AlertState.RESOLVED
    assert resolved.alert.resolve_time is not None
    assert resolved.alert.fire_time == raised.alert.fire_time
    assert resolved.alert.cusum == 0.0
    assert resolved.alert.observed_mean >= 0.9 - 0.5 * 0.3
    assert detector.alert(StreamKey(TENANT, PROMPT, 3, "no_refusal")) is None


def test_no_resolve_while_the_ewma_is_still_low() -> None:
    """Hysteresis: S can touch 0 on a good run, but the EWMA must be back as well."""
    detector = _detector_with_baseline(batch_size=1, slack=0.5, threshold=2.0)
    key = StreamKey(TENANT, PROMPT, 3, "no_refusal")
    changes = _feed(detector, iter([0.0] * 5))
    assert [c.kind for _, c in changes] == ["raised"]
    # Passes bring S back to 0 quickly, but the EWMA (weight 0.05) needs many more of them.
    changes = _feed(detector, iter([1.0] * 5))
    status = detector.status(key)
    assert status is not None
    assert status.cusum == 0.0
    assert status.ewma < 0.9 - 0.15
    assert changes == []
    changes = _feed(detector, iter([1.0] * 100))
    assert [c.kind for _, c in changes] == ["resolved"]


def test_a_new_drop_after_resolution_raises_a_new_alert() -> None:
    detector = _detector_with_baseline()
    changes = _feed(detector, _stream(40, [(0.9, 300), (0.5, 300), (0.95, 1_500), (0.5, 300)]))
    assert [c.kind for _, c in changes] == ["raised", "resolved", "raised"]
    assert changes[0][1].alert.id != changes[2][1].alert.id


def test_streams_are_independent_per_version_and_scorer() -> None:
    detector = DriftDetector(warmup=50)
    for version, scorer in [(1, "a"), (2, "a"), (1, "b")]:
        detector.set_baseline(StreamKey(TENANT, PROMPT, version, scorer), Baseline(0.9))
    fired = []
    for value in _stream(50, [(0.3, 200)]):
        change = detector.observe(_score(value, version=2, scorer="a"))
        fired += [change] if change else []
        assert detector.observe(_score(1.0, version=1, scorer="a")) is None
        assert detector.observe(_score(1.0, version=1, scorer="b")) is None
    assert [(c.alert.prompt_version, c.alert.scorer) for c in fired] == [(2, "a")]


def test_state_stays_bounded_and_keeps_firing_streams() -> None:
    detector = DriftDetector(max_streams=3, batch_size=1, threshold=1.0)
    detector.set_baseline(StreamKey(TENANT, PROMPT, 1, "x"), Baseline(0.9))
    assert detector.observe(_score(0.0, version=1, scorer="x")) is not None  # firing
    for version in range(2, 10):
        detector.observe(_score(1.0, version=version, scorer="x"))
        assert len(detector) <= 3
    assert detector.alert(StreamKey(TENANT, PROMPT, 1, "x")) is not None
    assert detector.has_stream(StreamKey(TENANT, PROMPT, 9, "x"))
    assert not detector.has_stream(StreamKey(TENANT, PROMPT, 2, "x"))


def test_baseline_std_is_floored_for_near_perfect_baselines() -> None:
    """Against a perfect baseline, a lone failure fires only without the floor; a sustained
    4% failure rate fires either way."""
    lone = [1.0] * 100 + [0.0] + [1.0] * 899
    assert _feed(_detector_with_baseline(1.0), iter(lone)) == []
    unfloored = _feed(_detector_with_baseline(1.0, sigma_floor=0.001), iter(lone))
    assert [(at, c.kind) for at, c in unfloored][:1] == [(125, "raised")]
    sustained = iter(([1.0] * 24 + [0.0]) * 40)
    assert [c.kind for _, c in _feed(_detector_with_baseline(1.0), sustained)] == ["raised"]


def test_restored_alert_resolves_when_quality_is_back() -> None:
    fired = datetime(2026, 1, 1, tzinfo=UTC)
    alert = Alert(
        id="a1",
        tenant_id=TENANT,
        prompt=PROMPT,
        prompt_version=3,
        scorer="no_refusal",
        state=AlertState.FIRING,
        baseline_mean=0.9,
        baseline_std=0.3,
        observed_mean=0.6,
        sample_count=700,
        cusum=8.0,
        threshold=8.0,
        fire_time=fired,
    )
    detector = DriftDetector()
    detector.restore(alert)
    restored = detector.alert(StreamKey(TENANT, PROMPT, 3, "no_refusal"))
    assert restored is not None
    assert restored.id == "a1"
    changes = _feed(detector, _stream(60, [(0.9, 1_500)]))
    assert [(c.kind, c.alert.id, c.alert.fire_time) for _, c in changes] == [
        ("resolved", "a1", fired)
    ]
    with pytest.raises(ValueError, match="firing"):
        detector.restore(replace(alert, state=AlertState.RESOLVED))
    unknown_std = DriftDetector()
    unknown_std.restore(replace(alert, id="a2", baseline_std=0.0, baseline_mean=0.84))
    status = unknown_std.status(StreamKey(TENANT, PROMPT, 3, "no_refusal"))
    assert status is not None
    assert status.baseline == Baseline(0.84, None, source="alert")
    assert status.cusum == 8.0


@pytest.mark.parametrize(
    "kwargs",
    [{"slack": -1.0}, {"threshold": 0.0}, {"ewma_weight": 0.0}, {"batch_size": 0}, {"warmup": 1}],
)
def test_detector_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="need"):
        DriftDetector(**kwargs)


# ------------------------------------------------------------------------------------------
# Alert book
# ------------------------------------------------------------------------------------------

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _alert(n: int, **overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "id": f"alert-{n:02d}",
        "tenant_id": TENANT,
        "prompt": PROMPT,
        "prompt_version": 1,
        "scorer": "no_refusal",
        "state": AlertState.FIRING,
        "baseline_mean": 0.9,
        "baseline_std": 0.3,
        "observed_mean": 0.6,
        "sample_count": 100,
        "cusum": 8.0,
        "threshold": 8.0,
        "fire_time": T0 + timedelta(minutes=n),
    }
    fields.update(overrides)
    return Alert(**fields)


def test_book_lists_newest_first_with_filters() -> None:
    book = AlertBook()
    book.record(_alert(1))
    book.record(_alert(2, prompt="chat"))
    book.record(_alert(3, state=AlertState.RESOLVED, resolve_time=T0 + timedelta(hours=1)))
    book.record(_alert(4, tenant_id="other"))
    ids = [a.id for a in book.list().alerts]
    assert ids == ["alert-04", "alert-03", "alert-02", "alert-01"]
    assert [a.id for a in book.list(tenant_id=TENANT).alerts] == ["alert-03", "alert-02", "alert-01"]  # fmt: skip
    assert [a.id for a in book.list(prompt="chat").alerts] == ["alert-02"]
    assert [a.id for a in book.list(state=AlertState.RESOLVED).alerts] == ["alert-03"]
    assert [a.id for a in book.list(state=AlertState.FIRING, tenant_id=TENANT, prompt=PROMPT).alerts] == ["alert-01"]  # fmt: skip
    assert [a.id for a in book.firing()] == ["alert-04", "alert-02", "alert-01"]


def test_book_replaces_an_alert_by_id() -> None:
    book = AlertBook()
    book.record(_alert(1))
    book.record(_alert(1, observed_mean=0.7))
    resolved = _alert(1, state=AlertState.RESOLVED, resolve_time=T0 + timedelta(hours=1))
    book.record(resolved)
    assert len(book) == 1
    assert book.get("alert-01") == resolved
    assert book.firing() == []


def test_book_pages_with_tokens_and_ties() -> None:
    book = AlertBook()
    for n in range(7):
        book.record(_alert(n))
    book.record(_alert(5, id="alert-05b"))  # same fire time as alert-05
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = book.list(page_size=3, page_token=token)
        seen += [a.id for a in page.alerts]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [
        "alert-06", "alert-05b", "alert-05", "alert-04", "alert-03", "alert-02", "alert-01", "alert-00",
    ]  # fmt: skip
    assert len(book.list(page_size=0).alerts) == 8


def test_book_keeps_only_recent_resolved_alerts_and_every_firing_one() -> None:
    book = AlertBook(max_resolved=2)
    for n in range(5):
        book.record(_alert(n, state=AlertState.RESOLVED, resolve_time=T0 + timedelta(hours=n)))
    book.record(_alert(9))
    assert sorted(a.id for a in book.list().alerts) == ["alert-03", "alert-04", "alert-09"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"page_size": -1}, "page_size"),
        ({"page_size": 1001}, "page_size"),
        ({"page_token": "not a token!"}, "page_token"),
        ({"page_token": "bm8tY29sb24"}, "page_token"),
    ],
)
def test_book_rejects_bad_list_arguments(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        AlertBook().list(**kwargs)
    assert [v.field for v in raised.value.violations] == [field]


# ------------------------------------------------------------------------------------------
# Evaluator end to end
# ------------------------------------------------------------------------------------------


class MemorySink:
    """An `AlertSink` in a dict; `failures` fails that many saves."""

    def __init__(self) -> None:
        self.saved: dict[str, Alert] = {}
        self.calls: list[tuple[str, AlertState]] = []
        self.failures = 0

    async def save(self, alert: Alert) -> None:
        self.calls.append((alert.id, alert.state))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database is down")
        self.saved[alert.id] = alert


class ReportBaselines:
    """A `BaselineSource` answering from a dict, counting lookups."""

    def __init__(self, baselines: dict[tuple[str, str, int, str], Baseline]) -> None:
        self.baselines = baselines
        self.lookups: list[tuple[str, str, int, str]] = []

    async def baseline(
        self, tenant_id: str, prompt: str, prompt_version: int, scorer: str
    ) -> Baseline | None:
        key = (tenant_id, prompt, prompt_version, scorer)
        self.lookups.append(key)
        return self.baselines.get(key)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def events() -> tuple[LoggerProvider, InMemoryLogRecordExporter]:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    return provider, exporter


async def test_evaluator_end_to_end_raises_alert_with_metrics_events_and_sink(
    events: tuple[LoggerProvider, InMemoryLogRecordExporter],
) -> None:
    provider, exporter = events
    registry = CollectorRegistry()
    sink = MemorySink()
    baselines = ReportBaselines({(TENANT, PROMPT, 3, "no_refusal"): Baseline(0.9, count=200)})
    evaluator = OnlineEvaluator(
        sampler=OnlineSampler(1.0),
        registry=registry,
        scorers=[RefusalScorer(), NonEmptyScorer()],
        sink=sink,
        baselines=baselines,
        logger_provider=provider,
    )
    evaluator.start()
    trace_ids = _hex_ids(1_000, seed=70)
    outcomes = list(_stream(70, [(0.9, DROP_AT), (0.6, 500)]))
    for n, (passed, trace_id) in enumerate(zip(outcomes, trace_ids, strict=True)):
        output = "Here is your summary." if passed else "I'm sorry, I can't help with that."
        evaluator.submit(
            _record(
                request_id=f"req-{n}", trace_id=trace_id, span_id=f"{n + 1:016x}", output=output
            )
        )
    await evaluator.wait_idle()

    scored = _value(registry, "genai_online_evaluation_records_total", outcome="scored")
    assert scored == 1_000
    hist = {"prompt": PROMPT, "scorer": "no_refusal"}
    assert _value(registry, "genai_online_evaluation_score_count", **hist) == 1_000
    assert _value(registry, "genai_online_evaluation_score_sum", **hist) == sum(outcomes)
    assert _value(registry, "genai_online_evaluation_score_count", prompt=PROMPT, scorer="non_empty") == 1_000  # fmt: skip
    assert _value(registry, "genai_quality_alerts_firing", prompt=PROMPT, version="3", scorer="no_refusal") == 1  # fmt: skip
    assert _value(registry, "genai_quality_alerts_firing", prompt=PROMPT, version="3", scorer="non_empty") == 0  # fmt: skip

    firing = evaluator.book.list(state=AlertState.FIRING, tenant_id=TENANT).alerts
    assert [(a.prompt, a.prompt_version, a.scorer) for a in firing] == [(PROMPT, 3, "no_refusal")]
    alert = firing[0]
    assert alert.baseline_mean == 0.9
    assert alert.sample_count == 1_000  # the book follows the live stream
    assert alert.observed_mean == pytest.approx(0.6, abs=0.2)
    assert DROP_AT < sink.saved[alert.id].sample_count <= DROP_AT + MAX_DELAY
    assert sink.calls == [(alert.id, AlertState.FIRING)]
    assert sorted(baselines.lookups) == [
        (TENANT, PROMPT, 3, "no_refusal"),
        (TENANT, PROMPT, 3, "non_empty"),
    ]

    logs = exporter.get_finished_logs()
    assert len(logs) == 2_000
    first = logs[0].log_record
    assert first.event_name == EVALUATION_RESULT_EVENT
    assert f"{first.trace_id:032x}" == trace_ids[0]
    assert f"{first.span_id:016x}" == f"{1:016x}"
    assert first.attributes is not None
    assert first.attributes["gen_ai.evaluation.name"] == "no_refusal"
    assert first.attributes["gen_ai.response.id"] == "req-0"
    assert first.attributes["gen_ai.evaluation.score.value"] == outcomes[0]
    assert first.attributes["gen_ai.evaluation.score.label"] == ("pass" if outcomes[0] else "fail")
    assert first.attributes["gen_ai.prompt.name"] == PROMPT
    failed = next(
        r.log_record
        for r in logs
        if r.log_record.attributes
        and r.log_record.attributes["gen_ai.evaluation.score.value"] == 0.0
    )
    assert failed.attributes is not None
    assert failed.attributes["gen_ai.evaluation.explanation"] == 'opens with "i\'m sorry"'
    await evaluator.aclose()


async def test_evaluator_resolves_and_persists_both_states() -> None:
    registry = CollectorRegistry()
    sink = MemorySink()
    detector = DriftDetector(warmup=100)
    evaluator = OnlineEvaluator(
        sampler=OnlineSampler(1.0),
        registry=registry,
        scorers=[RefusalScorer()],
        detector=detector,
        sink=sink,
    )
    evaluator.start()
    for n, passed in enumerate(_stream(80, [(0.9, 400), (0.5, 300), (0.95, 1_500)])):
        evaluator.submit(_record(request_id=f"r{n}", output="Fine." if passed else "I'm sorry."))
    await evaluator.aclose()
    states = [state for _, state in sink.calls]
    assert states == [AlertState.FIRING, AlertState.RESOLVED]
    alert = evaluator.book.get(sink.calls[0][0])
    assert alert is not None
    assert alert.state is AlertState.RESOLVED
    labels = {"prompt": PROMPT, "version": "3", "scorer": "no_refusal"}
    assert _value(registry, "genai_quality_alerts_firing", **labels) == 0


async def test_restored_alerts_are_listed_and_resolve_with_the_gauge() -> None:
    registry = CollectorRegistry()
    sink = MemorySink()
    evaluator = OnlineEvaluator(
        sampler=OnlineSampler(1.0), registry=registry, scorers=[RefusalScorer()], sink=sink
    )
    old = _alert(1, state=AlertState.RESOLVED, resolve_time=T0 + timedelta(hours=1))
    firing = _alert(2, prompt_version=3)
    evaluator.restore([old, firing])
    labels = {"prompt": PROMPT, "version": "3", "scorer": "no_refusal"}
    assert _value(registry, "genai_quality_alerts_firing", **labels) == 1
    assert [a.id for a in evaluator.book.list().alerts] == ["alert-02", "alert-01"]
    evaluator.start()
    for n, passed in enumerate(_stream(95, [(0.9, 1_500)])):
        evaluator.submit(_record(request_id=f"r{n}", output="Fine." if passed else "I'm sorry."))
    await evaluator.aclose()
    assert sink.calls == [("alert-02", AlertState.RESOLVED)]
    assert _value(registry, "genai_quality_alerts_firing", **labels) == 0
    assert evaluator.book.firing() == []


async def test_unsampled_and_unscorable_records_are_skipped_and_feedback_is_always_scored() -> None:
    registry = CollectorRegistry()
    sampler = OnlineSampler(0.5)
    evaluator = OnlineEvaluator(sampler=sampler, registry=registry)
    evaluator.start()
    ids = _hex_ids(200, seed=90)
    for n, trace_id in enumerate(ids):
        evaluator.submit(_record(request_id=f"r{n}", trace_id=trace_id))
    in_sample = sum(sampler.sampled(i) for i in ids)
    failed = next(i for i in _hex_ids(100, seed=91) if sampler.sampled(i))
    evaluator.submit(_record(request_id="failed", trace_id=failed, status="UNAVAILABLE"))
    no_trace = _record(request_id="no-trace", trace_id="")
    evaluator.submit(no_trace)
    for thumbs_up in (True, False, True):
        evaluator.submit(
            FeedbackRecord(
                tenant_id=TENANT,
                request_id="r0",
                trace_id=ids[0],
                prompt=PROMPT,
                prompt_version=3,
                thumbs_up=thumbs_up,
            )
        )
    await evaluator.aclose()
    no_trace_sampled = sampler.sampled("no-trace")
    assert _value(registry, "genai_online_evaluation_records_total", outcome="scored") == (
        in_sample + no_trace_sampled + 3
    )
    assert _value(registry, "genai_online_evaluation_records_total", outcome="skipped") == (
        200 - in_sample + 1 + (not no_trace_sampled)
    )
    feedback = {"prompt": PROMPT, "scorer": "user_feedback"}
    assert _value(registry, "genai_online_evaluation_score_count", **feedback) == 3
    assert _value(registry, "genai_online_evaluation_score_sum", **feedback) == 2
    # Default scorers: no schema, so json_valid never applies.
    assert _value(registry, "genai_online_evaluation_score_count", prompt=PROMPT, scorer="json_valid") == 0  # fmt: skip
    assert _value(registry, "genai_online_evaluation_score_count", prompt=PROMPT, scorer="latency_ok") == in_sample + no_trace_sampled  # fmt: skip


async def test_full_queue_drops_and_counts_and_close_flushes() -> None:
    registry = CollectorRegistry()
    evaluator = OnlineEvaluator(sampler=OnlineSampler(1.0), registry=registry, capacity=2)
    for n in range(5):  # not started: nothing drains the queue
        evaluator.submit(_record(request_id=f"r{n}"))
    assert evaluator.queue_depth == 2
    assert _value(registry, "genai_online_evaluation_records_total", outcome="dropped") == 3
    await evaluator.aclose()
    assert _value(registry, "genai_online_evaluation_records_total", outcome="scored") == 2
    evaluator.submit(_record(request_id="late"))
    assert _value(registry, "genai_online_evaluation_records_total", outcome="dropped") == 4
    await evaluator.aclose()  # a second close returns at once


async def test_close_times_out_on_a_hung_sink_and_counts_what_is_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class HungSink:
        async def save(self, alert: Alert) -> None:
            await asyncio.Event().wait()

    registry = CollectorRegistry()
    detector = DriftDetector(batch_size=1, threshold=1.0)
    detector.set_baseline(StreamKey(TENANT, PROMPT, 3, "non_empty"), Baseline(0.9))
    evaluator = OnlineEvaluator(
        sampler=OnlineSampler(1.0),
        registry=registry,
        scorers=[NonEmptyScorer()],
        detector=detector,
        sink=HungSink(),
    )
    evaluator.start()
    for n in range(4):
        evaluator.submit(_record(request_id=f"r{n}", output=""))
    with caplog.at_level(logging.ERROR):
        await evaluator.aclose(timeout=0.2)
    assert _value(registry, "genai_online_evaluation_records_total", outcome="scored") == 1
    assert _value(registry, "genai_online_evaluation_records_total", outcome="dropped") == 3
    assert "3 records unscored" in caplog.text
    assert len(evaluator.book.firing()) == 1  # recorded before the save hung


async def test_a_hung_save_is_abandoned_and_scoring_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class HungSink:
        async def save(self, alert: Alert) -> None:
            await asyncio.Event().wait()

    registry = CollectorRegistry()
    detector = DriftDetector(batch_size=1, threshold=1.0)
    detector.set_baseline(StreamKey(TENANT, PROMPT, 3, "non_empty"), Baseline(0.9))
    evaluator = OnlineEvaluator(
        sampler=OnlineSampler(1.0),
        registry=registry,
        scorers=[NonEmptyScorer()],
        detector=detector,
        sink=HungSink(),
        save_timeout_seconds=0.05,
    )
    evaluator.start()
    for n in range(4):
        evaluator.submit(_record(request_id=f"r{n}", output=""))
    with caplog.at_level(logging.ERROR):
        await evaluator.aclose(timeout=5.0)
    assert _value(registry, "genai_online_evaluation_records_total", outcome="scored") == 4
    assert _value(registry, "genai_online_evaluation_records_total", outcome="dropped") == 0
    assert "saving quality alert" in caplog.text


async def test_failing_sink_and_scorer_are_logged_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenScorer:
        name = "broken"

        def score(self, record: OnlineRecord) -> Verdict | None:
            raise RuntimeError("bug")

    registry = CollectorRegistry()
    sink = MemorySink()
    sink.failures = 1
    detector = DriftDetector(batch_size=1, threshold=1.0)
    detector.set_baseline(StreamKey(TENANT, PROMPT, 3, "non_empty"), Baseline(0.9))
    evaluator = OnlineEvaluator(
        sampler=OnlineSampler(1.0),
        registry=registry,
        scorers=[BrokenScorer(), NonEmptyScorer()],
        detector=detector,
        sink=sink,
    )
    evaluator.start()
    with caplog.at_level(logging.ERROR):
        evaluator.submit(_record(output=""))
        evaluator.submit(_record(request_id="req-2", output="fine"))
        await evaluator.wait_idle()
    assert "online scorer broken failed" in caplog.text
    assert "saving quality alert" in caplog.text
    assert _value(registry, "genai_online_evaluation_records_total", outcome="scored") == 2
    assert len(evaluator.book.firing()) == 1
    await evaluator.aclose()


def test_request_context_carries_the_request_span() -> None:
    from opentelemetry import trace

    span = trace.get_current_span(request_context("0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7"))  # fmt: skip
    ctx = span.get_span_context()
    assert (ctx.trace_id, ctx.span_id, ctx.is_remote) == (
        0x0AF7651916CD43DD8448EB211C80319C,
        0x00F067AA0BA902B7,
        True,
    )
    for bad in ("", "xyz", "0" * 32, "1" * 33):
        assert not trace.get_current_span(request_context(bad)).get_span_context().is_valid

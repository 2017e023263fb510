"""Online evaluation: score a sampled share of live gateway traffic with cheap reference-free
scorers, watch each prompt version's scores for a drop against its baseline, and raise and
resolve quality alerts.

Pieces, each usable alone:

- `OnlineSampler` picks requests by a consistent hash of the trace id, so every replica (and
  every later look at the same trace) makes the same choice.
- Scorers (`SchemaValidScorer`, `NonEmptyScorer`, `RefusalScorer`, `LengthScorer`,
  `LatencyScorer`, `FeedbackScorer`) turn one finished request into a `Verdict` in [0, 1], or
  None where they do not apply. All of them score 1.0 (pass) or 0.0 (fail).
- `DriftDetector` runs, per (tenant, prompt, prompt version, scorer), a one-sided CUSUM for a
  drop of the mean score below a baseline, plus an EWMA for display; it returns an
  `AlertChange` when an alert is raised or resolved.
- `AlertBook` keeps firing and recently resolved `Alert`s in memory and answers filtered,
  paginated listings (`ListQualityAlerts`); an `AlertSink` persists them.
- `OnlineEvaluator` composes these behind a non-blocking `submit`, with Prometheus metrics and
  OpenTelemetry `gen_ai.evaluation.result` events.

Telemetry: scoring runs in the background after the request's span has ended, so events cannot
be added to that span. Each score is emitted instead as an OpenTelemetry *event*, that is a log
record with `event_name="gen_ai.evaluation.result"` through the Logs API
(`opentelemetry._logs`, which replaced the removed Events API), with the GenAI attributes
`gen_ai.evaluation.name`, `gen_ai.evaluation.score.value`, `gen_ai.evaluation.score.label`
(`pass`/`fail`), `gen_ai.evaluation.explanation` (when there is one) and `gen_ai.response.id`
(the gateway request id). Its context is the request's span, rebuilt from the record's trace and
span ids, so the event carries them and backends parent it to that span, as the conventions
ask. Events go to the `LoggerProvider` given to `OnlineEvaluator` (the global one otherwise,
a no-op until an SDK provider is installed).

No grpc, no generated code.
"""

import asyncio
import base64
import binascii
import enum
import hashlib
import logging
import math
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from datetime import UTC, datetime
from typing import Final, Literal, NamedTuple, Protocol

from opentelemetry import _logs as otel_logs
from opentelemetry import trace
from opentelemetry.context import Context
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.errors import FieldViolation, InvalidArgument

_logger = logging.getLogger(__name__)

SAMPLER_BUCKETS: Final = 10_000
"""Resolution of `OnlineSampler`: shares are rounded to multiples of 1 / SAMPLER_BUCKETS."""
EVALUATION_RESULT_EVENT: Final = "gen_ai.evaluation.result"
"""Name of the OpenTelemetry GenAI event that carries one score."""
SCORE_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
WARMUP_MARGIN: Final = 2.0
"""Standard errors of the warm-up mean subtracted from it to make a warm-up baseline."""
MAX_PAGE_SIZE: Final = 1000
"""Most alerts one `AlertBook.list` page may hold."""
DEFAULT_PAGE_SIZE: Final = 100
"""Alerts per page when the caller asks for 0."""
PASS: Final = "pass"
FAIL: Final = "fail"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------
# Records and scores
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OnlineRecord:
    """One finished gateway completion, as the online scorers see it.

    `output` is the text returned to the caller, unredacted (it is scored in memory and never
    stored or exported here). `trace_id` and `span_id` are lowercase hex (32 and 16 digits) of
    the request's span, empty when unknown.
    """

    tenant_id: str
    request_id: str
    trace_id: str = ""
    span_id: str = ""
    prompt: str
    prompt_version: int
    model: str = ""
    status: str = "OK"
    """Canonical status code name of the request; output scorers score only `OK` ones."""
    output: str = ""
    schema_valid: bool | None = None
    """None when the prompt version has no output schema; else whether the output passed it
    (False for a request that failed with an output schema violation)."""
    truncated: bool = False
    """The output was cut at the version's length limit."""
    total_ms: float = 0.0
    """Milliseconds from arrival to the end of the request."""
    first_token_ms: float | None = None
    """Milliseconds from arrival to the first output chunk; None when none was sent."""


@dataclass(frozen=True, kw_only=True)
class FeedbackRecord:
    """A user's thumbs up (True) or down (False) on one earlier completion. Feedback is never
    sampled out: every one is scored."""

    tenant_id: str
    request_id: str
    trace_id: str = ""
    span_id: str = ""
    prompt: str
    prompt_version: int
    model: str = ""
    thumbs_up: bool


@dataclass(frozen=True)
class Verdict:
    """What a scorer says about one record: `value` in [0, 1] (1 is best), a short `label`
    (`pass`/`fail`) and an optional explanation."""

    value: float
    label: str
    explanation: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:  # also false for NaN
            raise ValueError(f"a score must be in [0, 1], got {self.value}")


@dataclass(frozen=True)
class OnlineScore:
    """One online score of one request, named by its scorer."""

    name: str
    value: float
    prompt: str
    prompt_version: int
    model: str
    trace_id: str
    request_id: str
    _: KW_ONLY
    tenant_id: str = ""
    label: str = ""
    explanation: str = ""
    span_id: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a score must be in [0, 1], got {self.value}")


def _verdict(passed: bool, explanation: str = "") -> Verdict:
    return Verdict(1.0 if passed else 0.0, PASS if passed else FAIL, explanation)


# ------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------


class OnlineSampler:
    """Samples `share` of traces by hashing the trace id: SHA-256 of the lowercased id, its first
    8 bytes as an integer, modulo 10,000, below `share` x 10,000. Deterministic, so replicas and
    later looks agree; a larger share samples a superset of a smaller one."""

    def __init__(self, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")
        self.share = share
        self._cutoff = round(share * SAMPLER_BUCKETS)

    def sampled(self, trace_id: str) -> bool:
        """Whether the trace with this id is evaluated."""
        digest = hashlib.sha256(trace_id.strip().lower().encode()).digest()
        return int.from_bytes(digest[:8], "big") % SAMPLER_BUCKETS < self._cutoff


# ------------------------------------------------------------------------------------------
# Scorers
# ------------------------------------------------------------------------------------------


class OnlineScorer(Protocol):
    """A cheap, reference-free scorer of finished completions."""

    @property
    def name(self) -> str:
        """The scorer's name: the metric label and `gen_ai.evaluation.name`."""
        ...

    def score(self, record: OnlineRecord) -> Verdict | None:
        """The verdict on `record`; None when the scorer does not apply to it."""
        ...


class SchemaValidScorer:
    """`json_valid`: whether the output passed the version's output schema, as the gateway
    found it (`record.schema_valid`). Applies only to versions with a schema."""

    name: Final = "json_valid"

    def score(self, record: OnlineRecord) -> Verdict | None:
        """1.0 when the output validated, 0.0 when it did not; None without a schema."""
        if record.schema_valid is None:
            return None
        return _verdict(record.schema_valid, "" if record.schema_valid else "output schema")


class NonEmptyScorer:
    """`non_empty`: a successful request returned more than whitespace."""

    name: Final = "non_empty"

    def score(self, record: OnlineRecord) -> Verdict | None:
        """1.0 for non-blank output; None for requests that did not succeed."""
        if record.status != "OK":
            return None
        return _verdict(bool(record.output.strip()), "")


REFUSAL_PHRASES: Final = (
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "i apologise",
    "my apologies",
    "i can't help",
    "i cannot help",
    "i can't assist",
    "i cannot assist",
    "i can't provide",
    "i cannot provide",
    "i can't do that",
    "i cannot do that",
    "i'm unable to",
    "i am unable to",
    "i'm not able to",
    "i am not able to",
    "i won't be able to",
    "as an ai language model",
    "as an ai, i",
)
"""Lowercase phrases that mark a refusal or apology when they open an answer."""


class RefusalScorer:
    """`no_refusal`: the output does not open with a refusal or apology. A heuristic: the first
    `window` characters (lowercased, typographic apostrophes made plain) are searched for any
    of `phrases` (default `REFUSAL_PHRASES`); refusals open an answer, while the same words deep
    in a long answer usually do not refuse anything."""

    name: Final = "no_refusal"

    def __init__(self, phrases: Iterable[str] = REFUSAL_PHRASES, *, window: int = 160) -> None:
        self._phrases = tuple(p.lower() for p in phrases)
        if not self._phrases or window < 1:
            raise ValueError("a refusal scorer needs phrases and a window of at least 1")
        self._window = window

    def score(self, record: OnlineRecord) -> Verdict | None:
        """0.0 when the opening matches a phrase (named in the explanation); None for requests
        that did not succeed or returned nothing (`non_empty` scores those)."""
        if record.status != "OK" or not record.output.strip():
            return None
        opening = record.output.lstrip()[: self._window].lower().replace("\u2019", "'")
        for phrase in self._phrases:
            if phrase in opening:
                return _verdict(False, f"opens with {phrase!r}")
        return _verdict(True)


class LengthScorer:
    """`length_ok`: the output of a successful request has between `min_chars` and `max_chars`
    characters (inclusive) and was not truncated at the version's length limit."""

    name: Final = "length_ok"

    def __init__(self, *, min_chars: int = 1, max_chars: int = 20_000) -> None:
        if not 0 <= min_chars <= max_chars:
            raise ValueError("length bounds must satisfy 0 <= min_chars <= max_chars")
        self._min = min_chars
        self._max = max_chars

    def score(self, record: OnlineRecord) -> Verdict | None:
        """1.0 within bounds and untruncated; None for requests that did not succeed."""
        if record.status != "OK":
            return None
        if record.truncated:
            return _verdict(False, "truncated at the length limit")
        length = len(record.output)
        if length < self._min:
            return _verdict(False, f"{length} characters, under {self._min}")
        if length > self._max:
            return _verdict(False, f"{length} characters, over {self._max}")
        return _verdict(True)


class LatencyScorer:
    """`latency_ok`: a successful request took at most `budget_ms` milliseconds in total (or to
    its first output chunk, with `first_token=True`)."""

    def __init__(self, budget_ms: float = 10_000.0, *, first_token: bool = False) -> None:
        if not budget_ms > 0 or math.isinf(budget_ms):
            raise ValueError("budget_ms must be positive and finite")
        self._budget = budget_ms
        self._first_token = first_token
        self.name: Final = "ttft_ok" if first_token else "latency_ok"

    def score(self, record: OnlineRecord) -> Verdict | None:
        """1.0 within budget; None for requests that did not succeed (and, for the first-token
        budget, for requests that sent no token)."""
        if record.status != "OK":
            return None
        took = record.first_token_ms if self._first_token else record.total_ms
        if took is None:
            return None
        if took <= self._budget:
            return _verdict(True)
        return _verdict(False, f"{took:.0f} ms, over the {self._budget:.0f} ms budget")


class FeedbackScorer:
    """`user_feedback`: the user's thumbs up (1.0) or down (0.0)."""

    name: Final = "user_feedback"

    def score(self, record: FeedbackRecord) -> Verdict:
        """The verdict the user gave."""
        return _verdict(record.thumbs_up)


def default_scorers(
    *, max_chars: int = 20_000, latency_budget_ms: float = 10_000.0
) -> tuple[OnlineScorer, ...]:
    """Every completion scorer with its defaults: schema, non-empty, refusal, length, latency."""
    return (
        SchemaValidScorer(),
        NonEmptyScorer(),
        RefusalScorer(),
        LengthScorer(max_chars=max_chars),
        LatencyScorer(latency_budget_ms),
    )


# ------------------------------------------------------------------------------------------
# Alerts
# ------------------------------------------------------------------------------------------


class AlertState(enum.Enum):
    """Lifecycle of a quality alert (proto `AlertState`)."""

    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


@dataclass(frozen=True, kw_only=True)
class Alert:
    """A drop of one scorer's online scores of one prompt version below its baseline (proto
    `QualityAlert`, plus the tenant and the detector's own numbers)."""

    id: str
    tenant_id: str
    prompt: str
    prompt_version: int
    scorer: str
    detector: str = "cusum"
    state: AlertState
    baseline_mean: float
    baseline_std: float
    """The baseline's standard deviation of one score, after the floor; 0 when unknown (an
    alert loaded from a store that does not keep it)."""
    observed_mean: float
    """EWMA of recent scores."""
    sample_count: int
    """Scores the stream has seen (the EWMA covers them all, weighted to recent ones)."""
    cusum: float
    """The CUSUM statistic, in standard deviations of a batch mean."""
    threshold: float
    """The CUSUM threshold h it is compared with."""
    fire_time: datetime
    resolve_time: datetime | None = None
    message: str = ""


@dataclass(frozen=True)
class AlertChange:
    """An alert raised or resolved by one observation."""

    kind: Literal["raised", "resolved"]
    alert: Alert


class StreamKey(NamedTuple):
    """What one drift stream watches."""

    tenant_id: str
    prompt: str
    prompt_version: int
    scorer: str


@dataclass(frozen=True)
class Baseline:
    """The expected mean score of a stream. `std` is of one score; None means the largest
    standard deviation a [0, 1] score with this mean can have, sqrt(mean x (1 - mean)) (exact
    for pass/fail scores). `source` says where it came from: `report` (an offline evaluation
    report), `warmup` (the stream's first scores) or `alert` (restored from a stored alert)."""

    mean: float
    std: float | None = None
    count: int = 0
    source: str = "report"

    def __post_init__(self) -> None:
        if not 0.0 <= self.mean <= 1.0:
            raise ValueError(f"a baseline mean must be in [0, 1], got {self.mean}")
        if self.std is not None and not 0.0 <= self.std <= 1.0:
            raise ValueError(f"a baseline std must be in [0, 1], got {self.std}")


@dataclass(frozen=True)
class StreamStatus:
    """A read-only view of one drift stream, for display."""

    key: StreamKey
    baseline: Baseline | None
    """None while warming up."""
    ewma: float
    cusum: float
    sample_count: int
    alert: Alert | None


class _Stream:
    """The bounded state of one drift stream."""

    __slots__ = (
        "alert",
        "baseline",
        "batch_count",
        "batch_sum",
        "count",
        "cusum",
        "ewma",
        "mean",
        "sigma",
        "warm_m2",
        "warm_mean",
        "warm_n",
    )

    def __init__(self) -> None:
        self.baseline: Baseline | None = None
        self.mean = 0.0
        self.sigma = 0.0
        self.count = 0
        self.ewma = 0.0
        self.cusum = 0.0
        self.batch_sum = 0.0
        self.batch_count = 0
        self.warm_n = 0
        self.warm_mean = 0.0
        self.warm_m2 = 0.0
        self.alert: Alert | None = None


class DriftDetector:
    """Watches streams of online scores for a drop below their baseline.

    Per stream (tenant, prompt, prompt version, scorer): the baseline is the one given with
    `set_baseline` (the evaluator takes it from the version's offline evaluation report), else
    a warm-up baseline from the stream's first `warmup` scores: their standard deviation, and
    their mean less two standard errors of it (an overestimated mean would push every batch
    towards a false alarm). Nothing is detected during warm-up, and a version that is bad from
    its first request sets a bad baseline: prefer report baselines. The standard deviation of
    one score, sigma, is floored at `sigma_floor` so that a near-perfect baseline does not fire
    on one failure.

    Detection is Page's one-sided CUSUM on the means of consecutive batches of `batch_size`
    scores (pass/fail scores are far from normal one at a time; batch means are close to it,
    so textbook run lengths hold). With sigma_b = sigma / sqrt(batch_size), after each batch
    S = max(0, S + (mean0 - batch_mean) / sigma_b - k); an alert is raised when S > h. While an
    alert fires, S is capped at h so that recovery is not held back by a long drop, and the
    alert resolves when S is back at 0 and the EWMA of single scores (weight `ewma_weight`) is
    within k x sigma of the baseline mean: both must agree (hysteresis).

    Defaults: k = 0.5, h = 8, batch_size = 25, sigma_floor = 0.1, warmup = 500,
    ewma_weight = 0.05. Measured on simulated pass/fail scores with a report baseline (300
    seeded streams each): a drop from 0.9 to 0.6 fires after a median of 50 scores (at most
    100), 0.9 to 0.8 after 175 (99th percentile 350); no steady stream at 0.9 fired within
    2,000 scores. Vectorised simulation (4,000 runs): false alarms within 2,000 scores in about
    1% of streams at a mean of 0.9 or 0.5 and 5% at 0.99. With a warm-up baseline, 2 of 300
    steady streams at 0.9 fired within 2,000 scores after warm-up. After recovery to the
    baseline, an alert resolves after a median of 375 scores.

    State is O(1) per stream, and at most `max_streams` streams are kept: the least recently
    observed one without a firing alert is forgotten first. Not thread-safe: use one event loop.
    """

    def __init__(
        self,
        *,
        slack: float = 0.5,
        threshold: float = 8.0,
        batch_size: int = 25,
        warmup: int = 500,
        ewma_weight: float = 0.05,
        sigma_floor: float = 0.1,
        max_streams: int = 10_000,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """`slack` (k) and `threshold` (h) are in standard deviations of a batch mean."""
        if not (slack >= 0 and threshold > 0 and 0 < ewma_weight <= 1 and 0 < sigma_floor <= 1):
            raise ValueError(
                "need slack >= 0, threshold > 0, ewma_weight and sigma_floor in (0, 1]"
            )
        if batch_size < 1 or warmup < 2 or max_streams < 1:
            raise ValueError("need batch_size >= 1, warmup >= 2 and max_streams >= 1")
        self.slack = slack
        self.threshold = threshold
        self.batch_size = batch_size
        self.warmup = warmup
        self.ewma_weight = ewma_weight
        self.sigma_floor = sigma_floor
        self._max_streams = max_streams
        self._clock = clock
        self._streams: OrderedDict[StreamKey, _Stream] = OrderedDict()

    def __len__(self) -> int:
        return len(self._streams)

    def has_stream(self, key: StreamKey) -> bool:
        """Whether `key` has a stream (with a baseline or warming up)."""
        return key in self._streams

    def set_baseline(self, key: StreamKey, baseline: Baseline) -> None:
        """Gives the stream `key` its baseline (creating the stream), ending any warm-up and
        restarting the CUSUM; a firing alert stays and resolves by the usual rule."""
        stream = self._stream(key)
        self._apply_baseline(stream, baseline)
        stream.cusum = 0.0
        stream.batch_sum = 0.0
        stream.batch_count = 0

    def restore(self, alert: Alert) -> None:
        """Re-creates the stream of a FIRING `alert` loaded from storage after a restart, with
        the alert's baseline (a `baseline_std` of 0 counts as unknown, see `Baseline`) and S at
        h, so the alert resolves once quality is back."""
        if alert.state is not AlertState.FIRING:
            raise ValueError("only firing alerts can be restored")
        key = StreamKey(alert.tenant_id, alert.prompt, alert.prompt_version, alert.scorer)
        stream = self._stream(key)
        std = alert.baseline_std if alert.baseline_std > 0 else None
        self._apply_baseline(stream, Baseline(alert.baseline_mean, std, source="alert"))
        stream.cusum = self.threshold
        stream.ewma = alert.observed_mean
        stream.count = alert.sample_count
        stream.alert = alert

    def status(self, key: StreamKey) -> StreamStatus | None:
        """The stream's current numbers, None when there is no such stream."""
        stream = self._streams.get(key)
        if stream is None:
            return None
        return StreamStatus(
            key, stream.baseline, stream.ewma, stream.cusum, stream.count, self._live(stream)
        )

    def alert(self, key: StreamKey) -> Alert | None:
        """The stream's firing alert with its current numbers; None when none fires."""
        stream = self._streams.get(key)
        return None if stream is None else self._live(stream)

    def observe(self, score: OnlineScore) -> AlertChange | None:
        """Adds one score to its stream; returns the alert raised or resolved by it, if any."""
        key = StreamKey(score.tenant_id, score.prompt, score.prompt_version, score.name)
        stream = self._stream(key)
        x = score.value
        stream.count += 1
        if stream.count == 1:
            stream.ewma = x
        else:
            stream.ewma += self.ewma_weight * (x - stream.ewma)
        if stream.baseline is None:
            stream.warm_n += 1
            delta = x - stream.warm_mean
            stream.warm_mean += delta / stream.warm_n
            stream.warm_m2 += delta * (x - stream.warm_mean)
            if stream.warm_n >= self.warmup:
                std = math.sqrt(stream.warm_m2 / (stream.warm_n - 1))
                # Lower the mean by two standard errors: an overestimated baseline would bias
                # every batch towards a false alarm, an underestimated one only slows detection.
                margin = WARMUP_MARGIN * max(std, self.sigma_floor) / math.sqrt(stream.warm_n)
                mean = min(max(stream.warm_mean - margin, 0.0), 1.0)
                self._apply_baseline(
                    stream, Baseline(mean, min(std, 1.0), stream.warm_n, source="warmup")
                )
            return None
        stream.batch_sum += x
        stream.batch_count += 1
        if stream.batch_count < self.batch_size:
            return None
        batch_mean = stream.batch_sum / stream.batch_count
        stream.batch_sum = 0.0
        stream.batch_count = 0
        sigma_batch = stream.sigma / math.sqrt(self.batch_size)
        stream.cusum = max(
            0.0, stream.cusum + (stream.mean - batch_mean) / sigma_batch - self.slack
        )
        if stream.alert is None:
            if stream.cusum > self.threshold:
                return self._raise(key, stream)
            return None
        stream.cusum = min(stream.cusum, self.threshold)
        if stream.cusum == 0.0 and stream.ewma >= stream.mean - self.slack * stream.sigma:
            return self._resolve(stream)
        return None

    def _apply_baseline(self, stream: _Stream, baseline: Baseline) -> None:
        std = baseline.std
        if std is None:
            std = math.sqrt(baseline.mean * (1.0 - baseline.mean))
        stream.baseline = baseline
        stream.mean = baseline.mean
        stream.sigma = max(std, self.sigma_floor)

    def _raise(self, key: StreamKey, stream: _Stream) -> AlertChange:
        alert = Alert(
            id=uuid.uuid4().hex,
            tenant_id=key.tenant_id,
            prompt=key.prompt,
            prompt_version=key.prompt_version,
            scorer=key.scorer,
            state=AlertState.FIRING,
            baseline_mean=stream.mean,
            baseline_std=stream.sigma,
            observed_mean=stream.ewma,
            sample_count=stream.count,
            cusum=stream.cusum,
            threshold=self.threshold,
            fire_time=self._clock(),
            message=(
                f"{key.scorer} of {key.prompt}@{key.prompt_version} dropped: recent mean "
                f"{stream.ewma:.3f} against baseline {stream.mean:.3f} "
                f"(CUSUM {stream.cusum:.2f} > {self.threshold:g})"
            ),
        )
        stream.alert = alert
        stream.cusum = min(stream.cusum, self.threshold)
        return AlertChange("raised", alert)

    def _resolve(self, stream: _Stream) -> AlertChange:
        assert stream.alert is not None
        alert = self._live(stream)
        assert alert is not None
        resolved = replace(
            alert,
            state=AlertState.RESOLVED,
            resolve_time=self._clock(),
            message=(
                f"{alert.scorer} of {alert.prompt}@{alert.prompt_version} recovered: recent mean "
                f"{stream.ewma:.3f} against baseline {stream.mean:.3f}"
            ),
        )
        stream.alert = None
        return AlertChange("resolved", resolved)

    def _live(self, stream: _Stream) -> Alert | None:
        if stream.alert is None:
            return None
        return replace(
            stream.alert,
            observed_mean=stream.ewma,
            sample_count=stream.count,
            cusum=stream.cusum,
        )

    def _stream(self, key: StreamKey) -> _Stream:
        stream = self._streams.get(key)
        if stream is not None:
            self._streams.move_to_end(key)
            return stream
        if len(self._streams) >= self._max_streams:
            victim = next((k for k, s in self._streams.items() if s.alert is None), None)
            if victim is None:
                victim = next(iter(self._streams))
                _logger.warning("forgetting drift stream %s while its alert fires", victim)
            del self._streams[victim]
        stream = self._streams[key] = _Stream()
        return stream


# ------------------------------------------------------------------------------------------
# The alert book
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertPage:
    """One page of alerts, newest first; `next_page_token` is empty on the last page."""

    alerts: Sequence[Alert]
    next_page_token: str = ""


class AlertSink(Protocol):
    """Where alerts are persisted (the evaluation store); `save` upserts by `alert.id`."""

    async def save(self, alert: Alert) -> None:
        """Stores `alert`, replacing an earlier state of the same id."""
        ...


class BaselineSource(Protocol):
    """Where a stream's baseline comes from (the version's latest offline evaluation report)."""

    async def baseline(
        self, tenant_id: str, prompt: str, prompt_version: int, scorer: str
    ) -> Baseline | None:
        """The baseline of this scorer on this prompt version; None when there is none."""
        ...


class AlertBook:
    """Firing and recently resolved alerts in memory, for `ListQualityAlerts`.

    Every firing alert is kept; of the resolved ones, the `max_resolved` most recently
    resolved. Methods never await, so they are atomic on one event loop; a lock also makes them
    safe from other threads.
    """

    def __init__(self, *, max_resolved: int = 1000) -> None:
        if max_resolved < 0:
            raise ValueError("max_resolved must be >= 0")
        self._max_resolved = max_resolved
        self._alerts: dict[str, Alert] = {}
        self._resolved: OrderedDict[str, None] = OrderedDict()
        """Ids of resolved alerts, oldest resolution first."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._alerts)

    def record(self, alert: Alert) -> None:
        """Adds `alert` or replaces the alert with its id."""
        with self._lock:
            self._alerts[alert.id] = alert
            if alert.state is AlertState.RESOLVED:
                self._resolved[alert.id] = None
                self._resolved.move_to_end(alert.id)
                while len(self._resolved) > self._max_resolved:
                    oldest, _ = self._resolved.popitem(last=False)
                    del self._alerts[oldest]
            else:
                self._resolved.pop(alert.id, None)

    def get(self, alert_id: str) -> Alert | None:
        """The alert with this id, None when the book does not hold it."""
        return self._alerts.get(alert_id)

    def firing(self) -> list[Alert]:
        """Every firing alert, newest first."""
        with self._lock:
            alerts = [a for a in self._alerts.values() if a.state is AlertState.FIRING]
        return sorted(alerts, key=_position, reverse=True)

    def list(
        self,
        *,
        tenant_id: str | None = None,
        prompt: str = "",
        state: AlertState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> AlertPage:
        """One page of alerts newest first (by fire time, then id), of `tenant_id` (None: every
        tenant), of `prompt` (empty: every prompt) and in `state` (None: either). `page_size`
        in [0, 1000], 0 meaning 100; `page_token` is a previous page's `next_page_token` with the
        same filters. Invalid values raise `InvalidArgument` naming each field."""
        violations = []
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation("page_size", f"must be in [0, {MAX_PAGE_SIZE}]"))
        after: tuple[int, str] | None = None
        if page_token:
            after = _decode_token(page_token)
            if after is None:
                violations.append(FieldViolation("page_token", "is not a token this call issued"))
        if violations:
            raise InvalidArgument(violations=violations)
        size = page_size or DEFAULT_PAGE_SIZE
        with self._lock:
            matching = [
                a
                for a in self._alerts.values()
                if (tenant_id is None or a.tenant_id == tenant_id)
                and (not prompt or a.prompt == prompt)
                and (state is None or a.state is state)
                and (after is None or _position(a) < after)
            ]
        matching.sort(key=_position, reverse=True)
        page = matching[:size]
        token = _encode_token(_position(page[-1])) if len(matching) > size else ""
        return AlertPage(page, token)


def _position(alert: Alert) -> tuple[int, str]:
    """Where an alert sorts: by fire time in microseconds, then id."""
    return (round(alert.fire_time.timestamp() * 1_000_000), alert.id)


def _encode_token(position: tuple[int, str]) -> str:
    micros, alert_id = position
    return base64.urlsafe_b64encode(f"{micros}:{alert_id}".encode()).decode()


def _decode_token(token: str) -> tuple[int, str] | None:
    try:
        raw = base64.urlsafe_b64decode(token.encode()).decode()
        micros, sep, alert_id = raw.partition(":")
        return (int(micros), alert_id) if sep else None
    except (binascii.Error, UnicodeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------
# The evaluator
# ------------------------------------------------------------------------------------------


class OnlineEvaluationMetrics:
    """Online evaluation's Prometheus metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.score = Histogram(
            "genai_online_evaluation_score",
            "Online evaluation scores in [0, 1] (1 is best), by prompt and scorer.",
            ("prompt", "scorer"),
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.alerts_firing = Gauge(
            "genai_quality_alerts_firing",
            "Quality alerts firing, by prompt, prompt version and scorer (summed over tenants).",
            ("prompt", "version", "scorer"),
            registry=registry,
        )
        records = Counter(
            "genai_online_evaluation_records",
            "Records offered to online evaluation by outcome: scored (at least one scorer "
            "applied), skipped (not sampled, or no scorer applied), dropped (queue full or "
            "evaluator closed).",
            ("outcome",),
            registry=registry,
        )
        self.scored = records.labels(outcome="scored")
        self.skipped = records.labels(outcome="skipped")
        self.dropped = records.labels(outcome="dropped")


class OnlineEvaluator:
    """Scores sampled live requests in the background, feeds the drift detector, keeps the alert
    book, persists alert changes and reports scores as metrics and OpenTelemetry events.

    `submit` is called on the request path and never blocks: completions not sampled are
    counted as skipped at once; the rest wait in a queue of `capacity` records, and past it
    they are dropped and counted (feedback is never sampled out). One background task scores
    them; a new stream first asks `baselines` for its baseline (once), else warms up. Use it
    from one event loop: `start()`, `submit` from its tasks, `aclose()` at shutdown.
    """

    def __init__(
        self,
        *,
        sampler: OnlineSampler,
        registry: CollectorRegistry,
        scorers: Sequence[OnlineScorer] | None = None,
        detector: DriftDetector | None = None,
        book: AlertBook | None = None,
        sink: AlertSink | None = None,
        baselines: BaselineSource | None = None,
        logger_provider: otel_logs.LoggerProvider | None = None,
        capacity: int = 10_000,
        save_timeout_seconds: float = 5.0,
    ) -> None:
        """Scorers default to `default_scorers()`, detector and book to their defaults; events
        go to `logger_provider`, or the global provider when None. A `sink.save` still running
        after `save_timeout_seconds` is abandoned (and logged) so scoring goes on."""
        if capacity < 1 or not save_timeout_seconds > 0:
            raise ValueError("capacity must be at least 1 and save_timeout_seconds positive")
        self._save_timeout = save_timeout_seconds
        self._sampler = sampler
        self._scorers = tuple(default_scorers() if scorers is None else scorers)
        self._feedback = FeedbackScorer()
        self.detector = detector if detector is not None else DriftDetector()
        self.book = book if book is not None else AlertBook()
        self._sink = sink
        self._baselines = baselines
        self._events = (
            logger_provider.get_logger(__name__)
            if logger_provider is not None
            else otel_logs.get_logger(__name__)
        )
        self.metrics = OnlineEvaluationMetrics(registry)
        self._capacity = capacity
        self._queue: deque[OnlineRecord | FeedbackRecord] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._full_logged = False

    @property
    def queue_depth(self) -> int:
        """Records waiting to be scored."""
        return len(self._queue)

    def start(self) -> None:
        """Starts the background scoring task in the running event loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="online-evaluator"
            )
            self._task.add_done_callback(_log_unexpected_end)

    def submit(self, record: OnlineRecord | FeedbackRecord) -> None:
        """Takes one finished request (or feedback) for scoring; never blocks."""
        if isinstance(record, OnlineRecord) and not self._sampler.sampled(
            record.trace_id or record.request_id
        ):
            self.metrics.skipped.inc()
            return
        if self._closing or len(self._queue) >= self._capacity:
            self.metrics.dropped.inc()
            if not self._closing and not self._full_logged:
                self._full_logged = True
                _logger.warning(
                    "online evaluation queue full (%d records): dropping", self._capacity
                )
            return
        self._queue.append(record)
        self._idle.clear()
        self._wakeup.set()

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Takes alerts loaded from storage at start: every one goes into the book, and the
        firing ones also into the detector (see `DriftDetector.restore`) and the firing gauge,
        so they resolve once their stream recovers."""
        for alert in alerts:
            self.book.record(alert)
            if alert.state is AlertState.FIRING:
                self.detector.restore(alert)
                self.metrics.alerts_firing.labels(
                    alert.prompt, str(alert.prompt_version), alert.scorer
                ).inc()

    async def wait_idle(self) -> None:
        """Returns once every record submitted so far has been scored (after `start()`)."""
        await self._idle.wait()

    async def aclose(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stops taking records and scores those queued, for at most `timeout` seconds; what
        is left then is counted as dropped. Later calls return at once."""
        if self._closing and self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        self.start()  # records submitted before start() are scored too
        task = self._task
        assert task is not None
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        if self._queue:
            self.metrics.dropped.inc(len(self._queue))
            _logger.error("online evaluator closed with %d records unscored", len(self._queue))
            self._queue.clear()
        self._idle.set()
        self._task = None

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._idle.set()
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            record = self._queue.popleft()
            self._full_logged = False
            try:
                await self._evaluate(record)
            except Exception:
                _logger.exception("online evaluation of request %s failed", record.request_id)
            await asyncio.sleep(0)  # scoring is cheap but must not hog the loop

    async def _evaluate(self, record: OnlineRecord | FeedbackRecord) -> None:
        verdicts: list[tuple[str, Verdict]] = []
        if isinstance(record, FeedbackRecord):
            verdicts.append((self._feedback.name, self._feedback.score(record)))
        else:
            for scorer in self._scorers:
                try:
                    verdict = scorer.score(record)
                except Exception:
                    _logger.exception("online scorer %s failed", scorer.name)
                    continue
                if verdict is not None:
                    verdicts.append((scorer.name, verdict))
        if not verdicts:
            self.metrics.skipped.inc()
            return
        self.metrics.scored.inc()
        for name, verdict in verdicts:
            score = OnlineScore(
                name,
                verdict.value,
                record.prompt,
                record.prompt_version,
                record.model,
                record.trace_id,
                record.request_id,
                tenant_id=record.tenant_id,
                label=verdict.label,
                explanation=verdict.explanation,
                span_id=record.span_id,
            )
            await self._observe(score)

    async def _observe(self, score: OnlineScore) -> None:
        self.metrics.score.labels(score.prompt, score.name).observe(score.value)
        self._emit(score)
        key = StreamKey(score.tenant_id, score.prompt, score.prompt_version, score.name)
        if self._baselines is not None and not self.detector.has_stream(key):
            try:
                baseline = await self._baselines.baseline(*key)
            except Exception:
                _logger.exception("looking up the baseline of %s failed: warming up", key)
                baseline = None
            if baseline is not None:
                self.detector.set_baseline(key, baseline)
        change = self.detector.observe(score)
        if change is None:
            live = self.detector.alert(key)
            if live is not None:
                self.book.record(live)
            return
        gauge = self.metrics.alerts_firing.labels(
            score.prompt, str(score.prompt_version), score.name
        )
        if change.kind == "raised":
            gauge.inc()
            _logger.warning("quality alert %s: %s", change.alert.id, change.alert.message)
        else:
            gauge.dec()
            _logger.info("quality alert %s resolved: %s", change.alert.id, change.alert.message)
        self.book.record(change.alert)
        if self._sink is not None:
            try:
                await asyncio.wait_for(self._sink.save(change.alert), self._save_timeout)
            except Exception:
                _logger.exception("saving quality alert %s failed", change.alert.id)

    def _emit(self, score: OnlineScore) -> None:
        if not self._events.enabled(event_name=EVALUATION_RESULT_EVENT):
            return
        attributes: dict[str, str | float | int] = {
            "gen_ai.evaluation.name": score.name,
            "gen_ai.evaluation.score.value": score.value,
            "gen_ai.evaluation.score.label": score.label,
            "gen_ai.response.id": score.request_id,
            "gen_ai.prompt.name": score.prompt,
            "gen_ai.prompt.version": score.prompt_version,
        }
        if score.explanation:
            attributes["gen_ai.evaluation.explanation"] = score.explanation
        if score.model:
            attributes["gen_ai.response.model"] = score.model
        self._events.emit(
            event_name=EVALUATION_RESULT_EVENT,
            attributes=attributes,
            context=request_context(score.trace_id, score.span_id),
        )


def request_context(trace_id: str, span_id: str = "") -> Context:
    """A context whose current span is the (ended, remote) request span with these hex ids, so
    events emitted in it carry them; an empty context when the trace id is not valid hex."""
    try:
        trace_int = int(trace_id, 16) if trace_id else 0
        span_int = int(span_id, 16) if span_id else 0
    except ValueError:
        return Context()
    if not 0 < trace_int < 1 << 128 or not 0 <= span_int < 1 << 64:
        return Context()
    span_context = trace.SpanContext(
        trace_id=trace_int,
        span_id=span_int,
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), Context())


def _log_unexpected_end(task: "asyncio.Task[None]") -> None:
    if not task.cancelled() and task.exception() is not None:
        _logger.error("online evaluator stopped", exc_info=task.exception())

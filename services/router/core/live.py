"""What the router learns about each backend while it runs: latency statistics from reported
outcomes, a circuit breaker, active health, and requests in flight."""

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Health(StrEnum):
    """What the last active health check found."""

    UNKNOWN = "unknown"
    SERVING = "serving"
    NOT_SERVING = "not_serving"


class Circuit(StrEnum):
    """A circuit breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(StrEnum):
    """How one attempt on a backend ended (`genai.router.v1.AttemptResult`)."""

    SUCCESS = "success"
    FAILED_BEFORE_FIRST_TOKEN = "failed_before_first_token"
    FAILED_AFTER_FIRST_TOKEN = "failed_after_first_token"
    OVERLOADED = "overloaded"
    CANCELLED = "cancelled"


FAILURES = frozenset({Outcome.FAILED_BEFORE_FIRST_TOKEN, Outcome.FAILED_AFTER_FIRST_TOKEN})


class LatencyWindow:
    """An EWMA and the 95th percentile over the last `size` samples (seconds)."""

    def __init__(self, size: int = 200, alpha: float = 0.2) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._alpha = alpha
        self.ewma: float | None = None

    def add(self, seconds: float) -> None:
        """Records one sample."""
        self._samples.append(seconds)
        self.ewma = (
            seconds if self.ewma is None else self.ewma + self._alpha * (seconds - self.ewma)
        )

    @property
    def count(self) -> int:
        """Samples in the window."""
        return len(self._samples)

    def p95(self) -> float | None:
        """The nearest-rank 95th percentile of the window, None without samples."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a circuit opens and how it recovers."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window: int = 20
    cooldown_s: float = 10.0
    probes: int = 1


class CircuitBreaker:
    """Opens after `consecutive_failures` failures in a row, or when at least half the window is
    filled and the failure share reaches `failure_rate`; after `cooldown_s` it half-opens and
    lets `probes` requests through: a success closes it, a failure opens it again."""

    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._state = Circuit.CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._recent: deque[bool] = deque(maxlen=policy.window)
        self._probes_out = 0

    @property
    def state(self) -> Circuit:
        """The state now (an open circuit whose cool-down ended reads as half-open)."""
        if (
            self._state is Circuit.OPEN
            and self._clock() - self._opened_at >= self._policy.cooldown_s
        ):
            self._state = Circuit.HALF_OPEN
            self._probes_out = 0
        return self._state

    def half_opens_in(self) -> float | None:
        """Seconds until an open circuit half-opens (by the injected clock); None when it is
        not open."""
        if self.state is not Circuit.OPEN:
            return None
        return max(self._opened_at + self._policy.cooldown_s - self._clock(), 0.0)

    def allows(self) -> bool:
        """Whether a request may be sent now (without taking a probe slot)."""
        if self._state is Circuit.CLOSED:  # the common case, checked on every route
            return True
        state = self.state
        return state is Circuit.CLOSED or (
            state is Circuit.HALF_OPEN and self._probes_out < self._policy.probes
        )

    def take(self) -> None:
        """Notes that a request was sent (a probe, when half-open)."""
        if self.state is Circuit.HALF_OPEN:
            self._probes_out += 1

    def record(self, outcome: Outcome) -> None:
        """Learns from one outcome; cancellations and overloads say nothing about health."""
        if outcome not in FAILURES and outcome is not Outcome.SUCCESS:
            return
        failed = outcome in FAILURES
        self._recent.append(failed)
        state = self.state
        if not failed:
            self._consecutive = 0
            if state is Circuit.HALF_OPEN:
                self._state = Circuit.CLOSED
                self._recent.clear()
            return
        self._consecutive += 1
        window_full = len(self._recent) * 2 >= self._policy.window
        rate = sum(self._recent) / len(self._recent)
        if (
            state is Circuit.HALF_OPEN
            or self._consecutive >= self._policy.consecutive_failures
            or (window_full and rate >= self._policy.failure_rate)
        ):
            self._open()

    def _open(self) -> None:
        self._state = Circuit.OPEN
        self._opened_at = self._clock()
        self._probes_out = 0


@dataclass(slots=True)
class BackendLive:
    """Everything live about one backend."""

    breaker: CircuitBreaker
    first_token: LatencyWindow
    per_token: LatencyWindow
    health: Health = Health.UNKNOWN
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    last_error: str = ""
    last_check_time: float | None = None
    """Wall-clock time (epoch seconds) of the last completed health check."""
    last_check_at: float | None = None
    """The router's monotonic clock at the last completed health check: the next one is due
    an interval later (`last_check_time` is for people, this is for arithmetic)."""
    health_error: str = ""
    """What the last health check found wrong (`HTTP 503`); "" while checks pass."""
    queue_s: float | None = None
    """Mean time a request waited in the backend's own queue over the last health-check
    interval (Triton's statistics, all its clients included); None before two readings."""

    @classmethod
    def new(cls, policy: BreakerPolicy, clock: Callable[[], float]) -> "BackendLive":
        """A backend nothing is known about yet."""
        return cls(CircuitBreaker(policy, clock), LatencyWindow(), LatencyWindow())

    @property
    def available(self) -> bool:
        """Whether new requests may go here: not failing health checks, circuit letting
        requests through."""
        return self.health is not Health.NOT_SERVING and self.breaker.allows()

    def unavailable_reason(self) -> str:
        """Why it is not available, for decisions' rejection reasons."""
        if self.health is Health.NOT_SERVING:
            return "failing health checks"
        return f"circuit {self.breaker.state.value.replace('_', '-')}"

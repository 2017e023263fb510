"""Deadlines kept as readings of a clock (`time.perf_counter`, `time.monotonic`, a test's fake):
the time a downstream call may still take is what is left of the caller's."""

from collections.abc import Callable


def time_until(deadline: float | None, clock: Callable[[], float]) -> float | None:
    """Seconds from now (`clock()`) to `deadline`, never negative; None without a deadline."""
    return None if deadline is None else max(deadline - clock(), 0.0)

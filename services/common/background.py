"""Background loops that stop when they are cancelled.

A loop that catches `Exception` to survive a failing store stops only if the cancellation
reaches it as `CancelledError`. Libraries do not always let it: Python 3.11's `asyncio.wait_for`
drops a cancellation that lands as its awaitable completes, and a client library may turn the
cancellation of a socket operation into its own error. The task's cancellation count survives
either way (`Task.cancelling`), so loops look at it (`cancel_requested`) before each round: a
stopping process never waits on a loop that missed its cancellation.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

_logger = logging.getLogger(__name__)


def cancel_requested() -> bool:
    """True when the current task was asked to cancel, even if a library swallowed the
    `CancelledError`."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def every(
    seconds: float,
    work: Callable[[], Awaitable[object]],
    *,
    name: str,
    expected: tuple[type[Exception], ...] = (),
    immediately: bool = False,
) -> None:
    """Runs `work` every `seconds` (the first time at once with `immediately`) until
    cancelled. A failure is logged (an `expected` one is left to the work's own logging) and
    the next round runs all the same."""
    while not cancel_requested():
        if not immediately:
            await asyncio.sleep(seconds)
        immediately = False
        try:
            await work()
        except expected:
            pass
        except Exception:
            _logger.exception("%s failed", name)
    raise asyncio.CancelledError

"""Background loops stop when cancelled, also when the work swallows the cancellation (as
Python 3.11's `asyncio.wait_for` and client libraries' timeouts can), and survive failures."""

import asyncio

import pytest

from services.common.background import every


async def test_a_loop_whose_work_swallowed_the_cancellation_still_stops() -> None:
    rounds = 0
    inside = asyncio.Event()

    async def work() -> None:
        nonlocal rounds
        rounds += 1
        inside.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:  # a library turning the cancellation into its error
            raise ConnectionError("socket closed") from None

    loop = asyncio.create_task(every(0.001, work, name="test", expected=(ConnectionError,)))
    await inside.wait()
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(loop, 1)
    assert rounds == 1


async def test_a_failing_round_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds = 0
    third = asyncio.Event()

    async def work() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            third.set()
        raise ValueError("the store is down")

    loop = asyncio.create_task(every(0.001, work, name="flaky work", immediately=True))
    await asyncio.wait_for(third.wait(), 1)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert "flaky work failed" in caplog.text

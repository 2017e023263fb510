"""`call_scope` (services/common/policy.py) when the access layer's generator is closed from
another context, as asyncio does for a streaming handler grpc.aio dropped when its client went
away: the scope ends quietly instead of raising from its `finally`."""

import asyncio
import contextvars
from collections.abc import AsyncGenerator

from services.common import policy
from services.common.policy import CallAccess, call_scope


async def _guarded() -> AsyncGenerator[int, None]:
    with call_scope(CallAccess("/pkg.Service/Method", None)):  # type: ignore[arg-type]
        yield 1
        yield 2


async def test_a_scope_closed_from_another_context_ends_quietly() -> None:
    responses = _guarded()
    assert await anext(responses) == 1  # suspended at a yield, inside the scope

    # Closed from a fresh context, as asyncio's finalizer hook does: no ValueError.
    await asyncio.create_task(responses.aclose(), context=contextvars.Context())


async def test_a_scope_ends_as_usual_in_its_own_context() -> None:
    responses = _guarded()
    assert await anext(responses) == 1
    assert policy._current_call.get() is not None
    await responses.aclose()

    assert policy._current_call.get() is None

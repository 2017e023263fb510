"""`Idempotency`, the process side of idempotent requests, on a real SQLite store: what `begin`
answers and raises (with the rich status each error becomes), the lease renewed while a claim
runs, a claim left by a cancelled caller released, a failing store reported as UNAVAILABLE,
and the replay stream of a stored completion."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2
from google.rpc import error_details_pb2

from services.common import reasons
from services.common.errors import Unavailable
from services.common.status import to_rpc_status
from services.gateway.adapters.idempotency_store import SqlIdempotencyStore
from services.gateway.completion import replayed
from services.gateway.core.idempotency import (
    Claim,
    Idempotency,
    InProgress,
    Replay,
    RequestIdReused,
    RequestInProgress,
    fingerprint,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlIdempotencyStore]:
    store = SqlIdempotencyStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


def _idempotency(store: SqlIdempotencyStore, lease: float = 10.0) -> Idempotency:
    return Idempotency(store, lease_seconds=lease, retention_seconds=86_400, sweep_seconds=60)


def _details(error: Exception) -> dict[str, object]:
    status = to_rpc_status(error)
    found: dict[str, object] = {"code": status.code}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.__name__] = message
    return found


def test_the_fingerprint_is_a_stable_hash_of_the_serialization() -> None:
    assert fingerprint(b"abc") == fingerprint(b"abc")
    assert fingerprint(b"abc") != fingerprint(b"abd")
    assert len(fingerprint(b"")) == 64


async def test_begin_claims_then_refuses_in_progress_with_a_retry_delay(
    store: SqlIdempotencyStore,
) -> None:
    first, second = _idempotency(store), _idempotency(store)  # two replicas
    claim = await first.begin("acme", "completion", "r1", "fp")
    assert isinstance(claim, Claim)
    assert claim.owner == first.owner != second.owner

    with pytest.raises(RequestInProgress) as running:
        await second.begin("acme", "completion", "r1", "fp")
    assert running.value.retry_after == 1.0  # the lease has 10 s left: ask again in 1 s
    details = _details(running.value)
    assert details["code"] == grpc.StatusCode.ABORTED.value[0]
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, dict(info.metadata)) == (
        reasons.REQUEST_IN_PROGRESS,
        {"request_id": "r1"},
    )
    retry = details["RetryInfo"]
    assert retry.retry_delay.ToNanoseconds() == 1_000_000_000  # type: ignore[attr-defined]

    with pytest.raises(RequestIdReused) as reused:
        await second.begin("acme", "completion", "r1", "another request")
    details = _details(reused.value)
    assert details["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    info = details["ErrorInfo"]
    assert info.reason == reasons.REQUEST_ID_REUSED  # type: ignore[attr-defined]
    assert info.metadata["field"] == "request_id"  # type: ignore[attr-defined]
    assert "RetryInfo" not in details

    assert await first.complete(claim, b"outcome")
    assert await second.begin("acme", "completion", "r1", "fp") == Replay(b"outcome")


async def test_a_retry_is_asked_to_wait_no_longer_than_the_lease_has_left(
    store: SqlIdempotencyStore,
) -> None:
    await _idempotency(store, lease=0.3).begin("acme", "completion", "r1", "fp")
    with pytest.raises(RequestInProgress) as running:
        await _idempotency(store).begin("acme", "completion", "r1", "fp")
    assert running.value.retry_after is not None
    assert 0.05 <= running.value.retry_after <= 0.3


async def test_a_released_claim_runs_again(store: SqlIdempotencyStore) -> None:
    idempotency = _idempotency(store)
    claim = await idempotency.begin("acme", "completion", "r1", "fp")
    assert isinstance(claim, Claim)
    await idempotency.release(claim)
    again = await idempotency.begin("acme", "completion", "r1", "fp")
    assert isinstance(again, Claim)
    assert again.token != claim.token


async def test_running_claims_are_renewed_in_the_background_and_lapse_once_it_stops(
    store: SqlIdempotencyStore,
) -> None:
    runner, other = _idempotency(store, lease=0.3), _idempotency(store)
    await runner.start()
    try:
        claim = await runner.begin("acme", "completion", "r1", "fp")
        assert isinstance(claim, Claim)
        await asyncio.sleep(0.8)  # well past the first lease: renewed every 0.1 s
        with pytest.raises(RequestInProgress):
            await other.begin("acme", "completion", "r1", "fp")
    finally:
        await runner.aclose()  # as if the process died: nobody renews any more
    await asyncio.sleep(0.4)
    taken = await other.begin("acme", "completion", "r1", "fp")
    assert isinstance(taken, Claim)
    assert taken.owner == other.owner
    assert not await runner.complete(claim, b"late")  # lost: its outcome is not stored
    assert await other.complete(taken, b"kept")


async def test_a_caller_cancelled_while_claiming_leaves_no_claim_behind(
    store: SqlIdempotencyStore,
) -> None:
    idempotency = _idempotency(store)
    for _ in range(20):  # cancel at various points of the claim
        task = asyncio.create_task(idempotency.begin("acme", "completion", "r1", "fp"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await idempotency.aclose()  # waits for the orphaned claim's release
        result = await store.claim("acme", "completion", "r1", "fp", owner="x", lease_seconds=5)
        assert not isinstance(result, InProgress), "a cancelled caller's claim was left held"
        assert await store.release(result.claim)  # type: ignore[union-attr]


async def test_a_failing_store_is_unavailable_with_a_retry_delay(tmp_path: Path) -> None:
    broken = SqlIdempotencyStore.from_url(f"sqlite+aiosqlite:///{tmp_path / 'never-migrated.db'}")
    try:
        with pytest.raises(Unavailable) as unavailable:
            await _idempotency(broken).begin("acme", "completion", "r1", "fp")
    finally:
        await broken.close()
    assert unavailable.value.retry_after == 1.0
    assert "idempotency store" in unavailable.value.message


def test_a_stored_completion_replays_as_start_one_delta_and_the_same_final() -> None:
    final = gateway_pb2.CompletionMetadata(
        request_id="r1",
        trace_id="ab" * 16,
        prompt="chat",
        prompt_version=3,
        experiment="exp",
        variant="b",
        model="zero",
    )
    final.usage.output_tokens = 7
    stored = gateway_service_pb2.CompleteResponse(text="Hello, world!", metadata=final)
    messages = replayed(stored.SerializeToString(deterministic=True))
    assert [m.WhichOneof("event") for m in messages] == ["start", "delta", "final"]
    assert messages[0].start == gateway_pb2.CompletionStart(
        request_id="r1", trace_id="ab" * 16, prompt="chat", prompt_version=3, experiment="exp",
        variant="b",
    )  # fmt: skip
    assert messages[1].delta.text == "Hello, world!"
    assert messages[2].final == final

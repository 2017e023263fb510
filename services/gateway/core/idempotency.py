"""Idempotent retries by a client's `request_id`, held across replicas by a shared store.

A request with a `request_id` first *claims* its key `(tenant, scope, request_id)`; the store
answers atomically, so two replicas racing on one key never both run it:

- `Claimed`: nobody holds the key (or its last holder's lease lapsed): run the request, then
  `complete` the claim with the outcome (opaque bytes, e.g. a serialized response) or
  `release` it when the request failed, so that a retry runs again. Only successes are kept.
- `Replay`: the key completed within the retention: answer with the stored outcome, doing
  nothing again.
- `InProgress`: another request holds the key: the caller is told to retry after a while
  (ABORTED, REQUEST_IN_PROGRESS, `RetryInfo`).
- `Mismatch`: the key is held or completed by a request with a different fingerprint (a hash
  of the request without its id): FAILED_PRECONDITION, REQUEST_ID_REUSED.

A claim is leased to its process (`Idempotency.owner`): the process renews the leases of all
its running claims together, in one statement per round (every third of the lease), so a
claim whose process died (SIGKILL, OOM) lapses within `lease_seconds` and a retry takes it
over. Outcomes expire `retention_seconds` after they were stored; every process sweeps expired
rows (and lapsed claims) now and then.

`Idempotency` is the part services use (`begin`, `complete`, `release`); `IdempotencyStore` is
what a store implements (`services.gateway.adapters.idempotency_store`). This module imports
neither grpc nor generated code.
"""

import asyncio
import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Final, Protocol

from services.common import reasons
from services.common.background import every
from services.common.errors import Conflict, FailedPrecondition, Unavailable

_logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_SECONDS: Final = 1.0
"""The longest a caller told "in progress" is asked to wait before asking again."""
MIN_RETRY_AFTER_SECONDS: Final = 0.05
STORE_RETRY_AFTER_SECONDS: Final = 1.0
"""The retry delay suggested when the store fails to answer a claim."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to run one request: held by `owner` (a process) until completed, released
    or lapsed; `token` tells this claim from a later one on the same key."""

    tenant_id: str
    scope: str
    request_id: str
    owner: str
    token: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """The key was free (or its lease lapsed): the caller runs the request."""

    claim: Claim


@dataclass(frozen=True, slots=True)
class Replay:
    """The key completed: `outcome` is what the first request stored."""

    outcome: bytes


@dataclass(frozen=True, slots=True)
class InProgress:
    """Another request holds the key; its lease runs `lease_left` seconds more."""

    lease_left: float


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key is held or completed by a request with another fingerprint."""


ClaimResult = Claimed | Replay | InProgress | Mismatch


class IdempotencyStore(Protocol):
    """Claims and outcomes of idempotent requests, shared by every replica.

    Keys are `(tenant_id, scope, request_id)`; `scope` names the operation (`"completion"`,
    `"GatewayService/CreateApiKey"`), so that one id may be used for different operations.
    Times are the store's wall clock; durations are seconds."""

    async def claim(
        self,
        tenant_id: str,
        scope: str,
        request_id: str,
        fingerprint: str,
        *,
        owner: str,
        lease_seconds: float,
    ) -> ClaimResult:
        """Atomically: claims a free key, or takes over one whose lease lapsed (either way
        `Claimed`, leased to `owner` for `lease_seconds`); else `Replay` of a completed key,
        `InProgress` of a held one, or `Mismatch` when `fingerprint` differs from the one
        that holds or completed the key."""
        ...

    async def complete(self, claim: Claim, outcome: bytes, *, retention_seconds: float) -> bool:
        """Stores the outcome of a claimed request, kept `retention_seconds`. False when the
        claim was lost (its lease lapsed and another request took the key over)."""
        ...

    async def release(self, claim: Claim) -> bool:
        """Frees the key of a request that failed; False when the claim was lost already."""
        ...

    async def renew(self, owner: str, lease_seconds: float) -> int:
        """Extends the lease of every running claim of `owner` to `lease_seconds` from now;
        returns how many."""
        ...

    async def sweep(self) -> int:
        """Deletes expired outcomes and lapsed claims; returns how many."""
        ...


def fingerprint(serialized: bytes) -> str:
    """The fingerprint of a request from its deterministic serialization without its id."""
    return hashlib.sha256(serialized).hexdigest()


class RequestInProgress(Conflict):
    """ABORTED: a request with the same id is running (REQUEST_IN_PROGRESS, `RetryInfo`)."""

    def __init__(self, request_id: str, retry_after: float) -> None:
        super().__init__(
            f"request {request_id!r} is still running: retry to get its outcome",
            retry_after=retry_after,
            reason=reasons.REQUEST_IN_PROGRESS,
            metadata={"request_id": request_id},
        )


class RequestIdReused(FailedPrecondition):
    """FAILED_PRECONDITION: the id belongs to a different request (REQUEST_ID_REUSED)."""

    def __init__(self, request_id: str, retention_seconds: float) -> None:
        hours = retention_seconds / 3600
        super().__init__(
            f"request_id {request_id!r} was used within {hours:g} h for a different request: "
            "use a new request_id for a new request",
            reason=reasons.REQUEST_ID_REUSED,
            metadata={"field": "request_id", "request_id": request_id},
        )


class Idempotency:
    """Runs a process's side of idempotent requests on an `IdempotencyStore`: claims leased
    to this process (`owner`), renewed in the background while they run, and the periodic
    sweep. `start()` before use, `aclose()` at shutdown.

    A service's request: `begun = await idempotency.begin(tenant, scope, id, fingerprint)`;
    `Replay` -> answer `begun.outcome`; a `Claim` -> run the request, then
    `await idempotency.complete(claim, outcome_bytes)` on success, or
    `await idempotency.release(claim)` on any failure (cancellation included)."""

    def __init__(
        self,
        store: IdempotencyStore,
        *,
        lease_seconds: float,
        retention_seconds: float,
        sweep_seconds: float,
    ) -> None:
        self._store = store
        self.lease_seconds = lease_seconds
        self.retention_seconds = retention_seconds
        self._sweep_seconds = sweep_seconds
        self.owner = uuid.uuid4().hex
        """This process's id, the owner of the claims it makes."""
        self._held: set[Claim] = set()
        """Claims of this process still running (their leases are renewed)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._orphans: set[asyncio.Future[Any]] = set()

    @property
    def store(self) -> IdempotencyStore:
        """The store of the claims and outcomes."""
        return self._store

    async def start(self) -> None:
        """Starts renewing this process's leases and sweeping expired rows (idempotent)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(every(self.lease_seconds / 3, self._renew, name="lease renewal")),
            asyncio.create_task(
                every(self._sweep_seconds, self._sweep, name="idempotency sweep", immediately=True)
            ),
        ]

    async def aclose(self) -> None:
        """Stops the background work (claims still held lapse after their lease)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._orphans:
            await asyncio.gather(*list(self._orphans), return_exceptions=True)

    async def begin(
        self, tenant_id: str, scope: str, request_id: str, request_fingerprint: str
    ) -> Claim | Replay:
        """Claims the request's key: a `Claim` to run it under, or the `Replay` of its stored
        outcome. Raises `RequestInProgress` while another request holds the key,
        `RequestIdReused` when the key belongs to a different request, and `Unavailable` when
        the store fails. A caller cancelled
        meanwhile leaves no claim behind (it is released once the store answers)."""
        claiming = asyncio.ensure_future(
            self._store.claim(
                tenant_id,
                scope,
                request_id,
                request_fingerprint,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
            )
        )
        try:
            result = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            self._orphans.add(claiming)  # `aclose` waits for it, and for its release
            claiming.add_done_callback(self._release_orphan)
            raise
        except Exception as error:  # whatever the store's driver raises
            _logger.warning("claiming request %s failed: %r", request_id, error)
            raise Unavailable(
                "the gateway's idempotency store is unavailable",
                retry_after=STORE_RETRY_AFTER_SECONDS,
            ) from error
        match result:
            case Claimed(claim):
                self._held.add(claim)
                return claim
            case Replay():
                return result
            case InProgress(lease_left):
                retry_after = min(max(lease_left, MIN_RETRY_AFTER_SECONDS), MAX_RETRY_AFTER_SECONDS)
                raise RequestInProgress(request_id, retry_after)
            case Mismatch():
                raise RequestIdReused(request_id, self.retention_seconds)
        raise AssertionError(f"unexpected claim result {result!r}")

    async def complete(self, claim: Claim, outcome: bytes) -> bool:
        """Stores the outcome of a claimed request (retries then replay it). False, logged,
        when the claim was lost meanwhile; raises when the store fails (the claim is then
        still held: release it)."""
        stored = await self._store.complete(
            claim, outcome, retention_seconds=self.retention_seconds
        )
        self._held.discard(claim)
        if not stored:
            _logger.warning(
                "request %s: its claim lapsed and was taken over before it completed; "
                "its outcome was not stored",
                claim.request_id,
            )
        return stored

    async def release(self, claim: Claim) -> None:
        """Frees the key of a request that failed, so that a retry runs it again; never
        raises but for cancellation (a claim the store cannot free lapses with its lease)."""
        self._held.discard(claim)
        try:
            await self._store.release(claim)
        except Exception:
            _logger.exception(
                "releasing the claim of request %s failed; it lapses in %.0f s",
                claim.request_id,
                self.lease_seconds,
            )

    def _release_orphan(self, claiming: "asyncio.Future[ClaimResult]") -> None:
        self._orphans.discard(claiming)
        if claiming.cancelled() or claiming.exception() is not None:
            return
        result = claiming.result()
        if isinstance(result, Claimed):
            task = asyncio.ensure_future(self._store.release(result.claim))
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)

    async def _renew(self) -> None:
        if self._held:
            await self._store.renew(self.owner, self.lease_seconds)

    async def _sweep(self) -> None:
        swept = await self._store.sweep()
        if swept:
            _logger.debug("swept %d expired idempotency records", swept)

"""Every replica's view of tenant changes: API-key revocations and quota changes, from the tenant
feed that the tenant store appends to in the same transaction as the change.

Each process follows the feed from the moment it starts (earlier changes are already in the
database, which caches read on a miss) and tells its subscribers: the API-key authenticator
drops a revoked key from its cache, the gateway drops a tenant's cached limits. On PostgreSQL a
change wakes every replica through NOTIFY within milliseconds; otherwise (SQLite, or while the
LISTEN connection is down) the feed is read every `poll_seconds`. Whatever happens, the caches'
own time limits bound how long a stale entry can live.
"""

from collections.abc import Callable
from typing import Protocol

from services.common.feeds import FeedFollower, Wakeup
from services.gateway.core.tenants import TenantEvent, TenantEventKind

Subscriber = Callable[[str], None]
"""Called with a key id (revocations) or a tenant id (quota changes)."""


class TenantEventLog(Protocol):
    """The tenant feed (`services.gateway.adapters.tenant_store.SqlTenantStore`)."""

    async def last_tenant_event(self) -> int: ...
    async def tenant_events_after(self, sequence: int, limit: int = 500) -> list[TenantEvent]: ...


class TenantChanges:
    """Follows the tenant feed (see the module docstring) and calls the subscribers of each
    change, in commit order."""

    def __init__(
        self,
        log: TenantEventLog,
        *,
        poll_seconds: float,
        wakeup: Wakeup | None = None,
        pushed: Callable[[], bool] = lambda: False,
    ) -> None:
        self._log = log
        self.wakeup = wakeup or Wakeup()
        """Fired when the feed may have news (by the PostgreSQL listener, or a local change)."""
        self._subscribers: dict[TenantEventKind, list[Subscriber]] = {
            kind: [] for kind in TenantEventKind
        }
        self._follower = FeedFollower(
            "tenant",
            lambda sequence: log.tenant_events_after(sequence),
            lambda event: event.sequence,
            self._dispatch,
            wakeup=self.wakeup,
            poll_seconds=poll_seconds,
            pushed=pushed,
        )

    def on_key_revoked(self, subscriber: Subscriber) -> None:
        """Calls `subscriber(key_id)` for every key revoked from now on."""
        self._subscribers[TenantEventKind.API_KEY_REVOKED].append(subscriber)

    def on_quota_changed(self, subscriber: Subscriber) -> None:
        """Calls `subscriber(tenant_id)` for every quota changed from now on."""
        self._subscribers[TenantEventKind.QUOTA_CHANGED].append(subscriber)

    @property
    def sequence(self) -> int:
        """The last change handled."""
        return self._follower.sequence

    async def start(self) -> None:
        """Follows the feed from its current end, in the background."""
        self._follower.start(await self._log.last_tenant_event())

    async def close(self) -> None:
        """Stops following."""
        await self._follower.close()

    def _dispatch(self, event: TenantEvent) -> None:
        target = event.key_id if event.kind is TenantEventKind.API_KEY_REVOKED else event.tenant_id
        for subscriber in self._subscribers[event.kind]:
            subscriber(target)

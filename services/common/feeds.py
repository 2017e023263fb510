"""Ordered change feeds in SQL tables, pushed to every replica.

A feed is a table of events with a sequence number (label moves, API-key revocations, quota
changes). Replicas follow it by reading the events after the last sequence they saw, so nothing
is skipped or repeated as long as **the order of sequence numbers is the order of commits**:

- SQLite takes the database's write lock at `BEGIN IMMEDIATE` and holds it to the commit, so
  writes, and the rowids they take, are serial.
- PostgreSQL hands out sequence numbers when a row is inserted, not when it commits: a move that
  took number 7 can commit after one that took 8, and a reader that saw 8 would never read 7.
  `lock_feed` takes a transaction-scoped advisory lock on the feed (and key) before the insert,
  so the writers of one feed key take their numbers and commit one at a time.

Readers are woken by `pg_notify` in the writing transaction (delivered only once it commits) over
one `PgListener` connection per process, and poll as a fallback (`Wakeup.wait`'s patience), so a
lost connection delays events but never loses them: after a reconnect every waiter re-reads.
"""

import asyncio
import contextlib
import logging
import random
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Generic, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.background import cancel_requested

_logger = logging.getLogger(__name__)

E = TypeVar("E")

_FEED_LOCK_CLASS: Final = 0x6E61  # the first key of every feed's advisory lock ("na")
PING_SECONDS: Final = 5.0
"""How often an idle listener connection is checked (a silently dead one is replaced)."""


class Wakeup:
    """Wakes the waiters of one process when a feed may have new events.

    A waiter notes `generation` before it reads the feed and waits with it, so an event that
    commits between the read and the wait is never slept through."""

    def __init__(self) -> None:
        self._generation = 0
        self._event = asyncio.Event()

    @property
    def generation(self) -> int:
        """How many wake-ups there have been."""
        return self._generation

    def notify(self) -> None:
        """Wakes every waiter."""
        self._generation += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seen_generation: int, patience_s: float) -> None:
        """Returns once there was a wake-up after `seen_generation`, or after `patience_s`."""
        if self._generation != seen_generation:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(patience_s):
                await self._event.wait()


async def lock_feed(conn: AsyncConnection, feed: str, key: str = "") -> None:
    """Within a write transaction on PostgreSQL, before inserting an event of `feed` (for
    `key`, e.g. a tenant, whose readers need only its own order): waits until no other
    transaction is appending to it, and keeps it until this one ends (see the module
    docstring). A no-op on SQLite, whose writes are serial anyway."""
    if conn.dialect.name != "postgresql":
        return
    second = zlib.crc32(f"{feed}\x00{key}".encode()) - 2**31  # a signed 32-bit key
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_FEED_LOCK_CLASS, second)))


async def notify(conn: AsyncConnection, channel: str, payload: str) -> None:
    """Within a write transaction on PostgreSQL: tells the listeners of `channel` once the
    transaction commits (nothing if it rolls back). A no-op on SQLite."""
    if conn.dialect.name != "postgresql":
        return
    await conn.execute(sa.select(sa.func.pg_notify(channel, payload)))


class PgListener:
    """One LISTEN connection to PostgreSQL that hands every payload of `channel` to
    `on_payload`, reconnecting with capped, jittered backoff when it breaks.

    `on_payload("")` is also called after each (re)connection: what was notified while no
    connection listened is lost, so followers must re-read their feeds then. `connected` says
    whether notifications are flowing (followers poll more often while they are not).
    """

    def __init__(
        self,
        url: str,
        channel: str,
        on_payload: Callable[[str], None],
        *,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        ping_seconds: float = PING_SECONDS,
    ) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._channel = channel
        self._on_payload = on_payload
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._ping_seconds = ping_seconds
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.reconnects = 0
        """Connections made after the first."""

    @property
    def application_name(self) -> str:
        """How the connection shows in `pg_stat_activity`."""
        return f"genai listen {self._channel}"[:63]

    @property
    def connected(self) -> bool:
        """True while a LISTEN connection is up."""
        return self._connected.is_set()

    async def start(self, first_connection_s: float = 5.0) -> None:
        """Starts listening in the background; waits up to `first_connection_s` for the
        first connection (returns without it: the listener keeps trying, followers poll
        meanwhile)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listen {self._channel}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(first_connection_s):
                await self._connected.wait()

    async def close(self) -> None:
        """Stops listening and closes the connection."""
        task, self._task = self._task, None
        await _cancelled(task)

    async def _run(self) -> None:
        failures = 0
        first = True
        while not cancel_requested():
            try:
                await self._listen_once(first)
                failures = 0
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                failures += 1
                if failures == 1:
                    _logger.warning(
                        "LISTEN %s lost (%s); polling until it is back", self._channel, error
                    )
            finally:
                self._connected.clear()
            first = False
            step = min(self._backoff_max_s, self._backoff_initial_s * 2 ** max(0, failures - 1))
            await asyncio.sleep(step * random.uniform(0.5, 1.0))

    async def _listen_once(self, first: bool) -> None:
        connection = await asyncpg.connect(
            self._dsn, timeout=5.0, server_settings={"application_name": self.application_name}
        )
        closed = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _connection: closed.set())
            await connection.add_listener(
                self._channel, lambda _c, _pid, _channel, payload: self._on_payload(payload)
            )
            self._connected.set()
            if not first:
                self.reconnects += 1
            self._on_payload("")  # catch up on what was notified while nobody listened
            while not closed.is_set() and not cancel_requested():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._ping_seconds):
                        await closed.wait()
                if not closed.is_set():
                    await connection.execute("SELECT 1", timeout=self._ping_seconds)
            raise OSError("the LISTEN connection was closed")
        finally:
            self._connected.clear()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await connection.close()


class PushedWakeup:
    """A `Wakeup` that PostgreSQL NOTIFYs on `channel` fire (those whose payload `matches`,
    and every (re)connection of the listener), when `url` is given; a plain one, for polling,
    when it is None (SQLite)."""

    def __init__(self, url: str | None, channel: str, matches: Callable[[str], bool]) -> None:
        self.wakeup = Wakeup()
        self._matches = matches
        self._listener = PgListener(url, channel, self._heard) if url else None

    def pushed(self) -> bool:
        """True while notifications flow (followers may poll less often)."""
        return self._listener is not None and self._listener.connected

    async def start(self) -> None:
        """Starts listening (see `PgListener.start`)."""
        if self._listener is not None:
            await self._listener.start()

    async def close(self) -> None:
        """Stops listening."""
        if self._listener is not None:
            await self._listener.close()

    def _heard(self, payload: str) -> None:
        if not payload or self._matches(payload):  # "": (re)connected, re-read
            self.wakeup.notify()


class FeedFollower(Generic[E]):
    """Follows one feed from a sequence on: reads the events after the last one it handled
    whenever `wakeup` fires, or every `poll_seconds` (every `pushed_poll_seconds` while
    `pushed()` says notifications flow), and hands each to `handle`, in order, once.

    A failed read is logged and retried at the next wake-up or poll; the events stay in the
    feed, so none is lost."""

    def __init__(
        self,
        name: str,
        read_after: Callable[[int], Awaitable[Sequence[E]]],
        sequence_of: Callable[[E], int],
        handle: Callable[[E], None],
        *,
        wakeup: Wakeup,
        poll_seconds: float,
        pushed: Callable[[], bool] = lambda: False,
        pushed_poll_seconds: float = 5.0,
    ) -> None:
        self._name = name
        self._read_after = read_after
        self._sequence_of = sequence_of
        self._handle = handle
        self._wakeup = wakeup
        self._poll_seconds = poll_seconds
        self._pushed = pushed
        self._pushed_poll_seconds = max(poll_seconds, pushed_poll_seconds)
        self._task: asyncio.Task[None] | None = None
        self.sequence = 0
        """The last event handled (or the starting point)."""

    def start(self, after_sequence: int) -> None:
        """Follows the feed from the event after `after_sequence` on, in the background."""
        self.sequence = after_sequence
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"follow {self._name}")

    async def close(self) -> None:
        """Stops following."""
        task, self._task = self._task, None
        await _cancelled(task)

    async def _run(self) -> None:
        failing = False
        while not cancel_requested():
            generation = self._wakeup.generation
            try:
                events = await self._read_after(self.sequence)
                failing = False
            except Exception as error:  # a store outage: try again at the next wake-up or poll
                if not failing:
                    _logger.warning("reading the %s feed failed: %s", self._name, error)
                failing = True
                events = []
            for event in events:
                self._handle(event)
                self.sequence = self._sequence_of(event)
            if events:
                continue
            patience = self._pushed_poll_seconds if self._pushed() else self._poll_seconds
            await self._wakeup.wait(generation, patience)


async def _cancelled(task: "asyncio.Task[None] | None") -> None:
    """Cancels a background task and waits for it to end."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

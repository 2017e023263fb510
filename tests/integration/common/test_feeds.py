"""Change feeds on the real PostgreSQL: appends to one feed key commit one at a time, NOTIFY is
heard only once its transaction commits, and a listener whose connection is killed comes back
and says so (its followers re-read)."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.feeds import PgListener, Wakeup, lock_feed, notify
from services.common.sql import create_engine
from tests.support.databases import Database, database

CHANNEL = "genai_test_feed"


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[Database]:
    async with database("postgres", tmp_path) as found:
        yield found


@pytest.fixture
async def engine(postgres: Database) -> AsyncIterator[AsyncEngine]:
    made = create_engine(postgres.url, schema=postgres.schema)
    yield made
    await made.dispose()


class Heard:
    """What a listener handed over, in order, read one by one."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self._read = 0
        self._new = asyncio.Event()

    def __call__(self, payload: str) -> None:
        self.payloads.append(payload)
        self._new.set()

    async def next(self) -> str:
        """The next payload not read yet, waiting up to 5 s for it."""
        async with asyncio.timeout(5):
            while len(self.payloads) == self._read:
                self._new.clear()
                await self._new.wait()
        self._read += 1
        return self.payloads[self._read - 1]


async def test_appends_to_one_feed_key_wait_for_each_other(engine: AsyncEngine) -> None:
    first_locked = asyncio.Event()
    release_first = asyncio.Event()
    order: list[str] = []

    async def append(name: str, key: str, hold: bool) -> None:
        async with engine.connect() as conn, conn.begin():
            await lock_feed(conn, "events", key)
            order.append(f"{name} locked")
            if hold:
                first_locked.set()
                await release_first.wait()
            order.append(f"{name} committing")

    first = asyncio.create_task(append("first", "tenant-a", hold=True))
    await first_locked.wait()
    second = asyncio.create_task(append("second", "tenant-a", hold=False))
    other_key = asyncio.create_task(append("other", "tenant-b", hold=False))
    await asyncio.wait_for(other_key, 5)  # another key is not held up
    await asyncio.sleep(0.2)
    assert "second locked" not in order  # the same key waits for the first to end
    release_first.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert order.index("first committing") < order.index("second locked")


async def test_a_listener_hears_commits_only_and_comes_back_after_its_connection_dies(
    postgres: Database, engine: AsyncEngine
) -> None:
    heard = Heard()
    listener = PgListener(postgres.url, CHANNEL, heard, backoff_initial_s=0.05)
    await listener.start()
    try:
        assert listener.connected
        assert await heard.next() == ""  # connected: followers re-read

        async with engine.connect() as conn:
            async with conn.begin() as transaction:
                await notify(conn, CHANNEL, "rolled back")
                await transaction.rollback()
            async with conn.begin():
                await notify(conn, CHANNEL, "committed")
        assert await heard.next() == "committed"

        async with engine.connect() as conn, conn.begin():
            await conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": listener.application_name},
            )
        assert await heard.next() == ""  # reconnected: followers re-read what they missed
        assert listener.reconnects >= 1
        async with engine.connect() as conn, conn.begin():
            await notify(conn, CHANNEL, "after the reconnect")
        assert await heard.next() == "after the reconnect"
        assert "rolled back" not in heard.payloads
    finally:
        await listener.close()
    assert not listener.connected


async def test_a_wakeup_after_the_noted_generation_is_never_slept_through() -> None:
    wakeup = Wakeup()
    seen = wakeup.generation
    wakeup.notify()  # lands between a follower's read and its wait
    async with asyncio.timeout(1):
        await wakeup.wait(seen, patience_s=60)
    waiter = asyncio.create_task(wakeup.wait(wakeup.generation, patience_s=60))
    await asyncio.sleep(0)
    wakeup.notify()
    await asyncio.wait_for(waiter, 1)

"""The real Redis for quota tests: the one these machines and CI run at 127.0.0.1:6379
(`GENAI_TEST_REDIS_URL` points elsewhere). Each test gets a key prefix of its own, and its keys
are deleted afterwards. A missing Redis fails the tests that need it, saying so: it is never
skipped."""

import os
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

REDIS_URL = os.environ.get("GENAI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class RedisNamespace:
    """Where a test's keys live: the server's URL, the test's key prefix, and a client."""

    url: str
    prefix: str
    client: Redis

    async def keys(self) -> list[str]:
        """Every key under the prefix, sorted."""
        return sorted([key async for key in self.client.scan_iter(match=f"{self.prefix}*")])

    async def total(self, key: str) -> int:
        """The sum of a hash's values; 0 when the key does not exist."""
        # redis-py types the async client's replies as "awaitable or not".
        values = await cast("Awaitable[dict[str, str]]", self.client.hgetall(key))
        return sum(int(value) for value in values.values())


@asynccontextmanager
async def redis_namespace() -> AsyncIterator[RedisNamespace]:
    """A fresh key prefix on the test Redis; its keys are deleted afterwards."""
    client = Redis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=2.0)
    try:
        await cast("Awaitable[bool]", client.ping())
    except (RedisError, OSError) as error:
        await client.aclose()
        pytest.fail(
            f"Redis is required at {REDIS_URL} (set GENAI_TEST_REDIS_URL): {error}",
            pytrace=False,
        )
    namespace = RedisNamespace(REDIS_URL, f"genai-test:{uuid.uuid4().hex[:16]}:", client)
    try:
        yield namespace
    finally:
        leftover = await namespace.keys()
        if leftover:
            await client.delete(*leftover)
        await client.aclose()

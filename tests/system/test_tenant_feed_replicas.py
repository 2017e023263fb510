"""Two platform processes sharing one tenant database (a SQLite file, a PostgreSQL schema), each
caching verified API keys for five minutes: a key revoked elsewhere stops working on both
within a second (PostgreSQL: pushed by NOTIFY; SQLite: the feed's half-second poll), because
they follow the tenant feed rather than wait for their caches to expire."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc

from services.common.clients import api_key_metadata, create_channel
from services.gateway.adapters.tenant_store import SqlTenantStore
from tests.support.databases import BACKENDS, Database, database
from tests.support.serve import genai_serve

if TYPE_CHECKING:
    Stub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    Stub = prompt_service_pb2_grpc.PromptServiceStub

pytestmark = pytest.mark.system


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


async def _rejected_after(stub: Stub, key: str, since: float) -> float:
    """Seconds from `since` until `stub` refuses `key` (calling every 10 ms); 5 s at most."""
    while time.monotonic() - since < 5:
        try:
            await stub.ListPrompts(
                prompt_service_pb2.ListPromptsRequest(),
                metadata=api_key_metadata(key),
                timeout=2,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            return time.monotonic() - since
        await asyncio.sleep(0.01)
    raise AssertionError("the revoked key still works after 5 s")


async def test_a_revoked_key_stops_working_on_every_replica_within_a_second(
    db: Database, tmp_path: Path
) -> None:
    url = db.url if db.schema else f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    store = SqlTenantStore.from_url(url, schema=db.schema)
    await store.migrate()
    await store.create_tenant("acme")
    key, secret = await store.create_api_key("acme", "checkout")
    env = {
        "GENAI_GATEWAY__DATABASE_URL": url,
        "GENAI_GATEWAY__DATABASE_SCHEMA": db.schema or "",
        "GENAI_PROMPT__DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}",
        "GENAI_AUTH__API_KEY_CACHE_SECONDS": "300",
    }
    try:
        with ExitStack() as processes:
            addresses = []
            for index in range(2):
                workdir = tmp_path / f"replica-{index}"
                workdir.mkdir()
                served = processes.enter_context(
                    genai_serve(workdir, "--service", "prompt", "--no-prompts", env=env)
                )
                addresses.append(served.address)
            async with AsyncExitStack() as channels:
                stubs = []
                for address in addresses:
                    channel = create_channel(address)
                    channels.push_async_callback(channel.close, None)
                    stubs.append(Stub(channel))
                for stub in stubs:  # both replicas verify the key and cache it
                    await stub.ListPrompts(
                        prompt_service_pb2.ListPromptsRequest(), metadata=api_key_metadata(secret)
                    )
                revoked = time.monotonic()
                await store.revoke_api_key(key.id)
                delays = await asyncio.gather(
                    *(_rejected_after(stub, secret, revoked) for stub in stubs)
                )
        assert max(delays) < 1.0, delays
        if db.backend == "postgres":  # pushed, not polled
            assert max(delays) < 0.4, delays
    finally:
        await store.close()

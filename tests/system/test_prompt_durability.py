"""A `genai serve` hosting PromptService, SIGKILLed while clients push versions: after a restart
on the same database, every version a client saw acknowledged is there, numbers are gapless,
and no version is half written. On SQLite and PostgreSQL."""

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from genai.common.v1 import chat_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc

from services.common.clients import api_key_metadata, create_channel
from services.prompt.core.model import content_hash
from services.prompt.wire import version_content
from tests.support.databases import BACKENDS, Database, database
from tests.support.serve import genai_serve

pytestmark = pytest.mark.system
pb = prompt_service_pb2


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


def _env(db: Database) -> dict[str, str]:
    return {
        "GENAI_PROMPT__DATABASE_URL": db.url,
        "GENAI_PROMPT__DATABASE_SCHEMA": db.schema or "",
    }


def _version(index: int) -> prompt_pb2.PromptVersion:
    return prompt_pb2.PromptVersion(
        messages=[
            chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content=f"version {index} " * 50)
        ]
    )


async def _push_until_killed(
    address: str,
    api_key: str,
    acknowledged: dict[int, str],
    stop: asyncio.Event,
    enough: asyncio.Event,
) -> None:
    async with create_channel(address, metadata=api_key_metadata(api_key)) as channel:
        stub = prompt_service_pb2_grpc.PromptServiceStub(channel)

        async def writer(offset: int) -> None:
            index = offset
            while not stop.is_set():
                try:
                    reply = await stub.CreatePromptVersion(
                        pb.CreatePromptVersionRequest(prompt="durable", version=_version(index)),
                        timeout=5,
                    )
                except grpc.aio.AioRpcError:
                    return  # the server is gone
                acknowledged[reply.version.version] = reply.version.content_hash
                if len(acknowledged) >= 20:
                    enough.set()
                index += 8

        await asyncio.gather(*(writer(i) for i in range(8)))


async def test_a_killed_server_loses_no_acknowledged_version(db: Database, tmp_path: Path) -> None:
    acknowledged: dict[int, str] = {}
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
    with genai_serve(tmp_path / "first", "--service", "prompt", env=_env(db)) as served:
        async with create_channel(
            served.address, metadata=api_key_metadata(served.api_key)
        ) as channel:
            stub = prompt_service_pb2_grpc.PromptServiceStub(channel)
            await stub.CreatePrompt(
                pb.CreatePromptRequest(prompt=prompt_pb2.Prompt(name="durable"))
            )
        stop, enough = asyncio.Event(), asyncio.Event()
        pushing = asyncio.create_task(
            _push_until_killed(served.address, served.api_key, acknowledged, stop, enough)
        )
        await asyncio.wait_for(enough.wait(), 60)
        served.process.send_signal(signal.SIGKILL)  # eight writers have requests in flight
        await asyncio.wait_for(pushing, 30)
        stop.set()
        assert served.process.wait(10) == -signal.SIGKILL

    with genai_serve(tmp_path / "second", "--service", "prompt", env=_env(db)) as restarted:
        async with create_channel(
            restarted.address, metadata=api_key_metadata(restarted.api_key)
        ) as channel:
            stub = prompt_service_pb2_grpc.PromptServiceStub(channel)
            prompt = (await stub.GetPrompt(pb.GetPromptRequest(name="durable"))).prompt
            stored = []
            token = ""
            while True:
                page = await stub.ListPromptVersions(
                    pb.ListPromptVersionsRequest(prompt="durable", page_size=100, page_token=token)
                )
                stored += list(page.versions)
                if not (token := page.next_page_token):
                    break
            # The registry goes on where it stopped.
            after = await stub.CreatePromptVersion(
                pb.CreatePromptVersionRequest(prompt="durable", version=_version(-1))
            )

    numbers = sorted(v.version for v in stored)
    assert numbers == list(range(1, prompt.latest_version + 1))  # gapless, nothing half-made
    by_number = {v.version: v for v in stored}
    for number, digest in acknowledged.items():  # every acknowledged version survived as sent
        assert by_number[number].content_hash == digest
    for version in stored:  # and every stored version is whole
        assert content_hash(version_content(version)) == version.content_hash
    assert after.version.version == prompt.latest_version + 1

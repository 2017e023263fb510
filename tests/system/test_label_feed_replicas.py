"""Two PromptService processes on one database (a SQLite file, a PostgreSQL schema): while
eight writers move labels through both, a watcher on each replica receives every committed move
exactly once, in sequence order, and a move made through one replica reaches a watcher of the
other at once on PostgreSQL (LISTEN/NOTIFY), not after a poll."""

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from genai.common.v1 import chat_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc

from services.common.clients import create_channel
from tests.support.databases import BACKENDS, Database, database
from tests.support.serve import ServeProcess, genai_serve

if TYPE_CHECKING:
    Stub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    Stub = prompt_service_pb2_grpc.PromptServiceStub

pytestmark = pytest.mark.system
pb = prompt_service_pb2

PROMPTS = [f"feed-{i}" for i in range(8)]
MOVES_PER_WRITER = 25


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


@contextmanager
def prompt_replicas(db: Database, tmp_path: Path, count: int, **env: str) -> Iterator[list[str]]:
    """`count` PromptService processes on `db`, auth off; yields their addresses."""
    environment = {
        "GENAI_AUTH__MODE": "none",
        "GENAI_PROMPT__DATABASE_URL": db.url,
        "GENAI_PROMPT__DATABASE_SCHEMA": db.schema or "",
        **env,
    }
    with ExitStack() as stack:
        addresses = []
        for index in range(count):
            workdir = tmp_path / f"replica-{index}"
            workdir.mkdir()
            served: ServeProcess = stack.enter_context(
                genai_serve(workdir, "--service", "prompt", "--no-prompts", env=environment)
            )
            addresses.append(served.address)
        yield addresses


async def _create_prompts(stub: Stub) -> None:
    for name in PROMPTS:
        await stub.CreatePrompt(pb.CreatePromptRequest(prompt=prompt_pb2.Prompt(name=name)))
        for index in (1, 2):
            message = chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content=f"v{index}")
            await stub.CreatePromptVersion(
                pb.CreatePromptVersionRequest(
                    prompt=name, version=prompt_pb2.PromptVersion(messages=[message])
                )
            )


class Watcher:
    """A WatchLabels stream of every prompt, recording each event's sequence and arrival."""

    def __init__(self, stub: Stub) -> None:
        self.sequences: list[int] = []
        self.arrivals: dict[int, float] = {}
        self.snapshot = asyncio.Event()
        self._arrived = asyncio.Event()
        self._call = stub.WatchLabels(pb.WatchLabelsRequest())
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for response in self._call:
            if response.HasField("snapshot"):
                self.snapshot.set()
            else:
                self.sequences.append(response.event.sequence)
                self.arrivals[response.event.sequence] = time.monotonic()
                self._arrived.set()

    async def saw(self, sequence: int, within: float) -> bool:
        try:
            async with asyncio.timeout(within):
                while sequence not in self.arrivals:
                    await self._arrived.wait()
                    self._arrived.clear()
        except TimeoutError:
            return False
        return True

    def cancel(self) -> None:
        self._call.cancel()
        self.task.cancel()
        # A failed test may leave the stream broken: its error is not what the test reports.
        self.task.add_done_callback(lambda task: task.cancelled() or task.exception())


async def test_every_watcher_sees_every_committed_move_once_in_order(
    db: Database, tmp_path: Path
) -> None:
    with prompt_replicas(db, tmp_path, 2) as addresses:
        channels = [create_channel(address) for address in addresses]
        stubs = [Stub(channel) for channel in channels]
        watchers: list[Watcher] = []
        try:
            await _create_prompts(stubs[0])
            watchers = [Watcher(stub) for stub in stubs]
            for watcher in watchers:
                await asyncio.wait_for(watcher.snapshot.wait(), 10)
            committed: list[int] = []
            rng = random.Random(12)

            async def writer(index: int) -> None:
                for move in range(MOVES_PER_WRITER):
                    stub = rng.choice(stubs)
                    prompt = PROMPTS[(index + move) % len(PROMPTS)]
                    try:
                        reply = await stub.SetLabel(
                            pb.SetLabelRequest(
                                prompt=prompt, label="production", version=1 + move % 2
                            ),
                            timeout=30,
                        )
                    except grpc.aio.AioRpcError as error:  # pragma: no cover - reported below
                        raise AssertionError(f"SetLabel failed: {error}") from error
                    committed.append(reply.event.sequence)

            await asyncio.gather(*(writer(i) for i in range(8)))
            assert len(committed) == 8 * MOVES_PER_WRITER
            for watcher in watchers:
                assert await watcher.saw(max(committed), within=10)
            await asyncio.sleep(0.5)  # nothing more may come (no duplicate, no stray event)
            for index, watcher in enumerate(watchers):
                missing = sorted(set(committed) - set(watcher.sequences))
                assert not missing, f"replica {index}'s watcher never received {missing}"
                assert watcher.sequences == sorted(committed), (
                    f"replica {index}'s watcher received events out of order or twice"
                )
        finally:
            for watcher in watchers:
                watcher.cancel()
            for channel in channels:
                await channel.close(None)


async def test_a_move_through_one_replica_is_pushed_to_the_other(tmp_path: Path) -> None:
    """On PostgreSQL the other replica's watcher hears a move at once, although its fallback
    poll is set to a minute: the move arrived by NOTIFY."""
    async with database("postgres", tmp_path) as db:
        with prompt_replicas(db, tmp_path, 2, GENAI_PROMPT__WATCH_POLL_SECONDS="60") as addresses:
            a, b = (create_channel(address) for address in addresses)
            try:
                stub_a = Stub(a)
                stub_b = Stub(b)
                await _create_prompts(stub_a)
                watcher = Watcher(stub_b)
                await asyncio.wait_for(watcher.snapshot.wait(), 10)
                delays = []
                for move in range(10):
                    sent = time.monotonic()
                    reply = await stub_a.SetLabel(
                        pb.SetLabelRequest(
                            prompt=PROMPTS[0], label="production", version=1 + move % 2
                        )
                    )
                    assert await watcher.saw(reply.event.sequence, within=5)
                    delays.append(watcher.arrivals[reply.event.sequence] - sent)
                assert max(delays) < 1.0, delays
                watcher.cancel()
            finally:
                await a.close(None)
                await b.close(None)

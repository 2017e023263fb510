"""The prompt registry's SQL store on real SQLite and real PostgreSQL: migrations, gapless
versions under concurrent writers, label preconditions and history, tenant isolation, and no
lost or half-written version when the writing process is killed."""

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound
from services.prompt.adapters.sql_store import SqlPromptStore
from services.prompt.core.model import (
    LabelEventKind,
    LabelMove,
    NewPrompt,
    NewVersion,
    PromptChanges,
    content_hash,
)
from tests.support.databases import BACKENDS, Database, database

ROOT = Path(__file__).resolve().parents[3]
TENANT = "acme"


def _content(text: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}], "variables": []}


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
async def store(db: Database) -> AsyncIterator[SqlPromptStore]:
    store = SqlPromptStore.from_url(db.url, schema=db.schema)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def test_migrations_apply_once_even_when_replicas_start_together(db: Database) -> None:
    stores = [SqlPromptStore.from_url(db.url, schema=db.schema) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(s.migrate() for s in stores))
        assert sorted(applied) == [[], [], [1]]
        assert await stores[0].migrate() == []
    finally:
        for s in stores:
            await s.close()


async def test_prompts_belong_to_their_tenant(store: SqlPromptStore) -> None:
    created = await store.create_prompt(
        NewPrompt(TENANT, "greeting", "says hello", ("production",))
    )
    assert created.latest_version == 0
    assert created.protected_labels == ("production",)
    with pytest.raises(AlreadyExists):
        await store.create_prompt(NewPrompt(TENANT, "greeting"))
    await store.create_prompt(NewPrompt("other", "greeting"))  # same name, other tenant
    with pytest.raises(NotFound):
        await store.get_prompt("nobody", "greeting")
    await store.create_prompt(NewPrompt(TENANT, "gr%_ee"))
    names = [p.name for p in await store.list_prompts(TENANT, name_prefix="gr%")]
    assert names == ["gr%_ee"]  # LIKE wildcards in a prefix are literal
    page = await store.list_prompts(TENANT, after_name="gr%_ee", limit=1)
    assert [p.name for p in page] == ["greeting"]
    updated = await store.update_prompt(
        TENANT, "greeting", PromptChanges(description="new", evaluation_gate={"dataset": "d"})
    )
    assert (updated.description, updated.evaluation_gate) == ("new", {"dataset": "d"})
    assert updated.update_time >= created.update_time


async def test_versions_are_gapless_and_an_equal_push_is_idempotent(store: SqlPromptStore) -> None:
    await store.create_prompt(NewPrompt(TENANT, "p"))
    first, created = await store.create_version(TENANT, "p", NewVersion(_content("a"), "ann"))
    assert (first.version, created) == (1, True)
    again, created = await store.create_version(TENANT, "p", NewVersion(_content("a"), "bob"))
    assert (again.version, created, again.author) == (1, False, "ann")
    second, _ = await store.create_version(TENANT, "p", NewVersion(_content("b")))
    assert second.version == 2
    assert second.content_hash == content_hash(_content("b"))
    assert (await store.get_version(TENANT, "p", 1)).content == _content("a")
    assert [v.version for v in await store.list_versions(TENANT, "p")] == [2, 1]
    assert [v.version for v in await store.list_versions(TENANT, "p", before_version=2)] == [1]
    assert (await store.get_prompt(TENANT, "p")).latest_version == 2
    with pytest.raises(NotFound):
        await store.get_version(TENANT, "p", 3)


async def test_fifty_concurrent_writers_get_unique_gapless_numbers(db: Database) -> None:
    # Five engines (as five replicas would have) with ten writers each.
    stores = [SqlPromptStore.from_url(db.url, schema=db.schema) for _ in range(5)]
    try:
        await stores[0].migrate()
        await stores[0].create_prompt(NewPrompt(TENANT, "hot"))
        results = await asyncio.gather(
            *(
                stores[i % 5].create_version(TENANT, "hot", NewVersion(_content(f"v{i}")))
                for i in range(50)
            )
        )
        numbers = sorted(v.version for v, created in results if created)
        assert numbers == list(range(1, 51))
        stored = await stores[0].list_versions(TENANT, "hot", limit=100)
        assert sorted(v.version for v in stored) == numbers
        assert {v.content_hash for v in stored} == {v.content_hash for v, _ in results}
        assert (await stores[0].get_prompt(TENANT, "hot")).latest_version == 50
    finally:
        for s in stores:
            await s.close()


async def test_labels_move_with_preconditions_and_keep_their_history(store: SqlPromptStore) -> None:
    await store.create_prompt(NewPrompt(TENANT, "p", protected_labels=("production",)))
    for text in "abc":
        await store.create_version(TENANT, "p", NewVersion(_content(text)))
    move = LabelMove(TENANT, "p", "production", actor="ann", reason="ship")

    label, event = await store.set_label(move, 1)
    assert (label.version, label.protected, event.kind) == (1, True, LabelEventKind.CREATED)
    with pytest.raises(Conflict) as conflict:
        await store.set_label(LabelMove(TENANT, "p", "production", expected_version=0), 2)
    assert conflict.value.metadata["actual"] == "1"
    assert conflict.value.reason == "LABEL_VERSION_MISMATCH"
    await store.set_label(LabelMove(TENANT, "p", "production", expected_version=1), 2)
    await store.set_label(move, 3)
    with pytest.raises(NotFound):
        await store.set_label(move, 9)
    assert (await store.get_labelled_version(TENANT, "p", "production")).version == 3

    # Rollback walks back one move per call: 3 -> 2 -> 1, then there is nothing before.
    assert (await store.rollback_label(move))[0].version == 2
    assert (await store.rollback_label(move))[0].version == 1
    with pytest.raises(FailedPrecondition):
        await store.rollback_label(move)

    history = await store.label_history(TENANT, "p", "production")
    assert [(e.kind, e.from_version, e.to_version) for e in history] == [
        (LabelEventKind.ROLLED_BACK, 2, 1),
        (LabelEventKind.ROLLED_BACK, 3, 2),
        (LabelEventKind.MOVED, 2, 3),
        (LabelEventKind.MOVED, 1, 2),
        (LabelEventKind.CREATED, 0, 1),
    ]
    assert history[-1].actor == "ann"
    deleted = await store.delete_label(LabelMove(TENANT, "p", "production", expected_version=1))
    assert (deleted.kind, deleted.to_version) == (LabelEventKind.DELETED, 0)
    with pytest.raises(NotFound):
        await store.get_labelled_version(TENANT, "p", "production")
    labels, sequence = await store.label_snapshot(TENANT)
    assert labels == []
    assert sequence == deleted.sequence
    events = await store.events_after(TENANT, history[0].sequence)
    assert [e.kind for e in events] == [LabelEventKind.DELETED]


async def test_concurrent_label_moves_leave_a_consistent_history(db: Database) -> None:
    stores = [SqlPromptStore.from_url(db.url, schema=db.schema) for _ in range(4)]
    try:
        await stores[0].migrate()
        await stores[0].create_prompt(NewPrompt(TENANT, "p"))
        for i in range(5):
            await stores[0].create_version(TENANT, "p", NewVersion(_content(str(i))))
        await stores[0].set_label(LabelMove(TENANT, "p", "staging"), 1)

        async def mover(index: int) -> bool:
            store = stores[index % 4]
            current = (await store.get_prompt(TENANT, "p")).labels["staging"]
            target = index % 5 + 1
            try:
                await store.set_label(
                    LabelMove(TENANT, "p", "staging", expected_version=current), target
                )
            except Conflict:
                return False
            return True

        outcomes = await asyncio.gather(*(mover(i) for i in range(20)))
        history = list(reversed(await stores[0].label_history(TENANT, "p", "staging")))
        assert len(history) == 1 + sum(outcomes)
        for before, after in itertools.pairwise(history):
            assert after.from_version == before.to_version  # no move was based on a stale read
            assert after.sequence > before.sequence
        final = (await stores[0].get_prompt(TENANT, "p")).labels["staging"]
        assert final == history[-1].to_version
    finally:
        for s in stores:
            await s.close()


_WRITER = """
import asyncio, sys
from services.prompt.adapters.sql_store import SqlPromptStore
from services.prompt.core.model import NewVersion

async def main(url, schema):
    store = SqlPromptStore.from_url(url, schema=schema or None)
    i = 0
    while True:
        i += 1
        await store.create_version("acme", "p", NewVersion({"messages": [str(i) * 200]}))
        if i == 5:
            print("writing", flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_killed_writer_loses_no_committed_version_and_leaves_no_partial_one(
    store: SqlPromptStore, db: Database
) -> None:
    await store.create_prompt(NewPrompt(TENANT, "p"))
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WRITER,
        db.url,
        db.schema or "",
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'generated' / 'python'}"},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None
        line = await asyncio.wait_for(writer.stdout.readline(), 60)
        assert line.strip() == b"writing"
        await asyncio.sleep(0.3)  # in the middle of further writes
    finally:
        writer.kill()  # SIGKILL: no clean-up of any kind
        await writer.wait()
    prompt = await store.get_prompt(TENANT, "p")
    stored = await store.list_versions(TENANT, "p", limit=10_000)
    assert prompt.latest_version >= 5
    assert sorted(v.version for v in stored) == list(range(1, prompt.latest_version + 1))
    assert all(v.content_hash == content_hash(v.content) for v in stored)
    # The store goes on from there.
    next_version, _ = await store.create_version(TENANT, "p", NewVersion(_content("after")))
    assert next_version.version == prompt.latest_version + 1


async def test_a_retried_create_with_the_same_request_id_returns_what_the_first_made(
    store: SqlPromptStore,
) -> None:
    first = await store.create_prompt(NewPrompt(TENANT, "p"), request_id="r1")
    assert (await store.create_prompt(NewPrompt(TENANT, "p"), request_id="r1")) == first
    with pytest.raises(AlreadyExists):
        await store.create_prompt(NewPrompt(TENANT, "p"), request_id="r2")
    one, created = await store.create_version(TENANT, "p", NewVersion(_content("a")), "v1")
    await store.create_version(TENANT, "p", NewVersion(_content("b")))
    again, created_again = await store.create_version(TENANT, "p", NewVersion(_content("a")), "v1")
    assert (one.version, created, again.version, created_again) == (1, True, 1, False)

"""The prompt registry's storage: one SQL layer (SQLAlchemy Core, async) over SQLite and PostgreSQL.

The engine settings (SQLite WAL, synchronous FULL, `BEGIN IMMEDIATE` writes; PostgreSQL
pooling) and the migration machinery are `services.common.sql`'s. PostgreSQL writes lock the
prompt's row (`SELECT ... FOR UPDATE`), which serializes version numbers and label moves per
prompt.

On both databases a version number is `latest_version + 1` read and written under that lock in one
transaction with the version row: numbers are gapless and unique, and a killed process leaves
either the whole version or nothing. Label moves check their precondition and append to the
event log in the same transaction.

The label event log is a feed (`services.common.feeds`) that watchers on every replica follow by
sequence: a tenant's events commit in the order of their sequence numbers (`lock_feed`), a
snapshot of labels is read with the sequence it includes in one database snapshot, and each
move notifies `LABEL_EVENTS_CHANNEL` (PostgreSQL) with `label_event_payload`.

Schema changes are the numbered `MIGRATIONS`, recorded in `schema_migrations`.
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common import reasons
from services.common.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound
from services.common.feeds import lock_feed, notify
from services.common.sql import (
    Migration,
    SqlStore,
    create_engine,
    now_us,
    row_or_not_found,
    time_from_us,
)
from services.prompt.core.model import (
    UNSET,
    Label,
    LabelEvent,
    LabelEventKind,
    LabelMove,
    NewPrompt,
    NewVersion,
    Prompt,
    PromptChanges,
    PromptVersion,
    canonical_json,
)

metadata = sa.MetaData()

prompts = sa.Table(
    "prompts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("latest_version", sa.Integer, nullable=False),
    sa.Column("protected_labels", sa.Text, nullable=False),
    sa.Column("evaluation_gate", sa.Text, nullable=True),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("update_time_us", sa.BigInteger, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.UniqueConstraint("tenant_id", "name", name="uq_prompts_tenant_name"),
)


versions = sa.Table(
    "prompt_versions",
    metadata,
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("author", sa.String(256), nullable=False),
    sa.Column("commit_message", sa.Text, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
)

labels = sa.Table(
    "prompt_labels",
    metadata,
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("update_time_us", sa.BigInteger, nullable=False),
    sa.ForeignKeyConstraint(
        ["prompt_id", "version"], ["prompt_versions.prompt_id", "prompt_versions.version"]
    ),
)

label_events = sa.Table(
    "label_events",
    metadata,
    sa.Column("sequence", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
    sa.Column("prompt_name", sa.String(128), nullable=False),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("from_version", sa.Integer, nullable=False),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("event_time_us", sa.BigInteger, nullable=False),
    sa.Index("ix_label_events_prompt_label", "prompt_id", "label", "sequence"),
    sa.Index("ix_label_events_tenant", "tenant_id", "sequence"),
)


def _initial_schema(connection: SyncConnection) -> None:
    metadata.create_all(connection)


MIGRATIONS: Final[Sequence[Migration]] = (Migration(1, "initial schema", _initial_schema),)
"""Every migration, in order. Append; never edit one that has shipped."""

_now_us = now_us
_time = time_from_us

LABEL_EVENTS_CHANNEL: Final = "genai_label_events"
_IN_CHUNK: Final = 500
"""Ids per `IN (...)` list: well under every backend's limit on bound parameters."""
"""The PostgreSQL NOTIFY channel of committed label moves (payload: `label_event_payload`)."""


def label_event_payload(schema: str, tenant_id: str) -> str:
    """What a label move notifies: the deployment's schema (channels span the database, which
    several deployments may share) and the tenant, tab-separated."""
    return f"{schema}\t{tenant_id}"


class SqlPromptStore(SqlStore):
    """Prompts, versions and labels in SQLite or PostgreSQL. Call `migrate()` once first."""

    MIGRATIONS = MIGRATIONS
    MIGRATIONS_TABLE = "schema_migrations"

    def __init__(self, engine: AsyncEngine, *, schema: str | None = None) -> None:
        super().__init__(engine)
        self.schema = schema or "public"
        """The PostgreSQL schema of the tables (what this store's notifications name)."""

    @property
    def postgres(self) -> bool:
        """True on PostgreSQL (whose moves are pushed to other replicas by NOTIFY)."""
        return self._postgres

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> "SqlPromptStore":
        """A store on a new engine for `url` (see `create_engine`)."""
        return cls(create_engine(url, schema=schema), schema=schema)

    # ------------------------------------------------------------------------------ prompts

    async def create_prompt(self, new: NewPrompt, request_id: str = "") -> Prompt:
        """Creates a prompt; AlreadyExists when the tenant has one of that name, unless the
        same non-empty `request_id` created it (a retry), which returns it."""
        now = _now_us()
        try:
            async with self._write() as conn:
                await conn.execute(
                    prompts.insert().values(
                        request_id=request_id or None,
                        tenant_id=new.tenant_id,
                        name=new.name,
                        description=new.description,
                        latest_version=0,
                        protected_labels=json.dumps(list(new.protected_labels)),
                        evaluation_gate=_json_or_none(new.evaluation_gate),
                        create_time_us=now,
                        update_time_us=now,
                    )
                )
        except IntegrityError:
            if request_id:
                async with self._read() as conn:
                    row = await self._prompt_row(conn, new.tenant_id, new.name, lock=False)
                    if row["request_id"] == request_id:
                        return await self._prompt(conn, row)
            raise AlreadyExists(
                f"prompt {new.name!r} already exists",
                reason=reasons.PROMPT_ALREADY_EXISTS,
                metadata={"prompt": new.name},
            ) from None
        return await self.get_prompt(new.tenant_id, new.name)

    async def get_prompt(self, tenant_id: str, name: str) -> Prompt:
        """The prompt with its labels; NotFound when the tenant has none of that name."""
        async with self._read() as conn:
            row = await self._prompt_row(conn, tenant_id, name, lock=False)
            return await self._prompt(conn, row)

    async def list_prompts(
        self, tenant_id: str, *, name_prefix: str = "", after_name: str = "", limit: int = 100
    ) -> list[Prompt]:
        """The tenant's prompts by name, after `after_name`, at most `limit`."""
        query = (
            sa.select(prompts)
            .where(prompts.c.tenant_id == tenant_id, prompts.c.name > after_name)
            .order_by(prompts.c.name)
            .limit(limit)
        )
        if name_prefix:
            query = query.where(prompts.c.name.startswith(name_prefix, autoescape=True))
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
            # Every listed prompt's labels in one query per chunk, not one query per prompt
            # (a page of 1,000 prompts took 1,001 round trips).
            pairs: dict[int, list[tuple[str, int]]] = {row["id"]: [] for row in rows}
            ids = list(pairs)
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                found = await conn.execute(
                    sa.select(labels.c.prompt_id, labels.c.name, labels.c.version).where(
                        labels.c.prompt_id.in_(chunk)
                    )
                )
                for prompt_id, name, version in found.all():
                    pairs[prompt_id].append((str(name), int(version)))
            return [_prompt_of(row, pairs[row["id"]]) for row in rows]

    async def update_prompt(self, tenant_id: str, name: str, changes: PromptChanges) -> Prompt:
        """Applies `changes` to a prompt."""
        values: dict[str, Any] = {"update_time_us": _now_us()}
        if changes.description is not None:
            values["description"] = changes.description
        if changes.protected_labels is not None:
            values["protected_labels"] = json.dumps(list(changes.protected_labels))
        if changes.clear_evaluation_gate:
            values["evaluation_gate"] = None
        elif changes.evaluation_gate is not None:
            values["evaluation_gate"] = canonical_json(changes.evaluation_gate)
        async with self._write() as conn:
            row = await self._prompt_row(conn, tenant_id, name, lock=True)
            await conn.execute(prompts.update().where(prompts.c.id == row["id"]).values(**values))
        return await self.get_prompt(tenant_id, name)

    # ------------------------------------------------------------------------------ versions

    async def create_version(
        self, tenant_id: str, prompt: str, new: NewVersion, request_id: str = ""
    ) -> tuple[PromptVersion, bool]:
        """Adds version `latest + 1`, or returns the latest when its content hash is the same
        (an idempotent push) or the version the same non-empty `request_id` created (a retry);
        the flag says whether a version was created."""
        now = _now_us()
        async with self._write() as conn:
            row = await self._prompt_row(conn, tenant_id, prompt, lock=True)
            if request_id:
                earlier = (
                    (
                        await conn.execute(
                            sa.select(versions).where(
                                versions.c.prompt_id == row["id"],
                                versions.c.request_id == request_id,
                            )
                        )
                    )
                    .mappings()
                    .first()
                )
                if earlier is not None:
                    return _version(prompt, earlier), False
            latest = int(row["latest_version"])
            if latest:
                current = await self._version_row(conn, row["id"], latest)
                if current["content_hash"] == new.hash:
                    return _version(prompt, current), False
            number = latest + 1
            values = {
                "prompt_id": row["id"],
                "version": number,
                "content": canonical_json(new.content),
                "content_hash": new.hash,
                "author": new.author,
                "commit_message": new.commit_message,
                "create_time_us": now,
            }
            await conn.execute(versions.insert().values(request_id=request_id or None, **values))
            await conn.execute(
                prompts.update()
                .where(prompts.c.id == row["id"])
                .values(latest_version=number, update_time_us=now)
            )
        return _version(prompt, values), True

    async def get_version(self, tenant_id: str, prompt: str, version: int) -> PromptVersion:
        """One version; NotFound when the prompt or the version does not exist."""
        async with self._read() as conn:
            row = await self._prompt_row(conn, tenant_id, prompt, lock=False)
            return _version(prompt, await self._version_row(conn, row["id"], version))

    async def get_labelled_version(self, tenant_id: str, prompt: str, label: str) -> PromptVersion:
        """The version a label points to; NotFound when the label does not exist."""
        async with self._read() as conn:
            row = await self._prompt_row(conn, tenant_id, prompt, lock=False)
            number = await self._label_version(conn, row["id"], label)
            if number is None:
                raise NotFound(
                    f"prompt {prompt!r} has no label {label!r}",
                    reason=reasons.LABEL_NOT_FOUND,
                    metadata={"prompt": prompt, "label": label},
                )
            return _version(prompt, await self._version_row(conn, row["id"], number))

    async def list_versions(
        self, tenant_id: str, prompt: str, *, before_version: int = 0, limit: int = 100
    ) -> list[PromptVersion]:
        """Versions newest first, below `before_version` (0: from the latest), at most `limit`."""
        async with self._read() as conn:
            row = await self._prompt_row(conn, tenant_id, prompt, lock=False)
            query = (
                sa.select(versions)
                .where(versions.c.prompt_id == row["id"])
                .order_by(versions.c.version.desc())
                .limit(limit)
            )
            if before_version:
                query = query.where(versions.c.version < before_version)
            rows = (await conn.execute(query)).mappings().all()
        return [_version(prompt, r) for r in rows]

    # ------------------------------------------------------------------------------ labels

    async def set_label(self, move: LabelMove, version: int) -> tuple[Label, LabelEvent]:
        """Points a label at `version` (creating it), if `move.expected_version` holds."""
        async with self._write() as conn:
            row = await self._prompt_row(conn, move.tenant_id, move.prompt, lock=True)
            current = await self._check_expected(conn, row, move)
            await self._version_row(conn, row["id"], version)  # NotFound when absent
            kind = LabelEventKind.CREATED if current is None else LabelEventKind.MOVED
            return await self._move(conn, row, move, current, version, kind)

    async def delete_label(self, move: LabelMove) -> LabelEvent:
        """Deletes a label, if `move.expected_version` holds; NotFound when it is absent."""
        async with self._write() as conn:
            row = await self._prompt_row(conn, move.tenant_id, move.prompt, lock=True)
            current = await self._check_expected(conn, row, move)
            if current is None:
                raise _no_label(move)
            _, event_ = await self._move(conn, row, move, current, 0, LabelEventKind.DELETED)
            return event_

    async def rollback_label(self, move: LabelMove) -> tuple[Label, LabelEvent]:
        """Moves a label back to where it pointed before its latest move that was not itself
        undone: rolling back twice goes back two moves, never forth again."""
        async with self._write() as conn:
            row = await self._prompt_row(conn, move.tenant_id, move.prompt, lock=True)
            current = await self._check_expected(conn, row, move)
            if current is None:
                raise _no_label(move)
            history = (
                await conn.execute(
                    sa.select(label_events.c.kind, label_events.c.from_version)
                    .where(
                        label_events.c.prompt_id == row["id"], label_events.c.label == move.label
                    )
                    .order_by(label_events.c.sequence.desc())
                )
            ).all()
            target = _rollback_target(
                [(LabelEventKind(kind), from_version) for kind, from_version in history]
            )
            if target is None:
                raise FailedPrecondition(
                    f"label {move.label!r} of prompt {move.prompt!r} has no earlier version to "
                    "roll back to",
                    reason=reasons.NO_ROLLBACK_TARGET,
                    metadata={"prompt": move.prompt, "label": move.label},
                )
            return await self._move(conn, row, move, current, target, LabelEventKind.ROLLED_BACK)

    async def label_history(
        self, tenant_id: str, prompt: str, label: str, *, before_sequence: int = 0, limit: int = 100
    ) -> list[LabelEvent]:
        """A label's events newest first (all labels when `label` is empty)."""
        async with self._read() as conn:
            row = await self._prompt_row(conn, tenant_id, prompt, lock=False)
            query = (
                sa.select(label_events)
                .where(label_events.c.prompt_id == row["id"])
                .order_by(label_events.c.sequence.desc())
                .limit(limit)
            )
            if label:
                query = query.where(label_events.c.label == label)
            if before_sequence:
                query = query.where(label_events.c.sequence < before_sequence)
            rows = (await conn.execute(query)).mappings().all()
        return [_event(r) for r in rows]

    async def events_after(
        self, tenant_id: str, sequence: int, *, prompts_: Sequence[str] = (), limit: int = 500
    ) -> list[LabelEvent]:
        """The tenant's events after `sequence`, oldest first (only `prompts_` when given)."""
        query = (
            sa.select(label_events)
            .where(label_events.c.tenant_id == tenant_id, label_events.c.sequence > sequence)
            .order_by(label_events.c.sequence)
            .limit(limit)
        )
        if prompts_:
            query = query.where(label_events.c.prompt_name.in_(list(prompts_)))
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_event(r) for r in rows]

    async def label_snapshot(
        self, tenant_id: str, prompts_: Sequence[str] = ()
    ) -> tuple[list[Label], int]:
        """Every current label of the tenant's prompts (or of `prompts_`), and the sequence of
        the last event they include, read in one snapshot of the database (PostgreSQL:
        REPEATABLE READ; SQLite's read transactions are snapshots): the labels are exactly
        those events' outcome, and every later event has a higher sequence."""
        query = (
            sa.select(
                prompts.c.name,
                prompts.c.protected_labels,
                labels.c.name.label("label"),
                labels.c.version,
                labels.c.update_time_us,
            )
            .join(labels, labels.c.prompt_id == prompts.c.id)
            .where(prompts.c.tenant_id == tenant_id)
            .order_by(prompts.c.name, labels.c.name)
        )
        if prompts_:
            query = query.where(prompts.c.name.in_(list(prompts_)))
        last = sa.select(sa.func.coalesce(sa.func.max(label_events.c.sequence), 0)).where(
            label_events.c.tenant_id == tenant_id
        )
        async with self._snapshot() as conn:
            sequence = int((await conn.execute(last)).scalar_one())
            rows = (await conn.execute(query)).mappings().all()
        return [
            Label(
                prompt=r["name"],
                name=r["label"],
                version=r["version"],
                protected=r["label"] in json.loads(r["protected_labels"]),
                update_time=_time(r["update_time_us"]),
            )
            for r in rows
        ], sequence

    # ------------------------------------------------------------------------------ helpers

    async def _prompt_row(
        self, conn: AsyncConnection, tenant_id: str, name: str, *, lock: bool
    ) -> Mapping[Any, Any]:
        query = sa.select(prompts).where(prompts.c.tenant_id == tenant_id, prompts.c.name == name)
        if lock and self._postgres:
            query = query.with_for_update()
        return await row_or_not_found(
            conn,
            query,
            lambda: NotFound(
                f"no prompt named {name!r}",
                reason=reasons.PROMPT_NOT_FOUND,
                metadata={"prompt": name},
            ),
        )

    async def _prompt(self, conn: AsyncConnection, row: Mapping[Any, Any]) -> Prompt:
        pairs = (
            await conn.execute(
                sa.select(labels.c.name, labels.c.version).where(labels.c.prompt_id == row["id"])
            )
        ).all()
        return _prompt_of(row, [(str(n), int(v)) for n, v in pairs])

    async def _version_row(
        self, conn: AsyncConnection, prompt_id: int, version: int
    ) -> Mapping[Any, Any]:
        return await row_or_not_found(
            conn,
            sa.select(versions).where(
                versions.c.prompt_id == prompt_id, versions.c.version == version
            ),
            lambda: NotFound(
                f"the prompt has no version {version}",
                reason=reasons.PROMPT_VERSION_NOT_FOUND,
                metadata={"version": str(version)},
            ),
        )

    async def _label_version(self, conn: AsyncConnection, prompt_id: int, label: str) -> int | None:
        version = (
            await conn.execute(
                sa.select(labels.c.version).where(
                    labels.c.prompt_id == prompt_id, labels.c.name == label
                )
            )
        ).scalar_one_or_none()
        return None if version is None else int(version)

    async def _check_expected(
        self, conn: AsyncConnection, row: Mapping[Any, Any], move: LabelMove
    ) -> int | None:
        current = await self._label_version(conn, row["id"], move.label)
        if move.expected_version != UNSET and move.expected_version != (current or 0):
            where = f"version {current}" if current else "nothing (it does not exist)"
            raise Conflict(
                f"label {move.label!r} of prompt {move.prompt!r} points to {where}, not to "
                f"the expected {move.expected_version or 'nothing'}",
                reason=reasons.LABEL_VERSION_MISMATCH,
                metadata={
                    "prompt": move.prompt,
                    "label": move.label,
                    "expected": str(move.expected_version),
                    "actual": str(current or 0),
                },
            )
        return current

    async def _move(
        self,
        conn: AsyncConnection,
        row: Mapping[Any, Any],
        move: LabelMove,
        current: int | None,
        target: int,
        kind: LabelEventKind,
    ) -> tuple[Label, LabelEvent]:
        now = _now_us()
        where = (labels.c.prompt_id == row["id"]) & (labels.c.name == move.label)
        if target == 0:
            await conn.execute(labels.delete().where(where))
        elif current is None:
            await conn.execute(
                labels.insert().values(
                    prompt_id=row["id"], name=move.label, version=target, update_time_us=now
                )
            )
        else:
            await conn.execute(
                labels.update().where(where).values(version=target, update_time_us=now)
            )
        values = {
            "tenant_id": move.tenant_id,
            "prompt_id": row["id"],
            "prompt_name": move.prompt,
            "label": move.label,
            "kind": kind.value,
            "from_version": current or 0,
            "to_version": target,
            "actor": move.actor,
            "reason": move.reason,
            "event_time_us": now,
        }
        # The tenant's events take their sequence and commit one at a time (see the module
        # docstring): a watcher that read sequence n never misses an event below n.
        await lock_feed(conn, label_events.name, move.tenant_id)
        result = await conn.execute(label_events.insert().values(**values))
        (sequence,) = result.inserted_primary_key or (0,)
        await notify(conn, LABEL_EVENTS_CHANNEL, label_event_payload(self.schema, move.tenant_id))
        label = Label(
            prompt=move.prompt,
            name=move.label,
            version=target,
            protected=move.label in json.loads(row["protected_labels"]),
            update_time=_time(now),
        )
        return label, _event({**values, "sequence": sequence})


def _rollback_target(history: Sequence[tuple[LabelEventKind, int]]) -> int | None:
    """Where a rollback goes, from a label's events newest first: each earlier rollback undid one
    more move, so walk back past as many moves as there were rollbacks, plus one."""
    pending = 1
    for kind, from_version in history:
        if kind is LabelEventKind.ROLLED_BACK:
            pending += 1
        elif kind is LabelEventKind.MOVED:
            pending -= 1
            if pending == 0:
                return from_version
        else:  # CREATED or DELETED: nothing earlier belongs to this label's life
            return None
    return None


def _no_label(move: LabelMove) -> NotFound:
    return NotFound(
        f"prompt {move.prompt!r} has no label {move.label!r}",
        reason=reasons.LABEL_NOT_FOUND,
        metadata={"prompt": move.prompt, "label": move.label},
    )


def _json_or_none(document: Mapping[str, Any] | None) -> str | None:
    return canonical_json(document) if document is not None else None


def _version(prompt: str, row: Mapping[Any, Any]) -> PromptVersion:
    return PromptVersion(
        prompt=prompt,
        version=row["version"],
        content=json.loads(row["content"]),
        content_hash=row["content_hash"],
        author=row["author"],
        commit_message=row["commit_message"],
        create_time=_time(row["create_time_us"]),
    )


def _event(row: Mapping[Any, Any]) -> LabelEvent:
    return LabelEvent(
        sequence=int(row["sequence"]),
        tenant_id=row["tenant_id"],
        prompt=row["prompt_name"],
        label=row["label"],
        kind=LabelEventKind(row["kind"]),
        from_version=row["from_version"],
        to_version=row["to_version"],
        actor=row["actor"],
        reason=row["reason"],
        event_time=_time(row["event_time_us"]),
    )


def _prompt_of(row: Mapping[Any, Any], pairs: Sequence[tuple[str, int]]) -> Prompt:
    """The prompt of a `prompts` row with its labels' (name, version) pairs."""
    gate = row["evaluation_gate"]
    return Prompt(
        tenant_id=row["tenant_id"],
        name=row["name"],
        description=row["description"],
        latest_version=row["latest_version"],
        labels=dict(sorted(pairs)),
        protected_labels=tuple(json.loads(row["protected_labels"])),
        evaluation_gate=json.loads(gate) if gate else None,
        create_time=_time(row["create_time_us"]),
        update_time=_time(row["update_time_us"]),
    )

"""Evaluation datasets, examples, runs, per-output results, reports and quality alerts in
SQLite or PostgreSQL, on `services.common.sql`. Every call acts within one tenant: rows of
other tenants are invisible (NotFound, never someone else's data).

Examples are keyed by their content-derived id (`datasets.example_id`) within their dataset and
inserted with `ON CONFLICT DO NOTHING`: importing a file twice or retrying a batch adds nothing
more, and listing keeps the order of first insertion.

A run's progress is derived from its stored results (`add_results` inserts them, unique per
example and repeat, and recounts in the same transaction), so progress and results never
disagree and a retried batch counts once. Run state changes follow `RunState`: queued ->
running -> succeeded | failed, and cancelled from queued or running; writes to a run that has
ended raise FailedPrecondition, which is how an orchestrator learns of a cancellation. On
PostgreSQL such writes take the run's row `FOR UPDATE` (SQLite serializes every write).

Reports keep their summaries and baseline comparison as JSON beside the run's results (not a
copy of them). `gate` answers the prompt registry's question: does version V of prompt P have a
passing report on the gate's dataset?

Schema changes are the numbered `MIGRATIONS`, recorded in `evaluation_migrations`.
"""

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection as SyncConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common import reasons
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from services.common.sql import (
    Migration,
    SqlStore,
    create_engine,
    now_us,
    row_or_not_found,
    time_from_us,
)
from services.common.wire import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.evaluation.core.datasets import example_id
from services.evaluation.core.model import (
    KIND_OF,
    MAX_ERROR_CHARS,
    MAX_REQUEST_ID,
    NAME_PATTERN,
    AlertState,
    Dataset,
    EvaluationGate,
    EvaluationReport,
    EvaluationRun,
    Example,
    ExampleRegression,
    ExampleResult,
    GateFailure,
    GateOutcome,
    NewDataset,
    NewExample,
    NewQualityAlert,
    QualityAlert,
    ReportComparison,
    RunProgress,
    RunSpec,
    RunState,
    Score,
    ScorerComparison,
    ScorerKind,
    ScorerSettings,
    ScorerSpec,
    ScorerSummary,
    TokenUsage,
    dataset_violations,
    example_violations,
    length_violations,
    new_id,
    raise_if,
    validate_run_spec,
)
from services.evaluation.core.reports import gate_failures
from services.experiment.core.statistics import Interval

metadata = sa.MetaData()

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")
"""An autoincrementing key (SQLite autoincrements only INTEGER PRIMARY KEY)."""
_ID_CHARS: Final = 32

datasets = sa.Table(
    "evaluation_datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("prompt", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("tenant_id", "name", name="uq_evaluation_datasets_tenant_name"),
)

examples = sa.Table(
    "evaluation_examples",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("dataset_id", sa.Integer, sa.ForeignKey("evaluation_datasets.id"), nullable=False),
    sa.Column("example_id", sa.String(64), nullable=False),
    sa.Column("inputs", sa.Text, nullable=False),
    sa.Column("reference", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("dataset_id", "example_id", name="uq_evaluation_examples_id"),
)

runs = sa.Table(
    "evaluation_runs",
    metadata,
    sa.Column("id", sa.String(_ID_CHARS), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("prompt", sa.String(64), nullable=False),
    sa.Column("prompt_version", sa.Integer, nullable=False),
    sa.Column("prompt_label", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("scorers", sa.Text, nullable=False),
    sa.Column("repeats", sa.Integer, nullable=False),
    sa.Column("baseline_report_id", sa.String(128), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("total", sa.Integer, nullable=False),
    sa.Column("completed", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("resolved_prompt_version", sa.Integer, nullable=False),
    sa.Column("report_id", sa.String(_ID_CHARS), nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("end_time_us", sa.BigInteger, nullable=True),
    sa.Column("owner", sa.String(32), nullable=False, server_default=""),
    sa.Column("heartbeat_us", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("tenant_id", "request_id", name="uq_evaluation_runs_request"),
    sa.Index("ix_evaluation_runs_tenant_created", "tenant_id", "create_time_us", "id"),
)

results = sa.Table(
    "evaluation_results",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(_ID_CHARS), sa.ForeignKey("evaluation_runs.id"), nullable=False),
    sa.Column("example_id", sa.String(64), nullable=False),
    sa.Column("repeat", sa.Integer, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("scores", sa.Text, nullable=False),
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("output_tokens", sa.Integer, nullable=False),
    sa.Column("cost", sa.String(64), nullable=False),
    sa.Column("currency", sa.String(16), nullable=False),
    sa.Column("latency_seconds", sa.Double, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.UniqueConstraint("run_id", "example_id", "repeat", name="uq_evaluation_results_output"),
)

reports = sa.Table(
    "evaluation_reports",
    metadata,
    sa.Column("id", sa.String(_ID_CHARS), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column(
        "run_id",
        sa.String(_ID_CHARS),
        sa.ForeignKey("evaluation_runs.id"),
        nullable=False,
        unique=True,
    ),
    sa.Column("prompt", sa.String(64), nullable=False),
    sa.Column("prompt_version", sa.Integer, nullable=False),
    sa.Column("prompt_content_hash", sa.String(64), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("summaries", sa.Text, nullable=False),
    sa.Column("comparison", sa.Text, nullable=True),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost", sa.String(64), nullable=False),
    sa.Column("currency", sa.String(16), nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Index(
        "ix_evaluation_reports_gate",
        "tenant_id",
        "prompt",
        "prompt_version",
        "dataset",
        "create_time_us",
    ),
)

alerts = sa.Table(
    "evaluation_quality_alerts",
    metadata,
    sa.Column("id", sa.String(_ID_CHARS), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("prompt", sa.String(64), nullable=False),
    sa.Column("prompt_version", sa.Integer, nullable=False),
    sa.Column("scorer", sa.String(64), nullable=False),
    sa.Column("detector", sa.String(64), nullable=False),
    sa.Column("baseline_mean", sa.Double, nullable=False),
    sa.Column("observed_mean", sa.Double, nullable=False),
    sa.Column("sample_count", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("fire_time_us", sa.BigInteger, nullable=False),
    sa.Column("resolve_time_us", sa.BigInteger, nullable=True),
    sa.Index("ix_evaluation_quality_alerts_tenant_fired", "tenant_id", "fire_time_us", "id"),
)


def _initial_schema(connection: SyncConnection) -> None:
    metadata.create_all(connection)


def _run_owners(connection: SyncConnection) -> None:
    """Runs name the replica executing them and when it last said so (a database made by
    migration 1 of this build has the columns already)."""
    present = {column["name"] for column in sa.inspect(connection).get_columns("evaluation_runs")}
    if "owner" not in present:
        connection.execute(
            sa.text("ALTER TABLE evaluation_runs ADD COLUMN owner VARCHAR(32) NOT NULL DEFAULT ''")
        )
    if "heartbeat_us" not in present:
        connection.execute(sa.text("ALTER TABLE evaluation_runs ADD COLUMN heartbeat_us BIGINT"))


MIGRATIONS: Final[Sequence[Migration]] = (
    Migration(1, "datasets, examples, runs, results, reports and quality alerts", _initial_schema),
    Migration(2, "run owners and heartbeats", _run_owners),
)
"""Every migration, in order. Append; never edit one that has shipped."""

_LIVE_STATES: Final = (RunState.QUEUED.value, RunState.RUNNING.value)
_BAD_TOKEN: Final = "is not a token this service issued"
_TIME_ID_TOKEN: Final = re.compile(r"(\d{1,19})\.([0-9a-f]{32})")


class SqlEvaluationStore(SqlStore):
    """The evaluation data of every tenant in SQLite or PostgreSQL. Call `migrate()` once
    first."""

    MIGRATIONS = MIGRATIONS
    MIGRATIONS_TABLE = "evaluation_migrations"

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> "SqlEvaluationStore":
        """A store on a new engine for `url` (see `services.common.sql.create_engine`)."""
        return cls(create_engine(url, schema=schema))

    # ---------------------------------------------------------------------------- datasets

    async def create_dataset(
        self, tenant_id: str, new: NewDataset, *, request_id: str = ""
    ) -> Dataset:
        """Creates an empty dataset; InvalidArgument for invalid fields, AlreadyExists
        (DATASET_ALREADY_EXISTS) when the tenant has one of that name, unless the same
        non-empty `request_id` created it (a retry), which returns it."""
        raise_if(
            dataset_violations(new) + length_violations("request_id", request_id, MAX_REQUEST_ID)
        )
        try:
            async with self._write() as conn:
                await conn.execute(
                    datasets.insert().values(
                        tenant_id=tenant_id,
                        name=new.name,
                        description=new.description,
                        prompt=new.prompt,
                        request_id=request_id or None,
                        create_time_us=now_us(),
                    )
                )
        except IntegrityError:
            if request_id:
                async with self._read() as conn:
                    row = await self._dataset_row(conn, tenant_id, new.name)
                if row["request_id"] == request_id:
                    return await self.get_dataset(tenant_id, new.name)
            raise AlreadyExists(
                f"dataset {new.name!r} already exists",
                reason=reasons.DATASET_ALREADY_EXISTS,
                metadata={"dataset": new.name},
            ) from None
        return await self.get_dataset(tenant_id, new.name)

    async def get_dataset(self, tenant_id: str, name: str) -> Dataset:
        """One dataset with its example count; NotFound (DATASET_NOT_FOUND)."""
        async with self._read() as conn:
            row = await row_or_not_found(
                conn,
                _datasets_query().where(*_dataset_key(tenant_id, name)),
                lambda: _no_dataset(name),
            )
        return _dataset(row)

    async def list_datasets(
        self, tenant_id: str, *, prompt: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Dataset], str]:
        """One page of the tenant's datasets (of `prompt`, when given) in name order, and the
        token of the next page (empty on the last)."""
        after = _decode_name_token(page_token) if page_token else ""
        size = _page_size(page_size, bad_token=after is None)
        query = (
            _datasets_query()
            .where(datasets.c.tenant_id == tenant_id, datasets.c.name > (after or ""))
            .order_by(datasets.c.name)
            .limit(size + 1)
        )
        if prompt:
            query = query.where(datasets.c.prompt == prompt)
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        found = [_dataset(row) for row in rows[:size]]
        return found, _encode_name_token(found[-1].name) if len(rows) > size else ""

    # ---------------------------------------------------------------------------- examples

    async def add_examples(
        self, tenant_id: str, dataset: str, new: Sequence[NewExample]
    ) -> list[Example]:
        """Adds examples (1 to 1000; their inputs checked by the caller against the prompt,
        see `datasets.check_examples`) and returns them with their ids in request order.
        Examples the dataset holds already (same content) are not added again."""
        raise_if(example_violations(new))
        found = [Example(example_id(e), dict(e.inputs), e.reference, dict(e.tags)) for e in new]
        unique = {e.id: e for e in found}
        now = now_us()
        async with self._write() as conn:
            row = await self._dataset_row(conn, tenant_id, dataset, lock=True)
            dialect = postgresql if self._postgres else sqlite
            await conn.execute(
                dialect.insert(examples)
                .values(
                    [
                        {
                            "dataset_id": row["id"],
                            "example_id": e.id,
                            "inputs": _json(e.inputs),
                            "reference": e.reference,
                            "tags": _json(e.tags),
                            "create_time_us": now,
                        }
                        for e in unique.values()
                    ]
                )
                .on_conflict_do_nothing(index_elements=["dataset_id", "example_id"])
            )
        return found

    async def list_examples(
        self, tenant_id: str, dataset: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Example], str]:
        """One page of a dataset's examples in insertion order, and the next page's token;
        NotFound (DATASET_NOT_FOUND)."""
        valid = page_token == "" or (page_token.isdigit() and len(page_token) <= 19)
        size = _page_size(page_size, bad_token=not valid)
        async with self._read() as conn:
            row = await self._dataset_row(conn, tenant_id, dataset)
            rows = (
                (
                    await conn.execute(
                        sa.select(examples)
                        .where(
                            examples.c.dataset_id == row["id"],
                            examples.c.seq > int(page_token or 0),
                        )
                        .order_by(examples.c.seq)
                        .limit(size + 1)
                    )
                )
                .mappings()
                .all()
            )
        found = [
            Example(r["example_id"], json.loads(r["inputs"]), r["reference"], json.loads(r["tags"]))
            for r in rows[:size]
        ]
        return found, str(rows[size - 1]["seq"]) if len(rows) > size else ""

    # -------------------------------------------------------------------------------- runs

    async def create_run(
        self, tenant_id: str, spec: RunSpec, *, request_id: str = "", owner: str = ""
    ) -> tuple[EvaluationRun, bool]:
        """Creates a queued run of a dataset of the tenant; returns it and whether it is new.
        A retry with the same non-empty `request_id` returns the first run and False.
        InvalidArgument (see `validate_run_spec`), NotFound for a missing dataset
        (DATASET_NOT_FOUND) or baseline report (EVALUATION_REPORT_NOT_FOUND)."""
        raise_if(length_violations("request_id", request_id, MAX_REQUEST_ID))
        checked = validate_run_spec(spec)
        if request_id:
            existing = await self._run_by_request(tenant_id, request_id)
            if existing is not None:
                return existing, False
        run_id = new_id()
        try:
            async with self._write() as conn:
                await self._dataset_row(conn, tenant_id, checked.dataset, lock=True)
                if checked.baseline_report_id:
                    await self._report_row(conn, tenant_id, checked.baseline_report_id)
                await conn.execute(
                    runs.insert().values(
                        id=run_id,
                        tenant_id=tenant_id,
                        prompt=checked.prompt,
                        prompt_version=checked.prompt_version,
                        prompt_label=checked.prompt_label,
                        model=checked.model,
                        dataset=checked.dataset,
                        scorers=json.dumps([_scorer_json(s) for s in checked.scorers]),
                        repeats=checked.repeats,
                        baseline_report_id=checked.baseline_report_id,
                        state=RunState.QUEUED.value,
                        total=0,
                        completed=0,
                        failed=0,
                        resolved_prompt_version=0,
                        report_id="",
                        error="",
                        request_id=request_id or None,
                        create_time_us=now_us(),
                        end_time_us=None,
                        owner=owner,
                        heartbeat_us=now_us(),
                    )
                )
        except IntegrityError:
            existing = await self._run_by_request(tenant_id, request_id) if request_id else None
            if existing is None:
                raise
            return existing, False
        return await self.get_run(tenant_id, run_id), True

    async def get_run(self, tenant_id: str, run_id: str) -> EvaluationRun:
        """One run; NotFound (EVALUATION_RUN_NOT_FOUND)."""
        async with self._read() as conn:
            return _run(await self._run_row(conn, tenant_id, run_id))

    async def list_runs(
        self,
        tenant_id: str,
        *,
        prompt: str = "",
        dataset: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[EvaluationRun], str]:
        """One page of the tenant's runs (of `prompt` and `dataset`, when given), newest
        first, and the next page's token."""
        after = _decode_time_id_token(page_token) if page_token else None
        size = _page_size(page_size, bad_token=bool(page_token) and after is None)
        query = (
            sa.select(runs)
            .where(runs.c.tenant_id == tenant_id)
            .order_by(runs.c.create_time_us.desc(), runs.c.id.desc())
            .limit(size + 1)
        )
        if prompt:
            query = query.where(runs.c.prompt == prompt)
        if dataset:
            query = query.where(runs.c.dataset == dataset)
        if after is not None:
            query = query.where(_before(runs.c.create_time_us, runs.c.id, after))
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        found = [_run(row) for row in rows[:size]]
        token = ""
        if len(rows) > size:
            token = _encode_time_id_token(int(rows[size - 1]["create_time_us"]), found[-1].id)
        return found, token

    async def start_run(
        self, tenant_id: str, run_id: str, *, resolved_prompt_version: int, total: int
    ) -> EvaluationRun:
        """Moves a queued run to running with the version it evaluates and the number of
        outputs to generate; FailedPrecondition unless it is queued."""
        async with self._write() as conn:
            await self._locked_run(conn, tenant_id, run_id, RunState.QUEUED)
            await conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    state=RunState.RUNNING.value,
                    resolved_prompt_version=resolved_prompt_version,
                    total=total,
                )
            )
            return _run(await self._run_row(conn, tenant_id, run_id))

    async def heartbeat(self, owner: str) -> int:
        """Says that `owner` still executes its queued and running runs; returns how many."""
        async with self._write() as conn:
            result = await conn.execute(
                runs.update()
                .where(runs.c.owner == owner, runs.c.state.in_(_LIVE_STATES))
                .values(heartbeat_us=now_us())
            )
            return int(result.rowcount or 0)

    async def fail_orphaned_runs(self, silent_us: int) -> list[tuple[str, str]]:
        """Marks failed every queued or running run whose owner has not said it executes it
        for `silent_us` microseconds (its replica died); returns their (tenant, run id)."""
        cutoff = now_us() - silent_us
        stale = sa.func.coalesce(runs.c.heartbeat_us, runs.c.create_time_us) < cutoff
        async with self._write() as conn:
            orphans = (
                await conn.execute(
                    sa.select(runs.c.tenant_id, runs.c.id).where(
                        runs.c.state.in_(_LIVE_STATES), stale
                    )
                )
            ).all()
            if orphans:
                await conn.execute(
                    runs.update()
                    .where(runs.c.id.in_([run_id for _, run_id in orphans]))
                    .where(runs.c.state.in_(_LIVE_STATES), stale)
                    .values(
                        state=RunState.FAILED.value,
                        error="the evaluation replica executing the run stopped (no heartbeat "
                        f"for {silent_us / 1e6:g} s); start the run again",
                        end_time_us=now_us(),
                    )
                )
        return [(str(tenant), str(run_id)) for tenant, run_id in orphans]

    async def add_results(
        self, tenant_id: str, run_id: str, new: Sequence[ExampleResult]
    ) -> EvaluationRun:
        """Stores outputs of a running run (one per example and repeat: a repeat already
        stored is ignored) and returns the run with its progress recounted; FailedPrecondition
        unless the run is running (a cancelled run takes no more)."""
        async with self._write() as conn:
            await self._locked_run(conn, tenant_id, run_id, RunState.RUNNING)
            await self._insert_results(conn, run_id, new)
            await self._recount(conn, run_id)
            return _run(await self._run_row(conn, tenant_id, run_id))

    async def list_results(self, tenant_id: str, run_id: str) -> list[ExampleResult]:
        """Every stored output of a run, by example id and repeat."""
        async with self._read() as conn:
            await self._run_row(conn, tenant_id, run_id)
            return await _results(conn, run_id)

    async def finish_run(self, tenant_id: str, report: EvaluationReport) -> EvaluationRun:
        """Stores the report of a running run (with any of its results not stored yet) and
        marks the run succeeded; FailedPrecondition unless it is running."""
        async with self._write() as conn:
            await self._locked_run(conn, tenant_id, report.run_id, RunState.RUNNING)
            await self._insert_results(conn, report.run_id, report.results)
            await self._recount(conn, report.run_id)
            await conn.execute(
                reports.insert().values(
                    id=report.id,
                    tenant_id=tenant_id,
                    run_id=report.run_id,
                    prompt=report.prompt,
                    prompt_version=report.prompt_version,
                    prompt_content_hash=report.prompt_content_hash,
                    model=report.model,
                    dataset=report.dataset,
                    summaries=json.dumps([_summary_json(s) for s in report.summaries]),
                    comparison=None
                    if report.baseline_comparison is None
                    else json.dumps(_comparison_json(report.baseline_comparison)),
                    input_tokens=report.usage.input_tokens,
                    output_tokens=report.usage.output_tokens,
                    cost=str(report.cost),
                    currency=report.currency,
                    create_time_us=int(report.create_time.timestamp() * 1_000_000),
                )
            )
            await conn.execute(
                runs.update()
                .where(runs.c.id == report.run_id)
                .values(state=RunState.SUCCEEDED.value, report_id=report.id, end_time_us=now_us())
            )
            return _run(await self._run_row(conn, tenant_id, report.run_id))

    async def fail_run(self, tenant_id: str, run_id: str, error: str) -> EvaluationRun:
        """Marks a queued or running run failed with `error` (cut to 2000 characters);
        FailedPrecondition when it has ended."""
        async with self._write() as conn:
            await self._locked_run(conn, tenant_id, run_id, RunState.QUEUED, RunState.RUNNING)
            await conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    state=RunState.FAILED.value,
                    error=error[:MAX_ERROR_CHARS],
                    end_time_us=now_us(),
                )
            )
            return _run(await self._run_row(conn, tenant_id, run_id))

    async def cancel_run(self, tenant_id: str, run_id: str) -> EvaluationRun:
        """Cancels a queued or running run; a cancelled run is returned as it is.
        FailedPrecondition for a run that succeeded or failed."""
        async with self._write() as conn:
            row = await self._run_row(conn, tenant_id, run_id, lock=True)
            state = RunState(row["state"])
            if state is RunState.CANCELLED:
                return _run(row)
            if state.terminal:
                raise _run_ended(run_id, state)
            await conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(state=RunState.CANCELLED.value, end_time_us=now_us())
            )
            return _run(await self._run_row(conn, tenant_id, run_id))

    # ----------------------------------------------------------------------------- reports

    async def get_report(self, tenant_id: str, report_id: str) -> EvaluationReport:
        """One report with every result of its run; NotFound (EVALUATION_REPORT_NOT_FOUND)."""
        async with self._read() as conn:
            row = await self._report_row(conn, tenant_id, report_id)
            return _report(row, await _results(conn, row["run_id"]))

    async def get_run_report(self, tenant_id: str, run_id: str) -> EvaluationReport:
        """The report of a run; NotFound (EVALUATION_REPORT_NOT_FOUND) until it succeeded,
        (EVALUATION_RUN_NOT_FOUND) for an unknown run."""
        async with self._read() as conn:
            await self._run_row(conn, tenant_id, run_id)
            row = await row_or_not_found(
                conn,
                sa.select(reports).where(
                    reports.c.tenant_id == tenant_id, reports.c.run_id == run_id
                ),
                lambda: NotFound(
                    f"run {run_id} has no report",
                    reason=reasons.EVALUATION_REPORT_NOT_FOUND,
                    metadata={"run_id": run_id},
                ),
            )
            return _report(row, await _results(conn, run_id))

    async def gate(
        self, tenant_id: str, prompt: str, prompt_version: int, gate: EvaluationGate
    ) -> GateOutcome:
        """Whether version `prompt_version` of `prompt` has a passing report on the gate's
        dataset: the newest report that meets every threshold, or (not passed) the misses
        of the newest report, or (no report at all) every threshold missed with an empty
        report id."""
        query = (
            sa.select(reports.c.id, reports.c.summaries)
            .where(
                reports.c.tenant_id == tenant_id,
                reports.c.prompt == prompt,
                reports.c.prompt_version == prompt_version,
                reports.c.dataset == gate.dataset,
            )
            .order_by(reports.c.create_time_us.desc(), reports.c.id.desc())
        )
        newest: GateOutcome | None = None
        async with self._read() as conn:
            for row in await conn.execute(query):
                summaries = [_summary(s) for s in json.loads(row.summaries)]
                failures = gate_failures(summaries, gate.thresholds)
                if not failures:
                    return GateOutcome(True, row.id)
                newest = newest or GateOutcome(False, row.id, failures)
        if newest is not None:
            return newest
        return GateOutcome(
            False, "", tuple(GateFailure(t.scorer, t.min_mean, None) for t in gate.thresholds)
        )

    # ------------------------------------------------------------------------------ alerts

    async def create_alert(self, tenant_id: str, new: NewQualityAlert) -> QualityAlert:
        """Records a firing alert."""
        alert_id = new_id()
        async with self._write() as conn:
            await conn.execute(
                alerts.insert().values(
                    id=alert_id,
                    tenant_id=tenant_id,
                    prompt=new.prompt,
                    prompt_version=new.prompt_version,
                    scorer=new.scorer,
                    detector=new.detector,
                    baseline_mean=new.baseline_mean,
                    observed_mean=new.observed_mean,
                    sample_count=new.sample_count,
                    state=AlertState.FIRING.value,
                    fire_time_us=now_us(),
                    resolve_time_us=None,
                )
            )
            return _alert(await self._alert_row(conn, tenant_id, alert_id))

    async def update_alert(
        self, tenant_id: str, alert_id: str, *, observed_mean: float, sample_count: int
    ) -> QualityAlert:
        """Updates what a firing alert observed (a resolved alert stays as it was)."""
        async with self._write() as conn:
            await self._alert_row(conn, tenant_id, alert_id)
            await conn.execute(
                alerts.update()
                .where(alerts.c.id == alert_id, alerts.c.state == AlertState.FIRING.value)
                .values(observed_mean=observed_mean, sample_count=sample_count)
            )
            return _alert(await self._alert_row(conn, tenant_id, alert_id))

    async def resolve_alert(self, tenant_id: str, alert_id: str) -> QualityAlert:
        """Resolves a firing alert; a resolved one keeps its first resolve time."""
        async with self._write() as conn:
            await self._alert_row(conn, tenant_id, alert_id)
            await conn.execute(
                alerts.update()
                .where(alerts.c.id == alert_id, alerts.c.state == AlertState.FIRING.value)
                .values(state=AlertState.RESOLVED.value, resolve_time_us=now_us())
            )
            return _alert(await self._alert_row(conn, tenant_id, alert_id))

    async def firing_alert(
        self, tenant_id: str, prompt: str, prompt_version: int, scorer: str, detector: str
    ) -> QualityAlert | None:
        """The newest firing alert of one detector on one scorer of a version, if any."""
        async with self._read() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(alerts)
                        .where(
                            alerts.c.tenant_id == tenant_id,
                            alerts.c.prompt == prompt,
                            alerts.c.prompt_version == prompt_version,
                            alerts.c.scorer == scorer,
                            alerts.c.detector == detector,
                            alerts.c.state == AlertState.FIRING.value,
                        )
                        .order_by(alerts.c.fire_time_us.desc(), alerts.c.id.desc())
                        .limit(1)
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _alert(row)

    async def list_alerts(
        self,
        tenant_id: str,
        *,
        prompt: str = "",
        state: AlertState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[QualityAlert], str]:
        """One page of the tenant's alerts (of `prompt`, in `state`, when given), newest
        first, and the next page's token."""
        after = _decode_time_id_token(page_token) if page_token else None
        size = _page_size(page_size, bad_token=bool(page_token) and after is None)
        query = (
            sa.select(alerts)
            .where(alerts.c.tenant_id == tenant_id)
            .order_by(alerts.c.fire_time_us.desc(), alerts.c.id.desc())
            .limit(size + 1)
        )
        if prompt:
            query = query.where(alerts.c.prompt == prompt)
        if state is not None:
            query = query.where(alerts.c.state == state.value)
        if after is not None:
            query = query.where(_before(alerts.c.fire_time_us, alerts.c.id, after))
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        found = [_alert(row) for row in rows[:size]]
        token = ""
        if len(rows) > size:
            token = _encode_time_id_token(int(rows[size - 1]["fire_time_us"]), found[-1].id)
        return found, token

    # ----------------------------------------------------------------------------- helpers

    async def _dataset_row(
        self, conn: AsyncConnection, tenant_id: str, name: str, *, lock: bool = False
    ) -> Mapping[Any, Any]:
        """The dataset's row (`lock`: FOR SHARE on PostgreSQL); NotFound."""
        query = sa.select(datasets).where(*_dataset_key(tenant_id, name))
        if lock and self._postgres:
            query = query.with_for_update(read=True)
        return await row_or_not_found(conn, query, lambda: _no_dataset(name))

    async def _run_row(
        self, conn: AsyncConnection, tenant_id: str, run_id: str, *, lock: bool = False
    ) -> Mapping[Any, Any]:
        """The run's row (`lock`: FOR UPDATE on PostgreSQL); NotFound."""
        query = sa.select(runs).where(runs.c.tenant_id == tenant_id, runs.c.id == run_id)
        if lock and self._postgres:
            query = query.with_for_update()
        return await row_or_not_found(
            conn,
            query,
            lambda: NotFound(
                f"no evaluation run {run_id!r}",
                reason=reasons.EVALUATION_RUN_NOT_FOUND,
                metadata={"run_id": run_id[:128]},
            ),
        )

    async def _locked_run(
        self, conn: AsyncConnection, tenant_id: str, run_id: str, *states: RunState
    ) -> Mapping[Any, Any]:
        """The run's row, locked; FailedPrecondition unless the run is in one of `states`."""
        row = await self._run_row(conn, tenant_id, run_id, lock=True)
        state = RunState(row["state"])
        if state not in states:
            raise _run_ended(run_id, state)
        return row

    async def _run_by_request(self, tenant_id: str, request_id: str) -> EvaluationRun | None:
        async with self._read() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(runs).where(
                            runs.c.tenant_id == tenant_id, runs.c.request_id == request_id
                        )
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _run(row)

    async def _report_row(
        self, conn: AsyncConnection, tenant_id: str, report_id: str
    ) -> Mapping[Any, Any]:
        return await row_or_not_found(
            conn,
            sa.select(reports).where(reports.c.tenant_id == tenant_id, reports.c.id == report_id),
            lambda: NotFound(
                f"no evaluation report {report_id!r}",
                reason=reasons.EVALUATION_REPORT_NOT_FOUND,
                metadata={"report_id": report_id[:128]},
            ),
        )

    async def _alert_row(
        self, conn: AsyncConnection, tenant_id: str, alert_id: str
    ) -> Mapping[Any, Any]:
        return await row_or_not_found(
            conn,
            sa.select(alerts).where(alerts.c.tenant_id == tenant_id, alerts.c.id == alert_id),
            lambda: NotFound(
                f"no quality alert {alert_id!r}",
                reason=reasons.RESOURCE_NOT_FOUND,
                metadata={"alert_id": alert_id[:128]},
            ),
        )

    async def _insert_results(
        self, conn: AsyncConnection, run_id: str, new: Sequence[ExampleResult]
    ) -> None:
        if not new:
            return
        dialect = postgresql if self._postgres else sqlite
        await conn.execute(
            dialect.insert(results)
            .values([_result_values(run_id, r) for r in new])
            .on_conflict_do_nothing(index_elements=["run_id", "example_id", "repeat"])
        )

    async def _recount(self, conn: AsyncConnection, run_id: str) -> None:
        counted = (
            await conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.coalesce(sa.func.sum(sa.case((results.c.error != "", 1), else_=0)), 0),
                ).where(results.c.run_id == run_id)
            )
        ).one()
        await conn.execute(
            runs.update()
            .where(runs.c.id == run_id)
            .values(completed=int(counted[0]), failed=int(counted[1]))
        )


# ------------------------------------------------------------------------------- row mapping


def _dataset_key(tenant_id: str, name: str) -> tuple[sa.ColumnElement[bool], ...]:
    return datasets.c.tenant_id == tenant_id, datasets.c.name == name


def _datasets_query() -> sa.Select[Any]:
    count = (
        sa.select(sa.func.count())
        .where(examples.c.dataset_id == datasets.c.id)
        .scalar_subquery()
        .label("example_count")
    )
    return sa.select(datasets, count)


def _dataset(row: Mapping[Any, Any]) -> Dataset:
    return Dataset(
        name=row["name"],
        description=row["description"],
        prompt=row["prompt"],
        example_count=int(row["example_count"]),
        create_time=time_from_us(row["create_time_us"]),
    )


def _no_dataset(name: str) -> NotFound:
    return NotFound(
        f"no dataset named {name!r}",
        reason=reasons.DATASET_NOT_FOUND,
        metadata={"dataset": name[:128]},
    )


def _run_ended(run_id: str, state: RunState) -> FailedPrecondition:
    return FailedPrecondition(
        f"evaluation run {run_id} is {state.value}",
        reason=reasons.FAILED_PRECONDITION,
        metadata={"run_id": run_id, "state": state.value},
    )


def _run(row: Mapping[Any, Any]) -> EvaluationRun:
    return EvaluationRun(
        id=row["id"],
        spec=RunSpec(
            prompt=row["prompt"],
            dataset=row["dataset"],
            scorers=tuple(_scorer(s) for s in json.loads(row["scorers"])),
            prompt_version=row["prompt_version"],
            prompt_label=row["prompt_label"],
            model=row["model"],
            repeats=row["repeats"],
            baseline_report_id=row["baseline_report_id"],
        ),
        state=RunState(row["state"]),
        progress=RunProgress(row["total"], row["completed"], row["failed"]),
        resolved_prompt_version=row["resolved_prompt_version"],
        report_id=row["report_id"],
        error=row["error"],
        create_time=time_from_us(row["create_time_us"]),
        end_time=None if row["end_time_us"] is None else time_from_us(row["end_time_us"]),
    )


_SETTINGS: Final[Mapping[ScorerKind, type[ScorerSettings]]] = {
    kind: settings for settings, kind in KIND_OF.items()
}


def _scorer_json(spec: ScorerSpec) -> dict[str, Any]:
    return {"name": spec.name, "kind": spec.kind.value, "settings": asdict(spec.settings)}


def _scorer(document: Mapping[str, Any]) -> ScorerSpec:
    kind = ScorerKind(document["kind"])
    settings = dict(document["settings"])
    if kind is ScorerKind.CONTAINS:
        settings["substrings"] = tuple(settings.get("substrings", ()))
    return ScorerSpec(document["name"], _SETTINGS[kind](**settings))


def _result_values(run_id: str, result: ExampleResult) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "example_id": result.example_id,
        "repeat": result.repeat,
        "output": result.output,
        "scores": json.dumps([asdict(s) for s in result.scores]),
        "input_tokens": result.usage.input_tokens,
        "output_tokens": result.usage.output_tokens,
        "cost": str(result.cost),
        "currency": result.currency,
        "latency_seconds": result.latency_seconds,
        "model": result.model,
        "error": result.error[:MAX_ERROR_CHARS],
    }


async def _results(conn: AsyncConnection, run_id: str) -> list[ExampleResult]:
    rows = (
        (
            await conn.execute(
                sa.select(results)
                .where(results.c.run_id == run_id)
                .order_by(results.c.example_id, results.c.repeat)
            )
        )
        .mappings()
        .all()
    )
    return [
        ExampleResult(
            example_id=r["example_id"],
            repeat=r["repeat"],
            output=r["output"],
            scores=tuple(Score(**s) for s in json.loads(r["scores"])),
            usage=TokenUsage(r["input_tokens"], r["output_tokens"]),
            cost=_decimal(r["cost"]),
            currency=r["currency"],
            latency_seconds=r["latency_seconds"],
            model=r["model"],
            error=r["error"],
        )
        for r in rows
    ]


def _interval_json(interval: Interval) -> dict[str, Any]:
    return asdict(interval)


def _interval(document: Mapping[str, Any]) -> Interval:
    return Interval(**document)


def _summary_json(summary: ScorerSummary) -> dict[str, Any]:
    return {
        "scorer": summary.scorer,
        "kind": summary.kind.value,
        "count": summary.count,
        "mean": summary.mean,
        "mean_interval": _interval_json(summary.mean_interval),
        "flakiness": summary.flakiness,
    }


def _summary(document: Mapping[str, Any]) -> ScorerSummary:
    return ScorerSummary(
        scorer=document["scorer"],
        kind=ScorerKind(document["kind"]),
        count=document["count"],
        mean=document["mean"],
        mean_interval=_interval(document["mean_interval"]),
        flakiness=document["flakiness"],
    )


def _comparison_json(comparison: ReportComparison) -> dict[str, Any]:
    return asdict(comparison)


def _comparison(document: Mapping[str, Any]) -> ReportComparison:
    return ReportComparison(
        baseline_report_id=document["baseline_report_id"],
        candidate_report_id=document["candidate_report_id"],
        scorers=tuple(
            ScorerComparison(**{**s, "difference_interval": _interval(s["difference_interval"])})
            for s in document["scorers"]
        ),
        example_regressions=tuple(ExampleRegression(**r) for r in document["example_regressions"]),
        regressed=document["regressed"],
    )


def _report(row: Mapping[Any, Any], found: Sequence[ExampleResult]) -> EvaluationReport:
    return EvaluationReport(
        id=row["id"],
        run_id=row["run_id"],
        prompt=row["prompt"],
        prompt_version=row["prompt_version"],
        prompt_content_hash=row["prompt_content_hash"],
        model=row["model"],
        dataset=row["dataset"],
        summaries=tuple(_summary(s) for s in json.loads(row["summaries"])),
        results=tuple(found),
        baseline_comparison=None
        if row["comparison"] is None
        else _comparison(json.loads(row["comparison"])),
        usage=TokenUsage(row["input_tokens"], row["output_tokens"]),
        cost=_decimal(row["cost"]),
        currency=row["currency"],
        create_time=time_from_us(row["create_time_us"]),
    )


def _alert(row: Mapping[Any, Any]) -> QualityAlert:
    return QualityAlert(
        id=row["id"],
        prompt=row["prompt"],
        prompt_version=row["prompt_version"],
        scorer=row["scorer"],
        detector=row["detector"],
        baseline_mean=row["baseline_mean"],
        observed_mean=row["observed_mean"],
        sample_count=row["sample_count"],
        state=AlertState(row["state"]),
        fire_time=time_from_us(row["fire_time_us"]),
        resolve_time=None
        if row["resolve_time_us"] is None
        else time_from_us(row["resolve_time_us"]),
    )


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value), sort_keys=True, ensure_ascii=False)


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal(0)


# ----------------------------------------------------------------------------------- paging


def _page_size(page_size: int, *, bad_token: bool) -> int:
    """The page size to use; InvalidArgument naming a bad size and a bad token."""
    violations = []
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        violations.append(FieldViolation("page_size", f"must be in [0, {MAX_PAGE_SIZE}]"))
    if bad_token:
        violations.append(FieldViolation("page_token", _BAD_TOKEN))
    if violations:
        raise InvalidArgument(violations=violations)
    return page_size or DEFAULT_PAGE_SIZE


def _before(
    time_column: sa.ColumnElement[int], id_column: sa.ColumnElement[str], after: tuple[int, str]
) -> sa.ColumnElement[bool]:
    """Rows after (`time`, `id`) in newest-first order."""
    time_us, row_id = after
    return sa.or_(time_column < time_us, sa.and_(time_column == time_us, id_column < row_id))


def _encode_time_id_token(time_us: int, row_id: str) -> str:
    return f"{time_us}.{row_id}"


def _decode_time_id_token(token: str) -> tuple[int, str] | None:
    match = _TIME_ID_TOKEN.fullmatch(token)
    return None if match is None else (int(match.group(1)), match.group(2))


def _encode_name_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_name_token(token: str) -> str | None:
    """The name a page token resumes after; None when it is no token this store issued."""
    try:
        name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return name if NAME_PATTERN.fullmatch(name) else None

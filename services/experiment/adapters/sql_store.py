"""Experiments, sticky assignments, exposures and outcomes in SQLite or PostgreSQL, on
`services.common.sql`.

Stickiness: the first assignment of each unit is stored under a primary key (experiment, unit)
and returned from then on; `services.experiment.core.assignment.assign` runs only for units
without one. New units are inserted with `INSERT ... ON CONFLICT DO NOTHING` and read back in
the same transaction, so concurrent first calls for one unit all return the row that won.
Changing weights therefore moves no unit that was assigned already; each assignment also
records the weights version it was made under (for the sample-ratio check).

Locking: PostgreSQL writes that change an experiment take its row `FOR UPDATE`; assignments and
recorded events take it `FOR SHARE`, so they never interleave with a weight change or a stop
(SQLite serializes every write with `BEGIN IMMEDIATE`). Returning units take the read path: one
read transaction, no lock.

Idempotency: exposures are unique per (experiment, request id) and outcomes per (experiment,
metric, request id); a repeat is ignored. Events without a request id are always recorded.

Aggregation (`tally`) uses the unit as the unit of analysis, as randomization does: for a
numeric metric each unit with outcomes contributes the mean of its outcomes, for a boolean one
whether any of its outcomes was true (a conversion). Held-out units are counted, never
analysed.

Schema changes are the numbered `MIGRATIONS`, recorded in `experiment_migrations`.
"""

import base64
import binascii
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

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
from services.experiment.core.assignment import Assignment, assign, variant_shares
from services.experiment.core.model import (
    NAME_PATTERN,
    AssignmentUnit,
    Experiment,
    ExperimentState,
    MetricKind,
    MetricSpec,
    NewExperiment,
    Variant,
    WeightChange,
    raise_if,
    request_id_violations,
    require_running,
    stop_reason_violations,
    unit_id_violations,
    validate_new_experiment,
    validate_outcome,
    validate_weight_change,
)

metadata = sa.MetaData()

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("prompt", sa.String(64), nullable=False),
    sa.Column("control_variant", sa.String(64), nullable=False),
    sa.Column("holdout_share", sa.Double, nullable=False),
    sa.Column("salt", sa.String(128), nullable=False),
    sa.Column("unit", sa.String(16), nullable=False),
    sa.Column("weights_version", sa.Integer, nullable=False),
    sa.Column("create_time_us", sa.BigInteger, nullable=False),
    sa.Column("start_time_us", sa.BigInteger, nullable=True),
    sa.Column("stop_time_us", sa.BigInteger, nullable=True),
    sa.Column("stop_reason", sa.Text, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.UniqueConstraint("tenant_id", "name", name="uq_experiments_tenant_name"),
)

variants = sa.Table(
    "experiment_variants",
    metadata,
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("weight", sa.Double, nullable=False),
    sa.Column("prompt_version", sa.Integer, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("parameters", sa.Text, nullable=False),
)

metrics = sa.Table(
    "experiment_metrics",
    metadata,
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("higher_is_better", sa.Boolean, nullable=False),
)

weight_changes = sa.Table(
    "experiment_weight_changes",
    metadata,
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("weights", sa.Text, nullable=False),
    sa.Column("change_time_us", sa.BigInteger, nullable=False),
)

assignments = sa.Table(
    "experiment_assignments",
    metadata,
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), primary_key=True),
    sa.Column("unit_id", sa.String(256), primary_key=True),
    sa.Column("bucket", sa.Integer, nullable=False),
    sa.Column("variant", sa.String(64), nullable=False),  # empty: held out
    sa.Column("weights_version", sa.Integer, nullable=False),
    sa.Column("assign_time_us", sa.BigInteger, nullable=False),
    sa.Index("ix_experiment_assignments_variant", "experiment_id", "variant"),
)

exposures = sa.Table(
    "experiment_exposures",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("unit_id", sa.String(256), nullable=False),
    sa.Column("variant", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("exposure_time_us", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("experiment_id", "request_id", name="uq_experiment_exposures_request"),
    sa.Index("ix_experiment_exposures_unit", "experiment_id", "variant", "unit_id"),
)

outcomes = sa.Table(
    "experiment_outcomes",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), nullable=False),
    sa.Column("unit_id", sa.String(256), nullable=False),
    sa.Column("variant", sa.String(64), nullable=False),  # empty: held out
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("value", sa.Double, nullable=False),  # booleans as 0 and 1
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("record_time_us", sa.BigInteger, nullable=False),
    sa.UniqueConstraint(
        "experiment_id", "metric", "request_id", name="uq_experiment_outcomes_request"
    ),
    sa.Index("ix_experiment_outcomes_unit", "experiment_id", "metric", "variant", "unit_id"),
)


def _initial_schema(connection: SyncConnection) -> None:
    metadata.create_all(connection)


MIGRATIONS: Final[Sequence[Migration]] = (
    Migration(1, "experiments, assignments, exposures and outcomes", _initial_schema),
)
"""Every migration, in order. Append; never edit one that has shipped."""

_BAD_TOKEN: Final = "is not a token this service issued"


# ------------------------------------------------------------------------------- aggregates


@dataclass(frozen=True, slots=True)
class MeanSums:
    """A numeric metric of one variant, one value per unit (the mean of its outcomes): the
    numbers of the statistics module's `MeanSummary(n, total, total_squares)`."""

    n: int
    """Units with at least one outcome."""
    total: float
    """Sum of the per-unit means."""
    total_squares: float
    """Sum of the squared per-unit means."""
    outcomes: int
    """Outcomes recorded (every unit's, not analysed as independent)."""


@dataclass(frozen=True, slots=True)
class ProportionSums:
    """A boolean metric of one variant, one value per unit (whether any of its outcomes was
    true): the numbers of the statistics module's `ProportionSummary(n, successes)`."""

    n: int
    """Units with at least one outcome."""
    successes: int
    """Units with at least one true outcome."""
    outcomes: int
    """Outcomes recorded."""


@dataclass(frozen=True, slots=True)
class VariantCounts:
    """What one variant collected."""

    variant: str
    assigned_units: int
    """Distinct units assigned to the variant."""
    exposed_units: int
    """Distinct units with at least one exposure."""
    exposures: int
    """Recorded exposures."""
    expected_exposed_units: float
    """Exposed units the variant should have under its weights: each exposed unit (of any
    variant) adds the variant's share under the weights the unit was assigned with. Compare
    with `exposed_units` for the sample-ratio check."""
    metrics: Mapping[str, MeanSums | ProportionSums]
    """One entry per metric of the experiment, in its order (`MeanSums` for numeric metrics,
    `ProportionSums` for boolean ones)."""


@dataclass(frozen=True, slots=True)
class ExperimentTally:
    """An experiment and its per-variant counts, read in one transaction."""

    experiment: Experiment
    holdout_units: int
    """Units assigned to the holdout."""
    variants: tuple[VariantCounts, ...]
    """Control first, then the other variants in the experiment's order."""


# ------------------------------------------------------------------------------------ store


class SqlExperimentStore(SqlStore):
    """Experiments of every tenant in SQLite or PostgreSQL. Call `migrate()` once first."""

    MIGRATIONS = MIGRATIONS
    MIGRATIONS_TABLE = "experiment_migrations"

    @classmethod
    def from_url(cls, url: str, *, schema: str | None = None) -> "SqlExperimentStore":
        """A store on a new engine for `url` (see `services.common.sql.create_engine`)."""
        return cls(create_engine(url, schema=schema))

    # ------------------------------------------------------------------------- experiments

    async def create_experiment(
        self, tenant_id: str, new: NewExperiment, *, start: bool = False, request_id: str = ""
    ) -> Experiment:
        """Creates an experiment, a draft or (`start`) running; InvalidArgument for invalid
        fields, AlreadyExists (EXPERIMENT_ALREADY_EXISTS) when the tenant has one of that
        name, unless the same non-empty `request_id` created it (a retry), which returns it."""
        raise_if(request_id_violations(request_id))
        checked = validate_new_experiment(new)
        now = now_us()
        try:
            async with self._write() as conn:
                result = await conn.execute(
                    experiments.insert().values(
                        tenant_id=tenant_id,
                        name=checked.name,
                        description=checked.description,
                        state=(ExperimentState.RUNNING if start else ExperimentState.DRAFT).value,
                        prompt=checked.prompt,
                        control_variant=checked.control_variant,
                        holdout_share=checked.holdout_share,
                        salt=checked.salt,
                        unit=checked.unit.value,
                        weights_version=1,
                        create_time_us=now,
                        start_time_us=now if start else None,
                        stop_time_us=None,
                        stop_reason="",
                        request_id=request_id or None,
                    )
                )
                (experiment_id,) = result.inserted_primary_key or (0,)
                await conn.execute(
                    variants.insert(),
                    [
                        {
                            "experiment_id": experiment_id,
                            "name": v.name,
                            "position": i,
                            "weight": v.weight,
                            "prompt_version": v.prompt_version,
                            "model": v.model,
                            "parameters": json.dumps(dict(v.parameters), sort_keys=True),
                        }
                        for i, v in enumerate(checked.variants)
                    ],
                )
                if checked.metrics:
                    await conn.execute(
                        metrics.insert(),
                        [
                            {
                                "experiment_id": experiment_id,
                                "name": m.name,
                                "position": i,
                                "kind": m.kind.value,
                                "higher_is_better": m.higher_is_better,
                            }
                            for i, m in enumerate(checked.metrics)
                        ],
                    )
                await _record_weights(
                    conn, experiment_id, 1, {v.name: v.weight for v in checked.variants}, now
                )
        except IntegrityError:
            if request_id:
                async with self._read() as conn:
                    row = await self._experiment_row(conn, tenant_id, checked.name)
                    if row["request_id"] == request_id:
                        return await _experiment(conn, row)
            raise AlreadyExists(
                f"experiment {checked.name!r} already exists",
                reason=reasons.EXPERIMENT_ALREADY_EXISTS,
                metadata={"experiment": checked.name},
            ) from None
        return await self.get_experiment(tenant_id, checked.name)

    async def get_experiment(self, tenant_id: str, name: str) -> Experiment:
        """One experiment; NotFound (EXPERIMENT_NOT_FOUND) when the tenant has none of that
        name."""
        async with self._read() as conn:
            return await _experiment(conn, await self._experiment_row(conn, tenant_id, name))

    async def list_experiments(
        self,
        tenant_id: str,
        *,
        state: ExperimentState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Experiment], str]:
        """One page of the tenant's experiments (only those in `state`, when given) in name
        order, and the token of the next page (empty on the last). `page_size` is in
        [0, 1000], 0 meaning 100; InvalidArgument for a bad size or token."""
        violations = []
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation("page_size", f"must be in [0, {MAX_PAGE_SIZE}]"))
        after = _decode_page_token(page_token) if page_token else ""
        if after is None:
            violations.append(FieldViolation("page_token", _BAD_TOKEN))
        raise_if(violations)
        size = page_size or DEFAULT_PAGE_SIZE
        query = (
            sa.select(experiments)
            .where(experiments.c.tenant_id == tenant_id, experiments.c.name > (after or ""))
            .order_by(experiments.c.name)
            .limit(size + 1)
        )
        if state is not None:
            query = query.where(experiments.c.state == state.value)
        async with self._read() as conn:
            rows = (await conn.execute(query)).mappings().all()
            found = await _experiments(conn, rows[:size])
        token = _encode_page_token(found[-1].name) if len(rows) > size else ""
        return found, token

    async def start_experiment(self, tenant_id: str, name: str) -> Experiment:
        """Starts a draft; a running experiment is returned as it is. FailedPrecondition
        (FAILED_PRECONDITION) for a stopped one: stopping is for good."""
        async with self._write() as conn:
            row = await self._experiment_row(conn, tenant_id, name, lock="update")
            state = ExperimentState(row["state"])
            if state is ExperimentState.STOPPED:
                raise FailedPrecondition(
                    f"experiment {name!r} is stopped and cannot start again",
                    reason=reasons.FAILED_PRECONDITION,
                    metadata={"experiment": name, "state": state.value},
                )
            if state is ExperimentState.DRAFT:
                await conn.execute(
                    experiments.update()
                    .where(experiments.c.id == row["id"])
                    .values(state=ExperimentState.RUNNING.value, start_time_us=now_us())
                )
            return await _experiment(conn, await self._experiment_row(conn, tenant_id, name))

    async def stop_experiment(self, tenant_id: str, name: str, reason: str = "") -> Experiment:
        """Stops a draft or running experiment for good, keeping `reason`; a stopped one is
        returned as it is (its first stop time and reason stay)."""
        raise_if(stop_reason_violations(reason))
        async with self._write() as conn:
            row = await self._experiment_row(conn, tenant_id, name, lock="update")
            if ExperimentState(row["state"]) is not ExperimentState.STOPPED:
                await conn.execute(
                    experiments.update()
                    .where(experiments.c.id == row["id"])
                    .values(
                        state=ExperimentState.STOPPED.value,
                        stop_time_us=now_us(),
                        stop_reason=reason,
                    )
                )
            return await _experiment(conn, await self._experiment_row(conn, tenant_id, name))

    async def set_weights(
        self, tenant_id: str, name: str, weights: Mapping[str, float]
    ) -> Experiment:
        """Changes the weights of the named variants (the others keep theirs) of a draft or
        running experiment and appends the change to its weight history. Units assigned
        already stay where they are. Errors: see `validate_weight_change`."""
        async with self._write() as conn:
            row = await self._experiment_row(conn, tenant_id, name, lock="update")
            current = await _experiment(conn, row)
            validate_weight_change(current, weights)
            for variant, weight in weights.items():
                await conn.execute(
                    variants.update()
                    .where(variants.c.experiment_id == row["id"], variants.c.name == variant)
                    .values(weight=weight)
                )
            version = current.weights_version + 1
            await conn.execute(
                experiments.update()
                .where(experiments.c.id == row["id"])
                .values(weights_version=version)
            )
            await _record_weights(
                conn, row["id"], version, {**current.weights, **weights}, now_us()
            )
            return await _experiment(conn, await self._experiment_row(conn, tenant_id, name))

    async def weight_history(self, tenant_id: str, name: str) -> list[WeightChange]:
        """Every weight setting of an experiment, oldest (its creation) first."""
        async with self._read() as conn:
            row = await self._experiment_row(conn, tenant_id, name)
            rows = (
                await conn.execute(
                    sa.select(weight_changes)
                    .where(weight_changes.c.experiment_id == row["id"])
                    .order_by(weight_changes.c.version)
                )
            ).mappings()
            return [
                WeightChange(
                    version=r["version"],
                    weights=json.loads(r["weights"]),
                    change_time=time_from_us(r["change_time_us"]),
                )
                for r in rows
            ]

    # ------------------------------------------------------------------------- assignment

    async def assign(self, tenant_id: str, experiment: str, unit_id: str) -> Assignment:
        """The unit's assignment in a running experiment: the stored one if the unit has one,
        else a new one from `assignment.assign` under the current weights, stored first.
        Concurrent first calls for one unit all get the same answer. FailedPrecondition
        (EXPERIMENT_NOT_RUNNING) unless the experiment is running."""
        raise_if(unit_id_violations(unit_id))
        known = await self._known_assignment(tenant_id, experiment, unit_id)
        if known is not None:
            return known
        async with self._write() as conn:
            row = await self._experiment_row(conn, tenant_id, experiment, lock="share")
            found = await _experiment(conn, row)
            require_running(found.name, found.state)
            fresh = assign(found, unit_id)
            dialect = postgresql if self._postgres else sqlite
            inserted = await conn.execute(
                dialect.insert(assignments)
                .values(
                    experiment_id=row["id"],
                    unit_id=unit_id,
                    bucket=fresh.bucket,
                    variant=fresh.variant_name,
                    weights_version=found.weights_version,
                    assign_time_us=now_us(),
                )
                .on_conflict_do_nothing(index_elements=["experiment_id", "unit_id"])
                .returning(assignments.c.bucket)
            )
            if inserted.first() is not None:
                return fresh
            # A concurrent first call for the unit won the insert: its row is the answer.
            stored = (
                (
                    await conn.execute(
                        sa.select(assignments.c.bucket, assignments.c.variant).where(
                            assignments.c.experiment_id == row["id"],
                            assignments.c.unit_id == unit_id,
                        )
                    )
                )
                .mappings()
                .one()
            )
            return Assignment(
                experiment=found.name,
                prompt=found.prompt,
                unit_id=unit_id,
                bucket=stored["bucket"],
                variant=found.variant(stored["variant"]) if stored["variant"] else None,
            )

    async def record_exposure(
        self, tenant_id: str, experiment: str, unit_id: str, variant: str, request_id: str = ""
    ) -> bool:
        """Records that a unit was served `variant`, which must be its assignment; returns
        whether a new exposure was stored (False: this `request_id` was recorded already).
        Errors: EXPERIMENT_NOT_FOUND, EXPERIMENT_NOT_RUNNING, VARIANT_NOT_FOUND, and
        FailedPrecondition when the unit was never assigned or is assigned elsewhere."""
        violations = unit_id_violations(unit_id) + request_id_violations(request_id)
        if not variant:
            violations.append(FieldViolation("variant", "is required"))
        raise_if(violations)
        async with self._write() as conn:
            row = await self._experiment_row(conn, tenant_id, experiment, lock="share")
            found = await _experiment(conn, row)
            require_running(found.name, found.state)
            found.variant(variant)
            assigned = await self._assigned_variant(conn, found, row["id"], unit_id)
            if assigned != variant:
                where = f"variant {assigned!r}" if assigned else "the holdout"
                raise FailedPrecondition(
                    f"unit {unit_id!r} is assigned to {where}, not to variant {variant!r}",
                    reason=reasons.FAILED_PRECONDITION,
                    metadata={"experiment": experiment, "variant": variant, "assigned": assigned},
                )
            dialect = postgresql if self._postgres else sqlite
            result = await conn.execute(
                dialect.insert(exposures)
                .values(
                    experiment_id=row["id"],
                    unit_id=unit_id,
                    variant=variant,
                    request_id=request_id or None,
                    exposure_time_us=now_us(),
                )
                .on_conflict_do_nothing(index_elements=["experiment_id", "request_id"])
                .returning(exposures.c.id)
            )
            return result.first() is not None

    async def record_outcome(
        self,
        tenant_id: str,
        experiment: str,
        unit_id: str,
        metric: str,
        value: float | bool,
        request_id: str = "",
    ) -> bool:
        """Records one outcome of an assigned unit (a held-out unit's is kept but never
        analysed); returns whether it was stored (False: this `request_id` has an outcome of
        this metric already). Errors: EXPERIMENT_NOT_FOUND, EXPERIMENT_NOT_RUNNING,
        METRIC_NOT_FOUND, InvalidArgument for a value not of the metric's kind, and
        FailedPrecondition when the unit was never assigned."""
        violations = unit_id_violations(unit_id) + request_id_violations(request_id)
        if not metric:
            violations.append(FieldViolation("metric", "is required"))
        raise_if(violations)
        async with self._write() as conn:
            row = await self._experiment_row(conn, tenant_id, experiment, lock="share")
            found = await _experiment(conn, row)
            require_running(found.name, found.state)
            stored_value = validate_outcome(found.metric(metric), value)
            assigned = await self._assigned_variant(conn, found, row["id"], unit_id)
            dialect = postgresql if self._postgres else sqlite
            result = await conn.execute(
                dialect.insert(outcomes)
                .values(
                    experiment_id=row["id"],
                    unit_id=unit_id,
                    variant=assigned,
                    metric=metric,
                    value=stored_value,
                    request_id=request_id or None,
                    record_time_us=now_us(),
                )
                .on_conflict_do_nothing(index_elements=["experiment_id", "metric", "request_id"])
                .returning(outcomes.c.id)
            )
            return result.first() is not None

    # ------------------------------------------------------------------------- aggregation

    async def tally(self, tenant_id: str, experiment: str) -> ExperimentTally:
        """The experiment and, per variant, its units, exposures and per-unit metric sums (see
        the module docstring), all from one snapshot; any state."""
        async with self._snapshot() as conn:
            row = await self._experiment_row(conn, tenant_id, experiment)
            found = await _experiment(conn, row)
            experiment_id = row["id"]
            assigned = {
                str(name): int(units)
                for name, units in await conn.execute(
                    sa.select(assignments.c.variant, sa.func.count())
                    .where(assignments.c.experiment_id == experiment_id)
                    .group_by(assignments.c.variant)
                )
            }
            exposed = {
                name: (int(units), int(count))
                for name, units, count in await conn.execute(
                    sa.select(
                        exposures.c.variant,
                        sa.func.count(sa.distinct(exposures.c.unit_id)),
                        sa.func.count(),
                    )
                    .where(exposures.c.experiment_id == experiment_id)
                    .group_by(exposures.c.variant)
                )
            }
            exposed_by_version = (
                await conn.execute(
                    sa.select(
                        assignments.c.weights_version,
                        sa.func.count(sa.distinct(exposures.c.unit_id)),
                    )
                    .select_from(
                        exposures.join(
                            assignments,
                            sa.and_(
                                assignments.c.experiment_id == exposures.c.experiment_id,
                                assignments.c.unit_id == exposures.c.unit_id,
                            ),
                        )
                    )
                    .where(exposures.c.experiment_id == experiment_id)
                    .group_by(assignments.c.weights_version)
                )
            ).all()
            history = {
                int(version): json.loads(weights)
                for version, weights in await conn.execute(
                    sa.select(weight_changes.c.version, weight_changes.c.weights).where(
                        weight_changes.c.experiment_id == experiment_id
                    )
                )
            }
            per_unit = (
                sa.select(
                    outcomes.c.metric,
                    outcomes.c.variant,
                    sa.func.count().label("outcomes"),
                    sa.func.avg(outcomes.c.value).label("mean"),
                    sa.func.max(outcomes.c.value).label("any_true"),
                )
                .where(outcomes.c.experiment_id == experiment_id, outcomes.c.variant != "")
                .group_by(outcomes.c.metric, outcomes.c.variant, outcomes.c.unit_id)
                .subquery()
            )
            sums = {
                (r.metric, r.variant): r
                for r in await conn.execute(
                    sa.select(
                        per_unit.c.metric,
                        per_unit.c.variant,
                        sa.func.count().label("n"),
                        sa.func.sum(per_unit.c.outcomes).label("outcomes"),
                        sa.func.sum(per_unit.c.mean).label("total"),
                        sa.func.sum(per_unit.c.mean * per_unit.c.mean).label("total_squares"),
                        sa.func.sum(per_unit.c.any_true).label("successes"),
                    ).group_by(per_unit.c.metric, per_unit.c.variant)
                )
            }
        expected: dict[str, float] = defaultdict(float)
        for version, units in exposed_by_version:
            weights = history[int(version)]
            arms = [Variant(name, weight) for name, weight in weights.items()]
            for name, share in variant_shares(found.holdout_share, arms).items():
                expected[name] += int(units) * share
        ordered = sorted(found.variants, key=lambda v: v.name != found.control_variant)
        counts = []
        for variant in ordered:
            units, count = exposed.get(variant.name, (0, 0))
            counts.append(
                VariantCounts(
                    variant=variant.name,
                    assigned_units=assigned.get(variant.name, 0),
                    exposed_units=units,
                    exposures=count,
                    expected_exposed_units=expected[variant.name],
                    metrics={
                        m.name: _metric_sums(m, sums.get((m.name, variant.name)))
                        for m in found.metrics
                    },
                )
            )
        return ExperimentTally(
            experiment=found,
            holdout_units=assigned.get("", 0),
            variants=tuple(counts),
        )

    # ------------------------------------------------------------------------- helpers

    async def _experiment_row(
        self,
        conn: AsyncConnection,
        tenant_id: str,
        name: str,
        *,
        lock: Literal["", "share", "update"] = "",
    ) -> Mapping[Any, Any]:
        """The experiment's row; `lock` takes a row lock of that mode on PostgreSQL."""
        query = sa.select(experiments).where(
            experiments.c.tenant_id == tenant_id, experiments.c.name == name
        )
        if lock and self._postgres:
            query = query.with_for_update(read=lock == "share")
        return await row_or_not_found(conn, query, lambda: _no_experiment(name))

    async def _known_assignment(
        self, tenant_id: str, experiment: str, unit_id: str
    ) -> Assignment | None:
        """The unit's stored assignment, read with one query; None when it has none yet.
        NotFound and EXPERIMENT_NOT_RUNNING as `assign`."""
        query = (
            sa.select(
                experiments.c.state,
                experiments.c.prompt,
                assignments.c.bucket,
                assignments.c.variant,
                variants.c.weight,
                variants.c.prompt_version,
                variants.c.model,
                variants.c.parameters,
            )
            .select_from(
                experiments.outerjoin(
                    assignments,
                    sa.and_(
                        assignments.c.experiment_id == experiments.c.id,
                        assignments.c.unit_id == unit_id,
                    ),
                ).outerjoin(
                    variants,
                    sa.and_(
                        variants.c.experiment_id == experiments.c.id,
                        variants.c.name == assignments.c.variant,
                    ),
                )
            )
            .where(experiments.c.tenant_id == tenant_id, experiments.c.name == experiment)
        )
        async with self._read() as conn:
            row = await row_or_not_found(conn, query, lambda: _no_experiment(experiment))
        require_running(experiment, ExperimentState(row["state"]))
        if row["bucket"] is None:
            return None
        arm = None
        if row["variant"]:
            arm = Variant(
                name=row["variant"],
                weight=row["weight"],
                prompt_version=row["prompt_version"],
                model=row["model"],
                parameters=json.loads(row["parameters"]),
            )
        return Assignment(experiment, row["prompt"], unit_id, row["bucket"], arm)

    async def _assigned_variant(
        self, conn: AsyncConnection, experiment: Experiment, experiment_id: int, unit_id: str
    ) -> str:
        """The unit's stored variant (empty: held out); FailedPrecondition when it has none."""
        variant = (
            await conn.execute(
                sa.select(assignments.c.variant).where(
                    assignments.c.experiment_id == experiment_id,
                    assignments.c.unit_id == unit_id,
                )
            )
        ).scalar_one_or_none()
        if variant is None:
            raise FailedPrecondition(
                f"unit {unit_id!r} was never assigned in experiment {experiment.name!r}",
                reason=reasons.FAILED_PRECONDITION,
                metadata={"experiment": experiment.name, "unit_id": unit_id},
            )
        return str(variant)


# ------------------------------------------------------------------------------- row mapping


def _no_experiment(name: str) -> NotFound:
    return NotFound(
        f"no experiment named {name!r}",
        reason=reasons.EXPERIMENT_NOT_FOUND,
        metadata={"experiment": name},
    )


async def _record_weights(
    conn: AsyncConnection, experiment_id: int, version: int, weights: Mapping[str, float], at: int
) -> None:
    await conn.execute(
        weight_changes.insert().values(
            experiment_id=experiment_id,
            version=version,
            weights=json.dumps(dict(weights)),
            change_time_us=at,
        )
    )


async def _experiment(conn: AsyncConnection, row: Mapping[Any, Any]) -> Experiment:
    (found,) = await _experiments(conn, [row])
    return found


async def _experiments(
    conn: AsyncConnection, rows: Sequence[Mapping[Any, Any]]
) -> list[Experiment]:
    """The experiments of `rows`, their variants and metrics read with one query each."""
    if not rows:
        return []
    ids = [row["id"] for row in rows]
    arms: dict[int, list[Variant]] = defaultdict(list)
    for r in await conn.execute(
        sa.select(variants)
        .where(variants.c.experiment_id.in_(ids))
        .order_by(variants.c.experiment_id, variants.c.position)
    ):
        arms[r.experiment_id].append(
            Variant(
                name=r.name,
                weight=r.weight,
                prompt_version=r.prompt_version,
                model=r.model,
                parameters=json.loads(r.parameters),
            )
        )
    specs: dict[int, list[MetricSpec]] = defaultdict(list)
    for r in await conn.execute(
        sa.select(metrics)
        .where(metrics.c.experiment_id.in_(ids))
        .order_by(metrics.c.experiment_id, metrics.c.position)
    ):
        specs[r.experiment_id].append(MetricSpec(r.name, MetricKind(r.kind), r.higher_is_better))
    return [
        Experiment(
            tenant_id=row["tenant_id"],
            name=row["name"],
            description=row["description"],
            state=ExperimentState(row["state"]),
            prompt=row["prompt"],
            variants=tuple(arms[row["id"]]),
            control_variant=row["control_variant"],
            holdout_share=row["holdout_share"],
            salt=row["salt"],
            unit=AssignmentUnit(row["unit"]),
            metrics=tuple(specs[row["id"]]),
            weights_version=row["weights_version"],
            create_time=time_from_us(row["create_time_us"]),
            start_time=_optional_time(row["start_time_us"]),
            stop_time=_optional_time(row["stop_time_us"]),
            stop_reason=row["stop_reason"],
        )
        for row in rows
    ]


def _metric_sums(metric: MetricSpec, row: sa.Row[Any] | None) -> MeanSums | ProportionSums:
    n = int(row.n) if row is not None else 0
    count = int(row.outcomes) if row is not None else 0
    if metric.kind is MetricKind.BOOLEAN:
        return ProportionSums(
            n=n, successes=int(row.successes) if row is not None else 0, outcomes=count
        )
    return MeanSums(
        n=n,
        total=float(row.total) if row is not None else 0.0,
        total_squares=float(row.total_squares) if row is not None else 0.0,
        outcomes=count,
    )


def _optional_time(us: int | None) -> datetime | None:
    return None if us is None else time_from_us(us)


def _encode_page_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_page_token(token: str) -> str | None:
    """The name a page token resumes after; None when it is no token this store issued."""
    try:
        name = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return name if NAME_PATTERN.fullmatch(name) else None

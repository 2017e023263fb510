"""The evaluation store on real SQLite and real PostgreSQL: round trips, paging, tenant
isolation, idempotent example import and run creation, the run lifecycle with progress derived
from stored results, reports with their comparison, the gate query and quality alerts."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from services.common import reasons
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.evaluation.core.datasets import example_id
from services.evaluation.core.model import (
    AlertState,
    Contains,
    EvaluationGate,
    EvaluationReport,
    EvaluationRun,
    ExactMatch,
    ExampleResult,
    GateFailure,
    GateThreshold,
    LlmJudge,
    NewDataset,
    NewExample,
    NewQualityAlert,
    Regex,
    RunProgress,
    RunSpec,
    RunState,
    Score,
    ScorerSpec,
    TokenUsage,
    new_id,
)
from services.evaluation.core.reports import build_report
from tests.support.databases import BACKENDS, Database, database

TENANT = "acme"
OTHER = "globex"
SCORERS = (
    ScorerSpec("exact", ExactMatch(case_sensitive=True)),
    ScorerSpec("has", Contains(("Paris", "France"), case_sensitive=True)),
    ScorerSpec("re", Regex(r"\d+")),
    ScorerSpec("judge", LlmJudge("rubric", "staging", "judge-model")),
)
SPEC = RunSpec("chat", "golden", SCORERS, prompt_version=2, model="smollm2", repeats=2)
EXAMPLES = [
    NewExample({"question": "Capital of France?"}, "Paris", {"topic": "geo"}),
    NewExample({"question": "2 + 2?", "words": 3}, "4"),
    NewExample({"question": "Largest planet?", "topics": ["space"]}),
]


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with database(request.param, tmp_path) as found:
        yield found


@pytest.fixture
async def store(db: Database) -> AsyncIterator[SqlEvaluationStore]:
    store = SqlEvaluationStore.from_url(db.url, schema=db.schema)
    assert await store.migrate() == [1, 2]
    assert await store.migrate() == []
    try:
        yield store
    finally:
        await store.close()


async def golden(store: SqlEvaluationStore, tenant: str = TENANT) -> None:
    await store.create_dataset(tenant, NewDataset("golden", "chat", "hand-written"))


def outputs(values: dict[str, float], repeats: int = 2) -> list[ExampleResult]:
    """One result per example and repeat, every scorer giving the example's value."""
    return [
        ExampleResult(
            example_id=example,
            repeat=repeat,
            output=f"answer {example}",
            scores=tuple(Score(s.name, value, explanation="why") for s in SCORERS),
            usage=TokenUsage(12, 3),
            cost=Decimal("0.000015"),
            currency="USD",
            latency_seconds=0.25,
            model="smollm2",
        )
        for example, value in values.items()
        for repeat in range(repeats)
    ]


async def finished_run(
    store: SqlEvaluationStore,
    values: dict[str, float],
    *,
    version: int = 2,
    dataset: str = "golden",
    tenant: str = TENANT,
    create_time: datetime | None = None,
    baseline: EvaluationReport | None = None,
) -> EvaluationReport:
    """A run taken through its lifecycle, and its stored report."""
    spec = RunSpec("chat", dataset, SCORERS, prompt_version=version, repeats=2)
    run, _ = await store.create_run(tenant, spec)
    results = outputs(values)
    run = await store.start_run(tenant, run.id, resolved_prompt_version=version, total=len(results))
    await store.add_results(tenant, run.id, results[:1])
    report = build_report(
        run,
        results,
        report_id=new_id(),
        prompt_version=version,
        prompt_content_hash="sha",
        create_time=create_time or datetime.now(UTC),
        baseline=baseline,
    )
    finished = await store.finish_run(tenant, report)
    assert finished.report_id == report.id
    return await store.get_report(tenant, report.id)


# ---------------------------------------------------------------------------------- datasets


async def test_dataset_round_trip_and_errors(store: SqlEvaluationStore) -> None:
    created = await store.create_dataset(TENANT, NewDataset("golden", "chat", "hand-written"))
    assert (created.name, created.prompt, created.description, created.example_count) == (
        "golden",
        "chat",
        "hand-written",
        0,
    )
    assert await store.get_dataset(TENANT, "golden") == created
    with pytest.raises(AlreadyExists) as exists:
        await store.create_dataset(TENANT, NewDataset("golden", "chat"))
    assert exists.value.reason == reasons.DATASET_ALREADY_EXISTS
    with pytest.raises(NotFound) as missing:
        await store.get_dataset(TENANT, "nope")
    assert missing.value.reason == reasons.DATASET_NOT_FOUND
    with pytest.raises(InvalidArgument) as invalid:
        await store.create_dataset(TENANT, NewDataset("Bad Name", "", "x" * 1025))
    assert {v.field for v in invalid.value.violations} == {
        "dataset.name",
        "dataset.prompt",
        "dataset.description",
    }


async def test_dataset_retry_with_the_same_request_id_returns_it(
    store: SqlEvaluationStore,
) -> None:
    first = await store.create_dataset(TENANT, NewDataset("golden", "chat"), request_id="r1")
    again = await store.create_dataset(TENANT, NewDataset("golden", "chat"), request_id="r1")
    assert again == first
    with pytest.raises(AlreadyExists):
        await store.create_dataset(TENANT, NewDataset("golden", "chat"), request_id="r2")


async def test_datasets_are_tenant_scoped(store: SqlEvaluationStore) -> None:
    await golden(store)
    with pytest.raises(NotFound):
        await store.get_dataset(OTHER, "golden")
    await store.add_examples(TENANT, "golden", EXAMPLES)
    with pytest.raises(NotFound):
        await store.add_examples(OTHER, "golden", EXAMPLES)
    with pytest.raises(NotFound):
        await store.list_examples(OTHER, "golden")
    theirs = await store.create_dataset(OTHER, NewDataset("golden", "other-prompt"))
    assert (theirs.prompt, theirs.example_count) == ("other-prompt", 0)
    assert [d.prompt for d in (await store.list_datasets(OTHER))[0]] == ["other-prompt"]
    assert (await store.get_dataset(TENANT, "golden")).example_count == 3


async def test_datasets_page_in_name_order(store: SqlEvaluationStore) -> None:
    names = [f"set-{i:02d}" for i in range(7)]
    for i, name in enumerate(reversed(names)):
        await store.create_dataset(TENANT, NewDataset(name, "chat" if i % 2 else "summarize"))
    seen: list[str] = []
    token = ""
    while True:
        page, token = await store.list_datasets(TENANT, page_size=3, page_token=token)
        assert len(page) <= 3
        seen += [d.name for d in page]
        if not token:
            break
    assert seen == names
    only_chat, last = await store.list_datasets(TENANT, prompt="chat")
    assert last == ""
    assert {d.prompt for d in only_chat} == {"chat"}
    assert len(only_chat) == 3
    with pytest.raises(InvalidArgument) as bad:
        await store.list_datasets(TENANT, page_size=1001, page_token="!!")
    assert [v.field for v in bad.value.violations] == ["page_size", "page_token"]


# ---------------------------------------------------------------------------------- examples


async def test_example_import_is_idempotent_and_keeps_order(store: SqlEvaluationStore) -> None:
    await golden(store)
    added = await store.add_examples(TENANT, "golden", EXAMPLES)
    assert [e.id for e in added] == [example_id(e) for e in EXAMPLES]
    assert [(e.inputs, e.reference, e.tags) for e in added] == [
        (e.inputs, e.reference, e.tags) for e in EXAMPLES
    ]
    # Importing the file again, with a new example and a duplicate in the batch.
    extra = NewExample({"question": "Boiling point of water?"}, "100 C")
    again = await store.add_examples(TENANT, "golden", [EXAMPLES[1], extra, extra, EXAMPLES[0]])
    assert [e.id for e in again] == [added[1].id, example_id(extra), example_id(extra), added[0].id]
    assert (await store.get_dataset(TENANT, "golden")).example_count == 4
    listed, token = await store.list_examples(TENANT, "golden")
    assert token == ""
    assert listed == [*added, again[1]]


async def test_examples_page_in_insertion_order(store: SqlEvaluationStore) -> None:
    await golden(store)
    batch = [NewExample({"question": f"q{i}"}, tags={"i": str(i)}) for i in range(10)]
    await store.add_examples(TENANT, "golden", batch[:4])
    await store.add_examples(TENANT, "golden", batch[4:])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = await store.list_examples(TENANT, "golden", page_size=4, page_token=token)
        pages += 1
        seen += [e.tags["i"] for e in page]
        if not token:
            break
    assert seen == [str(i) for i in range(10)]
    assert pages == 3
    with pytest.raises(InvalidArgument):
        await store.list_examples(TENANT, "golden", page_token="abc")
    with pytest.raises(InvalidArgument) as empty:
        await store.add_examples(TENANT, "golden", [])
    assert [v.field for v in empty.value.violations] == ["examples"]


# -------------------------------------------------------------------------------------- runs


async def test_run_lifecycle_and_report_round_trip(store: SqlEvaluationStore) -> None:
    await golden(store)
    run, created = await store.create_run(TENANT, SPEC, request_id="start-1")
    assert created
    assert (run.state, run.progress, run.report_id, run.end_time) == (
        RunState.QUEUED,
        RunProgress(),
        "",
        None,
    )
    assert run.spec == SPEC
    assert await store.get_run(TENANT, run.id) == run
    retried, created_again = await store.create_run(TENANT, SPEC, request_id="start-1")
    assert (retried, created_again) == (run, False)

    results = outputs({"a": 1.0, "b": 0.5, "c": 0.0})
    running = await store.start_run(TENANT, run.id, resolved_prompt_version=2, total=6)
    assert (running.state, running.resolved_prompt_version, running.progress.total) == (
        RunState.RUNNING,
        2,
        6,
    )
    failed_output = ExampleResult("d", 0, "", (), error="backend down")
    progressed = await store.add_results(TENANT, run.id, [*results[:3], failed_output])
    assert progressed.progress == RunProgress(total=6, completed=4, failed=1)
    # A retried batch counts once.
    progressed = await store.add_results(TENANT, run.id, results[:3])
    assert progressed.progress == RunProgress(total=6, completed=4, failed=1)
    stored = await store.list_results(TENANT, run.id)
    assert stored == [*results[:3], failed_output]  # a0, a1, b0, d0: by example and repeat

    report = build_report(
        running,
        [*results, failed_output],
        report_id=new_id(),
        prompt_version=2,
        prompt_content_hash="sha",
        create_time=datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
    )
    finished = await store.finish_run(TENANT, report)
    assert (finished.state, finished.report_id, finished.progress.completed) == (
        RunState.SUCCEEDED,
        report.id,
        7,
    )
    assert finished.end_time is not None
    assert await store.get_report(TENANT, report.id) == report
    assert await store.get_run_report(TENANT, run.id) == report

    with pytest.raises(FailedPrecondition):
        await store.add_results(TENANT, run.id, results)
    with pytest.raises(FailedPrecondition):
        await store.cancel_run(TENANT, run.id)
    with pytest.raises(FailedPrecondition):
        await store.fail_run(TENANT, run.id, "late")


async def test_cancellation_stops_the_run_taking_results(store: SqlEvaluationStore) -> None:
    await golden(store)
    run, _ = await store.create_run(TENANT, SPEC)
    await store.start_run(TENANT, run.id, resolved_prompt_version=2, total=2)
    cancelled = await store.cancel_run(TENANT, run.id)
    assert cancelled.state is RunState.CANCELLED
    assert cancelled.end_time is not None
    assert await store.cancel_run(TENANT, run.id) == cancelled
    with pytest.raises(FailedPrecondition) as refused:
        await store.add_results(TENANT, run.id, outputs({"a": 1.0}))
    assert refused.value.metadata["state"] == "cancelled"
    with pytest.raises(FailedPrecondition):
        await store.start_run(TENANT, run.id, resolved_prompt_version=2, total=2)
    with pytest.raises(NotFound) as no_report:
        await store.get_run_report(TENANT, run.id)
    assert no_report.value.reason == reasons.EVALUATION_REPORT_NOT_FOUND


async def test_a_failed_run_keeps_its_error(store: SqlEvaluationStore) -> None:
    await golden(store)
    run, _ = await store.create_run(TENANT, SPEC)
    failed = await store.fail_run(TENANT, run.id, "prompt version 2 not found" + "x" * 3000)
    assert failed.state is RunState.FAILED
    assert failed.error.startswith("prompt version 2 not found")
    assert len(failed.error) == 2000


async def test_run_creation_checks_the_dataset_and_baseline(store: SqlEvaluationStore) -> None:
    with pytest.raises(NotFound) as no_dataset:
        await store.create_run(TENANT, SPEC)
    assert no_dataset.value.reason == reasons.DATASET_NOT_FOUND
    await golden(store)
    with pytest.raises(NotFound) as no_baseline:
        await store.create_run(
            TENANT,
            RunSpec("chat", "golden", SCORERS, baseline_report_id="0" * 32),
        )
    assert no_baseline.value.reason == reasons.EVALUATION_REPORT_NOT_FOUND
    with pytest.raises(InvalidArgument):
        await store.create_run(TENANT, RunSpec("chat", "golden", ()))
    defaulted, _ = await store.create_run(TENANT, RunSpec("chat", "golden", SCORERS[:1]))
    assert (defaulted.spec.prompt_label, defaulted.spec.repeats) == ("production", 1)


async def test_runs_and_reports_are_tenant_scoped(store: SqlEvaluationStore) -> None:
    await golden(store)
    report = await finished_run(store, {"a": 1.0, "b": 1.0})
    with pytest.raises(NotFound) as no_run:
        await store.get_run(OTHER, report.run_id)
    assert no_run.value.reason == reasons.EVALUATION_RUN_NOT_FOUND
    with pytest.raises(NotFound) as no_report:
        await store.get_report(OTHER, report.id)
    assert no_report.value.reason == reasons.EVALUATION_REPORT_NOT_FOUND
    for attempt in (
        store.cancel_run(OTHER, report.run_id),
        store.list_results(OTHER, report.run_id),
        store.add_results(OTHER, report.run_id, []),
    ):
        with pytest.raises(NotFound):
            await attempt
    assert await store.list_runs(OTHER) == ([], "")
    # The other tenant's run may use the same request id.
    await golden(store, OTHER)
    mine, _ = await store.create_run(TENANT, SPEC, request_id="same")
    theirs, created = await store.create_run(OTHER, SPEC, request_id="same")
    assert created
    assert theirs.id != mine.id


async def test_runs_page_newest_first(store: SqlEvaluationStore) -> None:
    await golden(store)
    await store.create_dataset(TENANT, NewDataset("edge", "summarize"))
    created: list[EvaluationRun] = []
    for i in range(7):
        prompt, dataset = ("chat", "golden") if i % 2 == 0 else ("summarize", "edge")
        run, _ = await store.create_run(TENANT, RunSpec(prompt, dataset, SCORERS[:1]))
        created.append(run)
    seen: list[str] = []
    token = ""
    while True:
        page, token = await store.list_runs(TENANT, page_size=2, page_token=token)
        seen += [r.id for r in page]
        if not token:
            break
    assert seen == [r.id for r in reversed(created)]
    chat, _ = await store.list_runs(TENANT, prompt="chat")
    assert [r.id for r in chat] == [r.id for r in reversed(created[::2])]
    edge, _ = await store.list_runs(TENANT, dataset="edge", page_size=10)
    assert len(edge) == 3
    with pytest.raises(InvalidArgument):
        await store.list_runs(TENANT, page_token="12.not-an-id")


# ----------------------------------------------------------------------------------- reports


async def test_a_report_keeps_its_baseline_comparison(store: SqlEvaluationStore) -> None:
    await golden(store)
    values = {f"e{i}": 1.0 for i in range(6)}
    baseline = await finished_run(store, values)
    candidate = await finished_run(store, {**values, "e3": 0.0}, baseline=baseline)
    comparison = candidate.baseline_comparison
    assert comparison is not None
    assert comparison.baseline_report_id == baseline.id
    assert {(r.example_id, r.scorer) for r in comparison.example_regressions} == {
        ("e3", s.name) for s in SCORERS
    }
    assert [s.scorer for s in comparison.scorers] == [s.name for s in SCORERS]
    # The stored summaries round-trip exactly (interval included).
    assert (
        candidate.summaries
        == build_report(
            await store.get_run(TENANT, candidate.run_id),
            candidate.results,
            report_id=candidate.id,
            prompt_version=2,
            prompt_content_hash="sha",
            create_time=candidate.create_time,
        ).summaries
    )


GATE = EvaluationGate("golden", (GateThreshold("exact", 0.75), GateThreshold("judge", 0.5)))


async def test_the_gate_query(store: SqlEvaluationStore) -> None:
    await golden(store)
    await store.create_dataset(TENANT, NewDataset("other", "chat"))
    nothing = await store.gate(TENANT, "chat", 2, GATE)
    assert (nothing.passed, nothing.report_id) == (False, "")
    assert nothing.failures == (GateFailure("exact", 0.75, None), GateFailure("judge", 0.5, None))

    start = datetime.now(UTC)
    # Passing reports elsewhere do not count: another version, dataset or tenant.
    await finished_run(store, {"a": 1.0, "b": 1.0}, version=1, create_time=start)
    await finished_run(store, {"a": 1.0, "b": 1.0}, dataset="other", create_time=start)
    await golden(store, OTHER)
    await finished_run(store, {"a": 1.0, "b": 1.0}, tenant=OTHER, create_time=start)
    failing = await finished_run(
        store, {"a": 1.0, "b": 0.0}, create_time=start + timedelta(seconds=1)
    )
    outcome = await store.gate(TENANT, "chat", 2, GATE)
    assert (outcome.passed, outcome.report_id) == (False, failing.id)
    assert outcome.failures == (GateFailure("exact", 0.75, 0.5),)

    passing = await finished_run(
        store, {"a": 1.0, "b": 0.8}, create_time=start + timedelta(seconds=2)
    )
    # A newer failing report does not hide the passing one.
    await finished_run(store, {"a": 0.0, "b": 0.0}, create_time=start + timedelta(seconds=3))
    outcome = await store.gate(TENANT, "chat", 2, GATE)
    assert (outcome.passed, outcome.report_id, outcome.failures) == (True, passing.id, ())
    # A stricter gate fails on the newest report.
    strict = EvaluationGate("golden", (GateThreshold("exact", 0.95),))
    outcome = await store.gate(TENANT, "chat", 2, strict)
    assert not outcome.passed
    assert outcome.failures == (GateFailure("exact", 0.95, 0.0),)
    assert (await store.gate(OTHER, "chat", 2, GATE)).passed


# ------------------------------------------------------------------------------------ alerts


def drift(prompt: str = "chat", version: int = 2, scorer: str = "judge") -> NewQualityAlert:
    return NewQualityAlert(prompt, version, scorer, "cusum", 0.8, 0.55, 120)


async def test_alert_lifecycle(store: SqlEvaluationStore) -> None:
    alert = await store.create_alert(TENANT, drift())
    assert (alert.state, alert.resolve_time, alert.sample_count) == (AlertState.FIRING, None, 120)
    assert await store.firing_alert(TENANT, "chat", 2, "judge", "cusum") == alert
    assert await store.firing_alert(TENANT, "chat", 3, "judge", "cusum") is None
    updated = await store.update_alert(TENANT, alert.id, observed_mean=0.5, sample_count=200)
    assert (updated.observed_mean, updated.sample_count, updated.fire_time) == (
        0.5,
        200,
        alert.fire_time,
    )
    resolved = await store.resolve_alert(TENANT, alert.id)
    assert resolved.state is AlertState.RESOLVED
    assert resolved.resolve_time is not None
    assert await store.resolve_alert(TENANT, alert.id) == resolved
    # A resolved alert no longer changes.
    unchanged = await store.update_alert(TENANT, alert.id, observed_mean=0.1, sample_count=999)
    assert unchanged == resolved
    assert await store.firing_alert(TENANT, "chat", 2, "judge", "cusum") is None
    with pytest.raises(NotFound):
        await store.resolve_alert(OTHER, alert.id)
    with pytest.raises(NotFound):
        await store.update_alert(OTHER, alert.id, observed_mean=0.0, sample_count=1)


async def test_alerts_list_newest_first_with_filters(store: SqlEvaluationStore) -> None:
    created = []
    for i in range(6):
        created.append(await store.create_alert(TENANT, drift("chat" if i < 4 else "summarize")))
    await store.resolve_alert(TENANT, created[1].id)
    await store.create_alert(OTHER, drift())
    seen: list[str] = []
    token = ""
    while True:
        page, token = await store.list_alerts(TENANT, page_size=4, page_token=token)
        seen += [a.id for a in page]
        if not token:
            break
    assert seen == [a.id for a in reversed(created)]
    firing_chat, _ = await store.list_alerts(TENANT, prompt="chat", state=AlertState.FIRING)
    assert [a.id for a in firing_chat] == [created[3].id, created[2].id, created[0].id]
    resolved, _ = await store.list_alerts(TENANT, state=AlertState.RESOLVED)
    assert [a.id for a in resolved] == [created[1].id]
    theirs, _ = await store.list_alerts(OTHER)
    assert len(theirs) == 1
    assert theirs[0].id not in seen


# ---------------------------------------------------------------------------------- leases


async def test_runs_of_a_replica_that_stopped_renewing_them_are_failed_by_the_others(
    store: SqlEvaluationStore,
) -> None:
    await golden(store)
    await store.add_examples(TENANT, "golden", EXAMPLES)
    alive, _ = await store.create_run(TENANT, SPEC, owner="alive")
    orphan, _ = await store.create_run(TENANT, SPEC, owner="dead")
    await store.start_run(TENANT, orphan.id, resolved_prompt_version=2, total=6)
    finished = await finished_run(store, {"e": 1.0})
    await asyncio.sleep(0.3)
    assert await store.heartbeat("alive") == 1  # its queued run: renewed
    assert await store.fail_orphaned_runs(silent_us=200_000) == [(TENANT, orphan.id)]
    failed = await store.get_run(TENANT, orphan.id)
    assert failed.state is RunState.FAILED
    assert "replica executing the run stopped" in failed.error
    assert (await store.get_run(TENANT, alive.id)).state is RunState.QUEUED
    assert (await store.get_run(TENANT, finished.run_id)).state is RunState.SUCCEEDED
    assert await store.fail_orphaned_runs(silent_us=200_000) == []


async def test_a_database_from_before_run_leases_gains_them(db: Database) -> None:
    old = SqlEvaluationStore.from_url(db.url, schema=db.schema)
    old.MIGRATIONS = old.MIGRATIONS[:1]
    try:
        assert await old.migrate() == [1]
        async with old._engine.begin() as conn:  # the runs table as migration 1 shipped it
            for column in ("owner", "heartbeat_us"):
                await conn.execute(sa.text(f"ALTER TABLE evaluation_runs DROP COLUMN {column}"))
    finally:
        await old.close()
    store = SqlEvaluationStore.from_url(db.url, schema=db.schema)
    try:
        assert await store.migrate() == [2]
        await golden(store)
        await store.add_examples(TENANT, "golden", EXAMPLES)
        run, _ = await store.create_run(TENANT, SPEC, owner="me")
        assert await store.heartbeat("me") == 1
        assert run.state is RunState.QUEUED
    finally:
        await store.close()


async def test_a_running_replica_fails_a_dead_replicas_run_within_its_lease(
    store: SqlEvaluationStore,
) -> None:
    from services.evaluation.runs import EvaluationRunner

    await golden(store)
    await store.add_examples(TENANT, "golden", EXAMPLES)
    orphan, _ = await store.create_run(TENANT, SPEC, owner="a-replica-that-was-killed")
    await store.start_run(TENANT, orphan.id, resolved_prompt_version=2, total=6)

    def unreachable() -> Any:
        raise AssertionError("no generation is needed")

    runner = EvaluationRunner(
        store, gateway=unreachable, inference=unreachable, prompts=None, lease_seconds=0.3
    )
    runner.start_keeping()
    try:
        for _ in range(100):
            if (await store.get_run(TENANT, orphan.id)).state is RunState.FAILED:
                break
            await asyncio.sleep(0.02)
        assert (await store.get_run(TENANT, orphan.id)).state is RunState.FAILED
    finally:
        await runner.close()

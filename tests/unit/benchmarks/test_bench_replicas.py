"""The `replicas` benchmark's pure parts on a synthetic run: which streams a kill cut, the
watchers' exactness, cross-replica delays that leave outages out, the targets (each able to
fail), the paced model repository and the deployment's settings. The real run is
tests/system/test_replicas_fault_run.py."""

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from benchmarks import __main__ as registry
from benchmarks.deployment import (
    EVALUATION_DEPLOYMENT,
    EXPERIMENT_DEPLOYMENT,
    GATEWAY_DEPLOYMENT,
    PROMPT_DEPLOYMENT,
    LocalValues,
    Shared,
    Tritons,
    paced_repository,
    process_env,
)
from benchmarks.replicas_report import (
    QUICK,
    Fault,
    Phase,
    ReplicasConfig,
    ReplicasRun,
    StreamRecord,
    cross_replica_delays,
    in_flight_at,
    replicas_result,
    report,
    targets,
    watcher_checks,
)
from services.platform.settings import PlatformSettings


def _record(started: float, ended: float, *, final: bool = True, **fields: object) -> StreamRecord:
    record = StreamRecord(request_id=f"r{started}-{ended}", started=started, ended=ended)
    record.final = final
    record.code = "OK" if final else str(fields.pop("code", "UNAVAILABLE"))
    record.usage_tokens = 70 if final else 0
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def _phase() -> Phase:
    phase = Phase()
    phase.faults = [Fault("gateway-0", killed_at=10.0, restarted_at=15.0)]
    phase.streams = [
        _record(1.0, 2.0),
        _record(9.5, 10.5, final=False, received_tokens=12),  # cut by the kill
        _record(9.8, 10.3),  # in flight on the other gateway: finished
        _record(11.0, 12.0),
    ]
    phase.moves = [(5.0, "prompt-0", 11), (12.0, "prompt-1", 12), (20.0, "prompt-0", 13)]
    phase.watch_from = {"prompt-0": 10, "prompt-1": 10}
    phase.watched = {
        "prompt-0": [(11, 5.01), (12, 12.05), (13, 20.01)],
        "prompt-1": [(11, 5.02), (12, 12.01), (13, 20.03)],
    }
    phase.down = {"prompt-0": [(11.5, 16.0)]}
    return phase


def _run(phase: Phase | None = None, **changes: object) -> ReplicasRun:
    phase = phase or _phase()
    finals = [r for r in phase.streams if r.final]
    fields: dict[str, object] = {
        "config": QUICK,
        "started_at": datetime(2026, 12, 6, tzinfo=UTC),
        "duration_s": 100.0,
        "environment": {"load_average": [1.0, 1.0, 1.0]},
        "run_dir": Path("/tmp/run"),
        "floor_ms": [0.5, 0.6, 0.7],
        "propagation_ms": {"prompt-0 -> prompt-1": [10.0, 12.0], "prompt-1 -> prompt-0": [11.0]},
        "label_write_ms": [4.0, 5.0, 6.0],
        "revocation_ms": [10.0, 11.0],
        "quota_ms": [15.0, 30.0],
        "phase": phase,
        "logged": {r.request_id: 1 for r in finals},
        "logged_tokens": {r.request_id: r.usage_tokens for r in finals},
        "events": [11, 12, 13],
        "redis_usage_tokens": 70 * len(finals) + 9,
        "redis_reclaimed": (1, 9),
        "in_flight_left": 0,
        "scale": {"one": [30.0, 32.0], "two": [31.0, 33.0]},
        "scale_busy": {"one": [0.98], "two": [0.99]},
    }
    fields.update(changes)
    return ReplicasRun(**fields)  # type: ignore[arg-type]


def _verdicts(run: ReplicasRun) -> dict[str, bool | None]:
    return {check.name: check.passed for check in targets(run)}


def test_it_is_registered_and_its_quick_run_fits_three_faults() -> None:
    assert "replicas" in registry.BENCHMARKS
    with pytest.raises(ValueError, match="three kills"):
        ReplicasConfig(duration_s=5, pause_s=5)


def test_a_kill_cuts_only_the_streams_in_flight_when_it_lands() -> None:
    phase = _phase()
    cut = [r for r in phase.streams if in_flight_at(r, phase.faults) is not None]
    assert [r.started for r in cut] == [9.5, 9.8]


def test_watchers_are_checked_against_the_registry_events_after_their_snapshot() -> None:
    phase = _phase()
    assert all(
        (w.missing, w.repeated, w.out_of_order) == (0, 0, 0)
        for w in watcher_checks(phase, [11, 12, 13])
    )
    phase.watched["prompt-1"] = [(11, 1.0), (13, 2.0), (13, 3.0), (12, 4.0)]
    broken = {w.replica: w for w in watcher_checks(phase, [11, 12, 13, 14])}["prompt-1"]
    assert (broken.missing, broken.repeated, broken.out_of_order) == (1, 1, 2)


def test_cross_replica_delays_skip_the_replica_that_was_down() -> None:
    # The move at 12.0 went through prompt-1 while prompt-0 was down (11.5 to 16): its late
    # arrival at prompt-0's watcher is an outage, not a propagation delay.
    assert cross_replica_delays(_phase()) == pytest.approx([20.0, 30.0])


def test_a_clean_run_passes_every_target() -> None:
    verdicts = _verdicts(_run())
    assert all(passed is not False for passed in verdicts.values()), verdicts
    assert verdicts["streams/s, two gateways / one"] is None  # reported, not judged


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"logged": {}}, "requests with a final missing from the request log"),
        ("duplicate", "requests with a final logged more than once"),
        ("internal", "requests cut by a kill without a defined status"),
        ("hang", "calls that outlived their deadline"),
        ("failures", "requests not in flight at a kill that succeeded"),
        ({"redis_usage_tokens": 1}, "tokens settled in Redis minus tokens accounted (log + swept)"),
        ("usage", "finals whose usage differs from their request-log row"),
        (
            {"events": [11, 12, 13, 14]},
            "label events missed, repeated or out of order, all watchers",
        ),
        ({"revocation_ms": [1500.0]}, "API-key revocation reaches the other gateway, max"),
        ({"quota_ms": [math.nan]}, "quota change reaches the other gateway, max"),
        (
            {"propagation_ms": {"a -> b": [60.0, 70.0]}},
            "label move -> PromptClient on the other replica, p50",
        ),
    ],
)
def test_each_target_can_fail(change: object, failing: str) -> None:
    phase = _phase()
    changes: dict[str, object] = change if isinstance(change, dict) else {}
    run = _run(phase, **changes)
    finals = [r for r in phase.streams if r.final]
    if change == "duplicate":
        run.logged[finals[0].request_id] = 2
    elif change == "internal":
        phase.streams[1].code = "INTERNAL"
    elif change == "hang":
        phase.streams[0].ended = phase.streams[0].started + 40
    elif change == "failures":
        phase.streams.append(_record(20.0, 21.0, final=False))
    elif change == "usage":
        run.logged_tokens[finals[0].request_id] += 1
    verdicts = _verdicts(run)
    if failing == "quota change reaches the other gateway, max":
        assert verdicts[failing] is not True  # a change never seen is not a pass
    else:
        assert verdicts[failing] is False, verdicts


def test_the_report_and_the_json_say_what_happened(tmp_path: Path) -> None:
    run = _run()
    run.checks = targets(run)
    text = report(run)
    assert "SIGKILL gateway-0 at 10.0, serving again at 15.0: 2 streams in flight" in text
    assert "1 streams cut by the gateway SIGKILL (clients received 12 output tokens" in text
    assert "PASS  requests with a final missing from the request log" in text
    document = replicas_result(run).to_json_dict()
    json.dumps(document)  # plain JSON
    assert document["config"]["finals"] == 3
    assert document["config"]["redis"]["swept"] == [1, 9]


def test_the_report_shows_the_load_and_warns_when_the_run_started_loaded() -> None:
    environment = {"cpu_count": 2, "load_average_at_start": [0.7], "load_average_at_end": [6.0]}
    quiet = _run(environment=environment)
    busy = _run(environment={**environment, "load_average_at_start": [1.8]})
    for run in (quiet, busy):
        run.checks = targets(run)

    assert "load average 0.7 -> 6.0" in report(quiet).splitlines()[0]
    assert "starved" not in report(quiet)
    assert report(busy).splitlines()[-1] == (
        "baseline may be starved: load average 1.80 at start on 2 cores; ratios not reportable"
    )


def test_the_paced_repository_sets_the_token_interval(tmp_path: Path) -> None:
    repository = paced_repository(tmp_path, 2000)
    config = (repository / "zero_llm" / "config.pbtxt").read_text()
    assert 'value: { string_value: "2000" }' in config
    assert (repository / "zero_llm" / "1" / "model.py").exists()


def test_the_deployment_settings_are_valid_platform_settings(tmp_path: Path) -> None:
    local = LocalValues(
        Shared.new(), Tritons(tmp_path, tmp_path), tmp_path / "catalog.yaml", tmp_path, 3, "t" * 43
    )
    addresses = {
        GATEWAY_DEPLOYMENT: ["127.0.0.1:1", "127.0.0.1:2"],
        PROMPT_DEPLOYMENT: ["127.0.0.1:3"],
        EXPERIMENT_DEPLOYMENT: ["127.0.0.1:4"],
        EVALUATION_DEPLOYMENT: ["127.0.0.1:5"],
    }
    env = process_env(GATEWAY_DEPLOYMENT, local, addresses)
    assert env["GENAI_GATEWAY__QUOTA__BACKEND"] == "redis"
    assert Path(env["GENAI_AUTH__INTERNAL_TOKEN_FILE"]).read_text() == "t" * 43 + "\n"
    from services.common.config import load_settings

    settings = load_settings(PlatformSettings, path=None, env=env)
    assert settings.gateway.quota.lease_seconds == 3
    assert settings.auth.internal_token == "t" * 43
    assert len(settings.inference.models[0].backends) == 2
    assert settings.gateway.database_schema.startswith("bench_replicas_")

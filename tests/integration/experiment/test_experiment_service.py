"""ExperimentService over real gRPC: lifecycle, sticky assignment, exposures and outcomes, and
results with their statistics (the statistics themselves are tested in tests/unit/experiment)."""

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2, experiment_service_pb2_grpc

from services.common import reasons
from services.common.status import error_details
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from tests.support.serve import ROOT

if TYPE_CHECKING:
    Stub = experiment_service_pb2_grpc.ExperimentServiceAsyncStub
else:
    Stub = experiment_service_pb2_grpc.ExperimentServiceStub

pb = experiment_pb2
spb = experiment_service_pb2


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    settings = PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["experiment"],
            "server": {"port": 0},
            "experiment": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'exp.db'}"},
        }
    )
    running = await start_platform(settings)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def stub(platform: Platform) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(platform.address) as channel:
        yield experiment_service_pb2_grpc.ExperimentServiceStub(channel)


def _experiment(**more: Any) -> pb.Experiment:
    fields: dict[str, Any] = {"control_variant": "control", **more}
    return pb.Experiment(
        name="greeting-tone",
        prompt="greeting",
        variants=[
            pb.Variant(name="control", weight=1),
            pb.Variant(
                name="warm", weight=1, prompt_version=2, model="m", parameters={"temperature": 0.7}
            ),
        ],
        unit=pb.ASSIGNMENT_UNIT_USER,
        metrics=[
            pb.MetricSpec(name="thumbs_up", kind=pb.METRIC_KIND_BOOLEAN, higher_is_better=True),
            pb.MetricSpec(name="latency_ms", kind=pb.METRIC_KIND_NUMERIC),
        ],
        **fields,
    )


async def _failure(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return error_details(raised.value)


async def test_lifecycle_assignment_outcomes_and_results(stub: Stub) -> None:
    created = (
        await stub.CreateExperiment(spb.CreateExperimentRequest(experiment=_experiment()))
    ).experiment
    assert created.state == pb.EXPERIMENT_STATE_DRAFT
    assert len(created.salt) >= 16
    early = await _failure(
        stub.AssignVariant(spb.AssignVariantRequest(experiment="greeting-tone", unit_id="u1"))
    )
    assert (early.code, early.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        reasons.EXPERIMENT_NOT_RUNNING,
    )
    started = await stub.StartExperiment(spb.StartExperimentRequest(name="greeting-tone"))
    assert started.experiment.state == pb.EXPERIMENT_STATE_RUNNING

    assignments = {}
    for index in range(200):
        unit = f"user-{index}"
        first = (
            await stub.AssignVariant(
                spb.AssignVariantRequest(experiment="greeting-tone", unit_id=unit)
            )
        ).assignment
        again = (
            await stub.AssignVariant(
                spb.AssignVariantRequest(experiment="greeting-tone", unit_id=unit)
            )
        ).assignment
        assert first == again  # sticky
        assignments[unit] = first
        await stub.RecordExposure(
            spb.RecordExposureRequest(
                experiment="greeting-tone", unit_id=unit, variant=first.variant,
                request_id=f"r-{index}",
            )
        )  # fmt: skip
        await stub.RecordOutcome(
            spb.RecordOutcomeRequest(
                experiment="greeting-tone", unit_id=unit, metric="thumbs_up",
                boolean_value=first.variant == "warm", request_id=f"r-{index}",
            )
        )  # fmt: skip
        await stub.RecordOutcome(
            spb.RecordOutcomeRequest(
                experiment="greeting-tone", unit_id=unit, metric="latency_ms",
                numeric_value=100.0 + index % 7, request_id=f"r-{index}",
            )
        )  # fmt: skip
    warm = [a for a in assignments.values() if a.variant == "warm"]
    assert 70 < len(warm) < 130
    assert all((a.prompt_version, a.model) == (2, "m") for a in warm)
    assert all(a.parameters.temperature == pytest.approx(0.7) for a in warm)

    results = (
        await stub.GetExperimentResults(spb.GetExperimentResultsRequest(name="greeting-tone"))
    ).results
    by_variant = {v.variant: v for v in results.variants}
    assert [v.variant for v in results.variants] == ["control", "warm"]
    assert by_variant["warm"].units == len(warm)
    assert by_variant["warm"].exposures == len(warm)
    thumbs = {v: {m.metric: m for m in r.metrics}["thumbs_up"] for v, r in by_variant.items()}
    assert thumbs["control"].mean == 0.0
    assert thumbs["warm"].mean == 1.0
    assert thumbs["warm"].comparison.difference == pytest.approx(1.0)
    assert thumbs["warm"].comparison.p_value < 1e-6
    assert thumbs["warm"].comparison.test == "two_proportion_z"
    assert not thumbs["control"].HasField("comparison")
    assert results.sample_ratio.p_value > 0.001
    assert not results.sample_ratio.mismatch


async def test_weight_changes_keep_assigned_units_where_they_were(stub: Stub) -> None:
    await stub.CreateExperiment(spb.CreateExperimentRequest(experiment=_experiment(), start=True))
    before = {
        unit: (
            await stub.AssignVariant(
                spb.AssignVariantRequest(experiment="greeting-tone", unit_id=unit)
            )
        ).assignment.variant
        for unit in (f"u{i}" for i in range(100))
    }
    await stub.SetVariantWeights(
        spb.SetVariantWeightsRequest(experiment="greeting-tone", weights={"control": 1, "warm": 99})
    )
    after = {
        unit: (
            await stub.AssignVariant(
                spb.AssignVariantRequest(experiment="greeting-tone", unit_id=unit)
            )
        ).assignment.variant
        for unit in before
    }
    newcomers = [
        (
            await stub.AssignVariant(
                spb.AssignVariantRequest(experiment="greeting-tone", unit_id=f"new-{i}")
            )
        ).assignment.variant
        for i in range(100)
    ]

    assert after == before
    assert newcomers.count("warm") > 90


async def test_bad_requests_and_missing_experiments(stub: Stub) -> None:
    bad = _experiment(control_variant="nope", holdout_share=0.9)
    invalid = await _failure(stub.CreateExperiment(spb.CreateExperimentRequest(experiment=bad)))
    missing = await _failure(stub.GetExperiment(spb.GetExperimentRequest(name="none")))
    no_value = await _failure(
        stub.RecordOutcome(spb.RecordOutcomeRequest(experiment="x", unit_id="u", metric="m"))
    )

    assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {"experiment.control_variant", "experiment.holdout_share"} <= {
        v.field for v in invalid.field_violations
    }
    assert (missing.code, missing.reason) == (
        grpc.StatusCode.NOT_FOUND,
        reasons.EXPERIMENT_NOT_FOUND,
    )
    assert no_value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_genai_experiments_creates_from_yaml_and_prints_results_with_a_plot(
    platform: Platform, stub: Stub, tmp_path: Path
) -> None:
    (tmp_path / "exp.yaml").write_text(
        """
name: greeting-tone
prompt: greeting
controlVariant: control
unit: ASSIGNMENT_UNIT_USER
variants:
  - {name: control, weight: 1}
  - {name: warm, weight: 1, parameters: {temperature: 0.7}}
metrics:
  - {name: thumbs_up, kind: METRIC_KIND_BOOLEAN, higherIsBetter: true}
"""
    )

    def genai(*args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "experiments", *args,
             "--target", platform.address],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    created = await asyncio.to_thread(genai, "create", str(tmp_path / "exp.yaml"), "--start")
    for index in range(40):
        unit = f"u{index}"
        assigned = (
            await stub.AssignVariant(
                spb.AssignVariantRequest(experiment="greeting-tone", unit_id=unit)
            )
        ).assignment
        await stub.RecordExposure(
            spb.RecordExposureRequest(
                experiment="greeting-tone", unit_id=unit, variant=assigned.variant
            )
        )
        await stub.RecordOutcome(
            spb.RecordOutcomeRequest(
                experiment="greeting-tone", unit_id=unit, metric="thumbs_up",
                boolean_value=index % 2 == 0,
            )
        )  # fmt: skip
    png = tmp_path / "results.png"
    results = await asyncio.to_thread(genai, "results", "greeting-tone", "--png", str(png))
    listed = await asyncio.to_thread(genai, "list", "--state", "running")

    assert created.returncode == 0, created.stderr
    assert "greeting-tone: created (running)" in created.stdout
    assert results.returncode == 0, results.stderr
    assert "thumbs_up" in results.stdout
    assert "control" in results.stdout
    assert "warm" in results.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "greeting-tone" in listed.stdout

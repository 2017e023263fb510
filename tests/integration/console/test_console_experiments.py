"""The console's experiments pages against a real platform (SQLite, API keys, no model backend):
the list and one experiment, started from the console, its results table (intervals, p-values,
always-valid p-values, verdicts) and interval plots once exposures and outcomes are recorded
over gRPC, stopped from the console; the sample-ratio alarm; a refused start and a refused stop
reason re-render the page with the failure; a viewer sees no buttons and its forged POST gets
403; a platform without ExperimentService says so."""

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2, experiment_service_pb2_grpc
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc

from services.common.clients import api_key_metadata, create_channel
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings, ServiceKey
from services.prompt import cli as prompts_cli
from tests.support.console import csrf_of, signed_in
from tests.support.settings import inference_without_triton, router_without_triton

if TYPE_CHECKING:
    Experiments = experiment_service_pb2_grpc.ExperimentServiceAsyncStub
else:
    Experiments = experiment_service_pb2_grpc.ExperimentServiceStub

pb = experiment_pb2
spb = experiment_service_pb2
gs = gateway_service_pb2

PROMPT = """
name: greet
messages:
  - role: user
    content: "Say hello to {{ who }}."
variables:
  - {name: who, type: string, required: true}
"""


@dataclass
class Console:
    """A running platform, keys of the development tenant by role, and ways in."""

    platform: Platform
    keys: dict[str, str]
    base_url: str
    channels: list[grpc.aio.Channel]

    def experiments(self, role: str = "tenant_admin") -> Experiments:
        channel = create_channel(self.platform.address, metadata=api_key_metadata(self.keys[role]))
        self.channels.append(channel)
        return experiment_service_pb2_grpc.ExperimentServiceStub(channel)

    def browser(self, role: str) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        """A signed-in HTTP client (its cookie jar holds the session) for `role`'s key."""
        return signed_in(self.base_url, self.keys[role])


async def _platform(tmp_path: Path, services: tuple[ServiceKey, ...]) -> AsyncIterator[Console]:
    settings = PlatformSettings.model_validate(
        {
            "services": services,
            "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}"},
            "gateway": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"},
            "experiment": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'exp.db'}"},
            "router": router_without_triton(),
            "inference": inference_without_triton(),
        }
    )
    platform = await start_platform(settings)
    assert platform.tenants is not None
    assert platform.http_port
    dev = await ensure_dev_credentials(platform.tenants, tmp_path / "dev-key")
    admin_channel = create_channel(platform.address, metadata=api_key_metadata(dev.secret))
    gateway = gateway_service_pb2_grpc.GatewayServiceStub(admin_channel)
    keys = {"platform_admin": dev.secret}
    for role, value in (
        ("viewer", gateway_pb2.ROLE_VIEWER),
        ("member", gateway_pb2.ROLE_MEMBER),
        ("tenant_admin", gateway_pb2.ROLE_TENANT_ADMIN),
    ):
        created = await gateway.CreateApiKey(
            gs.CreateApiKeyRequest(tenant_id=dev.tenant_id, display_name=role, role=value),
            timeout=10,
        )
        keys[role] = created.secret
    if "prompt" in services:
        folder = tmp_path / "prompts"
        folder.mkdir()
        (folder / "greet.yaml").write_text(PROMPT)
        report = await prompts_cli.seed_prompts(admin_channel, folder)
        assert report.failures == 0, report.lines
    made = Console(platform, keys, f"http://127.0.0.1:{platform.http_port}", [admin_channel])
    try:
        yield made
    finally:
        for channel in made.channels:
            await channel.close(None)
        await platform.stop(grace=1)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async for made in _platform(
        tmp_path, ("prompt", "experiment", "router", "inference", "gateway")
    ):
        yield made


def _experiment(name: str = "greeting-tone", **more: Any) -> pb.Experiment:
    return pb.Experiment(
        name=name,
        description="Does a warmer greeting get more thumbs up?",
        prompt="greet",
        control_variant="control",
        variants=[
            pb.Variant(name="control", weight=1),
            pb.Variant(name="warm", weight=1, prompt_version=1, model="zero"),
        ],
        unit=pb.ASSIGNMENT_UNIT_USER,
        metrics=[
            pb.MetricSpec(name="thumbs_up", kind=pb.METRIC_KIND_BOOLEAN, higher_is_better=True),
            pb.MetricSpec(name="latency_ms", kind=pb.METRIC_KIND_NUMERIC),
        ],
        **more,
    )


async def _record(stub: Experiments, name: str, units: int, *, warm_every: int = 1) -> None:
    """Assigns `units` users; exposes each control unit and every `warm_every`-th warm one,
    and records for each exposed unit a thumbs-up (every warm one, no control one) and a
    latency."""
    for index in range(units):
        unit = f"user-{index}"
        assigned = (
            await stub.AssignVariant(spb.AssignVariantRequest(experiment=name, unit_id=unit))
        ).assignment
        warm = assigned.variant == "warm"
        if warm and index % warm_every:
            continue
        await stub.RecordExposure(
            spb.RecordExposureRequest(experiment=name, unit_id=unit, variant=assigned.variant)
        )
        await stub.RecordOutcome(
            spb.RecordOutcomeRequest(
                experiment=name, unit_id=unit, metric="thumbs_up", boolean_value=warm
            )
        )
        await stub.RecordOutcome(
            spb.RecordOutcomeRequest(
                experiment=name,
                unit_id=unit,
                metric="latency_ms",
                numeric_value=100.0 + index % 5 + (10.0 if warm else 0.0),
            )
        )


def _rows(page: str, table_heading_id: str) -> list[list[str]]:
    """The body rows of the table labelled by `table_heading_id`, as cell texts."""
    start = page.index(f'<table aria-labelledby="{table_heading_id}">')
    body = page[start : page.index("</table>", start)]
    body = body[body.index("<tbody>") :]
    return [
        [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


async def test_start_results_and_stop_from_the_console(console: Console) -> None:
    stub = console.experiments()
    await stub.CreateExperiment(spb.CreateExperimentRequest(experiment=_experiment()), timeout=10)
    async with console.browser("tenant_admin") as admin:
        listing = await admin.get("/console/experiments")
        assert listing.status_code == 200
        assert 'href="/console/experiments/greeting-tone"' in listing.text
        assert ">draft<" in listing.text
        assert "control (control): weight 1, 50 %" in listing.text
        assert "warm: weight 1, 50 %" in listing.text
        assert "not started" in listing.text
        drafts = await admin.get("/console/experiments", params={"state": "running"})
        assert "greeting-tone" not in drafts.text
        assert "No experiment is running." in drafts.text

        page = await admin.get("/console/experiments/greeting-tone")
        assert page.status_code == 200
        assert "<h1>Experiment greeting-tone</h1>" in page.text
        assert "Does a warmer greeting get more thumbs up?" in page.text
        assert "production → v1" in page.text  # the control serves the production label
        assert 'href="/console/prompts/greet/versions/1">v1</a>' in page.text
        assert "Start experiment" in page.text
        assert "Stop experiment" in page.text
        assert "<dt>Assignment unit</dt><dd>user</dd>" in page.text
        assert "No units have been assigned yet" in page.text
        assert "Not checked: no exposures yet." in page.text
        assert "<svg" not in page.text

        started = await admin.post(
            "/console/experiments/greeting-tone/start", data={"csrf_token": csrf_of(page)}
        )
        assert started.status_code == 303
        assert started.headers["location"].startswith("/console/experiments/greeting-tone?done=")
        got = (await stub.GetExperiment(spb.GetExperimentRequest(name="greeting-tone"))).experiment
        assert got.state == pb.EXPERIMENT_STATE_RUNNING

        await _record(console.experiments("member"), "greeting-tone", 60)
        page = await admin.get(started.headers["location"])
        assert "Started greeting-tone." in page.text
        assert "Start experiment" not in page.text
        assert "Stop experiment" in page.text
        assert 'id="srm-alarm"' not in page.text
        assert "No mismatch" in page.text
        results = (
            await stub.GetExperimentResults(spb.GetExperimentResultsRequest(name="greeting-tone"))
        ).results
        units = {v.variant: v.units for v in results.variants}
        assert sum(units.values()) == 60
        assert all(units.values())
        ratio = _rows(page.text, "ratio-heading")
        assert [row[:3] for row in ratio] == [
            ["control", str(units["control"]), str(units["control"])],
            ["warm", str(units["warm"]), str(units["warm"])],
        ]
        thumbs = _rows(page.text, "metric-1")
        assert thumbs[0][:3] == ["control", str(units["control"]), "0.00%"]
        assert thumbs[0][4] == "control"
        assert thumbs[1][:3] == ["warm", str(units["warm"]), "100.00%"]
        assert thumbs[1][4] == "+100.00 pp"
        assert re.fullmatch(r"\[\+\d+\.\d\d pp, \+\d+\.\d\d pp\]", thumbs[1][5])
        comparison = results.variants[1].metrics[0].comparison
        assert thumbs[1][7] == (
            f"{comparison.sequential_p_value:.3f}"
            if comparison.sequential_p_value >= 0.001
            else f"{comparison.sequential_p_value:.1e}"
        )
        assert thumbs[1][8] in {"better than control", "no detectable difference yet"}
        latency = _rows(page.text, "metric-2")
        assert latency[1][8] in {"worse than control", "no detectable difference yet"}
        assert "Always-valid p" in page.text
        assert "95% interval" in page.text
        assert page.text.count('<svg xmlns="http://www.w3.org/2000/svg"') == 4
        assert 'role="img"' in page.text
        assert "thumbs_up: difference to control, 95% interval" in page.text
        assert "difference in percentage points" in page.text
        assert "difference in latency_ms" in page.text

        wider = await admin.get("/console/experiments/greeting-tone", params={"confidence": "0.99"})
        assert "99% interval" in wider.text
        assert '<option value="0.99" selected>' in wider.text

        too_long = await admin.post(
            "/console/experiments/greeting-tone/stop",
            data={"csrf_token": csrf_of(page), "reason": "x" * 2000},
        )
        assert too_long.status_code == 400
        assert 'aria-invalid="true"' in too_long.text
        assert 'id="reason-error"' in too_long.text
        assert "INVALID_ARGUMENT" in too_long.text
        got = (await stub.GetExperiment(spb.GetExperimentRequest(name="greeting-tone"))).experiment
        assert got.state == pb.EXPERIMENT_STATE_RUNNING

        stopped = await admin.post(
            "/console/experiments/greeting-tone/stop",
            data={"csrf_token": csrf_of(page), "reason": "enough data"},
        )
        assert stopped.status_code == 303
        page = await admin.get(stopped.headers["location"])
        assert "Stopped greeting-tone." in page.text
        assert ">stopped<" in page.text
        assert "Start experiment" not in page.text
        assert "Stop experiment" not in page.text
        assert _rows(page.text, "metric-1")[1][2] == "100.00%"  # results stay readable

        refused = await admin.post(
            "/console/experiments/greeting-tone/start", data={"csrf_token": csrf_of(page)}
        )
        assert refused.status_code == 409
        assert "FAILED_PRECONDITION" in refused.text
        assert 'role="alert"' in refused.text
        assert "<h1>Experiment greeting-tone</h1>" in refused.text

        missing = await admin.get("/console/experiments/nope")
        assert missing.status_code == 404
        assert "EXPERIMENT_NOT_FOUND" in missing.text


async def test_sample_ratio_mismatch_is_an_alarm(console: Console) -> None:
    stub = console.experiments()
    await stub.CreateExperiment(
        spb.CreateExperimentRequest(experiment=_experiment("lopsided"), start=True), timeout=10
    )
    await _record(stub, "lopsided", 160, warm_every=4)  # most warm units are never exposed
    results = (
        await stub.GetExperimentResults(spb.GetExperimentResultsRequest(name="lopsided"))
    ).results
    assert results.sample_ratio.mismatch
    exposures = {v.variant: v.exposures for v in results.variants}
    async with console.browser("viewer") as viewer:
        page = await viewer.get("/console/experiments/lopsided")
    assert page.status_code == 200
    alarm = page.text[page.text.index('<div class="alert" role="alert" id="srm-alarm">') :]
    alarm = alarm[: alarm.index("</div>")]
    assert "Sample-ratio mismatch: do not trust these results." in alarm
    expected = f"{(exposures['control'] + exposures['warm']) / 2:g}"
    assert f"control: {exposures['control']} observed, {expected} expected" in alarm
    assert f"warm: {exposures['warm']} observed, {expected} expected" in alarm
    assert "not trustworthy: sample-ratio mismatch" in page.text


async def test_viewer_sees_no_actions_and_a_forged_start_is_refused(console: Console) -> None:
    stub = console.experiments()
    await stub.CreateExperiment(spb.CreateExperimentRequest(experiment=_experiment()), timeout=10)
    async with console.browser("viewer") as viewer:
        page = await viewer.get("/console/experiments/greeting-tone")
        assert page.status_code == 200
        assert "Start experiment" not in page.text
        assert "Stop experiment" not in page.text
        token = csrf_of(page)  # the sign-out form's: the session's token
        for action in ("start", "stop"):
            forged = await viewer.post(
                f"/console/experiments/greeting-tone/{action}", data={"csrf_token": token}
            )
            assert forged.status_code == 403
            assert "needs the tenant_admin role" in forged.text
    async with console.browser("tenant_admin") as admin:
        no_token = await admin.post("/console/experiments/greeting-tone/start", data={})
        assert no_token.status_code == 403
        assert "CSRF" in no_token.text
    got = (await stub.GetExperiment(spb.GetExperimentRequest(name="greeting-tone"))).experiment
    assert got.state == pb.EXPERIMENT_STATE_DRAFT


async def test_the_list_pages(console: Console) -> None:
    stub = console.experiments()
    names = [f"exp-{index:02d}" for index in range(51)]  # one more than a page
    await asyncio.gather(
        *(
            stub.CreateExperiment(spb.CreateExperimentRequest(experiment=_experiment(n)))
            for n in names
        )
    )
    async with console.browser("viewer") as viewer:
        first = await viewer.get("/console/experiments")
        shown = re.findall(r'href="/console/experiments/(exp-\d\d)"', first.text)
        assert shown == names[:50]
        link = re.search(
            r'href="(/console/experiments\?page_token=[^"]+)"[^>]*>Next page', first.text
        )
        assert link
        second = await viewer.get(link.group(1).replace("&amp;", "&"))
        assert re.findall(r'href="/console/experiments/(exp-\d\d)"', second.text) == names[50:]
        assert "Next page" not in second.text
        assert "First page" in second.text


async def test_without_experiment_service_the_pages_say_so(tmp_path: Path) -> None:
    async for made in _platform(tmp_path, ("prompt", "router", "inference", "gateway")):
        async with made.browser("viewer") as viewer:
            for path in ("/console/experiments", "/console/experiments/any"):
                page = await viewer.get(path)
                assert page.status_code == 503
                assert "Experiments are not deployed on this platform" in page.text

"""The console's Evaluations pages over HTTP, in front of a whole platform (auth `api_key`, the
model backend a scripted OpenAI-compatible server): datasets and their examples, a run started
from the form and followed through its progress endpoint until its report, the report with
each output beside its example's inputs and reference, a comparison naming the regressed
examples, cancelling a run, the form's field errors (the console's and the service's), a
viewer's forged POST, and the page of a platform without EvaluationService."""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc

from services.common.clients import api_key_metadata, create_channel
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.console import csrf_of, signed_in
from tests.support.openai_server import MODEL, Behaviour, OpenAICompatibleServer
from tests.support.settings import inference_without_triton, router_without_triton

if TYPE_CHECKING:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
else:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceStub

pb = evaluation_pb2
esb = evaluation_service_pb2
KEY_ENV = "GENAI_TEST_PROVIDER_KEY"
PROMPT = """
name: capital
messages:
  - role: user
    content: "What is the capital of {{ country }}?"
variables:
  - {name: country, type: string, required: true}
"""
CATALOG = """
currency: USD
models:
  - name: hosted
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: hosted-0, kind: openai_compatible, endpoint: "{url}", backend_model: {model}}}
"""
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo")]
SCORERS = "- {name: answer, contains: {}}\n- {name: latency, latency: {}}\n"


@dataclass
class Console:
    """The running platform, its scripted backend, and signed-in console clients."""

    platform: Platform
    backend: OpenAICompatibleServer
    admin: httpx.AsyncClient
    viewer: httpx.AsyncClient


async def _csrf(client: httpx.AsyncClient, path: str = "/console/evaluations") -> str:
    """The session's CSRF token, read from the page at `path`."""
    return csrf_of(await client.get(path))


@pytest.fixture
async def console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Console]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    async with OpenAICompatibleServer(Behaviour(), api_key="sk-test") as backend:
        (tmp_path / "catalog.yaml").write_text(CATALOG.format(url=backend.base_url, model=MODEL))
        settings = PlatformSettings.model_validate(
            {
                "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
                "server": {"port": 0, "grace_seconds": 1},
                "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"},
                "gateway": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"},
                "experiment": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"},
                "evaluation": {
                    "database_url": f"sqlite+aiosqlite:///{tmp_path / 'e.db'}",
                    "max_concurrency": 1,
                },
                "router": {"catalog_file": str(tmp_path / "catalog.yaml")},
                "inference": {
                    "triton": {"launch": False},
                    "models": [
                        {
                            "name": "hosted",
                            "backends": [
                                {
                                    "id": "hosted-0",
                                    "kind": "openai_compatible",
                                    "endpoint": backend.base_url,
                                    "provider_model": MODEL,
                                    "api_key_env": KEY_ENV,
                                }
                            ],
                        }
                    ],
                },
            }
        )
        platform = await start_platform(settings)
        try:
            assert platform.tenants is not None
            assert platform.http_port
            admin_key = (await ensure_dev_credentials(platform.tenants, tmp_path / "key")).secret
            async with create_channel(
                platform.address, metadata=api_key_metadata(admin_key)
            ) as channel:
                viewer_key = (
                    await gateway_service_pb2_grpc.GatewayServiceStub(channel).CreateApiKey(
                        gateway_service_pb2.CreateApiKeyRequest(
                            display_name="viewer", role=gateway_pb2.ROLE_VIEWER
                        ),
                        timeout=10,
                    )
                ).secret
                folder = tmp_path / "prompts"
                folder.mkdir()
                (folder / "capital.yaml").write_text(PROMPT)
                assert (await prompts_cli.seed_prompts(channel, folder)).failures == 0
                await _seed_dataset(evaluation_service_pb2_grpc.EvaluationServiceStub(channel))
            base = f"http://127.0.0.1:{platform.http_port}"
            async with signed_in(base, admin_key) as admin, signed_in(base, viewer_key) as viewer:
                yield Console(platform, backend, admin, viewer)
        finally:
            await platform.stop(grace=1)


async def _seed_dataset(stub: EvaluationStub) -> None:
    await stub.CreateDataset(
        esb.CreateDatasetRequest(
            dataset=pb.Dataset(name="capitals", prompt="capital", description="four capitals")
        ),
        timeout=10,
    )
    examples = []
    for country, city in CAPITALS:
        example = pb.Example(
            reference=city, tags={"continent": "asia" if city == "Tokyo" else "eu"}
        )
        example.inputs.update({"country": country})
        examples.append(example)
    await stub.AddExamples(
        esb.AddExamplesRequest(dataset="capitals", examples=examples), timeout=10
    )


async def _start(client: httpx.AsyncClient, **fields: str) -> httpx.Response:
    form = {
        "csrf_token": await _csrf(client, "/console/evaluations/new"),
        "prompt": "capital",
        "label": "production",
        "dataset": "capitals",
        "repeats": "1",
        "scorers": SCORERS,
        **fields,
    }
    return await client.post("/console/evaluations/runs", data=form)


async def _run_to_end(client: httpx.AsyncClient, replies: list[str], console: Console) -> str:
    """Starts a run from the form with the backend answering `replies` in order; follows its
    progress endpoint until it ends; returns its report id."""
    console.backend.behaviour = Behaviour(replies=[[reply] for reply in replies])
    started = await _start(client)
    assert started.status_code == 303, started.text
    location = started.headers["location"]
    assert re.fullmatch(r"/console/evaluations/runs/[^/?]+\?done=.+", location), location
    page = await client.get(location)
    assert page.status_code == 200
    assert "progress.js" in page.text
    assert "<progress" in page.text
    run_id = location.split("/")[-1].split("?")[0]
    deadline = time.monotonic() + 30
    seen: list[dict[str, Any]] = []
    while True:
        answer = await client.get(f"/console/evaluations/runs/{run_id}/progress")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/json")
        seen.append(answer.json())
        if seen[-1]["terminal"]:
            break
        assert time.monotonic() < deadline, seen[-1]
        await asyncio.sleep(0.1)
    final = seen[-1]
    assert final["state"] == "succeeded", final
    assert final["progress"] == {"total": 4, "completed": 4, "failed": 0}
    assert final["report_url"] == f"/console/evaluations/reports/{final['report_id']}"
    done = await client.get(f"/console/evaluations/runs/{run_id}")
    assert f'href="/console/evaluations/reports/{final["report_id"]}"' in done.text
    assert "Cancel run" not in done.text
    return str(final["report_id"])


async def test_datasets_runs_reports_and_comparison(console: Console) -> None:
    admin = console.admin
    index = await admin.get("/console/evaluations")
    assert index.status_code == 200
    assert "capitals" in index.text
    assert "four capitals" in index.text
    assert 'href="/console/evaluations/new' in index.text
    assert "content-security-policy" in index.headers

    dataset = await admin.get("/console/evaluations/datasets/capitals")
    assert dataset.status_code == 200
    for country, city in CAPITALS:
        assert f"&#34;country&#34;: &#34;{country}&#34;" in dataset.text
        assert city in dataset.text
    assert "continent: asia" in dataset.text

    form = await admin.get("/console/evaluations/new?prompt=capital&dataset=capitals&version=1")
    assert form.status_code == 200
    assert 'id="prompt" name="prompt"' in form.text
    assert 'value="capital"' in form.text
    assert 'name="version" type="number"' in form.text
    assert 'value="1"' in form.text
    assert '<option value="capitals">' in form.text
    assert '<option value="hosted">' in form.text

    baseline = await _run_to_end(admin, ["Paris", "Rome", "Madrid", "Tokyo"], console)
    candidate = await _run_to_end(admin, ["Paris", "Milan", "Barcelona", "Tokyo"], console)

    report = await admin.get(f"/console/evaluations/reports/{candidate}")
    assert report.status_code == 200
    text = report.text
    # every output beside its example's inputs and reference, with its scores
    for country, city in CAPITALS:
        assert f"&#34;country&#34;: &#34;{country}&#34;" in text
        assert f'<pre class="block">{city}</pre>' in text
    for output in ("Milan", "Barcelona"):
        assert f'<pre class="block">{output}</pre>' in text
    assert 'answer: <span class="state-bad">0.000</span>' in text
    assert 'answer: <span class="state-good">1.000</span>' in text
    # the summary per scorer with its interval, one chart per unit
    assert "0.500" in text  # the answer scorer's mean
    assert text.count('role="img"') == 3  # scores (0..1), mean latency (s), latency spread
    assert "score (0 to 1)" in text
    assert "seconds" in text
    # the comparison form offers the other report
    assert f'<option value="{baseline}">' in text

    compared = await admin.get(
        f"/console/evaluations/compare?baseline={baseline}&candidate={candidate}"
    )
    assert compared.status_code == 200
    page = compared.text
    assert "regressed" in page
    regressed = page.split('id="regressed-heading"')[1]
    for country, city, output in (("Italy", "Rome", "Milan"), ("Spain", "Madrid", "Barcelona")):
        assert f"&#34;country&#34;: &#34;{country}&#34;" in regressed
        assert f'<pre class="block">{city}</pre>' in regressed  # reference, baseline output
        assert f'<pre class="block">{output}</pre>' in regressed  # candidate output
    assert "France" not in regressed
    assert "Japan" not in regressed
    assert "1.000 → 0.000" in regressed

    index = await admin.get("/console/evaluations?prompt=capital")
    assert index.text.count("succeeded") >= 2
    assert f"/console/evaluations/reports/{candidate}" in index.text


async def test_cancel_a_running_run(console: Console) -> None:
    console.backend.behaviour = Behaviour(tokens=("slow",) * 20, pace=0.2)
    started = await _start(console.admin)
    assert started.status_code == 303, started.text
    run_page = started.headers["location"].split("?")[0]
    page = await console.admin.get(run_page)
    assert "Cancel run" in page.text
    assert 'id="run-refresh"' in page.text
    cancelled = await console.admin.post(
        f"{run_page}/cancel", data={"csrf_token": await _csrf(console.admin)}
    )
    assert cancelled.status_code == 303
    progress = (await console.admin.get(f"{run_page}/progress")).json()
    assert progress["state"] == "cancelled"
    assert progress["terminal"] is True
    again = await console.admin.post(
        f"{run_page}/cancel", data={"csrf_token": await _csrf(console.admin)}
    )
    assert again.status_code in (303, 409)


async def test_form_errors_beside_their_fields(console: Console) -> None:
    admin = console.admin
    local = await _start(admin, scorers="- name: answer\n  bogus: {}\n", version="x", label="")
    assert local.status_code == 400
    assert 'id="scorers" name="scorers" rows="10" spellcheck="false" aria-invalid="true"' in (
        local.text
    )
    assert 'aria-describedby="scorers-error scorers-hint"' in local.text
    assert re.search(r'id="scorers-error"><li>scorer 1: [^<]*bogus', local.text), local.text
    assert re.search(r'id="version-error"><li>must be a whole number', local.text)
    assert "- name: answer\n  bogus: {}" in local.text  # what was typed stays

    service = await _start(admin, prompt="Not A Name!")
    assert service.status_code == 400
    assert 'id="prompt-error"' in service.text
    assert "INVALID_ARGUMENT" in service.text

    missing = await _start(admin, dataset="nowhere")
    assert missing.status_code == 404
    assert re.search(r'id="dataset-error"><li>[^<]*nowhere', missing.text), missing.text

    compare = await admin.get("/console/evaluations/compare?baseline=nope")
    assert compare.status_code == 400
    assert 'id="candidate-error"' in compare.text
    unknown = await admin.get("/console/evaluations/compare?baseline=nope&candidate=nada")
    assert unknown.status_code == 404
    assert 'id="baseline-error"' in unknown.text


async def test_a_viewer_sees_but_cannot_start_or_cancel(console: Console) -> None:
    viewer = console.viewer
    index = await viewer.get("/console/evaluations")
    assert index.status_code == 200
    assert "capitals" in index.text
    assert 'href="/console/evaluations/new' not in index.text
    assert (await viewer.get("/console/evaluations/new")).status_code == 403
    forged = await viewer.post(
        "/console/evaluations/runs",
        data={
            "csrf_token": await _csrf(viewer),
            "prompt": "capital",
            "dataset": "capitals",
            "scorers": SCORERS,
        },
    )
    assert forged.status_code == 403
    assert "member" in forged.text
    cancel = await viewer.post(
        "/console/evaluations/runs/anything/cancel", data={"csrf_token": await _csrf(viewer)}
    )
    assert cancel.status_code == 403
    no_token = await console.admin.post(
        "/console/evaluations/runs", data={"prompt": "capital", "scorers": SCORERS}
    )
    assert no_token.status_code == 403
    assert (await viewer.get("/console/evaluations/runs/missing")).status_code == 404


async def test_a_platform_without_evaluations_says_so(tmp_path: Path) -> None:
    settings = PlatformSettings.model_validate(
        {
            "auth": {"mode": "none"},
            "services": ["prompt", "router", "inference", "gateway"],
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"},
            "gateway": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"},
            "router": router_without_triton(),
            "inference": inference_without_triton(),
        }
    )
    platform = await start_platform(settings)
    try:
        async with signed_in(f"http://127.0.0.1:{platform.http_port}", "") as client:
            page = await client.get("/console/evaluations")
            assert page.status_code == 503
            assert "no EvaluationService" in page.text
            progress = await client.get("/console/evaluations/runs/x/progress")
            assert progress.status_code == 503
    finally:
        await platform.stop(grace=1)

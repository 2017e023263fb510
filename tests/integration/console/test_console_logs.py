"""The console's request log, quality alerts and models pages, on an in-process platform with
API-key auth and no Triton: models `chat` and `chat-b` on a stand-in Triton (each reply names
an e-mail address), `down` on an endpoint that refuses connections.

Completions made through the gRPC GatewayService are listed by `/console/logs`, filtered by
model (in the console), status, prompt and time (in `ListRequestLogs`); a request's page
shows its input and output as logged (redacted by the default `redacted` policy), usage,
cost, attempts and trace id. Another tenant's key sees none of them. `/console/models` shows
the catalog with each backend's health and live latency, `/console/alerts` the tenant's
quality alerts, or says EvaluationService is not deployed."""

import asyncio
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from genai.common.v1 import routing_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import struct_pb2

from services.common.clients import api_key_metadata, create_channel
from services.console.pages import logs
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.evaluation.core.model import NewQualityAlert
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.console import signed_in
from tests.support.fake_triton import FakeTriton

if TYPE_CHECKING:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub

gs = gateway_service_pb2
NOWHERE = "127.0.0.1:9"
"""The discard port: connections are refused at once."""
REPLY = [" Write", " to", " bob@example.com", "."]
CATALOG = """
currency: USD
models:
  - name: chat
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    quality_tier: 5
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{triton}", backend_model: zero_llm}}
  - name: chat-b
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 3, output: 4}}
    quality_tier: 7
    pinned_only: true
    backends:
      - {{id: triton-b, kind: triton, endpoint: "{triton}", backend_model: zero_llm}}
  - name: down
    capabilities: [chat, streaming]
    max_context_tokens: 100000
    max_output_tokens: 1000
    price_per_million_tokens: {{input: 1, output: 2}}
    pinned_only: true
    backends:
      - {{id: down-0, kind: triton, endpoint: "{nowhere}", backend_model: zero_llm}}
"""
PROMPT = """
name: ask
messages:
  - {role: system, content: Be brief.}
  - {role: user, content: "{{ question }}"}
variables:
  - {name: question, type: string, required: true}
"""


def _served(name: str, backend_id: str, endpoint: str) -> dict[str, object]:
    return {
        "name": name,
        "backends": [{"id": backend_id, "endpoint": endpoint, "triton_model": "zero_llm"}],
        "chat_template": "builtin:chatml",
    }


def _settings(triton: FakeTriton, data: Path, *, evaluation: bool) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(CATALOG.format(triton=triton.address, nowhere=NOWHERE))
    services = ["prompt", "router", "inference", "gateway"]
    if evaluation:
        services += ["experiment", "evaluation"]
    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "api_key"},
            "services": services,
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{data / 'prompts.db'}"},
            "experiment": {"database_url": f"sqlite+aiosqlite:///{data / 'experiments.db'}"},
            "evaluation": {
                "database_url": f"sqlite+aiosqlite:///{data / 'evaluation.db'}",
                "max_concurrency": 1,
            },
            "gateway": {
                "database_url": f"sqlite+aiosqlite:///{data / 'gateway.db'}",
                "request_log": {"max_delay_seconds": 0.01},
                "online_evaluation": {"share": 0},
            },
            "router": {"catalog_file": str(catalog), "health_check_seconds": 60},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    _served("chat", "triton-0", triton.address),
                    _served("chat-b", "triton-b", triton.address),
                    _served("down", "down-0", NOWHERE),
                ],
            },
        }
    )


@dataclass
class Running:
    """The platform, its console's base URL, the development tenant's platform-admin key and
    a gateway stub that calls with it."""

    platform: Platform
    base_url: str
    admin_key: str
    gateway: GatewayStub
    data: Path


async def _start(tmp_path: Path, *, evaluation: bool) -> AsyncIterator[Running]:
    async with FakeTriton(reply=REPLY) as triton:
        platform = await start_platform(_settings(triton, tmp_path, evaluation=evaluation))
        assert platform.tenants is not None
        assert platform.http_port is not None
        dev = await ensure_dev_credentials(platform.tenants, tmp_path / "dev-key")
        channel = create_channel(platform.address, metadata=api_key_metadata(dev.secret))
        try:
            folder = tmp_path / "prompts"
            folder.mkdir()
            (folder / "ask.yaml").write_text(PROMPT)
            assert (await prompts_cli.seed_prompts(channel, folder)).failures == 0
            yield Running(
                platform=platform,
                base_url=f"http://127.0.0.1:{platform.http_port}",
                admin_key=dev.secret,
                gateway=gateway_service_pb2_grpc.GatewayServiceStub(channel),
                data=tmp_path,
            )
        finally:
            await channel.close(None)
            await platform.stop(grace=1)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async for started in _start(tmp_path, evaluation=True):
        yield started


@pytest.fixture
async def without_evaluation(tmp_path: Path) -> AsyncIterator[Running]:
    async for started in _start(tmp_path, evaluation=False):
        yield started


async def _complete(
    running: Running, request_id: str, model: str, question: str
) -> gateway_pb2.CompletionMetadata:
    variables = struct_pb2.Struct()
    variables.update({"question": question})
    response: gs.CompleteResponse = await running.gateway.Complete(
        gs.CompleteRequest(
            prompt="ask",
            version=1,
            variables=variables,
            request_id=request_id,
            routing=routing_pb2.RoutingPreferences(model=model),
            tags={"suite": "console"},
        )
    )
    return response.metadata


async def _key_of_new_tenant(running: Running, tenant: str) -> str:
    """A viewer key of a new tenant, made with the platform admin's key over gRPC."""
    await running.gateway.CreateTenant(
        gs.CreateTenantRequest(tenant=gateway_pb2.Tenant(id=tenant, display_name=tenant))
    )
    created: gs.CreateApiKeyResponse = await running.gateway.CreateApiKey(
        gs.CreateApiKeyRequest(
            tenant_id=tenant, display_name="console", role=gateway_pb2.ROLE_VIEWER
        )
    )
    return created.secret


async def _viewer_key(running: Running) -> str:
    created: gs.CreateApiKeyResponse = await running.gateway.CreateApiKey(
        gs.CreateApiKeyRequest(
            tenant_id="default", display_name="viewer", role=gateway_pb2.ROLE_VIEWER
        )
    )
    return created.secret


def _request_ids(page: str) -> list[str]:
    """The request ids the results table links to, in order."""
    return re.findall(r'href="/console/logs/[^"?]+[^"]*"><code>([^<]+)</code>', page)


def _detail_href(page: str, request_id: str) -> str:
    found = re.search(rf'href="(/console/logs/{re.escape(request_id)})"', page)
    assert found, f"no link to {request_id}"
    return found.group(1).replace("&amp;", "&")


async def test_request_log_lists_filters_and_details_the_tenants_requests(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await _complete(running, "req-chat-1", "chat", "Mail alice@example.com the news")
    await _complete(running, "req-chat-b-1", "chat-b", "Second question")
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await _complete(running, "req-down-1", "down", "Third question")
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE

    async with signed_in(running.base_url, running.admin_key) as admin:
        page = await admin.get("/console/logs")
        assert page.status_code == 200, page.text
        assert _request_ids(page.text) == ["req-down-1", "req-chat-b-1", "req-chat-1"]
        assert "ask@1" in page.text
        assert 'name="start_time"' in page.text
        assert 'type="datetime-local"' in page.text

        by_model = await admin.get("/console/logs", params={"model": "chat"})
        assert _request_ids(by_model.text) == ["req-chat-1"]
        by_model = await admin.get("/console/logs", params={"model": "chat-b"})
        assert _request_ids(by_model.text) == ["req-chat-b-1"]
        tried = await admin.get("/console/logs", params={"model": "down"})  # the last one tried
        assert _request_ids(tried.text) == ["req-down-1"]

        failed = await admin.get("/console/logs", params={"status": "UNAVAILABLE"})
        assert _request_ids(failed.text) == ["req-down-1"]
        assert '<option value="UNAVAILABLE" selected>' in failed.text
        ok = await admin.get("/console/logs", params={"status": "ok", "model": "chat"})
        assert _request_ids(ok.text) == ["req-chat-1"]
        none = await admin.get("/console/logs", params={"prompt": "other"})
        assert _request_ids(none.text) == []
        assert "No logged request matches" in none.text
        future = await admin.get("/console/logs", params={"start_time": "2999-01-01T00:00"})
        assert _request_ids(future.text) == []
        past = await admin.get("/console/logs", params={"end_time": "2000-01-01T00:00"})
        assert _request_ids(past.text) == []
        window = await admin.get(
            "/console/logs",
            params={"start_time": "2000-01-01T00:00", "end_time": "2999-01-01T00:00:00"},
        )
        assert len(_request_ids(window.text)) == 3

        bad = await admin.get(
            "/console/logs", params={"start_time": "yesterday-ish", "status": "BOGUS"}
        )
        assert bad.status_code == 400
        assert 'id="f-start_time" name="start_time" value="yesterday-ish" aria-invalid="true"' in (
            bad.text
        )
        assert 'aria-describedby="f-start_time-hint f-start_time-error"' in bad.text
        assert 'id="f-start_time-error"' in bad.text
        assert 'id="f-status-error"' in bad.text
        backwards = await admin.get(
            "/console/logs",
            params={"start_time": "2026-01-02T00:00", "end_time": "2026-01-01T00:00"},
        )
        assert backwards.status_code == 400
        assert "must be after the start" in backwards.text

        # Pages: the next-page link carries the filters and the RPC's token.
        monkeypatch.setattr(logs, "PAGE_SIZE", 2)
        first_page = await admin.get("/console/logs", params={"status": "OK"})
        assert _request_ids(first_page.text) == ["req-chat-b-1", "req-chat-1"]
        everything = await admin.get("/console/logs")
        assert _request_ids(everything.text) == ["req-down-1", "req-chat-b-1"]
        next_link = re.search(
            r'href="(/console/logs\?[^"]*page_token=[^"]+)" rel="next"', everything.text
        )
        assert next_link is not None, everything.text
        second_page = await admin.get(next_link.group(1).replace("&amp;", "&"))
        assert _request_ids(second_page.text) == ["req-chat-1"]
        assert "First page" in second_page.text
        assert 'rel="next"' not in second_page.text
        monkeypatch.undo()

        jump = await admin.get("/console/logs", params={"request_id": "req-chat-1"})
        assert jump.status_code == 303
        assert jump.headers["location"] == "/console/logs/req-chat-1"

        # The detail page, by the list's link.
        detail = await admin.get(_detail_href(page.text, "req-chat-1"))
        assert detail.status_code == 200, detail.text
        text = detail.text
        assert first.trace_id
        assert first.trace_id in text
        assert "Be brief." in text
        assert ">system<" in text
        assert ">user<" in text
        assert "Mail [EMAIL] the news" in text
        assert "alice@example.com" not in text
        assert "Write to [EMAIL]." in text
        assert "bob@example.com" not in text
        usage = first.usage
        assert f"{usage.input_tokens:,} / {usage.output_tokens:,}" in text
        assert "provider" in text  # who counted the tokens
        assert " USD" in text
        assert "<td>triton-0</td>" in text
        assert "state-good" in text
        assert "<dt>suite</dt><dd>console</dd>" in text
        assert "GatewayService/Complete" in text

        # A failed request's page; unknown ids are 404.
        failed_page = await admin.get("/console/logs/req-down-1")
        assert failed_page.status_code == 200
        assert "UNAVAILABLE" in failed_page.text
        assert "state-bad" in failed_page.text
        missing = await admin.get("/console/logs/no-such-request")
        assert missing.status_code == 404
        assert "REQUEST_LOG_ENTRY_NOT_FOUND" in missing.text

    # A viewer of the tenant reads the log too.
    async with signed_in(running.base_url, await _viewer_key(running)) as viewer:
        page = await viewer.get("/console/logs")
        assert page.status_code == 200
        assert len(_request_ids(page.text)) == 3

    # Another tenant's key sees none of it, even by the admin's own links.
    async with signed_in(running.base_url, await _key_of_new_tenant(running, "other")) as other:
        page = await other.get("/console/logs")
        assert page.status_code == 200
        assert _request_ids(page.text) == []
        assert "No logged request matches" in page.text
        for request_id in ("req-chat-1", "req-down-1"):
            assert (await other.get(f"/console/logs/{request_id}")).status_code == 404
        hinted = await other.get(_detail_href((await _admin_list(running)), "req-chat-1"))
        assert hinted.status_code == 404
        assert "bob@example.com" not in hinted.text
        assert "[EMAIL]" not in hinted.text


async def _admin_list(running: Running) -> str:
    async with signed_in(running.base_url, running.admin_key) as client:
        return (await client.get("/console/logs")).text


async def test_models_page_shows_the_catalog_health_and_live_latency(running: Running) -> None:
    await _complete(running, "req-1", "chat", "How are you?")
    async with signed_in(running.base_url, await _viewer_key(running)) as viewer:
        page = await viewer.get("/console/models")
        assert page.status_code == 200, page.text
        text = page.text
        for name in ("chat", "chat-b", "down"):
            assert f"<td><code>{name}</code></td>" in text
        assert '<span class="chip">chat</span>' in text
        assert "1 USD / 2 USD" in text
        assert "3 USD / 4 USD" in text
        assert "100,000" in text
        assert re.search(
            r"<code>triton-0</code></td>\s*<td>triton</td>\s*<td><span "
            r'class="state state-good">healthy</span>',
            text,
        ), text
        assert re.search(
            r"<code>down-0</code></td>\s*<td>triton</td>\s*<td><span "
            r'class="state state-bad">unhealthy</span>',
            text,
        ), text
        # chat's backend served a request: the router learns its time to first token from the
        # gateway's outcome report.
        latency = re.compile(r"<code>triton-0</code></td>\s*<td class=\"num\">([^<]+)</td>")
        for _ in range(100):
            row = latency.search(text)
            if row is not None and row.group(1).endswith("ms"):
                break
            await asyncio.sleep(0.05)
            text = (await viewer.get("/console/models")).text
        assert row is not None, text
        assert row.group(1).endswith("ms"), text
        assert 'role="img"' in text  # the latency chart
        assert "chat / triton-0" in text


async def test_alerts_page_lists_the_tenants_alerts(running: Running) -> None:
    store = SqlEvaluationStore.from_url(f"sqlite+aiosqlite:///{running.data / 'evaluation.db'}")
    try:
        await store.create_alert(
            "default",
            NewQualityAlert(
                prompt="ask",
                prompt_version=1,
                scorer="helpfulness",
                detector="cusum",
                baseline_mean=0.9,
                observed_mean=0.6,
                sample_count=40,
            ),
        )
    finally:
        await store.close()
    async with signed_in(running.base_url, await _viewer_key(running)) as viewer:
        page = await viewer.get("/console/alerts")
        assert page.status_code == 200, page.text
        assert 'href="/console/prompts/ask/versions/1">ask@1</a>' in page.text
        for text in ("helpfulness", "cusum", "0.9", "0.6", "-0.3", "40", "firing"):
            assert text in page.text
        resolved = await viewer.get("/console/alerts", params={"state": "resolved"})
        assert resolved.status_code == 200
        assert "helpfulness" not in resolved.text
        other_prompt = await viewer.get("/console/alerts", params={"prompt": "other"})
        assert "helpfulness" not in other_prompt.text
        bad = await viewer.get("/console/alerts", params={"state": "sleeping"})
        assert bad.status_code == 400
        assert 'aria-invalid="true" aria-describedby="f-state-error"' in bad.text
    async with signed_in(running.base_url, await _key_of_new_tenant(running, "other")) as other:
        page = await other.get("/console/alerts")
        assert page.status_code == 200
        assert "helpfulness" not in page.text
        assert "No quality alert has been raised" in page.text


async def test_alerts_page_says_so_without_evaluation_service(
    without_evaluation: Running,
) -> None:
    async with signed_in(without_evaluation.base_url, without_evaluation.admin_key) as client:
        page = await client.get("/console/alerts")
        assert page.status_code == 503
        assert "SERVICE_NOT_DEPLOYED" in page.text
        assert "EvaluationService" in page.text
        assert (await client.get("/console/logs")).status_code == 200
        assert (await client.get("/console/models")).status_code == 200


def test_search_links_keep_the_filters() -> None:
    search = logs.LogSearch.of({"model": "chat", "status": "ok", "page_token": "t1", "prompt": ""})
    assert search.status == "OK"
    url = urllib.parse.urlsplit(search.link(page_token="t2"))
    assert url.path == "/console/logs"
    query = urllib.parse.parse_qs(url.query)
    assert query == {"model": ["chat"], "status": ["OK"], "page_token": ["t2"]}

"""The console's sign-in, prompts pages and playground against a real platform (SQLite, API
keys, a stand-in Triton for the model): the session cookie and security headers, a revoked
key ending the session, the list, a version, a diff by version or label, label history, a
promotion that expects where the label was (and is refused when someone moved it meanwhile),
a rollback, a viewer's page without actions and its forged POSTs refused, the playground's
field errors from PromptService, its answer collected into the page and streamed as events."""

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc

from services.common.clients import api_key_metadata, create_channel
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.console import csrf_of, signed_in
from tests.support.fake_triton import FakeTriton

if TYPE_CHECKING:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceStub

gs = gateway_service_pb2
psb = prompt_service_pb2
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
"""
ASK = """
name: ask
description: Answers a question briefly.
messages:
  - {role: system, content: Be brief.}
  - {role: user, content: "{{ question }} (in {{ words }} words)"}
variables:
  - {name: question, type: string, required: true, max_length: 200}
  - {name: words, type: integer, required: true}
"""
ASK_V2 = ASK.replace("Be brief.", "Be very brief.")


@dataclass
class Running:
    platform: Platform
    base_url: str
    admin_key: str
    gateway: GatewayStub
    prompts: PromptStub
    triton: FakeTriton

    async def key(self, role: gateway_pb2.Role) -> tuple[str, str]:
        """A new key of the development tenant with `role`: (id, secret)."""
        created = await self.gateway.CreateApiKey(
            gs.CreateApiKeyRequest(tenant_id="default", display_name="console", role=role)
        )
        return created.key.id, created.secret


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    async with FakeTriton(reply=[" Paris", " is", " the", " capital", "."]) as triton:
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text(CATALOG.format(triton=triton.address))
        settings = PlatformSettings.model_validate(
            {
                "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
                "services": ["prompt", "router", "inference", "gateway"],
                "server": {"port": 0, "grace_seconds": 1},
                "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}"},
                "gateway": {
                    "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}",
                    "request_log": {"max_delay_seconds": 0.01},
                },
                "router": {"catalog_file": str(catalog)},
                "inference": {
                    "triton": {"launch": False},
                    "models": [
                        {
                            "name": "chat",
                            "backends": [
                                {
                                    "id": "triton-0",
                                    "endpoint": triton.address,
                                    "triton_model": "zero_llm",
                                }
                            ],
                            "chat_template": "builtin:chatml",
                        }
                    ],
                },
            }
        )
        platform = await start_platform(settings)
        assert platform.tenants is not None
        assert platform.http_port is not None
        dev = await ensure_dev_credentials(platform.tenants, tmp_path / "dev-key")
        channel = create_channel(platform.address, metadata=api_key_metadata(dev.secret))
        folder = tmp_path / "prompts"
        folder.mkdir()
        (folder / "ask.yaml").write_text(ASK)
        assert (await prompts_cli.seed_prompts(channel, folder)).failures == 0
        (folder / "ask.yaml").write_text(ASK_V2)
        pushed = await prompts_cli.seed_prompts(channel, folder)
        assert pushed.failures == 0, pushed.lines
        try:
            yield Running(
                platform=platform,
                base_url=f"http://127.0.0.1:{platform.http_port}",
                admin_key=dev.secret,
                gateway=gateway_service_pb2_grpc.GatewayServiceStub(channel),
                prompts=prompt_service_pb2_grpc.PromptServiceStub(channel),
                triton=triton,
            )
        finally:
            await channel.close(None)
            await platform.stop(grace=1)


def text_of(page: httpx.Response) -> str:
    """A page's text without tags, whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))


async def labels_of(running: Running) -> dict[str, int]:
    prompt = (await running.prompts.GetPrompt(psb.GetPromptRequest(name="ask"))).prompt
    return dict(prompt.labels)


async def test_sign_in_session_cookie_headers_and_sign_out(running: Running) -> None:
    async with httpx.AsyncClient(base_url=running.base_url) as client:
        away = await client.get("/console/prompts/ask")
        assert away.status_code == 303
        assert away.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fprompts%2Fask"
        refused = await client.post("/console/sign-in", data={"api_key": "gk_wrong"})
        assert refused.status_code == 401
        assert "This key was refused" in refused.text
        assert "genai_console" not in client.cookies
        signed = await client.post(
            "/console/sign-in", data={"api_key": running.admin_key, "next": "/console/prompts/ask"}
        )
        assert signed.status_code == 303
        assert signed.headers["location"] == "/console/prompts/ask"
        cookie = signed.headers["set-cookie"].lower()
        for attribute in ("httponly", "samesite=strict", "path=/console", "max-age=28800"):
            assert attribute in cookie, cookie
        assert running.admin_key.lower() not in cookie  # sealed, not carried in the clear
        page = await client.get("/console/prompts/ask")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "no-store"
        # An open redirect is not possible through `next`.
        other = await client.post(
            "/console/sign-in", data={"api_key": running.admin_key, "next": "//evil.example/"}
        )
        assert other.headers["location"] == "/console/prompts"
        out = await client.post("/console/sign-out")
        assert out.status_code == 303
        assert (await client.get("/console/prompts")).status_code == 303
    # A tampered cookie is no session.
    async with httpx.AsyncClient(
        base_url=running.base_url, cookies={"genai_console": "AQ" + "x" * 80}
    ) as client:
        assert (await client.get("/console/prompts")).status_code == 303


async def test_a_revoked_key_ends_its_session(running: Running) -> None:
    key_id, secret = await running.key(gateway_pb2.ROLE_MEMBER)
    async with signed_in(running.base_url, secret) as client:
        assert (await client.get("/console/prompts")).status_code == 200
        await running.gateway.RevokeApiKey(gs.RevokeApiKeyRequest(id=key_id))
        ended = await client.get("/console/prompts")
        assert ended.status_code == 303
        assert ended.headers["location"].startswith("/console/sign-in?")
        assert "genai_console" not in client.cookies
        told = await client.get(ended.headers["location"])
        assert "Your session ended: its API key was revoked" in told.text
    async with httpx.AsyncClient(base_url=running.base_url) as client:
        # The sign-in page says only what the console says: not a message from the address.
        page = await client.get("/console/sign-in?why=Enter+your+key+at+evil.example")
        assert "evil.example" not in page.text


async def test_list_version_diff_and_history(running: Running) -> None:
    async with signed_in(running.base_url, running.admin_key) as client:
        listed = text_of(await client.get("/console/prompts"))
        assert "ask Answers a question briefly. v2 production → v1" in listed
        version = await client.get("/console/prompts/ask/versions/2")
        page = text_of(version)
        assert "Be very brief." in page
        assert "question string yes" in page
        assert 'value="production@1"' in version.text  # the promotion expects production at v1
        by_label = await client.get("/console/prompts/ask/diff?from=production&to=2")
        assert by_label.status_code == 200
        assert '<td class="del">' in by_label.text
        assert "Be brief." in by_label.text
        assert "Be very brief." in by_label.text
        assert "messages[0].content" in by_label.text
        bad = await client.get("/console/prompts/ask/diff?from=9&to=nope")
        assert bad.status_code == 400
        assert "&#39;9&#39; is neither a version (1 to 2) nor a label" in bad.text
        assert 'aria-invalid="true" aria-describedby="to-error"' in bad.text
        history = text_of(await client.get("/console/prompts/ask/labels"))
        assert "production created — v1" in history
        missing = await client.get("/console/prompts/nothing-here")
        assert missing.status_code == 404
        assert "PROMPT_NOT_FOUND" in missing.text


async def test_promote_expects_where_the_label_was_then_rolls_back(running: Running) -> None:
    async with signed_in(running.base_url, running.admin_key) as client:
        page = await client.get("/console/prompts/ask/versions/2")
        form = {"csrf_token": csrf_of(page), "version": "2", "label": "production@1"}
        # Someone else moves production first: the page's promotion no longer applies.
        await running.prompts.SetLabel(
            psb.SetLabelRequest(prompt="ask", label="production", version=2, reason="other")
        )
        await running.prompts.SetLabel(
            psb.SetLabelRequest(prompt="ask", label="production", version=1, reason="back")
        )
        await running.prompts.SetLabel(
            psb.SetLabelRequest(prompt="ask", label="production", version=2, reason="again")
        )
        stale = await client.post("/console/prompts/ask/labels/set", data=form)
        assert stale.status_code == 409, text_of(stale)
        assert 'role="alert"' in stale.text
        assert "production" in text_of(stale)
        await running.prompts.SetLabel(
            psb.SetLabelRequest(prompt="ask", label="production", version=1, reason="reset")
        )
        moved = await client.post(
            "/console/prompts/ask/labels/set", data={**form, "reason": "looks better"}
        )
        assert moved.status_code == 303
        assert moved.headers["location"].startswith("/console/prompts/ask/versions/2?done=")
        assert await labels_of(running) == {"production": 2}
        done = await client.get(moved.headers["location"])
        assert "Label production now points to version 2." in text_of(done)
        history = await client.get("/console/prompts/ask/labels")
        assert "looks better" in history.text
        rolled = await client.post(
            "/console/prompts/ask/labels/rollback",
            data={"csrf_token": csrf_of(history), "label": "production", "expected_version": "2"},
        )
        assert rolled.status_code == 303
        assert await labels_of(running) == {"production": 1}


async def test_a_viewer_sees_no_actions_and_its_forged_posts_are_refused(
    running: Running,
) -> None:
    _, viewer = await running.key(gateway_pb2.ROLE_VIEWER)
    async with signed_in(running.base_url, viewer) as client:
        page = await client.get("/console/prompts/ask/versions/2")
        assert page.status_code == 200
        assert "Point label at" not in page.text
        assert "may view but not move labels" in page.text
        history = await client.get("/console/prompts/ask/labels")
        assert "Roll back" not in history.text
        playground = await client.get("/console/prompts/ask/playground?version=2")
        assert ">Run</button>" not in playground.text
        token = csrf_of(page)
        rendered = await client.post(
            "/console/prompts/ask/playground",
            data={
                "csrf_token": token,
                "version": "2",
                "do": "render",
                "var.question": "Capital of France?",
                "var.words": "3",
            },
        )
        assert rendered.status_code == 200  # a viewer may render
        assert "Capital of France? (in 3 words)" in rendered.text
        for path, form in (
            ("/console/prompts/ask/labels/set", {"version": "2", "label": "production@1"}),
            ("/console/prompts/ask/labels/rollback", {"label": "production"}),
            ("/console/prompts/ask/playground", {"version": "2", "do": "run"}),
            ("/console/prompts/ask/playground/stream", {"version": "2"}),
        ):
            forged = await client.post(path, data={**form, "csrf_token": token})
            assert forged.status_code == 403, (path, forged.status_code)
            assert "needs the member role; you are a viewer" in text_of(forged)
    async with signed_in(running.base_url, running.admin_key) as client:
        without = await client.post(
            "/console/prompts/ask/labels/set", data={"version": "2", "label": "production@1"}
        )
        assert without.status_code == 403
        assert "CSRF" in without.text
    assert await labels_of(running) == {"production": 1}
    assert running.triton.prompts == []  # nothing ran


async def test_playground_field_errors_answer_and_stream(running: Running) -> None:
    async with signed_in(running.base_url, running.admin_key) as client:
        page = await client.get("/console/prompts/ask/playground?version=2")
        token = csrf_of(page)
        base = {"csrf_token": token, "version": "2", "model": "chat"}
        bad = await client.post(
            "/console/prompts/ask/playground",
            data={**base, "do": "render", "var.question": "", "var.words": "many"},
        )
        assert bad.status_code == 400
        assert 'id="variables-words-error"' in bad.text
        assert 'aria-invalid="true" aria-describedby="variables-words-error"' in bad.text
        assert 'id="variables-question-error"' in bad.text
        rendered = await client.post(
            "/console/prompts/ask/playground",
            data={**base, "do": "render", "var.question": "Capital of France?", "var.words": "3"},
        )
        assert rendered.status_code == 200
        assert "Capital of France? (in 3 words)" in rendered.text
        ran = await client.post(
            "/console/prompts/ask/playground",
            data={**base, "do": "run", "var.question": "Capital of France?", "var.words": "3"},
        )
        assert ran.status_code == 200, text_of(ran)
        answer = text_of(ran)
        assert "Paris is the capital." in answer
        assert "chat (triton-0)" in answer
        request_id = re.search(r'href="/console/logs/([^"]+)"', ran.text)
        assert request_id is not None
        streamed = await client.post(
            "/console/prompts/ask/playground/stream",
            data={**base, "var.question": "Capital of France?", "var.words": "3"},
        )
        assert streamed.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line[len("data: ") :])
            for line in streamed.text.splitlines()
            if line.startswith("data: ")
        ]
        kinds = [event["event"] for event in events]
        assert kinds[0] == "start"
        assert kinds[-1] == "final"
        assert "".join(e["text"] for e in events if e["event"] == "delta") == (
            " Paris is the capital."
        )
        final = events[-1]
        assert final["model"] == "chat"
        assert final["log_url"] == f"/console/logs/{final['request_id']}"
        assert final["output_tokens"] > 0
        refused = await client.post(
            "/console/prompts/ask/playground/stream",
            data={**base, "var.question": "Capital?", "var.words": "x"},
        )
        error = json.loads(refused.text.split("data: ", 1)[1])
        assert error["event"] == "error"
        assert error["code"] == "INVALID_ARGUMENT"
        assert "variables.words" in error["field_errors"]

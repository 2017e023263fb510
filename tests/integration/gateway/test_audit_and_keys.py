"""Roles, keys and the audit log through the real gRPC API of one platform (SQLite, no model
backend needed): a tenant admin stays inside its tenant, grants at most its own role, and every
admin action and protected label move lands in the audit log with who, role, tenant, action,
target, request id and outcome, refused attempts included; keys expire and rotate with a grace
period; `genai audit` prints the log."""

import argparse
import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import field_mask_pb2

from services.common.clients import api_key_metadata, create_channel
from services.common.status import error_details
from services.common.wire import duration, timestamp
from services.gateway import audit_cli
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from services.prompt import cli as prompts_cli
from tests.support.settings import inference_without_triton, router_without_triton

if TYPE_CHECKING:
    Gateway = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    Prompts = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    Gateway = gateway_service_pb2_grpc.GatewayServiceStub
    Prompts = prompt_service_pb2_grpc.PromptServiceStub

gs = gateway_service_pb2
GATEWAY = "genai.gateway.v1.GatewayService/"
ROLES = {
    "viewer": gateway_pb2.ROLE_VIEWER,
    "member": gateway_pb2.ROLE_MEMBER,
    "tenant_admin": gateway_pb2.ROLE_TENANT_ADMIN,
    "platform_admin": gateway_pb2.ROLE_PLATFORM_ADMIN,
}
PROMPT = """
name: greet
messages:
  - role: user
    content: "Say hello to {{ who }}."
variables:
  - {name: who, type: string, required: true}
"""


class Keys:
    """A running platform, its development platform admin, and keys of two tenants."""

    def __init__(self, platform: Platform, admin: str) -> None:
        self.platform = platform
        self.admin = admin
        self.secrets: dict[tuple[str, str], str] = {}
        self.ids: dict[tuple[str, str], str] = {}
        self._channels: list[grpc.aio.Channel] = []

    def gateway(self, secret: str) -> Gateway:
        return gateway_service_pb2_grpc.GatewayServiceStub(self._channel(secret))

    def prompts(self, secret: str) -> Prompts:
        return prompt_service_pb2_grpc.PromptServiceStub(self._channel(secret))

    def of(self, tenant: str, role: str) -> str:
        return self.secrets[(tenant, role)]

    def _channel(self, secret: str) -> grpc.aio.Channel:
        channel = create_channel(self.platform.address, metadata=api_key_metadata(secret))
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[Keys]:
    settings = PlatformSettings.model_validate(
        {
            "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'prompts.db'}"},
            "gateway": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"},
            "router": router_without_triton(),
            "inference": inference_without_triton(),
        }
    )
    platform = await start_platform(settings)
    assert platform.tenants is not None
    dev = await ensure_dev_credentials(platform.tenants, tmp_path / "dev-key")
    made = Keys(platform, dev.secret)
    admin = made.gateway(dev.secret)
    for tenant in ("alpha", "beta"):
        await admin.CreateTenant(
            gs.CreateTenantRequest(tenant=gateway_pb2.Tenant(id=tenant)), timeout=10
        )
        for role, value in ROLES.items():
            created = await admin.CreateApiKey(
                gs.CreateApiKeyRequest(tenant_id=tenant, display_name=role, role=value),
                timeout=10,
            )
            made.secrets[(tenant, role)] = created.secret
            made.ids[(tenant, role)] = created.key.id
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "greet.yaml").write_text(PROMPT)
    channel = create_channel(
        platform.address, metadata=api_key_metadata(made.of("alpha", "member"))
    )
    report = await prompts_cli.seed_prompts(channel, folder)
    await channel.close(None)
    assert report.failures == 0, report.lines
    try:
        yield made
    finally:
        await made.close()
        await platform.stop(grace=1)


async def _status(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _audit(stub: Gateway, **filters: Any) -> list[gateway_pb2.AuditEvent]:
    response = await stub.ListAuditEvents(gs.ListAuditEventsRequest(**filters), timeout=10)
    return list(response.events)


async def test_a_tenant_admin_acts_only_inside_its_tenant_and_up_to_its_own_role(
    keys: Keys,
) -> None:
    alpha_admin = keys.gateway(keys.of("alpha", "tenant_admin"))
    tagged = (("x-request-id", "req-42"),)

    own = await alpha_admin.CreateApiKey(
        gs.CreateApiKeyRequest(tenant_id="alpha", display_name="ci", role=gateway_pb2.ROLE_MEMBER),
        metadata=tagged,
        timeout=10,
    )
    assert own.key.tenant_id == "alpha"
    assert own.key.role == gateway_pb2.ROLE_MEMBER
    assert not own.key.admin
    implicit = await alpha_admin.CreateApiKey(gs.CreateApiKeyRequest(), timeout=10)
    assert implicit.key.tenant_id == "alpha"  # empty tenant_id: the caller's

    statuses = {
        "other tenant's key": await _status(
            alpha_admin.CreateApiKey(gs.CreateApiKeyRequest(tenant_id="beta"), timeout=10)
        ),
        "a platform admin key": await _status(
            alpha_admin.CreateApiKey(
                gs.CreateApiKeyRequest(role=gateway_pb2.ROLE_PLATFORM_ADMIN), timeout=10
            )
        ),
        "a tenant": await _status(
            alpha_admin.CreateTenant(
                gs.CreateTenantRequest(tenant=gateway_pb2.Tenant(id="gamma")), timeout=10
            )
        ),
        "other tenant's keys listed": await _status(
            alpha_admin.ListApiKeys(gs.ListApiKeysRequest(tenant_id="beta"), timeout=10)
        ),
        "other tenant's key revoked": await _status(
            alpha_admin.RevokeApiKey(
                gs.RevokeApiKeyRequest(id=keys.ids[("beta", "member")]), timeout=10
            )
        ),
        "other tenant's audit log": await _status(
            alpha_admin.ListAuditEvents(gs.ListAuditEventsRequest(tenant_id="beta"), timeout=10)
        ),
    }
    assert statuses == {
        "other tenant's key": grpc.StatusCode.NOT_FOUND,
        "a platform admin key": grpc.StatusCode.PERMISSION_DENIED,
        "a tenant": grpc.StatusCode.PERMISSION_DENIED,
        "other tenant's keys listed": grpc.StatusCode.NOT_FOUND,
        "other tenant's key revoked": grpc.StatusCode.NOT_FOUND,
        "other tenant's audit log": grpc.StatusCode.NOT_FOUND,
    }
    # The beta key still works: the refused revoke changed nothing.
    beta = keys.gateway(keys.of("beta", "member"))
    await beta.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=10)

    events = await _audit(alpha_admin)
    mine = [e for e in events if e.actor == f"apikey:{keys.ids[('alpha', 'tenant_admin')]}"]
    summary = [(e.action.removeprefix(GATEWAY), e.outcome) for e in mine]
    assert summary == [  # newest first; reads are not audited, refused writes are
        ("RevokeApiKey", "NOT_FOUND"),
        ("CreateTenant", "PERMISSION_DENIED"),
        ("CreateApiKey", "PERMISSION_DENIED"),
        ("CreateApiKey", "NOT_FOUND"),  # beta's: in alpha's log, where the actor is
        ("CreateApiKey", "OK"),
        ("CreateApiKey", "OK"),
    ]
    created = mine[-1]
    assert (created.tenant_id, created.actor_tenant_id) == ("alpha", "alpha")
    assert created.actor_role == gateway_pb2.ROLE_TENANT_ADMIN
    assert created.target == f"api_key/{own.key.id}"
    assert created.request_id == "req-42"
    assert created.time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(minutes=1)
    assert "cannot grant the platform_admin role" in mine[2].detail
    # The attempts on beta's tenant are in alpha's log, not in beta's.
    assert all(e.tenant_id == "alpha" for e in events)
    platform_admin = keys.gateway(keys.admin)
    beta_log = await _audit(platform_admin, tenant_id="beta")
    assert {e.actor for e in beta_log} == {f"apikey:{keys.admin.split('_')[1]}"}
    assert (await _audit(platform_admin, tenant_id="alpha", outcome="PERMISSION_DENIED")) == [
        mine[1],
        mine[2],
    ]
    # Viewers and members read no audit log at all.
    for role in ("viewer", "member"):
        stub = keys.gateway(keys.of("alpha", role))
        denied = await _status(stub.ListAuditEvents(gs.ListAuditEventsRequest(), timeout=10))
        assert denied == grpc.StatusCode.PERMISSION_DENIED


async def test_a_protected_label_moves_only_for_a_tenant_admin_and_every_attempt_is_audited(
    keys: Keys,
) -> None:
    admin = keys.prompts(keys.of("alpha", "tenant_admin"))
    member = keys.prompts(keys.of("alpha", "member"))
    protect = prompt_service_pb2.UpdatePromptRequest(
        prompt=prompt_pb2.Prompt(name="greet", protected_labels=["production"]),
        update_mask=field_mask_pb2.FieldMask(paths=["protected_labels"]),
    )
    assert await _status(member.UpdatePrompt(protect, timeout=10)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    await admin.UpdatePrompt(protect, timeout=10)

    move = prompt_service_pb2.SetLabelRequest(prompt="greet", label="production", version=1)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await member.SetLabel(move, timeout=10)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = error_details(refused.value)
    assert details.metadata["required_role"] == "tenant_admin"
    assert details.metadata["role"] == "member"
    # The role suffices; the gate (none configured) then refuses, and that is audited too.
    assert await _status(admin.SetLabel(move, timeout=10)) == grpc.StatusCode.FAILED_PRECONDITION
    # An unprotected label is a member's to move, and not audited.
    staging = prompt_service_pb2.SetLabelRequest(prompt="greet", label="staging", version=1)
    await member.SetLabel(staging, timeout=10)

    events = await _audit(keys.gateway(keys.of("alpha", "tenant_admin")))
    prompt_events = [e for e in events if e.action.startswith("genai.prompt.v1.")]
    assert [(e.action.rsplit("/", 1)[1], e.actor_role, e.outcome) for e in prompt_events] == [
        ("SetLabel", gateway_pb2.ROLE_TENANT_ADMIN, "FAILED_PRECONDITION"),
        ("SetLabel", gateway_pb2.ROLE_MEMBER, "PERMISSION_DENIED"),
        ("UpdatePrompt", gateway_pb2.ROLE_TENANT_ADMIN, "OK"),
        ("UpdatePrompt", gateway_pb2.ROLE_MEMBER, "PERMISSION_DENIED"),
    ]
    assert prompt_events[0].target == "prompt/greet/label/production"
    assert prompt_events[2].target == "prompt/greet"


async def test_keys_expire_and_rotate_with_a_grace_period(keys: Keys) -> None:
    admin = keys.gateway(keys.of("alpha", "tenant_admin"))
    soon = datetime.now(UTC) + timedelta(seconds=2)
    temporary = await admin.CreateApiKey(
        gs.CreateApiKeyRequest(display_name="temp", expire_time=timestamp(soon)), timeout=10
    )
    assert temporary.key.expire_time.ToDatetime(tzinfo=UTC) == soon.replace(
        microsecond=soon.microsecond
    )
    user = keys.gateway(temporary.secret)
    await user.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=10)
    past = await _status(
        admin.CreateApiKey(
            gs.CreateApiKeyRequest(expire_time=timestamp(datetime.now(UTC) - timedelta(hours=1))),
            timeout=10,
        )
    )
    assert past == grpc.StatusCode.INVALID_ARGUMENT

    key_id = keys.ids[("alpha", "member")]
    old = keys.of("alpha", "member")
    rotated = await admin.RotateApiKey(
        gs.RotateApiKeyRequest(id=key_id, grace_period=duration(3600)), timeout=10
    )
    assert rotated.key.id == key_id
    assert rotated.secret != old
    assert rotated.key.HasField("previous_secret_expire_time")
    for secret in (old, rotated.secret):
        await keys.gateway(secret).ListRequestLogs(gs.ListRequestLogsRequest(), timeout=10)
    again = await admin.RotateApiKey(
        gs.RotateApiKeyRequest(id=key_id, grace_period=duration(0)), timeout=10
    )
    for secret, expected in (
        (old, grpc.StatusCode.UNAUTHENTICATED),
        (rotated.secret, grpc.StatusCode.UNAUTHENTICATED),
        (again.secret, grpc.StatusCode.OK),
    ):
        stub = keys.gateway(secret)
        assert await _status(stub.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=10)) == (
            expected
        )
    too_long = await _status(
        admin.RotateApiKey(
            gs.RotateApiKeyRequest(id=key_id, grace_period=duration(8 * 86400)), timeout=10
        )
    )
    assert too_long == grpc.StatusCode.INVALID_ARGUMENT

    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await user.ListRequestLogs(gs.ListRequestLogsRequest(), timeout=10)
    assert expired.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired at" in (expired.value.details() or "")


async def test_genai_audit_prints_the_log_as_a_table_and_as_json(
    keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    admin_secret = keys.of("alpha", "tenant_admin")
    await keys.gateway(admin_secret).RevokeApiKey(
        gs.RevokeApiKeyRequest(id=keys.ids[("alpha", "viewer")]), timeout=10
    )
    parser = argparse.ArgumentParser()
    audit_cli.add_commands(parser, default_target=keys.platform.address)
    args = parser.parse_args(["--api-key", admin_secret, "--action", "RevokeApiKey"])
    assert await audit_cli.run_async(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "ACTOR"]
    assert len(lines) == 2, lines
    assert "GatewayService/RevokeApiKey" in lines[1]
    assert f"api_key/{keys.ids[('alpha', 'viewer')]}" in lines[1]
    assert "OK" in lines[1]

    args = parser.parse_args(["--api-key", admin_secret, "--json", "--outcome", "ok"])
    assert await audit_cli.run_async(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out
    assert all('"outcome":"OK"' in line for line in out)

    member = parser.parse_args(["--api-key", keys.of("alpha", "member")])
    assert await audit_cli.run_async(member) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err


async def test_admin_writes_with_a_request_id_happen_once_and_the_kept_secret_is_sealed(
    keys: Keys, tmp_path: Path
) -> None:
    import sqlite3

    from services.common import reasons

    admin_secret = keys.of("alpha", "tenant_admin")
    admin = keys.gateway(admin_secret)
    request = gs.CreateApiKeyRequest(display_name="deploy-bot", request_id="create-deploy-bot")
    first = await admin.CreateApiKey(request, timeout=10)
    again = await admin.CreateApiKey(request, timeout=10)
    assert (again.key.id, again.secret) == (first.key.id, first.secret)
    listed = await admin.ListApiKeys(gs.ListApiKeysRequest(page_size=100), timeout=10)
    assert [k.id for k in listed.keys if k.display_name == "deploy-bot"] == [first.key.id]

    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await admin.CreateApiKey(
            gs.CreateApiKeyRequest(display_name="other", request_id="create-deploy-bot"),
            timeout=10,
        )
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(reused.value).reason == reasons.REQUEST_ID_REUSED
    # Another caller's request id is its own.
    platform_admin = keys.gateway(keys.admin)
    theirs = await platform_admin.CreateApiKey(
        gs.CreateApiKeyRequest(
            tenant_id="alpha", display_name="deploy-bot", request_id="create-deploy-bot"
        ),
        timeout=10,
    )
    assert theirs.key.id != first.key.id

    tenant = gs.CreateTenantRequest(tenant=gateway_pb2.Tenant(id="gamma"), request_id="t-gamma")
    made = await platform_admin.CreateTenant(tenant, timeout=10)
    assert (await platform_admin.CreateTenant(tenant, timeout=10)) == made
    without_id = gs.CreateTenantRequest(tenant=gateway_pb2.Tenant(id="gamma"))
    assert await _status(platform_admin.CreateTenant(without_id, timeout=10)) == (
        grpc.StatusCode.ALREADY_EXISTS
    )

    rotate = gs.RotateApiKeyRequest(id=first.key.id, request_id="rotate-1")
    rotated = await admin.RotateApiKey(rotate, timeout=10)
    assert (await admin.RotateApiKey(rotate, timeout=10)).secret == rotated.secret

    with sqlite3.connect(tmp_path / "gateway.db") as db:
        kept = [bytes(row[0]) for row in db.execute("SELECT outcome FROM gateway_idempotency")]
    assert len([k for k in kept if k]) >= 4
    for secret in (first.secret, theirs.secret, rotated.secret):
        assert all(secret.encode() not in blob for blob in kept)

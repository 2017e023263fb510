"""Tenant rules, table-driven: ids, display names and quotas, each violation naming its field;
and API key secrets: their shape, their hash, and what `parse_secret` accepts."""

import hashlib
import re
from datetime import UTC, datetime

import pytest

from services.common.errors import FieldViolation, InvalidArgument
from services.common.policy import Role
from services.gateway.core.tenants import (
    MAX_COST_MICROS,
    MAX_PER_MINUTE,
    UNLIMITED,
    ApiKey,
    TenantQuota,
    check_new_api_key,
    check_new_tenant,
    check_quota_update,
    new_api_key_secret,
    parse_secret,
    secret_hash,
    secret_matches,
)


@pytest.mark.parametrize(
    ("tenant_id", "valid"),
    [
        ("acme", True),
        ("a", True),
        ("0", True),
        ("acme-eu_2", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("Acme", False),
        ("acme corp", False),
        ("acme.eu", False),
        ("acmé", False),
        ("acme\n", False),
        ("tenants/acme", False),
    ],
)
def test_tenant_ids(tenant_id: str, valid: bool) -> None:
    if valid:
        check_new_tenant(tenant_id, "", UNLIMITED)
        return
    with pytest.raises(InvalidArgument) as raised:
        check_new_tenant(tenant_id, "", UNLIMITED)
    assert [v.field for v in raised.value.violations] == ["tenant.id"]
    assert raised.value.reason == "FIELD_VIOLATION"


@pytest.mark.parametrize(
    ("display_name", "valid"),
    [("", True), ("Acme Corp", True), ("é" * 128, True), ("x" * 129, False)],
)
def test_display_names_have_at_most_128_characters(display_name: str, valid: bool) -> None:
    if valid:
        check_new_api_key("acme", display_name)
        return
    with pytest.raises(InvalidArgument) as raised:
        check_new_api_key("acme", display_name)
    assert raised.value.violations == (
        FieldViolation("display_name", "must be at most 128 characters, not 129"),
    )


@pytest.mark.parametrize(
    ("quota", "fields"),
    [
        (TenantQuota(), []),
        (TenantQuota(60, 10_000, 5_000_000), []),
        (TenantQuota(MAX_PER_MINUTE, MAX_PER_MINUTE, MAX_COST_MICROS), []),
        (TenantQuota(requests_per_minute=-1), ["quota.requests_per_minute"]),
        (TenantQuota(tokens_per_minute=MAX_PER_MINUTE + 1), ["quota.tokens_per_minute"]),
        (TenantQuota(cost_per_day_micros=-5), ["quota.cost_per_day"]),
        (
            TenantQuota(-1, -1, MAX_COST_MICROS + 1),
            ["quota.requests_per_minute", "quota.tokens_per_minute", "quota.cost_per_day"],
        ),
    ],
)
def test_quota_limits_are_non_negative_and_bounded(quota: TenantQuota, fields: list[str]) -> None:
    if not fields:
        check_quota_update("acme", quota)
        return
    with pytest.raises(InvalidArgument) as raised:
        check_quota_update("acme", quota)
    assert [v.field for v in raised.value.violations] == fields


def test_every_invalid_field_of_a_new_tenant_is_named_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        check_new_tenant("Bad Id", "n" * 200, TenantQuota(tokens_per_minute=-3))
    assert [v.field for v in raised.value.violations] == [
        "tenant.id",
        "tenant.display_name",
        "tenant.quota.tokens_per_minute",
    ]
    assert "tenant.id: must be 1 to 64 characters" in raised.value.message
    with pytest.raises(InvalidArgument) as raised:
        check_new_api_key("", "")
    assert raised.value.violations == (FieldViolation("tenant_id", "is required"),)


def test_a_new_secret_has_its_public_id_inside_and_only_its_hash_is_kept() -> None:
    key_id, secret, hashed = new_api_key_secret()
    assert re.fullmatch(r"[a-z2-7]{12}", key_id)
    prefix, middle, random = secret.split("_", 2)
    assert (prefix, middle) == ("gk", key_id)
    assert len(random) >= 43  # 32 bytes, URL-safe base64
    assert hashed == hashlib.sha256(secret.encode()).hexdigest() == secret_hash(secret)
    assert parse_secret(secret) == key_id
    assert secret_matches(secret, hashed)
    assert not secret_matches(secret + "x", hashed)
    assert not secret_matches(secret, secret_hash("gk_" + key_id + "_" + "A" * 43))


def test_secrets_are_unique() -> None:
    drawn = [new_api_key_secret() for _ in range(500)]
    assert len({key_id for key_id, _, _ in drawn}) == 500
    assert len({secret for _, secret, _ in drawn}) == 500


RANDOM = "A1b2-_" * 8  # 48 URL-safe characters


@pytest.mark.parametrize(
    ("secret", "key_id"),
    [
        (f"gk_abcdefgh2345_{RANDOM}", "abcdefgh2345"),
        (f"gk_abcdefgh2345_{RANDOM[:43]}", "abcdefgh2345"),
        (f"gk_abcdefgh2345_{RANDOM[:42]}", None),  # too short to hold 32 bytes
        (f"gk_abcdefgh234_{RANDOM}", None),  # an 11-character id
        (f"gk_ABCDEFGH2345_{RANDOM}", None),
        (f"gk_abcdefgh2341_{RANDOM}", None),  # 1 is not base32
        (f"sk_abcdefgh2345_{RANDOM}", None),
        (f"gk-abcdefgh2345-{RANDOM}", None),
        (f"gk_abcdefgh2345_{RANDOM}=", None),
        (f"gk_abcdefgh2345_{RANDOM}\n", None),
        (f"gk_abcdefgh2345_{RANDOM * 3}", None),  # longer than any secret
        ("", None),
        ("gk_", None),
    ],
)
def test_parse_secret_accepts_only_the_shape_of_a_secret(secret: str, key_id: str | None) -> None:
    assert parse_secret(secret) == key_id


def test_a_key_is_revoked_once_it_has_a_revoke_time() -> None:
    now = datetime.now(UTC)
    key = ApiKey("abcdefgh2345", "acme", "ci", role=Role.MEMBER, create_time=now)
    assert not key.revoked
    assert ApiKey("abcdefgh2345", "acme", "ci", Role.MEMBER, now, revoke_time=now).revoked
    assert not key.admin
    assert ApiKey("abcdefgh2345", "acme", "ci", Role.TENANT_ADMIN, now).admin
    assert not key.expired(now)
    assert ApiKey("abcdefgh2345", "acme", "ci", Role.MEMBER, now, expire_time=now).expired(now)

"""Tenants, their quotas and their API keys: the domain types and the rules they follow.

An API key's secret is `gk_<id>_<random>`: `id` is the key's public id (12 characters of
`a-z 2-7`, lowercase base32, 60 random bits), `random` is 32 bytes from `secrets`, URL-safe
base64 (43 characters). The platform stores only the secret's SHA-256 (hex) and compares hashes
in constant time; the id in the secret finds the stored key with one indexed read.
"""

import base64
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, NamedTuple, Protocol

from services.common.audit import AuditPage, AuditQuery
from services.common.errors import FieldViolation, InvalidArgument
from services.common.policy import ASSIGNABLE_ROLES, Role

TENANT_ID_PATTERN: Final = re.compile(r"[a-z0-9_-]{1,64}")
"""Tenant ids: 1 to 64 characters of `a-z 0-9 - _`."""
MAX_DISPLAY_NAME: Final = 128
"""Display names of tenants and keys: at most this many characters."""
MAX_PER_MINUTE: Final = 2**31 - 1
"""Per-minute limits are int32 in the contract."""
MAX_COST_MICROS: Final = 10**15
"""The largest cost limit, in micros (USD 1e9 a day): exact in every store, Redis's Lua
numbers (doubles) included."""

SECRET_PREFIX: Final = "gk"
"""First part of every API key secret, so that secret scanners recognise them."""
KEY_ID_PATTERN: Final = re.compile(r"[a-z2-7]{12}")
"""Public ids of API keys."""
SECRET_RANDOM_BYTES: Final = 32
"""Random bytes in a secret."""
DEFAULT_ROTATION_GRACE: Final = timedelta(hours=24)
"""How long a rotated key's old secret keeps working unless the rotation says otherwise."""
MAX_ROTATION_GRACE: Final = timedelta(days=7)
"""The longest grace period of a rotation."""
_SECRET_PATTERN: Final = re.compile(
    rf"{SECRET_PREFIX}_(?P<id>[a-z2-7]{{12}})_[A-Za-z0-9_-]{{43,86}}"
)


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """A tenant's limits; 0 in a field means no limit."""

    requests_per_minute: int = 0
    """Requests per rolling minute."""
    tokens_per_minute: int = 0
    """Input plus output tokens per rolling minute."""
    cost_per_day_micros: int = 0
    """Cost per UTC day, in millionths of a USD."""


UNLIMITED: Final = TenantQuota()
"""The quota without limits."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """An isolated customer of the platform."""

    id: str
    display_name: str
    quota: TenantQuota
    create_time: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A credential of one tenant (never its secret)."""

    id: str
    tenant_id: str
    display_name: str
    role: Role
    """What the key may do."""
    create_time: datetime
    revoke_time: datetime | None = None
    """When the key was revoked; None while it is valid."""
    expire_time: datetime | None = None
    """When the key stops working; None: never."""
    rotate_time: datetime | None = None
    """When its secret was last rotated; None: never."""
    previous_secret_expire_time: datetime | None = None
    """Until when the secret before the last rotation still works; None when there is none."""

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoke_time is not None

    @property
    def admin(self) -> bool:
        """Whether the key is a tenant or platform admin's (the contract's legacy `admin`)."""
        return self.role >= Role.TENANT_ADMIN

    def expired(self, now: datetime) -> bool:
        """Whether the key has expired at `now`."""
        return self.expire_time is not None and now >= self.expire_time


class StoredApiKey(NamedTuple):
    """A key as its store keeps it: the record and the hashes of the secrets it accepts."""

    key: ApiKey
    secret_hash: str
    """SHA-256 (hex) of the current secret."""
    previous_secret_hash: str = ""
    """SHA-256 (hex) of the secret before the last rotation ("" when there is none); accepted
    until `key.previous_secret_expire_time`."""

    def accepts(self, secret: str, now: datetime) -> bool:
        """Whether `secret` is one of the key's valid secrets at `now` (constant time)."""
        if secret_matches(secret, self.secret_hash):
            return True
        until = self.key.previous_secret_expire_time
        return (
            bool(self.previous_secret_hash)
            and until is not None
            and now < until
            and secret_matches(secret, self.previous_secret_hash)
        )


class TenantEventKind(enum.Enum):
    """What changed about a tenant (what other replicas' caches must drop)."""

    API_KEY_REVOKED = "api_key_revoked"
    QUOTA_CHANGED = "quota_changed"


@dataclass(frozen=True, slots=True)
class TenantEvent:
    """One committed change of the tenant feed, which every replica follows to drop what it
    cached: verified API keys (revocations) and tenants' limits (quota changes)."""

    sequence: int
    kind: TenantEventKind
    tenant_id: str
    key_id: str = ""
    """The revoked key (API_KEY_REVOKED)."""


class TenantStore(Protocol):
    """Where tenants and keys live (`services.gateway.adapters.tenant_store.SqlTenantStore`)."""

    async def create_tenant(
        self, tenant_id: str, display_name: str = "", quota: TenantQuota = UNLIMITED
    ) -> Tenant: ...
    async def get_tenant(self, tenant_id: str) -> Tenant: ...
    async def update_quota(self, tenant_id: str, quota: TenantQuota) -> Tenant: ...
    async def create_api_key(
        self,
        tenant_id: str,
        display_name: str = "",
        admin: bool = False,
        *,
        role: Role | None = None,
        expire_time: datetime | None = None,
    ) -> tuple[ApiKey, str]: ...
    async def list_api_keys(
        self, tenant_id: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[ApiKey], str]: ...
    async def revoke_api_key(self, key_id: str, *, tenant_id: str | None = None) -> ApiKey: ...
    async def rotate_api_key(
        self, key_id: str, grace: timedelta, *, tenant_id: str | None = None
    ) -> tuple[ApiKey, str]: ...
    async def find_api_key(self, key_id: str) -> StoredApiKey | None: ...
    async def list_audit_records(self, query: AuditQuery) -> AuditPage: ...
    async def last_tenant_event(self) -> int: ...
    async def tenant_events_after(self, sequence: int, limit: int = 500) -> list[TenantEvent]: ...


# ------------------------------------------------------------------------------------- rules


def tenant_id_violations(tenant_id: str, field: str = "tenant_id") -> list[FieldViolation]:
    """What is wrong with a tenant id, as violations of `field`."""
    if not tenant_id:
        return [FieldViolation(field, "is required")]
    if TENANT_ID_PATTERN.fullmatch(tenant_id) is None:
        return [FieldViolation(field, "must be 1 to 64 characters of a-z, 0-9, '-' and '_'")]
    return []


def display_name_violations(display_name: str, field: str = "display_name") -> list[FieldViolation]:
    """What is wrong with a display name, as violations of `field`."""
    if len(display_name) > MAX_DISPLAY_NAME:
        return [
            FieldViolation(
                field, f"must be at most {MAX_DISPLAY_NAME} characters, not {len(display_name)}"
            )
        ]
    return []


def quota_violations(quota: TenantQuota, field: str = "quota") -> list[FieldViolation]:
    """What is wrong with a quota, as violations of `field.<limit>`."""
    violations = []
    for name, value, maximum in (
        ("requests_per_minute", quota.requests_per_minute, MAX_PER_MINUTE),
        ("tokens_per_minute", quota.tokens_per_minute, MAX_PER_MINUTE),
        ("cost_per_day", quota.cost_per_day_micros, MAX_COST_MICROS),
    ):
        if value < 0:
            violations.append(FieldViolation(f"{field}.{name}", "must be >= 0 (0: no limit)"))
        elif value > maximum:
            violations.append(FieldViolation(f"{field}.{name}", f"must be at most {maximum:,}"))
    return violations


def check_new_tenant(tenant_id: str, display_name: str, quota: TenantQuota) -> None:
    """Raises `InvalidArgument` naming every invalid field of a tenant to create (fields of
    `CreateTenantRequest`: `tenant.id`, `tenant.display_name`, `tenant.quota.*`)."""
    _raise_if(
        [
            *tenant_id_violations(tenant_id, "tenant.id"),
            *display_name_violations(display_name, "tenant.display_name"),
            *quota_violations(quota, "tenant.quota"),
        ]
    )


def check_quota_update(tenant_id: str, quota: TenantQuota) -> None:
    """Raises `InvalidArgument` naming every invalid field of a quota change (`tenant_id`,
    `quota.*`)."""
    _raise_if([*tenant_id_violations(tenant_id), *quota_violations(quota)])


def check_new_api_key(
    tenant_id: str,
    display_name: str,
    role: Role = Role.MEMBER,
    expire_time: datetime | None = None,
    now: datetime | None = None,
) -> None:
    """Raises `InvalidArgument` naming every invalid field of a key to create (`tenant_id`,
    `display_name`, `role`, `expire_time`)."""
    violations = [*tenant_id_violations(tenant_id), *display_name_violations(display_name)]
    if role not in ASSIGNABLE_ROLES:
        violations.append(
            FieldViolation("role", "must be one of " + ", ".join(r.label for r in ASSIGNABLE_ROLES))
        )
    if expire_time is not None and now is not None and expire_time <= now:
        violations.append(FieldViolation("expire_time", "must be in the future"))
    _raise_if(violations)


def key_role(admin: bool, role: Role | None) -> Role:
    """The role of a new key: `role` when given, else tenant_admin for a legacy `admin` key,
    else member."""
    if role is not None and role is not Role.NONE:
        return role
    return Role.TENANT_ADMIN if admin else Role.MEMBER


def check_rotation_grace(grace: timedelta, field: str = "grace_period") -> None:
    """Raises `InvalidArgument` unless `grace` is in [0, `MAX_ROTATION_GRACE`]."""
    if not timedelta(0) <= grace <= MAX_ROTATION_GRACE:
        _raise_if([FieldViolation(field, f"must be in [0, {MAX_ROTATION_GRACE.days} days]")])


def _raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations=violations)


# ------------------------------------------------------------------------------------- secrets


def new_api_key_secret(key_id: str = "") -> tuple[str, str, str]:
    """A new key, or a new secret for `key_id`: `(key_id, secret, secret_hash)`. Show the
    secret once; store the hash."""
    key_id = key_id or base64.b32encode(secrets.token_bytes(8)).decode("ascii").lower()[:12]
    secret = f"{SECRET_PREFIX}_{key_id}_{secrets.token_urlsafe(SECRET_RANDOM_BYTES)}"
    return key_id, secret, secret_hash(secret)


def parse_secret(secret: str) -> str | None:
    """The key id in `secret`; None when it does not have the shape of a secret."""
    found = _SECRET_PATTERN.fullmatch(secret)
    return found["id"] if found is not None else None


def secret_hash(secret: str) -> str:
    """The SHA-256 of a secret, hex: what the platform stores instead of the secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Whether `secret` is the one whose hash is `stored_hash` (constant-time comparison)."""
    return hmac.compare_digest(secret_hash(secret), stored_hash)

"""The development tenant and key `genai serve` creates, so that a fresh machine can call the
platform at once with API keys on."""

import asyncio
import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from services.common.auth import DEFAULT_TENANT
from services.common.errors import AlreadyExists, NotFound
from services.common.policy import Role
from services.gateway.core.tenants import TenantStore, parse_secret, secret_matches

DEV_KEY_NAME: Final = "genai serve development key"


def dev_key_file() -> Path:
    """Where `genai serve` keeps the development key:
    `$XDG_DATA_HOME/genai-platform/dev-api-key` (`~/.local/share/...` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "genai-platform" / "dev-api-key"


@dataclass(frozen=True)
class DevCredentials:
    """The development tenant's platform-admin key, and whether this start created it."""

    tenant_id: str
    secret: str
    key_file: Path
    created: bool


async def ensure_dev_credentials(tenants: TenantStore, key_file: Path) -> DevCredentials:
    """Makes sure the `default` tenant exists and has a valid platform-admin key saved in
    `key_file` (mode 0600); reuses the saved key while it is valid, so restarts keep it. A
    saved key from before roles (a tenant admin) is replaced by a platform admin's."""
    try:
        await tenants.get_tenant(DEFAULT_TENANT)
    except NotFound:
        with contextlib.suppress(AlreadyExists):  # a replica starting beside this one made it
            await tenants.create_tenant(DEFAULT_TENANT, "Development tenant")
    saved = await asyncio.to_thread(_read, key_file)
    key_id = parse_secret(saved) if saved else None
    if key_id is not None:
        found = await tenants.find_api_key(key_id)
        if found is not None:
            key = found.key
            usable = (
                not key.revoked
                and key.tenant_id == DEFAULT_TENANT
                and key.role is Role.PLATFORM_ADMIN
                and not key.expired(datetime.now(UTC))
            )
            if usable and secret_matches(saved, found.secret_hash):
                return DevCredentials(DEFAULT_TENANT, saved, key_file, created=False)
    _, secret = await tenants.create_api_key(DEFAULT_TENANT, DEV_KEY_NAME, role=Role.PLATFORM_ADMIN)
    await asyncio.to_thread(_write, key_file, secret)
    return DevCredentials(DEFAULT_TENANT, secret, key_file, created=True)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _write(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")

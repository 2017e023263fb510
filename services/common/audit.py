"""The audit log: one append-only record per admin action and protected label move.

The access layer (`services.common.access.AccessInterceptor`) appends a record for every call
whose policy rule is audited, or that its handler elevated (`services.common.policy.elevate`),
whatever the outcome: a refused attempt is recorded as PERMISSION_DENIED. Records are
appended before the response leaves, and never changed or deleted through the API. They live
in the platform's tenant database (`services.gateway.adapters.tenant_store.SqlTenantStore`),
which every process that authenticates API keys opens. This module imports no grpc.
"""

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Final, Protocol

from services.common.policy import Role

_logger = logging.getLogger(__name__)

MAX_DETAIL: Final = 1024
"""Characters of an outcome's detail that are kept."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited call."""

    time: datetime
    tenant_id: str
    """The tenant acted in: the one the request named, else the caller's."""
    actor: str
    """The caller's subject, for example `apikey:abcdefghijkl`."""
    actor_tenant_id: str
    actor_role: Role
    action: str
    """The RPC, `genai.gateway.v1.GatewayService/CreateApiKey`."""
    target: str
    request_id: str
    outcome: str
    """Canonical status code name, `OK` on success."""
    detail: str = ""
    id: str = ""
    """Set by the store."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A filtered page of one tenant's audit log, newest first."""

    tenant_id: str
    page_size: int = 100
    page_token: str = ""
    action: str = ""
    actor: str = ""
    outcome: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of audit records and the token of the next (empty on the last)."""

    records: Sequence[AuditRecord]
    next_page_token: str


class AuditSink(Protocol):
    """Where audit records go."""

    async def append_audit_record(self, record: AuditRecord) -> None:
        """Appends `record` durably; raises when it could not."""
        ...


class LoggingAuditSink:
    """Writes audit records to the process log only: for a process without a tenant database
    (auth `none` with no gateway in it), so audited calls still leave a trace."""

    async def append_audit_record(self, record: AuditRecord) -> None:
        _logger.info("audit %s", audit_json(record))


def audit_json(record: AuditRecord) -> str:
    """The record as one JSON line (what is logged when the store cannot take it)."""
    fields = asdict(record)
    fields["time"] = record.time.isoformat()
    fields["actor_role"] = record.actor_role.label
    return json.dumps(fields, sort_keys=True)

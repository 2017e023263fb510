"""Who is calling: the `Principal` of the current request and the `Authenticator` interface.

The auth interceptor authenticates every RPC (except health checks and reflection) and stores
the principal in a context variable that handlers read with `current_principal()`. This module
imports no grpc, so core code may read the principal too. `internal_metadata` is the metadata the
platform's services send when they call each other on a tenant's behalf.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Final, Protocol

from services.common.errors import Unauthenticated

DEFAULT_TENANT = "default"
"""The tenant of every request in the embedded, single-tenant default setup."""
INTERNAL_TOKEN_HEADER: Final = "x-genai-internal-token"
"""The metadata key of the platform's internal token (see `internal_metadata`)."""
TENANT_HEADER: Final = "x-genai-tenant"
"""The metadata key naming the tenant an internal call is made for."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request: which tenant, which subject within it."""

    tenant_id: str
    subject: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Free-form facts the authenticator established (key id, roles, ...)."""


class Authenticator(Protocol):
    """Turns a request's metadata into a `Principal`."""

    async def authenticate(self, method: str, metadata: Mapping[str, str]) -> Principal:
        """Returns the caller of `method` (`"/pkg.Service/Method"`).

        `metadata` holds the request's text (non `-bin`) metadata, keys in lower case.
        Raises `Unauthenticated` when the credentials are missing or invalid, and may raise
        `PermissionDenied` when they do not grant `method`.
        """
        ...


class AnonymousAuthenticator:
    """Accepts every request as one anonymous subject of one tenant (the embedded default,
    auth `none`), with the `role` it is given: `platform_admin` unless told otherwise, since
    without credentials there is no one to tell apart."""

    def __init__(
        self,
        tenant_id: str = DEFAULT_TENANT,
        subject: str = "anonymous",
        role: str = "platform_admin",
    ) -> None:
        self._principal = Principal(tenant_id=tenant_id, subject=subject, attributes={"role": role})

    async def authenticate(self, method: str, metadata: Mapping[str, str]) -> Principal:
        return self._principal


_current_principal: ContextVar[Principal | None] = ContextVar(
    "genai_current_principal", default=None
)


def current_principal() -> Principal:
    """Returns the caller of the request being handled.

    Raises `Unauthenticated` outside an authenticated request, so code that forgot the auth
    interceptor fails closed.
    """
    principal = _current_principal.get()
    if principal is None:
        raise Unauthenticated("the request has no authenticated principal")
    return principal


def set_current_principal(principal: Principal) -> None:
    """Sets the caller for the rest of the current task.

    grpc.aio runs each RPC in its own asyncio task, with its own copy of the context, so the
    principal never leaks into another request.
    """
    _current_principal.set(principal)


@contextmanager
def principal_scope(principal: Principal) -> Iterator[Principal]:
    """Acts as `principal` inside the block: for tests and for work done on a caller's behalf."""
    token = _current_principal.set(principal)
    try:
        yield principal
    finally:
        _current_principal.reset(token)


def internal_metadata(internal_token: str, tenant_id: str) -> Sequence[tuple[str, str]]:
    """Metadata for a call the platform's services make to each other on `tenant_id`'s behalf
    (`services.platform.auth.PlatformAuthenticator` checks it); empty without a token (auth
    `none`, where every call is the default tenant's anyway)."""
    if not internal_token:
        return ()
    return ((INTERNAL_TOKEN_HEADER, internal_token), (TENANT_HEADER, tenant_id))

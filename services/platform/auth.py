"""How a platform process authenticates callers: product callers with API keys, the platform's
own services with an internal token.

- `none`: every call is the one anonymous caller of the `default` tenant (a laptop, a test).
- `api_key`: callers send `authorization: Bearer <secret>`; the key's tenant scopes the call.
  The platform's services call each other on a tenant's behalf with the process's internal
  token (`x-genai-internal-token`) and the tenant (`x-genai-tenant`); a call with a wrong
  internal token is refused, never downgraded to an API-key check. The callers' side of it,
  `internal_metadata`, is in `services.common.auth`.
"""

import hmac
from collections.abc import Mapping
from typing import Final

from services.common.auth import INTERNAL_TOKEN_HEADER, TENANT_HEADER, Authenticator, Principal
from services.common.errors import Unauthenticated

PUBLIC_METHODS: Final = frozenset({"/genai.gateway.v1.GatewayService/GetServerInfo"})
"""Methods any caller may use without credentials (they reveal no tenant's data)."""
ANONYMOUS: Final = Principal(tenant_id="", subject="anonymous")


class PlatformAuthenticator:
    """API keys for callers, the internal token for the platform's own calls."""

    def __init__(self, api_keys: Authenticator, internal_token: str) -> None:
        if not internal_token:
            raise ValueError("the internal token must not be empty")
        self._api_keys = api_keys
        self._internal_token = internal_token.encode()

    async def authenticate(self, method: str, metadata: Mapping[str, str]) -> Principal:
        token = metadata.get(INTERNAL_TOKEN_HEADER)
        if token is None:
            if method in PUBLIC_METHODS and "authorization" not in metadata:
                return ANONYMOUS
            return await self._api_keys.authenticate(method, metadata)
        if not hmac.compare_digest(token.encode(), self._internal_token):
            raise Unauthenticated(f"the {INTERNAL_TOKEN_HEADER} is not this platform's")
        tenant = metadata.get(TENANT_HEADER, "")
        if not tenant:
            raise Unauthenticated(f"an internal call must name its tenant in {TENANT_HEADER}")
        return Principal(
            tenant_id=tenant, subject="platform:internal", attributes={"internal": "true"}
        )

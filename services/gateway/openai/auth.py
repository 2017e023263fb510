"""Who calls the OpenAI-compatible API, and whether they may.

The `authorization` header, and only it, goes to the process's `Authenticator` as gRPC
metadata would, under the RPC whose work the route does: the same API keys, cache,
revocation, expiry and rotation grace as gRPC. The platform's internal token
(`x-genai-internal-token`) is never honoured over HTTP. The caller then needs the role of
that RPC's rule in `services.common.policy.POLICY` (no rules of its own), and becomes
`current_principal()` for the rest of the request, which local in-process callees read.
"""

from collections.abc import Mapping
from typing import Final, Protocol

from services.common import reasons
from services.common.auth import Authenticator, Principal, set_current_principal
from services.common.errors import PermissionDenied
from services.common.policy import Role, require, rule_of

AUTHORIZATION: Final = "authorization"

STREAM_COMPLETE_RPC: Final = "/genai.gateway.v1.GatewayService/StreamComplete"
"""The RPC whose rule `POST /v1/chat/completions` and `/v1/completions` follow."""
EMBED_RPC: Final = "/genai.inference.v1.InferenceService/Embed"
"""`POST /v1/embeddings`."""
LIST_MODELS_RPC: Final = "/genai.router.v1.RouterService/ListModels"
"""`GET /v1/models`."""
GET_MODEL_RPC: Final = "/genai.router.v1.RouterService/GetModel"
"""`GET /v1/models/{id}`."""


class HasAuthenticator(Protocol):
    """What authorizing needs of the HTTP context (`services.common.http.HttpContext`)."""

    @property
    def authenticator(self) -> Authenticator: ...


async def authorize(ctx: HasAuthenticator, headers: Mapping[str, str], rpc: str) -> Principal:
    """The caller of a request with `headers` (lower-case names) doing `rpc`'s work, set as
    the current principal. Raises `Unauthenticated` (a missing, unknown, revoked or expired
    key) or `PermissionDenied` (a role below the rule's)."""
    authorization = headers.get(AUTHORIZATION)
    metadata = {AUTHORIZATION: authorization} if authorization is not None else {}
    principal = await ctx.authenticator.authenticate(rpc, metadata)
    rule = rule_of(rpc)
    if rule is None:  # fail closed, as the access layer does for a method without a rule
        raise PermissionDenied(
            f"{rpc} has no access rule", reason=reasons.PERMISSION_DENIED, metadata={"rpc": rpc}
        )
    if rule.role is not Role.NONE:
        require(principal, rule.role, action=rpc.rsplit("/", 1)[-1])
    set_current_principal(principal)
    return principal

"""What every console page shares: the signed-in visitor, the stubs it calls the platform
with, rendering, and how failures become pages.

A page is `async def view(request, visitor) -> Response`, wrapped by `Console.page` (a GET)
or `Console.action` (a POST that changes something). The wrapper:

- opens the session cookie (`services.console.session`); without one a page redirects to the
  sign-in page, an action answers 403;
- authenticates the session's key with the process's `Authenticator`, as the gRPC interceptor
  does (cached): a revoked or expired key ends the session there and then;
- for an action, checks the CSRF token and that the caller's role is at least that of the
  RPC the action calls (`services.common.policy`), answering 403 before any call;
- gives the view a `Visitor`, whose `call` metadata carries the key: every read and write is
  the services' own gRPC RPC with the caller's own credential, so the console shows and does
  exactly what the gRPC API would for that key, tenant and role;
- turns an RPC's failure the view did not handle into an error page with the status, the
  reason and the field violations (404, 403, 409, 400, 503, 504...), never a stack trace;
- sets the security headers (a strict Content-Security-Policy: no inline script or style,
  no framing; no caching of pages).
"""

import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import jinja2
from genai.evaluation.v1 import evaluation_service_pb2_grpc
from genai.experiment.v1 import experiment_service_pb2_grpc
from genai.gateway.v1 import gateway_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2_grpc
from genai.router.v1 import router_service_pb2_grpc
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from services.common.auth import Authenticator, Principal
from services.common.clients import api_key_metadata
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.policy import Role, role_of, rule_of
from services.common.status import ParsedError, error_details
from services.console import formatting
from services.console.session import (
    COOKIE,
    COOKIE_PATH,
    CSRF_FIELD,
    CSRF_HEADER,
    Session,
    SessionCodec,
)

if TYPE_CHECKING:
    PromptStub = prompt_service_pb2_grpc.PromptServiceAsyncStub
    ExperimentStub = experiment_service_pb2_grpc.ExperimentServiceAsyncStub
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
    RouterStub = router_service_pb2_grpc.RouterServiceAsyncStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    PromptStub = prompt_service_pb2_grpc.PromptServiceStub
    ExperimentStub = experiment_service_pb2_grpc.ExperimentServiceStub
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceStub
    RouterStub = router_service_pb2_grpc.RouterServiceStub
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub

logger = logging.getLogger(__name__)

PREFIX: Final = "/console"
SIGN_IN_PATH: Final = f"{PREFIX}/sign-in"
TEMPLATES: Final = Path(__file__).with_name("templates")
STATIC: Final = Path(__file__).with_name("static")
READ_TIMEOUT_SECONDS: Final = 10.0
"""How long one read RPC behind a page may take."""
WRITE_TIMEOUT_SECONDS: Final = 30.0
"""How long one action's RPC may take."""
AUTHENTICATED_RPC: Final = "/genai.prompt.v1.PromptService/ListPrompts"
"""The method a session's key is authenticated for on every request (the authenticator needs
one; any RPC with a viewer rule will do, since the role checks are per action)."""

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

_HTTP_STATUS: Final[Mapping[grpc.StatusCode, int]] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.CANCELLED: 499,
}


@dataclass(frozen=True)
class Stubs:
    """The platform's services, reached over gRPC (their own access interceptors included);
    None for a service this deployment has no address of."""

    prompts: PromptStub
    experiments: ExperimentStub | None
    evaluations: EvaluationStub | None
    router: RouterStub | None
    gateway: GatewayStub


@dataclass(frozen=True)
class Visitor:
    """A signed-in caller: the session, the principal its key authenticated as, and the
    stubs with the metadata that carries the key."""

    session: Session
    principal: Principal
    stubs: Stubs
    metadata: tuple[tuple[str, str], ...]
    auth_enabled: bool

    @property
    def role(self) -> Role:
        return role_of(self.principal)

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def csrf_token(self) -> str:
        return self.session.csrf_token

    def may(self, rpc: str) -> bool:
        """Whether the caller's role allows `rpc` ("/pkg.Service/Method") by the access
        policy: what decides which actions a page offers."""
        rule = rule_of(rpc)
        return rule is not None and self.role >= rule.role

    def read(self) -> dict[str, Any]:
        """Keyword arguments of a read RPC made for this visitor."""
        return {"metadata": self.metadata, "timeout": READ_TIMEOUT_SECONDS}

    def write(self) -> dict[str, Any]:
        """Keyword arguments of an action's RPC made for this visitor."""
        return {"metadata": self.metadata, "timeout": WRITE_TIMEOUT_SECONDS}


View = Callable[[Request, Visitor], Awaitable[Response]]


@dataclass(frozen=True)
class Failure:
    """A failed call, as a page shows it."""

    http_status: int
    code: str
    message: str
    reason: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_errors: Mapping[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of_rpc(cls, error: grpc.aio.AioRpcError) -> "Failure":
        parsed: ParsedError = error_details(error)
        fields: dict[str, list[str]] = {}
        for violation in parsed.field_violations:
            fields.setdefault(violation.field, []).append(violation.description)
        return cls(
            http_status=_HTTP_STATUS.get(parsed.code, 502),
            code=parsed.code.name,
            message=parsed.message,
            reason=parsed.reason,
            metadata=dict(parsed.metadata),
            field_errors=fields,
        )

    def errors_for(self, prefix: str) -> list[str]:
        """The messages of violations of `prefix` or any field under it."""
        return [
            message
            for name, messages in self.field_errors.items()
            if name == prefix or name.startswith((prefix + ".", prefix + "["))
            for message in messages
        ]


class Console:
    """The console's shared machinery (see the module docstring)."""

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        codec: SessionCodec,
        stubs: Callable[[], Stubs],
        auth_enabled: bool,
        secure_cookie: bool,
        version: str,
    ) -> None:
        self._authenticator = authenticator
        self.codec = codec
        self._stubs = stubs
        self.auth_enabled = auth_enabled
        self._secure_cookie = secure_cookie
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            enable_async=False,
        )
        self.templates.globals.update(
            PREFIX=PREFIX, CSRF_FIELD=CSRF_FIELD, Role=Role, quote=_quote, console_version=version
        )
        self.templates.filters.update(formatting.FILTERS)

    # -- sessions ------------------------------------------------------------------------

    def session_of(self, request: Request) -> Session | None:
        return self.codec.open(request.cookies.get(COOKIE))

    async def principal_of(self, api_key: str) -> Principal:
        """The principal `api_key` authenticates as (raises `Unauthenticated`)."""
        return await self._authenticator.authenticate(
            AUTHENTICATED_RPC, dict(api_key_metadata(api_key))
        )

    def set_session(self, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            self.codec.seal(session),
            max_age=max(1, round(session.expires_at - time.time())),
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=self._secure_cookie,
        )

    def clear_session(self, response: Response) -> None:
        response.delete_cookie(
            COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=self._secure_cookie
        )

    # -- rendering -----------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        visitor: Visitor | None = None,
        *,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        page = self.templates.get_template(template).render(
            request=request, visitor=visitor, path=request.url.path, **context
        )
        response = HTMLResponse(page, status_code=status)
        secured(response)
        return response

    def failure_page(
        self, request: Request, visitor: Visitor | None, failure: Failure, *, title: str = ""
    ) -> HTMLResponse:
        return self.render(
            request,
            "error.html",
            visitor,
            status=failure.http_status,
            failure=failure,
            title=title or _TITLES.get(failure.http_status, "Something went wrong"),
        )

    # -- handlers ------------------------------------------------------------------------

    def page(self, view: View) -> Callable[[Request], Awaitable[Response]]:
        """A GET page for signed-in visitors (see the module docstring)."""

        async def handle(request: Request) -> Response:
            visitor = await self._visitor(request)
            if isinstance(visitor, Response):
                return visitor
            return await self._run(view, request, visitor)

        return handle

    def action(self, rpc: str, view: View) -> Callable[[Request], Awaitable[Response]]:
        """A POST that calls `rpc` ("/pkg.Service/Method"): refused with 403 without a session,
        without the session's CSRF token, or when the caller's role is below `rpc`'s rule."""
        if rule_of(rpc) is None:
            raise ValueError(f"{rpc} has no access rule")

        async def handle(request: Request) -> Response:
            session = self.session_of(request)
            if session is None:
                return self._forbidden(request, None, _SIGN_IN_FIRST)
            form = await request.form()
            token = request.headers.get(CSRF_HEADER) or _text(form.get(CSRF_FIELD))
            visitor = await self._visitor(request, session)
            if isinstance(visitor, Response):
                return visitor
            if not session.csrf_matches(token):
                return self._forbidden(
                    request,
                    visitor,
                    "The form's CSRF token is missing or is not this session's. "
                    "Reload the page and try again.",
                    reason="CSRF_TOKEN_MISMATCH",
                )
            if not visitor.may(rpc):
                return self.role_refused(request, visitor, rpc)
            return await self._run(view, request, visitor)

        return handle

    async def _visitor(
        self, request: Request, session: Session | None = None
    ) -> Visitor | Response:
        session = session or self.session_of(request)
        if session is None:
            return self._to_sign_in(request)
        try:
            principal = await self.principal_of(session.api_key)
        except (Unauthenticated, PermissionDenied) as error:
            logger.info("a console session ended: its key was refused (%s)", error)
            response = self._to_sign_in(request, ended=True)
            self.clear_session(response)
            return response
        return Visitor(
            session=session,
            principal=principal,
            stubs=self._stubs(),
            metadata=api_key_metadata(session.api_key),
            auth_enabled=self.auth_enabled,
        )

    def role_refused(self, request: Request, visitor: Visitor, rpc: str) -> HTMLResponse:
        """The 403 page for a visitor whose role is below `rpc`'s rule (for a view that calls
        a second RPC, stricter than the one its action was registered with)."""
        rule = rule_of(rpc)
        needed = rule.role.label if rule is not None else "unknown"
        return self._forbidden(
            request,
            visitor,
            f"{rpc.rsplit('/', 1)[-1]} needs the {needed} role; you are a {visitor.role.label}.",
            reason="PERMISSION_DENIED",
            metadata={"rpc": rpc, "needed_role": needed, "role": visitor.role.label},
        )

    def _forbidden(
        self,
        request: Request,
        visitor: Visitor | None,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        """The 403 page of a refused action, before any call was made."""
        failure = Failure(403, "PERMISSION_DENIED", message, reason, metadata or {})
        return self.failure_page(request, visitor, failure)

    def _to_sign_in(self, request: Request, *, ended: bool = False) -> Response:
        """To the sign-in page, back here afterwards; `ended`: the session's key stopped
        working (revoked, expired). Only a fixed word travels in the address, never a
        message: a link cannot make the sign-in page say what its author wants."""
        if request.method != "GET":
            return self._forbidden(request, None, SESSION_ENDED if ended else _SIGN_IN_FIRST)
        query = {"next": request.url.path + (f"?{request.url.query}" if request.url.query else "")}
        if ended:
            query["why"] = "ended"
        return secured(
            RedirectResponse(f"{SIGN_IN_PATH}?{urllib.parse.urlencode(query)}", status_code=303)
        )

    async def _run(self, view: View, request: Request, visitor: Visitor) -> Response:
        try:
            response = await view(request, visitor)
        except grpc.aio.AioRpcError as error:
            failure = Failure.of_rpc(error)
            if failure.http_status == 401:
                response = self._to_sign_in(request, ended=True)
                self.clear_session(response)
                return response
            return self.failure_page(request, visitor, failure)
        return secured(response)


def secured(response: Response) -> Response:
    """`response` with the console's security headers (kept where the view set its own)."""
    for name, value in SECURITY_HEADERS.items():
        if name not in response.headers:
            response.headers[name] = value
    return response


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (no open redirect)."""
    if (
        target
        and target.startswith(PREFIX + "/")
        and not target.startswith("//")
        and "\\" not in target
        and not target.startswith(SIGN_IN_PATH)
    ):
        return target
    return f"{PREFIX}/prompts"


def redirect(path: str, **query: str | int) -> Response:
    """303 to `path` (a POST's answer: the browser GETs the result, so a reload repeats
    nothing)."""
    suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
    return secured(RedirectResponse(path + suffix, status_code=303))


def form_text(form: Any, name: str) -> str:
    """A form field's text ('' when absent)."""
    return _text(form.get(name)) or ""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _quote(value: object) -> str:
    return urllib.parse.quote(str(value), safe="")


_SIGN_IN_FIRST: Final = "Sign in first: this action needs a session."
SESSION_ENDED: Final = (
    "Your session ended: its API key was revoked, has expired or is no longer valid. Sign in again."
)
_TITLES: Final[Mapping[int, str]] = {
    400: "The request was refused",
    403: "Not allowed",
    404: "Not found",
    409: "Refused: a precondition failed",
    429: "Over quota",
    503: "A service is unavailable",
    504: "A service did not answer in time",
}

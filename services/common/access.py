"""The access layer: the policy table (`services.common.policy.POLICY`) applied to every RPC,
and the audit log appended for the calls it audits.

It sits right inside the error layer of the interceptor chain, after auth has set the caller
(`current_principal()`) and after the request bytes parsed, and before validation:

1. the caller must have the rule's role (PERMISSION_DENIED naming `required_role`);
2. a request naming another tenant (`Rule.tenant_field`) is NOT_FOUND unless the caller is a
   platform admin;
3. the handler runs; it may `elevate()` the call (a protected label);
4. an audited or elevated call is appended to the audit log with its outcome, before the
   response leaves. Should the audit store fail, the record is logged as JSON at ERROR and
   counted, and the caller still gets the outcome of an action that has happened.

A method without a rule is refused: a new RPC is closed until it is given one.
"""

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry, Counter

from services.common import reasons
from services.common.audit import MAX_DETAIL, AuditRecord, AuditSink, audit_json
from services.common.auth import Principal, current_principal
from services.common.errors import DomainError, PermissionDenied
from services.common.interceptors import (
    BehaviourInterceptor,
    Context,
    Handler,
    StreamingBehaviour,
    UnaryBehaviour,
    is_infrastructure_method,
    rebuild_handler,
)
from services.common.policy import (
    POLICY,
    CallAccess,
    Role,
    Rule,
    call_scope,
    require,
    role_of,
    scope_tenant,
)
from services.common.status import status_code_of

_logger = logging.getLogger(__name__)

REQUEST_ID_METADATA: Final = "x-request-id"
"""Metadata naming a request's id, for the audit log of requests without a `request_id`."""
_FIELD: Final = re.compile(r"\{([a-z_.]+)\}")


class AccessInterceptor(BehaviourInterceptor):
    """Applies `policy` (the contract's `POLICY`; tests serving services of their own give
    theirs) to every RPC and appends audited calls to `audit`."""

    def __init__(
        self,
        audit: AuditSink,
        *,
        policy: Mapping[str, Rule] = POLICY,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audit = audit
        self._policy = policy
        self._clock = clock
        self._failures = Counter(
            "genai_audit_write_failures",
            "Audit records the audit store could not take (logged at ERROR instead)",
            registry=registry if registry is not None else CollectorRegistry(),
        )

    def _wrap(self, handler: Handler, method: str) -> Handler:
        if is_infrastructure_method(method):
            return handler
        name = method.removeprefix("/")
        rule = self._policy.get(name)
        if rule is not None and handler.response_streaming and (rule.audited or rule.elevated):
            raise ValueError(f"{name}: audited methods must be unary, not response-streaming")

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def guarded(request: Any, context: Context) -> Any:
                principal = current_principal()
                if rule is None:
                    raise _no_rule(name)
                access = CallAccess(name, rule)
                with call_scope(access):
                    try:
                        _check(principal, rule, request, name)
                        response = await behaviour(request, context)
                    except BaseException as error:
                        if rule.audited or access.elevated:
                            await self._record(principal, access, request, context, error)
                        raise
                    if rule.audited or access.elevated:
                        await self._record(principal, access, request, context, None)
                    return response

            return guarded

        def streaming(behaviour: StreamingBehaviour) -> StreamingBehaviour:
            async def guarded(request: Any, context: Context) -> AsyncGenerator[Any, None]:
                principal = current_principal()
                if rule is None:
                    raise _no_rule(name)
                _check(principal, rule, request, name)
                with call_scope(CallAccess(name, rule)):
                    async for response in behaviour(request, context):
                        yield response

            return guarded

        return rebuild_handler(handler, unary, streaming)

    async def _record(
        self,
        principal: Principal,
        access: CallAccess,
        request: Any,
        context: Context,
        error: BaseException | None,
    ) -> None:
        outcome, detail = _outcome(error, context)
        record = AuditRecord(
            time=datetime.fromtimestamp(self._clock(), UTC),
            tenant_id=access.tenant_id or _acted_tenant(principal, access.rule, request, error),
            actor=principal.subject,
            actor_tenant_id=principal.tenant_id,
            actor_role=role_of(principal),
            action=access.method,
            target=access.target or _render(access.rule.target, request),
            request_id=_request_id(request, context),
            outcome=outcome,
            detail=detail[:MAX_DETAIL],
        )
        try:
            # Shielded: a caller cancelling must not cancel the record of what it did.
            await asyncio.shield(self._audit.append_audit_record(record))
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failures.inc()
            _logger.exception("the audit store did not take a record: %s", audit_json(record))


def _check(principal: Principal, rule: Rule, request: Any, name: str) -> None:
    if rule.role is not Role.NONE:
        require(principal, rule.role, action=name.rsplit("/", 1)[-1])
    if rule.tenant_field:
        scope_tenant(principal, str(_field(request, rule.tenant_field)))


def _no_rule(name: str) -> PermissionDenied:
    return PermissionDenied(
        f"{name} has no access rule in services.common.policy.POLICY; it is refused until it "
        "is given one",
        reason=reasons.PERMISSION_DENIED,
        metadata={"method": name},
    )


def _acted_tenant(
    principal: Principal, rule: Rule, request: Any, error: BaseException | None
) -> str:
    """The tenant whose log gets the record: the one the request named, except for a failed
    call of a caller confined to its own tenant, which stays in the caller's log (another
    tenant learns nothing of it, and the caller's admins see what their keys attempt)."""
    named = str(_field(request, rule.tenant_field)) if rule.tenant_field else ""
    if error is not None and role_of(principal) < Role.PLATFORM_ADMIN:
        return principal.tenant_id
    return named or principal.tenant_id


def _outcome(error: BaseException | None, context: Context) -> tuple[str, str]:
    if error is None:
        return "OK", ""
    if isinstance(error, DomainError):
        code = status_code_of(error)
        return (code.name if code is not None else "INTERNAL"), str(error)
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED", "the caller cancelled or its deadline passed"
    if isinstance(error, grpc.aio.AbortError):
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        return name, str(context.details() or "")
    return "INTERNAL", type(error).__name__


def _request_id(request: Any, context: Context) -> str:
    value = _field(request, "request_id")
    if value:
        return str(value)
    for key, item in context.invocation_metadata() or ():
        if key.lower() == REQUEST_ID_METADATA and isinstance(item, str):
            return item[:128]
    return ""


def _field(message: Any, path: str) -> Any:
    value = message
    for part in path.split("."):
        value = getattr(value, part, "")
    return value


def _render(template: str, request: Any) -> str:
    return _FIELD.sub(lambda match: str(_field(request, match[1])), template)

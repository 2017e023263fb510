"""genai.gateway.v1.GatewayService: converts between protos and gateway domain types."""

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import grpc
from genai.common.v1 import money_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import reasons
from services.common.audit import AuditQuery, AuditRecord
from services.common.auth import current_principal
from services.common.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from services.common.policy import (
    Role,
    role_of,
    scope_tenant,
    sees_every_tenant,
    set_audit_target,
)
from services.common.wire import timestamp
from services.gateway.adapters.sealed_outcomes import SealedOutcomes
from services.gateway.api import GatewayApi
from services.gateway.completion import (
    FEEDBACK_METHOD,
    STREAM_METHOD,
    UNARY_METHOD,
    Caller,
    CompletionEngine,
    ServedRequest,
)
from services.gateway.core.auth import bearer_token
from services.gateway.core.idempotency import Idempotency
from services.gateway.core.request_log import (
    DEFAULT_PAGE_SIZE,
    RequestLogQuery,
    RequestLogReader,
    RequestLogRecord,
)
from services.gateway.core.server_info import ServerInfoReporter
from services.gateway.core.tenants import (
    DEFAULT_ROTATION_GRACE,
    ApiKey,
    Tenant,
    TenantQuota,
    TenantStore,
    key_role,
)
from services.gateway.tenancy import TenantDirectory

SERVICE_NAME = "genai.gateway.v1.GatewayService"

gs = gateway_service_pb2
Context = grpc.aio.ServicerContext[Any, Any]
MICROS_PER_NANO_UNIT = 1000
Response = TypeVar("Response", bound=Message)


class GatewayServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    """Serves GatewayService."""

    def __init__(
        self,
        *,
        server_info: ServerInfoReporter,
        engine: Callable[[], CompletionEngine],
        tenants: TenantStore,
        directory: TenantDirectory,
        logs: RequestLogReader | None,
        api: GatewayApi,
        idempotency: Idempotency | None = None,
    ) -> None:
        self._server_info = server_info
        self._engine = engine
        self._tenants = tenants
        self._directory = directory
        self._logs = logs
        self._api = api
        self._sealed = SealedOutcomes(idempotency)

    @property
    def api(self) -> GatewayApi:
        """The gateway's wire-free front door, which this servicer's completions share with
        the other transports (`services.gateway.openai`)."""
        return self._api

    # ------------------------------------------------------------------------------ completions

    async def StreamComplete(
        self, request: gs.StreamCompleteRequest, context: Context
    ) -> AsyncIterator[gs.StreamCompleteResponse]:
        """Streams one completion: start, deltas, final."""
        caller = self._caller(STREAM_METHOD)
        async for message in self._engine().stream(
            request, caller, time_left=context.time_remaining()
        ):
            yield message

    async def Complete(self, request: gs.CompleteRequest, context: Context) -> gs.CompleteResponse:
        """Runs one completion and returns it whole."""
        caller = self._caller(UNARY_METHOD)
        # The two requests are field-for-field the same message (a contract test keeps them so).
        streaming = gs.StreamCompleteRequest.FromString(request.SerializeToString())
        parts: list[str] = []
        response = gs.CompleteResponse()
        async for message in self._engine().stream(
            streaming, caller, time_left=context.time_remaining()
        ):
            kind = message.WhichOneof("event")
            if kind == "delta":
                parts.append(message.delta.text)
            elif kind == "final":
                response.metadata.CopyFrom(message.final)
        response.text = "".join(parts)
        return response

    def _caller(self, method: str) -> Caller:
        return self._api.caller(current_principal(), method)

    # ------------------------------------------------------------------------------ feedback

    async def RecordFeedback(
        self, request: gs.RecordFeedbackRequest, context: Context
    ) -> gs.RecordFeedbackResponse:
        """Records feedback on a served request as an outcome of the experiment it took part
        in (the variant it was served)."""
        violations = []
        if not request.request_id:
            violations.append(FieldViolation("request_id", "is required"))
        if not request.metric:
            violations.append(FieldViolation("metric", "is required"))
        kind = request.WhichOneof("value")
        if kind is None:
            violations.append(FieldViolation("value", "set numeric_value or boolean_value"))
        elif kind == "numeric_value" and not math.isfinite(request.numeric_value):
            violations.append(FieldViolation("numeric_value", "must be finite"))
        if violations:
            raise InvalidArgument(violations=violations)
        caller = self._caller(FEEDBACK_METHOD)
        engine = self._engine()
        served = engine.served(caller.tenant_id, request.request_id)
        if served is None:
            served = await self._served_from_log(engine, caller, request.request_id)
        value: float | bool = (
            request.boolean_value if kind == "boolean_value" else request.numeric_value
        )
        await engine.record_feedback(caller, request.request_id, request.metric, value, served)
        return gs.RecordFeedbackResponse()

    async def _served_from_log(
        self, engine: CompletionEngine, caller: Caller, request_id: str
    ) -> ServedRequest:
        record = (
            await self._logs.get(caller.tenant_id, request_id) if self._logs is not None else None
        )
        if record is None:
            raise NotFound(
                f"no request {request_id!r} of this tenant is known (served here recently, or "
                "in the request log)",
                reason=reasons.RESOURCE_NOT_FOUND,
                metadata={"request_id": request_id},
            )
        experiment = str(record.metadata.get("experiment", ""))
        variant = str(record.metadata.get("variant", ""))
        unit_id = ""
        if experiment and variant:
            unit_id = await engine.unit_of(caller, experiment, record.user_id, record.session_id)
        return ServedRequest(
            prompt=record.prompt,
            prompt_version=record.prompt_version,
            model=record.model,
            experiment=experiment,
            variant=variant,
            unit_id=unit_id,
        )

    # ------------------------------------------------------------------------------ request log

    async def ListRequestLogs(
        self, request: gs.ListRequestLogsRequest, context: Context
    ) -> gs.ListRequestLogsResponse:
        """Lists the caller's tenant's logged requests, newest first."""
        if self._logs is None:
            raise InvalidArgument(
                violations=[FieldViolation("", "the request log is disabled on this gateway")]
            )
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgument(violations=[FieldViolation("page_size", "must be in [0, 1000]")])
        query = RequestLogQuery(
            tenant_id=current_principal().tenant_id,
            prompt=request.prompt,
            status=request.status,
            start_time=_time_or_none(request, "start_time"),
            end_time=_time_or_none(request, "end_time"),
            page_size=request.page_size or DEFAULT_PAGE_SIZE,
            page_token=request.page_token,
            model=request.model,
            request_id=request.request_id,
        )
        page = await self._logs.list(query)
        return gs.ListRequestLogsResponse(
            entries=[_log_entry(record) for record in page.entries],
            next_page_token=page.next_page_token,
        )

    # ------------------------------------------------------------------------------ tenants

    async def CreateTenant(
        self, request: gs.CreateTenantRequest, context: Context
    ) -> gs.CreateTenantResponse:
        """Creates a tenant (platform admins; the access layer checks and audits), once per
        `request_id`."""

        async def create() -> gs.CreateTenantResponse:
            tenant = await self._tenants.create_tenant(
                request.tenant.id,
                request.tenant.display_name,
                _quota(request.tenant.quota, "tenant.quota"),
            )
            return gs.CreateTenantResponse(tenant=_tenant(tenant))

        return await self._once(context, "CreateTenant", request, gs.CreateTenantResponse, create)

    async def UpdateTenantQuota(
        self, request: gs.UpdateTenantQuotaRequest, context: Context
    ) -> gs.UpdateTenantQuotaResponse:
        """Replaces a tenant's quota (platform admins)."""
        if not request.HasField("quota"):
            raise InvalidArgument(violations=[FieldViolation("quota", "is required")])
        tenant = await self._tenants.update_quota(request.tenant_id, _quota(request.quota, "quota"))
        self._directory.forget(tenant.id)
        return gs.UpdateTenantQuotaResponse(tenant=_tenant(tenant))

    async def CreateApiKey(
        self, request: gs.CreateApiKeyRequest, context: Context
    ) -> gs.CreateApiKeyResponse:
        """Creates a key and returns its secret: a tenant admin for its own tenant, up to its
        own role; a platform admin for any tenant."""
        principal = current_principal()
        tenant_id = scope_tenant(principal, request.tenant_id)
        role = key_role(request.admin, Role(request.role) if request.role else None)
        if role > role_of(principal):
            raise PermissionDenied(
                f"a {role_of(principal).label} cannot grant the {role.label} role",
                reason=reasons.PERMISSION_DENIED,
                metadata={
                    "required_role": role.label,
                    "role": role_of(principal).label,
                    "subject": principal.subject,
                },
            )
        expire_time = (
            _instant(request.expire_time, "expire_time")
            if request.HasField("expire_time")
            else None
        )

        async def create() -> gs.CreateApiKeyResponse:
            key, secret = await self._tenants.create_api_key(
                tenant_id, request.display_name, role=role, expire_time=expire_time
            )
            return gs.CreateApiKeyResponse(key=_api_key(key), secret=secret)

        response = await self._once(
            context, "CreateApiKey", request, gs.CreateApiKeyResponse, create
        )
        set_audit_target(f"api_key/{response.key.id}", tenant_id=tenant_id)
        return response

    async def ListApiKeys(
        self, request: gs.ListApiKeysRequest, context: Context
    ) -> gs.ListApiKeysResponse:
        """Lists a tenant's keys, never their secrets."""
        tenant_id = scope_tenant(current_principal(), request.tenant_id)
        keys, token = await self._tenants.list_api_keys(
            tenant_id, request.page_size, request.page_token
        )
        return gs.ListApiKeysResponse(keys=[_api_key(k) for k in keys], next_page_token=token)

    async def RevokeApiKey(
        self, request: gs.RevokeApiKeyRequest, context: Context
    ) -> gs.RevokeApiKeyResponse:
        """Revokes a key of the caller's tenant (any tenant's, for a platform admin)."""
        if not request.id:
            raise InvalidArgument(violations=[FieldViolation("id", "is required")])
        key = await self._tenants.revoke_api_key(request.id, tenant_id=self._key_scope())
        set_audit_target(f"api_key/{key.id}", tenant_id=key.tenant_id)
        return gs.RevokeApiKeyResponse(key=_api_key(key))

    async def RotateApiKey(
        self, request: gs.RotateApiKeyRequest, context: Context
    ) -> gs.RotateApiKeyResponse:
        """Gives a key of the caller's tenant (any tenant's, for a platform admin) a new
        secret; the old one works for the grace period."""
        violations = [] if request.id else [FieldViolation("id", "is required")]
        grace = DEFAULT_ROTATION_GRACE
        if request.HasField("grace_period"):
            grace = _span(request.grace_period, "grace_period")
        if violations:
            raise InvalidArgument(violations=violations)
        scope = self._key_scope()

        async def rotate() -> gs.RotateApiKeyResponse:
            key, secret = await self._tenants.rotate_api_key(request.id, grace, tenant_id=scope)
            return gs.RotateApiKeyResponse(key=_api_key(key), secret=secret)

        response = await self._once(
            context, "RotateApiKey", request, gs.RotateApiKeyResponse, rotate
        )
        set_audit_target(f"api_key/{response.key.id}", tenant_id=response.key.tenant_id)
        return response

    async def _once(
        self,
        context: Context,
        method: str,
        request: Any,
        response_type: type[Response],
        produce: Callable[[], Awaitable[Response]],
    ) -> Response:
        """`produce()` at most once per `request_id` of the same caller (see
        `services.gateway.adapters.sealed_outcomes`)."""
        return await self._sealed.once(
            current_principal(),
            _bearer(context),
            f"{SERVICE_NAME}/{method}",
            request,
            response_type,
            produce,
        )

    def _key_scope(self) -> str | None:
        """The tenant whose keys the caller may address by id: its own, or any (None)."""
        principal = current_principal()
        return None if sees_every_tenant(principal) else principal.tenant_id

    # ------------------------------------------------------------------------------ audit

    async def ListAuditEvents(
        self, request: gs.ListAuditEventsRequest, context: Context
    ) -> gs.ListAuditEventsResponse:
        """One page of a tenant's audit log, newest first."""
        tenant_id = scope_tenant(current_principal(), request.tenant_id)
        page = await self._tenants.list_audit_records(
            AuditQuery(
                tenant_id=tenant_id,
                page_size=request.page_size,
                page_token=request.page_token,
                action=request.action,
                actor=request.actor,
                outcome=request.outcome,
                start_time=(
                    _instant(request.start_time, "start_time")
                    if request.HasField("start_time")
                    else None
                ),
                end_time=(
                    _instant(request.end_time, "end_time") if request.HasField("end_time") else None
                ),
            )
        )
        return gs.ListAuditEventsResponse(
            events=[_audit_event(record) for record in page.records],
            next_page_token=page.next_page_token,
        )

    # ------------------------------------------------------------------------------ info

    async def GetServerInfo(
        self, request: gs.GetServerInfoRequest, context: Context
    ) -> gs.GetServerInfoResponse:
        """Describes this process and the health of the services it depends on."""
        info = await self._server_info.report()
        start_time = Timestamp()
        start_time.FromDatetime(info.start_time)
        uptime = Duration()
        uptime.FromTimedelta(info.uptime)
        dependencies = []
        for dependency in info.dependencies:
            check_duration = Duration()
            check_duration.FromTimedelta(dependency.check_duration)
            dependencies.append(
                gateway_pb2.ServiceDependency(
                    service=dependency.service,
                    target=dependency.target,
                    status=dependency.status,
                    check_duration=check_duration,
                )
            )
        return gs.GetServerInfoResponse(
            version=info.version,
            contract_digest=info.contract_digest,
            hosted_services=info.hosted_services,
            dependencies=dependencies,
            start_time=start_time,
            uptime=uptime,
        )


# ------------------------------------------------------------------------------------------
# Conversions
# ------------------------------------------------------------------------------------------


def _quota(quota: gateway_pb2.TenantQuota, field: str) -> TenantQuota:
    violations: Sequence[FieldViolation] = []
    cost = quota.cost_per_day
    if cost.currency_code not in ("", "USD"):
        violations = [
            FieldViolation(f"{field}.cost_per_day.currency_code", "must be USD (or empty)")
        ]
    if cost.units < 0 or cost.nanos < 0:
        violations = [*violations, FieldViolation(f"{field}.cost_per_day", "must be >= 0")]
    if violations:
        raise InvalidArgument(violations=list(violations))
    return TenantQuota(
        requests_per_minute=quota.requests_per_minute,
        tokens_per_minute=quota.tokens_per_minute,
        cost_per_day_micros=cost.units * 1_000_000 + cost.nanos // MICROS_PER_NANO_UNIT,
    )


def _tenant(tenant: Tenant) -> gateway_pb2.Tenant:
    micros = tenant.quota.cost_per_day_micros
    return gateway_pb2.Tenant(
        id=tenant.id,
        display_name=tenant.display_name,
        quota=gateway_pb2.TenantQuota(
            requests_per_minute=tenant.quota.requests_per_minute,
            tokens_per_minute=tenant.quota.tokens_per_minute,
            cost_per_day=money_pb2.Money(
                currency_code="USD",
                units=micros // 1_000_000,
                nanos=(micros % 1_000_000) * MICROS_PER_NANO_UNIT,
            ),
        ),
        create_time=timestamp(tenant.create_time),
    )


def _api_key(key: ApiKey) -> gateway_pb2.ApiKey:
    message = gateway_pb2.ApiKey(
        id=key.id,
        tenant_id=key.tenant_id,
        display_name=key.display_name,
        admin=key.admin,
        role=cast(gateway_pb2.Role, int(key.role)),
        create_time=timestamp(key.create_time),
    )
    for name, moment in (
        ("revoke_time", key.revoke_time),
        ("expire_time", key.expire_time),
        ("rotate_time", key.rotate_time),
        ("previous_secret_expire_time", key.previous_secret_expire_time),
    ):
        if moment is not None:
            getattr(message, name).CopyFrom(timestamp(moment))
    return message


def _audit_event(record: AuditRecord) -> gateway_pb2.AuditEvent:
    return gateway_pb2.AuditEvent(
        id=record.id,
        time=timestamp(record.time),
        tenant_id=record.tenant_id,
        actor=record.actor,
        actor_tenant_id=record.actor_tenant_id,
        actor_role=cast(gateway_pb2.Role, int(record.actor_role)),
        action=record.action,
        target=record.target,
        request_id=record.request_id,
        outcome=record.outcome,
        detail=record.detail,
    )


def _time_or_none(request: gs.ListRequestLogsRequest, name: str) -> datetime | None:
    return _instant(getattr(request, name), name) if request.HasField(name) else None


def _bearer(context: Context) -> str:
    """The caller's API key secret ("" for a call without one: the platform's own)."""
    metadata = {
        key.lower(): value
        for key, value in context.invocation_metadata() or ()
        if isinstance(value, str)
    }
    try:
        return bearer_token(metadata)
    except Unauthenticated:
        return ""


def _instant(message: Timestamp, field: str) -> datetime:
    """The moment of a Timestamp; InvalidArgument naming `field` when it is out of range."""
    try:
        moment: datetime = message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            violations=[FieldViolation(field, "is not a valid timestamp (years 1 to 9999)")]
        ) from None
    return moment


def _span(message: Duration, field: str) -> timedelta:
    """The span of a Duration; InvalidArgument naming `field` when it is out of range."""
    try:
        span: timedelta = message.ToTimedelta()
    except (ValueError, OverflowError):
        raise InvalidArgument(
            violations=[FieldViolation(field, "is not a valid duration")]
        ) from None
    return span


def _log_entry(record: RequestLogRecord) -> gateway_pb2.RequestLogEntry:
    entry = gateway_pb2.RequestLogEntry(
        request_id=record.request_id,
        trace_id=record.trace_id,
        tenant_id=record.tenant_id,
        method=record.method,
        status=record.status,
        output=record.output,
        user_id=record.user_id,
        session_id=record.session_id,
        tags=dict(record.tags),
        create_time=timestamp(record.create_time),
    )
    if record.input is not None:
        json_format.ParseDict(record.input, entry.input)
    json_format.ParseDict(dict(record.metadata), entry.metadata, ignore_unknown_fields=True)
    return entry

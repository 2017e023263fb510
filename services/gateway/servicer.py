"""genai.gateway.v1.GatewayService: converts between protos and gateway domain types."""

import math
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from genai.common.v1 import money_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.common import reasons
from services.common.auth import Principal, current_principal
from services.common.errors import FieldViolation, InvalidArgument, NotFound
from services.common.wire import timestamp
from services.gateway.completion import (
    FEEDBACK_METHOD,
    STREAM_METHOD,
    UNARY_METHOD,
    Caller,
    CompletionEngine,
    ServedRequest,
)
from services.gateway.core.auth import require_admin
from services.gateway.core.request_log import (
    DEFAULT_PAGE_SIZE,
    RequestLogQuery,
    RequestLogReader,
    RequestLogRecord,
)
from services.gateway.core.server_info import ServerInfoReporter
from services.gateway.core.tenants import (
    ApiKey,
    Tenant,
    TenantQuota,
    TenantStore,
)
from services.gateway.tenancy import TenantDirectory
from services.platform.auth import internal_metadata

SERVICE_NAME = "genai.gateway.v1.GatewayService"

gs = gateway_service_pb2
Context = grpc.aio.ServicerContext[Any, Any]
MICROS_PER_NANO_UNIT = 1000


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
        internal_token: str,
        admin_required: bool,
    ) -> None:
        self._server_info = server_info
        self._engine = engine
        self._tenants = tenants
        self._directory = directory
        self._logs = logs
        self._internal_token = internal_token
        self._admin_required = admin_required

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
        principal = current_principal()
        return Caller(
            tenant_id=principal.tenant_id,
            metadata=tuple(internal_metadata(self._internal_token, principal.tenant_id)),
            method=method,
        )

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
        """Creates a tenant (admin keys only)."""
        self._require_admin()
        tenant = await self._tenants.create_tenant(
            request.tenant.id,
            request.tenant.display_name,
            _quota(request.tenant.quota, "tenant.quota"),
        )
        return gs.CreateTenantResponse(tenant=_tenant(tenant))

    async def UpdateTenantQuota(
        self, request: gs.UpdateTenantQuotaRequest, context: Context
    ) -> gs.UpdateTenantQuotaResponse:
        """Replaces a tenant's quota (admin keys only)."""
        self._require_admin()
        if not request.HasField("quota"):
            raise InvalidArgument(violations=[FieldViolation("quota", "is required")])
        tenant = await self._tenants.update_quota(request.tenant_id, _quota(request.quota, "quota"))
        self._directory.forget(tenant.id)
        return gs.UpdateTenantQuotaResponse(tenant=_tenant(tenant))

    async def CreateApiKey(
        self, request: gs.CreateApiKeyRequest, context: Context
    ) -> gs.CreateApiKeyResponse:
        """Creates a key and returns its secret, once (admin keys only)."""
        self._require_admin()
        key, secret = await self._tenants.create_api_key(
            request.tenant_id, request.display_name, request.admin
        )
        return gs.CreateApiKeyResponse(key=_api_key(key), secret=secret)

    async def ListApiKeys(
        self, request: gs.ListApiKeysRequest, context: Context
    ) -> gs.ListApiKeysResponse:
        """Lists a tenant's keys, never their secrets (admin keys only)."""
        self._require_admin()
        keys, token = await self._tenants.list_api_keys(
            request.tenant_id, request.page_size, request.page_token
        )
        return gs.ListApiKeysResponse(keys=[_api_key(k) for k in keys], next_page_token=token)

    async def RevokeApiKey(
        self, request: gs.RevokeApiKeyRequest, context: Context
    ) -> gs.RevokeApiKeyResponse:
        """Revokes a key (admin keys only)."""
        self._require_admin()
        key = await self._tenants.revoke_api_key(request.id)
        return gs.RevokeApiKeyResponse(key=_api_key(key))

    def _require_admin(self) -> Principal:
        principal = current_principal()
        if self._admin_required:
            require_admin(principal)
        return principal

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
        create_time=timestamp(key.create_time),
    )
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoke_time))
    return message


def _time_or_none(request: gs.ListRequestLogsRequest, name: str) -> datetime | None:
    if not request.HasField(name):
        return None
    moment: datetime = getattr(request, name).ToDatetime(tzinfo=UTC)
    return moment


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

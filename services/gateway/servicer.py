"""genai.gateway.v1.GatewayService: converts between protos and gateway domain types."""

import grpc
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.unimplemented import pending_rpcs
from services.gateway.core.server_info import ServerInfoReporter

SERVICE_NAME = "genai.gateway.v1.GatewayService"

_COMPOSITION = "prompt resolution, routing, streaming and response processing (issue #6)"
_TENANTS = "tenants, hashed API keys and quotas (issue #6)"


@pending_rpcs(
    SERVICE_NAME,
    {
        "Complete": _COMPOSITION,
        "StreamComplete": _COMPOSITION,
        "RecordFeedback": "experiment outcomes and online evaluation (issues #6 and #7)",
        "ListRequestLogs": "the durable request log (issue #6)",
        "CreateTenant": _TENANTS,
        "UpdateTenantQuota": _TENANTS,
        "CreateApiKey": _TENANTS,
        "ListApiKeys": _TENANTS,
        "RevokeApiKey": _TENANTS,
    },
)
class GatewayServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    """Serves GatewayService."""

    def __init__(self, *, server_info: ServerInfoReporter) -> None:
        self._server_info = server_info

    async def GetServerInfo(
        self,
        request: gateway_service_pb2.GetServerInfoRequest,
        context: grpc.aio.ServicerContext[
            gateway_service_pb2.GetServerInfoRequest, gateway_service_pb2.GetServerInfoResponse
        ],
    ) -> gateway_service_pb2.GetServerInfoResponse:
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
        return gateway_service_pb2.GetServerInfoResponse(
            version=info.version,
            contract_digest=info.contract_digest,
            hosted_services=info.hosted_services,
            dependencies=dependencies,
            start_time=start_time,
            uptime=uptime,
        )

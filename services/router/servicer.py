"""genai.router.v1.RouterService: converts between protos and routing domain types."""

from genai.router.v1 import router_service_pb2_grpc

from services.common.unimplemented import pending_rpcs

SERVICE_NAME = "genai.router.v1.RouterService"

_CATALOG = "the validated YAML model catalog (issue #5)"
_LIVE = "live backend statistics, health checks and circuit breakers (issue #5)"


@pending_rpcs(
    SERVICE_NAME,
    {
        "ListModels": _CATALOG,
        "GetModel": _CATALOG,
        "Route": "the capability filter and cost/latency/quality/weighted policies (issue #5)",
        "ReportOutcome": _LIVE,
        "GetBackendHealth": _LIVE,
    },
)
class RouterServicer(router_service_pb2_grpc.RouterServiceServicer):
    """Serves RouterService. Every RPC waits on the router of issue #5."""

"""genai.inference.v1.InferenceService: converts between protos and inference domain types."""

from genai.inference.v1 import inference_service_pb2_grpc

from services.common.unimplemented import pending_rpcs

SERVICE_NAME = "genai.inference.v1.InferenceService"

_TRITON = "the Triton backend over KServe v2 ModelStreamInfer (issue #3)"


@pending_rpcs(
    SERVICE_NAME,
    {
        "Generate": _TRITON,
        "GenerateStream": _TRITON,
        "Embed": "the all-MiniLM-L6-v2 embedding model on Triton (issue #3)",
        "ListModels": _TRITON,
        "GetModelStatus": _TRITON,
    },
)
class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    """Serves InferenceService. Every RPC waits on the Triton backend of issue #3."""
